// anyctx/lock/validator.h — the lock validator: reports a deadlock the first
// time the *pattern* of lock use makes it possible, with no interleaving
// needed (lockdep's idea, written for this model).
//
// Contract:
//  - On when ANYCTX_DEBUG is 1 (every preset but `release`); with 0 every
//    function here is an empty inline and NolockScope an empty object: zero
//    cost. In a debug build set_lock_validator(LockValidator::kOff) turns it
//    off at run time (one relaxed load per lock operation stays: lock_bench).
//  - Classes: a lock's class is its class name (string equality). Classes get
//    ids on first use from a fixed table (kMaxLockClasses, lock-free insert);
//    a lock caches its id. Beyond the table a class goes unchecked.
//  - Held locks: each thread keeps a bounded stack (kMaxHeldLocks) of the
//    locks it holds, with the frame (task / IRQ / NMI) that took each, how
//    (waiting lock() or try_lock()) and where. A handler that interrupts the
//    thread sees the interrupted frames' entries (held_lock_count()).
//  - Usage per class: taken in task / IRQ / NMI context; taken waiting in IRQ
//    context; held in task context with IRQs enabled (on a CPU); by lock() or
//    by try_lock(). The first site of each state is kept for reports.
//  - Dependencies: an edge A -> B when a spinlock of class B is acquired
//    waiting (lock()) while this frame holds a spinlock of class A (taken
//    either way). try_lock() never waits, so it adds no edge. A local lock
//    orders nothing on this model (its lock() never waits for another CPU);
//    its hazard, an interrupt on its own CPU, is report 4. Edges between two
//    locks of one class are not recorded (no subclass annotations here).
//    The graph is a fixed bit matrix plus a bounded edge log for the sites.
//  - Reports (fatal, through report.h, so the harness adds its step):
//     1. "lock validator: order inversion" — a new edge closes a cycle;
//     2. "lock validator: irq-safety inversion" — a spinlock class taken
//        waiting in IRQ context is held elsewhere in task context with IRQs
//        enabled (either order of discovery);
//     3. "lock validator: wait in a nolock call" — a waiting acquisition
//        (Spinlock::lock, a local lock's lock(), or a spin or read-retry loop
//        that calls validator_note_wait()) while this frame is inside a nolock
//        entry point (NolockScope), in any context, task included;
//     4. "lock validator: interruptible local lock" — as 2 for a local lock:
//        lock() from IRQ context on a class held elsewhere in task context
//        with IRQs enabled.
//    Each names the classes, contexts and the acquisition sites involved.
//  - Exempt classes (set_lock_class_unchecked()): no order or IRQ-safety
//    checks, for locks whose discipline a caller enforces itself (the
//    harness's program locks, test seams that deadlock on purpose). The
//    nolock rule (3) still applies to them.
//  - Learnt state lives for the process (like lockdep's, for the boot), until
//    lock_validator_forget().
//  - The nolock mark is per frame: an IRQ or NMI that interrupts a nolock call
//    is not inside it (unless it makes a nolock call itself).
// Context: any. Signal safety: async-signal-safe (constant-initialised
// thread-locals, fixed arrays, atomics; no allocation, no lock).
#pragma once

#include <atomic>
#include <cstdint>

#include "anyctx/ctx/config.h"
#include "anyctx/ctx/src_loc.h"

