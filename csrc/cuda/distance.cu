// CUDA distance kernels. Each op is: accumulate<M> (grid = rows x blocks, each block writes M partial sums of
// its row), reduce_partials (one block per row, fixed order) and a small finish kernel that turns sums into
// distances. Row K of every grid is the target itself, so its statistics come out of the same launch.
#include "cuda/distance.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

namespace fisherx::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxBlocks = 512;  // per row; enough to fill an H100 for one long vector
constexpr int kMaxM = 4;

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("fisherx CUDA ") + what + ": " + cudaGetErrorString(err));
}

int64_t blocks_for(int64_t n) { return std::clamp<int64_t>((n + kThreads * 4 - 1) / (kThreads * 4), 1, kMaxBlocks); }

template <typename T>
__device__ __forceinline__ double load(const T* row, int64_t stride, int64_t j) {
  return static_cast<double>(row[j * stride]);
}

// Block-wide sum of M values per thread; the result is valid in thread 0.
template <int M>
__device__ void block_sum(double (&v)[M]) {
  __shared__ double warp_sums[kThreads / 32][M];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int m = 0; m < M; ++m)
    for (int off = 16; off > 0; off /= 2) v[m] += __shfl_down_sync(0xffffffffu, v[m], off);
  if (lane == 0)
#pragma unroll
    for (int m = 0; m < M; ++m) warp_sums[warp][m] = v[m];
  __syncthreads();
  if (warp == 0) {
#pragma unroll
    for (int m = 0; m < M; ++m) {
      v[m] = lane < kThreads / 32 ? warp_sums[lane][m] : 0.0;
      for (int off = 16; off > 0; off /= 2) v[m] += __shfl_down_sync(0xffffffffu, v[m], off);
    }
  }
}

// Row k < K reads source row k; row K reads the target (a == b there). The row is blockIdx.x, the fastest-varying
// index in launch order, so the blocks of all rows for one stretch of the vector are resident together and the
// target they all read comes from L2, not K + 1 times from DRAM. Four strided loads per operand are issued before
// any arithmetic, so enough bytes are in flight to saturate HBM.
template <typename T, int M, typename F>
__global__ void accumulate(Rows<T> src, Rows<T> tgt, F f, double* partial) {
  const int64_t k = blockIdx.x, K = src.rows, n = src.n, nb = gridDim.y;
  if (!f.active(k)) return;
  double acc[M];
#pragma unroll
  for (int m = 0; m < M; ++m) acc[m] = 0.0;
  const int64_t stride = nb * kThreads;
  // Row addresses once, before the loop (a table lookup for a list of tensors).
  const T* tb = tgt.row(0);
  const T* ak = k < K ? src.row(k) : tb;
  const int64_t sa = k < K ? src.stride : tgt.stride, sb = tgt.stride;
  int64_t j = blockIdx.y * (int64_t)kThreads + threadIdx.x;
  for (; j + 3 * stride < n; j += 4 * stride) {
    double a[4], b[4];
#pragma unroll
    for (int u = 0; u < 4; ++u) b[u] = load(tb, sb, j + u * stride);
#pragma unroll
    for (int u = 0; u < 4; ++u) a[u] = k < K ? load(ak, sa, j + u * stride) : b[u];
#pragma unroll
    for (int u = 0; u < 4; ++u) f(k, a[u], b[u], acc);
  }
  for (; j < n; j += stride) {
    const double b = load(tb, sb, j);
    const double a = k < K ? load(ak, sa, j) : b;
    f(k, a, b, acc);
  }
  block_sum<M>(acc);
  if (threadIdx.x == 0)
#pragma unroll
    for (int m = 0; m < M; ++m) partial[(k * nb + blockIdx.y) * M + m] = acc[m];
}

template <int M, typename F>
__global__ void reduce_partials(const double* partial, int64_t nb, F f, double* sums) {
  const int64_t k = blockIdx.x;
  if (!f.active(k)) return;
  double acc[M];
#pragma unroll
  for (int m = 0; m < M; ++m) acc[m] = 0.0;
  for (int64_t b = threadIdx.x; b < nb; b += kThreads)
#pragma unroll
    for (int m = 0; m < M; ++m) acc[m] += partial[(k * nb + b) * M + m];
  block_sum<M>(acc);
  if (threadIdx.x == 0)
#pragma unroll
    for (int m = 0; m < M; ++m) sums[k * M + m] = acc[m];
}

struct Always {
  __device__ bool active(int64_t) const { return true; }
};

