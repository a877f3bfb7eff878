// The generic kernels compiled for the "avx512" instruction set (flags in CMakeLists.txt).
#define GN_ISA_NS isa_avx512
#define GN_ISA_NAME "avx512"
#include "generic.hpp"
