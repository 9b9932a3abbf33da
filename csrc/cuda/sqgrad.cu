// CUDA per-sample squared-gradient kernels (see csrc/cuda/sqgrad.h; CPU twin csrc/cpu/sqgrad.cpp).
//
// sqgrad_gemm: a block owns a 64x64 tile of one group's (M, K) output and a slice of the batch. For every sample it
// computes that sample's tile of g_bᵀu_b with the usual shared-memory GEMM (16 positions staged at a time, a 4x4
// register tile per thread), squares it in registers and adds it to a second register tile that runs over the
// samples. Per-sample gradients therefore never reach global memory. When the output has too few tiles to fill
// the GPU the batch is split over blockIdx.z; the partial sums go to the workspace and are reduced in order.
#include "cuda/sqgrad.h"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace fisherx::cuda {
namespace {

constexpr int TM = 64, TK = 64, TP = 16, RT = 4;  // tile sizes; RT x RT outputs per thread
constexpr int kThreads = (TM / RT) * (TK / RT);   // 256
static_assert(TM == TK, "the staging loop fills both operand tiles with one index");
constexpr int64_t kTargetBlocks = 512;  // enough to fill an H100 (132 SMs) a few times over

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("fisherx CUDA ") + what + ": " + cudaGetErrorString(err));
}

int64_t tiles(int64_t C, int64_t M, int64_t K) { return C * ((M + TM - 1) / TM) * ((K + TK - 1) / TK); }

int64_t splits_for(int64_t B, int64_t C, int64_t M, int64_t K) {
  const int64_t t = std::max<int64_t>(1, tiles(C, M, K));
  return std::clamp<int64_t>((kTargetBlocks + t - 1) / t, 1, std::max<int64_t>(1, std::min<int64_t>(B, 64)));
}

// Calls f(i, j, offset) for each of this thread's RT x RT outputs inside the (M, K) bounds, offset = m·K + k.
template <typename F>
__device__ __forceinline__ void for_thread_tile(int64_t m0, int64_t k0, int ty, int tx, int64_t M, int64_t K, F f) {
#pragma unroll
  for (int i = 0; i < RT; ++i) {
    const int64_t m = m0 + ty * RT + i;
    if (m >= M) continue;
#pragma unroll
    for (int j = 0; j < RT; ++j) {
      const int64_t k = k0 + tx * RT + j;
      if (k < K) f(i, j, m * K + k);
    }
  }
}

// UAcc: Strided4<T> (explicit u) or ConvInput<T> (implicit im2col); both have at(b, c, p, k).
template <typename T, typename UAcc>
__global__ void sqgrad_gemm_kernel(Strided4<T> g, UAcc u, int64_t K, T* dst, int64_t per_split, bool accumulate,
                                   Weights<T> w) {
  const int64_t B = g.size[0], P = g.size[2], M = g.size[3];
  const int64_t nmt = (M + TM - 1) / TM, nkt = (K + TK - 1) / TK;
  const int64_t tile = blockIdx.x;
  const int64_t c = tile / (nmt * nkt), m0 = ((tile / nkt) % nmt) * TM, k0 = (tile % nkt) * TK;
  const int64_t b_begin = blockIdx.y * per_split, b_end = min(B, b_begin + per_split);
  __shared__ T gs[TP][TM];
  __shared__ T us[TP][TK];
  const int tx = threadIdx.x % (TK / RT), ty = threadIdx.x / (TK / RT);
  T acc[RT][RT];
#pragma unroll
  for (int i = 0; i < RT; ++i)
#pragma unroll
    for (int j = 0; j < RT; ++j) acc[i][j] = T(0);
  for (int64_t b = b_begin; b < b_end; ++b) {
    T t[RT][RT];
#pragma unroll
    for (int i = 0; i < RT; ++i)
#pragma unroll
      for (int j = 0; j < RT; ++j) t[i][j] = T(0);
    for (int64_t p0 = 0; p0 < P; p0 += TP) {
      // 256 threads stage 16x64 elements of each operand: 4 each.
      for (int e = threadIdx.x; e < TP * TM; e += kThreads) {
        const int pp = e / TM, mm = e % TM;
        const int64_t p = p0 + pp, m = m0 + mm, k = k0 + mm;
        gs[pp][mm] = (p < P && m < M) ? g.at(b, c, p, m) : T(0);
        us[pp][mm] = (p < P && k < K) ? u.at(b, c, p, k) : T(0);
      }
      __syncthreads();
#pragma unroll
      for (int pp = 0; pp < TP; ++pp) {
        T gv[RT], uv[RT];
#pragma unroll
        for (int i = 0; i < RT; ++i) gv[i] = gs[pp][ty * RT + i];
#pragma unroll
        for (int j = 0; j < RT; ++j) uv[j] = us[pp][tx * RT + j];
#pragma unroll
        for (int i = 0; i < RT; ++i)
#pragma unroll
          for (int j = 0; j < RT; ++j) t[i][j] += gv[i] * uv[j];
      }
      __syncthreads();
    }
    if (w.data != nullptr) {
      // Bootstrap: the block owns this tile in every replicate (one batch split), so it adds w[r,b]·t² to the
      // R output tiles in place, sample by sample, in batch order (deterministic, no atomics).
      const int64_t CMK = g.size[1] * M * K;
      for (int64_t r = 0; r < w.R; ++r) {
        const T wv = w.at(r, b);
        if (wv == T(0)) continue;
        T* base = dst + r * CMK + c * M * K;
        for_thread_tile(m0, k0, ty, tx, M, K, [&](int i, int j, int64_t off) { base[off] += wv * t[i][j] * t[i][j]; });
      }
      continue;
    }
#pragma unroll
    for (int i = 0; i < RT; ++i)
#pragma unroll
      for (int j = 0; j < RT; ++j) acc[i][j] += t[i][j] * t[i][j];
  }
  if (w.data != nullptr) return;
  // dst is (splits, C, M, K) partials, or the output itself when there is one split.
  T* base = dst + blockIdx.y * (g.size[1] * M * K) + c * M * K;
  for_thread_tile(m0, k0, ty, tx, M, K,
                  [&](int i, int j, int64_t off) { base[off] = accumulate ? base[off] + acc[i][j] : acc[i][j]; });
}

