// Internal: scalar conversions of the storage types (for parameters and stats).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "groupnorm/groupnorm.hpp"

namespace groupnorm {
namespace detail {

inline float half_bits_to_float(std::uint16_t h) {
  const std::uint32_t sign = (std::uint32_t)(h & 0x8000u) << 16;
  const std::uint32_t em = h & 0x7fffu;
  std::uint32_t bits;
  if (em >= 0x7c00u) {
    bits = (em << 13) | 0x7f800000u;
  } else {
    float f;
    const std::uint32_t sh = em << 13;
    std::memcpy(&f, &sh, 4);
    f *= 0x1p112f;
    std::memcpy(&bits, &f, 4);
  }
  bits |= sign;
  float out;
  std::memcpy(&out, &bits, 4);
  return out;
}

inline std::uint16_t float_to_half_bits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  const std::uint32_t sign = (u >> 16) & 0x8000u;
  const std::uint32_t a = u & 0x7fffffffu;
  std::uint32_t r;
  if (a >= 0x477ff000u) {
    r = a > 0x7f800000u ? (0x7e00u | ((a >> 13) & 0x3ffu)) : 0x7c00u;
  } else if (a < 0x38800000u) {
    float fa;
    std::memcpy(&fa, &a, 4);
    fa += 0.5f;
    std::memcpy(&r, &fa, 4);
    r -= 0x3f000000u;
  } else {
    r = (a - 0x38000000u + 0xfffu + ((a >> 13) & 1u)) >> 13;
  }
  return (std::uint16_t)(r | sign);
}

inline float bf16_bits_to_float(std::uint16_t h) {
  const std::uint32_t u = (std::uint32_t)h << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline std::uint16_t float_to_bf16_bits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (std::uint16_t)((u >> 16) | 0x40u);
  return (std::uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

// Element i of a typed array, as double. The caller's arrays may have any
// alignment (a float at an odd address included): every access is a memcpy,
// which compiles to a plain unaligned load or store.
template <class E> inline E load_unaligned(const void* p, std::int64_t i) {
  E v;
  std::memcpy(&v, static_cast<const char*>(p) + i * (std::int64_t)sizeof(E), sizeof(E));
  return v;
}
template <class E> inline void store_unaligned(void* p, std::int64_t i, E v) {
  std::memcpy(static_cast<char*>(p) + i * (std::int64_t)sizeof(E), &v, sizeof(E));
}

inline double load_scalar(const void* p, DType t, std::int64_t i) {
  switch (t) {
    case DType::float32: return load_unaligned<float>(p, i);
    case DType::float64: return load_unaligned<double>(p, i);
    case DType::float16: return half_bits_to_float(load_unaligned<std::uint16_t>(p, i));
    case DType::bfloat16: return bf16_bits_to_float(load_unaligned<std::uint16_t>(p, i));
  }
  return 0;
}

// Store v (rounded to nearest even) as element i of a typed array (any alignment).
inline void store_scalar(void* p, DType t, std::int64_t i, double v) {
  switch (t) {
    case DType::float32: store_unaligned<float>(p, i, (float)v); break;
    case DType::float64: store_unaligned<double>(p, i, v); break;
    case DType::float16: store_unaligned<std::uint16_t>(p, i, float_to_half_bits((float)v)); break;
    case DType::bfloat16: store_unaligned<std::uint16_t>(p, i, float_to_bf16_bits((float)v)); break;
  }
}

// v (float for 16-bit data) rounded to the storage type t, as the kernels'
// round trip does for x + skip.
inline double round_to_storage(DType t, double v) {
  switch (t) {
    case DType::float32: return (float)v;
    case DType::float64: return v;
    case DType::float16: return half_bits_to_float(float_to_half_bits((float)v));
    case DType::bfloat16: return bf16_bits_to_float(float_to_bf16_bits((float)v));
  }
  return v;
}

}  // namespace detail
}  // namespace groupnorm
