// harness/program.h — the unit of fuzzing: a program of allocator
// operations on up to four logical CPUs, with interrupts injected at sites,
// a fault plan and a schedule of CPU switches.
//
// Contract:
//  - A Program is plain data, bounded (kMaxProgramCpus CPUs, kMaxOps ops per
//    CPU, kMaxInjections injections of kMaxInjectionOps ops, kMaxSwitches
//    switches at global events, kMaxAnchoredSwitches switches anchored to a
//    site hit) and always valid: every op is legal in the context it runs in
//    (an NMI's ops are nolock ops; drains, CPU cycles and limits are task
//    ops), and every argument is in range.
//  - decode() is total: every byte string gives a valid program for the
//    given target. encode() writes the canonical bytes of a program, and
//    decode(encode(p)) == p for every valid p of that target.
//  - Ops name slots (kSlots of them, shared by all CPUs and interrupts), so
//    a page allocated on one CPU may be freed on another or by an NMI. An op
//    on a slot in the wrong state (free of an empty slot, alloc into a full
//    one) is skipped, so every program runs without misuse.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "anyctx/ctx/site.h"

namespace anyctx::harness {

inline constexpr int kMaxProgramCpus = 4;
inline constexpr int kMaxOps = 32;
inline constexpr int kMaxInjections = 6;
inline constexpr int kMaxInjectionOps = 8;
inline constexpr int kMaxSwitches = 16;
inline constexpr int kSlots = 8;
inline constexpr int kCgroups = 4;  // root and three children (see executor)
// The parent of each cgroup (the executor's tree: root, A, A/B, C); -1 for
// the root.
inline constexpr int kCgroupParent[kCgroups] = {-1, 0, 1, 0};
inline constexpr int kLocks = 3;    // spinlock A, spinlock B, per-CPU local trylock L

// The pseudo-site "before an op starts", after the real sites.
inline constexpr int kOpBoundary = kSiteCount;
inline constexpr int kInjectionSites = kSiteCount + 1;

// Where a run of a program went, per program CPU, site (or kOpBoundary) and
// context level (task, irq, nmi): where an injection or an anchored switch
// can meet it (the sweep's map, and the mutator's).
struct SiteMap {
  std::uint16_t hits[kMaxProgramCpus][kInjectionSites][3] = {};  // saturating
  // Bit n-1 (n <= 32): the nth hit came while another CPU, switched out,
  // held a lock class or was inside an update (harness/interleave.h).
  std::uint32_t held_elsewhere[kMaxProgramCpus][kInjectionSites][3] = {};
  // Bit n-1 (n <= 32): the nth hit came while its CPU was inside a section
  // (held a lock class) in the middle of which it had been switched out:
  // another CPU ran there, and may have asked something of this one.
  std::uint32_t resumed_inside[kMaxProgramCpus][kInjectionSites][3] = {};
  // Bit n-1 (n <= 32): the nth hit at task level came with the CPU's IRQs
  // masked (a section taken with irqsave): an IRQ injected there waits for
  // the unmask, so every such hit of one section is the same moment for it.
  std::uint32_t irqs_off[kMaxProgramCpus][kInjectionSites] = {};
};

// Return: the name of a site or of kOpBoundary ("OpBoundary"), as the text
// form writes it. Context: any (a constant string).
inline const char* injection_site_name(int site) {
  return site == kOpBoundary ? "OpBoundary" : site_name(static_cast<Site>(site));
}

enum class Ctx : std::uint8_t { kTask = 0, kIrq = 1, kNmi = 2 };

// Return: "task", "irq" or "nmi", as the text form writes a context.
inline const char* ctx_word(Ctx c) { return c == Ctx::kTask ? "task" : c == Ctx::kIrq ? "irq" : "nmi"; }
enum class Path : std::uint8_t { kSpinning = 0, kNolock = 1 };

// The order of this list is the binary format: append only.
#define ANYCTX_OP_LIST(X)                                                          \
  X(kAllocPages, "alloc_pages")       /* path order flags slot */                   \
  X(kFreePages, "free_pages")         /* path slot */                               \
  X(kGetPage, "get_page")             /* slot */                                    \
  X(kPutPage, "put_page")             /* slot */                                    \
  X(kWriteVerify, "write_verify")     /* slot */                                    \
  X(kDrainLocal, "drain_local")       /* (task) */                                  \
  X(kDrainAll, "drain_all")           /* (task) */                                  \
  X(kCpuCycle, "cpu_offline_online")  /* (task) */                                  \
  X(kKmalloc, "kmalloc")              /* path size flags slot */                    \
  X(kKfree, "kfree")                  /* path slot */                               \
  X(kMemcgSetMax, "memcg_set_max")    /* cgroup limit (task) */                     \
  X(kMemcgCharge, "memcg_charge")     /* path cgroup pages slot */                  \
  X(kMemcgUncharge, "memcg_uncharge") /* slot */                                    \
  X(kMemcgSwitch, "memcg_switch")     /* cgroup: this context's current cgroup */   \
  X(kSpinLock, "spin_lock")           /* lock (A or B) */                           \
  X(kSpinTryLock, "spin_trylock")     /* lock */                                    \
  X(kSpinUnlock, "spin_unlock")       /* lock */                                    \
  X(kLocalLock, "local_lock")         /* (L) */                                     \
  X(kLocalTryLock, "local_trylock")   /* (L) */                                     \
  X(kLocalUnlock, "local_unlock")     /* (L) */

enum class OpKind : std::uint8_t {
#define ANYCTX_OP_ENUM(name, text) name,
  ANYCTX_OP_LIST(ANYCTX_OP_ENUM)
#undef ANYCTX_OP_ENUM
  kCount
};
inline constexpr int kOpKinds = static_cast<int>(OpKind::kCount);

const char* op_name(OpKind kind);

// Flags of kAllocPages / kKmalloc.
inline constexpr std::uint8_t kFlagZero = 1;
inline constexpr std::uint8_t kFlagAccount = 2;

// Argument meaning per kind: `order` is a page order, a kmalloc size index
// (kKmallocSizes), a cgroup, or a lock; `arg` is flags, a limit index
// (kMemcgLimits) or a page count. Unused fields are 0.
struct Op {
  OpKind kind = OpKind::kAllocPages;
  Path path = Path::kSpinning;
  std::uint8_t order = 0;
  std::uint8_t arg = 0;
  std::uint8_t slot = 0;
  bool operator==(const Op&) const = default;
};

inline constexpr std::uint32_t kKmallocSizes[] = {1,   8,   16,  24,   32,   64,   96,   128,
                                                  200, 256, 500, 1024, 2048, 4000, 4096, 8192};
inline constexpr int kKmallocSizeCount = sizeof(kKmallocSizes) / sizeof(kKmallocSizes[0]);
inline constexpr std::uint32_t kLimitUnlimited = ~0u;
inline constexpr std::uint32_t kMemcgLimits[] = {0, 1, 4, 16, 64, kLimitUnlimited};
inline constexpr int kMemcgLimitCount = sizeof(kMemcgLimits) / sizeof(kMemcgLimits[0]);
inline constexpr int kMaxSpinningOrder = 5;  // orders a program allocates on the spinning path
inline constexpr int kMaxChargePages = 8;

// "At the nth hit of `site` on CPU `cpu` while in context `level`, deliver
// an interrupt of kind `kind` (kIrq or kNmi) that runs `ops`."
struct Injection {
  Ctx kind = Ctx::kNmi;
  std::uint8_t cpu = 0;
  std::uint16_t site = kOpBoundary;  // a Site, or kOpBoundary
  Ctx level = Ctx::kTask;            // kTask or kIrq (an NMI inside an IRQ)
  std::uint8_t nth = 1;              // 1..8
  std::vector<Op> ops;
  bool operator==(const Injection&) const = default;
};

// "When the global event count reaches `event`, switch to CPU `cpu`." Events
// are site hits and op boundaries, on any CPU, in order of execution. (The
// first form of switch: any op inserted before it moves it to another moment.)
struct Switch {
  std::uint32_t event = 0;
  std::uint8_t cpu = 0;
  bool operator==(const Switch&) const = default;
};

inline constexpr int kMaxAnchoredSwitches = 8;
inline constexpr int kMaxAnchorNth = 32;

// "When CPU `on` reaches the nth hit of `site` in context `level`, switch to
// CPU `cpu`." Anchored to its moment: an op inserted on another CPU, or
// before it on the same CPU at a different site, does not move it.
struct AnchoredSwitch {
  std::uint8_t on = 0;
  std::uint16_t site = kOpBoundary;  // a Site, or kOpBoundary
  Ctx level = Ctx::kTask;            // task, irq or nmi
  std::uint8_t nth = 1;              // 1..kMaxAnchorNth
  std::uint8_t cpu = 1;              // the CPU to run; not `on`
  bool operator==(const AnchoredSwitch&) const = default;
};

inline constexpr int kMaxPctDepth = 4;
inline constexpr int kMaxPctSteps = 4096;

// A PCT schedule (Burckhardt et al., ASPLOS 2010) instead of written
// switches: CPUs get distinct random priorities from `seed`, the highest
// priority CPU that can run runs, and at depth-1 events drawn uniformly from
// 1..steps the running CPU drops below every other. A bug of depth d among
// n CPUs and k events shows with probability at least 1/(n·k^(d-1)).
// depth 0 = off. A program with a PCT schedule has no written switches.
struct PctSpec {
  std::uint16_t seed = 0;
  std::uint8_t depth = 0;    // 0 (off) or 1..kMaxPctDepth
  std::uint16_t steps = 0;   // 1..kMaxPctSteps when on
  bool operator==(const PctSpec&) const = default;
  bool on() const { return depth != 0; }
};

struct FaultSpec {
  std::uint8_t nth = 0;         // fail the nth allocation call; 0 = off
  std::uint8_t percent = 0;     // fail each matching call with this probability, 0..100
  std::uint8_t contexts = 0x7;  // 1 task, 2 irq, 4 nmi
  std::uint8_t paths = 0x3;     // 1 spinning, 2 nolock
  std::uint8_t seed = 0;
  bool operator==(const FaultSpec&) const = default;
};

struct Program {
  std::vector<std::vector<Op>> cpus{{}};  // 1..kMaxProgramCpus
  std::vector<Injection> injections;
  std::vector<Switch> schedule;  // strictly increasing events
  std::vector<AnchoredSwitch> anchored;
  PctSpec pct;  // when on: schedule and anchored are empty
  FaultSpec fault;
  bool operator==(const Program&) const = default;
};

// What a fuzz target's programs may contain.
struct TargetSpec {
  const char* name;
  int min_cpus;
  int max_cpus;
  std::vector<OpKind> task_ops;  // per context, the kinds an op byte picks from
  std::vector<OpKind> irq_ops;
  std::vector<OpKind> nmi_ops;
  bool faults;       // a fault plan may be set
  bool injections;   // interrupts may be injected
};

// The targets of fuzz/ (page_ops, page_smp, slab_ops, memcg_ops, lock_ops),
// and `all`: every op, for text programs. Return: nullptr for an unknown name.
const TargetSpec* target_spec(std::string_view name);

// Return: ops over all CPUs and injections (the size minimize() reduces).
int total_ops(const Program& program);

// Return: whether ops of `kind` take a path (spinning / nolock) / a slot.
bool op_has_path(OpKind kind);
bool op_has_slot(OpKind kind);

// Return: whether `kind` is legal in `ctx` for `target` (the decoder's tables).
bool op_allowed(const TargetSpec& target, Ctx ctx, OpKind kind);

// Return: the op with every field in range for `ctx` (the decoder's rules).
Op normalize_op(Op op, Ctx ctx);

Program decode(const TargetSpec& target, std::span<const std::uint8_t> bytes);
std::vector<std::uint8_t> encode(const TargetSpec& target, const Program& program);
// The same, into `out`, reusing its storage (a fuzzer decodes and encodes a
// few programs per execution; fresh vectors each time cost it ~10 % under
// ASan, which fills and quarantines every block).
void decode_into(const TargetSpec& target, std::span<const std::uint8_t> bytes, Program& out);
void encode_into(const TargetSpec& target, const Program& program, std::vector<std::uint8_t>& out);

// Return: empty when `program` is valid for `target` (what decode produces),
// else the first problem, naming where it is.
std::string validate(const TargetSpec& target, const Program& program);

}  // namespace anyctx::harness
