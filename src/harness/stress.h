// harness/stress.h — the stress executor: free-running CPUs, timer-driven
// IRQ and NMI storms, a watchdog, and the final oracles.
//
// Contract:
//  - run_stress() runs `threads` free-running threads, each a logical CPU
//    (CpuScope) running a seeded random workload over every public entry
//    point on both paths (pages, get/put, kmalloc, memcg charges, accounted
//    allocations under a MemcgScope, drains, an occasional CPU offline and
//    online — in between, the thread, not a CPU, frees with the nolock calls
//    and checks that nolock allocations say no), freeing each other's
//    allocations through per-thread mailboxes.
//  - Per thread, two POSIX timers (SIGEV_THREAD_ID) fire the configured
//    IRQ-class and NMI-class signals (interrupts_config()) at instants that
//    have nothing to do with what the thread is doing, at `irq_rate` and
//    `nmi_rate` per second over all threads together (each re-armed now and
//    then with a jittered period). The handlers run seeded nolock workloads
//    (IRQs also kGfpAtomic spinning calls); they allocate nothing from
//    malloc, take no lock but anyctx trylocks and spinlocks the library
//    allows in IRQ context, and use no stdio.
//  - Every allocation is stamped with a pattern derived from its address
//    and a serial; it is checked before every free and whenever it is
//    verified (content oracle). Nolock pages and kGfpZero memory must come
//    back zeroed.
//  - Watchdog: a monitor thread watches each CPU's task progress. A CPU that
//    makes none for `watchdog_seconds` gets every CPU dumped to stderr
//    (worker, CPU id, state, op and site per context level, the locks it
//    holds as the lock sites say, the spinlock it spins on and that lock's
//    owner CPU), then a fatal Report "watchdog: ..." naming the suspected
//    cycle (A waits on a lock held by B, B on one held by A), a
//    self-deadlock (a CPU waits on a lock its own CPU holds), or a lock that
//    its holder never releases. The final phase is watched too: no hang
//    outlives the watchdog.
//  - At the end: timers deleted (a signal already queued is delivered and
//    ignored), every thread frees what it holds, drains and goes offline;
//    then, on a last CPU, mailboxes are emptied, slab, stock and pcp caches
//    drained, and the oracles run: page, slab and memcg invariants; liveness
//    (no deferred page or object, a nolock allocation succeeds,
//    zone_free_pages() == arena_pages(), every cgroup at usage 0, no slab
//    object in use); conservation (every page allocation freed). A failure
//    is a fatal Report; run_stress() returns only when all hold. The
//    allocator is shut down on return (the next user initialises its own).
//  - Not deterministic: threads and timers run free. The seed fixes each
//    thread's choices (per context level), not the interleaving.
// Context: task, on a thread that is not a CPU, with no other anyctx user in
// the process (it initialises the page allocator and slab itself).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "anyctx/ctx/config.h"

