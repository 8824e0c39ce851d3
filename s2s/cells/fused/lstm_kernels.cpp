// fused-lstm CPU kernels (float32), compiled on first use by s2s/cells/fused/kernels.py.
//
// - The gate pointwise work of one LSTM step (the decoder's `step`) is one pass over memory
//   instead of ~10 ATen kernels, float32 or bfloat16, with an inlined vectorised exp.
// - The whole-sequence forward and backward (`forward`) run as a team of threads that split the
//   hidden units: every step is one product per thread over [x_t, h_{t-1}] (K = I + H), computed
//   by a register-tiled AVX-512 kernel whose epilogue is the step's pointwise work, then one
//   barrier. Backward likewise (d h_prev = d_gates @ w_hh with the pointwise backward of the
//   step before as the epilogue), then d_x and both weight gradients as three large products
//   by the same kernel (units in blocks of 16 forward and 64 backward; a partial last block
//   multiplies zero weights for its missing units). The kernel comes in two builds in one
//   library, chosen at run time by the CPU's features (`panel_isa`): AVX-512 (R x 64
//   accumulators in 4R zmm registers) and AVX2+FMA (the same 64 columns as four passes of
//   R x 16 in 2R ymm registers). Without either (or `panels` 0), the products go through oneDNN
//   (torch's mkldnn ops) instead.
//
// Layout: gates i, f, g, o (torch.nn.LSTM's); rows are batch entries; B batch, T time,
// I input, H hidden. Registered as torch.ops.s2s_fused.*; Python owns autograd.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <exception>
#include <mutex>
#include <vector>

#include <omp.h>
#if defined(__x86_64__) || defined(__i386__)
#define S2S_X86 1
#include <immintrin.h>
#endif

namespace {

using at::Tensor;

// e^x for x clamped to [-87, 88]: 2^n * e^r with r = x - n ln 2 (Cody-Waite) and Cephes'
// polynomial for e^r, about 2 ulp. Inlined, so the gate loops vectorise without a call per
// vector (2-3x faster than glibc's vector expf/tanhf); the clamp keeps results finite and
// normal, so sigmoid and tanh saturate exactly at extreme pre-activations.
[[gnu::always_inline]] inline float exp_(float x) {
  x = std::min(std::max(x, -87.f), 88.f);
  const float n = std::nearbyint(x * 1.44269504f);
  float r = std::fma(n, -0.693145751953125f, x);
  r = std::fma(n, -1.428606765330187e-06f, r);
  float q = 1.9875691500e-4f;
  q = std::fma(q, r, 1.3981999507e-3f);
  q = std::fma(q, r, 8.3334519073e-3f);
  q = std::fma(q, r, 4.1665795894e-2f);
  q = std::fma(q, r, 1.6666665459e-1f);
  q = std::fma(q, r, 5.0000001201e-1f);
  const float e = std::fma(q * r, r, r) + 1.f;
  // n is in [-126, 127] (NaN: any finite value will do, e is NaN already)
  const uint32_t bits = static_cast<uint32_t>(static_cast<int32_t>(n == n ? n : 0.f) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, 4);
  return e * scale;
}
[[gnu::always_inline]] inline float sigm(float x) { return 1.f / (1.f + exp_(-x)); }
[[gnu::always_inline]] inline float tanh_(float x) { return 2.f / (1.f + exp_(-2.f * x)) - 1.f; }

// rows per parallel chunk: about 32k floats of gates
inline int64_t grain(int64_t hidden) { return std::max<int64_t>(1, 8192 / hidden); }

void check(const Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous(),
              "s2s_fused: ", name, " must be a contiguous float32 CPU tensor");
}

// a [M, K] @ w^T (w [N, K]) + bias [N]: through oneDNN (torch's mkldnn::_linear_pointwise,
// faster than MKL's sgemm on the machines s2s is measured on; see s2s/gemm.py) when `onednn`,
// else at::addmm (MKL). oneDNN gets w dense (row- or column-major) or packed: a sliced weight
// sends it to a reference kernel ~1000x slower.
Tensor linear(const Tensor& a, const Tensor& w_in, const std::optional<Tensor>& bias,
              bool onednn) {
  const bool dense = w_in.is_mkldnn() || w_in.is_contiguous() || w_in.t().is_contiguous();
  const Tensor w = dense ? w_in : w_in.contiguous();
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
  if (!onednn || rows == 0 || w.numel() == 0) return w.contiguous();
  static const c10::OperatorHandle op =
      c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_reorder_linear_weight", "");
  torch::jit::Stack stack{w.contiguous(), c10::IValue(rows)};
  op.callBoxed(&stack);
  return stack[0].toTensor();
}

// One row's n hidden units: pre-activations gx (gates i, f, g, o at stride sx), c_prev [n]
// -> act (gates at stride sa), c, tanh_c, h [n].
[[gnu::always_inline]] inline void row_forward(
    const float* __restrict gx, int64_t sx, const float* __restrict cp, float* __restrict act,
    int64_t sa, float* __restrict c, float* __restrict tc, float* __restrict h, int64_t n) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    const float pi = gx[j], pf = gx[sx + j], pg = gx[2 * sx + j], po = gx[3 * sx + j];
    float i = sigm(pi), f = sigm(pf), g = tanh_(pg), o = sigm(po);
    float cn = f * cp[j] + i * g;
    float t = tanh_(cn);
    act[j] = i; act[sa + j] = f; act[2 * sa + j] = g; act[3 * sa + j] = o;
    c[j] = cn; tc[j] = t; h[j] = o * t;
  }
}

