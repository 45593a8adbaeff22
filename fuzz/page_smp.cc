// page_smp: 2-4 CPUs switching where the schedule says and while spinning,
// freeing each other's pages, with injected interrupts and faults.
#include "harness/fuzz_target.h"

ANYCTX_FUZZ_TARGET("page_smp")
