// The thin pybind11 layer: NumPy buffers in, the C++ API called with the GIL
// released. Argument checks on arrays (shapes, dtypes, contiguity) happen in
// python/groupnorm/_checks.py; the problem rules live in the C++ core.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <vector>
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

// Runs the core's forward or backward with the GIL released; raises its error.
template <class Args>
void run_core(gn::Result (*fn)(const gn::Problem&, const Args&, const gn::Exec&), const gn::Problem& p,
              const Args& a, int num_threads) {
  gn::Exec e;
  e.num_threads = num_threads;
  gn::Result r;
  {
    py::gil_scoped_release release;
    r = fn(p, a, e);
  }
  if (!r) raise(r);
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
  run_core<gn::ForwardArgs>(&gn::forward, p, a, num_threads);
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
  run_core<gn::BackwardArgs>(&gn::backward, p, a, num_threads);
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

// ---------------------------------------------------------------- fast path
// group_norm's common call (NumPy arrays already in canonical form) costs a few
// microseconds of Python checks on a small tensor. forward_fast recognizes that
// form here and runs the kernel; for anything else it returns None without
// doing anything, and the Python layer takes its checked path, which names the
// problem. It never decides what is an error: the core's rules (groups, eps)
// reach the caller the same way on both paths.
int g_bfloat16_num = -1;  // ml_dtypes' bfloat16 type number, set at import

// NumPy's byte-order character of non-native data on this machine
const char kSwappedOrder = [] {
  const std::uint16_t probe = 1;
  return *reinterpret_cast<const unsigned char*>(&probe) == 1 ? '>' : '<';
}();

// core dtype code of a NumPy type number, or -1
int dtype_code(int type_num) {
  switch (type_num) {
    case 11: return (int)gn::DType::float32;  // NPY_FLOAT
    case 12: return (int)gn::DType::float64;  // NPY_DOUBLE
    case 23: return (int)gn::DType::float16;  // NPY_HALF
    default: return type_num == g_bfloat16_num && type_num >= 0 ? (int)gn::DType::bfloat16 : -1;
  }
}

struct ArrayView {
  int ndim = 0, type_num = -1, flags = 0;
  const py::ssize_t* shape = nullptr;
  void* data = nullptr;
  bool ok = false;  // a NumPy array
};
ArrayView view(py::handle h) {
  ArrayView v;
  if (!h || !py::isinstance<py::array>(h)) return v;
  auto* p = py::detail::array_proxy(h.ptr());
  v.ndim = p->nd;
  v.shape = p->dimensions;
  v.data = p->data;
  v.flags = p->flags;
  const auto* d = py::detail::array_descriptor_proxy(p->descr);
  v.type_num = d->type_num;
  // byte-swapped data has the same type number: not for the fast path
  if (d->byteorder == kSwappedOrder) v.type_num = -1;
  v.ok = true;
  return v;
}
constexpr int kCContiguous = py::detail::npy_api::NPY_ARRAY_C_CONTIGUOUS_;
constexpr int kWriteable = py::detail::npy_api::NPY_ARRAY_WRITEABLE_;

// weight/bias: None, or a C-contiguous (C,) array; returns false when not canonical
bool param_view(py::handle h, std::int64_t channels, ArrayView* v) {
  if (h.is_none()) return true;
  *v = view(h);
  return v->ok && v->ndim == 1 && v->shape[0] == channels && (v->flags & kCContiguous);
}

// A new C-contiguous array whose data starts on a 64-byte boundary. NumPy
// aligns to 16 bytes; the kernels write whole 64-byte lines (streamed when
// large), and a misaligned output costs a partial line at every row edge
// (1.7x instead of 1.2x a copy on channels-last resnet_gn). The Python layer
// allocates its outputs with this too (_checks.empty_aligned).
py::array empty_aligned(const py::dtype& dt, const std::vector<py::ssize_t>& shape) {
  py::ssize_t n = 1;
  for (py::ssize_t d : shape) n *= d;
  const py::ssize_t bytes = n * (py::ssize_t)dt.itemsize();
  py::array_t<std::uint8_t> buf(bytes + 64);
  const std::uintptr_t addr = reinterpret_cast<std::uintptr_t>(buf.data());
  char* start = reinterpret_cast<char*>(buf.mutable_data()) + (64 - addr % 64) % 64;
  std::vector<py::ssize_t> strides(shape.size());
  py::ssize_t st = dt.itemsize();
  for (std::size_t i = shape.size(); i-- > 0;) {
    strides[i] = st;
    st *= shape[i];
  }
  return py::array(dt, shape, strides, start, buf);
}

py::object forward_fast(py::handle x, std::int64_t groups, py::handle weight, py::handle bias, double eps,
                        bool channels_last, int act, py::handle out, int num_threads) {
  const ArrayView xv = view(x);
  if (!xv.ok || xv.ndim < 2 || !(xv.flags & kCContiguous)) return py::none();
  const int dt = dtype_code(xv.type_num);
  if (dt < 0) return py::none();
  const std::int64_t channels = channels_last ? xv.shape[xv.ndim - 1] : xv.shape[1];
  ArrayView wv, bv;
  if (!param_view(weight, channels, &wv) || !param_view(bias, channels, &bv)) return py::none();
  // parameters: both x's dtype or both float32 (or absent)
  int pt = -1;
  for (const ArrayView* p : {&wv, &bv}) {
    if (!p->ok) continue;
    if (p->type_num != xv.type_num && dtype_code(p->type_num) != (int)gn::DType::float32) return py::none();
    if (pt >= 0 && pt != p->type_num) return py::none();
    pt = p->type_num;
  }
  const int pcode = pt >= 0 ? dtype_code(pt) : (dt == (int)gn::DType::float64 ? dt : (int)gn::DType::float32);
  py::object y;
  if (out.is_none()) {
    y = empty_aligned(py::reinterpret_borrow<py::array>(x).dtype(),
                      std::vector<py::ssize_t>(xv.shape, xv.shape + xv.ndim));
  } else {
    const ArrayView ov = view(out);
    if (!ov.ok || ov.ndim != xv.ndim || ov.type_num != xv.type_num || !(ov.flags & kCContiguous) ||
        !(ov.flags & kWriteable) || !std::equal(xv.shape, xv.shape + xv.ndim, ov.shape))
      return py::none();
    y = py::reinterpret_borrow<py::object>(out);
  }
  const auto arr = py::reinterpret_borrow<py::array>(x);
  const gn::Problem p = problem(arr, groups, eps, channels_last, act, dt, pcode);
  gn::ForwardArgs a;
  a.x = xv.data;
  a.weight = wv.ok ? wv.data : nullptr;
  a.bias = bv.ok ? bv.data : nullptr;
  a.y = view(y).data;
  run_core<gn::ForwardArgs>(&gn::forward, p, a, num_threads);
  return y;
}

// Multi-threaded copy (the memory floor the benchmark compares against).
void parallel_copy(const py::array& dst, const py::array& src, int num_threads) {
  const std::size_t n = (std::size_t)src.nbytes();
  if ((std::size_t)dst.nbytes() != n) throw py::value_error("parallel_copy: sizes differ");
  char* d = static_cast<char*>(const_cast<void*>(dst.data()));
  const char* s = static_cast<const char*>(src.data());
  const int t = num_threads > 0 ? std::min(num_threads, gn::max_threads()) : gn::get_num_threads();
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
  m.def("forward_fast", &forward_fast);
  m.def("set_bfloat16_num", [](int num) { g_bfloat16_num = num; });
  m.def("empty_aligned", [](const py::tuple& shape, const py::dtype& dt) {
    std::vector<py::ssize_t> dims;
    for (py::handle d : shape) dims.push_back(d.cast<py::ssize_t>());
    return empty_aligned(dt, dims);
  });
  m.def("backward", &backward);
  m.def("check", &check, py::arg("channels"), py::arg("groups"), py::arg("eps"), py::arg("activation"));
  m.def("activation_code", [](py::object name) {
    if (name.is_none()) return 0;
    return activation_code(py::str(name).cast<std::string>().c_str());
  });
  m.def("set_num_threads", &gn::set_num_threads);
  m.def("get_num_threads", &gn::get_num_threads);
  m.def("max_threads", &gn::max_threads);
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