namespace anyctx {

inline constexpr int kMaxLockClasses = 256;
inline constexpr int kMaxHeldLocks = 32;
inline constexpr int kMaxLockEdges = 4096;

enum class LockValidator : std::uint8_t { kOn, kOff };
enum class LockFamily : std::uint8_t { kSpin, kLocal };
enum class LockAcquire : std::uint8_t { kWait, kTry };

// A lock's cached class id (0: not looked up yet). Debug builds only.
using LockClassCache = std::atomic<std::uint16_t>;

#if ANYCTX_DEBUG

namespace detail {
extern std::atomic<bool> g_validator_on;

void validator_wait_slow(const void* lock, const char* class_name, LockClassCache& cache, LockFamily family,
                         SrcLoc at);
void validator_acquired_slow(const void* lock, const char* class_name, LockClassCache& cache, LockFamily family,
                             LockAcquire how, SrcLoc at);
void validator_released_slow(const void* lock);
void validator_note_wait_slow(const char* what, SrcLoc at);
void nolock_enter(const char* entry);
void nolock_exit();
}  // namespace detail

// Before a waiting acquisition (the lock is not taken yet): reports 1-4.
inline void validator_wait(const void* lock, const char* class_name, LockClassCache& cache, LockFamily family,
                           SrcLoc at) {
  if (ANYCTX_LIKELY(detail::g_validator_on.load(std::memory_order_relaxed)))
    detail::validator_wait_slow(lock, class_name, cache, family, at);
}
// After a successful acquisition (either way): usage and the held stack.
inline void validator_acquired(const void* lock, const char* class_name, LockClassCache& cache, LockFamily family,
                               LockAcquire how, SrcLoc at) {
  if (ANYCTX_LIKELY(detail::g_validator_on.load(std::memory_order_relaxed)))
    detail::validator_acquired_slow(lock, class_name, cache, family, how, at);
}
// Before the release of a lock this thread holds.
inline void validator_released(const void* lock) {
  if (ANYCTX_LIKELY(detail::g_validator_on.load(std::memory_order_relaxed))) detail::validator_released_slow(lock);
}

// A wait that is not a lock: a spin loop, a read-retry loop, a bounded wait
// for another CPU. `what` names it ("seqcount read retry"). Context: any.
// Reports 3 when this frame is inside a nolock call.
inline void validator_note_wait(const char* what, SrcLoc at = SrcLoc::here()) {
  if (ANYCTX_LIKELY(detail::g_validator_on.load(std::memory_order_relaxed)))
    detail::validator_note_wait_slow(what, at);
}

// Marks this frame as inside a nolock entry point for its lifetime (nests).
// `entry` names it ("kmalloc_nolock"); it must outlive the scope.
class NolockScope {
 public:
  explicit NolockScope(const char* entry) { detail::nolock_enter(entry); }
  ~NolockScope() { detail::nolock_exit(); }
  NolockScope(const NolockScope&) = delete;
  NolockScope& operator=(const NolockScope&) = delete;
};

#else  // !ANYCTX_DEBUG: compiled out

inline void validator_wait(const void*, const char*, LockClassCache&, LockFamily, SrcLoc) {}
inline void validator_acquired(const void*, const char*, LockClassCache&, LockFamily, LockAcquire, SrcLoc) {}
inline void validator_released(const void*) {}
inline void validator_note_wait(const char*, SrcLoc = SrcLoc::here()) {}

class NolockScope {
 public:
  explicit constexpr NolockScope(const char*) {}
  ~NolockScope() {}  // user-provided: a scope is "used" (no unused-variable warning)
  NolockScope(const NolockScope&) = delete;
  NolockScope& operator=(const NolockScope&) = delete;
};

#endif

// Turns the checks on or off at run time (debug builds; no-op otherwise).
// Context: any; locks held across a change are not tracked consistently, so
// change it only with no lock held (benchmarks, start of a test).
void set_lock_validator(LockValidator state);
// Return: whether the validator checks now (false in release builds).
bool lock_validator_on();

// Exempts `class_name` from the order and IRQ-safety checks (see above).
// Context: any. Return: false when the class table is full (release: true).
bool set_lock_class_unchecked(const char* class_name);

// Forgets what the validator learnt (usage states, dependencies), keeping the
// classes and the unchecked marks: reports after this depend only on what
// runs from here on. The deterministic executor calls it before each program,
// so a report replays from that one input. Context: task, no lock held by
// any thread, no other thread taking locks.
void lock_validator_forget();

// Return: locks this thread holds, all frames (0 in release builds).
// Context: any (a handler sees the frames it interrupted).
int held_lock_count();
// Return: whether this frame is inside a nolock entry point.
bool in_nolock_call();

struct LockValidatorStats {
  int classes = 0;      // classes with ids
  int edges = 0;        // dependency edges recorded
  bool saturated = false;  // a table filled up: some checks were skipped
};
LockValidatorStats lock_validator_stats();

}  // namespace anyctx
