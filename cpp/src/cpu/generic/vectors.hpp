// Part of the generic kernels (cpu/generic/): the vector types. Every kernel
// works on 64-byte vectors (GCC/Clang vector extensions) whatever the target,
// so lane order, and with it every sum's order, is the same on every target.
#pragma once

#include <cstdint>
#include <cstring>

#include "namespace.hpp"

GN_KERNELS_BEGIN

typedef float vf __attribute__((vector_size(64)));
typedef double vd __attribute__((vector_size(64)));
typedef std::int32_t vi32 __attribute__((vector_size(64)));
typedef std::uint32_t vu32 __attribute__((vector_size(64)));
typedef std::int64_t vi64 __attribute__((vector_size(64)));
typedef std::uint64_t vu64 __attribute__((vector_size(64)));
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

GN_KERNELS_END