struct StatsAcc : Always {
  __device__ void operator()(int64_t, double a, double, double* acc) const {
    acc[0] += a;
    acc[1] += a < 0.0;
  }
};

struct FtdAcc : Always {
  __device__ void operator()(int64_t, double a, double b, double* acc) const {
    acc[0] += a;
    acc[1] += a < 0.0;
    const double d = sqrt(a) - sqrt(b);
    acc[2] += d * d;
  }
};

// Exact second pass for the rows flagged by ftd_finish: Σ(√(a/A) − √(b/B))².
struct FtdRefineAcc {
  const double* stats;  // (K + 1, kStats)
  const double* flag;   // K
  int64_t K;
  __device__ bool active(int64_t k) const { return k < K && flag[k] != 0.0; }
  __device__ void operator()(int64_t k, double a, double b, double* acc) const {
    const double d = sqrt(a / stats[k * kStats]) - sqrt(b / stats[K * kStats]);
    acc[0] += d * d;
  }
};

struct CosineAcc : Always {
  __device__ void operator()(int64_t, double a, double b, double* acc) const {
    acc[0] += a;
    acc[1] += a < 0.0;
    acc[2] += a * a;
    acc[3] += a * b;
  }
};

struct LogdetAcc {
  const double* scale;  // K + 1, the target's last
  double sigma2;
  int64_t K;
  __device__ bool active(int64_t k) const { return k < K; }
  __device__ void operator()(int64_t k, double a, double b, double* acc) const {
    acc[0] += log(a * scale[k] + sigma2) - log(b * scale[K] + sigma2);
  }
};

__device__ bool row_ok(const double* st) { return isfinite(st[kStatSum]) && st[kStatSum] > 0.0 && st[kStatNeg] == 0.0; }

__global__ void copy_stats(const double* sums, int M, int64_t rows, double* stats) {
  const int64_t k = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (k >= rows) return;
  stats[k * kStats + kStatSum] = sums[k * M + 0];
  stats[k * kStats + kStatNeg] = sums[k * M + 1];
}

__global__ void ftd_finish(const double* sums, int64_t K, double* stats, double* out, double* flag) {
  const int64_t k = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (k >= K) return;
  const double* tst = stats + K * kStats;
  flag[k] = 0.0;
  if (!row_ok(stats + k * kStats) || !row_ok(tst)) {
    out[k] = nan("");
    return;
  }
  const double A = sums[k * 3 + 0], B = tst[kStatSum], S = sums[k * 3 + 2];
  // Dimensionless, as on the CPU: d² = S/(2√A√B) − r; refine when r ≫ d² (the subtraction would cancel).
  const double den = 2.0 * sqrt(A) * sqrt(B);
  const double r = (sqrt(A) - sqrt(B)) * (sqrt(A) - sqrt(B)) / den;
  const double d2 = S / den - r;
  if (r > kFtdRefineRatio * fmax(d2, 0.0)) flag[k] = 1.0;
  out[k] = sqrt(fmin(fmax(d2, 0.0), 1.0));
}

__global__ void ftd_refine_finish(const double* sums, const double* flag, int64_t K, double* out) {
  const int64_t k = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (k < K && flag[k] != 0.0) out[k] = sqrt(fmin(fmax(0.5 * sums[k], 0.0), 1.0));
}

__global__ void cosine_finish(const double* sums, int64_t K, const double* stats, double* out) {
  const int64_t k = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (k >= K) return;
  const bool ok = row_ok(stats + k * kStats) && row_ok(stats + K * kStats);
  // √Σa²·√Σb², not √(Σa²·Σb²): the product of the two sums leaves the float64 range for entries near 1e±77.
  out[k] = ok ? sums[k * 4 + 3] / (sqrt(sums[k * 4 + 2]) * sqrt(sums[K * 4 + 2])) : nan("");
}

__global__ void logdet_finish(const double* sums, int64_t K, int64_t n, double* out) {
  const int64_t k = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (k < K) out[k] = n > 0 ? fabs(sums[k]) / (double)n : nan("");
}

struct Workspace {
  double *partial, *sums, *flag;
  int64_t nb;
  Workspace(double* w, int64_t K, int64_t n) : nb(blocks_for(n)) {
    partial = w;
    sums = partial + (K + 1) * nb * kMaxM;
    flag = sums + (K + 1) * kMaxM;
  }
};

// At least one block: a grid of 0 blocks is a launch error, and every finish kernel checks its bounds (K = 0 is
// a valid empty column whose target must still be checked).
unsigned grid1(int64_t rows) { return static_cast<unsigned>(std::max<int64_t>(1, (rows + kThreads - 1) / kThreads)); }

