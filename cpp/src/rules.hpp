// Internal: how the argument rules (problem.cpp) and the entry points report a
// broken one.
#pragma once

#include <string>
#include <utility>

#include "groupnorm/groupnorm.hpp"

namespace groupnorm {
namespace detail {

inline Result fail(Status s, std::string message) { return {s, std::move(message)}; }

}  // namespace detail
}  // namespace groupnorm