// One row's n hidden units of backward (act and dg: gates at strides sa and sg):
// d c_prev = dcc * f; d pre-activations into dg.
[[gnu::always_inline]] inline void row_backward(
    const float* __restrict act, int64_t sa, const float* __restrict cp,
    const float* __restrict tc, const float* __restrict dh, const float* dc,
    float* __restrict dg, int64_t sg, float* dcp, int64_t n) {
  // dc and dcp may be the same buffer: each j reads dc[j] before it writes dcp[j]
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    float i = act[j], f = act[sa + j], g = act[2 * sa + j], o = act[3 * sa + j], t = tc[j];
    float dcc = dc[j] + dh[j] * o * (1.f - t * t);
    dg[j] = dcc * g * i * (1.f - i);
    dg[sg + j] = dcc * cp[j] * f * (1.f - f);
    dg[2 * sg + j] = dcc * i * (1.f - g * g);
    dg[3 * sg + j] = dh[j] * t * o * (1.f - o);
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
  Rows(const Tensor& tensor)
      : t(tensor), n(tensor.size(1)), bf16(tensor.scalar_type() == at::kBFloat16) {}
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
      row_forward(rg.load(b, bg), H, rcp.load(b, bcp), pa, H, pc, ptc, ph, H);
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
      row_backward(ra.load(b, ba), H, rcp.load(b, bcp), rtc.load(b, btc), rdh.load(b, bdh),
                   rdc.load(b, bdc), pdg, H, pdcp, H);
      rdg.store(b, bdg), rdcp.store(b, bdcp);
    }
  });
  return {dg, dcp};
}

// The sequence loops run on a team of threads that split the hidden units, each thread owning
// all four gates of its units: its share of every step's recurrent GEMM runs single-threaded
// on its own packed weight rows, its pointwise work follows on its own units, and one barrier
// per step lets every thread see the whole new state. No fork/join per step, and each GEMM
// keeps all B rows (more efficient than splitting the batch). Errors inside the team are kept
// and rethrown after it (every thread still reaches every barrier).
struct Team {
  std::atomic<bool> failed{false};
  std::exception_ptr error;
  std::mutex lock;
  template <class F>
  void run(F&& f) {
    if (failed.load(std::memory_order_relaxed)) return;
    try {
      f();
    } catch (...) {
      std::lock_guard<std::mutex> guard(lock);
      if (!error) error = std::current_exception();
      failed = true;
    }
  }
  void rethrow() {
    if (error) std::rethrow_exception(error);
  }
};

// Panel kernel builds: 0 none (oneDNN products), 1 AVX2+FMA, 2 AVX-512F.
enum : int { kIsaNone = 0, kIsaAvx2 = 1, kIsaAvx512 = 2 };

// The best build this CPU runs.
int cpu_isa() {
#ifdef S2S_X86
  static const int isa = [] {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return int(kIsaAvx512);
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return int(kIsaAvx2);
    return int(kIsaNone);
  }();
  return isa;
#else
  return kIsaNone;
#endif
}

// The build that runs when `requested` is asked for: at most what the CPU has.
int64_t panel_isa(int64_t requested) {
  return std::max<int64_t>(0, std::min<int64_t>(requested, cpu_isa()));
}

