// The thin pybind11 layer: NumPy buffers in, the C++ API called with the GIL
// released. Argument checks on arrays (shapes, dtypes, contiguity) happen in
// python/groupnorm/_checks.py; the problem rules live in the C++ core.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <vector>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>
#include <cctype>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include "groupnorm/cuda.hpp"
#include "groupnorm/groupnorm.h"
#include "groupnorm/groupnorm.hpp"

namespace py = pybind11;
namespace gn = groupnorm;

namespace {

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
  if (r.status == gn::Status::device_error || r.status == gn::Status::internal_error)
    throw std::runtime_error(r.message);
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

// Runs a call of the core with the GIL released; raises its error.
template <class Call>
void run_released(int num_threads, Call call) {
  gn::Exec e;
  e.num_threads = num_threads;
  gn::Result r;
  {
    GilRelease release;
    r = call(e);
  }
  if (!r) raise(r);
}

template <class Args>
void run_core(gn::Result (*fn)(const gn::Problem&, const Args&, const gn::Exec&), const gn::Problem& p,
              const Args& a, int num_threads) {
  run_released(num_threads, [&](const gn::Exec& e) { return fn(p, a, e); });
}

// The pointers of a forward call (writability of the outputs is checked in Python).
gn::ForwardArgs forward_args(const py::array& x, const py::object& weight, const py::object& bias,
                             const py::object& skip, const py::object& skip_bias, const py::array& y,
                             const py::object& sum_out, const py::object& mean, const py::object& rstd) {
  gn::ForwardArgs a;
  a.x = x.data();
  a.weight = cdata(weight);
  a.bias = cdata(bias);
  a.skip = cdata(skip);
  a.skip_bias = cdata(skip_bias);
  a.y = const_cast<void*>(y.data());
  a.sum_out = mdata(sum_out);
  a.mean = mdata(mean);
  a.rstd = mdata(rstd);
  return a;
}

// The inputs of a backward call; the caller adds the outputs it has.
gn::BackwardArgs backward_args(const py::array& grad_y, const py::array& x, const py::array& mean,
                               const py::array& rstd, const py::object& weight, const py::object& bias) {
  gn::BackwardArgs a;
  a.grad_y = grad_y.data();
  a.x = x.data();
  a.mean = mean.data();
  a.rstd = rstd.data();
  a.weight = cdata(weight);
  a.bias = cdata(bias);
  return a;
}

void forward(const py::array& x, std::int64_t groups, const py::object& weight, const py::object& bias, double eps,
             bool channels_last, int act, int dtype, int param_dtype, const py::array& y, const py::object& mean,
             const py::object& rstd, const py::object& skip, const py::object& skip_bias, const py::object& sum_out,
             int num_threads) {
  const gn::Problem p = problem(x, groups, eps, channels_last, act, dtype, param_dtype);
  const gn::ForwardArgs a = forward_args(x, weight, bias, skip, skip_bias, y, sum_out, mean, rstd);
  run_core<gn::ForwardArgs>(&gn::forward, p, a, num_threads);
}

void backward(const py::array& grad_y, const py::array& x, const py::array& mean, const py::array& rstd,
              std::int64_t groups, const py::object& weight, const py::object& bias, bool channels_last, int act,
              int dtype, int param_dtype, const py::object& grad_x, const py::object& grad_weight,
              const py::object& grad_bias, int num_threads) {
  const gn::Problem p = problem(x, groups, 0.0, channels_last, act, dtype, param_dtype);
  gn::BackwardArgs a = backward_args(grad_y, x, mean, rstd, weight, bias);
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

// A byte count as written in an environment variable: a non-negative integer
// with an optional suffix, K/M/G/T or KiB/MiB/GiB/TiB (powers of 1024), KB/MB/GB/TB
// (powers of 1000), B; case-insensitive, surrounding blanks allowed. False for
// anything else (a sign, a fraction, an exponent, an overflow, an unknown unit).
bool parse_bytes(const char* text, std::uint64_t* out) {
  std::string s(text);
  const auto blank = [](char ch) { return ch == ' ' || ch == '\t'; };
  while (!s.empty() && blank(s.back())) s.pop_back();
  std::size_t i = 0;
  while (i < s.size() && blank(s[i])) ++i;
  std::uint64_t value = 0;
  const std::size_t digits_from = i;
  for (; i < s.size() && s[i] >= '0' && s[i] <= '9'; ++i) {
    const std::uint64_t d = (std::uint64_t)(s[i] - '0');
    if (value > (UINT64_MAX - d) / 10) return false;
    value = value * 10 + d;
  }
  if (i == digits_from) return false;
  std::string unit;
  for (; i < s.size(); ++i) unit += (char)std::tolower((unsigned char)s[i]);
  static const struct { const char* name; std::uint64_t scale; } units[] = {
      {"", 1}, {"b", 1},
      {"k", 1ull << 10}, {"kib", 1ull << 10}, {"kb", 1000ull},
      {"m", 1ull << 20}, {"mib", 1ull << 20}, {"mb", 1000000ull},
      {"g", 1ull << 30}, {"gib", 1ull << 30}, {"gb", 1000000000ull},
      {"t", 1ull << 40}, {"tib", 1ull << 40}, {"tb", 1000000000000ull}};
  for (const auto& u : units) {
    if (unit != u.name) continue;
    if (value > UINT64_MAX / u.scale) return false;
    *out = value * u.scale;
    return true;
  }
  return false;
}

// ---------------------------------------------------------------- output buffers
// Outputs the library allocates (group_norm(x) without out=, the GroupNorm
// layer, backward's grad_x) come from a cache of blocks rather than fresh
// pages: a fresh multi-megabyte array from the OS costs a page fault and the
// zeroing of every 4 KB page on its first write, 1.5-30x the kernel itself on
// large shapes. When such an array dies (its base object, a capsule, is
// freed), its block goes back to the cache, and the next output of the same or
// a somewhat smaller size (at least half the block) reuses it, pages already
// mapped. The cache holds at most `limit` bytes (default 512 MiB, the
// environment variable GROUPNORM_BUFFER_CACHE_BYTES at import,
// set_buffer_cache_limit()); past it the least recently returned blocks go back
// to the OS, and release_memory() returns them all. Blocks below 64 KiB are not
// cached (malloc reuses those well already). Thread-safe (one mutex; the GIL is
// not relied on).
//
// Locks (a rule for every lock in this library): no Python object is created,
// no Python API called and no callback run while a library lock is held. Any
// Python allocation may run the cyclic GC, whose finalizers may free a
// groupnorm output, whose release (give) takes this very lock: the thread
// would wait on itself. Take the data out under the lock, build Python objects
// after. tests/test_locks.py checks the sources for this.
class BufferCache {
 public:
  static constexpr std::size_t kHeader = 64;        // block header; data starts 64-byte aligned after it
  static constexpr std::size_t kMinCached = 64 << 10;

  static BufferCache& get() {
    static BufferCache* c = new BufferCache();  // never destroyed: arrays may die after static teardown
    return *c;
  }

  // A block with room for `bytes`; returns its data pointer (64-byte aligned).
  void* take(std::size_t bytes) {
    const std::size_t cap = size_class(bytes);
    if (cap >= kMinCached) {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = free_.lower_bound(cap);
      if (it != free_.end() && it->first / 2 <= cap) {  // no more than twice the room asked for
        char* block = it->second.block;
        cached_ -= it->first;
        free_.erase(it);
        ++hits_;
        return block + kHeader;
      }
      ++misses_;
    }
    void* block = nullptr;
    if (posix_memalign(&block, 64, kHeader + cap) != 0 || !block) throw std::bad_alloc();
    std::memcpy(block, &cap, sizeof(cap));
    return static_cast<char*>(block) + kHeader;
  }

  // Gives back a block from take() (its data pointer).
  void give(void* data) {
    char* block = static_cast<char*>(data) - kHeader;
    std::size_t cap;
    std::memcpy(&cap, block, sizeof(cap));
    std::vector<char*> drop;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (cap < kMinCached || cap > limit_) {
        drop.push_back(block);
      } else {
        evict_to(limit_ - cap, drop);
        free_.emplace(cap, Entry{block, ++clock_});
        cached_ += cap;
      }
    }
    for (char* b : drop) std::free(b);
  }

  void set_limit(std::size_t bytes) {
    std::vector<char*> drop;
    {
      std::lock_guard<std::mutex> lock(mu_);
      limit_ = bytes;
      evict_to(limit_, drop);
    }
    for (char* b : drop) std::free(b);
  }

  // Frees every cached block; returns the bytes freed.
  std::size_t release() {
    std::vector<char*> drop;
    std::size_t freed;
    {
      std::lock_guard<std::mutex> lock(mu_);
      freed = cached_;
      evict_to(0, drop);
    }
    for (char* b : drop) std::free(b);
#if defined(__GLIBC__)
    // glibc keeps freed heap memory (and large blocks below its mmap threshold,
    // which it raises as big blocks are freed) mapped for reuse: hand it back
    malloc_trim(0);
#endif
    return freed;
  }

  struct Info {
    std::size_t cached_bytes, cached_blocks, limit_bytes;
    std::uint64_t hits, misses;
  };
  // A snapshot of the counters. The dict is built by the caller after the lock
  // is dropped (see "Locks" above).
  Info info() {
    std::lock_guard<std::mutex> lock(mu_);
    return Info{cached_, free_.size(), limit_, hits_, misses_};
  }

 private:
  struct Entry {
    char* block;
    std::uint64_t stamp;  // when it was returned: the oldest go first
  };

  BufferCache() {
    const char* s = std::getenv("GROUPNORM_BUFFER_CACHE_BYTES");
    if (s && *s) {
      std::uint64_t bytes = 0;
      if (parse_bytes(s, &bytes)) limit_ = (std::size_t)bytes;
      else env_warning_ = std::string("GROUPNORM_BUFFER_CACHE_BYTES='") + s +
                          "' is not a byte count (an integer with an optional K, M, G, KiB, MiB or GiB suffix); "
                          "the default limit of 512 MiB is used";
    }
  }

  // capacities in eighths of an octave (at most 12.5% over the request), so
  // outputs of nearly the same size share blocks
  static std::size_t size_class(std::size_t bytes) {
    if (bytes <= 4096) return 4096;
    std::size_t top = 1;
    while (top <= bytes / 2) top <<= 1;  // the largest power of two <= bytes
    const std::size_t step = top / 8;
    return (bytes + step - 1) / step * step;
  }

  // frees the least recently returned blocks until at most `keep` bytes stay
  void evict_to(std::size_t keep, std::vector<char*>& drop) {
    while (cached_ > keep && !free_.empty()) {
      auto oldest = free_.begin();
      for (auto it = free_.begin(); it != free_.end(); ++it)
        if (it->second.stamp < oldest->second.stamp) oldest = it;
      cached_ -= oldest->first;
      drop.push_back(oldest->second.block);
      free_.erase(oldest);
    }
  }

  std::mutex mu_;
 public:
  std::string env_warning_;  // set once at construction, read at import (then the module warns)
 private:
  std::multimap<std::size_t, Entry> free_;  // capacity -> block
  std::size_t cached_ = 0;
  std::size_t limit_ = (std::size_t)512 << 20;
  std::uint64_t clock_ = 0, hits_ = 0, misses_ = 0;
};

// A new C-contiguous array whose data starts on a 64-byte boundary, from the
// buffer cache. NumPy aligns to 16 bytes; the kernels write whole 64-byte
// lines (streamed when large), and a misaligned output costs a partial line at
// every row edge. The Python layer allocates its outputs with this too
// (_checks.empty_aligned).
py::array empty_aligned(const py::dtype& dt, const std::vector<py::ssize_t>& shape) {
  py::ssize_t n = 1;
  for (py::ssize_t d : shape) n *= d;
  const std::size_t bytes = (std::size_t)n * (std::size_t)dt.itemsize();
  void* data = BufferCache::get().take(bytes);
  py::capsule base(data, [](void* p) { BufferCache::get().give(p); });
  std::vector<py::ssize_t> strides(shape.size());
  py::ssize_t st = dt.itemsize();
  for (std::size_t i = shape.size(); i-- > 0;) {
    strides[i] = st;
    st *= shape[i];
  }
  return py::array(dt, shape, strides, data, base);
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
  GilRelease release;
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
    GilRelease release;
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
    GilRelease release;
    r = gn::cuda::backward(p, a, (gn::cuda::Stream)stream);
  }
  if (!r) raise(r);
}


