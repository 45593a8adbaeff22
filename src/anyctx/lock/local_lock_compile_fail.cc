// Compile-fail test: LocalLock has no try_lock(). A LocalLock cannot tell
// whether an interrupted frame holds it, so trying it from an interrupt would
// silently nest two critical sections. Only LocalTryLock offers try_lock().
//
// Built twice by ctest: with ANYCTX_COMPILE_FAIL_CONTROL (LocalTryLock, must
// compile) and without (LocalLock, must not compile).
#include "anyctx/lock/local_lock.h"

#if ANYCTX_COMPILE_FAIL_CONTROL
using LockUnderTest = anyctx::LocalTryLock;
#else
using LockUnderTest = anyctx::LocalLock;
#endif

bool try_it(LockUnderTest& l) { return l.try_lock(); }
