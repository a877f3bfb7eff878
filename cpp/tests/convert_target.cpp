// test_convert: one target's 16-bit conversion primitives (cpu/arch/<target>.hpp)
// over arrays, compiled once per target with that target's flags
// (cpp/tests/CMakeLists.txt defines GN_ISA_NS, GN_ISA_NAME, GN_ARCH_HEADER).
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "generic/namespace.hpp"
#include GN_ARCH_HEADER

namespace groupnorm {
namespace detail {
namespace GN_ISA_NS {

// n: a multiple of 16
void test_float_to_bf16(const std::uint32_t* in, std::uint16_t* out, std::size_t n) {
  for (std::size_t i = 0; i < n; i += 16) {
    vf f;
    std::memcpy(&f, in + i, 64);
    const vu16 h = float_to_bf16(f);
    std::memcpy(out + i, &h, 32);
  }
}
void test_float_to_half(const std::uint32_t* in, std::uint16_t* out, std::size_t n) {
  for (std::size_t i = 0; i < n; i += 16) {
    vf f;
    std::memcpy(&f, in + i, 64);
    const vu16 h = float_to_half(f);
    std::memcpy(out + i, &h, 32);
  }
}
void test_bf16_to_float(const std::uint16_t* in, std::uint32_t* out, std::size_t n) {
  for (std::size_t i = 0; i < n; i += 16) {
    vu16 h;
    std::memcpy(&h, in + i, 32);
    const vf f = bf16_to_float(h);
    std::memcpy(out + i, &f, 64);
  }
}
void test_half_to_float(const std::uint16_t* in, std::uint32_t* out, std::size_t n) {
  for (std::size_t i = 0; i < n; i += 16) {
    vu16 h;
    std::memcpy(&h, in + i, 32);
    const vf f = half_to_float(h);
    std::memcpy(out + i, &f, 64);
  }
}

}  // namespace GN_ISA_NS
}  // namespace detail
}  // namespace groupnorm
