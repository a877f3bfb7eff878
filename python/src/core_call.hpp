// What every entry point of the extension shares: the GIL released around a
// call of the core, the core's errors raised as Python exceptions, and the one
// builder of each of the core's argument structs (Problem, ForwardArgs,
// BackwardArgs) from the Python-side values.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <new>
#include <stdexcept>

#include "groupnorm/groupnorm.hpp"

namespace groupnorm_py {

namespace py = pybind11;
namespace gn = groupnorm;

// Releases the GIL for its scope. Unlike py::gil_scoped_release, its destructor
// may propagate: at interpreter exit CPython ends a daemon thread that tries to
// re-take the GIL by unwinding it (pthread_exit), and that unwind must not
// cross a noexcept destructor (std::terminate, SIGABRT at exit).
class GilRelease {
 public:
  GilRelease() : state_(PyEval_SaveThread()) {}
  ~GilRelease() noexcept(false) { PyEval_RestoreThread(state_); }
  GilRelease(const GilRelease&) = delete;
  GilRelease& operator=(const GilRelease&) = delete;

 private:
  PyThreadState* state_;
};

// The core's error as the Python exception the package documents.
[[noreturn]] inline void raise(const gn::Result& r) {
  if (r.status == gn::Status::invalid_dtype) throw py::type_error(r.message);
  if (r.status == gn::Status::out_of_memory) throw std::bad_alloc();
  if (r.status == gn::Status::device_error || r.status == gn::Status::internal_error)
    throw std::runtime_error(r.message);
  throw py::value_error(r.message);
}

// The data of an argument on the host: None -> null, else a NumPy array (the
// Python layer has checked it); anything else is a TypeError, never a guess.
inline void* data(py::handle o) {
  if (o.is_none()) return nullptr;
  if (!py::isinstance<py::array>(o)) throw py::type_error("groupnorm._core: expected a numpy.ndarray or None");
  return py::detail::array_proxy(o.ptr())->data;
}

// The problem. (N, C, S) come from the caller: geometry() of an array's shape
// on the host, the Python layer's (_checks.geometry) for device pointers.
inline gn::Problem problem(std::int64_t n, std::int64_t c, std::int64_t s, std::int64_t groups, double eps,
                           bool channels_last, int activation, int dtype, int param_dtype) {
  gn::Problem p;
  p.batch = n;
  p.channels = c;
  p.spatial = s;
  p.groups = groups;
  p.channels_last = channels_last;
  p.eps = eps;
  p.activation = (gn::Activation)activation;
  p.dtype = (gn::DType)dtype;
  p.param_dtype = (gn::DType)param_dtype;
  return p;
}

// (N, C, S) of an (N, C, *spatial) or, channels last, (N, *spatial, C) shape of nd >= 2 dims.
struct Geometry {
  std::int64_t n, c, s;
};
inline Geometry geometry(const py::ssize_t* shape, py::ssize_t nd, bool channels_last) {
  const py::ssize_t cdim = channels_last ? nd - 1 : 1;
  std::int64_t s = 1;
  for (py::ssize_t i = 1; i < nd; ++i)
    if (i != cdim) s *= shape[i];
  return Geometry{shape[0], shape[cdim], s};
}

inline gn::Problem problem(const py::array& x, std::int64_t groups, double eps, bool channels_last, int activation,
                           int dtype, int param_dtype) {
  const Geometry g = geometry(x.shape(), x.ndim(), channels_last);
  return problem(g.n, g.c, g.s, groups, eps, channels_last, activation, dtype, param_dtype);
}

// The one builder of each argument struct: every field named once, in the
// order of the struct (host data from data(), device pointers as given).
inline gn::ForwardArgs forward_args(const void* x, const void* weight, const void* bias, const void* skip,
                                    const void* skip_bias, void* y, void* sum_out, void* mean, void* rstd) {
  gn::ForwardArgs a;
  a.x = x;
  a.weight = weight;
  a.bias = bias;
  a.skip = skip;
  a.skip_bias = skip_bias;
  a.y = y;
  a.sum_out = sum_out;
  a.mean = mean;
  a.rstd = rstd;
  return a;
}

inline gn::BackwardArgs backward_args(const void* grad_y, const void* x, const void* mean, const void* rstd,
                                      const void* weight, const void* bias, void* grad_x, void* grad_weight,
                                      void* grad_bias) {
  gn::BackwardArgs a;
  a.grad_y = grad_y;
  a.x = x;
  a.mean = mean;
  a.rstd = rstd;
  a.weight = weight;
  a.bias = bias;
  a.grad_x = grad_x;
  a.grad_weight = grad_weight;
  a.grad_bias = grad_bias;
  return a;
}

// Runs a call of the core with the GIL released; raises its error.
template <class Call>
void run_released(Call call) {
  gn::Result r;
  {
    GilRelease release;
    r = call();
  }
  if (!r) raise(r);
}

inline gn::Exec exec(int num_threads) {
  gn::Exec e;
  e.num_threads = num_threads;
  return e;
}

// Entry points defined in their own files.
void def_cuda(py::module_& m);   // cuda.cpp: forward_cuda, backward_cuda, HAS_CUDA, cuda_available
void def_bench(py::module_& m);  // bench.cpp: parallel_copy

}  // namespace groupnorm_py
