// The output-buffer cache of the Python extension: where the arrays the
// library allocates (group_norm(x) without out=, the GroupNorm layer,
// backward's grad_x) come from, and the byte counts its limit is read in.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <vector>

namespace groupnorm_py {

// A byte count as written in an environment variable (see buffer_cache.cpp); false if it is not one.
bool parse_bytes(const char* text, std::uint64_t* out);

// A new C-contiguous array whose data starts on a 64-byte boundary, from the cache.
pybind11::array empty_aligned(const pybind11::dtype& dt, const std::vector<pybind11::ssize_t>& shape);

// empty_aligned, buffer_cache_info, set_buffer_cache_limit, release_memory,
// parse_bytes and BUFFER_CACHE_ENV_WARNING on the module.
void def_buffer_cache(pybind11::module_& m);

}  // namespace groupnorm_py
