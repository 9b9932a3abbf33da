// CPU distance kernels, shaped like csrc/cuda/distance.cu: one driver (accumulate) runs an op's accumulator over
// fixed chunks of the K source rows and the target, and a finish step per op turns the sums into distances. Sums
// are float64, per chunk, reduced in chunk order, so the result does not depend on thread scheduling.
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

constexpr int64_t kChunk = 4096;  // elements per work item: a chunk of the target and its cache stay in L1/L2
// Elements (over all rows) below which one more thread costs more than it saves: ~100 us of work. It matters most
// on a busy machine, where a parallel region waits for a thread the OS has descheduled.
constexpr int64_t kMinWorkPerThread = int64_t(1) << 18;
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

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

using One = std::integral_constant<int64_t, 1>;
template <typename T, typename S>
__attribute__((always_inline)) inline T ld(const T* p, int64_t j, S stride) {
  return p[j * stride];
}

template <size_t N>
__attribute__((always_inline)) inline void add_to(double* acc, const double (&sums)[N]) {
  for (size_t i = 0; i < N; ++i) acc[i] += sums[i];
}

inline bool row_ok(const double* st) {
  return std::isfinite(st[kStatSum]) && st[kStatSum] > 0.0 && st[kStatNeg] == 0.0;
}

// ---- The accumulators. Each op's run() is the loop over one chunk [0, m) of source row k against the target. On
// the first row (First::value != kLater) it also sums the target's own statistics and, when more rows follow
// (kFirstOfMany), fills `cache` with what they reuse: reading the target in the same loop as a row is ~2x faster
// than a loop of its own for K = 1 (measured, AVX2).
constexpr int kLater = 0, kFirstOfMany = 1, kOnly = 2;
// The sums are named scalars in an `omp simd` reduction (a fixed lane-wise order chosen at compile time): GCC 12
// vectorises those, and not an array of accumulators (6x slower). Negatives are counted in T: exact below 2^24.

// row_stats: per row Σa and the number of negatives; there is no target.
struct StatsOp {
  static constexpr int M = 2, MT = 0;
  template <typename T, typename S, typename First>
  __attribute__((always_inline)) static void run(const StatsOp&, First, int64_t, const T* __restrict a, S sa,
                                                 const T* __restrict, S, int64_t m, T* __restrict, double* acc,
                                                 double*) {
    double A = 0.0;
    T neg = 0;
#pragma omp simd reduction(+ : A, neg)
    for (int64_t j = 0; j < m; ++j) {
      const T v = ld(a, j, sa);
      A += v;
      neg += v < T(0) ? T(1) : T(0);
    }
    add_to(acc, {A, double(neg)});
  }
};

// FTD, one pass: per row Σa, negatives and S = Σ(√a − √b)²; the target's Σb and negatives. For float32 input each
// term is q² with q = (a − b)/(√a + √b) in float32: every operation there is one correctly rounded step on exact
// inputs, so q carries ≤ ~2.5 ulp (1.5e-7) relative error, q² twice that, and S, a sum of positive terms, ≤ 3e-7.
// float32 square roots run twice as many lanes as float64 ones, which is what brings FTD to the memory floor. float64
// input keeps √a − √b in float64 (2^-53 rounding).
struct FtdOp {
  static constexpr int M = 3, MT = 2;
  template <typename T, typename S, typename First>
  __attribute__((always_inline)) static void run(const FtdOp&, First, int64_t, const T* __restrict a, S sa,
                                                 const T* __restrict b, S sb, int64_t m, T* __restrict root_b,
                                                 double* acc, double* tacc) {
    // Keeps 0/0 out when a = b = 0 (q is then 0); it moves √a + √b ≥ 3.7e-23 by under 1e-15 relative.
    constexpr T kTiny = std::numeric_limits<float>::min();
    double A = 0.0, Sq = 0.0, B = 0.0;
    T neg = 0, negb = 0;
#pragma omp simd reduction(+ : A, Sq, B, neg, negb)
    for (int64_t j = 0; j < m; ++j) {
      const T v = ld(a, j, sa);
      A += v;
      neg += v < T(0) ? T(1) : T(0);
      T rb;
      if constexpr (First::value) {
        const T w = ld(b, j, sb);
        B += w;
        negb += w < T(0) ? T(1) : T(0);
        rb = std::sqrt(w);
        if constexpr (First::value == kFirstOfMany) root_b[j] = rb;
      } else {
        rb = root_b[j];
      }
      if constexpr (std::is_same_v<T, float>) {
        const double q = (v - ld(b, j, sb)) / (std::sqrt(v) + rb + kTiny);
        Sq += q * q;
      } else {
        const double d = std::sqrt(v) - rb;
        Sq += d * d;
      }
    }
    add_to(acc, {A, double(neg), Sq});
    if constexpr (First::value) add_to(tacc, {B, double(negb)});
  }
};

