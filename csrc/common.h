// Shared declarations of the fisherx kernels. Every kernel takes raw pointers, element counts and element
// strides (never libtorch types), so the extension works with any torch version; outputs and workspaces are
// allocated by the Python side with torch.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>

// Wheels are built for baseline x86-64, but the machines they run on have AVX2 or AVX-512: hot CPU loops are
// compiled for x86-64-v4 (AVX-512), v3 (AVX2) and the baseline, and the loader picks the best at run time (GCC
// function multiversioning; -march=native is not an option for a wheel).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__)
#define FISHERX_MULTIVERSION __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FISHERX_MULTIVERSION
#endif

namespace fisherx {

enum class DType : int { Float32 = 0, Float64 = 1 };

inline DType parse_dtype(const std::string& s) {
  if (s == "float32") return DType::Float32;
  if (s == "float64") return DType::Float64;
  throw std::invalid_argument("fisherx kernels support float32 and float64, got " + s);
}

#if defined(__CUDACC__)
#define FISHERX_HOST_DEVICE __host__ __device__
#else
#define FISHERX_HOST_DEVICE
#endif

// A (rows x n) matrix given by its first element and two strides, in elements. A single vector is one row. With a
// `table` (rows addresses, in the kernel's memory space), row k starts at table[k] instead, and `data` and
// `row_stride` are unused: K separate tensors are read in place, without stacking them into one matrix first.
template <typename T>
struct Rows {
  const T* data;
  int64_t rows, n, row_stride, stride;
  const T* const* table = nullptr;
  FISHERX_HOST_DEVICE const T* row(int64_t k) const { return table ? table[k] : data + k * row_stride; }
};

// Per-row statistics every distance kernel reports so the caller can reject bad input without another pass:
// kStatSum = sum of the entries (NaN/Inf if any entry is), kStatNeg = number of negative entries.
constexpr int kStatSum = 0;
constexpr int kStatNeg = 1;
constexpr int kStats = 2;

// The one-pass FTD formula d² = S/(2√A√B) − r amplifies the rounding error of the float64 sum S by r/d². When that
// factor exceeds kFtdRefineRatio (traces that differ much more than the normalised vectors do, or a tiny distance),
// the kernels take a second, exact pass over the rows concerned. S carries ~1e-13 relative error for long vectors,
// so 1e3 keeps d² within ~1e-10 (1e6 did not: traces 1e12 apart at d = 0.8 came out wrong in the 9th digit).
constexpr double kFtdRefineRatio = 1e3;
// The CPU's float32 path forms each term of S in float32 (≤ 3e-7 relative, csrc/cpu/distance.cpp): a ratio of 4
// keeps d within 3e-7·(1 + 4)/2 = 7.5e-7 relative; other rows take the exact pass.
constexpr double kFtdRefineRatioF32 = 4.0;

}  // namespace fisherx
