// The time loops of the fused CPU GRU and LSTM (see fused_rnn.py for the math and the plan).
//
// Per time step only two things run: the recurrent GEMM (RecurrentGemm: oneDNN on weights
// reordered once per call, every thread; backward, ColumnParts: one-thread GEMMs on parts of
// the output's columns) and one pass over the (B, H) gate arithmetic, here,
// in a single loop that the compiler vectorizes, its rows split among the threads. The pass
// reads the GEMM outputs in their own dtype (bf16 under autocast), computes in fp32, and
// writes the activations, the carried state and the GEMM dtype's copy of the state at once;
// the backward pass also sums the bias gradients. PyTorch would spend five to ten
// operations, each with its own memory sweep, on the same.

#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/extension.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#if defined(__AVX2__)
#include <immintrin.h>
#endif
#if defined(_OPENMP)
#include <omp.h>
#endif
#include <string>
#include <optional>
#include <type_traits>
#include <vector>

namespace {

// bf16 as raw bits, converted here: c10's BFloat16 conversions may throw as far as the
// compiler knows, which keeps it from vectorizing the loops that use them.
using Bf16 = uint16_t;

// exp with ~1 ulp error, written so that the loops around it vectorize: a range reduction to
// [-ln2/2, ln2/2], a degree-6 polynomial, then a scale by 2^n through the exponent bits.
inline float fast_exp(float x) noexcept {
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  // Round to nearest by the 1.5 * 2^23 trick: floorf would keep the loop scalar.
  float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

inline float sigmoid(float x) noexcept { return 1.0f / (1.0f + fast_exp(-x)); }
inline float tanh_(float x) noexcept { return 2.0f / (1.0f + fast_exp(-2.0f * x)) - 1.0f; }

inline float load(const float* p, int64_t i) noexcept { return p[i]; }
inline float load(const Bf16* p, int64_t i) noexcept {
  uint32_t bits = static_cast<uint32_t>(p[i]) << 16;
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
}
inline void store(float* p, int64_t i, float v) noexcept { p[i] = v; }
inline void store(Bf16* p, int64_t i, float v) noexcept {  // round to nearest even; NaN stays NaN
  uint32_t u;
  std::memcpy(&u, &v, sizeof(u));
  uint16_t rounded = static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
  p[i] = v != v ? static_cast<uint16_t>(0x7FC0) : rounded;
}

template <typename T>
T* ptr(const at::Tensor& t) {
  if constexpr (std::is_same_v<T, Bf16>) {
    return reinterpret_cast<Bf16*>(t.data_ptr<at::BFloat16>());
  } else {
    return t.data_ptr<T>();
  }
}

// Rows of the batch split among the intra-op threads. A forward step's rows are independent,
// so any split computes the same numbers; the parallel region is skipped on one thread.
template <typename F>
void for_rows(int64_t B, const F& f) {
  if (at::get_num_threads() == 1) {
    f(0, B);
  } else {
    at::parallel_for(0, B, 8, f);
  }
}

// The backward steps also sum the bias gradients over the rows. To keep those sums the same
// whatever the thread count (a resumed run must repeat an uninterrupted one bit for bit), the
// rows fall into a fixed number of blocks, each summing into its own partial, and the
// partials are added in block order at the end.
constexpr int64_t kRowBlocks = 4;

inline int64_t block_start(int64_t block, int64_t B) { return block * B / kRowBlocks; }

template <typename F>
void for_row_blocks(int64_t B, const F& f) {
  auto run = [&](int64_t first, int64_t last) {
    for (int64_t k = first; k < last; ++k) f(k, block_start(k, B), block_start(k + 1, B));
  };
  if (at::get_num_threads() == 1) {
    run(0, kRowBlocks);
  } else {
    at::parallel_for(0, kRowBlocks, 1, run);
  }
}

// The partial sums of `for_row_blocks`, added in block order.
at::Tensor sum_blocks(const at::Tensor& partials) {
  auto total = partials[0].clone();
  for (int64_t k = 1; k < kRowBlocks; ++k) total += partials[k];
  return total;
}

// ---- Transposition --------------------------------------------------------------------------

// The weight gradients are dG^T @ X over all steps at once; oneDNN runs that GEMM about twice
// as fast with dG^T stored row by row as with dG^T a transposed view (measured for the
// tutorial's 3072 x 6400 @ 6400 x 1024 in bf16: 19 ms against 36), and PyTorch's own copy of a
// transposed bf16 matrix takes longer than the GEMM. Here, 16 x 16 blocks go through vector
// registers (6.7 ms for that 6400 x 3072 matrix on 2 threads).
#if defined(__AVX2__)
inline void transpose_block16(const uint16_t* src, int64_t src_stride, uint16_t* dst, int64_t dst_stride) {
  __m256i r[16], t[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i * src_stride));
  for (int i = 0; i < 8; ++i) {  // pairs of rows, interleaved by 16 bits
    t[2 * i] = _mm256_unpacklo_epi16(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_epi16(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {  // then by 32
    r[4 * i + 0] = _mm256_unpacklo_epi32(t[4 * i + 0], t[4 * i + 2]);
    r[4 * i + 1] = _mm256_unpackhi_epi32(t[4 * i + 0], t[4 * i + 2]);
    r[4 * i + 2] = _mm256_unpacklo_epi32(t[4 * i + 1], t[4 * i + 3]);
    r[4 * i + 3] = _mm256_unpackhi_epi32(t[4 * i + 1], t[4 * i + 3]);
  }
  for (int i = 0; i < 2; ++i) {  // then by 64: each 128-bit lane is now 8 rows of one column
    for (int k = 0; k < 4; ++k) {
      t[8 * i + 2 * k] = _mm256_unpacklo_epi64(r[8 * i + k], r[8 * i + 4 + k]);
      t[8 * i + 2 * k + 1] = _mm256_unpackhi_epi64(r[8 * i + k], r[8 * i + 4 + k]);
    }
  }
  for (int k = 0; k < 8; ++k) {  // rows 0-7 and 8-15 of columns k and k + 8
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + k * dst_stride),
                        _mm256_permute2x128_si256(t[k], t[8 + k], 0x20));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + (k + 8) * dst_stride),
                        _mm256_permute2x128_si256(t[k], t[8 + k], 0x31));
  }
}
constexpr int64_t kBlock = 16;
#else
inline void transpose_block16(const uint16_t*, int64_t, uint16_t*, int64_t) {}
constexpr int64_t kBlock = 0;  // element by element
#endif

