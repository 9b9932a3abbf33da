// CPU distance kernels: one pass over the rows with float64 accumulation, parallel over fixed chunks of the
// vector and reduced in chunk order, so the result does not depend on thread scheduling.
#include "cpu/distance.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace fisherx::cpu {
namespace {

constexpr int64_t kChunk = 4096;  // elements per work item: the target chunk and its sqrt stay in L1/L2
// Elements (over all rows) below which one more thread costs more than it saves: ~100 us of work. It matters most
// on a busy machine, where a parallel region waits for a thread the OS has descheduled.
constexpr int64_t kMinWorkPerThread = int64_t(1) << 18;

// Runs body(begin, end, acc) over fixed chunks of [0, n) of `rows` vectors; every chunk accumulates into its own
// slot of m doubles, and the slots are summed in chunk order, so the answer is the same for any thread count.
template <typename Body>
std::vector<double> chunked_sum(int64_t n, int64_t rows, int64_t m, int nthreads, Body body) {
  const int64_t nchunks = std::max<int64_t>(1, (n + kChunk - 1) / kChunk);
  std::vector<double> partial(static_cast<size_t>(nchunks * m), 0.0);
  const int64_t useful = std::max<int64_t>(1, n * std::max<int64_t>(rows, 1) / kMinWorkPerThread);
  const int threads = static_cast<int>(std::clamp<int64_t>(useful, 1, std::max(1, nthreads)));
#pragma omp parallel for schedule(static) num_threads(threads) if (nchunks > 1 && threads > 1)
  for (int64_t c = 0; c < nchunks; ++c) {
    const int64_t b = c * kChunk, e = std::min(n, b + kChunk);
    body(b, e, partial.data() + c * m);
  }
  std::vector<double> total(static_cast<size_t>(m), 0.0);
  for (int64_t c = 0; c < nchunks; ++c)
    for (int64_t i = 0; i < m; ++i) total[i] += partial[c * m + i];
  return total;
}

template <typename T>
inline double at(const T* p, int64_t j, int64_t stride) {
  return static_cast<double>(p[j * stride]);
}

inline bool row_ok(const double* st) {
  return std::isfinite(st[kStatSum]) && st[kStatSum] > 0.0 && st[kStatNeg] == 0.0;
}

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// Calls f(source_stride, target_stride), with compile-time 1s when both operands are contiguous so the loops get
// unit-stride vector loads, else with the runtime strides. The inner loops are `omp simd` reductions: a fixed
// lane-wise summation order chosen at compile time, so results still do not depend on the thread count.
template <typename F>
auto with_strides(int64_t ss, int64_t ts, F f) {
  using One = std::integral_constant<int64_t, 1>;
  if (ss == 1 && ts == 1) return f(One{}, One{});
  return f(ss, ts);
}

// Inner loops over one chunk [0, m) of a row, contiguous or strided. They are the hot code: the contiguous ones go
// through multiversioned wrappers (AVX-512 / AVX2 / baseline clones, FISHERX_MULTIVERSION) so the float64 square
// roots and sums run 8 (or 4) lanes wide on the machines that have them.
template <typename T, typename S>
__attribute__((always_inline)) inline void stats_impl(const T* __restrict p, S st, int64_t m, double* acc) {
  double s = 0.0, neg = 0.0;
#pragma omp simd reduction(+ : s, neg)
  for (int64_t j = 0; j < m; ++j) {
    const double v = at(p, j, st);
    s += v;
    neg += v < 0.0;
  }
  acc[kStatSum] += s;
  acc[kStatNeg] += neg;
}

template <typename T, typename S>
__attribute__((always_inline)) inline void target_sqrt_impl(const T* __restrict p, S st, int64_t m,
                                                            double* __restrict sb, double* acc) {
  double B = 0.0, negb = 0.0;
#pragma omp simd reduction(+ : B, negb)
  for (int64_t j = 0; j < m; ++j) {
    const double v = at(p, j, st);
    B += v;
    negb += v < 0.0;
    sb[j] = std::sqrt(v);
  }
  acc[0] += B;
  acc[1] += negb;
}

template <typename T, typename S>
__attribute__((always_inline)) inline void ftd_row_impl(const T* __restrict p, S st, int64_t m,
                                                        const double* __restrict sb, double* acc) {
  double A = 0.0, neg = 0.0, Sq = 0.0;
#pragma omp simd reduction(+ : A, neg, Sq)
  for (int64_t j = 0; j < m; ++j) {
    const double v = at(p, j, st);
    A += v;
    neg += v < 0.0;
    const double diff = std::sqrt(v) - sb[j];
    Sq += diff * diff;
  }
  acc[0] += A;
  acc[1] += neg;
  acc[2] += Sq;
}

template <typename T, typename S>
__attribute__((always_inline)) inline void cosine_target_impl(const T* __restrict p, S st, int64_t m,
                                                              double* __restrict vb, double* acc) {
  double B = 0.0, negb = 0.0, BB = 0.0;
#pragma omp simd reduction(+ : B, negb, BB)
  for (int64_t j = 0; j < m; ++j) {
    const double v = at(p, j, st);
    B += v;
    negb += v < 0.0;
    BB += v * v;
    vb[j] = v;
  }
  acc[0] += B;
  acc[1] += negb;
  acc[2] += BB;
}

template <typename T, typename S>
__attribute__((always_inline)) inline void cosine_row_impl(const T* __restrict p, S st, int64_t m,
                                                           const double* __restrict vb, double* acc) {
  double A = 0.0, neg = 0.0, AA = 0.0, AB = 0.0;
#pragma omp simd reduction(+ : A, neg, AA, AB)
  for (int64_t j = 0; j < m; ++j) {
    const double v = at(p, j, st);
    A += v;
    neg += v < 0.0;
    AA += v * v;
    AB += v * vb[j];
  }
  acc[0] += A;
  acc[1] += neg;
  acc[2] += AA;
  acc[3] += AB;
}

// Σ_j log(a_j·s + σ²) without a log per element: each x = a·s + σ² (a normal double, as σ² ≥ DBL_MIN is required)
// is split exactly into 2^e·f with f in [1, 2); the exponents are summed as integers and the mantissas multiplied,
// the product renormalised every kLogBlock elements (a lane's product stays below 2^kLogBlock). One log per block.
// Each multiply rounds by at most 2^-53 relative, i.e. adds at most 1.1e-16 to the sum of logs, the same as a
// correctly rounded log per element would.
constexpr int64_t kLogBlock = 256;
__attribute__((always_inline)) inline double split_exponent(double& x) {
  uint64_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  // The biased exponent as a double without an integer conversion (which AVX2 lacks): 2^52 + e_biased, minus
  // 2^52 + 1023. x > 0, so the sign bit is 0.
  uint64_t ebits = (bits >> 52) | 0x4330000000000000ull;
  double e;
  std::memcpy(&e, &ebits, sizeof e);
  bits = (bits & 0x000fffffffffffffull) | 0x3ff0000000000000ull;
  std::memcpy(&x, &bits, sizeof bits);
  return e - 4503599627371519.0;  // 2^52 + 1023
}

template <typename T, typename S>
__attribute__((always_inline)) inline double logsum_impl(const T* __restrict p, S st, int64_t m, double scale,
                                                         double sigma2) {
  double total = 0.0;
  for (int64_t b = 0; b < m; b += kLogBlock) {
    const int64_t e = std::min(m, b + kLogBlock);
    double prod = 1.0, ex = 0.0;
#pragma omp simd reduction(* : prod) reduction(+ : ex)
    for (int64_t j = b; j < e; ++j) {
      double x = at(p, j, st) * scale + sigma2;
      ex += split_exponent(x);
      prod *= x;
    }
    ex += split_exponent(prod);  // prod is a product of < 2^kLogBlock, a normal double
    total += std::log(prod) + ex * 0.69314718055994530942;
  }
  return total;
}

using One = std::integral_constant<int64_t, 1>;
#define FISHERX_LEAVES(T)                                                                                             \
  FISHERX_MULTIVERSION void stats_row(const T* p, One, int64_t m, double* acc) { stats_impl(p, One{}, m, acc); }      \
  void stats_row(const T* p, int64_t st, int64_t m, double* acc) { stats_impl(p, st, m, acc); }                       \
  FISHERX_MULTIVERSION void target_sqrt(const T* p, One, int64_t m, double* sb, double* acc) {                        \
    target_sqrt_impl(p, One{}, m, sb, acc);                                                                           \
  }                                                                                                                   \
  FISHERX_MULTIVERSION void ftd_row(const T* p, One, int64_t m, const double* sb, double* acc) {                      \
    ftd_row_impl(p, One{}, m, sb, acc);                                                                               \
  }                                                                                                                   \
  FISHERX_MULTIVERSION void cosine_target(const T* p, One, int64_t m, double* vb, double* acc) {                      \
    cosine_target_impl(p, One{}, m, vb, acc);                                                                         \
  }                                                                                                                   \
  FISHERX_MULTIVERSION void cosine_row(const T* p, One, int64_t m, const double* vb, double* acc) {                   \
    cosine_row_impl(p, One{}, m, vb, acc);                                                                            \
  }                                                                                                                   \
  FISHERX_MULTIVERSION double logsum(const T* p, One, int64_t m, double scale, double sigma2) {                       \
    return logsum_impl(p, One{}, m, scale, sigma2);                                                                   \
  }                                                                                                                   \
  void target_sqrt(const T* p, int64_t st, int64_t m, double* sb, double* acc) {                                      \
    target_sqrt_impl(p, st, m, sb, acc);                                                                              \
  }                                                                                                                   \
  void ftd_row(const T* p, int64_t st, int64_t m, const double* sb, double* acc) { ftd_row_impl(p, st, m, sb, acc); } \
  void cosine_target(const T* p, int64_t st, int64_t m, double* vb, double* acc) {                                    \
    cosine_target_impl(p, st, m, vb, acc);                                                                            \
  }                                                                                                                   \
  void cosine_row(const T* p, int64_t st, int64_t m, const double* vb, double* acc) {                                 \
    cosine_row_impl(p, st, m, vb, acc);                                                                               \
  }                                                                                                                   \
  double logsum(const T* p, int64_t st, int64_t m, double scale, double sigma2) {                                     \
    return logsum_impl(p, st, m, scale, sigma2);                                                                      \
  }
FISHERX_LEAVES(float)
FISHERX_LEAVES(double)
#undef FISHERX_LEAVES

}  // namespace