template <typename T>
__global__ void reduce_splits(const T* partial, int64_t splits, int64_t n, T* out, bool accumulate) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    T s = accumulate ? out[i] : T(0);
    for (int64_t z = 0; z < splits; ++z) s += partial[z * n + i];
    out[i] = s;
  }
}

template <typename T>
__global__ void fill_zero(T* out, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    out[i] = T(0);
}

template <typename T>
__global__ void norm_per_sample(Strided3<T> g, Strided3<T> x, Strided3<T> mean, Strided3<T> rstd, double* ws) {
  const int64_t B = g.size[0], P = g.size[1], C = g.size[2];
  const int64_t c = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (c >= C) return;
  for (int64_t b = blockIdx.y; b < B; b += gridDim.y) {  // grid.y is capped at 65535
    double s = 0.0, t = 0.0;
    for (int64_t p = 0; p < P; ++p) {
      const double gv = g.at(b, p, c);
      s += gv * (static_cast<double>(x.at(b, p, c)) - static_cast<double>(mean.at(b, p, c))) *
           static_cast<double>(rstd.at(b, p, c));
      t += gv;
    }
    ws[(b * 2) * C + c] = s;
    ws[(b * 2 + 1) * C + c] = t;
  }
}

template <typename T>
__global__ void norm_reduce_weighted(const double* ws, int64_t B, int64_t C, Weights<T> w, T* out) {
  // out[r, j] = Σ_b w[r,b]·ws[b, j]², j over (weight, bias) × C; one thread per (r, j), the batch in order.
  const int64_t n = w.R * 2 * C;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t r = i / (2 * C), j = i % (2 * C);
    double s = 0.0;
    for (int64_t b = 0; b < B; ++b) {
      const double v = ws[b * 2 * C + j];
      s += static_cast<double>(w.at(r, b)) * v * v;
    }
    out[i] = static_cast<T>(s);
  }
}

template <typename T>
__global__ void norm_reduce(const double* ws, int64_t B, int64_t C, T* out) {
  const int64_t c = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (c >= C) return;
  double w = 0.0, bias = 0.0;
  for (int64_t b = 0; b < B; ++b) {
    const double s = ws[(b * 2) * C + c], t = ws[(b * 2 + 1) * C + c];
    w += s * s;
    bias += t * t;
  }
  out[c] = static_cast<T>(w);
  out[C + c] = static_cast<T>(bias);
}

}  // namespace

int64_t sqgrad_gemm_workspace(int64_t B, int64_t C, int64_t M, int64_t K) {
  const int64_t s = splits_for(B, C, M, K);
  return s > 1 ? s * C * M * K : 1;
}

