// The deterministic executor. Map of this file:
//   state        per-run globals: slots, CPUs, injections, locks, trace
//   turn         who runs: one atomic word, futex sleeps
//   reports      oracle failures and the step they happened in
//   shadow       live allocations, overlap and content checks
//   ops          one op in one context, legalised against the state
//   interrupts   injections: pending queues and the signal-side handler
//   site hook    injections, switches, spin hand-over, deadlock detection
//   cpus         the threads, quiesce, final oracles
#include "harness/executor.h"

#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <optional>
#include <string_view>
#include <thread>
#include <unordered_map>

#include "anyctx/ctx/context.h"
#include "anyctx/ctx/cpu.h"
#include "anyctx/ctx/interrupt.h"
#include "anyctx/ctx/report.h"
#include "anyctx/ctx/site.h"
#include "anyctx/lock/local_lock.h"
#include "anyctx/lock/spinlock.h"
#include "anyctx/lock/validator.h"
#include "anyctx/memcg/memcg.h"
#include "anyctx/page/fault.h"
#include "anyctx/page/page_alloc.h"
#include "anyctx/slab/slab.h"
#include "harness/bytes.h"
#include "harness/feedback.h"
#include "harness/interleave.h"
#include "harness/planner.h"
#include "harness/text.h"

namespace anyctx::harness {
namespace {

// --- state -----------------------------------------------------------------------

enum class SlotKind : std::uint8_t { kEmpty, kReserved, kPage, kObject, kCharge };

// A slot holds a page block (page, order, refs), a kmalloc object (object,
// bytes) or a memcg charge (cgroup, pages).
struct Slot {
  SlotKind kind = SlotKind::kEmpty;
  Page* page = nullptr;
  unsigned order = 0;
  int refs = 0;
  std::uint8_t pattern = 0;
  unsigned char* object = nullptr;
  std::size_t bytes = 0;
  MemCgroup* cgroup = nullptr;
  unsigned pages = 0;
};

// The program's cgroups: the root and three children (A, A/B, C). They live
// as long as the process (so does the allocator); a run leaves them empty.
MemCgroup* cgroup_of(int index) {
  static MemCgroup a("harness.A");
  static MemCgroup b("harness.A.B", a);
  static MemCgroup c("harness.C");
  MemCgroup* all[kCgroups] = {root_mem_cgroup(), &a, &b, &c};
  return all[index];
}

constexpr int kMaxScopesPerFrame = 4;

// Where a frame is, for reports: the task frame of a CPU or an injection.
struct Frame {
  int injection = -1;  // -1: the CPU's own ops
  int op = -1;
  OpKind kind = OpKind::kAllocPages;
  std::uint8_t held = 0;  // HeldClass bits this frame's sites say it holds
};

constexpr int kMaxFrames = 4;  // task, irq, nmi (+ one spare)

struct CpuState {
  int index = 0;
  bool done = false;
  bool in_op = false;      // inside a top-level op (not at a boundary)
  bool spinning = false;   // last event was kSpinWait
  bool resumed_inside = false;  // switched out and back inside a section it still holds
  const Spinlock* spin_lock = nullptr;
  int drain_waits = 0;     // kPcpDrainWait events in a row
  int anyctx_cpu = -1;     // its CpuScope's id while online
  int depth = 0;           // frames in use
  Frame frames[kMaxFrames];
  int pct_priority = 0;    // PCT: the highest priority that can run runs
};

struct LockModel {
  int cpu = -1;    // holder's program CPU, -1 = free
  int frame = -1;  // holder's frame depth on that CPU
};

struct LocalLockSlot {
  LocalTryLock lock{"harness.L"};
};

// The library layers a run can reach.
enum Layers : unsigned { kLayerPage = 1, kLayerSlab = 2, kLayerMemcg = 4 };

struct Exec {
  const TargetSpec* target = nullptr;
  const Program* program = nullptr;
  RunOptions options;
  int ncpus = 1;
  unsigned layers = 0;     // checked after each op (layers_of the target)
  unsigned touched = 0;    // layers this run's ops reached (checked at the end)
  bool active = false;     // the site hook acts
  bool quiescing = false;  // the site hook only counts
  Slot slots[kSlots];
  CpuState cpus[kMaxProgramCpus];
  bool fired[kMaxInjections] = {};
  int hits[kMaxInjections] = {};
  std::size_t next_switch = 0;
  int anchor_hits[kMaxAnchoredSwitches] = {};
  std::uint32_t pct_changes[kMaxPctDepth] = {};  // events where the running CPU drops, ascending
  int pct_nchanges = 0;
  int pct_next_change = 0;
  std::uint64_t events = 0;
  std::uint64_t allocator_ops = 0;          // ops run that can change allocator state
  std::uint64_t checked_allocator_ops = 0;  // allocator_ops at the last per-op check
  bool sabotaged = false;
  std::uint64_t trace = 0;
  LockModel spin_model[2];
  LockModel local_model[kMaxProgramCpus];
  RunStats stats;
};

Exec g;
Spinlock g_lock_a{"harness.A"};
Spinlock g_lock_b{"harness.B"};
PerCpu<LocalLockSlot> g_local_locks;

// The program locks A, B and L are taken in any order and context by design:
// the executor's lock model (spin_lock_may_wait, op_local) decides when a
// lock() may wait, and under Sabotage::kNoLockLegalization its own global
// deadlock report is the oracle. So the lock validator leaves their order
// and IRQ safety to the executor (it still reports them inside a nolock
// call). Set before main: the class table is constant-initialised.
[[maybe_unused]] const bool g_program_locks_unchecked = set_lock_class_unchecked("harness.A") &&
                                                        set_lock_class_unchecked("harness.B") &&
                                                        set_lock_class_unchecked("harness.L");

thread_local constinit int t_cpu = -1;  // this thread's program CPU, -1 = none

// Injections raised but not yet run, per kind, on this thread.
struct Pending {
  int items[kMaxInjections];
  int count = 0;
};
thread_local constinit Pending t_pending[2]{};

void trace(std::uint64_t a, std::uint64_t b = 0) {
  constexpr std::uint64_t kPrime = 1099511628211ull;
  g.trace = (g.trace ^ (a * 0x9e3779b97f4a7c15ull + b)) * kPrime;
}

// --- turn --------------------------------------------------------------------------

// Exactly one participant runs: the one g_turn names. Turns 0..3 are program
// CPUs, kMainTurn the thread in run_program, kExitTurnBase + i lets CPU i
// (i > 0) go offline, kServeTurnBase + i lends finished CPU i a turn to take
// the interrupts sent to it. Each waiting thread sleeps on its own futex word
// (a sequence bumped by every turn handed to it), so a hand-off wakes exactly
// one thread. The thread in run_program is CPU 0's, so kMainTurn wakes CPU
// 0's word.
constexpr int kMainTurn = -2;
constexpr int kExitTurnBase = 100;   // kExitTurnBase + i: CPU i may go offline
constexpr int kServeTurnBase = 200;  // kServeTurnBase + i: finished CPU i takes its interrupts

std::atomic<int> g_turn{kMainTurn};
std::atomic<int> g_wake[kMaxProgramCpus];  // per waiting thread: CPU i's (main's is CPU 0's)

std::atomic<int>& wake_word(int turn) {
  if (turn == kMainTurn) return g_wake[0];
  return g_wake[turn >= kServeTurnBase  ? turn - kServeTurnBase
                : turn >= kExitTurnBase ? turn - kExitTurnBase
                                        : turn];
}

long futex(std::atomic<int>* addr, int op, int value) {
  return syscall(SYS_futex, reinterpret_cast<int*>(addr), op, value, nullptr, nullptr, 0);
}

void give_turn(int to) {
  g_turn.store(to, std::memory_order_release);
  std::atomic<int>& w = wake_word(to);
  w.fetch_add(1, std::memory_order_release);
  futex(&w, FUTEX_WAKE_PRIVATE, 1);
}

void wait_turn(int me) {
  std::atomic<int>& w = wake_word(me);
  for (;;) {
    int seen = w.load(std::memory_order_acquire);  // before the check: no wake-up is lost
    if (g_turn.load(std::memory_order_acquire) == me) return;
    futex(&w, FUTEX_WAIT_PRIVATE, seen);
  }
}

// A program CPU without the turn is not running, so an interrupt another CPU
// sends it (memcg's drain request) must wait until it runs again: its
// interrupt signals stay blocked from before it hands the turn over until it
// has the turn back, and the kernel delivers what arrived meanwhile the
// moment the mask is restored — where it resumes, the same place every run.
class InterruptsHeld {
 public:
  InterruptsHeld() {
    InterruptConfig config = interrupts_config();
    sigset_t both;
    sigemptyset(&both);
    sigaddset(&both, config.irq_signal);
    sigaddset(&both, config.nmi_signal);
    pthread_sigmask(SIG_BLOCK, &both, &previous_);
  }
  ~InterruptsHeld() { pthread_sigmask(SIG_SETMASK, &previous_, nullptr); }
  InterruptsHeld(const InterruptsHeld&) = delete;
  InterruptsHeld& operator=(const InterruptsHeld&) = delete;

