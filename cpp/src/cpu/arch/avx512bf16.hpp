// The avx512bf16 target: the avx512 target's primitives, and float -> bfloat16
// with AVX512_BF16's VCVTNEPS2BF16 (arch/avx512.hpp, under __AVX512BF16__).
// Only its bfloat16 kernels are compiled; the other dtypes run the avx512
// target's (gn_add_variant in CMakeLists.txt).
#pragma once

#if !defined(__AVX512BF16__)
#error "the avx512bf16 target is compiled with -mavx512bf16 (CMakeLists.txt)"
#endif

#include "avx512.hpp"