// The exact second pass for rows flagged by ftd_finish: Σ(√(a/A) − √(b/B))², as (a/A − b/B)/(√(a/A) + √(b/B)) in
// float64, so no term cancels. Only flagged rows run.
struct FtdRefineOp {
  static constexpr int M = 1, MT = 0;
  const std::vector<double>* inv_trace;  // 1/A_k per row (0 for unflagged rows), then 1/B
  bool active(int64_t k) const { return (*inv_trace)[k] != 0.0; }
  template <typename T, typename S, typename First>
  __attribute__((always_inline)) static void run(const FtdRefineOp& op, First, int64_t k, const T* __restrict a, S sa,
                                                 const T* __restrict b, S sb, int64_t m, T* __restrict, double* acc,
                                                 double*) {
    const double ia = (*op.inv_trace)[k], ib = op.inv_trace->back();
    double Sq = 0.0;
#pragma omp simd reduction(+ : Sq)
    for (int64_t j = 0; j < m; ++j) {
      const double x = ld(a, j, sa) * ia, y = ld(b, j, sb) * ib;
      const double q = (x - y) / (std::sqrt(x) + std::sqrt(y) + std::numeric_limits<double>::min());
      Sq += q * q;
    }
    acc[0] += Sq;
  }
};

// Cosine: per row Σa, negatives, Σa², Σab; the target's Σb, negatives, Σb². Rows read the target directly (it is
// in L1 after the first row).
struct CosineOp {
  static constexpr int M = 4, MT = 3;
  template <typename T, typename S, typename First>
  __attribute__((always_inline)) static void run(const CosineOp&, First, int64_t, const T* __restrict a, S sa,
                                                 const T* __restrict b, S sb, int64_t m, T* __restrict, double* acc,
                                                 double* tacc) {
    double A = 0.0, AA = 0.0, AB = 0.0, B = 0.0, BB = 0.0;
    T neg = 0, negb = 0;
#pragma omp simd reduction(+ : A, AA, AB, B, BB, neg, negb)
    for (int64_t j = 0; j < m; ++j) {
      const double v = ld(a, j, sa), w = ld(b, j, sb);
      A += v;
      neg += ld(a, j, sa) < T(0) ? T(1) : T(0);
      AA += v * v;
      AB += v * w;
      if constexpr (First::value) {
        B += w;
        negb += ld(b, j, sb) < T(0) ? T(1) : T(0);
        BB += w * w;
      }
    }
    add_to(acc, {A, double(neg), AA, AB});
    if constexpr (First::value) add_to(tacc, {B, double(negb), BB});
  }
};

// Σ_j log(a_j·s + σ²) without a log per element: each x = a·s + σ² (a normal double, as σ² ≥ DBL_MIN is required)
// is split exactly into 2^e·f with f in [1, 2); the exponents are summed and the mantissas multiplied, the product
// renormalised every kLogBlock elements (a lane's product stays below 2^kLogBlock). One log per block. Each
// multiply rounds by at most 2^-53 relative, i.e. adds at most 1.1e-16 to the sum of logs, the same as a correctly
// rounded log per element would.
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
constexpr double kLn2 = 0.69314718055994530942;

// Log-det is separable: per row Σ log(s_k·a + σ²); the target's Σ log(t·b + σ²).
struct LogdetOp {
  static constexpr int M = 1, MT = 1;
  const double* scale;  // K + 1, the target's last
  double sigma2;
  int64_t K;
  bool fast;  // σ² ≥ DBL_MIN: every x is a normal double, so the exponent split is exact
  template <typename T, typename S, typename First>
  __attribute__((always_inline)) static void run(const LogdetOp& op, First, int64_t k, const T* __restrict a, S sa,
                                                 const T* __restrict b, S sb, int64_t m, T* __restrict, double* acc,
                                                 double* tacc) {
    const double s = op.scale[k], t = op.scale[op.K], sigma2 = op.sigma2;
    double La = 0.0, Lb = 0.0;
    if (!op.fast) {
      for (int64_t j = 0; j < m; ++j) {
        La += std::log(ld(a, j, sa) * s + sigma2);
        if constexpr (First::value) Lb += std::log(ld(b, j, sb) * t + sigma2);
      }
    } else {
      for (int64_t blk = 0; blk < m; blk += kLogBlock) {
        const int64_t e = std::min(m, blk + kLogBlock);
        double pa = 1.0, ea = 0.0, pb = 1.0, eb = 0.0;
#pragma omp simd reduction(* : pa, pb) reduction(+ : ea, eb)
        for (int64_t j = blk; j < e; ++j) {
          double x = ld(a, j, sa) * s + sigma2;
          ea += split_exponent(x);
          pa *= x;
          if constexpr (First::value) {
            double y = ld(b, j, sb) * t + sigma2;
            eb += split_exponent(y);
            pb *= y;
          }
        }
        ea += split_exponent(pa);  // a product of < 2^kLogBlock, a normal double
        La += std::log(pa) + ea * kLn2;
        if constexpr (First::value) {
          eb += split_exponent(pb);
          Lb += std::log(pb) + eb * kLn2;
        }
      }
    }
    acc[0] += La;
    if constexpr (First::value) tacc[0] += Lb;
  }
};

