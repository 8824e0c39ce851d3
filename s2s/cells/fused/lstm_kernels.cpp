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

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

using at::Tensor;

// exp's argument is capped: under -ffast-math the division becomes a reciprocal estimate, which
// turns 1 / inf into NaN (e^88 is finite); NaN inputs still give NaN.
inline float sigm(float x) { return 1.f / (1.f + expf(std::min(-x, 88.f))); }

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
  if (onednn && a.numel() > 0 && w.numel() > 0) {  // oneDNN rejects empty shapes
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

// w [N, K] in oneDNN's blocked layout for products with `rows`-row inputs: saves 10-17% per
// product, worth it when the same weight serves every time step. Identity without oneDNN.
Tensor pack(const Tensor& w, int64_t rows, bool onednn) {
  if (!onednn || rows == 0 || w.numel() == 0) return w;
  static const c10::OperatorHandle op =
      c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_reorder_linear_weight", "");
  torch::jit::Stack stack{w.contiguous(), c10::IValue(rows)};
  op.callBoxed(&stack);
  return stack[0].toTensor();
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

// bfloat16 <-> float by bits (round to nearest even, NaN kept), simple enough to vectorise
inline float bf2f(uint16_t v) {
  uint32_t u = uint32_t(v) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint16_t f2bf(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  return (u & 0x7fffffffu) > 0x7f800000u ? uint16_t(0x7fc0) : uint16_t(rounded);
}

// Row-wise access to [B, n] tensors of float32 (used in place) or bfloat16 (converted through
// per-thread float buffers, so the math is always float32 and vectorised).
struct Rows {
  Tensor t;
  int64_t n;
  bool bf16;
  Rows(const Tensor& tensor) : t(tensor), n(tensor.size(1)), bf16(tensor.scalar_type() == at::kBFloat16) {}
  const float* load(int64_t b, std::vector<float>& buf) const {
    if (!bf16) return t.data_ptr<float>() + b * n;
    const uint16_t* src = reinterpret_cast<const uint16_t*>(t.data_ptr<at::BFloat16>()) + b * n;
    buf.resize(n);
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) buf[j] = bf2f(src[j]);
    return buf.data();
  }
  float* out(int64_t b, std::vector<float>& buf) const {
    if (!bf16) return t.data_ptr<float>() + b * n;
    buf.resize(n);
    return buf.data();
  }
  void store(int64_t b, const std::vector<float>& buf) const {
    if (!bf16) return;
    uint16_t* dst = reinterpret_cast<uint16_t*>(t.data_ptr<at::BFloat16>()) + b * n;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) dst[j] = f2bf(buf[j]);
  }
};

void check_rows(const Tensor& t, const Tensor& like, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.is_contiguous() && t.dim() == 2 &&
                  t.scalar_type() == like.scalar_type() &&
                  (t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16),
              "s2s_fused: ", name, " must be a contiguous 2-d float32 or bfloat16 CPU tensor "
              "of the gates' dtype");
}

// (gates [B, 4H], c_prev [B, H]) -> (act [B, 4H], c, tanh_c, h [B, H]); float32 or bfloat16
std::tuple<Tensor, Tensor, Tensor, Tensor> pointwise_forward(const Tensor& gates,
                                                             const Tensor& c_prev) {
  check_rows(gates, gates, "gates");
  check_rows(c_prev, gates, "c_prev");
  const int64_t B = c_prev.size(0), H = c_prev.size(1);
  TORCH_CHECK(gates.size(0) == B && gates.size(1) == 4 * H, "s2s_fused: gates must be [B, 4H]");
  Tensor act = at::empty_like(gates), c = at::empty_like(c_prev), tc = at::empty_like(c_prev),
         h = at::empty_like(c_prev);
  Rows rg(gates), rcp(c_prev), ra(act), rc(c), rtc(tc), rh(h);
  at::parallel_for(0, B, grain(H), [&](int64_t begin, int64_t end) {
    std::vector<float> bg, bcp, ba, bc, btc, bh;
    for (int64_t b = begin; b < end; ++b) {
      float *pa = ra.out(b, ba), *pc = rc.out(b, bc), *ptc = rtc.out(b, btc), *ph = rh.out(b, bh);
      row_forward<false>(rg.load(b, bg), nullptr, rcp.load(b, bcp), pa, pc, ptc, ph, H);
      ra.store(b, ba), rc.store(b, bc), rtc.store(b, btc), rh.store(b, bh);
    }
  });
  return {act, c, tc, h};
}