template <typename T>
void row_stats(Rows<T> x, double* stats, int nthreads) {
  auto tot = with_strides(x.stride, 1, [&](auto xs, auto) {
    return chunked_sum(x.n, x.rows, x.rows * kStats, nthreads, [&](int64_t b, int64_t e, double* acc) {
      for (int64_t k = 0; k < x.rows; ++k) stats_row(x.row(k) + b * x.stride, xs, e - b, acc + k * kStats);
    });
  });
  std::copy(tot.begin(), tot.end(), stats);
}

template <typename T>
void ftd_column(Rows<T> src, Rows<T> tgt, double* out, double* stats, int nthreads) {
  const int64_t K = src.rows, n = src.n;
  // Per source row: A = Σa, negatives, S = Σ(√a − √b)²; then the target's B and negatives.
  constexpr int M = 3;
  auto tot = with_strides(src.stride, tgt.stride, [&](auto ss, auto ts) {
    return chunked_sum(n, K + 1, K * M + kStats, nthreads, [&](int64_t b, int64_t e, double* acc) {
      double sb[kChunk];
      const int64_t m = e - b;
      target_sqrt(tgt.data + b * tgt.stride, ts, m, sb, acc + K * M);
      for (int64_t k = 0; k < K; ++k) ftd_row(src.row(k) + b * src.stride, ss, m, sb, acc + k * M);
    });
  });
  double* tst = stats + K * kStats;
  tst[kStatSum] = tot[K * M + kStatSum];
  tst[kStatNeg] = tot[K * M + kStatNeg];
  const double B = tst[kStatSum];
  std::vector<int64_t> refine;
  for (int64_t k = 0; k < K; ++k) {
    double* st = stats + k * kStats;
    st[kStatSum] = tot[k * M + 0];
    st[kStatNeg] = tot[k * M + 1];
    if (!row_ok(st) || !row_ok(tst)) {
      out[k] = kNaN;
      continue;
    }
    const double A = st[kStatSum], S = tot[k * M + 2];
    // d² = S/(2√A√B) − r with r = (√A − √B)²/(2√A√B): exact algebra, but the subtraction cancels when the traces
    // differ much more than the normalised vectors do (r ≫ d², both dimensionless); such rows get the exact second
    // pass below. √A·√B, not √(AB), so that traces up to the float64 limit do not overflow.
    const double den = 2.0 * std::sqrt(A) * std::sqrt(B);
    const double r = (std::sqrt(A) - std::sqrt(B)) * (std::sqrt(A) - std::sqrt(B)) / den;
    const double d2 = S / den - r;
    if (r > kFtdRefineRatio * std::max(d2, 0.0)) refine.push_back(k);
    out[k] = std::sqrt(std::clamp(d2, 0.0, 1.0));
  }
  if (refine.empty()) return;
  const int64_t R = static_cast<int64_t>(refine.size());
  const double ib = 1.0 / B;
  auto sq = chunked_sum(n, R + 1, R, nthreads, [&](int64_t b, int64_t e, double* acc) {
    for (int64_t i = 0; i < R; ++i) {
      const int64_t k = refine[i];
      const T* p = src.row(k);
      const double ia = 1.0 / stats[k * kStats + kStatSum];
      double S = 0.0;
      for (int64_t j = b; j < e; ++j) {
        const double diff = std::sqrt(at(p, j, src.stride) * ia) - std::sqrt(at(tgt.data, j, tgt.stride) * ib);
        S += diff * diff;
      }
      acc[i] += S;
    }
  });
  for (int64_t i = 0; i < R; ++i) out[refine[i]] = std::sqrt(std::clamp(0.5 * sq[i], 0.0, 1.0));
}