namespace anyctx::harness {

// Test seams: each makes the watchdog's condition true on purpose, so a
// test can show that it fires instead of hanging. The stress tool's
// --test-seam sets one; nothing else does.
enum class StressSeam : std::uint8_t {
  kNone,
  // Worker 0 takes the spinlock "stress.seam_a" and never releases it;
  // worker 1 then waits for it forever.
  kLockNeverReleased,
  // Worker 0 takes "stress.seam_a" then "stress.seam_b", worker 1 takes them
  // in the opposite order, each waiting until the other holds its first.
  kAbbaDeadlock,
};

struct StressOptions {
  double seconds = 10;
  int threads = 0;             // 0: one per core (at least 1, at most kMaxCpus - 1)
  double irq_rate = 20000;     // IRQ-class signals per second, all threads together
  double nmi_rate = 5000;      // NMI-class signals per second, all threads together
  std::uint64_t seed = 1;
  double watchdog_seconds = 10;
  std::size_t arena_pages = 4096;
  StressSeam seam = StressSeam::kNone;
};

// The entry points whose outcome is counted per context level.
enum class StressApi : std::uint8_t {
  kAllocPages,        // spinning
  kAllocPagesNolock,
  kKmalloc,           // spinning
  kKmallocNolock,
  kCharge,            // memcg_try_charge, spinning gfp
  kChargeNolock,      // memcg_try_charge, gfp without reclaim bits
  kCount
};
inline constexpr int kStressApis = static_cast<int>(StressApi::kCount);
const char* stress_api_name(StressApi api);

// [context]: 0 task, 1 irq, 2 nmi (ContextLevel).
struct StressCounts {
  std::uint64_t interrupts[3] = {};  // handler runs (task: 0)
  std::uint64_t ops[3] = {};         // workload ops completed
  std::uint64_t ok[3][kStressApis] = {};
  std::uint64_t failed[3][kStressApis] = {};
  std::uint64_t mailbox_posts = 0;   // allocations handed to another CPU's mailbox
  std::uint64_t mailbox_frees = 0;   // allocations freed by the CPU that took them from a mailbox
  std::uint64_t shared_refs = 0;     // page references handed to another CPU (put_page there)
  std::uint64_t cpu_cycles = 0;      // CPU offline + online
  std::uint64_t offline_frees = 0;   // nolock frees by a thread between two CpuScopes (not a CPU)
  std::uint64_t mask_repairs = 0;    // TSan only: IRQ/NMI signals found blocked at a task op boundary, unblocked
};

struct StressResult {
  StressOptions options;       // as run (threads resolved)
  int pcp_batch = 0, pcp_high = 0;
  double elapsed_seconds = 0;  // start of the workload to the last thread offline
  StressCounts counts;
  std::uint64_t interrupts_dropped = 0;  // arrived while a thread was not a CPU
  std::uint64_t pages_deferred = 0;      // page blocks pushed (zone.lock busy) or parked (nolock trims)
  std::uint64_t pages_taken = 0;         // parked blocks nolock refills took
  std::uint64_t slab_deferred = 0;       // kfree_nolock objects deferred
  std::uint64_t memcg_events = 0;        // limit-event notifications delivered
  double longest_stall_seconds = 0;      // longest time a CPU made no task progress
  int longest_stall_worker = -1;
};

// Runs the stress; aborts with a Report when an oracle or the watchdog
// fires. Context: task, not a CPU. Return: the counts.
StressResult run_stress(const StressOptions& options);

// The counts as a table: interrupts delivered and ops per second per
// context, then nolock (and spinning) calls that succeeded / failed per
// context. Return: text ending in a newline.
std::string format_stress_table(const StressResult& result);

// --- the watchdog's diagnosis (exposed for tests) ---------------------------

// One CPU as the watchdog sees it when some CPU stalls.
struct StallView {
  int worker = -1;
  int cpu = kNoCpu;
  bool stalled = false;
  double stalled_seconds = 0;
  const char* level = "task";   // the context level of the innermost spin, or of the last site
  const char* site = nullptr;   // the last site at that level, nullptr when none
  const void* lock = nullptr;   // the spinlock it spins on, nullptr when none
  const char* lock_name = nullptr;
  int lock_owner = kNoCpu;      // Spinlock::owner_cpu() of `lock`
};

// One context level's spin as the watchdog samples it.
struct LevelSpin {
  bool fresh = false;   // the level hit SpinWait recently: it spins now
  double seconds = 0;   // how long this spin has gone on (since the level began spinning on this lock)
};

// Which level's spin explains a CPU that has made no progress for
// `stalled_seconds`. Interrupts keep arriving on a CPU whose task spins
// forever, and each may spin for a moment on a busy lock of its own: such a
// spin is younger than the stall and returns. The frame stuck in a spin has
// spun for about as long as the CPU has stalled. Return: the innermost fresh
// spin that has lasted at least half the stall; else the fresh spin that
// has lasted longest (the innermost of equals); else -1. `spins` is indexed
// by level (task, irq, nmi).
int explaining_spin(std::span<const LevelSpin> spins, double stalled_seconds);

// Return: the text of the watchdog's report about `views[stalled]` (through
// a CPU spinning on a lock it holds, or another stalled spinner, when it
// spins on no lock itself), starting
// with its kind: "suspected cycle: cpu 0 (task) waits on 'X' held by cpu 1;
// cpu 1 (task) waits on 'Y' held by cpu 0", "self-deadlock: ...", "lock
// never released: ...", or "no progress: ...".
std::string diagnose_stall(std::span<const StallView> views, std::size_t stalled);

}  // namespace anyctx::harness
