// CPU per-sample squared-gradient kernels. sqgrad_gemm is a packed GEMM whose micro-kernel keeps two register
// tiles: t, the (MR x NR) block of one sample's gradient g_bᵀu_b, and acc, its running sum of squares over the
// batch. t never leaves registers, so per-sample gradients are never written to memory.
#include "cpu/sqgrad.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace fisherx::cpu {
namespace {

constexpr int kVecBytes = 64;
constexpr int MR = 6;                    // rows of m per micro-tile (12 + 12 vector registers)
constexpr int64_t kPackElems = 1 << 17;  // packed g and u of one batch chunk: about half of a 1 MB L2

template <typename T>
struct Vec {
  typedef T type __attribute__((vector_size(kVecBytes)));
  static constexpr int lanes = kVecBytes / sizeof(T);
};

template <typename T>
constexpr int nr() {
  return 2 * Vec<T>::lanes;
}  // columns of k per micro-tile: two vectors

// kSquares = false: acc[MR][NR] += Σ_{b<nb} (Σ_{p<P} gp[b][p][r]·up[b][p][j])², the running sum in registers.
// kSquares = true: out[b][MR][NR] = (Σ_p gp[b][p][r]·up[b][p][j])² for each b, the per-sample squared tiles, for
// the bootstrap path, which weights each sample differently in every replicate (see weighted_add).
// gp, up packed and 64-byte aligned.
//
// VW is the register width in bytes of the machine the code runs on. The tile (MR x NR, NR two 64-byte vectors)
// is the packing layout and stays fixed; with 64-byte registers (AVX-512: 32 of them) one pass holds the tile and
// its sums in 24 registers. With 32-byte (AVX2) or 16-byte ones (16 registers) that tile would spill on every
// step (6-10x slower than torch's bmm on an AVX2 EPYC, measured), so the tile is swept in column strips of one
// register: MR partial rows + MR sums + u + the broadcast = 14 registers, the packed g re-read once per strip.
template <typename T, bool kSquares, int VW>
__attribute__((always_inline)) inline void micro_impl(const T* __restrict gp, const T* __restrict up, int64_t nb,
                                                      int64_t P, T* __restrict out) {
  typedef T V __attribute__((vector_size(VW)));
  constexpr int L = VW / sizeof(T);            // lanes of one register
  constexpr int NR = nr<T>();                  // columns of the tile
  constexpr int CG = VW == kVecBytes ? 2 : 1;  // registers per row in one strip
  constexpr int kStrips = NR / (CG * L);
  for (int q = 0; q < kStrips; ++q) {
    const int c0 = q * CG * L;
    V a[MR][CG];
    if constexpr (!kSquares) {
      for (int r = 0; r < MR; ++r)
        for (int h = 0; h < CG; ++h) std::memcpy(&a[r][h], out + r * NR + c0 + h * L, sizeof(V));
    }
    for (int64_t b = 0; b < nb; ++b) {
      V t[MR][CG];
      for (int r = 0; r < MR; ++r)
        for (int h = 0; h < CG; ++h) t[r][h] = V{};
      const T* gb = gp + b * P * MR;
      const T* ub = up + b * P * NR + c0;
      for (int64_t p = 0; p < P; ++p) {
        V u[CG];
        for (int h = 0; h < CG; ++h) std::memcpy(&u[h], ub + p * NR + h * L, sizeof(V));
        const T* gv = gb + p * MR;
#pragma GCC unroll 8
        for (int r = 0; r < MR; ++r) {
          const T s = gv[r];
          for (int h = 0; h < CG; ++h) t[r][h] += s * u[h];
        }
      }
      if constexpr (kSquares) {
        T* o = out + b * MR * NR + c0;
#pragma GCC unroll 8
        for (int r = 0; r < MR; ++r)
          for (int h = 0; h < CG; ++h) {
            const V sq = t[r][h] * t[r][h];
            std::memcpy(o + r * NR + h * L, &sq, sizeof(V));
          }
      } else {
#pragma GCC unroll 8
        for (int r = 0; r < MR; ++r)
          for (int h = 0; h < CG; ++h) a[r][h] += t[r][h] * t[r][h];
      }
    }
    if constexpr (!kSquares) {
      for (int r = 0; r < MR; ++r)
        for (int h = 0; h < CG; ++h) std::memcpy(out + r * NR + c0 + h * L, &a[r][h], sizeof(V));
    }
  }
}

// micro / micro_sq for the widest registers this CPU has: explicit per-ISA functions, not target_clones, because
// the register width VW must differ between the versions (a clone only recompiles the same source).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
enum class Isa { Avx512, Avx2, Base };
// The best ISA of this CPU, or a narrower one named by FISHERX_CPU_ISA (avx2, base: so tests cover every path).
Isa cpu_isa() {
  static const Isa isa = [] {
    Isa best = __builtin_cpu_supports("x86-64-v4")   ? Isa::Avx512
               : __builtin_cpu_supports("x86-64-v3") ? Isa::Avx2
                                                     : Isa::Base;
    const char* want = std::getenv("FISHERX_CPU_ISA");
    if (want && std::strcmp(want, "base") == 0) return Isa::Base;
    if (want && std::strcmp(want, "avx2") == 0 && best == Isa::Avx512) return Isa::Avx2;
    return best;
  }();
  return isa;
}
#define FISHERX_MICRO(name, T, kSq)                                                                                   \
  __attribute__((target("arch=x86-64-v4"))) void name##_v4(const T* gp, const T* up, int64_t nb, int64_t P, T* out) { \
    micro_impl<T, kSq, 64>(gp, up, nb, P, out);                                                                       \
  }                                                                                                                   \
  __attribute__((target("arch=x86-64-v3"))) void name##_v3(const T* gp, const T* up, int64_t nb, int64_t P, T* out) { \
    micro_impl<T, kSq, 32>(gp, up, nb, P, out);                                                                       \
  }                                                                                                                   \
  void name(const T* gp, const T* up, int64_t nb, int64_t P, T* out) {                                                \
    switch (cpu_isa()) {                                                                                              \
      case Isa::Avx512:                                                                                               \
        return name##_v4(gp, up, nb, P, out);                                                                         \
      case Isa::Avx2:                                                                                                 \
        return name##_v3(gp, up, nb, P, out);                                                                         \
      default:                                                                                                        \
        return micro_impl<T, kSq, 16>(gp, up, nb, P, out);                                                            \
    }                                                                                                                 \
  }