// The hot leaves: for each op and dtype, the contiguous loops go through multiversioned wrappers (AVX-512 / AVX2 /
// baseline clones, FISHERX_MULTIVERSION) so that each clone vectorises them at its own width; strided input takes
// the plain template. (target_clones does not apply to templates, hence the wrappers.)
using Later = std::integral_constant<int, kLater>;
using FirstOfMany = std::integral_constant<int, kFirstOfMany>;
using Only = std::integral_constant<int, kOnly>;
#define FISHERX_LEAF(Op, T, First)                                                                              \
  FISHERX_MULTIVERSION void leaf(const Op& op, First f, int64_t k, const T* a, One, const T* b, One, int64_t m, \
                                 T* cache, double* acc, double* tacc) {                                         \
    Op::run(op, f, k, a, One{}, b, One{}, m, cache, acc, tacc);                                                 \
  }
#define FISHERX_LEAVES(Op)              \
  FISHERX_LEAF(Op, float, Later)        \
  FISHERX_LEAF(Op, float, FirstOfMany)  \
  FISHERX_LEAF(Op, float, Only)         \
  FISHERX_LEAF(Op, double, Later)       \
  FISHERX_LEAF(Op, double, FirstOfMany) \
  FISHERX_LEAF(Op, double, Only)
FISHERX_LEAVES(StatsOp)
FISHERX_LEAVES(FtdOp)
FISHERX_LEAVES(FtdRefineOp)
FISHERX_LEAVES(CosineOp)
FISHERX_LEAVES(LogdetOp)
#undef FISHERX_LEAVES
#undef FISHERX_LEAF

template <typename Op, typename T, typename First>
void leaf(const Op& op, First f, int64_t k, const T* a, int64_t sa, const T* b, int64_t sb, int64_t m, T* cache,
          double* acc, double* tacc) {
  Op::run(op, f, k, a, sa, b, sb, m, cache, acc, tacc);
}

template <typename Op>
constexpr bool always_active = true;
template <>
constexpr bool always_active<FtdRefineOp> = false;

// The driver: the sums of `op` over every chunk, K·Op::M per source row then Op::MT for the target. Contiguous
// operands get compile-time unit strides (unit-stride vector loads), others the runtime strides. With K = 0 the
// target runs as its own source, so its statistics are still checked.
template <typename Op, typename T>
std::vector<double> accumulate(const Op& op, Rows<T> src, Rows<T> tgt, int nthreads) {
  const int64_t K = src.rows, n = tgt.n, M = Op::M, MT = Op::MT;
  auto body = [&](auto ss, auto ts) {
    return chunked_sum(n, K + 1, K * M + MT, nthreads, [&](int64_t b, int64_t e, double* acc) {
      T cache[kChunk];
      const int64_t m = e - b;
      const T* tb = tgt.data + b * tgt.stride;
      if (K == 0) {
        double unused[Op::M] = {};
        leaf(op, Only{}, 0, tb, ts, tb, ts, m, cache, unused, acc);
        return;
      }
      bool first = true;
      for (int64_t k = 0; k < K; ++k) {
        if constexpr (!always_active<Op>)
          if (!op.active(k)) continue;
        const T* ak = src.row(k) + b * src.stride;
        double* ack = acc + k * M;
        if (!first)
          leaf(op, Later{}, k, ak, ss, tb, ts, m, cache, ack, acc + K * M);
        else if (K == 1)
          leaf(op, Only{}, k, ak, ss, tb, ts, m, cache, ack, acc + K * M);
        else
          leaf(op, FirstOfMany{}, k, ak, ss, tb, ts, m, cache, ack, acc + K * M);
        first = false;
      }
    });
  };
  if (src.stride == 1 && tgt.stride == 1) return body(One{}, One{});
  return body(src.stride, tgt.stride);
}

// The statistics of rows [0, rows) from sums laid out `M` per row, the first two being Σ and negatives.
void copy_stats(const std::vector<double>& sums, int64_t M, int64_t rows, int64_t offset, double* stats) {
  for (int64_t k = 0; k < rows; ++k) {
    stats[k * kStats + kStatSum] = sums[offset + k * M + 0];
    stats[k * kStats + kStatNeg] = sums[offset + k * M + 1];
  }
}

