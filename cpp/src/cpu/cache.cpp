// The cache sizes the plan is made for: read once per process from the OS
// (sysconf), or GROUPNORM_CACHE_BYTES.
#include "cache.hpp"

#include <cstdlib>
#include <unistd.h>

namespace groupnorm {
namespace detail {

std::int64_t private_cache_bytes() {
  static const std::int64_t l2 = [] {
    long v = 0;
#ifdef _SC_LEVEL2_CACHE_SIZE
    v = sysconf(_SC_LEVEL2_CACHE_SIZE);
#endif
    return v > 0 ? (std::int64_t)v : (std::int64_t)1 << 20;
  }();
  return l2;
}

std::int64_t cache_budget(int threads) {
  static const std::int64_t fixed = [] {
    const char* s = std::getenv("GROUPNORM_CACHE_BYTES");
    return s ? std::atoll(s) : 0LL;
  }();
  if (fixed > 0) return fixed;
  const std::int64_t l2 = private_cache_bytes();
  static const std::int64_t l3 = [] {
    long v = 0;
#ifdef _SC_LEVEL3_CACHE_SIZE
    v = sysconf(_SC_LEVEL3_CACHE_SIZE);
#endif
    return v > 0 ? (std::int64_t)v : (std::int64_t)0;
  }();
  const int t = threads > 0 ? threads : 1;
  // most of the private L2, plus a fair share of half the shared L3
  return l2 * 3 / 4 + l3 / 2 / t;
}

}  // namespace detail
}  // namespace groupnorm
