// anyctx/lock/tsan_mutex.h — internal: ThreadSanitizer mutex annotations, so
// TSan sees anyctx locks as mutexes (lock-order inversions, races across an
// unlock). Empty outside TSan builds.
#pragma once

#include "anyctx/ctx/config.h"

#if ANYCTX_TSAN
#include <sanitizer/tsan_interface.h>
#define ANYCTX_TSAN_MUTEX(call) call
#else
#define ANYCTX_TSAN_MUTEX(call) ((void)0)
#endif
