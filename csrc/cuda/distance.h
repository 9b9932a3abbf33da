// CUDA distance kernels; the twins of csrc/cpu/distance.h with a workspace and a stream. Results are
// deterministic: blocks write partial sums that a second kernel reduces in a fixed order (no atomics).
#pragma once
#include <cuda_runtime.h>

#include "common.h"

namespace fisherx::cuda {

// Doubles of workspace every column kernel below needs for K source rows of length n.
int64_t workspace_doubles(int64_t K, int64_t n);

template <typename T>
void row_stats(Rows<T> x, double* stats, double* workspace, cudaStream_t stream);

template <typename T>
void ftd_column(Rows<T> src, Rows<T> tgt, double* out, double* stats, double* workspace, cudaStream_t stream);

// src_scale: K + 1 device doubles, the target's scale last.
template <typename T>
void logdet_column(Rows<T> src, Rows<T> tgt, const double* src_scale, double sigma2, double* out, double* workspace,
                   cudaStream_t stream);

template <typename T>
void cosine_column(Rows<T> src, Rows<T> tgt, double* out, double* stats, double* workspace, cudaStream_t stream);

}  // namespace fisherx::cuda