#else
#define FISHERX_MICRO(name, T, kSq) \
  void name(const T* gp, const T* up, int64_t nb, int64_t P, T* out) { micro_impl<T, kSq, 16>(gp, up, nb, P, out); }
#endif
FISHERX_MICRO(micro_sq, float, true)
FISHERX_MICRO(micro_sq, double, true)

// out[r, rows, 0:kn] += Σ_{b<nb} w[r, b0+b]·sq[b][rows][0:kn] for every replicate r. ``out`` points at the tile's
// first element in replicate 0; ``rstride`` is one replicate's size (C·M·K), ``ld`` the row stride (K). Four
// replicates at a time share each load of a squared row, their output rows held in registers over the batch chunk;
// the squared tiles of the chunk stay in L1/L2. No branch on zero weights: a Poisson(1) weight is 0 for 37% of the
// samples, at random, which a branch would mispredict. As in micro_impl, VW is the register width: the row of NR
// columns is swept in strips of CG registers, so that the RB·CG sums stay in registers (the former 64-byte
// vectors took two registers each on AVX2 and spilled).
template <typename T, int RB, int VW>
__attribute__((always_inline)) inline void weighted_rows(const T* __restrict sq, int64_t nb, int i, int64_t kn,
                                                         const Weights<T>& w, int64_t r0, int64_t b0, T* __restrict out,
                                                         int64_t rstride, int64_t ld) {
  typedef T V __attribute__((vector_size(VW)));
  constexpr int L = VW / sizeof(T);
  constexpr int NR = nr<T>();
  constexpr int CG = VW == kVecBytes ? 2 : 1;
  const T* wr[RB];
  for (int q = 0; q < RB; ++q) wr[q] = w.data + (r0 + q) * w.stride_r + b0 * w.stride_b;
  for (int c0 = 0; c0 < kn; c0 += CG * L) {
    const int64_t cn = std::min<int64_t>(CG * L, kn - c0);  // columns of this strip inside the tile
    alignas(kVecBytes) T row[CG * L];
    V a[RB][CG];
    for (int q = 0; q < RB; ++q) {
      const T* o = out + (r0 + q) * rstride + i * ld + c0;
      for (int64_t j = 0; j < CG * L; ++j) row[j] = j < cn ? o[j] : T(0);
      for (int h = 0; h < CG; ++h) std::memcpy(&a[q][h], row + h * L, sizeof(V));
    }
    for (int64_t b = 0; b < nb; ++b) {
      V s[CG];
      for (int h = 0; h < CG; ++h) std::memcpy(&s[h], sq + (b * MR + i) * NR + c0 + h * L, sizeof(V));
#pragma GCC unroll 4
      for (int q = 0; q < RB; ++q) {
        const T wv = wr[q][b * w.stride_b];
        for (int h = 0; h < CG; ++h) a[q][h] += wv * s[h];
      }
    }
    for (int q = 0; q < RB; ++q) {
      T* o = out + (r0 + q) * rstride + i * ld + c0;
      for (int h = 0; h < CG; ++h) std::memcpy(row + h * L, &a[q][h], sizeof(V));
      for (int64_t j = 0; j < cn; ++j) o[j] = row[j];
    }
  }
}

