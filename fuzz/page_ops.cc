// page_ops: one CPU; every page-allocator entry point on both paths (alloc,
// free, get/put, write-verify, drains, CPU offline/online) with IRQs and
// NMIs injected at any site, nested, and a fault plan.
#include "harness/fuzz_target.h"

ANYCTX_FUZZ_TARGET("page_ops")
