// The target primitives in plain C++ over the vector types: what a target
// without the instruction uses (every target has all of them; see
// portable.hpp for the list). Each gives the same bits as the instructions
// the other targets use: conversions round to nearest even and keep NaNs
// quiet with their top payload bits, fma rounds once.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "../generic/vectors.hpp"

GN_KERNELS_BEGIN

// a * b + c with one rounding, lane by lane
GN_INLINE vf fma_lanes(vf a, vf b, vf c) {
  vf r;
  for (int i = 0; i < 16; ++i) r[i] = std::fma(a[i], b[i], c[i]);
  return r;
}
GN_INLINE vd fma_lanes(vd a, vd b, vd c) {
  vd r;
  for (int i = 0; i < 8; ++i) r[i] = std::fma(a[i], b[i], c[i]);
  return r;
}

// lo > x ? lo : x (NaN x stays NaN)
GN_INLINE vf max_select(vf lo, vf x) { return lo > x ? lo : x; }
GN_INLINE vd max_select(vd lo, vd x) { return lo > x ? lo : x; }

// p * 2^n for integer-valued n, from t = n + magic (n in t's low mantissa
// bits): the exponent built from the bits. Exact while the result is normal.
GN_INLINE vf times_pow2_bits(vf p, vf t, vf magic) {
  const vi32 e = (bitcast<vi32>(t) - bitcast<vi32>(magic) + 127) << 23;
  return p * bitcast<vf>(e);
}
GN_INLINE vd times_pow2_bits(vd p, vd t, vd magic) {
  const vi64 e = (bitcast<vi64>(t) - bitcast<vi64>(magic) + 1023) << 52;
  return p * bitcast<vd>(e);
}

// Lanes where a > b (both below 2^31), all ones or zero, from the sign of
// b - a; and a bitwise select. Comparisons and ?: on 64-byte integer vectors
// compile to a loop over the lanes where the target has no 64-byte vectors
// (GCC 12, SSE2 and AVX2); subtraction, shifts and logic do not.
GN_INLINE vu32 above(vu32 a, std::uint32_t b) { return bitcast<vu32>(bitcast<vi32>(b - a) >> 31); }
GN_INLINE vu32 pick(vu32 m, vu32 a, vu32 b) { return (a & m) | (b & ~m); }

// IEEE binary16 -> float: exact; NaNs quiet (as F16C)
inline vf half_to_float_bits(vu16 h16) {
  const vu32 h = __builtin_convertvector(h16, vu32);
  const vu32 sign = (h & 0x8000u) << 16;
  const vu32 em = h & 0x7fffu;
  // exponent/mantissa moved into place, then rescaled by 2^112 (handles subnormals exactly)
  const vf scaled = bitcast<vf>(em << 13) * 0x1p112f;
  const vu32 special = (em << 13) | 0x7f800000u | (above(em, 0x7c00u) & 0x400000u);  // inf / NaN
  const vu32 bits = pick(above(em, 0x7bffu), special, bitcast<vu32>(scaled));
  return bitcast<vf>(bits | sign);
}

// float -> IEEE binary16, round to nearest even
inline vu16 float_to_half_bits(vf f) {
  const vu32 u = bitcast<vu32>(f);
  const vu32 sign = (u >> 16) & 0x8000u;
  const vu32 a = u & 0x7fffffffu;
  const vu32 nan = 0x7e00u | ((a >> 13) & 0x3ffu);
  const vu32 big = pick(above(a, 0x7f800000u), nan, vu32{} + 0x7c00u);
  // subnormal results: let the FPU round by adding 0.5 (its ulp is 2^-24)
  const vu32 sub = bitcast<vu32>(bitcast<vf>(a) + 0.5f) - 0x3f000000u;
  const vu32 odd = (a >> 13) & 1u;
  const vu32 norm = (a - 0x38000000u + 0xfffu + odd) >> 13;
  // a >= 0x477ff000: inf or NaN; a < 0x38800000: subnormal
  const vu32 r = pick(above(a, 0x477fefffu), big, pick(above(a, 0x387fffffu), norm, sub));
  return __builtin_convertvector(r | sign, vu16);
}

// bfloat16 -> float: exact
inline vf bf16_to_float_bits(vu16 h16) { return bitcast<vf>(__builtin_convertvector(h16, vu32) << 16); }

// float -> bfloat16, round to nearest even, NaN stays NaN (quiet)
inline vu16 float_to_bf16_bits(vf f) {
  const vu32 u = bitcast<vu32>(f);
  const vu32 rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const vu32 quiet = (u >> 16) | 0x40u;
  return __builtin_convertvector(pick(above(u & 0x7fffffffu, 0x7f800000u), quiet, rounded), vu16);
}

// The first n < lanes elements, the rest zero (load) or untouched (store),
// through a buffer.
template <class Vec, class E> inline Vec load_first_copy(const E* p, std::int64_t n) {
  constexpr int lanes = sizeof(Vec) / sizeof(E);
  E buf[lanes];
  std::memset(buf, 0, sizeof(buf));
  std::memcpy(buf, p, sizeof(E) * n);
  Vec v;
  std::memcpy(&v, buf, sizeof(v));
  return v;
}
template <class Vec, class E> inline void store_first_copy(E* p, const Vec& v, std::int64_t n) {
  std::memcpy(p, &v, sizeof(E) * n);
}

GN_KERNELS_END
