// The generic kernels compiled for the "neon" instruction set (flags in CMakeLists.txt).
#define GN_ISA_NS isa_neon
#define GN_ISA_NAME "neon"
#include "generic.hpp"
