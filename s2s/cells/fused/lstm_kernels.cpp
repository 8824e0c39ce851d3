// fused-lstm CPU kernels (float32), compiled on first use by s2s/cells/fused/kernels.py.
//
// The gate pointwise work of one LSTM step is one pass over memory instead of ~10 ATen kernels:
// compiled with -O3 -ffast-math -march=native, the inner loops vectorise and call glibc's
// vector expf/tanhf (libmvec). The whole-sequence forward and backward loops run here too, so a
// time step costs one GEMM (at::addmm_out) plus one pointwise pass, with no Python in between.
//
// Layout: gates i, f, g, o (torch.nn.LSTM's); rows are batch entries; B batch, T time,
// I input, H hidden. Registered as torch.ops.s2s_fused.*; Python owns autograd.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>

namespace {

using at::Tensor;

inline float sigm(float x) { return 1.f / (1.f + expf(-x)); }

// rows per parallel chunk: about 32k floats of gates
inline int64_t grain(int64_t hidden) { return std::max<int64_t>(1, 8192 / hidden); }

void check(const Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous(),
              "s2s_fused: ", name, " must be a contiguous float32 CPU tensor");
}

// a [M, K] @ w^T (w [N, K], any strides) + bias [N]: through oneDNN (torch's
// mkldnn::_linear_pointwise, faster than MKL's sgemm on the machines s2s is measured on; see
// s2s/gemm.py) when `onednn`, else at::addmm (MKL).
Tensor linear(const Tensor& a, const Tensor& w, const std::optional<Tensor>& bias, bool onednn) {
  if (onednn) {
    static const c10::OperatorHandle op =
        c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_linear_pointwise", "");
    torch::jit::Stack stack{a, w, bias ? c10::IValue(*bias) : c10::IValue(),
                            c10::IValue(std::string("none")),
                            c10::IValue(c10::List<std::optional<at::Scalar>>()), c10::IValue()};
    op.callBoxed(&stack);
    return stack[0].toTensor();
  }
  return bias ? at::addmm(*bias, a, w.t()) : at::mm(a, w.t());
}

// One row: pre-activations g4 [4H] (+ g4b [4H] when kSum), c_prev [H] -> act [4H], c [H],
// tanh_c [H], h [H].
template <bool kSum>
inline void row_forward(const float* __restrict g4, const float* __restrict g4b,
                        const float* __restrict cp, float* __restrict act, float* __restrict c,
                        float* __restrict tc, float* __restrict h, int64_t H) {
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    float pi = g4[j], pf = g4[H + j], pg = g4[2 * H + j], po = g4[3 * H + j];
    if constexpr (kSum) {
      pi += g4b[j]; pf += g4b[H + j]; pg += g4b[2 * H + j]; po += g4b[3 * H + j];
    }
    float i = sigm(pi), f = sigm(pf), g = tanhf(pg), o = sigm(po);
    float cn = f * cp[j] + i * g;
    float t = tanhf(cn);
    act[j] = i; act[H + j] = f; act[2 * H + j] = g; act[3 * H + j] = o;
    c[j] = cn; tc[j] = t; h[j] = o * t;
  }
}

// One row of backward: d c_prev = dcc * f; d pre-activations into dg [4H].
inline void row_backward(const float* __restrict act, const float* __restrict cp,
                         const float* __restrict tc, const float* __restrict dh,
                         const float* dc, float* __restrict dg, float* dcp, int64_t H) {
  // dc and dcp may be the same buffer: each j reads dc[j] before it writes dcp[j]
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    float i = act[j], f = act[H + j], g = act[2 * H + j], o = act[3 * H + j], t = tc[j];
    float dcc = dc[j] + dh[j] * o * (1.f - t * t);
    dg[j] = dcc * g * i * (1.f - i);
    dg[H + j] = dcc * cp[j] * f * (1.f - f);
    dg[2 * H + j] = dcc * i * (1.f - g * g);
    dg[3 * H + j] = dh[j] * t * o * (1.f - o);
    dcp[j] = dcc * f;
  }
}

