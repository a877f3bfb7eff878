// For the benchmarks only (bench/, python -m groupnorm): the memory floor that
// group normalization is compared against, a multi-threaded copy, and the
// floor of a pass that only reads (bench/explain.py: the moments, the
// backward's sums) or reads more than it copies (dx: x, grad_y -> grad_x).
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

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

// The bytes [b, e) of p folded into a word, eight independent lanes so that
// the loads, not the xor chain, set the pace.
#if defined(__GNUC__)
#define GN_BENCH_INLINE inline __attribute__((always_inline))
#else
#define GN_BENCH_INLINE inline
#endif
GN_BENCH_INLINE std::uint64_t read_words(const char* p, std::size_t b, std::size_t e) {
  std::uint64_t lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  std::size_t i = b;
  for (; i + 64 <= e; i += 64)
    for (int k = 0; k < 8; ++k) {
      std::uint64_t v;
      std::memcpy(&v, p + i + 8 * k, 8);
      lane[k] ^= v;
    }
  for (; i < e; ++i) lane[0] ^= (unsigned char)p[i];
  std::uint64_t r = 0;
  for (int k = 0; k < 8; ++k) r ^= lane[k];
  return r;
}
#if defined(__x86_64__) && defined(__GNUC__)
// The same loop with 256-bit loads where the CPU has them: the module is built
// for baseline x86-64, whose 128-bit loads cannot keep up with L1 or L2.
__attribute__((target("avx2"))) std::uint64_t read_words_avx2(const char* p, std::size_t b, std::size_t e) {
  return read_words(p, b, e);
}
std::uint64_t (*const g_read_words)(const char*, std::size_t, std::size_t) =
    __builtin_cpu_supports("avx2") ? read_words_avx2 : [](const char* p, std::size_t b, std::size_t e) {
      return read_words(p, b, e);
    };
#else
std::uint64_t (*const g_read_words)(const char*, std::size_t, std::size_t) =
    [](const char* p, std::size_t b, std::size_t e) { return read_words(p, b, e); };
#endif

// Every byte of each of srcs (all of one size) read once; with dst, srcs[0]
// is also copied into dst. Each thread takes one range of pages of every
// array, a block at a time, so the streams interleave as in a kernel's pass.
// Returns the xor of the 8-byte words of the arrays read (all but a copied
// srcs[0]), so that the reads cannot be left out.
std::uint64_t parallel_read(const py::sequence& srcs, int num_threads, const py::object& dst_obj) {
  std::vector<py::array> arrays;  // held: their buffers stay alive while the GIL is released
  for (const auto& a : srcs) arrays.push_back(a.cast<py::array>());
  if (arrays.empty()) throw py::value_error("parallel_read: no arrays");
  const std::size_t n = (std::size_t)arrays[0].nbytes();
  std::vector<const char*> s;
  for (const auto& a : arrays) {
    if ((std::size_t)a.nbytes() != n) throw py::value_error("parallel_read: sizes differ");
    s.push_back(static_cast<const char*>(a.data()));
  }
  char* d = nullptr;
  py::array dst;
  if (!dst_obj.is_none()) {
    dst = dst_obj.cast<py::array>();
    if ((std::size_t)dst.nbytes() != n) throw py::value_error("parallel_read: sizes differ");
    d = static_cast<char*>(const_cast<void*>(dst.data()));
  }
  const int t = num_threads > 0 ? std::min(num_threads, gn::max_threads()) : gn::get_num_threads();
  GilRelease release;
  const std::size_t part = ((n + t - 1) / t + 4095) / 4096 * 4096;  // bytes per thread, whole pages
  constexpr std::size_t kBlock = 64 << 10;
  std::uint64_t folded = 0;
#pragma omp parallel for schedule(static, 1) num_threads(t) reduction(^ : folded)
  for (int i = 0; i < t; ++i) {
    const std::size_t b = std::min(n, part * (std::size_t)i), e = std::min(n, b + part);
    for (std::size_t k = b; k < e; k += kBlock) {
      const std::size_t ke = std::min(e, k + kBlock);
      std::size_t a = 0;
      if (d) { std::memcpy(d + k, s[0] + k, ke - k); a = 1; }
      for (; a < s.size(); ++a) folded ^= g_read_words(s[a], k, ke);
    }
  }
  return folded;
}

}  // namespace

void def_bench(py::module_& m) {
  m.def("parallel_copy", &parallel_copy, py::arg("dst"), py::arg("src"), py::arg("num_threads") = 0);
  m.def("parallel_read", &parallel_read, py::arg("srcs"), py::arg("num_threads") = 0, py::arg("dst") = py::none());
}

}  // namespace groupnorm_py