// One 16 x 16 block into fp32: through a tile, each of its rows then widened to a cache line.
inline void transpose_block16(const uint16_t* src, int64_t src_stride, float* dst, int64_t dst_stride) {
  uint16_t tile[16 * 16];
  transpose_block16(src, src_stride, tile, 16);
  for (int k = 0; k < 16; ++k) {
#pragma omp simd
    for (int i = 0; i < 16; ++i) dst[k * dst_stride + i] = load(tile, k * 16 + i);
  }
}

inline void copy_element(const uint16_t* s, uint16_t* d) noexcept { *d = *s; }
inline void copy_element(const uint16_t* s, float* d) noexcept { *d = load(s, 0); }

// (R, C) -> (C, R) for a contiguous 16-bit matrix (bf16) at s, into d (row stride R) as Out:
// 16-bit, or fp32 from bf16 (the weight gradients, widened in the same pass). Strips of 32
// rows, so that each destination row receives whole cache lines.
template <typename Out>
void transpose_to(const uint16_t* s, int64_t R, int64_t C, Out* d) {
  constexpr int64_t kStrip = 32;
  const int64_t blocked_cols = kBlock ? C / kBlock * kBlock : 0;
  at::parallel_for(0, (R + kStrip - 1) / kStrip, 1, [&](int64_t first, int64_t last) {
    for (int64_t strip = first; strip < last; ++strip) {
      const int64_t r0 = strip * kStrip, r1 = std::min(R, r0 + kStrip);
      const int64_t blocked_r1 = kBlock ? r0 + (r1 - r0) / kBlock * kBlock : r0;
      for (int64_t c = 0; c < blocked_cols; c += kBlock) {
        for (int64_t r = r0; r < blocked_r1; r += kBlock) transpose_block16(s + r * C + c, C, d + c * R + r, R);
      }
      for (int64_t r = r0; r < r1; ++r) {  // what the blocks left: the last columns, the last rows
        const int64_t c_from = r < blocked_r1 ? blocked_cols : 0;
        for (int64_t c = c_from; c < C; ++c) copy_element(s + r * C + c, d + c * R + r);
      }
    }
  });
}

template <typename Out>
at::Tensor transpose_into(const at::Tensor& src, at::ScalarType out_type) {
  const int64_t R = src.size(0), C = src.size(1);
  auto dst = at::empty({C, R}, src.options().dtype(out_type));
  transpose_to(reinterpret_cast<const uint16_t*>(src.data_ptr()), R, C, reinterpret_cast<Out*>(dst.data_ptr()));
  return dst;
}

at::Tensor transpose16(const at::Tensor& src, bool widen = false) {
  TORCH_CHECK(src.dim() == 2 && src.is_contiguous() && src.element_size() == 2,
              "transpose16 takes a contiguous 2-d matrix of 16-bit values");
  if (!widen) return transpose_into<uint16_t>(src, src.scalar_type());
  TORCH_CHECK(src.scalar_type() == at::kBFloat16, "transpose16 widens bf16 only");
  return transpose_into<float>(src, at::kFloat);
}

