// The entry points of one target's kernels, one per kernel and layout, for
// each dtype T (float, double, half, bfloat16). Each translation unit of
// cpu/isa/ defines some of them; table.cpp puts them in the target's table.
// These files are compiled once per target, the kernels once per target and
// dtype: CMakeLists.txt (gn_add_target) generates a short source for each that
// defines GN_ISA_NS, GN_ISA_NAME, GN_ARCH_HEADER (and GN_DTYPE, the dtype it
// instantiates) and includes it. One dtype per translation unit also keeps
// GCC's inlining of each kernel what it is in a unit of its own (with all four
// dtypes in one unit, the channels-first forward kernels were inlined less and
// measured up to 1.5x slower on small groups).
#pragma once

#include "../kernels.hpp"
#include "../generic/namespace.hpp"
#include "groupnorm/groupnorm.hpp"

namespace groupnorm {
namespace detail {
namespace GN_ISA_NS {

// forward_cf.cpp
template <class T> void moments_cf(const Tile& t, Moments* out);
template <class T> void apply_cf(const Tile& t);
template <class T> void apply_moments_cf(const Tile& a, const Tile& m, Moments* out);
// forward_cl.cpp
template <class T> void moments_cl(const Tile& t, Moments* out);
template <class T> void apply_cl(const Tile& t);
// backward_cf.cpp
template <class T> void backward_sums_cf(const Tile& t, double* db, double* ds);
template <class T> void backward_apply_cf(const Tile& t);
template <class T> void backward_apply_sums_cf(const Tile& a, const Tile& m, double* db, double* ds);
// backward_cl.cpp
template <class T> void backward_sums_cl(const Tile& t, double* db, double* ds);
template <class T> void backward_apply_cl(const Tile& t);

// table.cpp
const IsaKernels& kernels();

}  // namespace GN_ISA_NS
}  // namespace detail
}  // namespace groupnorm
