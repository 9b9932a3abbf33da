// The one pybind11 module, fisherx._C. Submodules `cpu` and `cuda` expose the same kernels with the same names
// (plus workspace and stream for CUDA). Arguments are addresses, sizes and strides in elements: the extension
// knows nothing of torch, and fisherx/_ops.py is its only caller.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <utility>

#include "common.h"
#include "cpu/distance.h"
#include "cpu/sqgrad.h"
#ifdef FISHERX_WITH_CUDA
#include "cuda/distance.h"
#include "cuda/sqgrad.h"
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

namespace py = pybind11;
using fisherx::DType;
using fisherx::Rows;

namespace {

template <typename T>
const T* cptr(std::uintptr_t p) {
  return reinterpret_cast<const T*>(p);
}
double* dptr(std::uintptr_t p) { return reinterpret_cast<double*>(p); }

// The sources of a distance kernel: a strided matrix, or (table != 0) K row addresses at `table`.
template <typename T>
Rows<T> rows(std::uintptr_t p, int64_t K, int64_t n, int64_t row_stride, int64_t stride, std::uintptr_t table = 0) {
  return Rows<T>{cptr<T>(p), K, n, row_stride, stride, reinterpret_cast<const T* const*>(table)};
}

// Fisher engine (sqgrad kernels): a strided view from an address plus sizes and strides in elements.
using Shape4 = std::array<int64_t, 4>;
using Shape3 = std::array<int64_t, 3>;
template <typename T>
fisherx::Strided4<T> view4(std::uintptr_t p, const Shape4& size, const Shape4& stride) {
  return fisherx::Strided4<T>{
      cptr<T>(p), {size[0], size[1], size[2], size[3]}, {stride[0], stride[1], stride[2], stride[3]}};
}
template <typename T>
fisherx::Strided3<T> view3(std::uintptr_t p, const Shape3& size, const Shape3& stride) {
  return fisherx::Strided3<T>{cptr<T>(p), {size[0], size[1], size[2]}, {stride[0], stride[1], stride[2]}};
}

using Shape5 = std::array<int64_t, 5>;
// A convolution input and its geometry (csrc/sqgrad_types.h), the 1-D/2-D cases padded to 3 spatial dims.
template <typename T>
fisherx::ConvInput<T> conv_input(std::uintptr_t p, const Shape5& size, const Shape5& stride, const Shape3& out,
                                 const Shape3& kernel, const Shape3& step, const Shape3& pad, const Shape3& dil,
                                 int64_t groups) {
  fisherx::ConvInput<T> c{cptr<T>(p), {}, {}, {}, {}, {}, {}, {}, groups};
  for (int i = 0; i < 5; ++i) {
    c.size[i] = size[i];
    c.stride[i] = stride[i];
  }
  for (int i = 0; i < 3; ++i) {
    c.out[i] = out[i];
    c.kernel[i] = kernel[i];
    c.step[i] = step[i];
    c.pad[i] = pad[i];
    c.dil[i] = dil[i];
  }
  return c;
}

// Bootstrap weights (R, B) from an address and strides; R < 0 means none (one unweighted sum). An empty weight
// tensor may have address 0, so it gets a dummy non-null pointer (never read: there is no sample to weight).
template <typename T>
fisherx::Weights<T> weights(std::uintptr_t p, int64_t R, int64_t stride_r, int64_t stride_b) {
  static const T dummy{};
  if (R < 0) return fisherx::Weights<T>{};
  return fisherx::Weights<T>{p ? cptr<T>(p) : &dummy, R, stride_r, stride_b};
}

// Every kernel is bound the same way: a lambda over addresses, sizes and strides that picks T by `dispatch` and
// runs with the GIL released (the kernels never touch Python objects).
template <typename Fn>
void def_kernel(py::module_& m, const char* name, Fn&& fn) {
  m.def(name, std::forward<Fn>(fn), py::call_guard<py::gil_scoped_release>());
}

// Calls fn.template operator()<T>() for the dtype named by `dtype`.
template <typename Fn>
void dispatch(const std::string& dtype, Fn&& fn) {
  if (fisherx::parse_dtype(dtype) == DType::Float32)
    fn(float{});
  else
    fn(double{});
}

py::dict build_info() {
  py::dict d;
  d["version"] = FISHERX_VERSION;
#ifdef FISHERX_WITH_CUDA
  d["cuda"] = true;
  d["cuda_archs"] = FISHERX_CUDA_ARCHS;
  d["cuda_runtime_version"] = CUDART_VERSION;
#else
  d["cuda"] = false;
  d["cuda_archs"] = "";
  d["cuda_runtime_version"] = 0;
#endif
#ifdef _OPENMP
  d["openmp"] = true;
  d["openmp_max_threads"] = omp_get_max_threads();
#else
  d["openmp"] = false;
  d["openmp_max_threads"] = 1;
#endif
  d["compiler"] = __VERSION__;
  return d;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "fisherx kernels (internal: call through fisherx._ops)";
  m.def("build_info", &build_info, "How this extension was built");

  auto cpu = m.def_submodule("cpu", "CPU kernels");
  def_kernel(cpu, "row_stats",
             [](const std::string& dt, std::uintptr_t x, int64_t rows_, int64_t n, int64_t rs, int64_t s,
                std::uintptr_t table, std::uintptr_t stats, int nt) {
               dispatch(dt, [&](auto t) {
                 using T = decltype(t);
                 fisherx::cpu::row_stats<T>(rows<T>(x, rows_, n, rs, s, table), dptr(stats), nt);
               });
             });
  // Same arguments as the CUDA binding: `scale` holds the K sources' factors, then the target's.
  def_kernel(
      cpu, "logdet_column",
      [](const std::string& dt, std::uintptr_t src, int64_t K, int64_t n, int64_t rs, int64_t s, std::uintptr_t table,
         std::uintptr_t tgt, int64_t ts, std::uintptr_t scale, double sigma2, std::uintptr_t out, int nt) {
        dispatch(dt, [&](auto t) {
          using T = decltype(t);
          fisherx::cpu::logdet_column<T>(rows<T>(src, K, n, rs, s, table), rows<T>(tgt, 1, n, 0, ts),
                                         reinterpret_cast<const double*>(scale), sigma2, dptr(out), nt);
        });
      });
  // FTD and cosine columns: one signature, the distances and every row's statistics.
#define FISHERX_COLUMN(name)                                                                                           \
  def_kernel(                                                                                                          \
      cpu, #name,                                                                                                      \
      [](const std::string& dt, std::uintptr_t src, int64_t K, int64_t n, int64_t rs, int64_t s, std::uintptr_t table, \
         std::uintptr_t tgt, int64_t ts, std::uintptr_t out, std::uintptr_t stats, int nt) {                           \
        dispatch(dt, [&](auto t) {                                                                                     \
          using T = decltype(t);                                                                                       \
          fisherx::cpu::name<T>(rows<T>(src, K, n, rs, s, table), rows<T>(tgt, 1, n, 0, ts), dptr(out), dptr(stats),   \
                                nt);                                                                                   \
        });                                                                                                            \
      })
  FISHERX_COLUMN(ftd_column);
  FISHERX_COLUMN(cosine_column);
#undef FISHERX_COLUMN
  // Fisher engine: per-sample squared-gradient sums (csrc/cpu/sqgrad.h).
  def_kernel(cpu, "sqgrad_gemm",
             [](const std::string& dt, std::uintptr_t g, Shape4 gs, Shape4 gst, std::uintptr_t u, Shape4 us, Shape4 ust,
                std::uintptr_t out, bool accumulate, int nt, std::uintptr_t w, int64_t R, int64_t wsr, int64_t wsb) {
               dispatch(dt, [&](auto t) {
                 using T = decltype(t);
                 fisherx::cpu::sqgrad_gemm<T>(view4<T>(g, gs, gst), view4<T>(u, us, ust), reinterpret_cast<T*>(out),
                                              accumulate, nt, weights<T>(w, R, wsr, wsb));
               });
             });
  def_kernel(cpu, "sqgrad_conv",
             [](const std::string& dt, std::uintptr_t g, Shape4 gs, Shape4 gst, std::uintptr_t x, Shape5 xs, Shape5 xst,
                Shape3 out_sz, Shape3 kernel, Shape3 step, Shape3 pad, Shape3 dil, int64_t groups, std::uintptr_t out,
                int nt, std::uintptr_t w, int64_t R, int64_t wsr, int64_t wsb) {
               dispatch(dt, [&](auto t) {
                 using T = decltype(t);
                 fisherx::cpu::sqgrad_conv<T>(view4<T>(g, gs, gst),
                                              conv_input<T>(x, xs, xst, out_sz, kernel, step, pad, dil, groups),
                                              reinterpret_cast<T*>(out), nt, weights<T>(w, R, wsr, wsb));
               });
             });
  def_kernel(cpu, "sqgrad_norm",
             [](const std::string& dt, Shape3 size, std::uintptr_t g, Shape3 gst, std::uintptr_t x, Shape3 xst,
                std::uintptr_t mean, Shape3 mst, std::uintptr_t rstd, Shape3 rst, std::uintptr_t out, std::uintptr_t ws,
                int nt, std::uintptr_t w, int64_t R, int64_t wsr, int64_t wsb) {
               dispatch(dt, [&](auto t) {
                 using T = decltype(t);
                 fisherx::cpu::sqgrad_norm<T>(view3<T>(g, size, gst), view3<T>(x, size, xst), view3<T>(mean, size, mst),
                                              view3<T>(rstd, size, rst), reinterpret_cast<T*>(out), dptr(ws), nt,
                                              weights<T>(w, R, wsr, wsb));
               });
             });

#ifdef FISHERX_WITH_CUDA
  auto cuda = m.def_submodule("cuda", "CUDA kernels (stream = torch.cuda.current_stream().cuda_stream)");
  auto stream_of = [](std::uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); };
  cuda.def("workspace_doubles", &fisherx::cuda::workspace_doubles);
  def_kernel(cuda, "row_stats",
             [=](const std::string& dt, std::uintptr_t x, int64_t rows_, int64_t n, int64_t rs, int64_t s,
                 std::uintptr_t table, std::uintptr_t stats, std::uintptr_t ws, std::uintptr_t stream) {
               dispatch(dt, [&](auto t) {
                 using T = decltype(t);
                 fisherx::cuda::row_stats<T>(rows<T>(x, rows_, n, rs, s, table), dptr(stats), dptr(ws),
                                             stream_of(stream));
               });
             });
  def_kernel(cuda, "logdet_column",
             [=](const std::string& dt, std::uintptr_t src, int64_t K, int64_t n, int64_t rs, int64_t s,
                 std::uintptr_t table, std::uintptr_t tgt, int64_t ts, std::uintptr_t scale, double sigma2,
                 std::uintptr_t out, std::uintptr_t ws, std::uintptr_t stream) {
               dispatch(dt, [&](auto t) {
                 using T = decltype(t);
                 fisherx::cuda::logdet_column<T>(rows<T>(src, K, n, rs, s, table), rows<T>(tgt, 1, n, 0, ts),
                                                 reinterpret_cast<const double*>(scale), sigma2, dptr(out), dptr(ws),
                                                 stream_of(stream));
               });
             });
#define FISHERX_COLUMN(name)                                                                                     \
  def_kernel(cuda, #name,                                                                                        \
             [=](const std::string& dt, std::uintptr_t src, int64_t K, int64_t n, int64_t rs, int64_t s,         \
                 std::uintptr_t table, std::uintptr_t tgt, int64_t ts, std::uintptr_t out, std::uintptr_t stats, \
                 std::uintptr_t ws, std::uintptr_t stream) {                                                     \
               dispatch(dt, [&](auto t) {                                                                        \
                 using T = decltype(t);                                                                          \
                 fisherx::cuda::name<T>(rows<T>(src, K, n, rs, s, table), rows<T>(tgt, 1, n, 0, ts), dptr(out),  \
                                        dptr(stats), dptr(ws), stream_of(stream));                               \
               });                                                                                               \
             })
  FISHERX_COLUMN(ftd_column);
  FISHERX_COLUMN(cosine_column);
#undef FISHERX_COLUMN
  // Fisher engine: per-sample squared-gradient sums (csrc/cuda/sqgrad.h).
  cuda.def("sqgrad_gemm_workspace", &fisherx::cuda::sqgrad_gemm_workspace);
  def_kernel(cuda, "sqgrad_gemm",
             [=](const std::string& dt, std::uintptr_t g, Shape4 gs, Shape4 gst, std::uintptr_t u, Shape4 us,
                 Shape4 ust, std::uintptr_t out, bool accumulate, std::uintptr_t ws, std::uintptr_t stream,
                 std::uintptr_t w, int64_t R, int64_t wsr, int64_t wsb) {
               dispatch(dt, [&](auto t) {
                 using T = decltype(t);
                 fisherx::cuda::sqgrad_gemm<T>(view4<T>(g, gs, gst), view4<T>(u, us, ust), reinterpret_cast<T*>(out),
                                               accumulate, reinterpret_cast<T*>(ws), stream_of(stream),
                                               weights<T>(w, R, wsr, wsb));
               });
             });
  def_kernel(
      cuda, "sqgrad_conv",
      [=](const std::string& dt, std::uintptr_t g, Shape4 gs, Shape4 gst, std::uintptr_t x, Shape5 xs, Shape5 xst,
          Shape3 out_sz, Shape3 kernel, Shape3 step, Shape3 pad, Shape3 dil, int64_t groups, std::uintptr_t out,
          std::uintptr_t ws, std::uintptr_t stream, std::uintptr_t w, int64_t R, int64_t wsr, int64_t wsb) {
        dispatch(dt, [&](auto t) {
          using T = decltype(t);
          fisherx::cuda::sqgrad_conv<T>(
              view4<T>(g, gs, gst), conv_input<T>(x, xs, xst, out_sz, kernel, step, pad, dil, groups),
              reinterpret_cast<T*>(out), reinterpret_cast<T*>(ws), stream_of(stream), weights<T>(w, R, wsr, wsb));
        });
      });
  def_kernel(cuda, "sqgrad_norm",
             [=](const std::string& dt, Shape3 size, std::uintptr_t g, Shape3 gst, std::uintptr_t x, Shape3 xst,
                 std::uintptr_t mean, Shape3 mst, std::uintptr_t rstd, Shape3 rst, std::uintptr_t out,
                 std::uintptr_t ws, std::uintptr_t stream, std::uintptr_t w, int64_t R, int64_t wsr, int64_t wsb) {
               dispatch(dt, [&](auto t) {
                 using T = decltype(t);
                 fisherx::cuda::sqgrad_norm<T>(view3<T>(g, size, gst), view3<T>(x, size, xst),
                                               view3<T>(mean, size, mst), view3<T>(rstd, size, rst),
                                               reinterpret_cast<T*>(out), dptr(ws), stream_of(stream),
                                               weights<T>(w, R, wsr, wsb));
               });
             });
#endif
}
