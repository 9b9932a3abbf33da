// CPU distance kernels over Fisher diagonals; mirrored by csrc/cuda/distance.h.
#pragma once
#include "common.h"

namespace fisherx::cpu {

// stats: (rows, kStats) float64, see common.h.
template <typename T>
void row_stats(Rows<T> x, double* stats, int nthreads);

// FTD of every source row against the target, d_k = (1/sqrt2)·‖sqrt(a_k/A_k) − sqrt(b/B)‖ in float64.
// stats: (K + 1, kStats), the target last. A row with bad input (NaN, negative, zero trace) gets NaN.
template <typename T>
void ftd_column(Rows<T> src, Rows<T> tgt, double* out, double* stats, int nthreads);

// Log-determinant distance d_k = (1/n)·|Σ_j log((s_k·a_kj + σ²)/(t·b_j + σ²))| with per-row scales s_k, t
// (1/trace for unit-trace Fishers, 1 for raw).
template <typename T>
void logdet_column(Rows<T> src, Rows<T> tgt, const double* src_scale, double tgt_scale, double sigma2, double* out,
                   int nthreads);

// Cosine similarity Σab / sqrt(Σa²·Σb²); stats as for ftd_column.
template <typename T>
void cosine_column(Rows<T> src, Rows<T> tgt, double* out, double* stats, int nthreads);

}  // namespace fisherx::cpu