template <typename T, int VW>
__attribute__((always_inline)) inline void weighted_add_impl(const T* __restrict sq, int64_t nb, int rows, int64_t kn,
                                                             const Weights<T>& w, int64_t b0, T* __restrict out,
                                                             int64_t rstride, int64_t ld) {
  constexpr int RB = 4;
  for (int i = 0; i < rows; ++i) {
    int64_t r = 0;
    for (; r + RB <= w.R; r += RB) weighted_rows<T, RB, VW>(sq, nb, i, kn, w, r, b0, out, rstride, ld);
    for (; r < w.R; ++r) weighted_rows<T, 1, VW>(sq, nb, i, kn, w, r, b0, out, rstride, ld);
  }
}

// One version per register width, dispatched like FISHERX_MICRO.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FISHERX_WEIGHTED(T)                                                                                     \
  __attribute__((target("arch=x86-64-v4"))) void weighted_add_v4(const T* sq, int64_t nb, int rows, int64_t kn, \
                                                                 const Weights<T>& w, int64_t b0, T* out,       \
                                                                 int64_t rstride, int64_t ld) {                 \
    weighted_add_impl<T, 64>(sq, nb, rows, kn, w, b0, out, rstride, ld);                                        \
  }                                                                                                             \
  __attribute__((target("arch=x86-64-v3"))) void weighted_add_v3(const T* sq, int64_t nb, int rows, int64_t kn, \
                                                                 const Weights<T>& w, int64_t b0, T* out,       \
                                                                 int64_t rstride, int64_t ld) {                 \
    weighted_add_impl<T, 32>(sq, nb, rows, kn, w, b0, out, rstride, ld);                                        \
  }                                                                                                             \
  void weighted_add(const T* sq, int64_t nb, int rows, int64_t kn, const Weights<T>& w, int64_t b0, T* out,     \
                    int64_t rstride, int64_t ld) {                                                              \
    switch (cpu_isa()) {                                                                                        \
      case Isa::Avx512:                                                                                         \
        return weighted_add_v4(sq, nb, rows, kn, w, b0, out, rstride, ld);                                      \
      case Isa::Avx2:                                                                                           \
        return weighted_add_v3(sq, nb, rows, kn, w, b0, out, rstride, ld);                                      \
      default:                                                                                                  \
        return weighted_add_impl<T, 16>(sq, nb, rows, kn, w, b0, out, rstride, ld);                             \
    }                                                                                                           \
  }
#else
#define FISHERX_WEIGHTED(T)                                                                                 \
  void weighted_add(const T* sq, int64_t nb, int rows, int64_t kn, const Weights<T>& w, int64_t b0, T* out, \
                    int64_t rstride, int64_t ld) {                                                          \
    weighted_add_impl<T, 16>(sq, nb, rows, kn, w, b0, out, rstride, ld);                                    \
  }
