// The pybind11 module: NumPy buffers in, the C++ API called with the GIL
// released. The Python layer (python/groupnorm/_checks.py) checks the arrays
// (types, shapes, dtypes, contiguity, writability) and converts them; the
// problem's rules (groups, eps, activation, dtypes, sizes, overlaps) are the
// core's validate(), reached through every entry point here (check() asks it
// before anything is allocated). One exception: forward_fast recognizes the
// common call's canonical arrays itself and declines anything else.
//
// Every function takes keyword arguments (the names below). The shared
// plumbing is core_call.hpp; the output-buffer cache is buffer_cache.cpp, the
// CUDA entry points cuda.cpp, the benchmark's copy bench.cpp.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "buffer_cache.hpp"
#include "core_call.hpp"
#include "groupnorm/groupnorm.h"
#include "groupnorm/groupnorm.hpp"

namespace groupnorm_py {
namespace {

// ---------------------------------------------------------------- checked calls
// Arrays arrive checked (shapes, dtypes, contiguity, writability) by the Python layer.
void forward(const py::array& x, std::int64_t groups, const py::object& weight, const py::object& bias, double eps,
             bool channels_last, int activation, int dtype, int param_dtype, const py::array& y,
             const py::object& mean, const py::object& rstd, const py::object& skip, const py::object& skip_bias,
             const py::object& sum_out, int num_threads) {
  const gn::Problem p = problem(x, groups, eps, channels_last, activation, dtype, param_dtype);
  const gn::ForwardArgs a = forward_args(data(x), data(weight), data(bias), data(skip), data(skip_bias), data(y),
                                         data(sum_out), data(mean), data(rstd));
  run_released([&] { return gn::forward(p, a, exec(num_threads)); });
}

void backward(const py::array& grad_y, const py::array& x, const py::array& mean, const py::array& rstd,
              std::int64_t groups, const py::object& weight, const py::object& bias, bool channels_last,
              int activation, int dtype, int param_dtype, const py::object& grad_x, const py::object& grad_weight,
              const py::object& grad_bias, int num_threads) {
  const gn::Problem p = problem(x, groups, 0.0, channels_last, activation, dtype, param_dtype);
  const gn::BackwardArgs a = backward_args(data(grad_y), data(x), data(mean), data(rstd), data(weight), data(bias),
                                           data(grad_x), data(grad_weight), data(grad_bias));
  run_released([&] { return gn::backward(p, a, exec(num_threads)); });
}

// The core's rules on the scalars (groups divides channels, eps), before anything is allocated.
void check(std::int64_t channels, std::int64_t groups, double eps) {
  gn::Problem p;
  p.channels = channels;
  p.groups = groups;
  p.eps = eps;
  const gn::Result r = gn::validate(p);
  if (!r) raise(r);
}

int activation_code(const py::object& name) {
  if (name.is_none()) return (int)gn::Activation::none;
  gn::Activation a;
  const gn::Result r = gn::parse_activation(py::str(name).cast<std::string>().c_str(), &a);
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

py::object forward_fast(py::handle x, std::int64_t groups, py::handle weight, py::handle bias, double eps,
                        bool channels_last, int activation, py::handle out, int num_threads) {
  const ArrayView xv = view(x);
  if (!xv.ok || xv.ndim < 2 || !(xv.flags & kCContiguous)) return py::none();
  const int dt = dtype_code(xv.type_num);
  if (dt < 0) return py::none();
  const Geometry g = geometry(xv.shape, xv.ndim, channels_last);
  ArrayView wv, bv;
  if (!param_view(weight, g.c, &wv) || !param_view(bias, g.c, &bv)) return py::none();
  // parameters already in the core's dtype for them (param_dtype_for), or not this path
  gn::DType present[2];
  int n_present = 0;
  for (const ArrayView* p : {&wv, &bv}) {
    if (!p->ok) continue;
    const int code = dtype_code(p->type_num);
    if (code < 0) return py::none();
    present[n_present++] = (gn::DType)code;
  }
  const gn::DType param_dtype = gn::param_dtype_for((gn::DType)dt, present, n_present);
  for (int i = 0; i < n_present; ++i)
    if (present[i] != param_dtype) return py::none();
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
  const gn::Problem p = problem(g.n, g.c, g.s, groups, eps, channels_last, activation, dt, (int)param_dtype);
  const gn::ForwardArgs a = forward_args(xv.data, wv.ok ? wv.data : nullptr, bv.ok ? bv.data : nullptr, nullptr,
                                         nullptr, view(y).data, nullptr, nullptr, nullptr);
  run_released([&] { return gn::forward(p, a, exec(num_threads)); });
  return y;
}


// ---------------------------------------------------------------- split phase
// Arrays arrive checked (shapes, dtypes, contiguity) by python/groupnorm/split.py.
template <class T>
T* typed(const py::handle& a) {
  return static_cast<T*>(data(a));
}

void moments(const py::array& x, std::int64_t groups, bool channels_last, int dtype, int param_dtype,
             const py::object& skip, const py::object& skip_bias, const py::array& count, const py::array& mean,
             const py::array& m2, int num_threads) {
  const gn::Problem p = problem(x, groups, 0.0, channels_last, 0, dtype, param_dtype);
  gn::MomentsArgs a;
  a.x = data(x);
  a.skip = data(skip);
  a.skip_bias = data(skip_bias);
  a.count = typed<std::int64_t>(count);
  a.mean = typed<double>(mean);
  a.m2 = typed<double>(m2);
  run_released([&] { return gn::moments(p, a, exec(num_threads)); });
}

// parts: a list of tuples of `k` arrays (the same number of entries each);
// column j of every part, in list order, as pointers (the arrays are kept alive in `keep`)
template <class T>
std::vector<const T*> column(const py::list& parts, int j, std::vector<py::array>* keep) {
  std::vector<const T*> out;
  for (py::handle h : parts) {
    keep->push_back(py::reinterpret_borrow<py::tuple>(h)[j].cast<py::array>());
    out.push_back(static_cast<const T*>(keep->back().data()));
  }
  return out;
}

// parts: a list of (count, mean, m2) arrays of `size` entries, merged in list order
void merge_moments(const py::list& parts, const py::array& count, const py::array& mean, const py::array& m2) {
  std::vector<py::array> keep;
  const auto c = column<std::int64_t>(parts, 0, &keep);
  const auto m = column<double>(parts, 1, &keep);
  const auto q = column<double>(parts, 2, &keep);
  std::int64_t* count_out = typed<std::int64_t>(count);
  double* mean_out = typed<double>(mean);
  double* m2_out = typed<double>(m2);
  run_released([&] {
    return gn::merge_moments((std::int64_t)count.size(), (std::int64_t)c.size(), c.data(), m.data(), q.data(),
                             count_out, mean_out, m2_out);
  });
}

void mean_rstd(const py::array& count, const py::array& mean, const py::array& m2, double eps, int dtype,
               const py::array& mean_out, const py::array& rstd_out) {
  const gn::Result r = gn::mean_rstd((std::int64_t)count.size(), typed<const std::int64_t>(count),
                                     typed<const double>(mean), typed<const double>(m2), eps, (gn::DType)dtype,
                                     data(mean_out), data(rstd_out));
  if (!r) raise(r);
}

// forward with given statistics: moments (count, gmean, gm2) or (smean, srstd)
void forward_given(const py::array& x, std::int64_t groups, const py::object& weight, const py::object& bias,
                   double eps, bool channels_last, int activation, int dtype, int param_dtype, const py::array& y,
                   const py::object& mean, const py::object& rstd, const py::object& skip,
                   const py::object& skip_bias, const py::object& sum_out, const py::object& count,
                   const py::object& gmean, const py::object& gm2, const py::object& smean,
                   const py::object& srstd, int num_threads) {
  const gn::Problem p = problem(x, groups, eps, channels_last, activation, dtype, param_dtype);
  const gn::ForwardArgs a = forward_args(data(x), data(weight), data(bias), data(skip), data(skip_bias), data(y),
                                         data(sum_out), data(mean), data(rstd));
  gn::GivenStats g;
  g.count = typed<const std::int64_t>(count);
  g.mean = typed<const double>(gmean);
  g.m2 = typed<const double>(gm2);
  g.stats_mean = data(smean);
  g.stats_rstd = data(srstd);
  run_released([&] { return gn::forward(p, a, g, exec(num_threads)); });
}

void backward_sums(const py::array& grad_y, const py::array& x, const py::array& mean, const py::array& rstd,
                   std::int64_t groups, const py::object& weight, const py::object& bias, bool channels_last,
                   int activation, int dtype, int param_dtype, const py::array& sum_dz, const py::array& sum_dz_xc,
                   int num_threads) {
  const gn::Problem p = problem(x, groups, 0.0, channels_last, activation, dtype, param_dtype);
  const gn::BackwardArgs a = backward_args(data(grad_y), data(x), data(mean), data(rstd), data(weight), data(bias),
                                           nullptr, nullptr, nullptr);
  double* dz = typed<double>(sum_dz);
  double* dz_xc = typed<double>(sum_dz_xc);
  run_released([&] { return gn::backward_sums(p, a, dz, dz_xc, exec(num_threads)); });
}

// parts: a list of (sum_dz, sum_dz_xc) arrays, added in list order
void merge_backward_sums(const py::list& parts, const py::array& sum_dz, const py::array& sum_dz_xc) {
  std::vector<py::array> keep;
  const auto d = column<double>(parts, 0, &keep);
  const auto q = column<double>(parts, 1, &keep);
  const gn::Result r = gn::merge_backward_sums((std::int64_t)sum_dz.size(), (std::int64_t)d.size(), d.data(),
                                               q.data(), typed<double>(sum_dz), typed<double>(sum_dz_xc));
  if (!r) raise(r);
}

void backward_given(const py::array& grad_y, const py::array& x, const py::array& mean, const py::array& rstd,
                    std::int64_t groups, const py::object& weight, const py::object& bias, bool channels_last,
                    int activation, int dtype, int param_dtype, const py::object& grad_x,
                    const py::object& grad_weight, const py::object& grad_bias, const py::array& sum_dz,
                    const py::array& sum_dz_xc, std::int64_t total_spatial, int num_threads) {
  const gn::Problem p = problem(x, groups, 0.0, channels_last, activation, dtype, param_dtype);
  const gn::BackwardArgs a = backward_args(data(grad_y), data(x), data(mean), data(rstd), data(weight), data(bias),
                                           data(grad_x), data(grad_weight), data(grad_bias));
  const double* dz = typed<const double>(sum_dz);
  const double* dz_xc = typed<const double>(sum_dz_xc);
  run_released([&] { return gn::backward(p, a, dz, dz_xc, total_spatial, exec(num_threads)); });
}

}  // namespace

// ---------------------------------------------------------------- the module
// keyword names shared by several functions
#define GN_PROBLEM_ARGS py::arg("channels_last"), py::arg("activation"), py::arg("dtype"), py::arg("param_dtype")

void def_module(py::module_& m) {
  const py::none none;
  m.def("forward", &forward, py::arg("x"), py::arg("groups"), py::arg("weight"), py::arg("bias"), py::arg("eps"),
        GN_PROBLEM_ARGS, py::arg("y"), py::arg("mean") = none, py::arg("rstd") = none, py::arg("skip") = none,
        py::arg("skip_bias") = none, py::arg("sum_out") = none, py::arg("num_threads") = 0);
  m.def("forward_given", &forward_given, py::arg("x"), py::arg("groups"), py::arg("weight"), py::arg("bias"),
        py::arg("eps"), GN_PROBLEM_ARGS, py::arg("y"), py::arg("mean") = none, py::arg("rstd") = none,
        py::arg("skip") = none, py::arg("skip_bias") = none, py::arg("sum_out") = none, py::arg("count") = none,
        py::arg("gmean") = none, py::arg("gm2") = none, py::arg("smean") = none, py::arg("srstd") = none,
        py::arg("num_threads") = 0);
  m.def("forward_fast", &forward_fast, py::arg("x"), py::arg("groups"), py::arg("weight"), py::arg("bias"),
        py::arg("eps"), py::arg("channels_last"), py::arg("activation"), py::arg("out"), py::arg("num_threads"));
  m.def("backward", &backward, py::arg("grad_y"), py::arg("x"), py::arg("mean"), py::arg("rstd"), py::arg("groups"),
        py::arg("weight"), py::arg("bias"), GN_PROBLEM_ARGS, py::arg("grad_x"), py::arg("grad_weight"),
        py::arg("grad_bias"), py::arg("num_threads") = 0);
  m.def("backward_given", &backward_given, py::arg("grad_y"), py::arg("x"), py::arg("mean"), py::arg("rstd"),
        py::arg("groups"), py::arg("weight"), py::arg("bias"), GN_PROBLEM_ARGS, py::arg("grad_x"),
        py::arg("grad_weight"), py::arg("grad_bias"), py::arg("sum_dz"), py::arg("sum_dz_xc"),
        py::arg("total_spatial"), py::arg("num_threads") = 0);
  m.def("moments", &moments, py::arg("x"), py::arg("groups"), py::arg("channels_last"), py::arg("dtype"),
        py::arg("param_dtype"), py::arg("skip"), py::arg("skip_bias"), py::arg("count"), py::arg("mean"),
        py::arg("m2"), py::arg("num_threads") = 0);
  m.def("merge_moments", &merge_moments, py::arg("parts"), py::arg("count"), py::arg("mean"), py::arg("m2"));
  m.def("mean_rstd", &mean_rstd, py::arg("count"), py::arg("mean"), py::arg("m2"), py::arg("eps"), py::arg("dtype"),
        py::arg("mean_out"), py::arg("rstd_out"));
  m.def("backward_sums", &backward_sums, py::arg("grad_y"), py::arg("x"), py::arg("mean"), py::arg("rstd"),
        py::arg("groups"), py::arg("weight"), py::arg("bias"), GN_PROBLEM_ARGS, py::arg("sum_dz"),
        py::arg("sum_dz_xc"), py::arg("num_threads") = 0);
  m.def("merge_backward_sums", &merge_backward_sums, py::arg("parts"), py::arg("sum_dz"), py::arg("sum_dz_xc"));
  m.def("check", &check, py::arg("channels"), py::arg("groups"), py::arg("eps"));
  m.def("activation_code", &activation_code, py::arg("name"));

  // the dtype rules, asked for by _checks.py instead of restated there
  m.def("stats_dtype", [](int code) { return (int)gn::stats_dtype((gn::DType)code); }, py::arg("dtype"));
  m.def("param_dtype", [](int x_code, const std::vector<int>& present) {
    std::vector<gn::DType> d;
    for (int c : present) d.push_back((gn::DType)c);
    return (int)gn::param_dtype_for((gn::DType)x_code, d.data(), (int)d.size());
  }, py::arg("dtype"), py::arg("present"));
  m.attr("FLOAT32") = (int)gn::DType::float32;
  m.attr("FLOAT64") = (int)gn::DType::float64;
  m.attr("FLOAT16") = (int)gn::DType::float16;
  m.attr("BFLOAT16") = (int)gn::DType::bfloat16;
  m.def("set_bfloat16_num", [](int num) { g_bfloat16_num = num; }, py::arg("num"));

  m.def("set_num_threads", &gn::set_num_threads, py::arg("num_threads"));
  m.def("get_num_threads", &gn::get_num_threads);
  m.def("set_worker_pool", &gn::set_worker_pool, py::arg("on"));
  m.def("worker_pool", &gn::worker_pool);
  m.def("max_threads", &gn::max_threads);
  // how this thread's last CPU call was scheduled: (schedule, threads, streaming stores), for tests
  m.def("last_schedule", [] {
    const gn::ScheduleInfo s = gn::last_schedule();
    return py::make_tuple(gn::schedule_name(s.schedule), s.threads, s.streaming_stores);
  });
  m.def("cache_sizes", [] {
    const gn::CacheSizes c = gn::cache_sizes();
    py::dict d;
    d["l1d"] = c.l1d; d["l1d_source"] = c.l1d_source;
    d["l2"] = c.l2; d["l2_source"] = c.l2_source;
    d["l3"] = c.l3; d["l3_source"] = c.l3_source;
    d["forced_budget"] = c.forced_budget;
    return d;
  });
  m.def("cache_budget", &gn::cache_budget, py::arg("num_threads"));
  m.def("active_isa", &gn::active_isa);
  m.def("available_isas", &gn::available_isas);
  m.def("set_isa", [](const std::string& name) { return gn::set_isa(name.c_str()); }, py::arg("name"));
}
#undef GN_PROBLEM_ARGS

}  // namespace groupnorm_py

PYBIND11_MODULE(_core, m) {
  m.doc() = "groupnorm C++ core (use the groupnorm package, not this module)";
  m.attr("VERSION") = groupnorm_version();  // CMake's project version, read from pyproject.toml
  groupnorm_py::def_module(m);
  groupnorm_py::def_buffer_cache(m);
  groupnorm_py::def_cuda(m);
  groupnorm_py::def_bench(m);
}
