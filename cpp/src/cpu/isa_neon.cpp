// The generic kernels compiled for the "neon" instruction set (flags in
// CMakeLists.txt). GCC turns the generic 64-byte vector code into 128-bit NEON
// (and std::fma into FMLA) on any aarch64 build, portable included; what this
// path adds is the hardware float16 conversion (FCVTL/FCVTN, part of ARMv8-A
// Advanced SIMD, so every aarch64 CPU runs it) in place of the portable bit
// manipulation. .ci/aarch64.sh checks under qemu that it gives the portable bits.
#define GN_ISA_NS isa_neon
#define GN_ISA_NAME "neon"
#define GN_ISA_NEON_F16 1
#include "generic.hpp"