#endif
FISHERX_WEIGHTED(float)
FISHERX_WEIGHTED(double)
#undef FISHERX_WEIGHTED

FISHERX_MICRO(micro, float, false)
FISHERX_MICRO(micro, double, false)
#undef FISHERX_MICRO

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

// Packers of u: pack(c, b0, nb, k0, kn, dst) writes u[b0:b0+nb, c, :, k0:k0+kn] as [b][p][NR], zero-padded to NR.
template <typename T>
struct StridedU {
  Strided4<T> u;
  int64_t P() const { return u.size[2]; }
  int64_t K() const { return u.size[3]; }
  void pack(int64_t c, int64_t b0, int64_t nb, int64_t k0, int64_t kn, T* dst) const {
    constexpr int NR = nr<T>();
    const int64_t P = u.size[2], ks = u.stride[3];
    for (int64_t bl = 0; bl < nb; ++bl)
      for (int64_t p = 0; p < P; ++p) {
        T* d = dst + (bl * P + p) * NR;
        const T* src = &u.at(b0 + bl, c, p, k0);
        if (ks == 1) {
          std::memcpy(d, src, sizeof(T) * kn);
        } else {
          for (int64_t j = 0; j < kn; ++j) d[j] = src[j * ks];
        }
        for (int64_t j = kn; j < NR; ++j) d[j] = T(0);
      }
  }
};

// Implicit im2col: reads the convolution input directly (zero padding by bounds checks).
template <typename T>
struct ConvU {
  ConvInput<T> x;
  int64_t P() const { return x.out[0] * x.out[1] * x.out[2]; }
  int64_t K() const { return x.size[1] / x.groups * x.kernel[0] * x.kernel[1] * x.kernel[2]; }
  void pack(int64_t c, int64_t b0, int64_t nb, int64_t k0, int64_t kn, T* dst) const {
    constexpr int NR = nr<T>();
    // Per column j of the block: its offset in x (channel and kernel tap) and its tap displacement per dim.
    int64_t off[NR], dk[NR][3];
    const int64_t kvol = x.kernel[0] * x.kernel[1] * x.kernel[2], cin_g = x.size[1] / x.groups;
    for (int64_t j = 0; j < kn; ++j) {
      const int64_t k = k0 + j, ci = k / kvol, r = k % kvol;
      const int64_t t0 = r / (x.kernel[1] * x.kernel[2]), t1 = (r / x.kernel[2]) % x.kernel[1], t2 = r % x.kernel[2];
      dk[j][0] = t0 * x.dil[0];
      dk[j][1] = t1 * x.dil[1];
      dk[j][2] = t2 * x.dil[2];
      off[j] =
          (c * cin_g + ci) * x.stride[1] + dk[j][0] * x.stride[2] + dk[j][1] * x.stride[3] + dk[j][2] * x.stride[4];
    }
    const int64_t P = this->P();
    for (int64_t bl = 0; bl < nb; ++bl) {
      const T* xb = x.data + (b0 + bl) * x.stride[0];
      int64_t p = 0;
      for (int64_t o0 = 0; o0 < x.out[0]; ++o0)
        for (int64_t o1 = 0; o1 < x.out[1]; ++o1)
          for (int64_t o2 = 0; o2 < x.out[2]; ++o2, ++p) {
            T* d = dst + (bl * P + p) * NR;
            const int64_t i0 = o0 * x.step[0] - x.pad[0], i1 = o1 * x.step[1] - x.pad[1],
                          i2 = o2 * x.step[2] - x.pad[2];
            const int64_t base = i0 * x.stride[2] + i1 * x.stride[3] + i2 * x.stride[4];  // may be < 0 at a border
            // Interior positions (the whole kernel window inside x) need no bounds checks.
            const bool inside = i0 >= 0 && i0 + (x.kernel[0] - 1) * x.dil[0] < x.size[2] && i1 >= 0 &&
                                i1 + (x.kernel[1] - 1) * x.dil[1] < x.size[3] && i2 >= 0 &&
                                i2 + (x.kernel[2] - 1) * x.dil[2] < x.size[4];
            if (inside) {
              for (int64_t j = 0; j < kn; ++j) d[j] = xb[base + off[j]];
            } else {
              for (int64_t j = 0; j < kn; ++j) {
                const int64_t a = i0 + dk[j][0], b = i1 + dk[j][1], e = i2 + dk[j][2];
                d[j] = (a >= 0 && a < x.size[2] && b >= 0 && b < x.size[3] && e >= 0 && e < x.size[4])
                           ? xb[base + off[j]]
                           : T(0);
              }
            }
            for (int64_t j = kn; j < NR; ++j) d[j] = T(0);
          }
    }
  }
};

