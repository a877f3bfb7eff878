// The CPU kernels, written once over 64-byte vectors (GCC/Clang vector
// extensions) and compiled once per instruction set (isa_*.cpp define
// GN_ISA_NS and include this file). Lane order, accumulation order and the
// arithmetic (no FMA contraction: -ffp-contract=off) are the same on every
// instruction set, so every path gives bitwise the same results.
//
// The kernels live in generic/, one file per concern, included below in
// dependency order inside this file's namespaces: conversions (16-bit
// formats), masked I/O (row tails), math (storage traits, vector ops),
// streaming stores, inputs (x + skip), then the channels-first and
// channels-last kernels; this file adds the per-dtype table.
//
// Moments of a tile come from one pass of shifted sums: with a shift K (the
// tile's first element, or per group of a channels-last tile), sum d = x - K
// and d*d; then
//   mean = K + sum(d)/n,  M2 = sum(d*d) - sum(d)^2/n.
// When K turns out far from the mean (shift_ok() fails: the cancellation in M2
// would cost more than 6 bits) the tile is redone with the exact two-pass sums
// (its own mean first, then deviations from it). Tiles then merge with Chan's
// formula in a fixed order (schedule.cpp).
#ifndef GN_ISA_NS
#error "define GN_ISA_NS before including generic.hpp"
#endif

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "groupnorm/groupnorm.hpp"
#include "kernels.hpp"

#if defined(__SSE2__)
#include <immintrin.h>
#endif
#if defined(GN_ISA_NEON_F16)
#include <arm_neon.h>
#endif

#define GN_INLINE inline __attribute__((always_inline))

namespace groupnorm {
namespace detail {
namespace GN_ISA_NS {
namespace {

typedef float vf __attribute__((vector_size(64)));
typedef double vd __attribute__((vector_size(64)));
typedef std::int32_t vi32 __attribute__((vector_size(64)));
typedef std::uint32_t vu32 __attribute__((vector_size(64)));
typedef std::int64_t vi64 __attribute__((vector_size(64)));
typedef std::uint16_t vu16 __attribute__((vector_size(32)));

template <class A> struct VecOf;
template <> struct VecOf<float> { typedef vf type; typedef vi32 mask; static constexpr int lanes = 16; };
template <> struct VecOf<double> { typedef vd type; typedef vi64 mask; static constexpr int lanes = 8; };

template <class To, class From> inline To bitcast(const From& f) {
  static_assert(sizeof(To) == sizeof(From), "size");
  To t;
  std::memcpy(&t, &f, sizeof(To));
  return t;
}

#include "generic/convert.hpp"  // conversions
#include "generic/masked_io.hpp"  // masked I/O
#include "generic/math.hpp"  // math
#include "generic/stream.hpp"  // streaming stores
#include "generic/inputs.hpp"  // inputs
#include "generic/channels_first.hpp"  // channels-first kernels
#include "generic/channels_last.hpp"  // channels-last kernels

// ================================================================ table
template <class T> void moments(const Tile& t, Moments* out) {
  const bool skip = t.skip != nullptr;
  if (t.channels_last) (skip ? cl_moments<T, true> : cl_moments<T, false>)(t, out);
  else (skip ? cf_moments<T, true> : cf_moments<T, false>)(t, out);
}
template <class T, bool SKIP> void apply_(const Tile& t) {
  if (t.channels_last) (t.silu ? cl_apply<T, SKIP, true> : cl_apply<T, SKIP, false>)(t);
  else (t.silu ? cf_apply<T, SKIP, true> : cf_apply<T, SKIP, false>)(t);
}
template <class T> void apply(const Tile& t) { (t.skip ? apply_<T, true> : apply_<T, false>)(t); }
template <class T, bool SKIP> void apply_moments_(const Tile& a, const Tile& m, Moments* out) {
  (a.silu ? cf_apply_moments<T, SKIP, true> : cf_apply_moments<T, SKIP, false>)(a, m, out);
}
template <class T> void apply_moments(const Tile& a, const Tile& m, Moments* out) {
  (m.skip ? apply_moments_<T, true> : apply_moments_<T, false>)(a, m, out);
}
template <class T> void backward_sums(const Tile& t, double* db, double* ds) {
  if (t.channels_last) (t.silu ? cl_backward_sums<T, true> : cl_backward_sums<T, false>)(t, db, ds);
  else (t.silu ? cf_backward_sums<T, true> : cf_backward_sums<T, false>)(t, db, ds);
}
template <class T> void backward_apply(const Tile& t) {
  if (t.channels_last) (t.silu ? cl_backward_apply<T, true> : cl_backward_apply<T, false>)(t);
  else (t.silu ? cf_backward_apply<T, true> : cf_backward_apply<T, false>)(t);
}
template <class T> void backward_apply_sums(const Tile& a, const Tile& m, double* db, double* ds) {
  (a.silu ? cf_backward_apply_sums<T, true> : cf_backward_apply_sums<T, false>)(a, m, db, ds);
}
template <class T> constexpr KernelSet kernel_set() {
  return KernelSet{&moments<T>, &apply<T>, &apply_moments<T>, &backward_sums<T>, &backward_apply<T>,
                   &backward_apply_sums<T>};
}

}  // namespace

const IsaKernels& kernels() {
  static const IsaKernels k{GN_ISA_NAME,
                            {kernel_set<float>(), kernel_set<double>(), kernel_set<half>(), kernel_set<bfloat16>()}};
  return k;
}

}  // namespace GN_ISA_NS
}  // namespace detail
}  // namespace groupnorm
