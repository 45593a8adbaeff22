#include "anyctx/lock/validator.h"

#include <cstring>

#include "anyctx/ctx/context.h"
#include "anyctx/ctx/report.h"

namespace anyctx {

#if ANYCTX_DEBUG

namespace detail {
std::atomic<bool> g_validator_on{true};
}  // namespace detail

namespace {

using detail::barrier_against_interrupts;

constexpr std::uint16_t kNoClass = 0xffff;  // cached: the table was full

// --- classes -------------------------------------------------------------------------

enum Usage : std::uint16_t {
  kUsedTask = 1u << 0,
  kUsedIrq = 1u << 1,
  kUsedNmi = 1u << 2,
  kWaitInIrq = 1u << 3,   // taken waiting in IRQ context
  kHeldIrqsOn = 1u << 4,  // held in task context, IRQs enabled, on a CPU
  kWaited = 1u << 5,
  kTried = 1u << 6,
  kFamilySpin = 1u << 7,
  kFamilyLocal = 1u << 8,
};

// A site with the context it was seen in.
struct SiteSlot {
  std::atomic<const char*> file{nullptr};
  std::atomic<std::uint32_t> line{0};
  std::atomic<std::int16_t> cpu{kNoCpu};
};

struct ClassSlot {
  std::atomic<const char*> name{nullptr};
  std::atomic<std::uint16_t> usage{0};
  std::atomic<bool> unchecked{false};
  SiteSlot wait_in_irq;  // first site of kWaitInIrq
  SiteSlot irqs_on;      // first site of kHeldIrqsOn
};

ClassSlot g_classes[kMaxLockClasses];
std::atomic<int> g_class_count{0};
std::atomic<bool> g_saturated{false};

std::uint32_t hash_name(const char* s) {
  std::uint32_t h = 2166136261u;
  for (; *s != '\0'; ++s) h = (h ^ static_cast<unsigned char>(*s)) * 16777619u;
  return h;
}

// Return: the class id (1-based) of `name`, kNoClass when the table is full.
std::uint16_t class_id_of(const char* name) {
  if (name == nullptr) name = "(unnamed)";
  std::uint32_t h = hash_name(name);
  for (int probe = 0; probe < kMaxLockClasses; ++probe) {
    int i = static_cast<int>((h + static_cast<std::uint32_t>(probe)) % kMaxLockClasses);
    ClassSlot& c = g_classes[i];
    const char* have = c.name.load(std::memory_order_acquire);
    if (have == nullptr) {
      if (c.name.compare_exchange_strong(have, name, std::memory_order_acq_rel, std::memory_order_acquire)) {
        g_class_count.fetch_add(1, std::memory_order_relaxed);
        return static_cast<std::uint16_t>(i + 1);
      }
      // Lost the slot: `have` is the winner's name.
    }
    if (have == name || std::strcmp(have, name) == 0) return static_cast<std::uint16_t>(i + 1);
  }
  g_saturated.store(true, std::memory_order_relaxed);
  return kNoClass;
}

std::uint16_t class_id(const char* name, LockClassCache& cache) {
  std::uint16_t id = cache.load(std::memory_order_relaxed);
  if (ANYCTX_LIKELY(id != 0)) return id;
  id = class_id_of(name);
  cache.store(id, std::memory_order_relaxed);
  return id;
}

ClassSlot& slot(std::uint16_t id) { return g_classes[id - 1]; }
const char* name_of(std::uint16_t id) { return slot(id).name.load(std::memory_order_acquire); }
bool unchecked(std::uint16_t id) { return slot(id).unchecked.load(std::memory_order_relaxed); }

void record_site(SiteSlot& s, SrcLoc at) {
  s.file.store(at.file, std::memory_order_relaxed);
  s.line.store(at.line, std::memory_order_relaxed);
  s.cpu.store(static_cast<std::int16_t>(current_cpu()), std::memory_order_relaxed);
}

void put_site(Report& r, const SiteSlot& s) {
  SrcLoc at{s.file.load(std::memory_order_relaxed), s.line.load(std::memory_order_relaxed)};
  if (!at.known()) {
    r << "(site not recorded yet)";
    return;
  }
  r << at << " (cpu " << static_cast<int>(s.cpu.load(std::memory_order_relaxed)) << ")";
}

// --- held locks (per thread) --------------------------------------------------------

struct Held {
  const void* lock;
  const char* file;
  std::uint32_t line;
  std::uint16_t cls;
  ContextLevel level;
  LockAcquire how;
  LockFamily family;
};

struct ValidatorThread {
  Held held[kMaxHeldLocks]{};
  std::atomic<int> depth{0};
  int dropped = 0;                   // pushes past kMaxHeldLocks, not tracked
  int nolock_depth[3] = {0, 0, 0};   // per context level: nested nolock calls
  const char* nolock_entry[3] = {nullptr, nullptr, nullptr};  // outermost
};

thread_local constinit ValidatorThread t_val;

int level_index(ContextLevel level) { return static_cast<int>(level); }

// A slot being filled: a handler that interrupts push_held() sees it counted
// but skips it, and its own pops do not trim below it.
const void* const kFilling = reinterpret_cast<const void*>(1);

bool is_lock(const void* p) { return p != nullptr && p != kFilling; }

bool holds(const ValidatorThread& t, const void* lock) {
  int d = t.depth.load(std::memory_order_relaxed);
  for (int i = 0; i < d; ++i)
    if (t.held[i].lock == lock) return true;
  return false;
}

void push_held(const void* lock, std::uint16_t cls, LockFamily family, LockAcquire how, SrcLoc at) {
  ValidatorThread& t = t_val;
  int d = t.depth.load(std::memory_order_relaxed);
  if (d == kMaxHeldLocks) {
    ++t.dropped;
    g_saturated.store(true, std::memory_order_relaxed);
    return;
  }
  // Reserve the slot, then fill it: a handler landing in between pushes
  // above it and cannot trim it away.
  t.held[d].lock = kFilling;
  barrier_against_interrupts();
  t.depth.store(d + 1, std::memory_order_relaxed);
  barrier_against_interrupts();
  t.held[d] = Held{kFilling, at.file, at.line, cls, context_level(), how, family};
  barrier_against_interrupts();
  t.held[d].lock = lock;
  barrier_against_interrupts();
}

void pop_held(const void* lock) {
  ValidatorThread& t = t_val;
  int d = t.depth.load(std::memory_order_relaxed);
  for (int i = d - 1; i >= 0; --i) {
    if (t.held[i].lock != lock) continue;
    t.held[i].lock = nullptr;
    barrier_against_interrupts();
    while (d > 0 && t.held[d - 1].lock == nullptr) --d;
    t.depth.store(d, std::memory_order_relaxed);
    barrier_against_interrupts();
    return;
  }
  // Not tracked: pushed past the bound, or taken by another thread.
  if (t.dropped > 0) --t.dropped;
}

const char* how_name(LockAcquire how) { return how == LockAcquire::kWait ? "lock()" : "try_lock()"; }

// Appends "; this frame holds 'X' (lock(), task) taken at F:L, ...".
void put_held(Report& r, ContextLevel level) {
  const ValidatorThread& t = t_val;
  int d = t.depth.load(std::memory_order_relaxed);
  bool first = true;
  for (int i = 0; i < d; ++i) {
    const Held& h = t.held[i];
    if (!is_lock(h.lock) || h.level != level) continue;
    r << (first ? "; this frame holds " : ", ") << "'" << (h.cls != kNoClass ? name_of(h.cls) : "?") << "' ("
      << how_name(h.how) << ") taken at " << SrcLoc{h.file, h.line};
    first = false;
  }
}

void put_where(Report& r) {
  r << "cpu " << current_cpu() << " (" << context_name(context_level()) << ")";
}

// --- report 3: a wait inside a nolock call -----------------------------------------

[[noreturn]] ANYCTX_COLD void report_wait_in_nolock(const char* what, const char* class_name, SrcLoc at) {
  ContextLevel level = context_level();
  Report r("lock validator: wait in a nolock call");
  put_where(r);
  r << " " << what;
  if (class_name != nullptr) r << " '" << class_name << "'";
  r << " at " << at << " inside " << t_val.nolock_entry[level_index(level)]
    << "(), which must never wait (try_lock() and fail instead)";
  put_held(r, level);
  r.fatal();
}

void check_nolock(ContextLevel level, const char* what, const char* class_name, SrcLoc at) {
  if (ANYCTX_UNLIKELY(t_val.nolock_depth[level_index(level)] != 0)) report_wait_in_nolock(what, class_name, at);
}

// --- reports 2 and 4: IRQ safety ---------------------------------------------------

[[noreturn]] ANYCTX_COLD void report_irq_inversion(std::uint16_t id, LockFamily family, SrcLoc at) {
  const ClassSlot& c = slot(id);
  bool local = family == LockFamily::kLocal;
  Report r(local ? "lock validator: interruptible local lock" : "lock validator: irq-safety inversion");
  r << (local ? "local lock '" : "spinlock '") << c.name.load() << "' is taken with lock() in IRQ context (first at ";
  put_site(r, c.wait_in_irq);
  r << ") and held in task context with IRQs enabled (first at ";
  put_site(r, c.irqs_on);
  r << (local ? "): an IRQ landing in that section finds its own CPU's lock taken; mask IRQs around it "
                "(lock_irqsave) or take it with try_lock() in IRQ context"
              : "): an IRQ landing on that CPU while it holds the lock spins forever; take it with lock_irqsave() "
                "everywhere, or only try_lock() it in IRQ context");
  r << "; now ";
  put_where(r);
  r << " at " << at;
  put_held(r, context_level());
  r.fatal();
}

// Marks `bits` on class `id`; reports when they complete an IRQ inversion.
void mark_usage(std::uint16_t id, std::uint16_t bits, LockFamily family, SrcLoc at) {
  ClassSlot& c = slot(id);
  std::uint16_t old = c.usage.load(std::memory_order_relaxed);
  if ((old & bits) == bits) return;
  old = c.usage.fetch_or(bits, std::memory_order_acq_rel);
  std::uint16_t fresh = bits & ~old;
  if (fresh & kWaitInIrq) record_site(c.wait_in_irq, at);
  if (fresh & kHeldIrqsOn) record_site(c.irqs_on, at);
  if (c.unchecked.load(std::memory_order_relaxed)) return;
  if (((fresh & kWaitInIrq) && (old & kHeldIrqsOn)) || ((fresh & kHeldIrqsOn) && (old & kWaitInIrq)) ||
      ((fresh & kWaitInIrq) && (fresh & kHeldIrqsOn)))
    report_irq_inversion(id, family, at);
}

std::uint16_t usage_bits(ContextLevel level, LockFamily family, LockAcquire how) {
  std::uint16_t bits = level == ContextLevel::kTask ? kUsedTask : level == ContextLevel::kIrq ? kUsedIrq : kUsedNmi;
  bits |= family == LockFamily::kSpin ? kFamilySpin : kFamilyLocal;
  bits |= how == LockAcquire::kWait ? kWaited : kTried;
  if (how == LockAcquire::kWait && level == ContextLevel::kIrq) bits |= kWaitInIrq;
  if (level == ContextLevel::kTask && !irqs_disabled() && current_cpu() != kNoCpu) bits |= kHeldIrqsOn;
  return bits;
}

// --- report 1: dependencies -----------------------------------------------------------

constexpr int kWords = (kMaxLockClasses + 63) / 64;
std::atomic<std::uint64_t> g_adj[kMaxLockClasses][kWords];  // [from-1] bit to-1

struct Edge {
  std::atomic<std::uint16_t> from{0}, to{0};  // 0-based classes
  std::atomic<const char*> from_file{nullptr}, to_file{nullptr};
  std::atomic<std::uint32_t> from_line{0}, to_line{0};
  std::atomic<std::uint8_t> level{0};
  std::atomic<std::int16_t> cpu{kNoCpu};
};
Edge g_edges[kMaxLockEdges];
std::atomic<int> g_edge_count{0};
std::atomic<std::uint16_t> g_edge_of[kMaxLockClasses][kMaxLockClasses];  // 1 + index into g_edges, 0: none

// Return: whether a path from `from` to `to` (0-based) exists; parent[] then
// leads back from `to` to `from`.
bool find_path(int from, int to, std::uint16_t* parent) {
  std::uint64_t seen[kWords] = {};
  std::uint16_t queue[kMaxLockClasses];
  int head = 0, tail = 0;
  queue[tail++] = static_cast<std::uint16_t>(from);
  seen[from / 64] |= std::uint64_t{1} << (from % 64);
  while (head < tail) {
    int u = queue[head++];
    for (int w = 0; w < kWords; ++w) {
      std::uint64_t bits = g_adj[u][w].load(std::memory_order_seq_cst) & ~seen[w];
      while (bits != 0) {
        int v = w * 64 + __builtin_ctzll(bits);
        bits &= bits - 1;
        seen[w] |= std::uint64_t{1} << (v % 64);
        parent[v] = static_cast<std::uint16_t>(u);
        if (v == to) return true;
        queue[tail++] = static_cast<std::uint16_t>(v);
      }
    }
  }
  return false;
}

// "'A' -> 'B' ('A' held since F:L, 'B' taken at G:L, task, cpu N)".
void put_edge(Report& r, int from, int to) {
  r << "'" << name_of(static_cast<std::uint16_t>(from + 1)) << "' -> '" << name_of(static_cast<std::uint16_t>(to + 1))
    << "'";
  std::uint16_t e = g_edge_of[from][to].load(std::memory_order_acquire);
  if (e == 0) {
    r << " (sites not recorded)";
    return;
  }
  const Edge& x = g_edges[e - 1];
  r << " (held since " << SrcLoc{x.from_file.load(), x.from_line.load()} << ", then lock() at "
    << SrcLoc{x.to_file.load(), x.to_line.load()} << ", "
    << context_name(static_cast<ContextLevel>(x.level.load())) << ", cpu " << static_cast<int>(x.cpu.load()) << ")";
}

[[noreturn]] ANYCTX_COLD void report_cycle(int a, int b, const Held& held, SrcLoc at, const std::uint16_t* parent) {
  Report r("lock validator: order inversion");
  put_where(r);
  r << " takes '" << name_of(static_cast<std::uint16_t>(b + 1)) << "' with lock() at " << at << " while holding '"
    << name_of(static_cast<std::uint16_t>(a + 1)) << "' (taken at " << SrcLoc{held.file, held.line}
    << "): the new order closes a cycle, so two CPUs taking the locks in these orders can deadlock. Cycle: ";
  put_edge(r, a, b);
  // The path b -> ... -> a, walked back from a.
  int path[kMaxLockClasses];
  int n = 0;
  for (int v = a; v != b && n < kMaxLockClasses; v = parent[v]) path[n++] = v;
  int prev = b;
  for (int i = n - 1; i >= 0; --i) {
    r << "; ";
    put_edge(r, prev, path[i]);
    prev = path[i];
  }
  r.fatal();
}

void add_edge(const Held& held, std::uint16_t to_id, ContextLevel level, SrcLoc at) {
  int a = held.cls - 1, b = to_id - 1;
  std::atomic<std::uint64_t>& word = g_adj[a][b / 64];
  std::uint64_t bit = std::uint64_t{1} << (b % 64);
  if (word.load(std::memory_order_relaxed) & bit) return;
  if (word.fetch_or(bit, std::memory_order_seq_cst) & bit) return;
  int n = g_edge_count.fetch_add(1, std::memory_order_relaxed);
  if (n < kMaxLockEdges) {
    Edge& e = g_edges[n];
    e.from.store(static_cast<std::uint16_t>(a), std::memory_order_relaxed);
    e.to.store(static_cast<std::uint16_t>(b), std::memory_order_relaxed);
    e.from_file.store(held.file, std::memory_order_relaxed);
    e.from_line.store(held.line, std::memory_order_relaxed);
    e.to_file.store(at.file, std::memory_order_relaxed);
    e.to_line.store(at.line, std::memory_order_relaxed);
    e.level.store(static_cast<std::uint8_t>(level), std::memory_order_relaxed);
    e.cpu.store(static_cast<std::int16_t>(current_cpu()), std::memory_order_relaxed);
    g_edge_of[a][b].store(static_cast<std::uint16_t>(n + 1), std::memory_order_release);
  } else {
    g_saturated.store(true, std::memory_order_relaxed);
  }
  std::uint16_t parent[kMaxLockClasses];
  if (find_path(b, a, parent)) report_cycle(a, b, held, at, parent);
}

}  // namespace

namespace detail {

void validator_wait_slow(const void* lock, const char* class_name, LockClassCache& cache, LockFamily family,
                         SrcLoc at) {
  ValidatorThread& t = t_val;
  // Already held by this thread: the lock's own report (self-deadlock,
  // recursion, nested section) names it better.
  if (holds(t, lock)) return;
  ContextLevel level = context_level();
  check_nolock(level, family == LockFamily::kSpin ? "lock() on spinlock" : "lock() on local lock", class_name, at);
  std::uint16_t id = class_id(class_name, cache);
  if (id == kNoClass) return;
  mark_usage(id, usage_bits(level, family, LockAcquire::kWait), family, at);
  if (family != LockFamily::kSpin || unchecked(id)) return;
  int d = t.depth.load(std::memory_order_relaxed);
  for (int i = 0; i < d; ++i) {
    const Held& h = t.held[i];
    if (!is_lock(h.lock) || h.level != level || h.family != LockFamily::kSpin || h.cls == id || h.cls == kNoClass ||
        unchecked(h.cls))
      continue;
    add_edge(h, id, level, at);
  }
}

void validator_acquired_slow(const void* lock, const char* class_name, LockClassCache& cache, LockFamily family,
                             LockAcquire how, SrcLoc at) {
  std::uint16_t id = class_id(class_name, cache);
  if (how == LockAcquire::kTry && id != kNoClass) mark_usage(id, usage_bits(context_level(), family, how), family, at);
  push_held(lock, id, family, how, at);
}

void validator_released_slow(const void* lock) { pop_held(lock); }

void validator_note_wait_slow(const char* what, SrcLoc at) { check_nolock(context_level(), what, nullptr, at); }

void nolock_enter(const char* entry) {
  ValidatorThread& t = t_val;
  int l = level_index(context_level());
  if (t.nolock_depth[l]++ == 0) t.nolock_entry[l] = entry;
  barrier_against_interrupts();
}

void nolock_exit() {
  ValidatorThread& t = t_val;
  barrier_against_interrupts();
  --t.nolock_depth[level_index(context_level())];
}

}  // namespace detail

void set_lock_validator(LockValidator state) {
  detail::g_validator_on.store(state == LockValidator::kOn, std::memory_order_relaxed);
}
bool lock_validator_on() { return detail::g_validator_on.load(std::memory_order_relaxed); }

bool set_lock_class_unchecked(const char* class_name) {
  std::uint16_t id = class_id_of(class_name);
  if (id == kNoClass) return false;
  slot(id).unchecked.store(true, std::memory_order_relaxed);
  return true;
}

void lock_validator_forget() {
  int n = g_edge_count.load(std::memory_order_acquire);
  if (n > kMaxLockEdges) {  // some edges have no record: clear everything
    for (auto& row : g_adj)
      for (auto& w : row) w.store(0, std::memory_order_relaxed);
    for (auto& row : g_edge_of)
      for (auto& e : row) e.store(0, std::memory_order_relaxed);
  } else {
    for (int i = 0; i < n; ++i) {
      int a = g_edges[i].from.load(std::memory_order_relaxed), b = g_edges[i].to.load(std::memory_order_relaxed);
      g_adj[a][b / 64].store(0, std::memory_order_relaxed);  // whole word: every edge in it is in the log
      g_edge_of[a][b].store(0, std::memory_order_relaxed);
    }
  }
  g_edge_count.store(0, std::memory_order_release);
  for (ClassSlot& c : g_classes) {
    if (c.usage.load(std::memory_order_relaxed) == 0) continue;  // most slots: unused since the last forget
    c.usage.store(0, std::memory_order_relaxed);
    for (SiteSlot* site : {&c.wait_in_irq, &c.irqs_on}) {
      site->file.store(nullptr, std::memory_order_relaxed);
      site->line.store(0, std::memory_order_relaxed);
    }
  }
}

int held_lock_count() { return t_val.depth.load(std::memory_order_relaxed); }
bool in_nolock_call() { return t_val.nolock_depth[level_index(context_level())] != 0; }

LockValidatorStats lock_validator_stats() {
  LockValidatorStats s;
  s.classes = g_class_count.load(std::memory_order_relaxed);
  int e = g_edge_count.load(std::memory_order_relaxed);
  s.edges = e < kMaxLockEdges ? e : kMaxLockEdges;
  s.saturated = g_saturated.load(std::memory_order_relaxed);
  return s;
}

#else  // !ANYCTX_DEBUG

void set_lock_validator(LockValidator) {}
void lock_validator_forget() {}
bool lock_validator_on() { return false; }
bool set_lock_class_unchecked(const char*) { return true; }
int held_lock_count() { return 0; }
bool in_nolock_call() { return false; }
LockValidatorStats lock_validator_stats() { return {}; }

#endif

}  // namespace anyctx
