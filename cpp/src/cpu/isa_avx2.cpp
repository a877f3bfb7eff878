// The generic kernels compiled for the "avx2" instruction set (flags in CMakeLists.txt).
#define GN_ISA_NS isa_avx2
#define GN_ISA_NAME "avx2"
#include "generic.hpp"