// accumulate, then the statistics of the K sources and of the target (row K of stats).
template <typename Op, typename T>
std::vector<double> sums_and_stats(const Op& op, Rows<T> src, Rows<T> tgt, double* stats, int nthreads) {
  auto sums = accumulate(op, src, tgt, nthreads);
  copy_stats(sums, Op::M, src.rows, 0, stats);
  copy_stats(sums, Op::MT, 1, src.rows * Op::M, stats + src.rows * kStats);
  return sums;
}

}  // namespace

template <typename T>
void row_stats(Rows<T> x, double* stats, int nthreads) {
  if (x.rows == 0) return;
  copy_stats(accumulate(StatsOp{}, x, Rows<T>{x.row(0), 1, x.n, 0, x.stride}, nthreads), StatsOp::M, x.rows, 0, stats);
}

template <typename T>
void ftd_column(Rows<T> src, Rows<T> tgt, double* out, double* stats, int nthreads) {
  const int64_t K = src.rows;
  const auto sums = sums_and_stats(FtdOp{}, src, tgt, stats, nthreads);
  const double* tst = stats + K * kStats;
  const double B = tst[kStatSum];
  // The one-pass result's relative error is S's (float64 sums: ~1e-13; float32 terms: 3e-7) times (1 + r/d²);
  // rows beyond the ratio take the exact second pass.
  const double max_ratio = std::is_same_v<T, float> ? kFtdRefineRatioF32 : kFtdRefineRatio;
  std::vector<double> inv_trace(static_cast<size_t>(K + 1), 0.0);
  bool refine = false;
  for (int64_t k = 0; k < K; ++k) {
    const double* st = stats + k * kStats;
    if (!row_ok(st) || !row_ok(tst)) {
      out[k] = kNaN;
      continue;
    }
    const double A = st[kStatSum], S = sums[k * FtdOp::M + 2];
    // d² = S/(2√A√B) − r with r = (√A − √B)²/(2√A√B): exact algebra, but the subtraction cancels when the traces
    // differ much more than the normalised vectors do (r ≫ d², both dimensionless). √A·√B, not √(AB), so that
    // traces up to the float64 limit do not overflow.
    const double den = 2.0 * std::sqrt(A) * std::sqrt(B);
    const double r = (std::sqrt(A) - std::sqrt(B)) * (std::sqrt(A) - std::sqrt(B)) / den;
    const double d2 = S / den - r;
    out[k] = std::sqrt(std::clamp(d2, 0.0, 1.0));
    if (r > max_ratio * std::max(d2, 0.0)) {
      inv_trace[k] = 1.0 / A;
      refine = true;
    }
  }
  if (!refine) return;
  inv_trace[K] = 1.0 / B;
  const auto sq = accumulate(FtdRefineOp{&inv_trace}, src, tgt, nthreads);
  for (int64_t k = 0; k < K; ++k)
    if (inv_trace[k] != 0.0) out[k] = std::sqrt(std::clamp(0.5 * sq[k], 0.0, 1.0));
}

template <typename T>
void logdet_column(Rows<T> src, Rows<T> tgt, const double* scale, double sigma2, double* out, int nthreads) {
  const int64_t K = src.rows, n = src.n;
  const LogdetOp op{scale, sigma2, K, sigma2 >= std::numeric_limits<double>::min()};
  const auto sums = accumulate(op, src, tgt, nthreads);
  for (int64_t k = 0; k < K; ++k) out[k] = n > 0 ? std::fabs(sums[k] - sums[K]) / static_cast<double>(n) : kNaN;
}

template <typename T>
void cosine_column(Rows<T> src, Rows<T> tgt, double* out, double* stats, int nthreads) {
  const int64_t K = src.rows;
  const auto sums = sums_and_stats(CosineOp{}, src, tgt, stats, nthreads);
  const double BB = sums[K * CosineOp::M + 2];
  for (int64_t k = 0; k < K; ++k) {
    const bool ok = row_ok(stats + k * kStats) && row_ok(stats + K * kStats);
    // √Σa²·√Σb², not √(Σa²·Σb²): the product of the two sums leaves the float64 range for entries near 1e±77.
    out[k] = ok ? sums[k * CosineOp::M + 3] / (std::sqrt(sums[k * CosineOp::M + 2]) * std::sqrt(BB)) : kNaN;
  }
}

#define FISHERX_INSTANTIATE(T)                                                           \
  template void row_stats<T>(Rows<T>, double*, int);                                     \
  template void ftd_column<T>(Rows<T>, Rows<T>, double*, double*, int);                  \
  template void logdet_column<T>(Rows<T>, Rows<T>, const double*, double, double*, int); \
  template void cosine_column<T>(Rows<T>, Rows<T>, double*, double*, int);
FISHERX_INSTANTIATE(float)
FISHERX_INSTANTIATE(double)
#undef FISHERX_INSTANTIATE

}  // namespace fisherx::cpu
