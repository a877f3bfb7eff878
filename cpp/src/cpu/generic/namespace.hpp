// Part of the generic kernels (cpu/generic/): the namespace every kernel
// header opens. Each kernel translation unit is compiled for one target
// (cpu/isa/, generated per target by CMakeLists.txt), which defines
//   GN_ISA_NS       the target's namespace (isa_avx2, ...)
//   GN_ISA_NAME     its name ("avx2", ...)
//   GN_ARCH_HEADER  its primitives (cpu/arch/<target>.hpp)
// The kernels live in an unnamed namespace inside GN_ISA_NS: every
// translation unit has its own copy, and only the entry points (cpu/isa/entries.hpp)
// are seen across translation units.
#pragma once

#if !defined(GN_ISA_NS) || !defined(GN_ISA_NAME) || !defined(GN_ARCH_HEADER)
#error "a kernel translation unit defines GN_ISA_NS, GN_ISA_NAME and GN_ARCH_HEADER (see CMakeLists.txt)"
#endif

#define GN_KERNELS_BEGIN namespace groupnorm { namespace detail { namespace GN_ISA_NS { namespace {
#define GN_KERNELS_END } } } }
#define GN_INLINE inline __attribute__((always_inline))
