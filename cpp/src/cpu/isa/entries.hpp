// The entry points of one target's kernels, one per kernel and layout, for
// each dtype T (float, double, half, bfloat16): kernels.cpp defines them for
// one dtype (from forward_cf.hpp, forward_cl.hpp, backward_cf.hpp,
// backward_cl.hpp), table.cpp puts them in the target's table. CMakeLists.txt
// (gn_add_target) compiles kernels.cpp once per target and dtype, and
// table.cpp once per target, through short generated sources that define
// GN_ISA_NS, GN_ISA_NAME, GN_ARCH_HEADER (and GN_DTYPE) and include them.
#pragma once

#include "../kernels.hpp"
#include "../generic/namespace.hpp"
#include "groupnorm/groupnorm.hpp"

namespace groupnorm {
namespace detail {
namespace GN_ISA_NS {

// forward_cf.hpp
template <class T> void moments_cf(const Tile& t, Moments* out);
template <class T> void apply_cf(const Tile& t);
template <class T> void apply_moments_cf(const Tile& a, const Tile& m, Moments* out);
// forward_cl.hpp
template <class T> void moments_cl(const Tile& t, Moments* out);
template <class T> void apply_cl(const Tile& t);
// backward_cf.hpp
template <class T> void backward_sums_cf(const Tile& t, double* db, double* ds);
template <class T> void backward_apply_cf(const Tile& t);
template <class T> void backward_apply_sums_cf(const Tile& a, const Tile& m, double* db, double* ds);
// backward_cl.hpp
template <class T> void backward_sums_cl(const Tile& t, double* db, double* ds);
template <class T> void backward_apply_cl(const Tile& t);

// table.cpp
const IsaKernels& kernels();

}  // namespace GN_ISA_NS
}  // namespace detail
}  // namespace groupnorm
