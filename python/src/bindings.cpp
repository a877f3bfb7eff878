// The thin pybind11 layer: NumPy buffers in, the C++ API called with the GIL
// released. Argument checks on arrays (shapes, dtypes, contiguity) happen in
// python/groupnorm/_checks.py; the problem rules live in the C++ core.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <cstring>
#include <stdexcept>

#include "groupnorm/cuda.hpp"
#include "groupnorm/groupnorm.hpp"

namespace py = pybind11;
namespace gn = groupnorm;

namespace {

const void* cdata(const py::object& o) {
  if (o.is_none()) return nullptr;
  return py::reinterpret_borrow<py::array>(o).data();
}
void* mdata(const py::object& o) {
  if (o.is_none()) return nullptr;
  return py::reinterpret_borrow<py::array>(o).mutable_data();
}

[[noreturn]] void raise(const gn::Result& r) {
  if (r.status == gn::Status::invalid_dtype) throw py::type_error(r.message);
  if (r.status == gn::Status::out_of_memory) throw std::bad_alloc();
  throw py::value_error(r.message);
}

gn::Problem problem(const py::array& x, std::int64_t groups, double eps, bool channels_last, int act, int dtype,
                    int param_dtype) {
  gn::Problem p;
  const py::ssize_t nd = x.ndim();
  p.batch = x.shape(0);
  p.channels = channels_last ? x.shape(nd - 1) : x.shape(1);
  std::int64_t s = 1;
  for (py::ssize_t i = 1; i < nd; ++i)
    if (i != (channels_last ? nd - 1 : 1)) s *= x.shape(i);
  p.spatial = s;
  p.groups = groups;
  p.channels_last = channels_last;
  p.eps = eps;
  p.activation = (gn::Activation)act;
  p.dtype = (gn::DType)dtype;
  p.param_dtype = (gn::DType)param_dtype;
  return p;
}

void forward(const py::array& x, std::int64_t groups, const py::object& weight, const py::object& bias, double eps,
             bool channels_last, int act, int dtype, int param_dtype, const py::array& y, const py::object& mean,
             const py::object& rstd, const py::object& skip, const py::object& skip_bias, const py::object& sum_out,
             int num_threads) {
  const gn::Problem p = problem(x, groups, eps, channels_last, act, dtype, param_dtype);
  gn::ForwardArgs a;
  a.x = x.data();
  a.weight = cdata(weight);
  a.bias = cdata(bias);
  a.skip = cdata(skip);
  a.skip_bias = cdata(skip_bias);
  a.y = const_cast<void*>(y.data());  // writability checked in Python
  a.sum_out = mdata(sum_out);
  a.mean = mdata(mean);
  a.rstd = mdata(rstd);
  gn::Exec e;
  e.num_threads = num_threads;
  gn::Result r;
  {
    py::gil_scoped_release release;
    r = gn::forward(p, a, e);
  }
  if (!r) raise(r);
}

void backward(const py::array& grad_y, const py::array& x, const py::array& mean, const py::array& rstd,
              std::int64_t groups, const py::object& weight, const py::object& bias, bool channels_last, int act,
              int dtype, int param_dtype, const py::object& grad_x, const py::object& grad_weight,
              const py::object& grad_bias, int num_threads) {
  const gn::Problem p = problem(x, groups, 0.0, channels_last, act, dtype, param_dtype);
  gn::BackwardArgs a;
  a.grad_y = grad_y.data();
  a.x = x.data();
  a.mean = mean.data();
  a.rstd = rstd.data();
  a.weight = cdata(weight);
  a.bias = cdata(bias);
  a.grad_x = mdata(grad_x);
  a.grad_weight = mdata(grad_weight);
  a.grad_bias = mdata(grad_bias);
  gn::Exec e;
  e.num_threads = num_threads;
  gn::Result r;
  {
    py::gil_scoped_release release;
    r = gn::backward(p, a, e);
  }
  if (!r) raise(r);
}

void check(std::int64_t channels, std::int64_t groups, double eps, const char* activation) {
  gn::Problem p;
  p.channels = channels;
  p.groups = groups;
  p.eps = eps;
  gn::Result r = gn::validate(p);
  if (!r) raise(r);
  r = gn::parse_activation(activation, nullptr);
  if (!r) raise(r);
}

int activation_code(const char* name) {
  gn::Activation a;
  const gn::Result r = gn::parse_activation(name, &a);
  if (!r) raise(r);
  return (int)a;
}

// Multi-threaded copy (the memory floor the benchmark compares against).
void parallel_copy(const py::array& dst, const py::array& src, int num_threads) {
  const std::size_t n = (std::size_t)src.nbytes();
  if ((std::size_t)dst.nbytes() != n) throw py::value_error("parallel_copy: sizes differ");
  char* d = static_cast<char*>(const_cast<void*>(dst.data()));
  const char* s = static_cast<const char*>(src.data());
  const int t = num_threads > 0 ? num_threads : gn::get_num_threads();
  py::gil_scoped_release release;
  const std::size_t chunk = ((n + t - 1) / t + 4095) / 4096 * 4096;
#pragma omp parallel for schedule(static, 1) num_threads(t)
  for (int i = 0; i < t; ++i) {
    const std::size_t b = std::min(n, chunk * (std::size_t)i), e = std::min(n, b + chunk);
    if (e > b) std::memcpy(d + b, s + b, e - b);
  }
}


// GPU arrays arrive as raw device pointers (from __cuda_array_interface__,
// read in python/groupnorm/_cuda.py) and run on the caller's stream.
void forward_cuda(std::uintptr_t x, std::int64_t n, std::int64_t c, std::int64_t s, std::int64_t groups,
                  std::uintptr_t weight, std::uintptr_t bias, double eps, bool channels_last, int act, int dtype,
                  int param_dtype, std::uintptr_t y, std::uintptr_t mean, std::uintptr_t rstd, std::uintptr_t skip,
                  std::uintptr_t skip_bias, std::uintptr_t sum_out, std::uintptr_t stream) {
  gn::Problem p;
  p.batch = n; p.channels = c; p.spatial = s; p.groups = groups; p.channels_last = channels_last; p.eps = eps;
  p.activation = (gn::Activation)act; p.dtype = (gn::DType)dtype; p.param_dtype = (gn::DType)param_dtype;
  gn::ForwardArgs a;
  a.x = (const void*)x; a.weight = (const void*)weight; a.bias = (const void*)bias;
  a.skip = (const void*)skip; a.skip_bias = (const void*)skip_bias;
  a.y = (void*)y; a.sum_out = (void*)sum_out; a.mean = (void*)mean; a.rstd = (void*)rstd;
  gn::Result r;
  {
    py::gil_scoped_release release;
    r = gn::cuda::forward(p, a, (gn::cuda::Stream)stream);
  }
  if (!r) raise(r);
}

void backward_cuda(std::uintptr_t grad_y, std::uintptr_t x, std::uintptr_t mean, std::uintptr_t rstd, std::int64_t n,
                   std::int64_t c, std::int64_t s, std::int64_t groups, std::uintptr_t weight, std::uintptr_t bias,
                   bool channels_last, int act, int dtype, int param_dtype, std::uintptr_t grad_x,
                   std::uintptr_t grad_weight, std::uintptr_t grad_bias, std::uintptr_t stream) {
  gn::Problem p;
  p.batch = n; p.channels = c; p.spatial = s; p.groups = groups; p.channels_last = channels_last; p.eps = 0.0;
  p.activation = (gn::Activation)act; p.dtype = (gn::DType)dtype; p.param_dtype = (gn::DType)param_dtype;
  gn::BackwardArgs a;
  a.grad_y = (const void*)grad_y; a.x = (const void*)x; a.mean = (const void*)mean; a.rstd = (const void*)rstd;
  a.weight = (const void*)weight; a.bias = (const void*)bias;
  a.grad_x = (void*)grad_x; a.grad_weight = (void*)grad_weight; a.grad_bias = (void*)grad_bias;
  gn::Result r;
  {
    py::gil_scoped_release release;
    r = gn::cuda::backward(p, a, (gn::cuda::Stream)stream);
  }
  if (!r) raise(r);
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "groupnorm C++ core (use the groupnorm package, not this module)";
  m.def("forward", &forward);
  m.def("backward", &backward);
  m.def("check", &check, py::arg("channels"), py::arg("groups"), py::arg("eps"), py::arg("activation"));
  m.def("activation_code", [](py::object name) {
    if (name.is_none()) return 0;
    return activation_code(py::str(name).cast<std::string>().c_str());
  });
  m.def("set_num_threads", &gn::set_num_threads);
  m.def("get_num_threads", &gn::get_num_threads);
  m.def("active_isa", &gn::active_isa);
  m.def("available_isas", &gn::available_isas);
  m.def("set_isa", [](const std::string& name) { return gn::set_isa(name.c_str()); });
  m.def("parallel_copy", &parallel_copy, py::arg("dst"), py::arg("src"), py::arg("num_threads") = 0);
  m.def("forward_cuda", &forward_cuda);
  m.def("backward_cuda", &backward_cuda);
#if defined(GROUPNORM_WITH_CUDA)
  m.attr("HAS_CUDA") = true;
#else
  m.attr("HAS_CUDA") = false;
#endif
  m.def("cuda_available", &gn::cuda::available);
  m.attr("FLOAT32") = (int)gn::DType::float32;
  m.attr("FLOAT64") = (int)gn::DType::float64;
  m.attr("FLOAT16") = (int)gn::DType::float16;
  m.attr("BFLOAT16") = (int)gn::DType::bfloat16;
}
