// slab_ops: 1-2 CPUs; kmalloc/kfree and kmalloc_nolock/kfree_nolock of every
// size class (plain and accounted), mixed with page allocations, drains and
// CPU offline/online, with IRQs and NMIs injected at any site.
#include "harness/fuzz_target.h"

ANYCTX_FUZZ_TARGET("slab_ops")