// (gates [B, 4H], c_prev [B, H]) -> (act [B, 4H], c, tanh_c, h [B, H])
std::tuple<Tensor, Tensor, Tensor, Tensor> pointwise_forward(const Tensor& gates,
                                                             const Tensor& c_prev) {
  check(gates, "gates");
  check(c_prev, "c_prev");
  const int64_t B = c_prev.size(0), H = c_prev.size(1);
  TORCH_CHECK(gates.size(0) == B && gates.size(1) == 4 * H, "s2s_fused: gates must be [B, 4H]");
  Tensor act = at::empty_like(gates), c = at::empty_like(c_prev), tc = at::empty_like(c_prev),
         h = at::empty_like(c_prev);
  const float *pg = gates.data_ptr<float>(), *pc = c_prev.data_ptr<float>();
  float *pa = act.data_ptr<float>(), *pcn = c.data_ptr<float>(), *ptc = tc.data_ptr<float>(),
        *ph = h.data_ptr<float>();
  at::parallel_for(0, B, grain(H), [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b)
      row_forward<false>(pg + b * 4 * H, nullptr, pc + b * H, pa + b * 4 * H, pcn + b * H, ptc + b * H,
                  ph + b * H, H);
  });
  return {act, c, tc, h};
}

// (act [B, 4H], c_prev, tanh_c, dh, dc [B, H]) -> (d gates [B, 4H], d c_prev [B, H])
std::tuple<Tensor, Tensor> pointwise_backward(const Tensor& act, const Tensor& c_prev,
                                              const Tensor& tanh_c, const Tensor& dh,
                                              const Tensor& dc) {
  for (auto& [t, n] : {std::pair<const Tensor&, const char*>{act, "act"}, {c_prev, "c_prev"},
                       {tanh_c, "tanh_c"}, {dh, "dh"}, {dc, "dc"}})
    check(t, n);
  const int64_t B = c_prev.size(0), H = c_prev.size(1);
  Tensor dg = at::empty_like(act), dcp = at::empty_like(c_prev);
  const float *pa = act.data_ptr<float>(), *pc = c_prev.data_ptr<float>(),
              *ptc = tanh_c.data_ptr<float>(), *pdh = dh.data_ptr<float>(),
              *pdc = dc.data_ptr<float>();
  float *pdg = dg.data_ptr<float>(), *pdcp = dcp.data_ptr<float>();
  at::parallel_for(0, B, grain(H), [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b)
      row_backward(pa + b * 4 * H, pc + b * H, ptc + b * H, pdh + b * H, pdc + b * H,
                   pdg + b * 4 * H, pdcp + b * H, H);
  });
  return {dg, dcp};
}

// The masked recurrence over a whole sequence, time-major.
// x [T, B, I], mask [T, B] (1 real, 0 padding), h0, c0 [B, H], w_ih [4H, I], w_hh [4H, H],
// bias [4H] (b_ih + b_hh) -> out [T, B, H] (0 at padding), acts [T, B, 4H],
// hs, cs [T + 1, B, H] (state before each step; hs[T], cs[T] final), tanh_cs [T, B, H].
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> sequence_forward(
    const Tensor& x, const Tensor& mask, const Tensor& h0, const Tensor& c0, const Tensor& w_ih,
    const Tensor& w_hh, const Tensor& bias, bool onednn) {
  for (auto& [t, n] : {std::pair<const Tensor&, const char*>{x, "x"}, {mask, "mask"},
                       {h0, "h0"}, {c0, "c0"}, {w_ih, "w_ih"}, {w_hh, "w_hh"}, {bias, "bias"}})
    check(t, n);
  const int64_t T = x.size(0), B = x.size(1), H = w_hh.size(1);
  Tensor xw = linear(x.view({T * B, x.size(2)}), w_ih, bias, onednn).view({T, B, 4 * H});
  Tensor acts = at::empty({T, B, 4 * H}, x.options());
  Tensor hs = at::empty({T + 1, B, H}, x.options()), cs = at::empty({T + 1, B, H}, x.options());
  Tensor tcs = at::empty({T, B, H}, x.options()), out = at::empty({T, B, H}, x.options());
  hs[0].copy_(h0);
  cs[0].copy_(c0);
  const float* pm = mask.data_ptr<float>();
  for (int64_t t = 0; t < T; ++t) {
    Tensor hh = linear(hs[t], w_hh, std::nullopt, onednn);  // gates = xw[t] + hh
    const float *pg = xw[t].data_ptr<float>(), *phh = hh.data_ptr<float>();
    const float *php = hs[t].data_ptr<float>(), *pcp = cs[t].data_ptr<float>();
    float *pa = acts[t].data_ptr<float>(), *ptc = tcs[t].data_ptr<float>(),
          *po = out[t].data_ptr<float>(), *phn = hs[t + 1].data_ptr<float>(),
          *pcn = cs[t + 1].data_ptr<float>();
    const float* keep = pm + t * B;
    at::parallel_for(0, B, grain(H), [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        const int64_t r = b * H;
        row_forward<true>(pg + 4 * r, phh + 4 * r, pcp + r, pa + 4 * r, pcn + r, ptc + r, po + r, H);
        if (keep[b] != 0.f) {
          std::copy(po + r, po + r + H, phn + r);
        } else {  // padding: carry the state, output zero
          std::copy(php + r, php + r + H, phn + r);
          std::copy(pcp + r, pcp + r + H, pcn + r);
          std::fill(po + r, po + r + H, 0.f);
        }
      }
    });
  }
  return {out, acts, hs, cs, tcs};
}