// Pack g[b0:b0+nb, c, :, m0:m0+mn] as [m-block][b][p][MR], zero-padded past M. The loop over the smaller stride
// runs innermost, so both (B, P, M) and conv's (B, M, P) layouts are read sequentially.
template <typename T>
void pack_g(const Strided4<T>& g, int64_t c, int64_t b0, int64_t nb, int64_t m0, int64_t mn, T* dst) {
  const int64_t P = g.size[2], nmb = (mn + MR - 1) / MR;
  const bool p_inner = g.stride[2] < g.stride[3];
  for (int64_t mb = 0; mb < nmb; ++mb)
    for (int64_t bl = 0; bl < nb; ++bl) {
      T* d = dst + (mb * nb + bl) * P * MR;
      if (p_inner) {
        for (int r = 0; r < MR; ++r) {
          const int64_t m = mb * MR + r;
          if (m < mn) {
            const T* src = &g.at(b0 + bl, c, 0, m0 + m);
            for (int64_t p = 0; p < P; ++p) d[p * MR + r] = src[p * g.stride[2]];
          } else {
            for (int64_t p = 0; p < P; ++p) d[p * MR + r] = T(0);
          }
        }
      } else {
        for (int64_t p = 0; p < P; ++p)
          for (int r = 0; r < MR; ++r) {
            const int64_t m = mb * MR + r;
            d[p * MR + r] = m < mn ? g.at(b0 + bl, c, p, m0 + m) : T(0);
          }
      }
    }
}

// *sw = rstd·(Σ_p g[p]·x[p] − mean·Σ_p g[p]), *sb = Σ_p g[p]. Blocks of 64 positions are summed in T with 16
// independent partial sums (so the loop vectorises), each block's total added in double: the rounding of T sums
// covers 4 terms at most, the long sum over positions is double as everywhere in this kernel.
template <typename T>
__attribute__((always_inline)) inline void dot_and_sum_impl(const T* __restrict g, const T* __restrict x, int64_t P,
                                                            double mean, double rstd, double* sw, double* sb) {
  constexpr int W = 16, BLK = 64;
  double gx = 0.0, gs = 0.0;
  int64_t p = 0;
  for (; p + BLK <= P; p += BLK) {
    T s[W] = {}, t[W] = {};
    for (int q = 0; q < BLK; q += W)
      for (int j = 0; j < W; ++j) {
        s[j] += g[p + q + j] * x[p + q + j];
        t[j] += g[p + q + j];
      }
    for (int j = 0; j < W; ++j) {
      gx += s[j];
      gs += t[j];
    }
  }
  for (; p < P; ++p) {
    gx += static_cast<double>(g[p]) * x[p];
    gs += g[p];
  }
  *sw = rstd * (gx - mean * gs);
  *sb = gs;
}

FISHERX_MULTIVERSION void dot_and_sum(const float* g, const float* x, int64_t P, double mean, double rstd, double* sw,
                                      double* sb) {
  dot_and_sum_impl(g, x, P, mean, rstd, sw, sb);
}
FISHERX_MULTIVERSION void dot_and_sum(const double* g, const double* x, int64_t P, double mean, double rstd, double* sw,
                                      double* sb) {
  dot_and_sum_impl(g, x, P, mean, rstd, sw, sb);
}

}  // namespace

