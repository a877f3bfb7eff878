// The output-buffer cache (see buffer_cache.hpp and the comment on BufferCache).
#include "buffer_cache.hpp"

#include <cctype>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <new>
#include <string>
#include <vector>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace py = pybind11;

namespace groupnorm_py {

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

namespace {

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
// after. tests/test_process_safety.py checks the sources for this.
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

}  // namespace

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


void def_buffer_cache(py::module_& m) {
  m.def("empty_aligned", [](const py::tuple& shape, const py::dtype& dtype) {
    std::vector<py::ssize_t> dims;
    for (py::handle d : shape) dims.push_back(d.cast<py::ssize_t>());
    return empty_aligned(dtype, dims);
  }, py::arg("shape"), py::arg("dtype"));
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
  }, py::arg("text"));
  m.def("set_buffer_cache_limit", [](std::uint64_t bytes) { BufferCache::get().set_limit((std::size_t)bytes); },
        py::arg("nbytes"));
  m.def("release_memory", [] { return BufferCache::get().release(); });
}

}  // namespace groupnorm_py