// Backward of sequence_forward. d_out [T, B, H] (any strides inside a row-contiguous [B, H]
// slice per step are handled by a contiguous copy), d_h, d_c [B, H] (gradients of the final
// state). Returns d_gates [T, B, 4H] and the gradients of h0, c0; the caller turns d_gates into
// the weight, bias and input gradients with three GEMMs.
std::tuple<Tensor, Tensor, Tensor> sequence_backward(const Tensor& d_out_in, const Tensor& mask,
                                                     const Tensor& w_hh, const Tensor& acts,
                                                     const Tensor& cs, const Tensor& tcs,
                                                     const Tensor& d_h_in, const Tensor& d_c_in,
                                                     bool onednn) {
  Tensor d_out = d_out_in.contiguous();
  for (auto& [t, n] : {std::pair<const Tensor&, const char*>{mask, "mask"}, {w_hh, "w_hh"},
                       {acts, "acts"}, {cs, "cs"}, {tcs, "tcs"}})
    check(t, n);
  const int64_t T = acts.size(0), B = acts.size(1), H = w_hh.size(1);
  Tensor d_gates = at::empty({T, B, 4 * H}, acts.options());
  Tensor d_h = d_h_in.contiguous().clone(), d_c = d_c_in.contiguous().clone();
  Tensor d_hn = at::empty({B, H}, acts.options());
  const float* pm = mask.data_ptr<float>();
  Tensor w_hh_t = w_hh.t();  // d h_prev = d_gates @ w_hh = d_gates @ (w_hh^T)^T
  for (int64_t t = T - 1; t >= 0; --t) {
    const float *pa = acts[t].data_ptr<float>(), *pcp = cs[t].data_ptr<float>(),
                *ptc = tcs[t].data_ptr<float>(), *pdo = d_out[t].data_ptr<float>();
    float *pdg = d_gates[t].data_ptr<float>(), *pdh = d_h.data_ptr<float>(),
          *pdc = d_c.data_ptr<float>(), *pdhn = d_hn.data_ptr<float>();
    const float* keep = pm + t * B;
    at::parallel_for(0, B, grain(H), [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        const int64_t r = b * H;
        if (keep[b] != 0.f) {
#pragma omp simd
          for (int64_t j = 0; j < H; ++j) pdhn[r + j] = pdh[r + j] + pdo[r + j];
          // d_c becomes d c_prev in place; d_h restarts from zero (the GEMM below adds to it)
          row_backward(pa + 4 * r, pcp + r, ptc + r, pdhn + r, pdc + r, pdg + 4 * r, pdc + r, H);
          std::fill(pdh + r, pdh + r + H, 0.f);
        } else {  // padding: the state passed through unchanged, gradients too
          std::fill(pdg + 4 * r, pdg + 4 * r + 4 * H, 0.f);
        }
      }
    });
    d_h.add_(linear(d_gates[t], w_hh_t, std::nullopt, onednn));
  }
  return {d_gates, d_h, d_c};
}

}  // namespace

TORCH_LIBRARY(s2s_fused, m) {
  m.def("pointwise_forward(Tensor gates, Tensor c_prev) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("pointwise_backward(Tensor act, Tensor c_prev, Tensor tanh_c, Tensor dh, Tensor dc)"
        " -> (Tensor, Tensor)");
  m.def("sequence_forward(Tensor x, Tensor mask, Tensor h0, Tensor c0, Tensor w_ih, "
        "Tensor w_hh, Tensor bias, bool onednn) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("sequence_backward(Tensor d_out, Tensor mask, Tensor w_hh, Tensor acts, Tensor cs, "
        "Tensor tcs, Tensor d_h, Tensor d_c, bool onednn) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(s2s_fused, CPU, m) {
  m.impl("pointwise_forward", &pointwise_forward);
  m.impl("pointwise_backward", &pointwise_backward);
  m.impl("sequence_forward", &sequence_forward);
  m.impl("sequence_backward", &sequence_backward);
}