template <typename T, typename PackU>
void sqgrad_driver(const Strided4<T>& g, const PackU& u, T* out, bool accumulate, int nthreads, const Weights<T>& w) {
  const int64_t B = g.size[0], C = g.size[1], P = g.size[2], M = g.size[3], K = u.K();
  constexpr int NR = nr<T>();
  const bool weighted = w.data != nullptr;
  const int64_t R = weighted ? w.R : 1;
  if (!accumulate) std::fill(out, out + R * C * M * K, T(0));
  if (weighted && R == 0) return;
  if (B == 0 || P == 0 || M == 0 || K == 0) return;
  // Tasks: (group, m-chunk, k-chunk). A task packs its g slice once per batch chunk and reuses it for every
  // k-block (u is packed one k-block at a time), so splitting m is preferred; k is split only for parallelism.
  // Splitting m repacks u once per m-chunk, splitting k repacks g once per k-chunk: split the dim whose
  // counterpart is smaller (convolutions usually have K = C·k > M, so they split k).
  const int64_t want = 2 * std::max(1, nthreads);
  const int64_t nmb_all = (M + MR - 1) / MR, nkb_all = (K + NR - 1) / NR;
  const int64_t per_group = (want + C - 1) / C;
  int64_t nmc = K > M ? 1 : std::clamp<int64_t>(per_group, 1, nmb_all);
  const int64_t mchunk = (nmb_all + nmc - 1) / nmc * MR;
  nmc = (M + mchunk - 1) / mchunk;
  int64_t nkc = std::clamp<int64_t>((want + C * nmc - 1) / (C * nmc), 1, nkb_all);
  const int64_t kchunk = (nkb_all + nkc - 1) / nkc * NR;
  nkc = (K + kchunk - 1) / kchunk;
  const int64_t ntasks = C * nmc * nkc;
  // Weighted: every batch chunk reads and writes the task's tile of all R outputs once, so chunks 8x larger than
  // the cache-sized default (packs of ~4 MB) cut that traffic, which dominates when R is large and P small.
  const int64_t pack = weighted ? 8 * kPackElems : kPackElems;
  int64_t bc = std::clamp<int64_t>(pack / std::max<int64_t>(1, P * (NR + mchunk)), 1, B);
  if (weighted) bc = std::clamp<int64_t>(pack / (MR * NR), 1, bc);  // the squared tiles' buffer: pack elements

#pragma omp parallel num_threads(std::max(1, nthreads)) if (ntasks > 1)
  {
    AlignedBuf<T> upack, gpack, acc, sq;
    upack.resize(static_cast<size_t>(bc * P * NR));
    gpack.resize(static_cast<size_t>(bc * P * mchunk));
    // Weighted: the replicates are accumulated straight into out (each task owns its region of every replicate),
    // so the per-thread memory is one batch chunk of squared tiles, not R accumulators.
    if (weighted)
      sq.resize(static_cast<size_t>(bc * MR * NR));
    else
      acc.resize(static_cast<size_t>(mchunk * kchunk));
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < ntasks; ++task) {
      const int64_t c = task / (nmc * nkc), mc = (task / nkc) % nmc, kc = task % nkc;
      const int64_t m0 = mc * mchunk, mn = std::min<int64_t>(mchunk, M - m0);
      const int64_t kc0 = kc * kchunk, kcn = std::min<int64_t>(kchunk, K - kc0);
      const int64_t nmb = (mn + MR - 1) / MR, nkb = (kcn + NR - 1) / NR;
      // acc layout: [k-block][m-block][MR][NR]
      if (!weighted) std::fill(acc.ptr, acc.ptr + mchunk * kchunk, T(0));
      for (int64_t b0 = 0; b0 < B; b0 += bc) {
        const int64_t nb = std::min(bc, B - b0);
        pack_g(g, c, b0, nb, m0, mn, gpack.ptr);
        for (int64_t kb = 0; kb < nkb; ++kb) {
          const int64_t k0 = kc0 + kb * NR, kn = std::min<int64_t>(NR, K - k0);
          u.pack(c, b0, nb, k0, kn, upack.ptr);
          T* acc_kb = weighted ? nullptr : acc.ptr + kb * nmb * MR * NR;
          for (int64_t mb = 0; mb < nmb; ++mb) {
            const T* gp = gpack.ptr + mb * nb * P * MR;
            if (!weighted) {
              micro(gp, upack.ptr, nb, P, acc_kb + mb * MR * NR);
              continue;
            }
            micro_sq(gp, upack.ptr, nb, P, sq.ptr);
            const int rows = static_cast<int>(std::min<int64_t>(MR, mn - mb * MR));
            weighted_add(sq.ptr, nb, rows, kn, w, b0, out + (c * M + m0 + mb * MR) * K + k0, C * M * K, K);
          }
        }
      }
      if (weighted) continue;  // the replicates went straight to out
      for (int64_t kb = 0; kb < nkb; ++kb) {
        const int64_t k0 = kc0 + kb * NR, kn = std::min<int64_t>(NR, K - k0);
        const T* acc_kb = acc.ptr + kb * nmb * MR * NR;
        for (int64_t m = 0; m < mn; ++m) {
          T* o = out + (c * M + m0 + m) * K + k0;
          const T* a = acc_kb + m * NR;
          for (int64_t j = 0; j < kn; ++j) o[j] += a[j];
        }
      }
    }
  }
}

