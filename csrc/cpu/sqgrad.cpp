// CPU per-sample squared-gradient kernels. sqgrad_gemm is a packed GEMM whose micro-kernel keeps two register
// tiles: t, the (MR x NR) block of one sample's gradient g_bᵀu_b, and acc, its running sum of squares over the
// batch. t never leaves registers, so per-sample gradients are never written to memory.
#include "cpu/sqgrad.h"

#include <algorithm>
#include <cstring>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

// Compile the micro-kernel for AVX-512, AVX2 and baseline x86-64 and pick at load time (the wheel must run on
// any x86-64 CPU, so -march=native is not an option).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FISHERX_MULTIVERSION __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FISHERX_MULTIVERSION
#endif

namespace fisherx::cpu {
namespace {

constexpr int kVecBytes = 64;
constexpr int MR = 4;                 // rows of m per micro-tile
constexpr int64_t kPackElems = 1 << 17;  // packed g and u of one batch chunk: about half of a 1 MB L2

template <typename T>
struct Vec {
  typedef T type __attribute__((vector_size(kVecBytes)));
  static constexpr int lanes = kVecBytes / sizeof(T);
};

template <typename T>
constexpr int nr() { return 2 * Vec<T>::lanes; }  // columns of k per micro-tile: two vectors

// acc[MR][NR] += Σ_{b<nb} (Σ_{p<P} gp[b][p][r]·up[b][p][j])². gp, up packed and 64-byte aligned.
template <typename T>
__attribute__((always_inline)) inline void micro_impl(const T* __restrict gp, const T* __restrict up, int64_t nb,
                                                      int64_t P, T* __restrict acc) {
  using V = typename Vec<T>::type;
  constexpr int L = Vec<T>::lanes;
  V a[MR][2];
  for (int r = 0; r < MR; ++r)
    for (int h = 0; h < 2; ++h) std::memcpy(&a[r][h], acc + r * 2 * L + h * L, sizeof(V));
  for (int64_t b = 0; b < nb; ++b) {
    V t[MR][2];
    for (int r = 0; r < MR; ++r) t[r][0] = t[r][1] = V{};
    const T* gb = gp + b * P * MR;
    const T* ub = up + b * P * 2 * L;
    for (int64_t p = 0; p < P; ++p) {
      V u0, u1;
      std::memcpy(&u0, ub + p * 2 * L, sizeof(V));
      std::memcpy(&u1, ub + p * 2 * L + L, sizeof(V));
      const T* gv = gb + p * MR;
#pragma GCC unroll 4
      for (int r = 0; r < MR; ++r) {
        const T s = gv[r];
        t[r][0] += s * u0;
        t[r][1] += s * u1;
      }
    }
#pragma GCC unroll 4
    for (int r = 0; r < MR; ++r) {
      a[r][0] += t[r][0] * t[r][0];
      a[r][1] += t[r][1] * t[r][1];
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int h = 0; h < 2; ++h) std::memcpy(acc + r * 2 * L + h * L, &a[r][h], sizeof(V));
}

FISHERX_MULTIVERSION void micro(const float* gp, const float* up, int64_t nb, int64_t P, float* acc) {
  micro_impl<float>(gp, up, nb, P, acc);
}
FISHERX_MULTIVERSION void micro(const double* gp, const double* up, int64_t nb, int64_t P, double* acc) {
  micro_impl<double>(gp, up, nb, P, acc);
}

template <typename T>
struct AlignedBuf {
  std::vector<T> raw;
  T* ptr = nullptr;
  void resize(size_t n) {
    raw.assign(n + kVecBytes / sizeof(T), T(0));
    auto addr = reinterpret_cast<std::uintptr_t>(raw.data());
    ptr = reinterpret_cast<T*>((addr + kVecBytes - 1) / kVecBytes * kVecBytes);
  }
};

}  // namespace

template <typename T>
void sqgrad_gemm(Strided4<T> g, Strided4<T> u, T* out, bool accumulate, int nthreads) {
  const int64_t B = g.size[0], C = g.size[1], P = g.size[2], M = g.size[3], K = u.size[3];
  constexpr int NR = nr<T>();
  if (!accumulate) std::fill(out, out + C * M * K, T(0));
  if (B == 0 || P == 0 || M == 0 || K == 0) return;
  const int64_t nkb = (K + NR - 1) / NR;
  // Split m as well when there are too few (group, k-block) tasks to keep every thread busy.
  const int64_t want = 4 * std::max(1, nthreads);
  int64_t nmc = std::max<int64_t>(1, std::min<int64_t>((want + C * nkb - 1) / (C * nkb), (M + MR - 1) / MR));
  const int64_t mchunk = ((M + nmc - 1) / nmc + MR - 1) / MR * MR;
  nmc = (M + mchunk - 1) / mchunk;
  const int64_t ntasks = C * nkb * nmc;
  const int64_t bc = std::clamp<int64_t>(kPackElems / std::max<int64_t>(1, P * (NR + mchunk)), 1, B);

#pragma omp parallel num_threads(std::max(1, nthreads)) if (ntasks > 1)
  {
    AlignedBuf<T> upack, gpack, acc;
    upack.resize(static_cast<size_t>(bc * P * NR));
    gpack.resize(static_cast<size_t>(bc * P * mchunk));
    acc.resize(static_cast<size_t>(mchunk * NR));
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < ntasks; ++task) {
      const int64_t c = task / (nkb * nmc), kb = (task / nmc) % nkb, mc = task % nmc;
      const int64_t k0 = kb * NR, kn = std::min<int64_t>(NR, K - k0);
      const int64_t m0 = mc * mchunk, mn = std::min<int64_t>(mchunk, M - m0);
      const int64_t nmb = (mn + MR - 1) / MR;
      std::fill(acc.ptr, acc.ptr + mchunk * NR, T(0));
      for (int64_t b0 = 0; b0 < B; b0 += bc) {
        const int64_t nb = std::min(bc, B - b0);
        // Pack u[b, c, :, k0:k0+NR] as [b][p][NR] and g[b, c, :, m0:m0+mchunk] as [m-block][b][p][MR], zero-padded.
        for (int64_t bl = 0; bl < nb; ++bl)
          for (int64_t p = 0; p < P; ++p) {
            T* dst = upack.ptr + (bl * P + p) * NR;
            const T* src = &u.at(b0 + bl, c, p, k0);
            int64_t j = 0;
            for (; j < kn; ++j) dst[j] = src[j * u.stride[3]];
            for (; j < NR; ++j) dst[j] = T(0);
          }
        for (int64_t mb = 0; mb < nmb; ++mb)
          for (int64_t bl = 0; bl < nb; ++bl)
            for (int64_t p = 0; p < P; ++p) {
              T* dst = gpack.ptr + ((mb * nb + bl) * P + p) * MR;
              for (int r = 0; r < MR; ++r) {
                const int64_t m = mb * MR + r;
                dst[r] = m < mn ? g.at(b0 + bl, c, p, m0 + m) : T(0);
              }
            }
        for (int64_t mb = 0; mb < nmb; ++mb) micro(gpack.ptr + mb * nb * P * MR, upack.ptr, nb, P, acc.ptr + mb * MR * NR);
      }
      for (int64_t m = 0; m < mn; ++m) {
        T* o = out + (c * M + m0 + m) * K + k0;
        const T* a = acc.ptr + ((m / MR) * MR * NR) + (m % MR) * NR;
        for (int64_t j = 0; j < kn; ++j) o[j] += a[j];
      }
    }
  }
}

template <typename T>
void sqgrad_norm(Strided3<T> g, Strided3<T> x, Strided3<T> mean, Strided3<T> rstd, T* out, double* ws,
                 int nthreads) {
  const int64_t B = g.size[0], P = g.size[1], C = g.size[2];
  std::fill(ws, ws + B * 2 * C, 0.0);
  // The loop with the smaller stride goes inside, so NCHW (channel-strided) and (B, T, D) layouts both stream.
  const bool c_inner = g.stride[2] <= g.stride[1];
#pragma omp parallel for schedule(static) num_threads(std::max(1, nthreads)) if (B > 1)
  for (int64_t b = 0; b < B; ++b) {
    double* sw = ws + b * 2 * C;
    double* sb = sw + C;
    if (c_inner) {
      for (int64_t p = 0; p < P; ++p)
        for (int64_t c = 0; c < C; ++c) {
          const double gv = g.at(b, p, c);
          sw[c] += gv * (static_cast<double>(x.at(b, p, c)) - mean.at(b, p, c)) * rstd.at(b, p, c);
          sb[c] += gv;
        }
    } else {
      for (int64_t c = 0; c < C; ++c) {
        double s = 0.0, t = 0.0;
        for (int64_t p = 0; p < P; ++p) {
          const double gv = g.at(b, p, c);
          s += gv * (static_cast<double>(x.at(b, p, c)) - mean.at(b, p, c)) * rstd.at(b, p, c);
          t += gv;
        }
        sw[c] = s;
        sb[c] = t;
      }
    }
  }
  for (int64_t c = 0; c < C; ++c) {
    double w = 0.0, bias = 0.0;
    for (int64_t b = 0; b < B; ++b) {
      w += ws[b * 2 * C + c] * ws[b * 2 * C + c];
      bias += ws[b * 2 * C + C + c] * ws[b * 2 * C + C + c];
    }
    out[c] = static_cast<T>(w);
    out[C + c] = static_cast<T>(bias);
  }
}

template void sqgrad_gemm<float>(Strided4<float>, Strided4<float>, float*, bool, int);
template void sqgrad_gemm<double>(Strided4<double>, Strided4<double>, double*, bool, int);
template void sqgrad_norm<float>(Strided3<float>, Strided3<float>, Strided3<float>, Strided3<float>, float*,
                                 double*, int);
template void sqgrad_norm<double>(Strided3<double>, Strided3<double>, Strided3<double>, Strided3<double>, double*,
                                  double*, int);

}  // namespace fisherx::cpu