// ---------------------------------------------------------------- split phase
// Arrays arrive checked (shapes, dtypes, contiguity) by python/groupnorm/split.py.
void moments(const py::array& x, std::int64_t groups, bool channels_last, int dtype, int param_dtype,
             const py::object& skip, const py::object& skip_bias, const py::array& count, const py::array& mean,
             const py::array& m2, int num_threads) {
  const gn::Problem p = problem(x, groups, 0.0, channels_last, 0, dtype, param_dtype);
  gn::MomentsArgs a;
  a.x = x.data();
  a.skip = cdata(skip);
  a.skip_bias = cdata(skip_bias);
  a.count = static_cast<std::int64_t*>(const_cast<void*>(count.data()));
  a.mean = static_cast<double*>(const_cast<void*>(mean.data()));
  a.m2 = static_cast<double*>(const_cast<void*>(m2.data()));
  run_core<gn::MomentsArgs>(&gn::moments, p, a, num_threads);
}

// parts: a list of (count, mean, m2) arrays of `size` entries, merged in list order
void merge_moments(const py::list& parts, const py::array& count, const py::array& mean, const py::array& m2) {
  std::vector<const std::int64_t*> c;
  std::vector<const double*> m, q;
  std::vector<py::array> keep;
  for (py::handle h : parts) {
    const py::tuple t = py::reinterpret_borrow<py::tuple>(h);
    for (int i = 0; i < 3; ++i) keep.push_back(t[i].cast<py::array>());
    c.push_back(static_cast<const std::int64_t*>(keep[keep.size() - 3].data()));
    m.push_back(static_cast<const double*>(keep[keep.size() - 2].data()));
    q.push_back(static_cast<const double*>(keep[keep.size() - 1].data()));
  }
  gn::Result r;
  {
    GilRelease release;
    r = gn::merge_moments((std::int64_t)count.size(), (std::int64_t)c.size(), c.data(), m.data(), q.data(),
                          static_cast<std::int64_t*>(const_cast<void*>(count.data())),
                          static_cast<double*>(const_cast<void*>(mean.data())),
                          static_cast<double*>(const_cast<void*>(m2.data())));
  }
  if (!r) raise(r);
}

