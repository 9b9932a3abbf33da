// CPU distance kernels over Fisher diagonals; mirrored by csrc/cuda/distance.h.
#pragma once
#include "common.h"

namespace fisherx::cpu {

// stats: (rows, kStats) float64, see common.h.
template <typename T>
void row_stats(Rows<T> x, double* stats, int nthreads);

// FTD of every source row against the target, d_k = (1/sqrt2)·‖sqrt(a_k/A_k) − sqrt(b/B)‖, accumulated in float64
// (float32 input: per-entry terms in float32, ≤ 1e-6 relative; see csrc/cpu/distance.cpp).
// stats: (K + 1, kStats), the target last. A row with bad input (NaN, negative, zero trace) gets NaN.
template <typename T>
void ftd_column(Rows<T> src, Rows<T> tgt, double* out, double* stats, int nthreads);

// Log-determinant distance d_k = (1/n)·|Σ_j log((s_k·a_kj + σ²)/(t·b_j + σ²))| with per-row scales s_k and t
// (1/trace for unit-trace Fishers, 1 for raw): `scale` holds the K sources' s_k, then t.
template <typename T>
void logdet_column(Rows<T> src, Rows<T> tgt, const double* scale, double sigma2, double* out, int nthreads);

// Cosine similarity Σab / sqrt(Σa²·Σb²); stats as for ftd_column.
template <typename T>
void cosine_column(Rows<T> src, Rows<T> tgt, double* out, double* stats, int nthreads);

}  // namespace fisherx::cpu
