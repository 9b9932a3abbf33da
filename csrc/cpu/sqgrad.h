// CPU per-sample squared-gradient kernels of the Fisher engine; mirrored by csrc/cuda/sqgrad.h.
#pragma once
#include "common.h"
#include "sqgrad_types.h"

namespace fisherx::cpu {

// out[c,m,k] (+)= Σ_b (Σ_p g[b,c,p,m]·u[b,c,p,k])², out contiguous (C, M, K). g: (B, C, P, M) output gradients,
// u: (B, C, P, K) inputs (im2col'ed for convolutions). Each per-sample product lives only in a register tile:
// it is squared and added to the batch sum before the next sample is touched. Deterministic for any thread count.
// With weights w (R, B) (the in-pass bootstrap): out[r,c,m,k] (+)= Σ_b w[r,b]·(Σ_p g·u)², out contiguous
// (R, C, M, K); each sample's squared tile goes through a small cache-resident buffer, never to memory in full.
template <typename T>
void sqgrad_gemm(Strided4<T> g, Strided4<T> u, T* out, bool accumulate, int nthreads, Weights<T> w = {});

// Convolution weights: the same sum with u the implicit im2col of x (see ConvInput). g: (B, groups, P, O/groups)
// with P = prod(out); out contiguous (groups, O/groups, C/groups·prod(kernel)).
// With weights w (R, B): out (R, groups, O/groups, K) of weighted sums, as for sqgrad_gemm.
template <typename T>
void sqgrad_conv(Strided4<T> g, ConvInput<T> x, T* out, int nthreads, Weights<T> w = {});

// Normalisation layers. All inputs (B, P, C), mean/rstd usually broadcast views (stride 0).
// out[0,c] = Σ_b (Σ_p g·(x − mean)·rstd)², out[1,c] = Σ_b (Σ_p g)²; out contiguous (2, C).
// workspace: B·2·C doubles (the per-sample sums, reduced over b in order).
// With weights w (R, B): out (R, 2, C), out[r,·,c] = Σ_b w[r,b]·(per-sample sum)².
template <typename T>
void sqgrad_norm(Strided3<T> g, Strided3<T> x, Strided3<T> mean, Strided3<T> rstd, T* out, double* workspace,
                 int nthreads, Weights<T> w = {});

}  // namespace fisherx::cpu