#ifdef S2S_X86
// One 16 x 16 tile of `transpose` in registers (unpack, then two 128-bit lane shuffles).
[[gnu::target("avx512f")]] void transpose16(const float* src, int64_t ld_src, float* dst,
                                            int64_t ld_dst) {
  __m512 r[16], t[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src + i * ld_src);
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    const __m512d a = _mm512_castps_pd(t[i]), b = _mm512_castps_pd(t[i + 1]),
                  c = _mm512_castps_pd(t[i + 2]), d = _mm512_castps_pd(t[i + 3]);
    r[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
    r[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
    r[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
    r[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
  }
  for (int i = 0; i < 16; i += 8)
    for (int k = 0; k < 4; ++k) {
      t[i + k] = _mm512_shuffle_f32x4(r[i + k], r[i + k + 4], 0x88);
      t[i + k + 4] = _mm512_shuffle_f32x4(r[i + k], r[i + k + 4], 0xdd);
    }
  for (int k = 0; k < 8; ++k) {
    r[k] = _mm512_shuffle_f32x4(t[k], t[k + 8], 0x88);
    r[k + 8] = _mm512_shuffle_f32x4(t[k], t[k + 8], 0xdd);
  }
  for (int i = 0; i < 16; ++i) _mm512_storeu_ps(dst + i * ld_dst, r[i]);
}
#endif

// dst[j * ld_dst + b] = src[b * ld_src + j] for b < rows, j < cols: a transposed copy in 16 x 16
// tiles (the fused-lstm weights into k-major panels); whole tiles in registers on AVX-512.
void transpose(const float* src, int64_t ld_src, float* dst, int64_t ld_dst, int64_t rows,
               int64_t cols, int isa) {
  constexpr int64_t K = 16;
  alignas(64) float tile[K][K];
  for (int64_t j0 = 0; j0 < cols; j0 += K) {
    const int64_t nj = std::min(K, cols - j0);
    for (int64_t b0 = 0; b0 < rows; b0 += K) {
      const int64_t nb = std::min(K, rows - b0);
#ifdef S2S_X86
      if (nj == K && nb == K && isa == kIsaAvx512) {
        transpose16(src + b0 * ld_src + j0, ld_src, dst + j0 * ld_dst + b0, ld_dst);
        continue;
      }
#endif
      for (int64_t b = 0; b < nb; ++b) {
        const float* row = src + (b0 + b) * ld_src + j0;
        for (int64_t j = 0; j < nj; ++j) tile[j][b] = row[j];
      }
      for (int64_t j = 0; j < nj; ++j)
        std::copy(tile[j], tile[j] + nb, dst + (j0 + j) * ld_dst + b0);
    }
  }
}

constexpr int64_t kTileRows = 6;  // rows of A per panel_gemm call

#ifdef S2S_X86
// C [R, 64] = init [64] (or 0) + A [R, K] @ P [K, 64] (a panel: 64 floats per k, at stride
// ldp). A's rows are at stride lda, or with kTA its columns (A is read transposed). The R x 64
// accumulators stay in registers for all of K (R <= 6: 24 of the 32 vector registers), so the
// result meets memory once, in the caller's epilogue. Not inlined: inside the sequence loops
// the compiler would spill the accumulators.
template <int R, bool kTA>
[[gnu::noinline, gnu::target("avx512f")]] void panel_gemm512(
    const float* __restrict A, int64_t lda, const float* __restrict P, int64_t ldp, int64_t pass,
    int64_t K, const float* __restrict init, float* __restrict C) {
  __m512 acc[R][4];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int q = 0; q < 4; ++q)
      acc[r][q] = init ? _mm512_loadu_ps(init + 16 * q) : _mm512_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    const float* pk = P + k * ldp;
    const __m512 b0 = _mm512_loadu_ps(pk), b1 = _mm512_loadu_ps(pk + pass),
                 b2 = _mm512_loadu_ps(pk + 2 * pass), b3 = _mm512_loadu_ps(pk + 3 * pass);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512 a = _mm512_set1_ps(kTA ? A[k * lda + r] : A[r * lda + k]);
      acc[r][0] = _mm512_fmadd_ps(a, b0, acc[r][0]);
      acc[r][1] = _mm512_fmadd_ps(a, b1, acc[r][1]);
      acc[r][2] = _mm512_fmadd_ps(a, b2, acc[r][2]);
      acc[r][3] = _mm512_fmadd_ps(a, b3, acc[r][3]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int q = 0; q < 4; ++q) _mm512_storeu_ps(C + r * 64 + 16 * q, acc[r][q]);
}

// panel_gemm512 on AVX2+FMA: the same C [R, 64], as four passes over K of 16 columns each,
// whose R x 16 accumulators stay in 2R of the 16 ymm registers (R <= 6: 12, plus two for P's
// row and one for A's broadcast). A's R rows are read four times (from L1), P once; each pass
// streams its own contiguous [K, 16] part of the panel (see PanelLayout).
template <int R, bool kTA>
[[gnu::noinline, gnu::target("avx2,fma")]] void panel_gemm256(
    const float* __restrict A, int64_t lda, const float* __restrict P, int64_t ldp, int64_t pass,
    int64_t K, const float* __restrict init, float* __restrict C) {
#pragma GCC unroll 1
  for (int q = 0; q < 4; ++q) {
    __m256 acc[R][2];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      acc[r][0] = init ? _mm256_loadu_ps(init + 16 * q) : _mm256_setzero_ps();
      acc[r][1] = init ? _mm256_loadu_ps(init + 16 * q + 8) : _mm256_setzero_ps();
    }
    const float* pq = P + q * pass;
    for (int64_t k = 0; k < K; ++k) {
      const float* pk = pq + k * ldp;
      const __m256 b0 = _mm256_loadu_ps(pk), b1 = _mm256_loadu_ps(pk + 8);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const __m256 a = _mm256_broadcast_ss(kTA ? A + k * lda + r : A + r * lda + k);
        acc[r][0] = _mm256_fmadd_ps(a, b0, acc[r][0]);
        acc[r][1] = _mm256_fmadd_ps(a, b1, acc[r][1]);
      }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      _mm256_storeu_ps(C + r * 64 + 16 * q, acc[r][0]);
      _mm256_storeu_ps(C + r * 64 + 16 * q + 8, acc[r][1]);
    }
  }
}

template <int R, bool kTA>
inline void panel_gemm(int isa, const float* A, int64_t lda, const float* P, int64_t ldp,
                       int64_t pass, int64_t K, const float* init, float* C) {
  if (isa == kIsaAvx512)
    panel_gemm512<R, kTA>(A, lda, P, ldp, pass, K, init, C);
  else
    panel_gemm256<R, kTA>(A, lda, P, ldp, pass, K, init, C);
}

