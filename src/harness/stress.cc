// The stress executor. Map of this file:
//   state        workers, mailboxes, the run; single-writer counters
//   patterns     stamps written at allocation, checked before every free
//   workload     allocations, frees, charges, mailboxes: shared by the task
//                and the handlers (a Frame is one context level of a worker)
//   task         the free-running loop's ops, CPU cycles, the test seams
//   handlers     what IRQ- and NMI-class signals run
//   site hook    last site, spin target and held locks per context level
//   timers       per-thread POSIX timers aimed at the thread (SIGEV_THREAD_ID)
//   watchdog     the monitor thread, the dump, the diagnosis
//   final        quiesce, drain, oracles; run_stress; the table
//
// Signal-handler rules (DESIGN.md §9): code reachable from a handler
// allocates nothing, takes no lock but the library's, uses no stdio; its
// state is in the heap-allocated Worker array (allocated before any thread
// starts) and constant-initialised thread_locals. Reports from there are
// anyctx::Report (a stack buffer and write(2)).
#include "harness/stress.h"

#include <pthread.h>
#include <signal.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "anyctx/ctx/context.h"
#include "anyctx/ctx/cpu.h"
#include "anyctx/ctx/interrupt.h"
#include "anyctx/ctx/report.h"
#include "anyctx/ctx/site.h"
#include "anyctx/lock/spinlock.h"
#include "anyctx/lock/validator.h"
#include "anyctx/memcg/memcg.h"
#include "anyctx/page/page_alloc.h"
#include "anyctx/slab/slab.h"
#include "harness/bytes.h"

namespace anyctx::harness {
namespace {

using Clock = std::chrono::steady_clock;
constexpr auto kRelaxed = std::memory_order_relaxed;

// --- state -----------------------------------------------------------------------

constexpr int kLevels = 3;  // task, irq, nmi (ContextLevel)
constexpr int kLocalSlots = 24;
constexpr int kMailSlots = 8;
constexpr int kRefSlots = 4;
constexpr int kStashItems = 4;
constexpr int kStashCharges = 2;
constexpr int kCgroups = 4;  // root, A, A/B, C
constexpr unsigned kMaxTaskOrder = 5;
constexpr std::uint16_t kNoSite = 0xffff;
constexpr int kCycleOneIn = 4000;  // task ops per CPU offline/online, on average
constexpr int kRearmEvery = 512;   // task ops between timer re-arms (new jittered period)
constexpr int kMaskCheckEvery = 64;  // task ops between signal-mask checks

// What a frame is doing now (for the dump and for reports): the entry point
// it is in, or the harness step.
#define ANYCTX_STRESS_OPS(X)                                                                   \
  X(kNone, "-") X(kAllocPages, "alloc_pages") X(kAllocPagesNolock, "alloc_pages_nolock")        \
  X(kFreePages, "free_pages") X(kFreePagesNolock, "free_pages_nolock") X(kGetPage, "get_page")  \
  X(kPutPage, "put_page") X(kKmalloc, "kmalloc") X(kKmallocNolock, "kmalloc_nolock")            \
  X(kKfree, "kfree") X(kKfreeNolock, "kfree_nolock") X(kCharge, "memcg_try_charge")             \
  X(kChargeNolock, "memcg_try_charge(nolock)") X(kUncharge, "memcg_uncharge")                   \
  X(kCheck, "checking a pattern") X(kMailbox, "mailbox exchange")                               \
  X(kDrainLocalPages, "drain_local_pages") X(kDrainAllPages, "drain_all_pages")                 \
  X(kSlabDrainLocal, "slab_drain_local") X(kSlabDrainAll, "slab_drain_all")                     \
  X(kDrainLocalStock, "drain_local_stock") X(kDrainAllStock, "drain_all_stock")                 \
  X(kFlushEvents, "memcg_flush_events") X(kSetMax, "MemCgroup::set_max")                        \
  X(kIrqMasked, "irq-masked section") X(kCpuOffline, "cpu offline (CpuScope end)")              \
  X(kCpuOnline, "cpu online (CpuScope)") X(kTimers, "timer setup")                              \
  X(kSeamLock, "test seam: Spinlock::lock") X(kSeamWait, "test seam: waiting for the other cpu") \
  X(kQuiesce, "quiescing") X(kFinalChecks, "final oracles")

enum Op : std::uint8_t {
#define ANYCTX_STRESS_OP_ENUM(name, text) name,
  ANYCTX_STRESS_OPS(ANYCTX_STRESS_OP_ENUM)
#undef ANYCTX_STRESS_OP_ENUM
  kOpCount
};

const char* op_name(int op) {
  static constexpr const char* kNames[] = {
#define ANYCTX_STRESS_OP_TEXT(name, text) text,
      ANYCTX_STRESS_OPS(ANYCTX_STRESS_OP_TEXT)
#undef ANYCTX_STRESS_OP_TEXT
  };
  return op >= 0 && op < kOpCount ? kNames[op] : "?";
}

const char* level_name(int lv) { return context_name(static_cast<ContextLevel>(lv)); }

// Locks a frame holds, as the lock sites (…Locked / …Unlock) say.
enum HeldBit : std::uint8_t { kHeldPcp = 1, kHeldZone = 2, kHeldStock = 4, kHeldSlabCpu = 8, kHeldSlabList = 16 };
constexpr const char* kHeldNames[] = {"pcp.lock", "zone.lock", "memcg.stock", "slab cpu lock", "slab list_lock"};

enum WorkerState : std::uint8_t { kIdle, kRunning, kCycling, kStopping, kFinal, kDone };
const char* state_name(int s) {
  static constexpr const char* kNames[] = {"idle", "running", "offline/online", "stopping", "final checks", "done"};
  return s >= 0 && s <= kDone ? kNames[s] : "?";
}

// Each counter has one writer: the frame of its context level on its
// thread (interrupts nest strictly and never at their own level), so a load
// and a store update it; the monitor only reads.
void bump(std::atomic<std::uint64_t>& a, std::uint64_t d = 1) { a.store(a.load(kRelaxed) + d, kRelaxed); }

struct alignas(kCacheLine) Counters {
  std::atomic<std::uint64_t> interrupts{0}, ops{0};
  std::atomic<std::uint64_t> ok[kStressApis]{}, failed[kStressApis]{};
  std::atomic<std::uint64_t> mailbox_posts{0}, mailbox_frees{0}, shared_refs{0}, cpu_cycles{0}, offline_frees{0},
      mask_repairs{0};
};

// A mailbox item: a page block (Page*, 64-aligned, | order << 1) or an
// object (pointer | 1; its size is in its stamp). 0 = empty.
using Item = std::uintptr_t;
Item page_item(Page* p, unsigned order) { return reinterpret_cast<Item>(p) | (Item{order} << 1); }
Item object_item(void* p) { return reinterpret_cast<Item>(p) | 1; }
bool is_object(Item it) { return (it & 1) != 0; }
Page* item_page(Item it) { return reinterpret_cast<Page*>(it & ~Item{63}); }
unsigned item_order(Item it) { return static_cast<unsigned>(it >> 1) & 31u; }
void* item_object(Item it) { return reinterpret_cast<void*>(it & ~Item{1}); }

struct Charge {
  int cgroup = -1;
  unsigned pages = 0;
};

// The task's own allocations (only the task frame touches them).
struct LocalItem {
  enum Kind : std::uint8_t { kEmpty, kPage, kObject, kCharge } kind = kEmpty;
  Page* page = nullptr;
  unsigned order = 0;
  int refs = 0;         // references this slot holds (get_page adds one)
  bool shared = false;  // another reference went to another CPU: drop ours with put_page
  void* object = nullptr;
  std::size_t bytes = 0;
  Charge charge;
};

struct Worker {
  Worker() {
    for (auto& s : site) s.store(kNoSite, kRelaxed);
  }
  int index = 0;
  std::atomic<int> cpu{kNoCpu};
  std::atomic<std::uint8_t> state{kIdle};
  std::atomic<std::uint64_t> progress{0};  // task ops (and quiesce steps) completed
  // Per context level, written by that level only (site hook, handlers).
  std::atomic<std::uint8_t> op[kLevels]{};
  std::atomic<std::uint16_t> site[kLevels];
  std::atomic<const Spinlock*> spinning_on[kLevels]{};
  std::atomic<std::uint8_t> held[kLevels]{};
  std::atomic<std::uint64_t> spins[kLevels]{};
  std::atomic<std::uint64_t> spin_starts[kLevels]{};  // spins begun (the level's spinning_on set anew)
  std::atomic<std::uint8_t> site_level{0};  // level of the last site hit (any level writes: a hint)
  std::atomic<bool> quiet{false};           // handlers only count
  bool seam_holder = false;
  Counters counts[kLevels];
  std::uint64_t rng[kLevels] = {};
  Item stash[kLevels][kStashItems] = {};
  Charge stash_charges[kLevels][kStashCharges] = {};
  LocalItem local[kLocalSlots];
  sigset_t task_mask{};  // the signal mask at a task op boundary
  timer_t timers[2] = {};
  bool timer_made[2] = {};
  std::uint64_t period_ns[2] = {};
};

struct alignas(kCacheLine) Mailbox {
  std::atomic<Item> slots[kMailSlots]{};
  std::atomic<Item> refs[kRefSlots]{};  // one reference of a shared page: put_page (task or irq)
};

struct Run {
  StressOptions opt;
  int nworkers = 0;
  std::unique_ptr<Worker[]> workers;  // nworkers + 1: the last is the final phase on the caller's thread
  std::unique_ptr<Mailbox[]> mail;
  MemCgroup* cg[kCgroups] = {};
  std::atomic<bool> stop{false};
  std::atomic<bool> monitor_stop{false};
  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  std::atomic<Clock::rep> start{0};  // when the workload started (Clock ticks)
  std::atomic<bool> seam_a_held{false}, seam_b_held{false};
  std::atomic<std::uint64_t> longest_stall_ns{0};
  std::atomic<int> longest_stall_worker{-1};
};

std::atomic<Run*> g_run{nullptr};
thread_local constinit Worker* t_worker = nullptr;
std::atomic<std::uint64_t> g_events_notified{0};
ReportHook g_previous_report_hook = nullptr;

Spinlock g_seam_a{"stress.seam_a"};
Spinlock g_seam_b{"stress.seam_b"};
// The seams deadlock on purpose (a lost unlock, an ABBA) so that the
// watchdog can be tested: the lock validator must not report them first.
[[maybe_unused]] const bool g_seams_unchecked =
    set_lock_class_unchecked("stress.seam_a") && set_lock_class_unchecked("stress.seam_b");

Run& run() { return *g_run.load(kRelaxed); }

// One context level of one worker: what the workload code gets.
struct Frame {
  Worker& w;
  int lv;