template <typename T, int M, typename F>
void run_accumulate(const Rows<T>& src, const Rows<T>& tgt, int64_t rows, const F& f, const Workspace& ws,
                    cudaStream_t stream) {
  if (rows == 0) return;  // a 0-row grid is a launch error; nothing to accumulate
  const dim3 grid(static_cast<unsigned>(rows), static_cast<unsigned>(ws.nb));  // rows in x: no 65535 limit
  accumulate<T, M, F><<<grid, kThreads, 0, stream>>>(src, tgt, f, ws.partial);
  reduce_partials<M, F><<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(ws.partial, ws.nb, f, ws.sums);
  check(cudaGetLastError(), "launch");
}

// run_accumulate over `rows` rows, then each row's statistics (its first two sums: Σ and negatives) into stats;
// returns the workspace that holds the sums.
template <typename T, int M, typename F>
Workspace sums_and_stats(const Rows<T>& src, const Rows<T>& tgt, int64_t rows, const F& f, double* workspace,
                         double* stats, cudaStream_t stream) {
  const Workspace ws(workspace, src.rows, src.n);
  run_accumulate<T, M>(src, tgt, rows, f, ws, stream);
  copy_stats<<<grid1(rows), kThreads, 0, stream>>>(ws.sums, M, rows, stats);
  return ws;
}

}  // namespace

int64_t workspace_doubles(int64_t K, int64_t n) { return (K + 1) * (blocks_for(n) * kMaxM + kMaxM + 1); }

template <typename T>
void row_stats(Rows<T> x, double* stats, double* workspace, cudaStream_t stream) {
  // Every row is a "source"; the target slot (row K) is not launched.
  sums_and_stats<T, 2>(x, x, x.rows, StatsAcc{}, workspace, stats, stream);
  check(cudaGetLastError(), "row_stats");
}

template <typename T>
void ftd_column(Rows<T> src, Rows<T> tgt, double* out, double* stats, double* workspace, cudaStream_t stream) {
  const int64_t K = src.rows;
  const Workspace ws = sums_and_stats<T, 3>(src, tgt, K + 1, FtdAcc{}, workspace, stats, stream);
  ftd_finish<<<grid1(K), kThreads, 0, stream>>>(ws.sums, K, stats, out, ws.flag);
  // The refinement kernels run always but return at once for unflagged rows: no host round trip.
  run_accumulate<T, 1>(src, tgt, K, FtdRefineAcc{stats, ws.flag, K}, ws, stream);
  ftd_refine_finish<<<grid1(K), kThreads, 0, stream>>>(ws.sums, ws.flag, K, out);
  check(cudaGetLastError(), "ftd_column");
}

template <typename T>
void logdet_column(Rows<T> src, Rows<T> tgt, const double* src_scale, double sigma2, double* out, double* workspace,
                   cudaStream_t stream) {
  const int64_t K = src.rows;
  const Workspace ws(workspace, K, src.n);
  run_accumulate<T, 1>(src, tgt, K, LogdetAcc{src_scale, sigma2, K}, ws, stream);
  logdet_finish<<<grid1(K), kThreads, 0, stream>>>(ws.sums, K, src.n, out);
  check(cudaGetLastError(), "logdet_column");
}

template <typename T>
void cosine_column(Rows<T> src, Rows<T> tgt, double* out, double* stats, double* workspace, cudaStream_t stream) {
  const Workspace ws = sums_and_stats<T, 4>(src, tgt, src.rows + 1, CosineAcc{}, workspace, stats, stream);
  cosine_finish<<<grid1(src.rows), kThreads, 0, stream>>>(ws.sums, src.rows, stats, out);
  check(cudaGetLastError(), "cosine_column");
}

#define FISHERX_INSTANTIATE(T)                                                                             \
  template void row_stats<T>(Rows<T>, double*, double*, cudaStream_t);                                     \
  template void ftd_column<T>(Rows<T>, Rows<T>, double*, double*, double*, cudaStream_t);                  \
  template void logdet_column<T>(Rows<T>, Rows<T>, const double*, double, double*, double*, cudaStream_t); \
  template void cosine_column<T>(Rows<T>, Rows<T>, double*, double*, double*, cudaStream_t);
FISHERX_INSTANTIATE(float)
FISHERX_INSTANTIATE(double)
#undef FISHERX_INSTANTIATE

}  // namespace fisherx::cuda