void mean_rstd(const py::array& count, const py::array& mean, const py::array& m2, double eps, int dtype,
               const py::array& mean_out, const py::array& rstd_out) {
  const gn::Result r = gn::mean_rstd((std::int64_t)count.size(), static_cast<const std::int64_t*>(count.data()),
                                     static_cast<const double*>(mean.data()), static_cast<const double*>(m2.data()),
                                     eps, (gn::DType)dtype, const_cast<void*>(mean_out.data()),
                                     const_cast<void*>(rstd_out.data()));
  if (!r) raise(r);
}

// forward with given statistics: moments (count, gmean, gm2) or (smean, srstd)
void forward_given(const py::array& x, std::int64_t groups, const py::object& weight, const py::object& bias,
                   double eps, bool channels_last, int act, int dtype, int param_dtype, const py::array& y,
                   const py::object& mean, const py::object& rstd, const py::object& skip,
                   const py::object& skip_bias, const py::object& sum_out, const py::object& count,
                   const py::object& gmean, const py::object& gm2, const py::object& smean,
                   const py::object& srstd, int num_threads) {
  const gn::Problem p = problem(x, groups, eps, channels_last, act, dtype, param_dtype);
  const gn::ForwardArgs a = forward_args(x, weight, bias, skip, skip_bias, y, sum_out, mean, rstd);
  gn::GivenStats g;
  g.count = static_cast<const std::int64_t*>(cdata(count));
  g.mean = static_cast<const double*>(cdata(gmean));
  g.m2 = static_cast<const double*>(cdata(gm2));
  g.stats_mean = cdata(smean);
  g.stats_rstd = cdata(srstd);
  run_released(num_threads, [&](const gn::Exec& e) { return gn::forward(p, a, g, e); });
}