// W stored row by row. oneDNN's reorder takes a transposed view through PyTorch's slow copy:
// a bf16 W stored transposed (the backward pass's W_hh^T) is transposed here instead.
at::Tensor rows_contiguous(const at::Tensor& w) {
  if (w.is_contiguous() || w.element_size() != 2 || !w.t().is_contiguous()) return w.contiguous();
  return transpose16(w.t());
}

// The recurrent GEMM of a time loop, x @ W^T with the same W at every step. Where PyTorch has
// oneDNN, W is reordered once into the layout its kernels read (for AMX, tiles of bf16 pairs),
// and each step runs on it: measured 1.3 to 1.8 times the speed of at::mm for the shapes of
// this package's models (64 x 1024 @ 1024 x 3072 and the like), where at::mm reorders W at
// every call. The reorder itself costs about ten steps' savings, so short loops (a start
// string, say) keep at::mm, as do builds without oneDNN, torch.backends.mkldnn.enabled =
// False, CHAR_RNN_PACKED_GEMM=0 (read once per process), and dtypes oneDNN refuses here.
class RecurrentGemm {
 public:
  // w: (N, K), any strides; batch: the rows of each step's x; steps: how many there will be.
  // at::mm reads W^T fastest from W stored row by row.
  RecurrentGemm(const at::Tensor& w, int64_t batch, int64_t steps) {
    static const auto reorder = find("mkldnn::_reorder_linear_weight");
    static const auto linear = find("mkldnn::_linear_pointwise");
    if (reorder && linear && steps >= kMinPackedSteps && at::globalContext().userEnabledMkldnn()) {
      try {
        std::vector<c10::IValue> stack{rows_contiguous(w), c10::IValue(batch)};
        reorder->callBoxed(&stack);
        packed_ = stack[0].toTensor();
        linear_ = linear;
        at::Tensor unused;
        (*this)(at::zeros({batch, w.size(1)}, w.options()), unused);  // one trial: oneDNN takes it
        return;
      } catch (const std::exception&) {  // this CPU or dtype: at::mm it is
        packed_.reset();
        linear_.reset();
      }
    }
    plain_t_ = w.contiguous().t();
  }

  // (B, K) -> (B, N): into `out` with at::mm, or a new tensor from oneDNN.
  at::Tensor operator()(const at::Tensor& x, at::Tensor& out) const {
    if (!packed_) return at::mm_out(out, x, plain_t_);
    std::vector<c10::IValue> stack{x, *packed_, c10::IValue(), c10::IValue(std::string("none")),
                                   c10::IValue(c10::List<std::optional<at::Scalar>>()), c10::IValue()};
    linear_->callBoxed(&stack);
    return stack[0].toTensor();
  }

 private:
  static std::optional<c10::OperatorHandle> find(const char* name) {
    if (std::getenv("CHAR_RNN_PACKED_GEMM") && std::string(std::getenv("CHAR_RNN_PACKED_GEMM")) == "0") {
      return std::nullopt;
    }
    return c10::Dispatcher::singleton().findSchema({name, ""});
  }

  static constexpr int64_t kMinPackedSteps = 16;

  at::Tensor plain_t_;
  std::optional<at::Tensor> packed_;
  std::optional<c10::OperatorHandle> linear_;
};

// Inside a parallel region oneDNN still plans a GEMM for the team's thread count (it may split
// the long sums between threads, which it then runs one after the other). Called in a
// region, the GEMMs that follow are planned for one thread, so each sums as it would on one
// thread and no number depends on the thread count. Outside a region it does nothing: there
// it would set the process's thread count.
void plan_for_one_thread() {
#if defined(_OPENMP)
  if (omp_in_parallel()) omp_set_num_threads(1);  // this thread's task in the region only
#endif
}

// Parts of a GEMM's output columns, each a one-thread GEMM run by one of the threads: two on
// one or two threads, so that a run's numbers are the same on either, one per thread on more
// (where the trainer's check finds they depend on the count, threads.py).
int64_t column_parts() { return std::max<int64_t>(2, at::get_num_threads()); }

// f(part) for parts 0..count, spread over the threads, each part's GEMMs planned for one.
template <typename F>
void for_parts(int64_t count, const F& f) {
  at::parallel_for(0, count, 1, [&](int64_t first, int64_t last) {
    plan_for_one_thread();
    for (int64_t p = first; p < last; ++p) f(p);
  });
}