// panel_gemm (build `isa`: kIsaAvx2 or kIsaAvx512) for rows [0, rows) of A (or of A^T) in
// tiles of kTileRows; after each tile, epilogue(first row, rows in tile, C) with C [rows in
// tile, 64].
template <bool kTA = false, class F>
void panel_rows(int isa, const float* A, int64_t lda, int64_t rows, const float* P, int64_t ldp,
                int64_t pass, int64_t K, const float* init, F&& epilogue) {
  alignas(64) float C[kTileRows * 64];
  for (int64_t r0 = 0; r0 < rows; r0 += kTileRows) {
    const float* a = kTA ? A + r0 : A + r0 * lda;
    const int64_t R = std::min(kTileRows, rows - r0);
    switch (R) {
      case 6: panel_gemm<6, kTA>(isa, a, lda, P, ldp, pass, K, init, C); break;
      case 5: panel_gemm<5, kTA>(isa, a, lda, P, ldp, pass, K, init, C); break;
      case 4: panel_gemm<4, kTA>(isa, a, lda, P, ldp, pass, K, init, C); break;
      case 3: panel_gemm<3, kTA>(isa, a, lda, P, ldp, pass, K, init, C); break;
      case 2: panel_gemm<2, kTA>(isa, a, lda, P, ldp, pass, K, init, C); break;
      default: panel_gemm<1, kTA>(isa, a, lda, P, ldp, pass, K, init, C); break;
    }
    epilogue(r0, R, static_cast<const float*>(C));
  }
}
#else
template <bool kTA = false, class F>
void panel_rows(int, const float*, int64_t, int64_t, const float*, int64_t, int64_t, int64_t,
                const float*, F&&) {}
#endif

// Blocks of n units, the last one possibly partial (its panel columns are zero).
inline int64_t blocks(int64_t units, int64_t n) { return (units + n - 1) / n; }

// Where a panel [K, 64] keeps element (k, j): at (j / 16) * pass + k * ld + j % 16. AVX-512
// reads whole 64-float rows (ld 64, pass 16: row-major); AVX2 reads the panel as four
// passes of 16 columns, so each pass's [K, 16] is contiguous (ld 16, pass 16 K).
struct PanelLayout {
  int64_t ld, pass;
  PanelLayout(int isa, int64_t K)
      : ld(isa == kIsaAvx512 ? 64 : 16), pass(isa == kIsaAvx512 ? 16 : 16 * K) {}
  // columns [j0, j0 + n) of row k (within one pass of 16: j0 % 16 + n <= 16)
  float* at(float* panel, int64_t k, int64_t j) const {
    return panel + (j / 16) * pass + k * ld + j % 16;
  }
};

// c [M, N] = a [M, K] @ b [K, N] (a^T @ b with a_t: a is [K, M]), each with rows of unit
// stride, through the panel kernel (b packed into panels first; the rows of c split across
// threads). Columns past the last multiple of 64 go through at::mm.
void mm_panels(int isa, const Tensor& a, bool a_t, const Tensor& b, Tensor& c) {
  TORCH_CHECK(a.stride(1) == 1 && b.stride(1) == 1 && c.stride(1) == 1,
              "s2s_fused: mm_panels needs rows of unit stride");
  const int64_t M = c.size(0), N = c.size(1), K = b.size(0), N64 = isa ? N / 64 * 64 : 0;
  const float* pa = a.data_ptr<float>();
  float* pc = c.data_ptr<float>();
  const int64_t lda = a.stride(0), ldc = c.stride(0);
  if (N64 > 0) {
    // B's panels packed k-major, each [K, 64] contiguous: streamed by every tile of rows
    Tensor packed = at::empty({N64 / 64, K, 64}, b.options());
    float* pb = packed.data_ptr<float>();
    const float* src = b.data_ptr<float>();
    const int64_t ldb = b.stride(0);
    const PanelLayout layout(isa, K);
    at::parallel_for(0, K, 64, [&](int64_t k0, int64_t k1) {
      for (int64_t k = k0; k < k1; ++k)
        for (int64_t cb = 0; cb < N64 / 64; ++cb)
          for (int64_t j = 0; j < 64; j += 16)
            std::copy(src + k * ldb + cb * 64 + j, src + k * ldb + cb * 64 + j + 16,
                      layout.at(pb + cb * K * 64, k, j));
    });
    const int64_t tiles = (M + kTileRows - 1) / kTileRows;
    at::parallel_for(0, tiles, 1, [&](int64_t t0, int64_t t1) {
      const int64_t r0 = t0 * kTileRows, rows = std::min(M, t1 * kTileRows) - r0;
      for (int64_t cb = 0; cb < N64 / 64; ++cb) {
        auto store = [&](int64_t i0, int64_t R, const float* tile) {
          for (int64_t r = 0; r < R; ++r)
            std::copy(tile + r * 64, tile + r * 64 + 64, pc + (r0 + i0 + r) * ldc + cb * 64);
        };
        if (a_t)
          panel_rows<true>(isa, pa + r0, lda, rows, pb + cb * K * 64, layout.ld, layout.pass, K,
                           nullptr, store);
        else
          panel_rows<false>(isa, pa + r0 * lda, lda, rows, pb + cb * K * 64, layout.ld,
                            layout.pass, K, nullptr, store);
      }
    });
  }
  if (N64 < N)
    c.narrow(1, N64, N - N64).copy_(at::mm(a_t ? a.t() : a, b.narrow(1, N64, N - N64)));
}