void backward_sums(const py::array& grad_y, const py::array& x, const py::array& mean, const py::array& rstd,
                   std::int64_t groups, const py::object& weight, const py::object& bias, bool channels_last,
                   int act, int dtype, int param_dtype, const py::array& sum_dz, const py::array& sum_dz_xc,
                   int num_threads) {
  const gn::Problem p = problem(x, groups, 0.0, channels_last, act, dtype, param_dtype);
  const gn::BackwardArgs a = backward_args(grad_y, x, mean, rstd, weight, bias);
  double* dz = static_cast<double*>(const_cast<void*>(sum_dz.data()));
  double* dz_xc = static_cast<double*>(const_cast<void*>(sum_dz_xc.data()));
  run_released(num_threads, [&](const gn::Exec& e) { return gn::backward_sums(p, a, dz, dz_xc, e); });
}

// parts: a list of (sum_dz, sum_dz_xc) arrays, added in list order
void merge_backward_sums(const py::list& parts, const py::array& out_dz, const py::array& out_dz_xc) {
  std::vector<const double*> d, q;
  std::vector<py::array> keep;
  for (py::handle h : parts) {
    const py::tuple t = py::reinterpret_borrow<py::tuple>(h);
    for (int i = 0; i < 2; ++i) keep.push_back(t[i].cast<py::array>());
    d.push_back(static_cast<const double*>(keep[keep.size() - 2].data()));
    q.push_back(static_cast<const double*>(keep[keep.size() - 1].data()));
  }
  const gn::Result r = gn::merge_backward_sums((std::int64_t)out_dz.size(), (std::int64_t)d.size(), d.data(),
                                               q.data(), static_cast<double*>(const_cast<void*>(out_dz.data())),
                                               static_cast<double*>(const_cast<void*>(out_dz_xc.data())));
  if (!r) raise(r);
}