// The backward pass's recurrent GEMM, dh = dg @ W_hh, in parts of dh's columns (column_parts),
// each a one-thread GEMM on its own columns of W (reordered once, as RecurrentGemm does).
// oneDNN splits the single GEMM's long sums (K = 3H or 4H) between two threads instead and
// not on one; measured on two threads, 64 x 3072 @ 3072 x 1024 in bf16 ran 14 % faster in two
// parts, 64 x 2304 @ 2304 x 768 17 %, 64 x 6144 @ 6144 x 1536 4 %, and 64 x 2048 @ 2048 x 512
// no faster (parts of 256), so parts narrower than kMinPartWidth keep the one GEMM.
class ColumnParts {
 public:
  // w: (N, K) as RecurrentGemm takes it; the output (B, N) comes in parts of columns.
  ColumnParts(const at::Tensor& w, int64_t batch, int64_t steps) : N_(w.size(0)) {
    count_ = N_ / column_parts() >= kMinPartWidth ? column_parts() : 1;
    const auto rows = count_ > 1 ? rows_contiguous(w) : w;
    for (int64_t p = 0; p < count_; ++p) {
      gemms_.emplace_back(rows.slice(0, first(p), first(p + 1)), batch, steps);
      scratch_.push_back(at::empty({batch, first(p + 1) - first(p)}, w.options()));
    }
    outs_.resize(count_);
  }

  int64_t count() const { return count_; }
  int64_t first(int64_t part) const { return part * N_ / count_; }  // its first column
  const at::Tensor& out(int64_t part) const { return outs_[part]; }

  void operator()(const at::Tensor& x) {
    for_parts(count_, [&](int64_t p) { outs_[p] = gemms_[p](x, scratch_[p]); });
  }

  at::Tensor joined() const { return count_ == 1 ? outs_[0] : at::cat(outs_, 1); }

 private:
  static constexpr int64_t kMinPartWidth = 384;

  int64_t N_, count_;
  std::vector<RecurrentGemm> gemms_;
  std::vector<at::Tensor> scratch_, outs_;
};

// The weight gradients of all steps as (X^T @ dG)^T: inputs_t (K, T*B) contiguous bf16, the
// gates' gradients in blocks of columns (T*B, G_i), any strides; returns (sum of G_i, K) in
// fp32. Each block runs in column parts (column_parts), each part transposed and widened into
// its rows of the result by the thread that computed it. Left to itself, oneDNN splits these
// GEMMs' long sums (K = T*B) between two threads and not on one.
at::Tensor weight_gradient(const at::Tensor& inputs_t, const std::vector<at::Tensor>& blocks) {
  TORCH_CHECK(inputs_t.dim() == 2 && inputs_t.is_contiguous() && inputs_t.scalar_type() == at::kBFloat16,
              "weight_gradient takes the inputs transposed, contiguous, in bf16");
  const int64_t K = inputs_t.size(0);
  int64_t G = 0;
  for (const auto& block : blocks) {
    TORCH_CHECK(block.dim() == 2 && block.size(0) == inputs_t.size(1) && block.scalar_type() == at::kBFloat16,
                "weight_gradient takes the gates' gradients as (T*B, G) blocks in bf16");
    G += block.size(1);
  }
  auto out = at::empty({G, K}, inputs_t.options().dtype(at::kFloat));
  const int64_t parts = column_parts();
  int64_t row = 0;
  for (const auto& block : blocks) {
    const int64_t N = block.size(1);
    for_parts(parts, [&](int64_t p) {
      const int64_t c0 = p * N / parts, c1 = (p + 1) * N / parts;
      const auto product = at::mm(inputs_t, block.slice(1, c0, c1));  // (K, c1 - c0), contiguous
      transpose_to(reinterpret_cast<const uint16_t*>(product.data_ptr()), K, c1 - c0,
                   out.data_ptr<float>() + (row + c0) * K);
    });
    row += N;
  }
  return out;
}

// Calls f(first column, end column, those columns of the GEMM's output) for each part of `mm`,
// or f(0, H, nullptr) where there is no output yet (the backward pass's first step).
template <typename G, typename F>
void for_column_parts(const ColumnParts& mm, bool has_mm, int64_t H, const F& f) {
  if (!has_mm) {
    f(int64_t{0}, H, static_cast<const G*>(nullptr));
    return;
  }
  for (int64_t p = 0; p < mm.count(); ++p) f(mm.first(p), mm.first(p + 1), ptr<G>(mm.out(p)));
}

// The carried states of a forward pass, hs[t] being the state before step t: in fp32, and in
// the GEMM dtype for the next step's GEMM (the same tensor when that is fp32 too).
struct States {
  at::Tensor hs, hs_c;
};