template <typename T>
void logdet_column(Rows<T> src, Rows<T> tgt, const double* src_scale, double tgt_scale, double sigma2, double* out,
                   int nthreads) {
  const int64_t K = src.rows, n = src.n;
  // Separable: L_k = Σ_j log(s_k·a_kj + σ²) − Σ_j log(t·b_j + σ²), one sum of logs per row (the target is row K).
  const bool fast = sigma2 >= std::numeric_limits<double>::min();  // x ≥ σ² is then a normal double
  auto tot = with_strides(src.stride, tgt.stride, [&](auto ss, auto ts) {
    return chunked_sum(n, K + 1, K + 1, nthreads, [&](int64_t b, int64_t e, double* acc) {
      const int64_t m = e - b;
      auto one_row = [&](const T* p, auto st, double s) {
        if (fast) return logsum(p + b * st, st, m, s, sigma2);
        double L = 0.0;
        for (int64_t j = 0; j < m; ++j) L += std::log(at(p + b * st, j, st) * s + sigma2);
        return L;
      };
      acc[K] += one_row(tgt.data, ts, tgt_scale);
      for (int64_t k = 0; k < K; ++k) acc[k] += one_row(src.row(k), ss, src_scale[k]);
    });
  });
  for (int64_t k = 0; k < K; ++k) tot[k] -= tot[K];
  for (int64_t k = 0; k < K; ++k) out[k] = n > 0 ? std::fabs(tot[k]) / static_cast<double>(n) : kNaN;
}

