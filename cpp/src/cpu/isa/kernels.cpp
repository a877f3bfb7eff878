// One target's kernels for one dtype (GN_DTYPE): the entry points of every
// kernel group, compiled once per target and dtype (entries.hpp). The units
// run side by side in a -j build; one dtype per unit keeps GCC's inlining of
// each kernel as it is in a unit of its own (with the four dtypes of a kernel
// group in one unit, the channels-first forward kernels were inlined less and
// measured up to 1.5x slower on small groups).
#include "forward_cf.hpp"
#include "forward_cl.hpp"
#include "backward_cf.hpp"
#include "backward_cl.hpp"