States start_states(const at::Tensor& h0, int64_t T, const at::Tensor& w_hh_t) {
  const int64_t B = h0.size(0), H = h0.size(1);
  auto hs = at::empty({T + 1, B, H}, h0.options().dtype(at::kFloat));
  hs[0].copy_(h0);
  if (w_hh_t.scalar_type() == at::kFloat) return {hs, hs};
  auto hs_c = at::empty({T + 1, B, H}, w_hh_t.options());
  hs_c[0].copy_(h0);
  return {hs, hs_c};
}

// ---- GRU ---------------------------------------------------------------------------------

// One step: gi (B, 3H) input projections without bias, gh (B, 3H) = h @ W_hh^T. The
// activations the backward pass reads (r, z, W_hn h + b_hn, n) are kept in the GEMM dtype:
// under bf16 that halves their memory and the bytes written here and read back there, as
// autocast keeps a layer's saved activations; the carried state stays fp32.
template <typename G>
void gru_step(const G* gi, const G* gh, const float* b_rz, const float* b_in, const float* b_hn,
              const float* h, G* rz, G* ghn, G* n, float* h_next, G* h_next_c,
              int64_t b0, int64_t b1, int64_t H) noexcept {
  for (int64_t b = b0; b < b1; ++b) {
    const G* gi_b = gi + b * 3 * H;
    const G* gh_b = gh + b * 3 * H;
    G* rz_b = rz + b * 2 * H;
    const int64_t o = b * H;
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      float r = sigmoid(load(gi_b, j) + load(gh_b, j) + b_rz[j]);
      float z = sigmoid(load(gi_b, H + j) + load(gh_b, H + j) + b_rz[H + j]);
      float hn = load(gh_b, 2 * H + j) + b_hn[j];
      float nn = tanh_(load(gi_b, 2 * H + j) + b_in[j] + r * hn);
      float next = nn + z * (h[o + j] - nn);
      store(rz_b, j, r);
      store(rz_b, H + j, z);
      store(ghn, o + j, hn);
      store(n, o + j, nn);
      h_next[o + j] = next;
      store(h_next_c, o + j, next);
    }
  }
}

template <typename G>
std::vector<at::Tensor> gru_forward_impl(const at::Tensor& gi, const at::Tensor& h0, const at::Tensor& w_hh_t,
                                         const at::Tensor& b_ih, const at::Tensor& b_hh) {
  const int64_t T = gi.size(0), B = gi.size(1), H = h0.size(1), BH = B * H;
  auto [hs, hs_c] = start_states(h0, T, w_hh_t);
  auto rz = at::empty({T, B, 2 * H}, w_hh_t.options());
  auto ghn = at::empty({T, B, H}, w_hh_t.options());
  auto n = at::empty({T, B, H}, w_hh_t.options());
  auto gh_out = at::empty({B, 3 * H}, w_hh_t.options());
  const RecurrentGemm recurrent(w_hh_t.t(), B, T);
  auto b_rz = (b_ih.slice(0, 0, 2 * H) + b_hh.slice(0, 0, 2 * H)).contiguous();
  auto b_in = b_ih.slice(0, 2 * H).contiguous();
  auto b_hn = b_hh.slice(0, 2 * H).contiguous();
  const G* gi_p = ptr<G>(gi);
  float* hs_p = ptr<float>(hs);
  G *hs_c_p = ptr<G>(hs_c), *rz_p = ptr<G>(rz), *ghn_p = ptr<G>(ghn), *n_p = ptr<G>(n);
  for (int64_t t = 0; t < T; ++t) {
    const auto gh = recurrent(hs_c[t], gh_out);  // held: oneDNN returns a new tensor
    for_rows(B, [&](int64_t b0, int64_t b1) {
      gru_step<G>(gi_p + t * 3 * BH, ptr<G>(gh), ptr<float>(b_rz), ptr<float>(b_in), ptr<float>(b_hn), hs_p + t * BH,
                  rz_p + t * 2 * BH, ghn_p + t * BH, n_p + t * BH, hs_p + (t + 1) * BH, hs_c_p + (t + 1) * BH, b0,
                  b1, H);
    });
  }
  return {hs, hs_c, rz, ghn, n};
}

