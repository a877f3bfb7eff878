// The entry points of one target's kernels, one per kernel and layout, for
// each dtype T (float, double, half, bfloat16). Each translation unit of
// cpu/isa/ defines some of them; table.cpp puts them in the target's table.
// These files are compiled once per target: CMakeLists.txt (gn_add_target)
// generates a two-line source per target and file that defines GN_ISA_NS,
// GN_ISA_NAME and GN_ARCH_HEADER and includes it.
#pragma once

#include "../kernels.hpp"
#include "../generic/namespace.hpp"
#include "groupnorm/groupnorm.hpp"

// X(T) for every storage type
#define GN_FOR_EACH_DTYPE(X) X(float) X(double) X(half) X(bfloat16)

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