  Counters& c() { return w.counts[lv]; }
  std::uint64_t next() {  // xorshift64*
    std::uint64_t& s = w.rng[lv];
    s ^= s >> 12;
    s ^= s << 25;
    s ^= s >> 27;
    return s * 0x2545f4914f6cdd1dull;
  }
  unsigned below(unsigned n) { return static_cast<unsigned>(next() % n); }
  bool chance(unsigned percent) { return below(100) < percent; }
  void at(Op op) { w.op[lv].store(op, kRelaxed); }
  void count(StressApi api, bool succeeded) {
    bump(succeeded ? c().ok[static_cast<int>(api)] : c().failed[static_cast<int>(api)]);
  }
};

std::uint64_t splitmix(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

void describe(Report& r, Frame& f) {
  r << " [worker " << f.w.index << ", cpu " << current_cpu() << ", " << level_name(f.lv) << " context, op "
    << op_name(f.w.op[f.lv].load(kRelaxed)) << ", seed " << run().opt.seed << "]";
}

// --- patterns ----------------------------------------------------------------------
//
// An object of n >= 16 bytes: word 0 = serial << 16 | n, word 1 = a hash of
// its address and word 0, then a fill byte over bytes [16, 64) and the last
// 64 bytes. Every frame of a page block: word 0 = serial << 8 | order, word 1
// = the hash for that frame, fill over [16, 64) and the frame's last 64
// bytes. A block that two owners hold, a stray write from the allocator, a
// block handed out while live: each breaks a pattern or, at the second free,
// trips the allocator's double-free detection.

constexpr std::size_t kEdge = 64;
constexpr std::size_t kMinItemBytes = 16;

// The byte ranges a stamp covers past the two header words.
template <class Fn>
void for_each_fill(std::size_t n, Fn&& fn) {
  std::size_t head_end = std::min(n, kEdge);
  if (head_end > 16) fn(std::size_t{16}, head_end - 16);
  if (n > kEdge) {
    std::size_t tail = std::max(kEdge, n - kEdge);
    fn(tail, n - tail);
  }
}

std::uint8_t fill_byte(std::uint64_t hash) { return static_cast<std::uint8_t>(hash >> 56) | 1; }

void stamp_bytes(unsigned char* p, std::size_t n, std::uint64_t word0) {
  std::uint64_t word1 = splitmix(reinterpret_cast<std::uintptr_t>(p) ^ word0);
  std::memcpy(p, &word0, 8);
  std::memcpy(p + 8, &word1, 8);
  std::uint8_t b = fill_byte(word1);
  for_each_fill(n, [&](std::size_t off, std::size_t len) { std::memset(p + off, b, len); });
}

[[noreturn]] void content_failure(Frame& f, const char* what, const void* block, std::size_t block_bytes,
                                  std::size_t offset, const char* detail) {
  Report r("stress: content");
  r << what << " " << block << " (" << block_bytes << " bytes): " << detail << " at byte " << offset;
  describe(r, f);
  r.fatal();
}

// Return: whether p[0, n) holds the stamp with header word0 (0: any).
void check_bytes(Frame& f, const char* what, const unsigned char* p, std::size_t n, std::uint64_t word0) {
  std::uint64_t w0, w1;
  std::memcpy(&w0, p, 8);
  std::memcpy(&w1, p + 8, 8);
  if (word0 != 0 && w0 != word0) content_failure(f, what, p, n, 0, "header word changed");
  if (w1 != splitmix(reinterpret_cast<std::uintptr_t>(p) ^ w0))
    content_failure(f, what, p, n, 8, "header hash does not match (overwritten, or not the block stamped here)");
  std::uint8_t b = fill_byte(w1);
  for_each_fill(n, [&](std::size_t off, std::size_t len) {
    std::size_t k = first_mismatch(p + off, len, b);
    if (k != len) content_failure(f, what, p, n, off + k, "fill byte changed while allocated");
  });
}

void stamp_object(void* p, std::size_t n, std::uint64_t serial) {
  stamp_bytes(static_cast<unsigned char*>(p), n, serial << 16 | n);
}

// Checks an object's stamp; n = 0 reads its size from the stamp (a mailbox
// item). Return: its size.
std::size_t check_object(Frame& f, const void* p, std::size_t n) {
  f.at(kCheck);
  auto* b = static_cast<const unsigned char*>(p);
  std::uint64_t w0;
  std::memcpy(&w0, b, 8);
  std::size_t stamped = static_cast<std::size_t>(w0 & 0xffff);
  std::size_t capacity = kmalloc_object_size(p);
  if (capacity == 0) content_failure(f, "object", p, n, 0, "is not inside a slab any more");
  if ((n != 0 && stamped != n) || stamped < kMinItemBytes || stamped > capacity)
    content_failure(f, "object", p, n != 0 ? n : capacity, 0, "size in the header changed");
  check_bytes(f, "object", b, stamped, 0);
  return stamped;
}

unsigned char* frame_address(Page* page, std::size_t i) {
  return static_cast<unsigned char*>(page_address(page)) + i * kPageSize;
}

void stamp_page(Page* page, unsigned order, std::uint64_t serial) {
  for (std::size_t i = 0; i < (std::size_t{1} << order); ++i) {
    unsigned char* base = frame_address(page, i);
    std::uint64_t w0 = serial << 8 | order;
    std::uint64_t w1 = splitmix(reinterpret_cast<std::uintptr_t>(base) ^ w0);
    std::memcpy(base, &w0, 8);
    std::memcpy(base + 8, &w1, 8);
    std::uint8_t b = fill_byte(w1);
    std::memset(base + 16, b, kEdge - 16);
    std::memset(base + kPageSize - kEdge, b, kEdge);
  }
}

void check_page(Frame& f, Page* page, unsigned order) {
  f.at(kCheck);
  std::uint64_t first;
  std::memcpy(&first, frame_address(page, 0), 8);
  if ((first & 0xff) != order) content_failure(f, "page block", page_address(page), kPageSize << order, 0, "order in the header changed");
  for (std::size_t i = 0; i < (std::size_t{1} << order); ++i) {
    unsigned char* base = frame_address(page, i);
    std::uint64_t w0, w1;
    std::memcpy(&w0, base, 8);
    std::memcpy(&w1, base + 8, 8);
    if (w0 != first) content_failure(f, "page block", page_address(page), kPageSize << order, i * kPageSize, "frame header differs from the head frame's");
    if (w1 != splitmix(reinterpret_cast<std::uintptr_t>(base) ^ w0))
      content_failure(f, "page block", page_address(page), kPageSize << order, i * kPageSize + 8, "frame header hash does not match");
    std::uint8_t b = fill_byte(w1);
    std::size_t k = first_mismatch(base + 16, kEdge - 16, b);
    if (k != kEdge - 16) content_failure(f, "page block", page_address(page), kPageSize << order, i * kPageSize + 16 + k, "fill byte changed while allocated");
    k = first_mismatch(base + kPageSize - kEdge, kEdge, b);
    if (k != kEdge) content_failure(f, "page block", page_address(page), kPageSize << order, (i + 1) * kPageSize - kEdge + k, "fill byte changed while allocated");
  }
}

void expect_zero_page(Frame& f, Page* page, unsigned order, const char* why) {
  for (std::size_t i = 0; i < (std::size_t{1} << order); ++i) {
    unsigned char* base = frame_address(page, i);
    std::size_t k = first_mismatch(base, kEdge, 0);
    if (k == kEdge) k = kPageSize - kEdge + first_mismatch(base + kPageSize - kEdge, kEdge, 0);
    if (k != kPageSize) content_failure(f, "page block", page_address(page), kPageSize << order, i * kPageSize + k, why);
  }
}

void expect_zero_object(Frame& f, const void* p, std::size_t n) {
  std::size_t k = first_mismatch(static_cast<const unsigned char*>(p), n, 0);
  if (k != n) content_failure(f, "object", p, n, k, "kGfpZero object is not zeroed");
}

// --- workload -------------------------------------------------------------------------

MemCgroup* cgroup(int i) { return run().cg[i]; }

// A spinning gfp the frame may use: reclaim in task context with IRQs on,
// kGfpAtomic in IRQ context or with IRQs masked.
Gfp spinning_gfp(Frame& f) {
  if (f.lv != 0 || irqs_disabled()) return kGfpAtomic;
  return f.chance(75) ? kGfpKernel : kGfpNowait;
}

unsigned pick_order(Frame& f, unsigned max_order) {
  // Mostly order 0; each higher order half as likely.
  unsigned order = 0;
  while (order < max_order && f.chance(35)) ++order;
  return order;
}

std::size_t pick_item_size(Frame& f) {
  std::size_t cls = kMinItemBytes << f.below(10);  // 16 .. 8192
  std::size_t n = cls / 2 + 1 + f.below(static_cast<unsigned>(cls / 2));
  return std::max(n, kMinItemBytes);
}

// A page block, stamped; 0 when the allocator said no.
Item alloc_page_item(Frame& f, bool nolock, unsigned max_order) {
  unsigned order = pick_order(f, max_order);
  bool account = f.chance(25);
  bool zero = nolock || f.chance(30);
  std::optional<MemcgScope> scope;
  if (account && f.chance(75)) scope.emplace(*cgroup(1 + static_cast<int>(f.below(kCgroups - 1))));
  Page* page;
  if (nolock) {
    f.at(kAllocPagesNolock);
    page = alloc_pages_nolock(account ? kGfpAccount : Gfp{}, order);
    f.count(StressApi::kAllocPagesNolock, page != nullptr);
  } else {
    Gfp gfp = spinning_gfp(f);
    if (zero) gfp |= kGfpZero;
    if (account) gfp |= kGfpAccount;
    f.at(kAllocPages);
    page = alloc_pages(gfp, order);
    f.count(StressApi::kAllocPages, page != nullptr);
  }
  scope.reset();
  if (page == nullptr) return 0;
  if (page_refcount(page) != 1) {
    Report r("stress: refcount");
    r << "a fresh block at pfn " << page_to_pfn(page) << " has refcount " << page_refcount(page) << ", expected 1";
    describe(r, f);
    r.fatal();
  }
  if (zero) expect_zero_page(f, page, order, nolock ? "alloc_pages_nolock block is not zeroed" : "kGfpZero block is not zeroed");
  stamp_page(page, order, f.next());
  return page_item(page, order);
}

// An object of >= 16 bytes, stamped; 0 when the allocator said no.
Item alloc_object_item(Frame& f, bool nolock, std::size_t* bytes = nullptr) {
  std::size_t n = pick_item_size(f);
  bool zero = f.chance(30);
  bool account = f.chance(25);
  Gfp flags = (zero ? kGfpZero : Gfp{}) | (account ? kGfpAccount : Gfp{});
  std::optional<MemcgScope> scope;
  if (account && f.chance(75)) scope.emplace(*cgroup(1 + static_cast<int>(f.below(kCgroups - 1))));
  void* p;
  if (nolock) {
    f.at(kKmallocNolock);
    p = kmalloc_nolock(n, flags);
    f.count(StressApi::kKmallocNolock, p != nullptr);
  } else {
    f.at(kKmalloc);
    p = kmalloc(n, spinning_gfp(f) | flags);
    f.count(StressApi::kKmalloc, p != nullptr);
  }
  scope.reset();
  if (p == nullptr) return 0;
  if (zero) expect_zero_object(f, p, n);
  stamp_object(p, n, f.next() & 0xffffffffffffull);
  if (bytes != nullptr) *bytes = n;
  return object_item(p);
}

// Frees an item this frame owns (checked first). NMI: nolock only.
void free_item(Frame& f, Item it) {
  if (it == 0) return;
  bool nolock = f.lv == 2 || f.chance(50);
  if (is_object(it)) {
    void* p = item_object(it);
    check_object(f, p, 0);
    f.at(nolock ? kKfreeNolock : kKfree);
    if (nolock) kfree_nolock(p); else kfree(p);
  } else {
    Page* page = item_page(it);
    unsigned order = item_order(it);
    check_page(f, page, order);
    f.at(nolock ? kFreePagesNolock : kFreePages);
    if (nolock) free_pages_nolock(page, order); else free_pages(page, order);
  }
  f.at(kNone);
}

// A small object (1..15 bytes: the 8- and 16-byte classes), filled,
// checked and freed at once.
void tiny_object(Frame& f) {
  std::size_t n = 1 + f.below(15);
  bool nolock = f.lv == 2 || f.chance(50);
  f.at(nolock ? kKmallocNolock : kKmalloc);
  void* p = nolock ? kmalloc_nolock(n, Gfp{}) : kmalloc(n, spinning_gfp(f));
  f.count(nolock ? StressApi::kKmallocNolock : StressApi::kKmalloc, p != nullptr);
  if (p == nullptr) return;
  auto b = static_cast<std::uint8_t>(splitmix(reinterpret_cast<std::uintptr_t>(p)) | 1);
  std::memset(p, b, n);
  std::size_t k = first_mismatch(static_cast<unsigned char*>(p), n, b);
  if (k != n) content_failure(f, "object", p, n, k, "changed between a write and the read after it");
  nolock = f.lv == 2 || f.chance(50);
  f.at(nolock ? kKfreeNolock : kKfree);
  if (nolock) kfree_nolock(p); else kfree(p);
}

bool charge(Frame& f, bool nolock, Charge& out) {
  int cg = static_cast<int>(f.below(kCgroups));
  unsigned pages = 1 + f.below(8);
  f.at(nolock ? kChargeNolock : kCharge);
  bool ok = memcg_try_charge(cgroup(cg), nolock ? Gfp{} : spinning_gfp(f), pages);
  f.count(nolock ? StressApi::kChargeNolock : StressApi::kCharge, ok);
  if (ok) out = Charge{cg, pages};
  return ok;
}

void uncharge(Frame& f, Charge& c) {
  if (c.cgroup < 0) return;
  f.at(kUncharge);
  memcg_uncharge(cgroup(c.cgroup), c.pages);
  c = Charge{};
}

int pick_other(Frame& f) {
  int n = run().nworkers;
  if (n == 1) return 0;
  int to = static_cast<int>(f.below(static_cast<unsigned>(n - 1)));
  return to >= f.w.index ? to + 1 : to;
}

// Hands `it` to another CPU's mailbox; frees what was there (a cross-CPU free).
void post(Frame& f, Item it) {
  if (it == 0) return;
  f.at(kMailbox);
  Item old = run().mail[pick_other(f)].slots[f.below(kMailSlots)].exchange(it, std::memory_order_acq_rel);
  bump(f.c().mailbox_posts);
  if (old != 0) {
    free_item(f, old);
    bump(f.c().mailbox_frees);
  }
}

// Frees one item from this CPU's mailbox, if any.
void take(Frame& f) {
  Mailbox& m = run().mail[f.w.index];
  unsigned start = f.below(kMailSlots);
  for (unsigned i = 0; i < kMailSlots; ++i) {
    f.at(kMailbox);
    Item it = m.slots[(start + i) % kMailSlots].exchange(0, std::memory_order_acq_rel);
    if (it == 0) continue;
    free_item(f, it);
    bump(f.c().mailbox_frees);
    return;
  }
}

// Drops one reference of a shared page (the last one frees it).
void drop_ref(Frame& f, Item it) {
  Page* page = item_page(it);
  check_page(f, page, item_order(it));
  f.at(kPutPage);
  put_page(page);
  f.at(kNone);
}

// Drops one shared-page reference from this CPU's mailbox. Task or IRQ.
void take_ref(Frame& f) {
  Mailbox& m = run().mail[f.w.index];
  unsigned start = f.below(kRefSlots);
  for (unsigned i = 0; i < kRefSlots; ++i) {
    f.at(kMailbox);
    Item it = m.refs[(start + i) % kRefSlots].exchange(0, std::memory_order_acq_rel);
    if (it == 0) continue;
    drop_ref(f, it);
    bump(f.c().mailbox_frees);
    return;
  }
}

// Puts `it` in this frame's stash, freeing what it displaces.
void stash(Frame& f, Item it) {
  Item& slot = f.w.stash[f.lv][f.below(kStashItems)];
  Item old = slot;
  slot = it;
  free_item(f, old);
}

// After an allocation: free it now, keep it for a later interrupt, or hand
// it to another CPU.
void dispose(Frame& f, Item it) {
  if (it == 0) return;
  unsigned r = f.below(100);
  if (r < 35) free_item(f, it);
  else if (r < 70) stash(f, it);
  else post(f, it);
}

// --- task -------------------------------------------------------------------------

LocalItem* find_local(Frame& f, LocalItem::Kind kind) {
  unsigned start = f.below(kLocalSlots);
  for (unsigned i = 0; i < kLocalSlots; ++i) {
    LocalItem& s = f.w.local[(start + i) % kLocalSlots];
    if (s.kind == kind) return &s;
  }
  return nullptr;
}

LocalItem* find_used_local(Frame& f) {
  unsigned start = f.below(kLocalSlots);
  for (unsigned i = 0; i < kLocalSlots; ++i) {
    LocalItem& s = f.w.local[(start + i) % kLocalSlots];
    if (s.kind != LocalItem::kEmpty) return &s;
  }
  return nullptr;
}

void free_local(Frame& f, LocalItem& s) {
  switch (s.kind) {
    case LocalItem::kPage: {
      check_page(f, s.page, s.order);
      if (s.refs > 1 || s.shared) {
        f.at(kPutPage);
        put_page(s.page);
        if (--s.refs == 0) s = LocalItem{};
        break;
      }
      bool nolock = f.chance(40);
      f.at(nolock ? kFreePagesNolock : kFreePages);
      if (nolock) free_pages_nolock(s.page, s.order); else free_pages(s.page, s.order);
      s = LocalItem{};
      break;
    }
    case LocalItem::kObject: {
      check_object(f, s.object, s.bytes);
      bool nolock = f.chance(40);
      f.at(nolock ? kKfreeNolock : kKfree);
      if (nolock) kfree_nolock(s.object); else kfree(s.object);
      s = LocalItem{};
      break;
    }
    case LocalItem::kCharge:
      uncharge(f, s.charge);
      s = LocalItem{};
      break;
    case LocalItem::kEmpty:
      break;
  }
  f.at(kNone);
}

void task_alloc_page(Frame& f) {
  LocalItem* s = find_local(f, LocalItem::kEmpty);
  if (s == nullptr) return;
  bool nolock = f.chance(40);
  Item it = alloc_page_item(f, nolock, nolock ? kPcpMaxOrder : kMaxTaskOrder);
  if (it == 0) return;
  *s = LocalItem{};
  s->kind = LocalItem::kPage;
  s->page = item_page(it);
  s->order = item_order(it);
  s->refs = 1;
}

void task_kmalloc(Frame& f) {
  LocalItem* s = find_local(f, LocalItem::kEmpty);
  if (s == nullptr) return;
  std::size_t n = 0;
  Item it = alloc_object_item(f, f.chance(45), &n);
  if (it == 0) return;
  *s = LocalItem{};
  s->kind = LocalItem::kObject;
  s->object = item_object(it);
  s->bytes = n;
}

void task_charge(Frame& f) {
  LocalItem* s = find_local(f, LocalItem::kEmpty);
  if (s == nullptr) return;
  Charge c;
  if (!charge(f, f.chance(50), c)) return;
  *s = LocalItem{};
  s->kind = LocalItem::kCharge;
  s->charge = c;
}

void task_get_page(Frame& f) {
  LocalItem* s = find_local(f, LocalItem::kPage);
  if (s == nullptr || s->refs >= 4) return;
  f.at(kGetPage);
  get_page(s->page);
  ++s->refs;
}

void task_verify(Frame& f) {
  LocalItem* s = find_used_local(f);
  if (s == nullptr) return;
  if (s->kind == LocalItem::kPage) check_page(f, s->page, s->order);
  if (s->kind == LocalItem::kObject) check_object(f, s->object, s->bytes);
}

// Hands a local allocation (or a fresh one) to another CPU.
void task_post(Frame& f) {
  LocalItem* s = find_used_local(f);
  if (s != nullptr && s->kind == LocalItem::kObject) {
    Item it = object_item(s->object);
    *s = LocalItem{};
    post(f, it);
  } else if (s != nullptr && s->kind == LocalItem::kPage && s->refs == 1 && !s->shared) {
    Item it = page_item(s->page, s->order);
    *s = LocalItem{};
    post(f, it);
  } else {
    post(f, f.chance(50) ? alloc_object_item(f, f.chance(50)) : alloc_page_item(f, f.chance(50), kPcpMaxOrder));
  }
}

// A page with two references: one to another CPU (put_page there), one kept.
void task_share_ref(Frame& f) {
  Item it = alloc_page_item(f, f.chance(40), 2);
  if (it == 0) return;
  Page* page = item_page(it);
  f.at(kGetPage);
  get_page(page);
  f.at(kMailbox);
  Item old = run().mail[pick_other(f)].refs[f.below(kRefSlots)].exchange(it, std::memory_order_acq_rel);
  bump(f.c().shared_refs);
  if (old != 0) drop_ref(f, old);
  LocalItem* s = find_local(f, LocalItem::kEmpty);
  if (s == nullptr) {
    drop_ref(f, it);
    return;
  }
  *s = LocalItem{};
  s->kind = LocalItem::kPage;
  s->page = page;
  s->order = item_order(it);
  s->refs = 1;
  s->shared = true;
}

// An allocation and its free with IRQs soft-masked: IRQs that arrive
// meanwhile are replayed at irq_restore.
void task_irq_masked(Frame& f) {
  f.at(kIrqMasked);
  IrqSaveScope masked;
  switch (f.below(3)) {
    case 0: free_item(f, alloc_page_item(f, f.chance(50), kPcpMaxOrder)); break;
    case 1: free_item(f, alloc_object_item(f, f.chance(50))); break;
    default: {
      Charge c;
      if (charge(f, f.chance(50), c)) uncharge(f, c);
    }
  }
}

void task_set_max(Frame& f) {
  static constexpr std::uint64_t kLimits[] = {16, 64, 256, 1024, kMemcgUnlimited};
  int cg = 1 + static_cast<int>(f.below(kCgroups - 1));
  f.at(kSetMax);
  cgroup(cg)->set_max(kLimits[f.below(5)]);
}

enum TaskOp : std::uint8_t {
  kTaskAllocPage, kTaskKmalloc, kTaskFree, kTaskCharge, kTaskGetPage, kTaskVerify, kTaskPost, kTaskTake,
  kTaskShareRef, kTaskTakeRef, kTaskTiny, kTaskIrqMasked, kTaskDrainLocalPages, kTaskDrainAllPages,
  kTaskSlabDrainLocal, kTaskSlabDrainAll, kTaskDrainLocalStock, kTaskDrainAllStock, kTaskFlushEvents, kTaskSetMax,
};

struct Weighted {
  TaskOp op;
  unsigned weight;
};

constexpr Weighted kTaskOps[] = {
    {kTaskAllocPage, 140}, {kTaskKmalloc, 130}, {kTaskFree, 230}, {kTaskCharge, 60},
    {kTaskGetPage, 30},    {kTaskVerify, 30},   {kTaskPost, 80},   {kTaskTake, 60},
    {kTaskShareRef, 30},   {kTaskTakeRef, 30},  {kTaskTiny, 40},   {kTaskIrqMasked, 40},
    {kTaskDrainLocalPages, 8}, {kTaskDrainAllPages, 3}, {kTaskSlabDrainLocal, 8}, {kTaskSlabDrainAll, 3},
    {kTaskDrainLocalStock, 8}, {kTaskDrainAllStock, 3}, {kTaskFlushEvents, 4}, {kTaskSetMax, 2},
};

constexpr unsigned total_weight() {
  unsigned t = 0;
  for (const Weighted& w : kTaskOps) t += w.weight;
  return t;
}

void task_op(Frame& f) {
  unsigned r = f.below(total_weight());
  TaskOp op = kTaskOps[0].op;
  for (const Weighted& w : kTaskOps) {
    if (r < w.weight) {
      op = w.op;
      break;
    }
    r -= w.weight;
  }
  switch (op) {
    case kTaskAllocPage: task_alloc_page(f); break;
    case kTaskKmalloc: task_kmalloc(f); break;
    case kTaskFree:
      if (LocalItem* s = find_used_local(f)) free_local(f, *s);
      break;
    case kTaskCharge: task_charge(f); break;
    case kTaskGetPage: task_get_page(f); break;
    case kTaskVerify: task_verify(f); break;
    case kTaskPost: task_post(f); break;
    case kTaskTake: take(f); break;
    case kTaskShareRef: task_share_ref(f); break;
    case kTaskTakeRef: take_ref(f); break;
    case kTaskTiny: tiny_object(f); break;
    case kTaskIrqMasked: task_irq_masked(f); break;
    case kTaskDrainLocalPages: f.at(kDrainLocalPages); drain_local_pages(); break;
    case kTaskDrainAllPages: f.at(kDrainAllPages); drain_all_pages(); break;
    case kTaskSlabDrainLocal: f.at(kSlabDrainLocal); slab_drain_local(); break;
    case kTaskSlabDrainAll: f.at(kSlabDrainAll); slab_drain_all(); break;
    case kTaskDrainLocalStock: f.at(kDrainLocalStock); drain_local_stock(); break;
    case kTaskDrainAllStock: f.at(kDrainAllStock); drain_all_stock(); break;
    case kTaskFlushEvents: f.at(kFlushEvents); memcg_flush_events(); break;
    case kTaskSetMax: task_set_max(f); break;
  }
  f.at(kNone);
  bump(f.c().ops);
}

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }
Clock::time_point run_start(const Run& r) { return Clock::time_point(Clock::duration(r.start.load(kRelaxed))); }

// The test seams (StressOptions::seam): from 0.2 s into the run.
void seam_step(Frame& f) ANYCTX_NO_TSA {
  Run& r = run();
  if (r.opt.seam == StressSeam::kNone || f.w.index > 1 || seconds_since(run_start(r)) < 0.2) return;
  auto wait_for = [&](std::atomic<bool>& flag) {
    f.at(kSeamWait);
    while (!flag.load(std::memory_order_acquire)) std::this_thread::yield();
  };
  if (r.opt.seam == StressSeam::kLockNeverReleased) {
    if (f.w.index == 0 && !f.w.seam_holder) {
      f.at(kSeamLock);
      g_seam_a.lock();  // and never unlock: the lost unlock the watchdog must name
      f.w.seam_holder = true;
      r.seam_a_held.store(true, std::memory_order_release);
    } else if (f.w.index == 1 && r.seam_a_held.load(std::memory_order_acquire)) {
      f.at(kSeamLock);
      g_seam_a.lock();  // never returns
      g_seam_a.unlock();
    }
  } else if (r.opt.seam == StressSeam::kAbbaDeadlock) {
    Spinlock& first = f.w.index == 0 ? g_seam_a : g_seam_b;
    Spinlock& second = f.w.index == 0 ? g_seam_b : g_seam_a;
    f.w.seam_holder = true;
    f.at(kSeamLock);
    first.lock();
    (f.w.index == 0 ? r.seam_a_held : r.seam_b_held).store(true, std::memory_order_release);
    wait_for(f.w.index == 0 ? r.seam_b_held : r.seam_a_held);
    f.at(kSeamLock);
    second.lock();  // never returns
    second.unlock();
    first.unlock();
  }
}

// Between two CpuScopes the thread is not a CPU: the nolock frees and
// charges still work there (the shared deferred lists), nolock allocations
// must say no.
void offline_window(Frame& f) {
  for (int n = 0; n < 3; ++n) {
    LocalItem* s = find_used_local(f);
    if (s == nullptr) break;
    if (s->kind == LocalItem::kObject) {
      check_object(f, s->object, s->bytes);
      f.at(kKfreeNolock);
      kfree_nolock(s->object);
    } else if (s->kind == LocalItem::kPage && s->refs == 1 && !s->shared) {
      check_page(f, s->page, s->order);
      f.at(kFreePagesNolock);
      free_pages_nolock(s->page, s->order);
    } else if (s->kind == LocalItem::kCharge) {
      uncharge(f, s->charge);
    } else {
      continue;
    }
    *s = LocalItem{};
    bump(f.c().offline_frees);
  }
  Charge c;
  if (charge(f, true, c)) uncharge(f, c);
  f.at(kAllocPagesNolock);
  Page* page = alloc_pages_nolock(Gfp{}, 0);
  f.at(kKmallocNolock);
  void* object = kmalloc_nolock(64, Gfp{});
  if (page != nullptr || object != nullptr) {
    Report r("stress: not a cpu");
    r << (page != nullptr ? "alloc_pages_nolock" : "kmalloc_nolock")
      << "() gave memory to a thread that is not a CPU (it has no per-CPU lists to take it from)";
    describe(r, f);
    r.fatal();
  }
  f.at(kNone);
}

// --- handlers ---------------------------------------------------------------------

void handler_op(Frame& f) {
  bool nmi = f.lv == 2;
  unsigned r = f.below(100);
  if (r < 25) {
    dispose(f, alloc_page_item(f, nmi || f.chance(50), kPcpMaxOrder));
  } else if (r < 50) {
    dispose(f, alloc_object_item(f, nmi || f.chance(50)));
  } else if (r < 58) {
    tiny_object(f);
  } else if (r < 70) {
    Charge& slot = f.w.stash_charges[f.lv][f.below(kStashCharges)];
    Charge c;
    if (charge(f, nmi || f.chance(50), c)) {
      if (f.chance(50)) {
        uncharge(f, c);
      } else {
        uncharge(f, slot);
        slot = c;
      }
    }
  } else if (r < 82) {
    take(f);
  } else if (r < 88 && !nmi) {
    take_ref(f);
  } else if (r < 92 && !nmi) {
    // A reference taken and dropped in IRQ context.
    Item it = f.w.stash[f.lv][f.below(kStashItems)];
    if (it != 0 && !is_object(it)) {
      f.at(kGetPage);
      get_page(item_page(it));
      f.at(kPutPage);
      put_page(item_page(it));
    }
  } else {
    unsigned k = f.below(kStashItems);
    Item it = f.w.stash[f.lv][k];
    f.w.stash[f.lv][k] = 0;
    free_item(f, it);
    uncharge(f, f.w.stash_charges[f.lv][f.below(kStashCharges)]);
  }
  f.at(kNone);
  bump(f.c().ops);
}

void on_interrupt(InterruptKind kind) {
  Worker* w = t_worker;
  if (w == nullptr) return;
  int lv = kind == InterruptKind::kNmi ? 2 : 1;
  bump(w->counts[lv].interrupts);
  if (w->quiet.load(kRelaxed)) return;
  Frame f{*w, lv};
  for (unsigned n = 1 + f.below(3); n > 0; --n) handler_op(f);
  w->site[lv].store(kNoSite, kRelaxed);
  w->spinning_on[lv].store(nullptr, kRelaxed);
  w->held[lv].store(0, kRelaxed);
}

// --- site hook ----------------------------------------------------------------------

void site_hook(Site site) {
  Worker* w = t_worker;
  if (w == nullptr) return;
  int lv = static_cast<int>(context_level());
  w->site[lv].store(static_cast<std::uint16_t>(site), kRelaxed);
  w->site_level.store(static_cast<std::uint8_t>(lv), kRelaxed);
  if (site == Site::kSpinWait) {
    const Spinlock* l = spinlock_spinning_on();
    if (w->spinning_on[lv].load(kRelaxed) != l) {
      w->spinning_on[lv].store(l, kRelaxed);
      bump(w->spin_starts[lv]);
    }
    bump(w->spins[lv]);
    return;
  }
  if (w->spinning_on[lv].load(kRelaxed) != nullptr) w->spinning_on[lv].store(nullptr, kRelaxed);
  std::uint8_t set = 0, clear = 0;
  switch (site) {
    case Site::kPcpLocked: set = kHeldPcp; break;
    case Site::kPcpUnlock: clear = kHeldPcp; break;
    case Site::kZoneLocked: set = kHeldZone; break;
    case Site::kZoneUnlock: clear = kHeldZone; break;
    case Site::kStockLocked: set = kHeldStock; break;
    case Site::kStockUnlock: clear = kHeldStock; break;
    case Site::kSlabCpuLocked: set = kHeldSlabCpu; break;
    case Site::kSlabCpuUnlock: clear = kHeldSlabCpu; break;
    case Site::kSlabListLocked: set = kHeldSlabList; break;
    case Site::kSlabListUnlock: clear = kHeldSlabList; break;
    default: return;
  }
  std::uint8_t h = w->held[lv].load(kRelaxed);
  w->held[lv].store(static_cast<std::uint8_t>((h | set) & ~clear), kRelaxed);
}

// A library report (or ours) is about to abort: say where every CPU was.
// Async-signal-safe: one Report line per worker.
void report_hook(std::string_view text) {
  if (Run* r = g_run.load(kRelaxed)) {
    for (int i = 0; i <= r->nworkers; ++i) {
      Worker& w = r->workers[i];
      int st = w.state.load(kRelaxed);
      if (st == kIdle || st == kDone) continue;
      Report line("stress");
      line << (i == r->nworkers ? "final phase" : "worker ") ;
      if (i != r->nworkers) line << i;
      line << " (cpu " << w.cpu.load(kRelaxed) << ", " << state_name(st) << ", seed " << r->opt.seed << "):";
      for (int lv = 0; lv < kLevels; ++lv) {
        int op = w.op[lv].load(kRelaxed);
        std::uint16_t s = w.site[lv].load(kRelaxed);
        if (lv > 0 && op == kNone && s == kNoSite) continue;
        line << " " << level_name(lv) << ": " << op_name(op);
        if (s != kNoSite) line << " at site " << site_name(static_cast<Site>(s));
        line << ";";
      }
      line.emit();
    }
  }
  if (g_previous_report_hook != nullptr) g_previous_report_hook(text);
}

void count_event(MemCgroup&, std::uint64_t) { g_events_notified.fetch_add(1, kRelaxed); }

// --- timers ---------------------------------------------------------------------------

void arm_timer(Worker& w, int k, std::uint64_t first_ns, std::uint64_t period_ns) {
  itimerspec its{};
  its.it_value.tv_sec = static_cast<time_t>(first_ns / 1'000'000'000u);
  its.it_value.tv_nsec = static_cast<long>(first_ns % 1'000'000'000u);
  its.it_interval.tv_sec = static_cast<time_t>(period_ns / 1'000'000'000u);
  its.it_interval.tv_nsec = static_cast<long>(period_ns % 1'000'000'000u);
  timer_settime(w.timers[k], 0, &its, nullptr);
}

// New jittered rates (0.5x..1.5x the mean, so the mean rate is the one
// asked for) and a random first expiry.
void rearm_timers(Frame& f) {
  for (int k = 0; k < 2; ++k) {
    if (!f.w.timer_made[k]) continue;
    std::uint64_t base = f.w.period_ns[k];
    std::uint64_t period = base * 1000 / (500 + f.below(1001));
    arm_timer(f.w, k, 1 + f.next() % (period + 1), std::max<std::uint64_t>(period, 1000));
  }
}

void make_timers(Frame& f) {
  f.at(kTimers);
  Run& r = run();
  InterruptConfig ic = interrupts_config();
  const int signo[2] = {ic.irq_signal, ic.nmi_signal};
  const double rate[2] = {r.opt.irq_rate, r.opt.nmi_rate};
  pid_t tid = static_cast<pid_t>(syscall(SYS_gettid));
  for (int k = 0; k < 2; ++k) {
    if (rate[k] <= 0) continue;
    sigevent sev{};
    sev.sigev_notify = SIGEV_THREAD_ID;
    sev.sigev_signo = signo[k];
    sev._sigev_un._tid = tid;
    if (timer_create(CLOCK_MONOTONIC, &sev, &f.w.timers[k]) != 0) {
      (Report("stress setup") << "timer_create failed, errno " << errno).fatal();
    }
    f.w.timer_made[k] = true;
    f.w.period_ns[k] = std::max<std::uint64_t>(1000, static_cast<std::uint64_t>(1e9 * r.nworkers / rate[k]));
  }
  rearm_timers(f);
  f.at(kNone);
}

void delete_timers(Worker& w) {
  for (int k = 0; k < 2; ++k) {
    if (w.timer_made[k]) timer_delete(w.timers[k]);
    w.timer_made[k] = false;
  }
}

// At a task op boundary no frame of this CPU is inside a handler, so the
// IRQ and NMI signals must not be blocked. Under TSan (LLVM 14) they can be:
// its deferred delivery (ProcessPendingSignals) keeps the mask to restore in
// one per-thread slot, and a signal that arrives between its "nothing
// pending" store and its mask syscall makes a nested call overwrite that
// slot with the all-blocked mask, which the outer call then restores — the
// thread stays deaf to every signal. There the check puts the mask back and
// counts it; in every other build a blocked signal here is an anyctx bug
// (a mask that CpuScope or a handler failed to restore) and a report.
void check_signal_mask(Frame& f) {
  sigset_t now;
  pthread_sigmask(SIG_BLOCK, nullptr, &now);
  InterruptConfig ic = interrupts_config();
  bool irq = sigismember(&now, ic.irq_signal) == 1, nmi = sigismember(&now, ic.nmi_signal) == 1;
  if (!irq && !nmi) return;
  if constexpr (ANYCTX_TSAN) {
    pthread_sigmask(SIG_SETMASK, &f.w.task_mask, nullptr);
    bump(f.c().mask_repairs);
    return;
  }
  Report r("stress: signal mask");
  r << "the " << (irq && nmi ? "IRQ and NMI signals are" : irq ? "IRQ signal is" : "NMI signal is")
    << " blocked at a task op boundary (nothing may block them there: a CpuScope or a handler left the mask "
       "changed)";
  describe(r, f);
  r.fatal();
}

// --- workers ----------------------------------------------------------------------------

void worker_main(Worker& w) {
  t_worker = &w;
  Run& r = run();
  Frame task{w, 0};
  std::optional<CpuScope> scope;
  w.state.store(kRunning, kRelaxed);  // watched from here on
  task.at(kCpuOnline);
  scope.emplace();
  w.cpu.store(scope->id(), kRelaxed);
  pthread_sigmask(SIG_BLOCK, nullptr, &w.task_mask);
  make_timers(task);
  bump(w.progress);
  r.ready.fetch_add(1, std::memory_order_acq_rel);
  while (!r.go.load(std::memory_order_acquire)) {
    bump(w.progress);  // waiting for the others is progress: a CPU stuck starting is the one named
    std::this_thread::yield();
  }

  for (std::uint64_t i = 1; !r.stop.load(kRelaxed); ++i) {
    task_op(task);
    bump(w.progress);
    if (i % kRearmEvery == 0) rearm_timers(task);
    if (i % kMaskCheckEvery == 0) check_signal_mask(task);
    seam_step(task);
    if (!w.seam_holder && task.below(kCycleOneIn) == 0) {
      w.state.store(kCycling, kRelaxed);
      task.at(kCpuOffline);
      scope.reset();
      w.cpu.store(kNoCpu, kRelaxed);
      offline_window(task);
      task.at(kCpuOnline);
      scope.emplace();
      w.cpu.store(scope->id(), kRelaxed);
      bump(task.c().cpu_cycles);
      task.at(kNone);
      w.state.store(kRunning, kRelaxed);
      bump(w.progress);
    }
  }

  // Quiesce. A timer signal already queued is delivered on the way out of
  // timer_delete (under TSan at the next point TSan controls) and from then
  // on the handlers only count: nothing refills what is freed below.
  w.state.store(kStopping, kRelaxed);
  task.at(kQuiesce);
  delete_timers(w);
  w.quiet.store(true, kRelaxed);
  std::atomic_signal_fence(std::memory_order_seq_cst);
  for (int lv = 1; lv < kLevels; ++lv) {
    for (Item& it : w.stash[lv]) {
      free_item(task, it);
      it = 0;
      bump(w.progress);
    }
    for (Charge& c : w.stash_charges[lv]) uncharge(task, c);
  }
  for (LocalItem& s : w.local) {
    while (s.kind != LocalItem::kEmpty) free_local(task, s);
    bump(w.progress);
  }
  task.at(kSlabDrainLocal);
  slab_drain_local();
  task.at(kDrainLocalPages);
  drain_local_pages();
  task.at(kDrainLocalStock);
  drain_local_stock();
  bump(w.progress);
  task.at(kCpuOffline);
  scope.reset();
  w.cpu.store(kNoCpu, kRelaxed);
  task.at(kNone);
  w.state.store(kDone, kRelaxed);
  t_worker = nullptr;
}

// --- watchdog ------------------------------------------------------------------------

struct Watch {
  std::uint64_t progress = 0;
  Clock::time_point since;
  std::uint64_t spins[kLevels] = {};
  Clock::time_point spun[kLevels];  // when spins[lv] last changed
  std::uint64_t spin_starts[kLevels] = {};
  Clock::time_point spin_began[kLevels];  // when spin_starts[lv] last changed
};

std::string held_text(std::uint8_t held) {
  std::string s;
  for (int b = 0; b < 5; ++b) {
    if (!(held & (1u << b))) continue;
    if (!s.empty()) s += ", ";
    s += kHeldNames[b];
  }
  return s.empty() ? "none" : s;
}

std::string fmt(const char* format, ...) __attribute__((format(printf, 1, 2)));
std::string fmt(const char* format, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, format);
  std::vsnprintf(buf, sizeof buf, format, ap);
  va_end(ap);
  return buf;
}

// A spin counts as current when the level hit kSpinWait within this long.
constexpr double kSpinFresh = 0.5;

StallView view_of(Run& r, int i, const Watch& watch, Clock::time_point now, double limit) {
  Worker& w = r.workers[i];
  StallView v;
  v.worker = i;
  v.cpu = w.cpu.load(kRelaxed);
  v.stalled_seconds = std::chrono::duration<double>(now - watch.since).count();
  v.stalled = v.stalled_seconds >= limit;
  int level = w.site_level.load(kRelaxed);
  const Spinlock* locks[kLevels];
  LevelSpin spins[kLevels];
  for (int lv = 0; lv < kLevels; ++lv) {
    locks[lv] = w.spinning_on[lv].load(kRelaxed);
    if (locks[lv] == nullptr) continue;
    spins[lv].fresh = std::chrono::duration<double>(now - watch.spun[lv]).count() < kSpinFresh;
    spins[lv].seconds = std::chrono::duration<double>(now - watch.spin_began[lv]).count();
  }
  if (int lv = explaining_spin(spins, v.stalled_seconds); lv >= 0) {
    v.lock = locks[lv];
    v.lock_name = locks[lv]->class_name();
    v.lock_owner = locks[lv]->owner_cpu();
    level = lv;
  }
  v.level = level_name(level);
  std::uint16_t s = w.site[level].load(kRelaxed);
  v.site = s == kNoSite ? nullptr : site_name(static_cast<Site>(s));
  return v;
}

[[noreturn]] void watchdog_fire(Run& r, int stalled, const std::vector<Watch>& watch, Clock::time_point now) {
  std::vector<StallView> views;
  std::size_t stalled_index = 0;
  std::string dump = fmt("anyctx-stress watchdog: %s (cpu %d) has made no progress for %.1f s "
                         "(limit %.1f s, seed %llu, %.1f s into the run); every cpu:\n",
                         stalled == r.nworkers ? "the final phase" : fmt("worker %d", stalled).c_str(),
                         r.workers[stalled].cpu.load(kRelaxed),
                         std::chrono::duration<double>(now - watch[stalled].since).count(), r.opt.watchdog_seconds,
                         static_cast<unsigned long long>(r.opt.seed), seconds_since(run_start(r)));
  for (int i = 0; i <= r.nworkers; ++i) {
    Worker& w = r.workers[i];
    int st = w.state.load(kRelaxed);
    if (st == kIdle || st == kDone) continue;
    if (i == stalled) stalled_index = views.size();
    views.push_back(view_of(r, i, watch[i], now, r.opt.watchdog_seconds));
    dump += fmt("  %s: cpu %d, %s, %llu task ops, last progress %.1f s ago\n",
                i == r.nworkers ? "final phase" : fmt("worker %d", i).c_str(), w.cpu.load(kRelaxed), state_name(st),
                static_cast<unsigned long long>(w.progress.load(kRelaxed)),
                std::chrono::duration<double>(now - watch[i].since).count());
    for (int lv = 0; lv < kLevels; ++lv) {
      int op = w.op[lv].load(kRelaxed);
      std::uint16_t s = w.site[lv].load(kRelaxed);
      std::uint8_t held = w.held[lv].load(kRelaxed);
      const Spinlock* l = w.spinning_on[lv].load(kRelaxed);
      if (lv > 0 && op == kNone && s == kNoSite && held == 0 && l == nullptr) {
        dump += fmt("    %-4s idle (%llu interrupts so far)\n", level_name(lv),
                    static_cast<unsigned long long>(w.counts[lv].interrupts.load(kRelaxed)));
        continue;
      }
      dump += fmt("    %-4s op %s, last site %s, holds (by lock sites) %s", level_name(lv), op_name(op),
                  s == kNoSite ? "-" : site_name(static_cast<Site>(s)), held_text(held).c_str());
      if (lv > 0)
        dump += fmt(", %llu interrupts so far", static_cast<unsigned long long>(w.counts[lv].interrupts.load(kRelaxed)));
      if (l != nullptr) {
        double ago = std::chrono::duration<double>(now - watch[i].spun[lv]).count();
        dump += fmt(", %s spinning on '%s' (%p) held by cpu %d", ago < kSpinFresh ? "now" : "earlier", l->class_name(),
                    static_cast<const void*>(l), l->owner_cpu());
      }
      dump += "\n";
    }
  }
  std::fputs(dump.c_str(), stderr);
  std::fflush(stderr);
  std::string why = diagnose_stall(views, stalled_index);
  Report rep("watchdog");
  rep << why << " (seed " << r.opt.seed << ")";
  rep.fatal();
}

void monitor_main(Run& r) {
  sigset_t both;
  sigemptyset(&both);
  sigaddset(&both, interrupts_config().irq_signal);
  sigaddset(&both, interrupts_config().nmi_signal);
  pthread_sigmask(SIG_BLOCK, &both, nullptr);
  const int n = r.nworkers + 1;
  std::vector<Watch> watch(static_cast<std::size_t>(n));
  Clock::time_point now = Clock::now();
  for (Watch& w : watch) {
    w.since = now;
    for (auto& t : w.spun) t = now;
    for (auto& t : w.spin_began) t = now;
  }
  auto tick = std::chrono::duration<double>(std::clamp(r.opt.watchdog_seconds / 20, 0.01, 0.1));
  while (!r.monitor_stop.load(std::memory_order_acquire)) {
    std::this_thread::sleep_for(tick);
    now = Clock::now();
    for (int i = 0; i < n; ++i) {
      Worker& w = r.workers[i];
      Watch& watched = watch[static_cast<std::size_t>(i)];
      for (int lv = 0; lv < kLevels; ++lv) {
        std::uint64_t s = w.spins[lv].load(kRelaxed);
        if (s != watched.spins[lv]) {
          watched.spins[lv] = s;
          watched.spun[lv] = now;
        }
        std::uint64_t b = w.spin_starts[lv].load(kRelaxed);
        if (b != watched.spin_starts[lv]) {
          watched.spin_starts[lv] = b;
          watched.spin_began[lv] = now;
        }
      }
      int st = w.state.load(kRelaxed);
      std::uint64_t p = w.progress.load(kRelaxed);
      if (st == kIdle || st == kDone || p != watched.progress) {
        watched.progress = p;
        watched.since = now;
        continue;
      }
      auto stall = std::chrono::duration_cast<std::chrono::nanoseconds>(now - watched.since).count();
      if (static_cast<std::uint64_t>(stall) > r.longest_stall_ns.load(kRelaxed)) {
        r.longest_stall_ns.store(static_cast<std::uint64_t>(stall), kRelaxed);
        r.longest_stall_worker.store(i, kRelaxed);
      }
      if (static_cast<double>(stall) / 1e9 >= r.opt.watchdog_seconds) watchdog_fire(r, i, watch, now);
    }
  }
}

// --- final ------------------------------------------------------------------------------

[[noreturn]] void final_failure(const char* oracle, const std::string& what) {
  Report r("stress: after quiesce");
  r << oracle << ": " << what << " (seed " << run().opt.seed << ")";
  r.fatal();
}

void final_phase(Run& r) {
  Worker& m = r.workers[r.nworkers];
  t_worker = &m;
  m.quiet.store(true, kRelaxed);
  Frame f{m, 0};
  m.state.store(kFinal, kRelaxed);
  {
    f.at(kCpuOnline);
    CpuScope cpu;
    m.cpu.store(cpu.id(), kRelaxed);
    for (int i = 0; i < r.nworkers; ++i) {
      for (auto& slot : r.mail[i].slots) free_item(f, slot.exchange(0, std::memory_order_acq_rel));
      for (auto& slot : r.mail[i].refs)
        if (Item it = slot.exchange(0, std::memory_order_acq_rel)) drop_ref(f, it);
      bump(m.progress);
    }
    f.at(kFlushEvents);
    memcg_flush_events();
    f.at(kSlabDrainAll);
    slab_drain_all();
    f.at(kDrainLocalStock);
    drain_local_stock();
    f.at(kDrainAllPages);
    drain_all_pages();
    bump(m.progress);

    f.at(kFinalChecks);
    if (InvariantResult v = check_invariants(); !v.ok) final_failure("page invariants", v.what);
    bump(m.progress);
    if (InvariantResult v = slab_check_invariants(); !v.ok) final_failure("slab invariants", v.what);
    bump(m.progress);
    if (MemcgInvariantResult v = memcg_check_invariants(); !v.ok) final_failure("memcg invariants", v.what);
    bump(m.progress);
    if (std::uint64_t d = slab_deferred_pending(); d != 0)
      final_failure("liveness", std::to_string(d) + " objects still on slab deferred lists after slab_drain_all");
    if (std::size_t d = deferred_free_pages(); d != 0)
      final_failure("liveness", std::to_string(d) + " pages still on the deferred-free stack after drain_all_pages");
    for (int i = 0; i < kKmallocCaches; ++i) {
      SlabCacheStats s = slab_cache_stats(i);
      if (s.objects_in_use != 0)
        final_failure("conservation", std::string("cache ") + s.name + " has " + std::to_string(s.objects_in_use) +
                                          " objects in use with nothing allocated");
    }
    for (int c = 0; c < kCgroups; ++c) {
      if (r.cg[c]->usage() != 0)
        final_failure("conservation", std::string("cgroup ") + r.cg[c]->name() + " still has " +
                                          std::to_string(r.cg[c]->usage()) + " pages charged with nothing allocated");
    }
    if (zone_free_pages() != arena_pages())
      final_failure("conservation", std::to_string(arena_pages() - zone_free_pages()) +
                                        " pages are neither free nor held by anyone");
    f.at(kAllocPagesNolock);
    Page* p = alloc_pages_nolock(Gfp{}, 0);
    if (p == nullptr) final_failure("liveness", "alloc_pages_nolock fails on a free, quiet zone");
    free_pages_nolock(p, 0);
    f.at(kKmallocNolock);
    void* o = kmalloc_nolock(64, Gfp{});
    if (o == nullptr) final_failure("liveness", "kmalloc_nolock fails on a free, quiet zone");
    kfree_nolock(o);
    f.at(kSlabDrainAll);
    slab_drain_all();
    drain_all_pages();
    if (zone_free_pages() != arena_pages())
      final_failure("conservation", "the liveness allocations did not come back: " +
                                        std::to_string(arena_pages() - zone_free_pages()) + " pages missing");
    PageStats ps = page_stats();
    std::uint64_t allocated = 0, freed = 0;
    for (int path = 0; path < 2; ++path)
      for (int c = 0; c < 3; ++c) {
        allocated += ps.alloc_ok[path][c];
        freed += ps.freed[path][c];
      }
    if (allocated != freed)
      final_failure("conservation", std::to_string(allocated) + " page allocations succeeded but " +
                                        std::to_string(freed) + " frees were counted");
    bump(m.progress);
    f.at(kCpuOffline);
  }
  m.cpu.store(kNoCpu, kRelaxed);
  f.at(kNone);
  m.state.store(kDone, kRelaxed);
  t_worker = nullptr;
}

}  // namespace

const char* stress_api_name(StressApi api) {
  switch (api) {
    case StressApi::kAllocPages: return "alloc_pages";
    case StressApi::kAllocPagesNolock: return "alloc_pages_nolock";
    case StressApi::kKmalloc: return "kmalloc";
    case StressApi::kKmallocNolock: return "kmalloc_nolock";
    case StressApi::kCharge: return "memcg_try_charge";
    case StressApi::kChargeNolock: return "memcg_try_charge (nolock)";
    case StressApi::kCount: break;
  }
  return "?";
}

int explaining_spin(std::span<const LevelSpin> spins, double stalled_seconds) {
  int longest = -1;
  for (int lv = static_cast<int>(spins.size()) - 1; lv >= 0; --lv) {
    if (!spins[lv].fresh) continue;
    if (spins[lv].seconds >= stalled_seconds / 2) return lv;
    if (longest < 0 || spins[lv].seconds > spins[longest].seconds) longest = lv;
  }
  return longest;
}

std::string diagnose_stall(std::span<const StallView> views, std::size_t stalled) {
  auto who = [&](const StallView& v) { return fmt("cpu %d (%s)", v.cpu, v.level); };
  auto edge = [&](const StallView& v) {
    return fmt("%s waits on '%s' (%p) held by cpu %d", who(v).c_str(), v.lock_name ? v.lock_name : "?", v.lock,
               v.lock_owner);
  };
  auto where = [&](const StallView& v) {
    return fmt("last site %s in %s context", v.site ? v.site : "none", v.level);
  };
  // A stalled CPU that spins on no spinlock says little by itself. When
  // another CPU spins on a lock it holds (however long that one has waited),
  // or else another stalled CPU spins on any lock, that CPU's chain says
  // more: it names the lock and goes through its holder. (The seam of
  // StressTest.WatchdogNamesALockNeverReleased failed 1 run in 6 under tsan
  // without this: the holder waited at PcpDrainWait for a drain that the
  // spinning CPU could not serve, and was reported as a stall outside the
  // spinlocks.)
  if (views[stalled].lock == nullptr) {
    std::size_t waiter = views.size();
    for (std::size_t j = 0; j < views.size(); ++j) {
      if (views[j].lock == nullptr) continue;
      if (views[j].lock_owner == views[stalled].cpu) {
        waiter = j;
        break;
      }
      if (views[j].stalled && waiter == views.size()) waiter = j;
    }
    if (waiter != views.size()) stalled = waiter;
  }
  const StallView& first = views[stalled];
  if (first.lock == nullptr) {
    return fmt("no progress: %s (worker %d) has made no task progress for %.1f s and spins on no spinlock; %s "
               "(a hang outside the spinlocks, a livelock, or interrupts that leave the task no time)",
               who(first).c_str(), first.worker, first.stalled_seconds, where(first).c_str());
  }
  std::vector<std::size_t> chain{stalled};
  for (std::size_t step = 0; step <= views.size(); ++step) {
    const StallView& a = views[chain.back()];
    if (a.lock_owner == kNoCpu) {
      std::string s = "no progress: ";
      for (std::size_t c : chain) s += edge(views[c]) + "; ";
      return s + fmt("'%s' has no owner cpu now (free, or held by a thread that is not a CPU): contention or starvation",
                     a.lock_name ? a.lock_name : "?");
    }
    if (a.lock_owner == a.cpu) {
      std::string s = fmt("self-deadlock: %s waits on '%s' (%p), which cpu %d itself holds (in an interrupted frame or "
                          "this one)",
                          who(a).c_str(), a.lock_name ? a.lock_name : "?", a.lock, a.cpu);
      if (chain.size() > 1) {
        s += "; waiting behind it: ";
        for (std::size_t k = 0; k + 1 < chain.size(); ++k) s += (k ? "; " : "") + edge(views[chain[k]]);
      }
      return s;
    }
    std::size_t owner = views.size();
    for (std::size_t j = 0; j < views.size(); ++j)
      if (views[j].cpu == a.lock_owner) owner = j;
    if (owner == views.size()) {
      std::string s = "lock never released: ";
      for (std::size_t c : chain) s += edge(views[c]) + "; ";
      return s + fmt("cpu %d is not a running stress cpu (offline, or gone without unlocking)", a.lock_owner);
    }
    auto in_chain = std::find(chain.begin(), chain.end(), owner);
    if (in_chain != chain.end()) {
      std::string s = "suspected cycle: ";
      for (auto it = in_chain; it != chain.end(); ++it) s += (it == in_chain ? "" : "; ") + edge(views[*it]);
      if (in_chain != chain.begin()) {
        s += "; waiting on the cycle: ";
        for (auto it = chain.begin(); it != in_chain; ++it) s += (it == chain.begin() ? "" : "; ") + edge(views[*it]);
      }
      return s;
    }
    if (views[owner].lock == nullptr) {
      std::string s = "lock never released: ";
      for (std::size_t c : chain) s += edge(views[c]) + "; ";
      return s + fmt("cpu %d waits on no spinlock (%s, no progress for %.1f s): it never releases the lock, or "
                     "holds it far too long",
                     views[owner].cpu, where(views[owner]).c_str(), views[owner].stalled_seconds);
    }
    chain.push_back(owner);
  }
  return "no progress: the wait chain is longer than the number of cpus";
}

StressResult run_stress(const StressOptions& options) {
  if (current_cpu() != kNoCpu) (Report("stress setup") << "run_stress() on a thread that is a CPU").fatal();
  auto r = std::make_unique<Run>();
  r->opt = options;
  int threads = options.threads > 0 ? options.threads : static_cast<int>(std::thread::hardware_concurrency());
  if (options.seam != StressSeam::kNone) threads = std::max(threads, 2);
  threads = std::clamp(threads, 1, kMaxCpus);
  r->opt.threads = threads;
  r->nworkers = threads;
  r->workers = std::make_unique<Worker[]>(static_cast<std::size_t>(threads) + 1);
  r->mail = std::make_unique<Mailbox[]>(static_cast<std::size_t>(threads));
  for (int i = 0; i <= threads; ++i) {
    Worker& w = r->workers[i];
    w.index = i;
    for (int lv = 0; lv < kLevels; ++lv)
      w.rng[lv] = splitmix(options.seed * 0x100000001b3ull + static_cast<std::uint64_t>(i) * 8 + static_cast<std::uint64_t>(lv)) | 1;
  }

  // The allocator: a fresh one per run, its pcp sizes chosen by the seed.
  static constexpr int kBatch[] = {32, 8, 4};
  static constexpr int kHigh[] = {192, 48, 12};
  int shape = static_cast<int>(splitmix(options.seed) % 3);
  if (arena_pages() != 0) {
    slab_shutdown();
    page_allocator_shutdown();
  }
  PageAllocatorConfig config;
  config.pages = options.arena_pages;
  config.pcp_batch = kBatch[shape];
  config.pcp_high = kHigh[shape];
  if (std::string_view err = page_allocator_init(config); !err.empty())
    (Report("stress setup") << "page_allocator_init: " << err).fatal();
  if (std::string_view err = slab_init(); !err.empty()) (Report("stress setup") << "slab_init: " << err).fatal();
  set_bad_page_policy(BadPagePolicy::kAbort);
  set_slab_bad_free_policy(BadPagePolicy::kAbort);
  g_events_notified.store(0);
  MemcgEventFn old_notifier = set_memcg_event_notifier(count_event);

  auto a = std::make_unique<MemCgroup>("stress.A");
  auto b = std::make_unique<MemCgroup>("stress.A.B", *a);
  auto c = std::make_unique<MemCgroup>("stress.C");
  a->set_max(256);
  b->set_max(64);
  r->cg[0] = root_mem_cgroup();
  r->cg[1] = a.get();
  r->cg[2] = b.get();
  r->cg[3] = c.get();

  std::uint64_t dropped_before = interrupts_dropped();
  g_run.store(r.get(), std::memory_order_release);
  set_interrupt_handler(InterruptKind::kIrq, on_interrupt);
  set_interrupt_handler(InterruptKind::kNmi, on_interrupt);
  SiteHook old_site_hook = set_site_hook(site_hook);
  g_previous_report_hook = set_report_hook(report_hook);

  r->start.store(Clock::now().time_since_epoch().count());
  std::thread monitor(monitor_main, std::ref(*r));
  std::vector<std::thread> workers;
  for (int i = 0; i < threads; ++i) workers.emplace_back(worker_main, std::ref(r->workers[i]));
  while (r->ready.load(std::memory_order_acquire) < threads) std::this_thread::yield();
  Clock::time_point start = Clock::now();
  r->start.store(start.time_since_epoch().count());
  r->go.store(true, std::memory_order_release);
  auto deadline = start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(options.seconds));
  while (Clock::now() < deadline) std::this_thread::sleep_until(std::min(deadline, Clock::now() + std::chrono::milliseconds(100)));
  r->stop.store(true, kRelaxed);
  for (std::thread& t : workers) t.join();
  double elapsed = seconds_since(start);

  final_phase(*r);
  r->monitor_stop.store(true, std::memory_order_release);
  monitor.join();

  StressResult result;
  result.options = r->opt;
  result.pcp_batch = kBatch[shape];
  result.pcp_high = kHigh[shape];
  result.elapsed_seconds = elapsed;
  for (int i = 0; i < threads; ++i) {
    Worker& w = r->workers[i];
    for (int lv = 0; lv < kLevels; ++lv) {
      Counters& k = w.counts[lv];
      result.counts.interrupts[lv] += k.interrupts.load();
      result.counts.ops[lv] += k.ops.load();
      for (int api = 0; api < kStressApis; ++api) {
        result.counts.ok[lv][api] += k.ok[api].load();
        result.counts.failed[lv][api] += k.failed[api].load();
      }
      result.counts.mailbox_posts += k.mailbox_posts.load();
      result.counts.mailbox_frees += k.mailbox_frees.load();
      result.counts.shared_refs += k.shared_refs.load();
      result.counts.cpu_cycles += k.cpu_cycles.load();
      result.counts.offline_frees += k.offline_frees.load();
      result.counts.mask_repairs += k.mask_repairs.load();
    }
  }
  PageStats ps = page_stats();
  result.pages_deferred = ps.deferred_pushed;
  result.pages_taken = ps.deferred_taken;
  for (int i = 0; i < kKmallocCaches; ++i) result.slab_deferred += slab_cache_stats(i).deferred_pushed;
  result.memcg_events = g_events_notified.load();
  result.interrupts_dropped = interrupts_dropped() - dropped_before;
  result.longest_stall_seconds = static_cast<double>(r->longest_stall_ns.load()) / 1e9;
  result.longest_stall_worker = r->longest_stall_worker.load();

  set_report_hook(g_previous_report_hook);
  g_previous_report_hook = nullptr;
  set_site_hook(old_site_hook);
  set_interrupt_handler(InterruptKind::kIrq, nullptr);
  set_interrupt_handler(InterruptKind::kNmi, nullptr);
  set_memcg_event_notifier(old_notifier);
  g_run.store(nullptr, std::memory_order_release);
  c.reset();
  b.reset();
  a.reset();
  slab_shutdown();
  page_allocator_shutdown();
  return result;
}

std::string format_stress_table(const StressResult& r) {
  const StressOptions& o = r.options;
  const StressCounts& k = r.counts;
  double t = r.elapsed_seconds > 0 ? r.elapsed_seconds : 1;
  std::string s = fmt("anyctx stress: %.1f s, %d threads, seed %llu; requested %.0f IRQs/s + %.0f NMIs/s; "
                      "arena %zu pages (pcp batch %d, high %d); watchdog %.0f s\n\n",
                      r.elapsed_seconds, o.threads, static_cast<unsigned long long>(o.seed), o.irq_rate, o.nmi_rate,
                      o.arena_pages, r.pcp_batch, r.pcp_high, o.watchdog_seconds);
  s += fmt("%-8s %14s %14s %14s %14s\n", "context", "interrupts", "interrupts/s", "ops", "ops/s");
  std::uint64_t all_irq = 0, all_ops = 0;
  for (int lv = 0; lv < kLevels; ++lv) {
    all_irq += k.interrupts[lv];
    all_ops += k.ops[lv];
    if (lv == 0) {
      s += fmt("%-8s %14s %14s %14llu %14.0f\n", level_name(lv), "-", "-", static_cast<unsigned long long>(k.ops[lv]),
               static_cast<double>(k.ops[lv]) / t);
    } else {
      s += fmt("%-8s %14llu %14.0f %14llu %14.0f\n", level_name(lv), static_cast<unsigned long long>(k.interrupts[lv]),
               static_cast<double>(k.interrupts[lv]) / t, static_cast<unsigned long long>(k.ops[lv]),
               static_cast<double>(k.ops[lv]) / t);
    }
  }
  s += fmt("%-8s %14llu %14.0f %14llu %14.0f\n\n", "total", static_cast<unsigned long long>(all_irq),
           static_cast<double>(all_irq) / t, static_cast<unsigned long long>(all_ops), static_cast<double>(all_ops) / t);

  s += fmt("%-26s %21s %21s %21s\n", "calls: ok / failed", "task", "irq", "nmi");
  static constexpr StressApi kOrder[] = {StressApi::kAllocPagesNolock, StressApi::kKmallocNolock,
                                         StressApi::kChargeNolock,     StressApi::kAllocPages,
                                         StressApi::kKmalloc,          StressApi::kCharge};
  for (StressApi api : kOrder) {
    int a = static_cast<int>(api);
    s += fmt("%-26s", stress_api_name(api));
    for (int lv = 0; lv < kLevels; ++lv) {
      std::uint64_t ok = k.ok[lv][a], failed = k.failed[lv][a];
      if (ok + failed == 0) {
        s += fmt(" %21s", "-");
      } else {
        s += fmt(" %21s", fmt("%llu / %llu", static_cast<unsigned long long>(ok),
                              static_cast<unsigned long long>(failed)).c_str());
      }
    }
    s += "\n";
  }
  s += fmt("\ncross-cpu: %llu mailbox posts, %llu frees of taken items, %llu shared page references; "
           "%llu cpu offline/online cycles, %llu nolock frees while not a cpu\n",
           static_cast<unsigned long long>(k.mailbox_posts), static_cast<unsigned long long>(k.mailbox_frees),
           static_cast<unsigned long long>(k.shared_refs), static_cast<unsigned long long>(k.cpu_cycles),
           static_cast<unsigned long long>(k.offline_frees));
  if (k.mask_repairs != 0)
    s += fmt("tsan: %llu times a cpu's IRQ/NMI signals were found blocked at a task op boundary (TSan's deferred "
             "delivery left the mask all-blocked) and unblocked\n",
             static_cast<unsigned long long>(k.mask_repairs));
  s += fmt("deferred: %llu page blocks pushed (zone.lock busy) or parked (nolock trims), %llu taken by nolock "
           "refills; %llu kfree_nolock objects deferred; %llu memcg limit events delivered; %llu interrupts dropped "
           "(thread not a cpu)\n",
           static_cast<unsigned long long>(r.pages_deferred), static_cast<unsigned long long>(r.pages_taken),
           static_cast<unsigned long long>(r.slab_deferred),
           static_cast<unsigned long long>(r.memcg_events), static_cast<unsigned long long>(r.interrupts_dropped));
  if (r.longest_stall_worker < 0) {
    s += "longest stall: none seen (every cpu progressed between two watchdog ticks)";
  } else {
    s += fmt("longest stall: %.2f s (worker %d)", r.longest_stall_seconds, r.longest_stall_worker);
  }
  s += "; oracles after quiesce (invariants, liveness, conservation): passed\n";
  return s;
}

}  // namespace anyctx::harness
