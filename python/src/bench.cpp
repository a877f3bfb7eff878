// For the benchmarks only (bench/, python -m groupnorm): the memory floor that
// group normalization is compared against, a multi-threaded copy.
#include <algorithm>
#include <cstring>

#include "core_call.hpp"

namespace groupnorm_py {

namespace {

void parallel_copy(const py::array& dst, const py::array& src, int num_threads) {
  const std::size_t n = (std::size_t)src.nbytes();
  if ((std::size_t)dst.nbytes() != n) throw py::value_error("parallel_copy: sizes differ");
  char* d = static_cast<char*>(const_cast<void*>(dst.data()));
  const char* s = static_cast<const char*>(src.data());
  const int t = num_threads > 0 ? std::min(num_threads, gn::max_threads()) : gn::get_num_threads();
  GilRelease release;
  const std::size_t part = ((n + t - 1) / t + 4095) / 4096 * 4096;  // bytes per thread, whole pages
#pragma omp parallel for schedule(static, 1) num_threads(t)
  for (int i = 0; i < t; ++i) {
    const std::size_t b = std::min(n, part * (std::size_t)i), e = std::min(n, b + part);
    if (e > b) std::memcpy(d + b, s + b, e - b);
  }
}

}  // namespace

void def_bench(py::module_& m) {
  m.def("parallel_copy", &parallel_copy, py::arg("dst"), py::arg("src"), py::arg("num_threads") = 0);
}

}  // namespace groupnorm_py