 private:
  sigset_t previous_;
};

void note_resumed(int me, int site);

// Hands the CPU to `to` and sleeps until it comes back; `site` is where
// `me` leaves (note_resumed keys its feedback on it).
void switch_to(int me, int to, int site) {
  if (to == me) return;
  ++g.stats.switches;
  trace(0x5157, static_cast<std::uint64_t>(me) << 8 | static_cast<std::uint64_t>(to));
  InterruptsHeld held;
  give_turn(to);
  wait_turn(me);
  note_resumed(me, site);
}

// A finished CPU waits to go offline: CPU 0 (the thread in run_program)
// until every CPU has finished (kMainTurn), the others for their exit turn.
// Meanwhile a CPU waiting for it to serve a drain request lends it turns
// (on_drain_wait), as an idle CPU still takes interrupts. Return: true for
// such a turn, false for the turn to go offline.
bool wait_exit_or_serve_turn(int me) {
  std::atomic<int>& w = wake_word(me);
  const int exit_turn = me == 0 ? kMainTurn : kExitTurnBase + me;
  for (;;) {
    int seen = w.load(std::memory_order_acquire);
    int turn = g_turn.load(std::memory_order_acquire);
    if (turn == exit_turn) return false;
    if (turn == kServeTurnBase + me) return true;
    futex(&w, FUTEX_WAIT_PRIVATE, seen);
  }
}

int next_runnable(int me);

// Finished CPU `me` has a lent turn: its interrupt signals, held since it
// finished, run now (runnable meanwhile, so a switch inside a handler comes
// back to it; inside an op meanwhile, so no other CPU checks the allocator
// under a handler); then the turn goes on.
void serve_interrupts(int me) {
  g_turn.store(me, std::memory_order_relaxed);
  CpuState& cpu = g.cpus[me];
  cpu.done = false;
  cpu.in_op = true;
  trace(0x5e7e, static_cast<std::uint64_t>(me));
  InterruptConfig config = interrupts_config();
  sigset_t both;
  sigemptyset(&both);
  sigaddset(&both, config.irq_signal);
  sigaddset(&both, config.nmi_signal);
  pthread_sigmask(SIG_UNBLOCK, &both, nullptr);  // what is pending runs before this returns
  pthread_sigmask(SIG_BLOCK, &both, nullptr);
  cpu.in_op = false;
  cpu.done = true;
  int to = next_runnable(me);
  give_turn(to >= 0 ? to : kMainTurn);
}

// Return: whether CPU `c` waits for a lock that is still held.
bool blocked(const CpuState& c) { return c.spinning && c.spin_lock != nullptr && c.spin_lock->is_locked(); }

// Return: the unfinished CPU other than `me` with the highest PCT priority,
// preferring one that is not blocked, or -1.
int pct_pick_other(int me) {
  int best = -1;
  for (int c = 0; c < g.ncpus; ++c) {
    const CpuState& cpu = g.cpus[c];
    if (c == me || cpu.done) continue;
    if (best < 0 || blocked(g.cpus[best]) > blocked(cpu) ||
        (blocked(g.cpus[best]) == blocked(cpu) && cpu.pct_priority > g.cpus[best].pct_priority))
      best = c;
  }
  return best;
}

// Return: the next unfinished CPU after `me` (round robin; under PCT the
// highest priority), or -1.
int next_runnable(int me) {
  if (g.program->pct.on()) return pct_pick_other(me);
  for (int i = 1; i <= g.ncpus; ++i) {
    int c = (me + i) % g.ncpus;
    if (c != me && !g.cpus[c].done) return c;
  }
  return -1;
}

// PCT set-up (Burckhardt et al.): distinct random priorities depth..depth+n-1,
// and depth-1 change points drawn uniformly from events 1..steps; at the ith
// the running CPU's priority drops to depth-1-i, below every initial one.
void pct_start(const PctSpec& pct) {
  std::uint64_t state = 0x243f6a8885a308d3ull ^ pct.seed;
  auto next = [&state](std::uint32_t bound) {  // splitmix64, reduced to 0..bound-1
    std::uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return static_cast<std::uint32_t>((z ^ (z >> 31)) % bound);
  };
  int order[kMaxProgramCpus];
  for (int c = 0; c < g.ncpus; ++c) order[c] = c;
  for (int c = g.ncpus - 1; c > 0; --c) std::swap(order[c], order[next(static_cast<std::uint32_t>(c + 1))]);
  for (int c = 0; c < g.ncpus; ++c) g.cpus[order[c]].pct_priority = pct.depth + c;
  g.pct_nchanges = pct.depth - 1;
  for (int i = 0; i < g.pct_nchanges; ++i) g.pct_changes[i] = 1 + next(pct.steps);
  std::sort(g.pct_changes, g.pct_changes + g.pct_nchanges);
}

// --- reports --------------------------------------------------------------------------

void describe_step(Report& r) {
  if (t_cpu < 0 || g.program == nullptr) return;
  const CpuState& cpu = g.cpus[t_cpu];
  r << " [program cpu " << t_cpu << " (anyctx cpu " << current_cpu() << ")";
  for (int d = 0; d < cpu.depth; ++d) {
    const Frame& f = cpu.frames[d];
    r << (d == 0 ? ": " : " > ");
    if (f.injection >= 0) {
      const Injection& inj = g.program->injections[static_cast<std::size_t>(f.injection)];
      r << ctx_word(inj.kind) << " injection " << f.injection;
    } else {
      r << "task";
    }
    if (f.op >= 0) r << " op " << f.op << " " << op_name(f.kind);
  }
  r << "; event " << g.events << "]";
}

[[noreturn]] void fail(Report& r) {
  describe_step(r);
  r.fatal();
}

// Library reports get the step too: printed after them, before the abort.
void report_hook(std::string_view) {
  if (t_cpu < 0) return;
  Report r("harness step");
  r << "the report above happened at";
  describe_step(r);
  r.emit();
}

// --- shadow --------------------------------------------------------------------------

constexpr std::size_t kPatternBytes = 64;

std::uint8_t pattern_for(int slot) {
  return static_cast<std::uint8_t>((slot * 37 + g.events * 11) | 1);
}

// The bytes a slot's allocation covers, for overlap checks.
struct Range {
  std::uintptr_t begin, end;
};

Range range_of(const Slot& s) {
  if (s.kind == SlotKind::kPage) {
    auto b = reinterpret_cast<std::uintptr_t>(page_address(s.page));
    return Range{b, b + (kPageSize << s.order)};
  }
  auto b = reinterpret_cast<std::uintptr_t>(s.object);
  return Range{b, b + s.bytes};
}

bool holds_memory(const Slot& s) { return s.kind == SlotKind::kPage || s.kind == SlotKind::kObject; }

void shadow_check_overlap(int slot_index, const Slot& fresh) {
  Range r = range_of(fresh);
  for (int i = 0; i < kSlots; ++i) {
    const Slot& s = g.slots[i];
    if (!holds_memory(s)) continue;
    Range o = range_of(s);
    if (r.begin < o.end && o.begin < r.end) {
      Report rep("harness: shadow map");
      rep << "new allocation " << reinterpret_cast<const void*>(r.begin) << " (" << r.end - r.begin
          << " bytes) for slot " << slot_index << " overlaps the live allocation "
          << reinterpret_cast<const void*>(o.begin) << " (" << o.end - o.begin << " bytes) of slot " << i;
      fail(rep);
    }
  }
}

// The checked bytes: all of an object; the head and tail of each page.
template <class Fn>
void for_each_checked(const Slot& s, Fn&& fn) {
  if (s.kind == SlotKind::kObject) {
    fn(s.object, s.bytes);
    return;
  }
  auto* base = static_cast<unsigned char*>(page_address(s.page));
  for (std::size_t i = 0; i < (std::size_t{1} << s.order); ++i) {
    fn(base + i * kPageSize, kPatternBytes);
    fn(base + (i + 1) * kPageSize - kPatternBytes, kPatternBytes);
  }
}

void shadow_expect(int slot_index, const Slot& s, std::uint8_t want, const char* what) {
  for_each_checked(s, [&](unsigned char* p, std::size_t n) {
    std::size_t k = first_mismatch(p, n, want);
    if (k == n) return;
    Report r("harness: shadow map");
    r << "slot " << slot_index << " (" << (s.kind == SlotKind::kPage ? "page block at pfn " : "object at ");
    if (s.kind == SlotKind::kPage) r << page_to_pfn(s.page) << " order " << s.order;
    else r << static_cast<const void*>(s.object) << ", " << s.bytes << " bytes";
    r << "): " << what << ": byte "
      << static_cast<std::size_t>(p + k - reinterpret_cast<unsigned char*>(range_of(s).begin)) << " is "
      << static_cast<unsigned>(p[k]) << ", expected " << static_cast<unsigned>(want);
    fail(r);
  });
}

void shadow_fill(Slot& s) {
  for_each_checked(s, [&](unsigned char* p, std::size_t n) { std::memset(p, s.pattern, n); });
}

void shadow_verify(int slot_index, const Slot& s) {
  shadow_expect(slot_index, s, s.pattern, "content changed while allocated");
}

// A new allocation: no overlap, zeroed when asked, then the pattern.
void shadow_adopt(int slot_index, Slot& s, bool zeroed) {
  shadow_check_overlap(slot_index, s);
  if (zeroed) shadow_expect(slot_index, s, 0, "should be zeroed");
  s.pattern = pattern_for(slot_index);
  shadow_fill(s);
}

// --- ops --------------------------------------------------------------------------

Ctx current_ctx() {
  ContextLevel l = context_level();
  return l == ContextLevel::kTask ? Ctx::kTask : l == ContextLevel::kIrq ? Ctx::kIrq : Ctx::kNmi;
}

// Return: whether a frame of this CPU holds a program lock (A, B or L).
bool holds_program_lock() {
  return g.local_model[t_cpu].cpu == t_cpu || g.spin_model[0].cpu == t_cpu || g.spin_model[1].cpu == t_cpu;
}

// A task frame holding a lock may not reclaim: reclaim waits for the other
// CPUs (pcp drain requests), whose interrupt handlers may want that lock —
// the userspace "sleeping while atomic" (a program-level rule).
Gfp spinning_gfp(Ctx ctx) { return ctx == Ctx::kTask && !holds_program_lock() ? kGfpKernel : kGfpAtomic; }

bool op_alloc_pages(const Op& op, Ctx ctx) {
  Slot& s = g.slots[op.slot];
  if (s.kind != SlotKind::kEmpty) return false;
  if (op.arg & kFlagAccount) g.touched |= kLayerMemcg;
  s.kind = SlotKind::kReserved;  // an interrupt inside the call must not take it
  Page* page;
  if (op.path == Path::kNolock && g.options.sabotage != Sabotage::kSpinningInNmi) {
    page = alloc_pages_nolock((op.arg & kFlagAccount) ? kGfpAccount : Gfp{}, op.order);
  } else {
    Gfp gfp = spinning_gfp(ctx);
    if (op.arg & kFlagZero) gfp |= kGfpZero;
    if (op.arg & kFlagAccount) gfp |= kGfpAccount;
    page = alloc_pages(gfp, op.order);
  }
  trace(0xa110c, page ? page_to_pfn(page) + 1 : 0);
  if (page == nullptr) {
    s.kind = SlotKind::kEmpty;
    return true;
  }
  Slot fresh;
  fresh.kind = SlotKind::kPage;
  fresh.page = page;
  fresh.order = op.order;
  fresh.refs = 1;
  s.kind = SlotKind::kEmpty;
  shadow_adopt(op.slot, fresh, op.path == Path::kNolock || (op.arg & kFlagZero));
  s = fresh;
  return true;
}

bool op_free_pages(const Op& op, Ctx ctx) {
  Slot& s = g.slots[op.slot];
  if (s.kind != SlotKind::kPage) return false;
  shadow_verify(op.slot, s);
  if (s.refs > 1) {  // shared: drop one reference (there is no nolock put)
    if (op.path == Path::kNolock || ctx == Ctx::kNmi) return false;
    --s.refs;
    put_page(s.page);
    return true;
  }
  Slot taken = s;
  s = Slot{};  // out of the slot before the call: an interrupt must not see it
  trace(0xf4ee, page_to_pfn(taken.page));
  if (op.path == Path::kNolock && g.options.sabotage != Sabotage::kSpinningInNmi) free_pages_nolock(taken.page, taken.order);
  else free_pages(taken.page, taken.order);
  return true;
}

bool op_get_page(const Op& op) {
  Slot& s = g.slots[op.slot];
  if (s.kind != SlotKind::kPage || s.refs >= 8) return false;
  get_page(s.page);
  ++s.refs;
  return true;
}

bool op_put_page(const Op& op) {
  Slot& s = g.slots[op.slot];
  if (s.kind != SlotKind::kPage) return false;
  shadow_verify(op.slot, s);
  if (--s.refs > 0) {
    put_page(s.page);
    return true;
  }
  Slot taken = s;
  s = Slot{};
  put_page(taken.page);  // the last reference: frees
  return true;
}

bool op_write_verify(const Op& op) {
  Slot& s = g.slots[op.slot];
  if (!holds_memory(s)) return false;
  shadow_verify(op.slot, s);
  s.pattern = pattern_for(op.slot);
  shadow_fill(s);
  return true;
}

bool op_kmalloc(const Op& op, Ctx ctx) {
  Slot& s = g.slots[op.slot];
  if (s.kind != SlotKind::kEmpty) return false;
  g.touched |= kLayerSlab | (op.arg & kFlagAccount ? kLayerMemcg : 0u);
  s.kind = SlotKind::kReserved;
  std::size_t bytes = kKmallocSizes[op.order];
  Gfp flags = (op.arg & kFlagZero ? kGfpZero : Gfp{}) | (op.arg & kFlagAccount ? kGfpAccount : Gfp{});
  void* p = op.path == Path::kNolock ? kmalloc_nolock(bytes, flags) : kmalloc(bytes, spinning_gfp(ctx) | flags);
  trace(0x3a110c, p ? reinterpret_cast<std::uintptr_t>(p) - reinterpret_cast<std::uintptr_t>(page_address(pfn_to_page(0))) + 1 : 0);
  s.kind = SlotKind::kEmpty;
  if (p == nullptr) return true;
  Slot fresh;
  fresh.kind = SlotKind::kObject;
  fresh.object = static_cast<unsigned char*>(p);
  fresh.bytes = bytes;
  shadow_adopt(op.slot, fresh, (op.arg & kFlagZero) != 0);
  s = fresh;
  return true;
}

bool op_kfree(const Op& op) {
  Slot& s = g.slots[op.slot];
  if (s.kind != SlotKind::kObject) return false;
  shadow_verify(op.slot, s);
  Slot taken = s;
  s = Slot{};
  if (op.path == Path::kNolock) kfree_nolock(taken.object); else kfree(taken.object);
  return true;
}

bool op_memcg_set_max(const Op& op) {
  MemCgroup* cg = cgroup_of(op.order);
  g.touched |= kLayerMemcg;
  if (cg->is_root()) return false;  // the root has no limit
  std::uint32_t limit = kMemcgLimits[op.arg];
  cg->set_max(limit == kLimitUnlimited ? kMemcgUnlimited : limit);
  return true;
}

bool op_memcg_charge(const Op& op, Ctx ctx) {
  Slot& s = g.slots[op.slot];
  if (s.kind != SlotKind::kEmpty) return false;
  g.touched |= kLayerMemcg;
  s.kind = SlotKind::kReserved;
  MemCgroup* cg = cgroup_of(op.order);
  bool charged = memcg_try_charge(cg, op.path == Path::kNolock ? Gfp{} : spinning_gfp(ctx), op.arg);
  trace(0xc6a, charged ? 1 : 0);
  s.kind = SlotKind::kEmpty;
  if (!charged) return true;
  s.kind = SlotKind::kCharge;
  s.cgroup = cg;
  s.pages = op.arg;
  return true;
}

bool op_memcg_uncharge(const Op& op) {
  Slot& s = g.slots[op.slot];
  if (s.kind != SlotKind::kCharge) return false;
  Slot taken = s;
  s = Slot{};
  memcg_uncharge(taken.cgroup, taken.pages);
  return true;
}

// --- lock ops against the model --------------------------------------------------

int frame_id() { return g.cpus[t_cpu].depth - 1; }

[[noreturn]] void lock_model_mismatch(const char* lock, const char* op, bool got, const LockModel& m) {
  Report r("harness: lock model");
  r << op << " " << lock << " returned " << got << " but the model says the lock is ";
  if (m.cpu < 0) r << "free";
  else r << "held by program cpu " << m.cpu << " frame " << m.frame;
  fail(r);
}

Spinlock& spin_of(const Op& op) { return op.order == 0 ? g_lock_a : g_lock_b; }
const char* spin_name(const Op& op) { return op.order == 0 ? "A" : "B"; }

// lock() is legal when no frame of this CPU holds the lock (else it would
// self-deadlock) and this CPU holds no lock later in the order A < B (else
// two CPUs could deadlock ABBA): a program-level rule, not a library one.
bool spin_lock_may_wait(const Op& op) {
  if (g.options.sabotage == Sabotage::kNoLockLegalization) return true;
  const LockModel& m = g.spin_model[op.order];
  if (m.cpu == t_cpu) return false;
  return !(op.order == 0 && g.spin_model[1].cpu == t_cpu);
}

bool op_spin(const Op& op, Ctx ctx) ANYCTX_NO_TSA {
  LockModel& m = g.spin_model[op.order];
  Spinlock& l = spin_of(op);
  switch (op.kind) {
    case OpKind::kSpinLock:
      if (ctx != Ctx::kNmi && spin_lock_may_wait(op)) {
        l.lock();
        m = LockModel{t_cpu, frame_id()};
        return true;
      }
      [[fallthrough]];
    case OpKind::kSpinTryLock: {
      bool expect = m.cpu < 0;
      bool got = l.try_lock();
      if (got != expect) lock_model_mismatch(spin_name(op), "spin_trylock", got, m);
      if (got) m = LockModel{t_cpu, frame_id()};
      return true;
    }
    case OpKind::kSpinUnlock:
      if (m.cpu != t_cpu || m.frame != frame_id()) return false;
      m = LockModel{};
      l.unlock();
      return true;
    default:
      return false;
  }
}

// The local trylock hits its sites (kLocalLockHeld, kLocalLockRelease) while
// it is held, inside lock()/unlock(): the model says "held" from before the
// call until after it, so an interrupt at those sites sees it held.
bool op_local(const Op& op, Ctx ctx) ANYCTX_NO_TSA {
  LockModel& m = g.local_model[t_cpu];
  LocalTryLock& l = g_local_locks.this_cpu().lock;
  switch (op.kind) {
    case OpKind::kLocalLock:
      if (ctx != Ctx::kNmi && m.cpu < 0) {
        m = LockModel{t_cpu, frame_id()};
        l.lock();
        return true;
      }
      [[fallthrough]];
    case OpKind::kLocalTryLock: {
      LockModel before = m;
      bool expect = before.cpu < 0;
      if (expect) m = LockModel{t_cpu, frame_id()};
      bool got = l.try_lock();
      if (got != expect) lock_model_mismatch("L", "local_trylock", got, before);
      return true;
    }
    case OpKind::kLocalUnlock:
      if (m.cpu != t_cpu || m.frame != frame_id()) return false;
      l.unlock();
      m = LockModel{};
      return true;
    default:
      return false;
  }
}

// A frame ends holding locks: release them, B before A (reverse order). The
// model, not the static analysis, knows who holds what (ANYCTX_NO_TSA).
void release_frame_locks() ANYCTX_NO_TSA {
  int f = frame_id();
  if (g.local_model[t_cpu].cpu == t_cpu && g.local_model[t_cpu].frame == f) {
    g_local_locks.this_cpu().lock.unlock();
    g.local_model[t_cpu] = LockModel{};
  }
  for (int i = 1; i >= 0; --i) {
    if (g.spin_model[i].cpu == t_cpu && g.spin_model[i].frame == f) {
      g.spin_model[i] = LockModel{};
      (i == 0 ? g_lock_a : g_lock_b).unlock();
    }
  }
}

void site_event(int site);
void cycle_cpu();
std::uint8_t held_by(int c);

bool run_op(const Op& op, Ctx ctx) {
  switch (op.kind) {
    case OpKind::kAllocPages: return op_alloc_pages(op, ctx);
    case OpKind::kFreePages: return op_free_pages(op, ctx);
    case OpKind::kGetPage: return op_get_page(op);
    case OpKind::kPutPage: return op_put_page(op);
    case OpKind::kWriteVerify: return op_write_verify(op);
    case OpKind::kDrainLocal: drain_local_pages(); return true;
    case OpKind::kDrainAll:
      if (holds_program_lock()) return false;  // it waits for the other CPUs (see spinning_gfp)
      drain_all_pages();
      return true;
    case OpKind::kCpuCycle:
      // A CPU cannot go offline inside a local-lock section.
      if (g.local_model[t_cpu].cpu == t_cpu) return false;
      cycle_cpu();
      return true;
    case OpKind::kKmalloc: return op_kmalloc(op, ctx);
    case OpKind::kKfree: return op_kfree(op);
    case OpKind::kMemcgSetMax: return op_memcg_set_max(op);
    case OpKind::kMemcgCharge: return op_memcg_charge(op, ctx);
    case OpKind::kMemcgUncharge: return op_memcg_uncharge(op);
    case OpKind::kMemcgSwitch: return false;  // run_frame opens the scope
    case OpKind::kSpinLock: case OpKind::kSpinTryLock: case OpKind::kSpinUnlock: return op_spin(op, ctx);
    case OpKind::kLocalLock: case OpKind::kLocalTryLock: case OpKind::kLocalUnlock: return op_local(op, ctx);
    case OpKind::kCount: break;
  }
  return false;
}

// Return: whether `kind` can change allocator state (worth an invariant check).
bool touches_allocator(OpKind kind) {
  switch (kind) {
    case OpKind::kWriteVerify: case OpKind::kMemcgSwitch: case OpKind::kSpinLock:
    case OpKind::kSpinTryLock: case OpKind::kSpinUnlock: case OpKind::kLocalLock: case OpKind::kLocalTryLock:
    case OpKind::kLocalUnlock:
      return false;
    default:
      return true;
  }
}

// What is checked after each top-level op (the cheap form): the page
// allocator's free lists — states, alignment, overlap, coalescing, counts;
// O(free blocks), see check_free_lists() — whenever the target can touch
// pages (slab pages and accounted pages included). The full forms — every
// frame of the arena in exactly one place, every slab object, every CPU's
// memcg stock — run at the end of every program (final_oracles).
// Return: the layers checked after each op.
unsigned layers_of(const TargetSpec& t) {
  for (OpKind k : t.task_ops)
    if (k == OpKind::kAllocPages || k == OpKind::kKmalloc) return kLayerPage;
  return 0;
}

enum class CheckDepth { kCheap, kFull };

// Page, slab and memcg invariants; kCheap checks the page layer's free lists
// only. Context: task, with every other CPU between ops (kCheap) or
// quiesced (kFull). Return: empty when they hold, else the first violation.
std::string invariant_violation(unsigned layers, CheckDepth depth) {
  if (layers & kLayerPage) {
    InvariantResult r = depth == CheckDepth::kFull ? check_invariants() : check_free_lists();
    if (!r.ok) return "page: " + r.what;
  }
  if (depth == CheckDepth::kCheap) return {};
  if (layers & kLayerSlab)
    if (InvariantResult r = slab_check_invariants(); !r.ok) return "slab: " + r.what;
  if (layers & kLayerMemcg)
    if (MemcgInvariantResult r = memcg_check_invariants(); !r.ok) return "memcg: " + r.what;
  return {};
}

// Return: whether every CPU but this one is between ops (none is inside a
// library call, so the allocator can be checked).
bool others_idle() {
  for (int c = 0; c < g.ncpus; ++c)
    if (c != t_cpu && g.cpus[c].in_op) return false;
  return true;
}

// Runs a frame's ops: the CPU's own (injection -1) or an injection's.
void run_frame(const std::vector<Op>& ops, int injection, Ctx ctx) {
  CpuState& cpu = g.cpus[t_cpu];
  int depth = cpu.depth++;
  cpu.frames[depth] = Frame{injection, -1, OpKind::kAllocPages};
  // memcg_switch opens a scope that lasts to the end of this frame.
  std::optional<MemcgScope> scopes[kMaxScopesPerFrame];
  int nscopes = 0;
  for (std::size_t i = 0; i < ops.size(); ++i) {
    cpu.frames[depth].op = static_cast<int>(i);
    cpu.frames[depth].kind = ops[i].kind;
    if (injection < 0) cpu.in_op = true;  // from the boundary on: an injection there is inside the op
    site_event(kOpBoundary);
    bool ran;
    if (ops[i].kind == OpKind::kMemcgSwitch) {
      g.touched |= kLayerMemcg;
      ran = nscopes < kMaxScopesPerFrame;
      if (ran) scopes[nscopes++].emplace(*cgroup_of(ops[i].order));
    } else {
      ran = run_op(ops[i], ctx);
    }
    trace(0x0b, static_cast<std::uint64_t>(ops[i].kind) << 1 | (ran ? 1 : 0));
    ++(ran ? g.stats.ops_run : g.stats.ops_skipped);
    if (ran && touches_allocator(ops[i].kind)) ++g.allocator_ops;
    if (injection < 0) {
      cpu.in_op = false;
      // Checked when an op of any frame on any CPU (an interrupt's included)
      // reached the allocator since the last check.
      if (g.options.invariants_each_op && others_idle() && g.allocator_ops != g.checked_allocator_ops) {
        g.checked_allocator_ops = g.allocator_ops;
        if (std::string what = invariant_violation(g.layers, CheckDepth::kCheap); !what.empty()) {
          Report r("harness: invariants");
          r << what;
          fail(r);
        }
      }
    }
  }
  cpu.frames[depth].op = -1;
  while (nscopes > 0) scopes[--nscopes].reset();
  release_frame_locks();
  --cpu.depth;
}

// --- interrupts ---------------------------------------------------------------------

void interrupt_handler(InterruptKind kind) {
  if (t_cpu < 0 || !g.active) return;
  Pending& q = t_pending[kind == InterruptKind::kNmi ? 1 : 0];
  // Run in arrival order; an injection raised meanwhile joins the queue.
  for (int i = 0; i < q.count; ++i) {
    int index = q.items[i];
    const Injection& inj = g.program->injections[static_cast<std::size_t>(index)];
    trace(0x1e0, static_cast<std::uint64_t>(index));
    run_frame(inj.ops, index, inj.kind);
  }
  q.count = 0;
}

void fire(int index) {
  const Injection& inj = g.program->injections[static_cast<std::size_t>(index)];
  g.fired[index] = true;
  ++g.stats.injections_fired;
  feedback::injection_fired(inj.site, inj.kind, inj.level);
  feedback::injected_holding(inj.site, held_by(t_cpu), inj.kind, inj.level);
  Pending& q = t_pending[inj.kind == Ctx::kNmi ? 1 : 0];
  q.items[q.count++] = index;
  if (inj.kind == Ctx::kNmi) raise_nmi(); else raise_irq();
}

// --- sabotage (test seams) ------------------------------------------------------------------

// Marks the top-most free frame allocated. Return: whether there was one.
bool corrupt_free_page() {
  for (std::size_t pfn = arena_pages(); pfn-- > 0;) {  // from the top: the last to be split
    Page* p = pfn_to_page(pfn);
    if (p->state.load() == PageState::kBuddy) {
      p->state.store(PageState::kAllocated);
      return true;
    }
  }
  return false;
}

// kThirdZoneListEdit: this op boundary is in an injection that landed at the
// 3rd hit of ZoneListEdit of its CPU (g.hits: the hits when it fired).
bool at_third_zone_list_edit() {
  const CpuState& cpu = g.cpus[t_cpu];
  if (cpu.depth < 2) return false;
  int index = cpu.frames[cpu.depth - 1].injection;
  if (index < 0) return false;
  const Injection& inj = g.program->injections[static_cast<std::size_t>(index)];
  return inj.site == static_cast<int>(Site::kZoneListEdit) && g.hits[index] == 3;
}

// kAtomicityCpu0Op1: CPU 1 at a task op boundary while CPU 0 is inside op 1
// (from its boundary to op 2's).
bool cpu1_inside_cpu0_op1() {
  if (t_cpu != 1 || g.ncpus < 2 || g.cpus[1].depth != 1) return false;
  const CpuState& c0 = g.cpus[0];
  return !c0.done && c0.depth >= 1 && c0.frames[0].op == 1;
}

// Applied at an op boundary (no allocator lock held) at or after the event.
// Return: whether it could be applied now (else it is tried at the next one).
bool apply_sabotage() {
  switch (g.options.sabotage) {
    case Sabotage::kCorruptLiveBlock:
      for (Slot& s : g.slots) {
        if (s.kind == SlotKind::kPage) {
          static_cast<unsigned char*>(page_address(s.page))[1] ^= 0xff;
          return true;
        }
      }
      return false;
    case Sabotage::kCorruptFreePage:
      return corrupt_free_page();
    case Sabotage::kThirdZoneListEdit:
      return at_third_zone_list_edit() && corrupt_free_page();
    case Sabotage::kAtomicityCpu0Op1:
      return cpu1_inside_cpu0_op1() && corrupt_free_page();
    case Sabotage::kLeakPage:
      if (current_ctx() != Ctx::kTask) return false;
      (void)alloc_pages(kGfpKernel, 0);
      return true;
    case Sabotage::kLockModelLie:
      g.spin_model[0] = LockModel{0, 0};
      return true;
    default:
      return true;
  }
}

// --- site hook ---------------------------------------------------------------------------

[[noreturn]] void report_global_deadlock() {
  Report r("harness: global deadlock");
  r << "every unfinished cpu spins:";
  for (int c = 0; c < g.ncpus; ++c) {
    const CpuState& cpu = g.cpus[c];
    if (cpu.done) continue;
    r << " program cpu " << c;
    if (cpu.spin_lock != nullptr) {
      r << " on '" << cpu.spin_lock->class_name() << "' held by anyctx cpu " << cpu.spin_lock->owner_cpu();
      if (SrcLoc taken = cpu.spin_lock->owner_site(); taken.known()) r << " (taken at " << taken << ")";
      r << ";";
    } else {
      r << " (lock unknown);";
    }
  }
  fail(r);
}

// A CPU spins on a held lock: hand over to a CPU that can make progress —
// one that is not spinning, or whose lock has been freed. When there is none,
// every unfinished CPU waits on a held lock: a global deadlock.
void on_spin_wait(int me) {
  CpuState& cpu = g.cpus[me];
  cpu.spinning = true;
  cpu.spin_lock = spinlock_spinning_on();
  if (cpu.spin_lock != nullptr && !cpu.spin_lock->is_locked()) return;  // freed meanwhile: retry
  if (g.program->pct.on()) {
    int c = pct_pick_other(me);
    if (c >= 0 && !blocked(g.cpus[c])) {
      switch_to(me, c, static_cast<int>(Site::kSpinWait));
      return;
    }
    report_global_deadlock();
  }
  for (int i = 1; i < g.ncpus; ++i) {
    int c = (me + i) % g.ncpus;
    const CpuState& other = g.cpus[c];
    if (other.done) continue;
    if (!other.spinning || other.spin_lock == nullptr || !other.spin_lock->is_locked()) {
      switch_to(me, c, static_cast<int>(Site::kSpinWait));
      return;
    }
  }
  report_global_deadlock();
}

// Return: the program CPU whose CpuScope has id `anyctx_cpu`, or -1.
int program_cpu_of(int anyctx_cpu) {
  for (int c = 0; c < g.ncpus; ++c)
    if (g.cpus[c].anyctx_cpu == anyctx_cpu) return c;
  return -1;
}

// CPU `me` waits for another to serve its pcp drain request (page_alloc.h):
// let that CPU run — its interrupt signals are delivered as it resumes — or,
// when it has finished its ops, lend it a turn to take them. When it spins
// on a held lock, run one that can make progress instead. A request that
// kMaxDrainWaits polls in a row leave unserved is a liveness failure: in a
// correct protocol the owner serves it as soon as it runs.
constexpr int kMaxDrainWaits = 4096;

void on_drain_wait(int me) {
  CpuState& cpu = g.cpus[me];
  int target = program_cpu_of(pcp_drain_waiting_on());
  if (++cpu.drain_waits > kMaxDrainWaits) {
    Report r("harness: liveness");
    r << "program cpu " << me << " waited " << kMaxDrainWaits << " turns for anyctx cpu " << pcp_drain_waiting_on()
      << " (program cpu " << target << ") to serve its pcp drain request";
    fail(r);
  }
  if (target < 0 || target == me) return;  // gone offline: the next poll sees it
  if (g.cpus[target].done) {
    InterruptsHeld held;
    give_turn(kServeTurnBase + target);
    wait_turn(me);
    note_resumed(me, static_cast<int>(Site::kPcpDrainWait));
    return;
  }
  if (!blocked(g.cpus[target])) {
    switch_to(me, target, static_cast<int>(Site::kPcpDrainWait));
    return;
  }
  for (int i = 1; i < g.ncpus; ++i) {
    int c = (me + i) % g.ncpus;
    if (!g.cpus[c].done && !blocked(g.cpus[c])) {
      switch_to(me, c, static_cast<int>(Site::kPcpDrainWait));
      return;
    }
  }
  report_global_deadlock();
}

// Return: the lock classes CPU `c` holds, over all its frames, and whether
// one of its frames is inside an update (interleave.h).
std::uint8_t held_by(int c) {
  const CpuState& cpu = g.cpus[c];
  std::uint8_t held = 0;
  for (int d = 0; d < cpu.depth; ++d) held |= cpu.frames[d].held;
  if (g.local_model[c].cpu == c) held |= kHeldLocal;
  for (const LockModel& m : g.spin_model)
    if (m.cpu == c) held |= kHeldSpin;
  return held;
}

// CPU `me` has the turn back in the middle of an op, at `site`, its
// interrupts still held: if it holds a lock class, another CPU ran inside
// that section (SiteMap::resumed_inside), and may have sent it an interrupt
// (a drain request) that meets the section when the mask is restored.
void note_resumed(int me, int site) {
  std::uint8_t held = held_by(me);
  if (held == 0) return;
  g.cpus[me].resumed_inside = true;
  sigset_t pending;
  sigpending(&pending);
  feedback::resumed_inside(site, held, sigismember(&pending, interrupts_config().irq_signal) == 1);
}

// Follows the current frame's sites (interleave.h) and tells the fuzzer
// what the other CPUs hold while this one reaches `site`.
// Return: whether another CPU holds a lock class or is inside an update.
bool track_held(int me, int site) {
  CpuState& cpu = g.cpus[me];
  if (cpu.depth == 0) return false;
  Frame& f = cpu.frames[cpu.depth - 1];
  SiteEffect e = site_effect(site);
  if (site == kOpBoundary) f.held = 0;
  f.held = static_cast<std::uint8_t>((f.held & ~kHeldMidUpdate) | e.takes | (e.mid_update ? kHeldMidUpdate : 0));
  f.held = static_cast<std::uint8_t>(f.held & ~e.drops);
  if (cpu.resumed_inside && held_by(me) == 0) cpu.resumed_inside = false;
  if (g.ncpus == 1) return false;
  Ctx level = current_ctx();
  bool elsewhere = false;
  for (int c = 0; c < g.ncpus; ++c) {
    if (c == me || g.cpus[c].done) continue;
    if (std::uint8_t held = held_by(c); held != 0) {
      feedback::reached_while_held_elsewhere(site, level, held);
      elsewhere = true;
    }
  }
  return elsewhere;
}

void site_event(int site) {
  int me = t_cpu;
  if (me < 0 || !g.active || g.quiescing) return;
  if (g.ncpus > 1 && g_turn.load(std::memory_order_relaxed) != me) {
    // Exactly one CPU runs: anything else is an executor bug (an interrupt
    // that reached a CPU while it waited for its turn, say).
    Report r("harness: executor");
    r << "program cpu " << me << " reached site " << injection_site_name(site) << " while turn " << g_turn.load()
      << " runs (a program cpu, or -2: none)";
    r.fatal();
  }
  ++g.events;
  if (site == kOpBoundary && !g.sabotaged && g.events >= g.options.sabotage_event) g.sabotaged = apply_sabotage();
  Ctx level = current_ctx();
  feedback::site_reached(site, level);
  std::uint16_t& hits = g.stats.sites.hits[me][site][static_cast<int>(level)];
  if (hits < UINT16_MAX) ++hits;
  if (track_held(me, site) && hits <= 32) g.stats.sites.held_elsewhere[me][site][static_cast<int>(level)] |= 1u << (hits - 1);
  if (g.cpus[me].resumed_inside && hits <= 32)
    g.stats.sites.resumed_inside[me][site][static_cast<int>(level)] |= 1u << (hits - 1);
  if (level == Ctx::kTask && hits <= 32 && irqs_disabled()) g.stats.sites.irqs_off[me][site] |= 1u << (hits - 1);
  trace(static_cast<std::uint64_t>(site) << 4 | static_cast<std::uint64_t>(level), static_cast<std::uint64_t>(me));
  for (std::size_t i = 0; i < g.program->injections.size(); ++i) {
    const Injection& inj = g.program->injections[i];
    if (g.fired[i] || inj.cpu != me || inj.site != site || inj.level != level) continue;
    if (++g.hits[i] == inj.nth) fire(static_cast<int>(i));
  }
  if (site == static_cast<int>(Site::kSpinWait)) {
    on_spin_wait(me);
    return;
  }
  g.cpus[me].spinning = false;
  if (site == static_cast<int>(Site::kPcpDrainWait)) {
    on_drain_wait(me);
    return;
  }
  g.cpus[me].drain_waits = 0;
  const Program& p = *g.program;
  if (p.pct.on()) {
    while (g.pct_next_change < g.pct_nchanges && g.pct_changes[g.pct_next_change] <= g.events)
      g.cpus[me].pct_priority = p.pct.depth - 1 - g.pct_next_change++;
    int best = pct_pick_other(me);
    if (best >= 0 && !blocked(g.cpus[best]) && g.cpus[best].pct_priority > g.cpus[me].pct_priority) {
      feedback::switched(site);
      switch_to(me, best, site);
    }
    return;
  }
  for (std::size_t i = 0; i < p.anchored.size(); ++i) {
    const AnchoredSwitch& a = p.anchored[i];
    if (a.on != me || a.site != site || a.level != level || ++g.anchor_hits[i] != a.nth) continue;
    if (!g.cpus[a.cpu].done) {
      feedback::switched(site);
      switch_to(me, a.cpu, site);
    }
  }
  while (g.next_switch < p.schedule.size() && p.schedule[g.next_switch].event <= g.events) {
    int to = p.schedule[g.next_switch++].cpu;
    if (to != me && !g.cpus[to].done) {
      feedback::switched(site);
      switch_to(me, to, site);
    }
  }
}

void site_hook(Site site) { site_event(static_cast<int>(site)); }

// --- cpus ---------------------------------------------------------------------------------

thread_local std::optional<CpuScope>* t_scope = nullptr;

// Run by the last CPU to finish its ops, before any CPU goes offline.
// Going offline flushes the CPU slabs: a slab whose objects are all free
// goes back to the page allocator whole, its freelist unread, so a list that
// lost an object (an NMI's free pushed onto a list that the interrupted frame
// was editing) would pass every later check. The slab check runs here,
// before that; the page and memcg checks lose nothing to going offline and
// run at the end (final_oracles). (A cpu_offline_online op flushes too; the
// check is not repeated there: it costs about as much as the rest of a
// slab_ops program.)
//
// Liveness, same moment: every CPU's frames have returned, so every IRQ a
// deferred free raised has run and drained its CPU's list; an object still
// deferred would stay there while its CPU makes no further slab call
// (stranded: a nolock-only consumer would never get it back).
void check_before_offline() {
  if (!(g.touched & kLayerSlab)) return;
  if (InvariantResult r = slab_check_invariants(); !r.ok) {
    Report rep("harness: before going offline");
    rep << "invariants: slab: " << r.what;
    fail(rep);
  }
  if (std::uint64_t d = slab_deferred_pending(); d != 0) {
    Report rep("harness: before going offline");
    rep << "liveness: " << d << " objects stranded on slab deferred lists after every CPU finished (no drain scheduled)";
    fail(rep);
  }
}

void cycle_cpu() {
  trace(0xc7c1e);
  t_scope->reset();    // offline: the per-CPU caches drain
  t_scope->emplace();  // online again (the lowest free id)
  g.cpus[t_cpu].anyctx_cpu = (*t_scope)->id();
  // An injection that fired while the CPU went offline was raised into
  // blocked signals and dropped: it never ran, and never will.
  t_pending[0].count = 0;
  t_pending[1].count = 0;
}

// One program CPU: run; in a program of several, hand over and wait to go
// offline (CPU 0: until every CPU has finished); go offline. CPU 0 runs on
// the thread in run_program, the others on worker threads (own_thread),
// which wait for their first turn and end by handing the turn to main.
void cpu_main(int index, bool own_thread) {
  if (own_thread) wait_turn(index);  // register in turn: CPU ids are deterministic
  t_cpu = index;
  std::optional<CpuScope> scope;
  scope.emplace();
  t_scope = &scope;
  g.cpus[index].anyctx_cpu = scope->id();
  run_frame(g.program->cpus[static_cast<std::size_t>(index)], -1, Ctx::kTask);
  g.cpus[index].done = true;
  if (next_runnable(index) < 0) check_before_offline();
  {
    std::optional<InterruptsHeld> held;
    if (g.ncpus > 1) {
      held.emplace();
      int to = next_runnable(index);
      give_turn(to >= 0 ? to : kMainTurn);
      while (wait_exit_or_serve_turn(index)) serve_interrupts(index);
    }
    // Going offline is not part of the program, nor are the interrupts
    // held until now, which run as `held` ends.
    g.quiescing = true;
  }
  scope.reset();
  t_scope = nullptr;
  t_cpu = -1;
  if (own_thread) give_turn(kMainTurn);
}

// CPUs 1..3 of multi-CPU programs run on worker threads, one per program
// CPU, created on first use and parked between programs for the life of the
// process: thread creation under ASan (stack, fake stack, thread registry)
// cost more than a whole program. CPU 0 runs on the thread in run_program,
// which saves half the hand-offs of a two-CPU program (each a futex wake, a
// wait and a context switch). libFuzzer needs every thread's work to end
// with its input: a worker runs only from its CPU's first turn to the moment
// it has gone offline and handed the turn back, before run_program's final
// oracles; parked it executes no instrumented code (this loop and the turn
// functions are on fuzz/coverage.ignorelist), so neither work nor coverage
// crosses from one input to the next. AFL++'s fork server is not affected: the
// workers start inside the first input, after the fork.
[[noreturn]] void worker_main(int index) {
  for (;;) cpu_main(index, true);
}

void start_workers(int ncpus) {
  static int started = 1;  // run_program is not reentrant: no lock needed
  for (; started < ncpus; ++started) std::thread(worker_main, started).detach();
}

void set_fault_plan(const FaultSpec& f) {
  if (f.nth == 0 && f.percent == 0) return;
  FaultPlan plan;
  plan.fail_nth = f.nth;
  plan.probability_ppm = f.percent * 10'000u;
  plan.contexts = f.contexts;
  plan.paths = f.paths;
  plan.seed = f.seed + 1u;
  fault_plan_set(plan);
}

[[noreturn]] void final_failure(const char* what, const std::string& detail) {
  Report r("harness: after quiesce");
  r << what << detail;
  r.fatal();
}

// Everything freed and drained: no page lost, nothing deferred, no charge
// left, invariants — of the page allocator always, of the slab and memcg
// layers when the run reached them.
void final_oracles() {
  CpuScope cpu;  // the checks allocate nolock: this thread must be a CPU
  for (int i = 0; i < kSlots; ++i) {
    Slot& s = g.slots[i];
    if (s.kind == SlotKind::kPage) {
      for (; s.refs > 1; --s.refs) put_page(s.page);
      free_pages(s.page, s.order);
    } else if (s.kind == SlotKind::kObject) {
      kfree(s.object);
    } else if (s.kind == SlotKind::kCharge) {
      memcg_uncharge(s.cgroup, s.pages);
    }
    s = Slot{};
  }
  const bool slab = g.touched & kLayerSlab;
  const bool memcg = g.touched & kLayerMemcg;
  if (slab) slab_drain_all();
  if (memcg) drain_local_stock();
  drain_all_pages();
  if (std::string what = invariant_violation(kLayerPage | g.touched, CheckDepth::kFull); !what.empty())
    final_failure("invariants: ", what);
  if (slab) {
    if (std::uint64_t d = slab_deferred_pending(); d != 0)
      final_failure("liveness: ", std::to_string(d) + " objects still on slab deferred lists after slab_drain_all");
  }
  if (std::size_t d = deferred_free_pages(); d != 0)
    final_failure("liveness: ", std::to_string(d) + " pages still on the deferred-free stack after drain_all_pages");
  if (memcg) {
    for (int c = 0; c < kCgroups; ++c) {
      MemCgroup* cg = cgroup_of(c);
      if (cg->usage() != 0)
        final_failure("conservation: ", std::string("cgroup ") + cg->name() + " still has " +
                                            std::to_string(cg->usage()) + " pages charged with nothing allocated");
      if (!cg->is_root()) cg->set_max(kMemcgUnlimited);
    }
    // A limit event the program left pending (a nolock charge refused and
    // no spinning charge after it) would stay pending into the next run,
    // where a refusal at that level then pushes nothing: runs would depend
    // on the one before. Checked above, delivered here.
    memcg_flush_events();
  }
  if (zone_free_pages() != arena_pages())
    final_failure("conservation: ", std::to_string(arena_pages() - zone_free_pages()) +
                                        " pages are neither free nor held by the program");
  Page* p = alloc_pages_nolock(Gfp{}, 0);
  if (p == nullptr) final_failure("liveness: ", "alloc_pages_nolock fails on a free, quiet zone");
  free_pages_nolock(p, 0);
  if (slab) {
    void* o = kmalloc_nolock(64, Gfp{});
    if (o == nullptr) final_failure("liveness: ", "kmalloc_nolock fails on a free, quiet zone");
    kfree_nolock(o);
    slab_drain_all();
  }
  drain_all_pages();
}

}  // namespace

RunStats run_program(const TargetSpec& target, const Program& program, const RunOptions& options) {
  g = Exec{};
  t_pending[0].count = 0;
  t_pending[1].count = 0;
  g.target = &target;
  g.program = &program;
  g.options = options;
  g.ncpus = static_cast<int>(program.cpus.size());
  g.layers = layers_of(target);
  for (int c = 0; c < g.ncpus; ++c) g.cpus[c].index = c;
  if (program.pct.on()) pct_start(program.pct);

  // The allocator outlives a run: every run ends with it fully free, drained
  // and coalesced (the final oracles check exactly that), which is the state
  // a fresh one starts in, so reusing it keeps runs independent and cheap.
  if (arena_pages() != options.arena_pages) {
    if (arena_pages() != 0) slab_shutdown();
    page_allocator_shutdown();
    PageAllocatorConfig config;
    config.pages = options.arena_pages;
    config.pcp_batch = 4;
    config.pcp_high = 12;
    if (std::string_view err = page_allocator_init(config); !err.empty()) {
      (Report("harness setup") << "page_allocator_init: " << err).fatal();
    }
    if (std::string_view err = slab_init(); !err.empty()) (Report("harness setup") << "slab_init: " << err).fatal();
  }
  set_bad_page_policy(BadPagePolicy::kAbort);
  set_slab_bad_free_policy(BadPagePolicy::kAbort);
  set_fault_plan(program.fault);
  set_interrupt_handler(InterruptKind::kIrq, interrupt_handler);
  set_interrupt_handler(InterruptKind::kNmi, interrupt_handler);
  ReportHook old_hook = set_report_hook(report_hook);
  set_site_hook(site_hook);
  // The lock validator judges this program alone: a report then replays from
  // this one input (no thread of the harness holds or takes a lock here).
  lock_validator_forget();
  g.active = true;

  start_workers(g.ncpus);
  g_turn.store(0, std::memory_order_relaxed);  // this thread runs CPU 0
  cpu_main(0, false);  // returns once every CPU has finished and CPU 0 has gone offline (quiescing)
  for (int c = 1; c < g.ncpus; ++c) {  // the others offline one by one, in order
    give_turn(kExitTurnBase + c);
    wait_turn(kMainTurn);
  }
  fault_plan_clear();
  final_oracles();

  g.active = false;
  set_site_hook(nullptr);
  set_report_hook(old_hook);
  set_interrupt_handler(InterruptKind::kIrq, nullptr);
  set_interrupt_handler(InterruptKind::kNmi, nullptr);
  g.stats.trace_hash = g.trace;
  g.stats.events = g.events;
  return g.stats;
}

RunStats run_text_or_die(std::string_view text) {
  ParseResult parsed = parse(text, *target_spec("all"));
  if (!parsed.ok()) (Report("harness: program text") << parsed.error).fatal();
  return run_program(*parsed.target, parsed.program);
}

namespace {

// What the mutator asks of a fuzz target (fuzz_site_map): the site map of
// the input fuzz_one ran last (a mutation chain mutates the input it just
// ran), and of corpus inputs observed before (run again only once).
std::uint64_t input_hash(const std::uint8_t* data, std::size_t size) {
  return std::hash<std::string_view>{}(std::string_view(reinterpret_cast<const char*>(data), size)) ^ size;
}
std::uint64_t g_last_input = 0;
SiteMap g_last_sites;
constexpr std::size_t kObservedInputs = 4096;  // then forgotten all at once
std::unordered_map<std::uint64_t, SiteMap> g_observed;
bool g_mutator_asked = false;  // a custom mutator asked fuzz_site_map

// Return: the map kept for `key`.
const SiteMap& remember_sites(std::uint64_t key, const SiteMap& sites) {
  if (g_observed.size() >= kObservedInputs) g_observed.clear();
  return g_observed[key] = sites;
}

// The last run's plans, made when the mutator next asks (fuzz_plan_last_run)
// rather than inside the run: libFuzzer counts the run's mallocs and frees,
// and runs an input again, for a leak check, when a run malloced more than it
// freed. Queued candidates are freed by the mutator, outside any run, so
// planning inside fuzz_one had a fifth of page_ops's runs run twice.
// The program moves here by a swap, which allocates nothing.
struct PendingPlan {
  bool followup = false;  // plan_followup: the run's tier adds a switch
  bool novel = false;     // plan: the run reached a new interleaving
  int chain = 0;
  Program program;
  bool pending() const { return followup || novel; }
};
thread_local Program t_run_program;
thread_local PendingPlan t_last_run_plan;

}  // namespace

MutatorMode fuzz_mutator_mode() {
  static const MutatorMode mode = [] {
    const char* m = std::getenv("ANYCTX_MUTATOR");
    if (m == nullptr) return MutatorMode::kPlanned;
    if (std::strcmp(m, "unplanned") == 0) return MutatorMode::kUnplanned;
    if (std::strcmp(m, "bytes") == 0) return MutatorMode::kBytes;
    (Report("bad environment") << "ANYCTX_MUTATOR=" << m << ": expected it unset, 'unplanned' or 'bytes'").fatal();
  }();
  return mode;
}

PlanQueue* fuzz_plans() {
  static PlanQueue plans;
  return fuzz_mutator_mode() == MutatorMode::kPlanned ? &plans : nullptr;
}

void fuzz_plan_last_run(const TargetSpec& target) {
  PendingPlan& p = t_last_run_plan;
  if (!p.pending()) return;
  PlanQueue* plans = fuzz_plans();
  if (p.followup) plans->add(plan_followup(target, p.program, g_last_sites, g_last_input), p.chain + 1);
  if (p.novel) {
    plans->add(plan(target, p.program, g_last_sites, g_last_input), 0);
    remember_sites(g_last_input, g_last_sites);  // planned: its first pick does not plan it again
  }
  p.followup = p.novel = false;
}

int fuzz_one(const TargetSpec& target, const std::uint8_t* data, std::size_t size) {
  static const bool edges_only = [] {
    const char* f = std::getenv("ANYCTX_FEEDBACK");
    return f != nullptr && std::strcmp(f, "edges") == 0;
  }();
  // Two runs without a mutation between them lose no plan: the second adds
  // the first's, unless it runs the same input again (libFuzzer's leak
  // check), which keeps the first run's pending.
  const std::uint64_t input = input_hash(data, size);
  const bool again = input == g_last_input && t_last_run_plan.pending();
  if (!again) fuzz_plan_last_run(target);
  read_fuzz_input(target, data, size, t_run_program);
  RunStats stats = run_program(target, t_run_program);
  g_last_input = input;
  g_last_sites = stats.sites;
  // A run that reached a new interleaving is planned before the next
  // mutation, not when the fuzzer first picks it from its corpus (which may
  // take minutes). A planned switch that ran is followed within a few runs
  // by the interrupts that only it makes possible (plan_followup, new
  // interleaving or not; planner.h, chain levels).
  if (PlanQueue* plans = fuzz_plans(); plans != nullptr && g_mutator_asked && !again) {
    const int chain = plans->chain_of(data, size), tier = plans->tier_of(data, size);
    t_last_run_plan.followup = tier_adds_switch(tier);
    t_last_run_plan.novel = feedback::novel_interleaving();
    t_last_run_plan.chain = chain;
    if (t_last_run_plan.pending()) std::swap(t_run_program, t_last_run_plan.program);
  }
  if (edges_only) feedback::reset();  // libFuzzer then reads the library's edges alone
  return 0;
}

const SiteMap* fuzz_site_map(const TargetSpec& target, const std::uint8_t* data, std::size_t size,
                             bool* first_seen) {
  g_mutator_asked = true;
  std::uint64_t key = input_hash(data, size);
  if (key == g_last_input) return &g_last_sites;
  if (auto it = g_observed.find(key); it != g_observed.end()) return &it->second;
  if (first_seen != nullptr) *first_seen = true;
  thread_local Program program;
  read_fuzz_input(target, data, size, program);
  RunStats stats = run_program(target, program);
  return &remember_sites(key, stats.sites);
}

}  // namespace anyctx::harness