// threads for H hidden units: at least 64 units each
int64_t team_size(int64_t H) {
  return std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), H / 64));
}

// Runs body(u0, U, team) on a team of threads that split H hidden units: each thread gets
// units [u0, u0 + U) and torch's thread-local state; the body may use `#pragma omp barrier`
// (every thread must reach each one) and runs its fallible parts through team.run, whose
// first error is rethrown here, after the team.
template <class F>
void on_team(int64_t H, F&& body) {
  const int64_t threads = team_size(H);
  const at::ThreadLocalState tls;
  Team team;
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    at::ThreadLocalStateGuard tls_guard(tls);
    const int64_t n = omp_get_num_threads(), p = omp_get_thread_num();
    body(H * p / n, H * (p + 1) / n - H * p / n, team);
  }
  team.rethrow();
}

// rows of w [4H, K] for gates i, f, g, o of units [u0, u0 + n): [4n, K]
Tensor gate_rows(const Tensor& w, int64_t H, int64_t u0, int64_t n) {
  return at::cat({w.narrow(0, u0, n), w.narrow(0, H + u0, n), w.narrow(0, 2 * H + u0, n),
                  w.narrow(0, 3 * H + u0, n)});
}

// The masked recurrence over a whole sequence. x [B, T, I], mask [B, T] (1 real, 0 padding),
// h0, c0 [B, H], w_ih [4H, I], w_hh [4H, H], bias [4H] (b_ih + b_hh) -> out [B, T, H] (0 at
// padding), final h, c [B, H], and for backward: xh [B, T, I + H] (each step's input and the h
// it started from), acts [T, B, 4H], cs [T + 1, B, H] (c before each step), tanh_cs [T, B, H].
// xh[:, t] = [x_t, h_{t-1}] is step t's GEMM input, so the input and recurrent projections are
// one product per step (K = I + H, the bias added by the GEMM), and in backward both weight
// gradients are one product over xh. When h0_zero (no initial state given) the first step
// multiplies x_0 alone. `panels_asked`: the register-tiled kernel build to use (2 AVX-512, 1
// AVX2+FMA; at most what the CPU has, see panel_isa), or 0: oneDNN products.
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> sequence_forward(
    const Tensor& x, const Tensor& mask, const Tensor& h0, const Tensor& c0, const Tensor& w_ih,
    const Tensor& w_hh, const Tensor& bias, bool h0_zero, int64_t panels_asked, bool onednn) {
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
  const int64_t W = I + H;
  const auto opts = x.options();
  Tensor xh = at::empty({B, T, W}, opts);
  xh.narrow(2, 0, I).copy_(x);
  Tensor acts = at::empty({T, B, 4 * H}, opts), cs = at::empty({T + 1, B, H}, opts),
         tcs = at::empty({T, B, H}, opts), out = at::empty({B, T, H}, opts),
         h_last = h0.clone();
  cs[0].copy_(c0);
  if (T > 0) xh.select(1, 0).narrow(1, I, H).copy_(h0);
  const float* pm = mask.data_ptr<float>();
  float *pxh = xh.data_ptr<float>(),
        *pout = out.data_ptr<float>(), *phl = h_last.data_ptr<float>(),
        *pacts = acts.data_ptr<float>(), *pcs = cs.data_ptr<float>(), *ptcs = tcs.data_ptr<float>();
  on_team(H, [&](int64_t u0, int64_t U, Team& team) {  // this thread's hidden units
    const int isa = int(panel_isa(panels_asked));
    const bool panels = isa > 0;
    const PanelLayout layout(isa, W);
    // the pointwise work of step t for row b, units [j, j + nu), from the gates' pre-activations
    // g (gate stride sg): writes acts, c, tanh c, the output and the next step's h
    auto finish = [&](int64_t t, int64_t b, int64_t j, int64_t nu, const float* g, int64_t sg) {
      const int64_t r = b * H + j, tb = t * B + b, bt = b * T + t;
      const float* cp = pcs + t * B * H + r;
      float* cn = pcs + (t + 1) * B * H + r;
      float* po = pout + bt * H + j;
      const float* hp = pxh + bt * W + I + j;                          // h_{t-1}
      float* hn = t + 1 < T ? pxh + (bt + 1) * W + I + j : phl + r;  // h_t
      row_forward(g, sg, cp, pacts + tb * 4 * H + j, H, cn, ptcs + t * B * H + r, po, nu);
      if (pm[bt] != 0.f) {
        std::copy(po, po + nu, hn);
      } else {  // padding: carry the state, output zero
        std::copy(hp, hp + nu, hn);
        std::copy(cp, cp + nu, cn);
        std::fill(po, po + nu, 0.f);
      }
    };
    // panels: this thread's units in blocks of 16, each [I + H, 4 gates x 16 units] (k-major)
    // and its bias [4 x 16]; oneDNN: rows i, f, g, o of [w_ih | w_hh] for its units, packed
    // (the GEMM gives [B, 4U]), the input part alone, and the biases
    Tensor w, w_x, bias_u;
    team.run([&] {
      if (panels) {
        w = at::empty({blocks(U, 16), W, 64}, w_ih.options());
        bias_u = at::zeros({blocks(U, 16), 64}, w_ih.options());
        if (U % 16) w[blocks(U, 16) - 1].zero_();  // a partial block: zero weights for the rest
        float *pw = w.data_ptr<float>(), *pb = bias_u.data_ptr<float>();
        const float *pwi = w_ih.data_ptr<float>(), *pwh = w_hh.data_ptr<float>(),
                    *pbias = bias.data_ptr<float>();
        for (int64_t cb = 0; cb < blocks(U, 16); ++cb)
          for (int64_t q = 0; q < 4; ++q) {  // gate q: the panel's columns [16 q, 16 q + 16)
            const int64_t row = q * H + u0 + cb * 16, nu = std::min<int64_t>(16, U - cb * 16);
            float* panel = pw + cb * W * 64;
            transpose(pwi + row * I, I, layout.at(panel, 0, 16 * q), layout.ld, nu, I, isa);
            transpose(pwh + row * H, H, layout.at(panel, I, 16 * q), layout.ld, nu, H, isa);
            std::copy(pbias + row, pbias + row + nu, pb + cb * 64 + q * 16);
          }
      } else {
        Tensor rows = at::cat({gate_rows(w_ih, H, u0, U), gate_rows(w_hh, H, u0, U)}, 1);
        w = pack(rows, B, onednn);
        bias_u = gate_rows(bias, H, u0, U);
        if (h0_zero) w_x = rows.narrow(1, 0, I).contiguous();
      }
    });
    for (int64_t t = 0; t < T; ++t) {  // (each thread packed its own weights: no barrier yet)
      team.run([&] {
        // with no initial state, step 0's recurrent part is zero: x_0's product alone
        const bool x_only = t == 0 && h0_zero;
        if (panels) {
          const float *pw = w.data_ptr<float>(), *pb = bias_u.data_ptr<float>();
          for (int64_t cb = 0; cb < blocks(U, 16); ++cb) {
            const int64_t nu = std::min<int64_t>(16, U - cb * 16);
            panel_rows(isa, pxh + t * W, T * W, B, pw + cb * W * 64, layout.ld, layout.pass,
                       x_only ? I : W, pb + cb * 64,
                       [&](int64_t r0, int64_t R, const float* C) {
                         for (int64_t r = 0; r < R; ++r) {
                           if (nu == 16)  // a whole block: the constant lets the loops unroll
                             finish(t, r0 + r, u0 + cb * 16, 16, C + r * 64, 16);
                           else
                             finish(t, r0 + r, u0 + cb * 16, nu, C + r * 64, 16);
                         }
                       });
          }
        } else {
          Tensor gates = x_only ? linear(xh.select(1, 0).narrow(1, 0, I), w_x, bias_u, onednn)
                                : linear(xh.select(1, t), w, bias_u, onednn);
          const float* pg = gates.data_ptr<float>();
          for (int64_t b = 0; b < B; ++b) finish(t, b, u0, U, pg + b * 4 * U, U);
        }
      });
#pragma omp barrier
    }
  });
  return {out, h_last, cs[T].clone(), xh, acts, cs, tcs};
}

