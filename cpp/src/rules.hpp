// Internal: how the argument rules (problem.cpp) and the entry points report a
// broken one.
#pragma once

#include <cstdint>
#include <string>
#include <utility>

#include "groupnorm/groupnorm.hpp"

namespace groupnorm {
namespace detail {

inline Result fail(Status s, std::string message) { return {s, std::move(message)}; }

// Counts of merged moments are element counts: never negative (problem.cpp).
Result check_counts(const std::int64_t* count, std::int64_t size, const std::string& what);

}  // namespace detail
}  // namespace groupnorm
