// memcg_ops: 1-2 CPUs; cgroup limits, charges and uncharges on both paths,
// switches of the current cgroup (also inside interrupts), and accounted page
// and kmalloc allocations, with IRQs and NMIs injected at any site.
#include "harness/fuzz_target.h"

ANYCTX_FUZZ_TARGET("memcg_ops")