// One backward step. dh_in = d_out[t] + dh_carry + dh_mm (the last from step t+1's GEMM).
// d_out comes in fp32 or, where the layer's output went on in the GEMM dtype, in that.
// Rows b0..b1, columns j0..j1; dh_mm holds those columns of step t+1's GEMM (B, j1 - j0), or
// is nullptr at the last step.
template <typename G, typename D>
void gru_step_back(const D* d_out, float* dh_carry, const G* dh_mm, const float* h, const G* rz,
                   const G* ghn, const G* n, G* dg, G* dgi_n, float* db_hh, float* db_in,
                   int64_t b0, int64_t b1, int64_t j0, int64_t j1, int64_t H) noexcept {
  for (int64_t b = b0; b < b1; ++b) {
    const G* rz_b = rz + b * 2 * H;
    G* dg_b = dg + b * 3 * H;
    const G* dh_mm_b = dh_mm ? dh_mm + b * (j1 - j0) : nullptr;
    const int64_t o = b * H;
#pragma omp simd
    for (int64_t j = j0; j < j1; ++j) {
      float dh = load(d_out, o + j) + dh_carry[o + j] + (dh_mm_b ? load(dh_mm_b, j - j0) : 0.0f);
      float r = load(rz_b, j), z = load(rz_b, H + j), nn = load(n, o + j);
      float dz = dh * (h[o + j] - nn) * z * (1.0f - z);
      float dn = dh * (1.0f - z) * (1.0f - nn * nn);
      float dghn = dn * r;
      float dr = dn * load(ghn, o + j) * r * (1.0f - r);
      dh_carry[o + j] = dh * z;
      store(dg_b, j, dr);
      store(dg_b, H + j, dz);
      store(dg_b, 2 * H + j, dghn);
      store(dgi_n, o + j, dn);
      db_hh[j] += dr;
      db_hh[H + j] += dz;
      db_hh[2 * H + j] += dghn;
      db_in[j] += dn;
    }
  }
}

template <typename G, typename D>
std::vector<at::Tensor> gru_backward_impl(const at::Tensor& d_out, const at::Tensor& hs, const at::Tensor& rz,
                                          const at::Tensor& ghn, const at::Tensor& n, const at::Tensor& w_hh) {
  const int64_t T = n.size(0), B = n.size(1), H = n.size(2), BH = B * H;
  auto f32 = hs.options();
  auto dg = at::empty({T, B, 3 * H}, w_hh.options());
  auto dgi_n = at::empty({T, B, H}, w_hh.options());
  auto dh_carry = at::zeros({B, H}, f32);
  ColumnParts recurrent(w_hh.t(), B, T);
  auto db_hh = at::zeros({kRowBlocks, 3 * H}, f32);  // partial sums, one row per block
  auto db_in = at::zeros({kRowBlocks, H}, f32);
  const D* d_out_p = ptr<D>(d_out);
  const float* hs_p = ptr<float>(hs);
  const G *rz_p = ptr<G>(rz), *ghn_p = ptr<G>(ghn), *n_p = ptr<G>(n);
  G *dg_p = ptr<G>(dg), *dgi_n_p = ptr<G>(dgi_n);
  for (int64_t t = T - 1; t >= 0; --t) {
    for_row_blocks(B, [&](int64_t k, int64_t b0, int64_t b1) {
      for_column_parts<G>(recurrent, t < T - 1, H, [&](int64_t j0, int64_t j1, const G* dh_mm) {
        gru_step_back<G, D>(d_out_p + t * BH, ptr<float>(dh_carry), dh_mm, hs_p + t * BH, rz_p + t * 2 * BH,
                            ghn_p + t * BH, n_p + t * BH, dg_p + t * 3 * BH, dgi_n_p + t * BH,
                            ptr<float>(db_hh) + k * 3 * H, ptr<float>(db_in) + k * H, b0, b1, j0, j1, H);
      });
    });
    recurrent(dg[t]);
  }
  auto dh0 = dh_carry + recurrent.joined().to(at::kFloat);
  return {dg, dgi_n, dh0, sum_blocks(db_hh), sum_blocks(db_in)};
}

// ---- LSTM --------------------------------------------------------------------------------

// One step: pre (B, 4H) input projections without bias, gh (B, 4H) = h @ W_hh^T; gate order
// i, f, g, o. Writes the activated gates to act (B, 4H) and tanh(c') in the GEMM dtype, as
// the GRU keeps its activations; the cell state, carried, stays fp32.
template <typename G>
void lstm_step(const G* pre, const G* gh, const float* bias, const float* c, G* act, float* c_next,
               G* tanh_c, float* h_next, G* h_next_c, int64_t b0, int64_t b1, int64_t H) noexcept {
  for (int64_t b = b0; b < b1; ++b) {
    const G* p = pre + b * 4 * H;
    const G* q = gh + b * 4 * H;
    G* a = act + b * 4 * H;
    const int64_t o = b * H;
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      float i = sigmoid(load(p, j) + load(q, j) + bias[j]);
      float f = sigmoid(load(p, H + j) + load(q, H + j) + bias[H + j]);
      float g = tanh_(load(p, 2 * H + j) + load(q, 2 * H + j) + bias[2 * H + j]);
      float og = sigmoid(load(p, 3 * H + j) + load(q, 3 * H + j) + bias[3 * H + j]);
      float cn = f * c[o + j] + i * g;
      float tc = tanh_(cn);
      float hn = og * tc;
      store(a, j, i);
      store(a, H + j, f);
      store(a, 2 * H + j, g);
      store(a, 3 * H + j, og);
      c_next[o + j] = cn;
      store(tanh_c, o + j, tc);
      h_next[o + j] = hn;
      store(h_next_c, o + j, hn);
    }
  }
}