// (act [B, 4H], c_prev, tanh_c, dh, dc [B, H]) -> (d gates [B, 4H], d c_prev [B, H])
std::tuple<Tensor, Tensor> pointwise_backward(const Tensor& act, const Tensor& c_prev,
                                              const Tensor& tanh_c, const Tensor& dh,
                                              const Tensor& dc) {
  for (auto& [t, n] : {std::pair<const Tensor&, const char*>{act, "act"}, {c_prev, "c_prev"},
                       {tanh_c, "tanh_c"}, {dh, "dh"}, {dc, "dc"}})
    check_rows(t, act, n);
  const int64_t B = c_prev.size(0), H = c_prev.size(1);
  TORCH_CHECK(act.sizes() == at::IntArrayRef({B, 4 * H}) && tanh_c.sizes() == c_prev.sizes() &&
                  dh.sizes() == c_prev.sizes() && dc.sizes() == c_prev.sizes(),
              "s2s_fused: pointwise_backward got tensors of mismatched shapes");
  Tensor dg = at::empty_like(act), dcp = at::empty_like(c_prev);
  Rows ra(act), rcp(c_prev), rtc(tanh_c), rdh(dh), rdc(dc), rdg(dg), rdcp(dcp);
  at::parallel_for(0, B, grain(H), [&](int64_t begin, int64_t end) {
    std::vector<float> ba, bcp, btc, bdh, bdc, bdg, bdcp;
    for (int64_t b = begin; b < end; ++b) {
      float *pdg = rdg.out(b, bdg), *pdcp = rdcp.out(b, bdcp);
      row_backward(ra.load(b, ba), rcp.load(b, bcp), rtc.load(b, btc), rdh.load(b, bdh),
                   rdc.load(b, bdc), pdg, pdcp, H);
      rdg.store(b, bdg), rdcp.store(b, bdcp);
    }
  });
  return {dg, dcp};
}