void backward_given(const py::array& grad_y, const py::array& x, const py::array& mean, const py::array& rstd,
                    std::int64_t groups, const py::object& weight, const py::object& bias, bool channels_last,
                    int act, int dtype, int param_dtype, const py::object& grad_x, const py::object& grad_weight,
                    const py::object& grad_bias, const py::array& sum_dz, const py::array& sum_dz_xc,
                    std::int64_t total_spatial, int num_threads) {
  const gn::Problem p = problem(x, groups, 0.0, channels_last, act, dtype, param_dtype);
  gn::BackwardArgs a = backward_args(grad_y, x, mean, rstd, weight, bias);
  a.grad_x = mdata(grad_x);
  a.grad_weight = mdata(grad_weight);
  a.grad_bias = mdata(grad_bias);
  const double* dz = static_cast<const double*>(sum_dz.data());
  const double* dz_xc = static_cast<const double*>(sum_dz_xc.data());
  run_released(num_threads, [&](const gn::Exec& e) { return gn::backward(p, a, dz, dz_xc, total_spatial, e); });
}

// The dtype rules, asked for by _checks.py / _cuda.py instead of repeated there.
void def_dtype_rules(py::module_& m) {
  m.def("stats_dtype", [](int code) { return (int)gn::stats_dtype((gn::DType)code); });
  m.def("param_dtype", [](int x_code, const std::vector<int>& present) {
    std::vector<gn::DType> d;
    for (int c : present) d.push_back((gn::DType)c);
    return (int)gn::param_dtype_for((gn::DType)x_code, d.data(), (int)d.size());
  });
}

void def_split(py::module_& m) {
  m.def("moments", &moments);
  m.def("merge_moments", &merge_moments);
  m.def("mean_rstd", &mean_rstd);
  m.def("forward_given", &forward_given);
  m.def("backward_sums", &backward_sums);
  m.def("merge_backward_sums", &merge_backward_sums);
  m.def("backward_given", &backward_given);
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "groupnorm C++ core (use the groupnorm package, not this module)";
  m.attr("VERSION") = groupnorm_version();  // CMake's project version, read from pyproject.toml
  def_split(m);
  def_dtype_rules(m);
  m.def("forward", &forward);
  m.def("forward_fast", &forward_fast);
  m.def("set_bfloat16_num", [](int num) { g_bfloat16_num = num; });
  m.def("empty_aligned", [](const py::tuple& shape, const py::dtype& dt) {
    std::vector<py::ssize_t> dims;
    for (py::handle d : shape) dims.push_back(d.cast<py::ssize_t>());
    return empty_aligned(dt, dims);
  });
  m.def("buffer_cache_info", [] {
    const BufferCache::Info i = BufferCache::get().info();  // the lock is dropped before any Python object exists
    py::dict d;
    d["cached_bytes"] = i.cached_bytes;
    d["cached_blocks"] = i.cached_blocks;
    d["limit_bytes"] = i.limit_bytes;
    d["hits"] = i.hits;
    d["misses"] = i.misses;
    return d;
  });
  m.attr("BUFFER_CACHE_ENV_WARNING") = BufferCache::get().env_warning_;
  m.def("parse_bytes", [](const std::string& text) -> py::object {
    std::uint64_t v = 0;
    if (!parse_bytes(text.c_str(), &v)) return py::none();
    return py::int_(v);
  });
  m.def("set_buffer_cache_limit", [](std::uint64_t bytes) { BufferCache::get().set_limit((std::size_t)bytes); });
  m.def("release_memory", [] { return BufferCache::get().release(); });
  m.def("backward", &backward);
  m.def("check", &check, py::arg("channels"), py::arg("groups"), py::arg("eps"), py::arg("activation"));
  m.def("activation_code", [](py::object name) {
    if (name.is_none()) return 0;
    return activation_code(py::str(name).cast<std::string>().c_str());
  });
  m.def("set_num_threads", &gn::set_num_threads);
  m.def("get_num_threads", &gn::get_num_threads);
  m.def("set_worker_pool", &gn::set_worker_pool);
  m.def("worker_pool", &gn::worker_pool);
  m.def("max_threads", &gn::max_threads);
  // how this thread's last CPU call was scheduled: (schedule, threads, streaming stores), for tests
  m.def("last_schedule", [] {
    const gn::ScheduleInfo s = gn::last_schedule();
    return py::make_tuple(gn::schedule_name(s.schedule), s.threads, s.streaming_stores);
  });
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
