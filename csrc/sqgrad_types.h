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

// A convolution's input x (B, C, D0, D1, D2) (1-D/2-D inputs padded with size-1 dims) and its geometry: the
// kernels read the im2col matrix u[b, group, p, k] straight from x (implicit im2col), never storing it.
// p runs over the output positions (o0, o1, o2) row-major; k over (input channel of the group, k0, k1, k2).
// Input coordinate i_d = o_d·stride_d − pad_d + k_d·dilation_d; outside [0, in_d) it reads 0 (zero padding).
template <typename T>
struct ConvInput {
  const T* data;
  int64_t size[5];
  int64_t stride[5];
  int64_t out[3], kernel[3], step[3], pad[3], dil[3];
  int64_t groups;
  // u[b, c, p, k] of the implicit im2col (group c).
#if defined(__CUDACC__)
  __host__ __device__
#endif
      T at(int64_t b, int64_t c, int64_t p, int64_t k) const {
    const int64_t o2 = p % out[2], o1 = (p / out[2]) % out[1], o0 = p / (out[2] * out[1]);
    const int64_t kvol = kernel[0] * kernel[1] * kernel[2];
    const int64_t ci = k / kvol, r = k % kvol;
    const int64_t t2 = r % kernel[2], t1 = (r / kernel[2]) % kernel[1], t0 = r / (kernel[2] * kernel[1]);
    const int64_t i0 = o0 * step[0] - pad[0] + t0 * dil[0], i1 = o1 * step[1] - pad[1] + t1 * dil[1],
                  i2 = o2 * step[2] - pad[2] + t2 * dil[2];
    if (i0 < 0 || i0 >= size[2] || i1 < 0 || i1 >= size[3] || i2 < 0 || i2 >= size[4]) return T(0);
    const int64_t ch = c * (size[1] / groups) + ci;
    return data[b * stride[0] + ch * stride[1] + i0 * stride[2] + i1 * stride[3] + i2 * stride[4]];
  }
};

// Per-sample bootstrap weights w[r, b] (R replicates × B samples), or none (data == nullptr: one unweighted sum).
// With weights the kernels write R weighted sums out[r, ...] = Σ_b w[r,b]·(per-sample square) instead of one.
template <typename T>
struct Weights {
  const T* data = nullptr;
  int64_t R = 0;
  int64_t stride_r = 0, stride_b = 0;
#if defined(__CUDACC__)
  __host__ __device__
#endif
      T at(int64_t r, int64_t b) const {
    return data[r * stride_r + b * stride_b];
  }
};

}  // namespace fisherx
