// Internal: the caches of this machine, as the plan sees them. Affects speed
// only, never results.
#pragma once

#include <cstdint>

namespace groupnorm {
namespace detail {

// Per-thread cache budget in bytes for a call on `threads` threads: most of the
// private L2 plus a fair share of half the shared L3 (GROUPNORM_CACHE_BYTES
// overrides it).
std::int64_t cache_budget(int threads);
// The private (per-core) cache, the L2, in bytes.
std::int64_t private_cache_bytes();

}  // namespace detail
}  // namespace groupnorm