template <typename T>
void cosine_column(Rows<T> src, Rows<T> tgt, double* out, double* stats, int nthreads) {
  const int64_t K = src.rows, n = src.n;
  // Per source row: Σa, negatives, Σa², Σab; then the target's Σb, negatives, Σb².
  constexpr int M = 4;
  auto tot = with_strides(src.stride, tgt.stride, [&](auto ss, auto ts) {
    return chunked_sum(n, K + 1, K * M + 3, nthreads, [&](int64_t b, int64_t e, double* acc) {
      double vb[kChunk];
      const int64_t m = e - b;
      cosine_target(tgt.data + b * tgt.stride, ts, m, vb, acc + K * M);
      for (int64_t k = 0; k < K; ++k) cosine_row(src.row(k) + b * src.stride, ss, m, vb, acc + k * M);
    });
  });
  double* tst = stats + K * kStats;
  tst[kStatSum] = tot[K * M + 0];
  tst[kStatNeg] = tot[K * M + 1];
  const double BB = tot[K * M + 2];
  for (int64_t k = 0; k < K; ++k) {
    double* st = stats + k * kStats;
    st[kStatSum] = tot[k * M + 0];
    st[kStatNeg] = tot[k * M + 1];
    // √Σa²·√Σb², not √(Σa²·Σb²): the product of the two sums leaves the float64 range for entries near 1e±77.
    out[k] = (row_ok(st) && row_ok(tst)) ? tot[k * M + 3] / (std::sqrt(tot[k * M + 2]) * std::sqrt(BB)) : kNaN;
  }
}

#define FISHERX_INSTANTIATE(T)                                                                   \
  template void row_stats<T>(Rows<T>, double*, int);                                             \
  template void ftd_column<T>(Rows<T>, Rows<T>, double*, double*, int);                          \
  template void logdet_column<T>(Rows<T>, Rows<T>, const double*, double, double, double*, int); \
  template void cosine_column<T>(Rows<T>, Rows<T>, double*, double*, int);
FISHERX_INSTANTIATE(float)
FISHERX_INSTANTIATE(double)
#undef FISHERX_INSTANTIATE

}  // namespace fisherx::cpu
