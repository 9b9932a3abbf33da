// CUDA per-sample squared-gradient kernels of the Fisher engine; the twins of csrc/cpu/sqgrad.h with a workspace
// and a stream. Deterministic: split-batch partial sums are reduced in a fixed order (no atomics).
#pragma once
#include <cuda_runtime.h>

#include "common.h"
#include "sqgrad_types.h"

namespace fisherx::cuda {

// Elements (of the data type) of workspace sqgrad_gemm needs for batch B, C groups, an (M, K) weight block.
int64_t sqgrad_gemm_workspace(int64_t B, int64_t C, int64_t M, int64_t K);

// out[c,m,k] (+)= Σ_b (Σ_p g[b,c,p,m]·u[b,c,p,k])², out contiguous (C, M, K). Each per-sample product lives in
// registers (a 4x4 tile per thread, operands staged through shared memory) and is squared into the batch sum.
// With weights w (R, B) (the in-pass bootstrap): out (R, C, M, K), out[r] (+)= Σ_b w[r,b]·(g_bᵀu_b)²; each block
// adds its squared register tile to its R output tiles sample by sample (no batch split, no workspace used).
template <typename T>
void sqgrad_gemm(Strided4<T> g, Strided4<T> u, T* out, bool accumulate, T* workspace, cudaStream_t stream,
                 Weights<T> w = {});

// Convolution weights with u the implicit im2col of x (see ConvInput): g (B, groups, P, O/groups), out
// contiguous (groups, O/groups, C/groups·prod(kernel)); workspace: sqgrad_gemm_workspace(B, groups, O/groups, K).
template <typename T>
void sqgrad_conv(Strided4<T> g, ConvInput<T> x, T* out, T* workspace, cudaStream_t stream, Weights<T> w = {});

// out[0,c] = Σ_b (Σ_p g·(x − mean)·rstd)², out[1,c] = Σ_b (Σ_p g)²; workspace B·2·C doubles.
// With weights w (R, B): out (R, 2, C) of the weighted sums Σ_b w[r,b]·(per-sample sum)².
template <typename T>
void sqgrad_norm(Strided3<T> g, Strided3<T> x, Strided3<T> mean, Strided3<T> rstd, T* out, double* workspace,
                 cudaStream_t stream, Weights<T> w = {});

}  // namespace fisherx::cuda