// The masked recurrence over a whole sequence, batch-major like the cell's interface.
// x [B, T, I], mask [B, T] (1 real, 0 padding), h0, c0 [B, H], w_ih [4H, I], w_hh [4H, H],
// bias [4H] (b_ih + b_hh) -> out [B, T, H] (0 at padding), final h, c [B, H], and for backward:
// xh [B, T, I + H] (each step's input and the h it started from: the weight gradients are one
// GEMM over it), acts [T, B, 4H], cs [T + 1, B, H] (c before each step), tanh_cs [T, B, H].
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> sequence_forward(
    const Tensor& x, const Tensor& mask, const Tensor& h0, const Tensor& c0, const Tensor& w_ih,
    const Tensor& w_hh, const Tensor& bias, bool onednn) {
  for (auto& [t, n] : {std::pair<const Tensor&, const char*>{x, "x"}, {mask, "mask"},
                       {h0, "h0"}, {c0, "c0"}, {w_ih, "w_ih"}, {w_hh, "w_hh"}, {bias, "bias"}})
    check(t, n);
  TORCH_CHECK(x.dim() == 3 && w_hh.dim() == 2, "s2s_fused: x must be [B, T, I]");
  const int64_t B = x.size(0), T = x.size(1), I = x.size(2), H = w_hh.size(1);
  TORCH_CHECK(mask.sizes() == at::IntArrayRef({B, T}), "s2s_fused: mask must be [B, T]");
  TORCH_CHECK(h0.sizes() == at::IntArrayRef({B, H}) && c0.sizes() == at::IntArrayRef({B, H}),
              "s2s_fused: the initial state must be [B, H] = [", B, ", ", H, "] tensors");
  TORCH_CHECK(w_ih.sizes() == at::IntArrayRef({4 * H, I}) &&
                  w_hh.sizes() == at::IntArrayRef({4 * H, H}) &&
                  bias.sizes() == at::IntArrayRef({4 * H}),
              "s2s_fused: weights must be [4H, I], [4H, H] and bias [4H]");
  Tensor xw = linear(x.view({B * T, I}), w_ih, bias, onednn);  // [B*T, 4H], row b*T + t
  Tensor xh = at::empty({B, T, I + H}, x.options());
  xh.narrow(2, 0, I).copy_(x);
  Tensor acts = at::empty({T, B, 4 * H}, x.options());
  Tensor cs = at::empty({T + 1, B, H}, x.options()), tcs = at::empty({T, B, H}, x.options());
  Tensor out = at::empty({B, T, H}, x.options());
  Tensor h = h0.clone(), h_next = at::empty_like(h0);  // the recurrent GEMM's input, contiguous
  Tensor w_hh_packed = pack(w_hh, B, onednn);
  cs[0].copy_(c0);
  const float *pm = mask.data_ptr<float>(), *pxw = xw.data_ptr<float>();
  float *pxh = xh.data_ptr<float>(), *pout = out.data_ptr<float>();
  for (int64_t t = 0; t < T; ++t) {
    Tensor hh = linear(h, w_hh_packed, std::nullopt, onednn);  // gates = xw[:, t] + hh
    const float *phh = hh.data_ptr<float>(), *php = h.data_ptr<float>(),
                *pcp = cs[t].data_ptr<float>();
    float *pa = acts[t].data_ptr<float>(), *ptc = tcs[t].data_ptr<float>(),
          *phn = h_next.data_ptr<float>(), *pcn = cs[t + 1].data_ptr<float>();
    at::parallel_for(0, B, grain(H), [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        const int64_t r = b * H, bt = b * T + t;
        float* po = pout + bt * H;
        std::copy(php + r, php + r + H, pxh + bt * (I + H) + I);
        row_forward<true>(pxw + bt * 4 * H, phh + 4 * r, pcp + r, pa + 4 * r, pcn + r, ptc + r,
                          po, H);
        if (pm[bt] != 0.f) {
          std::copy(po, po + H, phn + r);
        } else {  // padding: carry the state, output zero
          std::copy(php + r, php + r + H, phn + r);
          std::copy(pcp + r, pcp + r + H, pcn + r);
          std::fill(po, po + H, 0.f);
        }
      }
    });
    std::swap(h, h_next);
  }
  return {out, h, cs[T].clone(), xh, acts, cs, tcs};
}