namespace {

template <typename T, typename UAcc>
void launch_gemm(const Strided4<T>& g, const UAcc& u, int64_t K, T* out, bool accumulate, T* workspace,
                 cudaStream_t stream, const Weights<T>& w) {
  const int64_t B = g.size[0], C = g.size[1], P = g.size[2], M = g.size[3];
  if (w.data != nullptr) {
    // Bootstrap: R output tiles per block, no batch split (partials would cost splits × R × params).
    const int64_t n = w.R * C * M * K;
    if (n == 0) return;
    if (!accumulate) fill_zero<T><<<(int)std::min<int64_t>(4096, (n + 255) / 256), 256, 0, stream>>>(out, n);
    if (B > 0 && P > 0) {
      dim3 grid((unsigned)tiles(C, M, K), 1u);
      sqgrad_gemm_kernel<T, UAcc><<<grid, kThreads, 0, stream>>>(g, u, K, out, B, true, w);
    }
    check(cudaGetLastError(), "sqgrad_gemm (bootstrap)");
    return;
  }
  const int64_t n = C * M * K;
  if (n == 0) return;
  if (B == 0 || P == 0) {
    if (!accumulate) fill_zero<T><<<(int)std::min<int64_t>(1024, (n + 255) / 256), 256, 0, stream>>>(out, n);
    check(cudaGetLastError(), "sqgrad_gemm (zero)");
    return;
  }
  const int64_t splits = splits_for(B, C, M, K);
  const int64_t per_split = (B + splits - 1) / splits;
  const int64_t used = (B + per_split - 1) / per_split;
  dim3 grid((unsigned)tiles(C, M, K), (unsigned)used);
  if (used == 1) {
    sqgrad_gemm_kernel<T, UAcc><<<grid, kThreads, 0, stream>>>(g, u, K, out, per_split, accumulate, Weights<T>{});
  } else {
    sqgrad_gemm_kernel<T, UAcc><<<grid, kThreads, 0, stream>>>(g, u, K, workspace, per_split, false, Weights<T>{});
    reduce_splits<T>
        <<<(int)std::min<int64_t>(4096, (n + 255) / 256), 256, 0, stream>>>(workspace, used, n, out, accumulate);
  }
  check(cudaGetLastError(), "sqgrad_gemm");
}

}  // namespace

template <typename T>
void sqgrad_gemm(Strided4<T> g, Strided4<T> u, T* out, bool accumulate, T* workspace, cudaStream_t stream,
                 Weights<T> w) {
  launch_gemm(g, u, u.size[3], out, accumulate, workspace, stream, w);
}

template <typename T>
void sqgrad_conv(Strided4<T> g, ConvInput<T> x, T* out, T* workspace, cudaStream_t stream, Weights<T> w) {
  const int64_t K = x.size[1] / x.groups * x.kernel[0] * x.kernel[1] * x.kernel[2];
  launch_gemm(g, x, K, out, false, workspace, stream, w);
}

template <typename T>
void sqgrad_norm(Strided3<T> g, Strided3<T> x, Strided3<T> mean, Strided3<T> rstd, T* out, double* ws,
                 cudaStream_t stream, Weights<T> w) {
  const int64_t B = g.size[0], C = g.size[2];
  if (C == 0) return;
  if (B > 0) {
    dim3 grid((unsigned)((C + 255) / 256), (unsigned)std::min<int64_t>(B, 65535));
    norm_per_sample<T><<<grid, 256, 0, stream>>>(g, x, mean, rstd, ws);
  }
  if (w.data != nullptr) {
    const int64_t n = w.R * 2 * C;
    if (n > 0)
      norm_reduce_weighted<T><<<(unsigned)std::min<int64_t>(4096, (n + 255) / 256), 256, 0, stream>>>(ws, B, C, w, out);
  } else {
    norm_reduce<T><<<(unsigned)((C + 255) / 256), 256, 0, stream>>>(ws, B, C, out);
  }
  check(cudaGetLastError(), "sqgrad_norm");
}

template void sqgrad_gemm<float>(Strided4<float>, Strided4<float>, float*, bool, float*, cudaStream_t, Weights<float>);
template void sqgrad_gemm<double>(Strided4<double>, Strided4<double>, double*, bool, double*, cudaStream_t,
                                  Weights<double>);
template void sqgrad_conv<float>(Strided4<float>, ConvInput<float>, float*, float*, cudaStream_t, Weights<float>);
template void sqgrad_conv<double>(Strided4<double>, ConvInput<double>, double*, double*, cudaStream_t, Weights<double>);
template void sqgrad_norm<float>(Strided3<float>, Strided3<float>, Strided3<float>, Strided3<float>, float*, double*,
                                 cudaStream_t, Weights<float>);
template void sqgrad_norm<double>(Strided3<double>, Strided3<double>, Strided3<double>, Strided3<double>, double*,
                                  double*, cudaStream_t, Weights<double>);

}  // namespace fisherx::cuda