template <typename G>
std::vector<at::Tensor> lstm_forward_impl(const at::Tensor& pre, const at::Tensor& h0, const at::Tensor& c0,
                                          const at::Tensor& w_hh_t, const at::Tensor& bias) {
  const int64_t T = pre.size(0), B = pre.size(1), H = h0.size(1), BH = B * H;
  auto [hs, hs_c] = start_states(h0, T, w_hh_t);
  auto cs = at::empty({T + 1, B, H}, h0.options().dtype(at::kFloat));
  auto act = at::empty({T, B, 4 * H}, w_hh_t.options());
  auto tanh_c = at::empty({T, B, H}, w_hh_t.options());
  auto gh_out = at::empty({B, 4 * H}, w_hh_t.options());
  const RecurrentGemm recurrent(w_hh_t.t(), B, T);
  cs[0].copy_(c0);
  const G* pre_p = ptr<G>(pre);
  float *hs_p = ptr<float>(hs), *cs_p = ptr<float>(cs);
  G *hs_c_p = ptr<G>(hs_c), *act_p = ptr<G>(act), *tanh_c_p = ptr<G>(tanh_c);
  for (int64_t t = 0; t < T; ++t) {
    const auto gh = recurrent(hs_c[t], gh_out);  // held: oneDNN returns a new tensor
    for_rows(B, [&](int64_t b0, int64_t b1) {
      lstm_step<G>(pre_p + t * 4 * BH, ptr<G>(gh), ptr<float>(bias), cs_p + t * BH, act_p + t * 4 * BH,
                   cs_p + (t + 1) * BH, tanh_c_p + t * BH, hs_p + (t + 1) * BH, hs_c_p + (t + 1) * BH, b0, b1, H);
    });
  }
  return {hs, hs_c, cs, act, tanh_c};
}

// Rows b0..b1, columns j0..j1, dh_mm as in gru_step_back.
template <typename G, typename D>
void lstm_step_back(const D* d_out, const G* dh_mm, float* dc, const float* c_prev, const G* act,
                    const G* tanh_c, G* dg, float* db, int64_t b0, int64_t b1, int64_t j0, int64_t j1,
                    int64_t H) noexcept {
  for (int64_t b = b0; b < b1; ++b) {
    const G* a = act + b * 4 * H;
    G* d = dg + b * 4 * H;
    const G* dh_mm_b = dh_mm ? dh_mm + b * (j1 - j0) : nullptr;
    const int64_t o = b * H;
#pragma omp simd
    for (int64_t j = j0; j < j1; ++j) {
      float dh = load(d_out, o + j) + (dh_mm_b ? load(dh_mm_b, j - j0) : 0.0f);
      float i = load(a, j), f = load(a, H + j), g = load(a, 2 * H + j), og = load(a, 3 * H + j);
      float tc = load(tanh_c, o + j);
      float d_o = dh * tc * og * (1.0f - og);
      float dcc = dc[o + j] + dh * og * (1.0f - tc * tc);
      float d_i = dcc * g * i * (1.0f - i);
      float d_g = dcc * i * (1.0f - g * g);
      float d_f = dcc * c_prev[o + j] * f * (1.0f - f);
      dc[o + j] = dcc * f;
      store(d, j, d_i);
      store(d, H + j, d_f);
      store(d, 2 * H + j, d_g);
      store(d, 3 * H + j, d_o);
      db[j] += d_i;
      db[H + j] += d_f;
      db[2 * H + j] += d_g;
      db[3 * H + j] += d_o;
    }
  }
}

template <typename G, typename D>
std::vector<at::Tensor> lstm_backward_impl(const at::Tensor& d_out, const at::Tensor& d_c_last,
                                           const at::Tensor& cs, const at::Tensor& act, const at::Tensor& tanh_c,
                                           const at::Tensor& w_hh) {
  const int64_t T = tanh_c.size(0), B = tanh_c.size(1), H = tanh_c.size(2), BH = B * H;
  auto dg = at::empty({T, B, 4 * H}, w_hh.options());
  ColumnParts recurrent(w_hh.t(), B, T);
  auto dc = d_c_last.to(at::kFloat).clone().contiguous();
  auto db = at::zeros({kRowBlocks, 4 * H}, cs.options());  // partial sums, one row per block
  const D* d_out_p = ptr<D>(d_out);
  const float* cs_p = ptr<float>(cs);
  const G *act_p = ptr<G>(act), *tanh_c_p = ptr<G>(tanh_c);
  G* dg_p = ptr<G>(dg);
  for (int64_t t = T - 1; t >= 0; --t) {
    for_row_blocks(B, [&](int64_t k, int64_t b0, int64_t b1) {
      for_column_parts<G>(recurrent, t < T - 1, H, [&](int64_t j0, int64_t j1, const G* dh_mm) {
        lstm_step_back<G, D>(d_out_p + t * BH, dh_mm, ptr<float>(dc), cs_p + t * BH, act_p + t * 4 * BH,
                             tanh_c_p + t * BH, dg_p + t * 4 * BH, ptr<float>(db) + k * 4 * H, b0, b1, j0, j1, H);
      });
    });
    recurrent(dg[t]);
  }
  return {dg, recurrent.joined().to(at::kFloat), dc, sum_blocks(db)};
}

