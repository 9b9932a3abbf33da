// Strided views shared by the CPU and CUDA per-sample squared-gradient kernels (csrc/{cpu,cuda}/sqgrad.*).
// Like Rows in common.h: a pointer plus sizes and strides in elements, so any torch view (transposed, broadcast
// with stride 0, sliced) is read in place without a copy.
#pragma once
#include <cstdint>

namespace fisherx {

// (B, C, P, N): batch, weight group, position, feature.
template <typename T>
struct Strided4 {
  const T* data;
  int64_t size[4];
  int64_t stride[4];
#if defined(__CUDACC__)
  __host__ __device__
#endif
  const T& at(int64_t b, int64_t c, int64_t p, int64_t n) const {
    return data[b * stride[0] + c * stride[1] + p * stride[2] + n * stride[3]];
  }
};

// (B, P, C): batch, position, channel.
template <typename T>
struct Strided3 {
  const T* data;
  int64_t size[3];
  int64_t stride[3];
#if defined(__CUDACC__)
  __host__ __device__
#endif
  const T& at(int64_t b, int64_t p, int64_t c) const {
    return data[b * stride[0] + p * stride[1] + c * stride[2]];
  }
};

}  // namespace fisherx
