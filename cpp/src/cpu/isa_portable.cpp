// The generic kernels compiled for the "portable" instruction set (flags in CMakeLists.txt).
#define GN_ISA_NS isa_portable
#define GN_ISA_NAME "portable"
#include "generic.hpp"