// Backward of sequence_forward. d_out [B, T, H] (rows of H contiguous, other strides free,
// e.g. an expanded gradient), d_h, d_c [B, H] (gradients of the final state) -> d_gates
// [B, T, 4H] and the gradients of h0, c0. The caller turns d_gates into the input, weight and
// bias gradients with two GEMMs (d_x, and one over xh for both weights) and a sum.
std::tuple<Tensor, Tensor, Tensor> sequence_backward(const Tensor& d_out_in, const Tensor& mask,
                                                     const Tensor& w_hh, const Tensor& acts,
                                                     const Tensor& cs, const Tensor& tcs,
                                                     const Tensor& d_h_in, const Tensor& d_c_in,
                                                     bool onednn) {
  Tensor d_out = d_out_in.stride(2) == 1 ? d_out_in : d_out_in.contiguous();
  for (auto& [t, n] : {std::pair<const Tensor&, const char*>{mask, "mask"}, {w_hh, "w_hh"},
                       {acts, "acts"}, {cs, "cs"}, {tcs, "tcs"}})
    check(t, n);
  const int64_t T = acts.size(0), B = acts.size(1), H = w_hh.size(1);
  TORCH_CHECK(d_out.sizes() == at::IntArrayRef({B, T, H}) && d_out.scalar_type() == at::kFloat &&
                  d_h_in.sizes() == at::IntArrayRef({B, H}) &&
                  d_c_in.sizes() == at::IntArrayRef({B, H}),
              "s2s_fused: sequence_backward got gradients of the wrong shape or dtype");
  const int64_t so_b = d_out.stride(0), so_t = d_out.stride(1);
  Tensor d_gates = at::empty({B, T, 4 * H}, acts.options());
  Tensor step = at::empty({B, 4 * H}, acts.options());  // this step's d_gates, contiguous
  Tensor d_h = d_h_in.contiguous().clone(), d_c = d_c_in.contiguous().clone();
  const float *pm = mask.data_ptr<float>(), *pdo = d_out.data_ptr<float>();
  float *pdg_all = d_gates.data_ptr<float>(), *pdg = step.data_ptr<float>(),
        *pdh = d_h.data_ptr<float>(), *pdc = d_c.data_ptr<float>();
  // d h_prev = d_gates @ w_hh = d_gates @ (w_hh^T)^T; `ghh` holds the last step's product
  Tensor w_hh_t = pack(w_hh.t(), B, onednn), ghh = at::zeros_like(d_h);
  for (int64_t t = T - 1; t >= 0; --t) {
    const float *pa = acts[t].data_ptr<float>(), *pcp = cs[t].data_ptr<float>(),
                *ptc = tcs[t].data_ptr<float>(), *pghh = ghh.data_ptr<float>();
    at::parallel_for(0, B, grain(H), [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        const int64_t r = b * H, bt = b * T + t;
        float* dg = pdg + 4 * r;
        if (pm[bt] != 0.f) {
          const float* dout = pdo + b * so_b + t * so_t;
#pragma omp simd
          for (int64_t j = 0; j < H; ++j) pdh[r + j] += pghh[r + j] + dout[j];
          // d_c becomes d c_prev in place; d_h restarts from zero (the next product adds to it)
          row_backward(pa + 4 * r, pcp + r, ptc + r, pdh + r, pdc + r, dg, pdc + r, H);
          std::fill(pdh + r, pdh + r + H, 0.f);
        } else {  // padding: the state passed through unchanged, gradients too
#pragma omp simd
          for (int64_t j = 0; j < H; ++j) pdh[r + j] += pghh[r + j];
          std::fill(dg, dg + 4 * H, 0.f);
        }
        std::copy(dg, dg + 4 * H, pdg_all + bt * 4 * H);
      }
    });
    ghh = linear(step, w_hh_t, std::nullopt, onednn);
  }
  d_h.add_(ghh);
  return {d_gates, d_h, d_c};
}

}  // namespace

TORCH_LIBRARY(s2s_fused, m) {
  m.def("pointwise_forward(Tensor gates, Tensor c_prev) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("pointwise_backward(Tensor act, Tensor c_prev, Tensor tanh_c, Tensor dh, Tensor dc)"
        " -> (Tensor, Tensor)");
  m.def("sequence_forward(Tensor x, Tensor mask, Tensor h0, Tensor c0, Tensor w_ih, "
        "Tensor w_hh, Tensor bias, bool onednn) -> "
        "(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("sequence_backward(Tensor d_out, Tensor mask, Tensor w_hh, Tensor acts, Tensor cs, "
        "Tensor tcs, Tensor d_h, Tensor d_c, bool onednn) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(s2s_fused, CPU, m) {
  m.impl("pointwise_forward", &pointwise_forward);
  m.impl("pointwise_backward", &pointwise_backward);
  m.impl("sequence_forward", &sequence_forward);
  m.impl("sequence_backward", &sequence_backward);
}