template <typename T>
void sqgrad_gemm(Strided4<T> g, Strided4<T> u, T* out, bool accumulate, int nthreads, Weights<T> w) {
  sqgrad_driver(g, StridedU<T>{u}, out, accumulate, nthreads, w);
}

template <typename T>
void sqgrad_conv(Strided4<T> g, ConvInput<T> x, T* out, int nthreads, Weights<T> w) {
  sqgrad_driver(g, ConvU<T>{x}, out, false, nthreads, w);
}

template <typename T>
void sqgrad_norm(Strided3<T> g, Strided3<T> x, Strided3<T> mean, Strided3<T> rstd, T* out, double* ws, int nthreads,
                 Weights<T> wts) {
  const int64_t B = g.size[0], P = g.size[1], C = g.size[2];
  std::fill(ws, ws + B * 2 * C, 0.0);
  // The loop with the smaller stride goes inside, so NCHW (channel-strided) and (B, T, D) layouts both stream.
  const bool c_inner = g.stride[2] <= g.stride[1];
  const bool per_channel_stats = mean.stride[1] == 0 && rstd.stride[1] == 0;
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
    } else if (per_channel_stats && g.stride[1] == 1 && x.stride[1] == 1) {
      // BatchNorm / GroupNorm on NCHW: mean and rstd constant over the positions of a (sample, channel), the
      // positions contiguous. Σ_p g·(x − mean)·rstd = rstd·(Σ_p g·x − mean·Σ_p g): two streams, no index arithmetic.
      for (int64_t c = 0; c < C; ++c)
        dot_and_sum(&g.at(b, 0, c), &x.at(b, 0, c), P, mean.at(b, 0, c), rstd.at(b, 0, c), sw + c, sb + c);
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
  if (wts.data != nullptr) {
    // Bootstrap: out[r, 0|1, c] = Σ_b w[r,b]·(per-sample sum)², the squares taken once from the workspace.
    for (int64_t b = 0; b < B; ++b)
      for (int64_t j = 0; j < 2 * C; ++j) ws[b * 2 * C + j] *= ws[b * 2 * C + j];
#pragma omp parallel for schedule(static) num_threads(std::max(1, nthreads)) if (wts.R > 1)
    for (int64_t r = 0; r < wts.R; ++r) {
      for (int64_t j = 0; j < 2 * C; ++j) {
        double s = 0.0;
        for (int64_t b = 0; b < B; ++b) s += static_cast<double>(wts.at(r, b)) * ws[b * 2 * C + j];
        out[r * 2 * C + j] = static_cast<T>(s);
      }
    }
    return;
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

template void sqgrad_gemm<float>(Strided4<float>, Strided4<float>, float*, bool, int, Weights<float>);
template void sqgrad_gemm<double>(Strided4<double>, Strided4<double>, double*, bool, int, Weights<double>);
template void sqgrad_conv<float>(Strided4<float>, ConvInput<float>, float*, int, Weights<float>);
template void sqgrad_conv<double>(Strided4<double>, ConvInput<double>, double*, int, Weights<double>);
template void sqgrad_norm<float>(Strided3<float>, Strided3<float>, Strided3<float>, Strided3<float>, float*, double*,
                                 int, Weights<float>);
template void sqgrad_norm<double>(Strided3<double>, Strided3<double>, Strided3<double>, Strided3<double>, double*,
                                  double*, int, Weights<double>);

}  // namespace fisherx::cpu