// The state tensors must be contiguous fp32 on the CPU; the GEMM input (the forward pass's
// projections, where there is one) and the saved activations contiguous and in the weights'
// dtype, fp32 or bf16; the output gradient contiguous, in fp32 or the weights' dtype.
void check_inputs(const std::vector<at::Tensor>& fp32, const at::Tensor& weight,
                  const std::vector<at::Tensor>& in_gemm_dtype = {}, const at::Tensor* d_out = nullptr) {
  for (const auto& t : fp32) {
    TORCH_CHECK(t.scalar_type() == at::kFloat && t.is_contiguous() && t.device().is_cpu(),
                "fused kernels take contiguous fp32 CPU state tensors");
  }
  TORCH_CHECK(weight.scalar_type() == at::kFloat || weight.scalar_type() == at::kBFloat16,
              "fused kernels run in fp32 or bf16");
  for (const auto& t : in_gemm_dtype) {
    TORCH_CHECK(t.scalar_type() == weight.scalar_type() && t.is_contiguous(),
                "the projections and saved activations must be contiguous and in the weights' dtype");
  }
  TORCH_CHECK(d_out == nullptr || ((d_out->scalar_type() == at::kFloat || d_out->scalar_type() == weight.scalar_type())
                                   && d_out->is_contiguous()),
              "the output gradient must be contiguous, in fp32 or the weights' dtype");
}

#define DISPATCH(weight, call) \
  ((weight).scalar_type() == at::kBFloat16 ? call<Bf16> : call<float>)

// The backward passes, by the GEMM dtype and the output gradient's.
#define DISPATCH_BACKWARD(weight, d_out, call)                                             \
  ((weight).scalar_type() == at::kBFloat16                                                 \
       ? ((d_out).scalar_type() == at::kBFloat16 ? call<Bf16, Bf16> : call<Bf16, float>)   \
       : call<float, float>)

std::vector<at::Tensor> gru_forward(at::Tensor gi, at::Tensor h0, at::Tensor w_hh_t, at::Tensor b_ih,
                                    at::Tensor b_hh) {
  check_inputs({h0, b_ih, b_hh}, w_hh_t, {gi});
  return DISPATCH(w_hh_t, gru_forward_impl)(gi, h0, w_hh_t, b_ih, b_hh);
}

std::vector<at::Tensor> gru_backward(at::Tensor d_out, at::Tensor hs, at::Tensor rz, at::Tensor ghn, at::Tensor n,
                                     at::Tensor w_hh) {
  check_inputs({hs}, w_hh, {rz, ghn, n}, &d_out);
  return DISPATCH_BACKWARD(w_hh, d_out, gru_backward_impl)(d_out, hs, rz, ghn, n, w_hh);
}

std::vector<at::Tensor> lstm_forward(at::Tensor pre, at::Tensor h0, at::Tensor c0, at::Tensor w_hh_t,
                                     at::Tensor bias) {
  check_inputs({h0, c0, bias}, w_hh_t, {pre});
  return DISPATCH(w_hh_t, lstm_forward_impl)(pre, h0, c0, w_hh_t, bias);
}

std::vector<at::Tensor> lstm_backward(at::Tensor d_out, at::Tensor d_c_last, at::Tensor cs, at::Tensor act,
                                      at::Tensor tanh_c, at::Tensor w_hh) {
  check_inputs({cs}, w_hh, {act, tanh_c}, &d_out);
  return DISPATCH_BACKWARD(w_hh, d_out, lstm_backward_impl)(d_out, d_c_last, cs, act, tanh_c, w_hh);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("gru_forward", &gru_forward);
  m.def("gru_backward", &gru_backward);
  m.def("lstm_forward", &lstm_forward);
  m.def("lstm_backward", &lstm_backward);
  m.def("transpose16", &transpose16, pybind11::arg("src"), pybind11::arg("widen") = false);
  m.def("weight_gradient", &weight_gradient);
}
