// lock_ops: Spinlock and LocalTryLock operations on 1-2 CPUs with IRQs and
// NMIs injected at any site, checked against a model of who holds what.
#include "harness/fuzz_target.h"

ANYCTX_FUZZ_TARGET("lock_ops")