// Backward of sequence_forward. d_out [B, T, H] (rows of H contiguous, other strides free,
// e.g. an expanded gradient), d_h, d_c [B, H] (gradients of the final state) -> the gradients
// of x [B, T, I] (when `input_grad`, else empty), w_ih, w_hh (when `weight_grad`, else
// empty), the bias, h0 and c0 (these
// two only when `state_grad`; else the last recurrent GEMM is skipped and d_h0 is incomplete).
// d_gates [B, T, 4H] feed each next recurrent GEMM and, at the end, the GEMMs for d_x
// (d_gates @ w_ih) and both weight gradients (d_gates^T @ xh); the bias gradient is summed on
// the way.
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> sequence_backward(
    const Tensor& d_out_in, const Tensor& mask, const Tensor& w_ih, const Tensor& w_hh,
    const Tensor& xh, const Tensor& acts, const Tensor& cs, const Tensor& tcs,
    const Tensor& d_h_in, const Tensor& d_c_in, bool input_grad, bool state_grad,
    bool weight_grad, int64_t panels_asked, bool onednn) {
  Tensor d_out = d_out_in.stride(2) == 1 ? d_out_in : d_out_in.contiguous();
  for (auto& [t, n] : {std::pair<const Tensor&, const char*>{mask, "mask"}, {w_ih, "w_ih"},
                       {w_hh, "w_hh"}, {xh, "xh"}, {acts, "acts"}, {cs, "cs"},
                       {tcs, "tcs"}})
    check(t, n);
  TORCH_CHECK(acts.dim() == 3 && w_hh.dim() == 2 && w_ih.dim() == 2,
              "s2s_fused: sequence_backward needs acts [T, B, 4H] and 2-d weights");
  const int64_t T = acts.size(0), B = acts.size(1), H = w_hh.size(1), I = w_ih.size(1);
  const int64_t TB = T * B;
  TORCH_CHECK(d_out.sizes() == at::IntArrayRef({B, T, H}) && d_out.scalar_type() == at::kFloat &&
                  d_h_in.sizes() == at::IntArrayRef({B, H}) &&
                  d_c_in.sizes() == at::IntArrayRef({B, H}) &&
                  d_h_in.scalar_type() == at::kFloat && d_c_in.scalar_type() == at::kFloat &&
                  xh.sizes() == at::IntArrayRef({B, T, I + H}) &&
                  acts.sizes() == at::IntArrayRef({T, B, 4 * H}) &&
                  cs.sizes() == at::IntArrayRef({T + 1, B, H}) &&
                  tcs.sizes() == at::IntArrayRef({T, B, H}) &&
                  mask.sizes() == at::IntArrayRef({B, T}) &&
                  w_ih.size(0) == 4 * H && w_hh.size(0) == 4 * H,
              "s2s_fused: sequence_backward got tensors of the wrong shape or dtype");
  const int64_t so_b = d_out.stride(0), so_t = d_out.stride(1);
  const auto opts = acts.options();
  // d_gates' rows are padded to G = 4H + 16 floats: at a multiple of 4 KB, the d_gates^T
  // products' column reads would all fall into one L1 cache set
  const int64_t G = 4 * H + 16;
  Tensor d_gates = at::empty({B, T, G}, opts).narrow(2, 0, 4 * H), d_b = at::zeros({4 * H}, opts);
  // d_h: the gradient reaching h from later steps, not yet through a step; d_c likewise
  Tensor d_h = d_h_in.contiguous().clone(), d_c = d_c_in.contiguous().clone();
  const float *pm = mask.data_ptr<float>(), *pdo = d_out.data_ptr<float>(),
              *pacts = acts.data_ptr<float>(), *pcs = cs.data_ptr<float>(),
              *ptcs = tcs.data_ptr<float>();
  float *pdg = d_gates.data_ptr<float>(), *pdb = d_b.data_ptr<float>(),
        *pdh = d_h.data_ptr<float>(), *pdc = d_c.data_ptr<float>();
  on_team(H, [&](int64_t u0, int64_t U, Team& team) {  // this thread's hidden units
    const int isa = int(panel_isa(panels_asked));
    const bool panels = isa > 0;
    const PanelLayout layout(isa, 4 * H);
    // step t for row b, units [j, j + nu): d_h += ghh (d h_prev from step t + 1's d_gates, if
    // given), then through the step: d_gates (also summed into d_b) and d c_prev (t = -1: only
    // the addition, d_h0)
    auto back = [&](int64_t t, int64_t b, int64_t j, int64_t nu, const float* ghh) {
      float* dh = pdh + b * H + j;
      if (ghh) {
#pragma omp simd
        for (int64_t k = 0; k < nu; ++k) dh[k] += ghh[k];
      }
      if (t < 0) return;
      const int64_t r = b * H + j, tb = t * B + b;
      float* dg = pdg + (b * T + t) * G + j;
      if (pm[b * T + t] != 0.f) {
        const float* dout = pdo + b * so_b + t * so_t + j;
#pragma omp simd
        for (int64_t k = 0; k < nu; ++k) dh[k] += dout[k];
        // d_c becomes d c_prev in place; d_h restarts from zero (the product adds to it)
        row_backward(pacts + tb * 4 * H + j, H, pcs + t * B * H + r, ptcs + t * B * H + r, dh,
                     pdc + r, dg, H, pdc + r, nu);
        std::fill(dh, dh + nu, 0.f);
        for (int64_t q = 0; q < 4; ++q) {
          float* db = pdb + q * H + j;
          const float* g = dg + q * H;
#pragma omp simd
          for (int64_t k = 0; k < nu; ++k) db[k] += g[k];
        }
      } else {  // padding: the state passed through unchanged, gradients too
        for (int64_t q = 0; q < 4; ++q) std::fill(dg + q * H, dg + q * H + nu, 0.f);
      }
    };
    // d h_prev = d_gates @ w_hh for these units. Panels: blocks of 64 units, each
    // [4H, 64] (k-major); oneDNN: w_hh^T's rows, packed, and the last product [B, U]
    Tensor w, ghh;
    team.run([&] {
      if (panels) {
        w = at::empty({blocks(U, 64), 4 * H, 64}, opts);
        if (U % 64) w[blocks(U, 64) - 1].zero_();  // a partial block: zero weights for the rest
        float* pw = w.data_ptr<float>();
        const float* pwh = w_hh.data_ptr<float>();
        for (int64_t cb = 0; cb < blocks(U, 64); ++cb) {
          const int64_t nu = std::min<int64_t>(64, U - cb * 64);
          for (int64_t k = 0; k < 4 * H; ++k)
            for (int64_t j = 0; j < nu; j += 16)
              std::copy(pwh + k * H + u0 + cb * 64 + j,
                        pwh + k * H + u0 + cb * 64 + std::min<int64_t>(j + 16, nu),
                        layout.at(pw + cb * 4 * H * 64, k, j));
        }
      } else {
        w = pack(w_hh.t().narrow(0, u0, U), B, onednn);  // [U, 4H]
      }
    });
    if (panels) {
      // step T - 1 has no product to add; each later iteration multiplies step t + 1's
      // d_gates (all units: after the barrier) and takes step t through on the result
      team.run([&] {
        if (T == 0) return;
        for (int64_t b = 0; b < B; ++b) back(T - 1, b, u0, U, nullptr);
      });
#pragma omp barrier
      for (int64_t t = T - 2; t >= (state_grad ? -1 : 0); --t) {
        team.run([&] {
          const float* pw = w.data_ptr<float>();
          for (int64_t cb = 0; cb < blocks(U, 64); ++cb) {
            const int64_t nu = std::min<int64_t>(64, U - cb * 64);
            panel_rows(isa, pdg + (t + 1) * G, T * G, B, pw + cb * 4 * H * 64, layout.ld,
                       layout.pass, 4 * H,
                       nullptr,
                       [&](int64_t r0, int64_t R, const float* C) {
                         for (int64_t r = 0; r < R; ++r) {
                           if (nu == 64)  // a whole block: the constant lets the loops unroll
                             back(t, r0 + r, u0 + cb * 64, 64, C + r * 64);
                           else
                             back(t, r0 + r, u0 + cb * 64, nu, C + r * 64);
                         }
                       });
          }
        });
#pragma omp barrier
      }
    } else {
      for (int64_t t = T - 1; t >= 0; --t) {
        team.run([&] {
          for (int64_t b = 0; b < B; ++b)
            back(t, b, u0, U, ghh.defined() ? ghh.data_ptr<float>() + b * U : nullptr);
        });
#pragma omp barrier
        team.run([&] {  // every thread's share of this step's d_gates is in place
          ghh = t > 0 || state_grad
                    ? linear(d_gates.select(1, t).contiguous(), w, std::nullopt, onednn)
                    : Tensor();
        });
      }
      team.run([&] {
        if (ghh.defined())
          for (int64_t b = 0; b < B; ++b) back(-1, b, u0, U, ghh.data_ptr<float>() + b * U);
      });
    }
  });
  const Tensor dg2 = d_gates.reshape({TB, 4 * H}), xh2 = xh.view({TB, I + H});  // dg2: a view
  Tensor d_x = at::empty({0}, opts), d_w_ih = at::empty({weight_grad ? 4 * H : 0, I}, opts),
         d_w_hh = at::empty({weight_grad ? 4 * H : 0, H}, opts);
  const int isa = int(panel_isa(panels_asked));
  if (input_grad) {
    if (isa) {  // the panel kernel: ~5-10% faster than oneDNN here (AVX-512)
      d_x = at::empty({TB, I}, opts);
      mm_panels(isa, dg2, false, w_ih, d_x);  // d_gates @ w_ih
    } else {
      d_x = linear(dg2, w_ih.t(), std::nullopt, onednn);
    }
  }
  if (weight_grad) {
    // the weight gradients read d_gates transposed: in four passes (AVX2) its columns come
    // from L2 four times, 2x slower than MKL's own packing, so AVX2 leaves them to MKL
    if (isa == kIsaAvx512) {
      mm_panels(isa, dg2, true, xh2.narrow(1, 0, I), d_w_ih);  // d_gates^T @ [x]
      mm_panels(isa, dg2, true, xh2.narrow(1, I, H), d_w_hh);  // d_gates^T @ [h_prev]
    } else {
      d_w_ih.copy_(at::mm(dg2.t(), xh2.narrow(1, 0, I)));
      d_w_hh.copy_(at::mm(dg2.t(), xh2.narrow(1, I, H)));
    }
  }
  if (input_grad) d_x = d_x.view({B, T, I});
  return {d_x, d_w_ih, d_w_hh, d_b, d_h, d_c};
}

}  // namespace

TORCH_LIBRARY(s2s_fused, m) {
  m.def("panel_isa(int requested) -> int", &panel_isa);
  m.def("pointwise_forward(Tensor gates, Tensor c_prev) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("pointwise_backward(Tensor act, Tensor c_prev, Tensor tanh_c, Tensor dh, Tensor dc)"
        " -> (Tensor, Tensor)");
  m.def("sequence_forward(Tensor x, Tensor mask, Tensor h0, Tensor c0, Tensor w_ih, "
        "Tensor w_hh, Tensor bias, bool h0_zero, int panels, bool onednn) -> "
        "(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("sequence_backward(Tensor d_out, Tensor mask, Tensor w_ih, Tensor w_hh, Tensor xh, "
        "Tensor acts, Tensor cs, Tensor tcs, Tensor d_h, Tensor d_c, bool input_grad, "
        "bool state_grad, bool weight_grad, int panels, bool onednn) -> "
        "(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(s2s_fused, CPU, m) {
  m.impl("pointwise_forward", &pointwise_forward);
  m.impl("pointwise_backward", &pointwise_backward);
  m.impl("sequence_forward", &sequence_forward);
  m.impl("sequence_backward", &sequence_backward);
}
