// harness/mutator.h — a structure-aware mutator over the Program IR, for
// libFuzzer (LLVMFuzzerCustomMutator / LLVMFuzzerCustomCrossOver, see
// fuzz_target.h) and AFL++ (the custom mutator library, fuzz/afl_mutator.cc).
//
// Byte mutation of the encoding cannot build the shapes concurrency bugs
// need: an op inserted anywhere shifts every byte after it, a switch "at
// global event N" moves when anything before it changes. This mutator edits
// the program instead: it inserts, deletes, moves and retargets ops,
// injections and switches, and re-encodes.
//
// Contract:
//  - mutate_program() applies one structural mutation to a program valid for
//    `target` and leaves it valid (validate(target, p).empty()); it returns
//    the kind applied. A kind that does not apply to this program or target
//    (a switch in a one-CPU target, a byte mutation without a ByteMutator,
//    a fault plan where the target takes none) is never returned.
//  - Sites for injections and anchored switches are drawn from the sites the
//    target's op kinds can reach (its op tables decide, not its name), and
//    kInsideUpdatePercent of the time from those where site_inside_update()
//    holds: where an interrupt or a switch meets a lock held or an update
//    half done. Anchored switches usually go on a CPU that has ops and switch
//    to another CPU that has ops; they are preferred to event switches.
//  - When the input's site map is known (a SiteObserver, or the map
//    passed to mutate_program), kObservedSitePercent of those placements
//    are drawn from what the input reached instead: a (CPU, site, level)
//    it hit, with an nth among its hits there, inside an update
//    kInsideUpdatePercent of the time; kHeldElsewherePercent of them among
//    the hits where another CPU was switched out holding a lock or inside
//    an update (where a third event completes a depth-3 interleaving). A placement drawn from the site
//    tables alone lands on a site the program never reaches (its ops, this
//    schedule) most of the time, and then the run is the parent's again.
//    The hits are those of the input as it came in: a stacked mutation
//    after the first may have moved them.
//  - mutate_input() and cross_over() read their inputs like the fuzz entry
//    (fuzz_one): a text program of the target is parsed, anything else is
//    decoded. They write the canonical bytes (encode()) of a valid program,
//    so encode(decode(out)) == out, and at most max_size / max_out bytes: a
//    program that does not fit is mutated again, then shrunk. They return 0
//    only when the limit is 0, or when no non-empty canonical encoding fits
//    (a limit of 1 or 2 bytes).
//  - Ops added to an injection repeat an op of the program kEchoOpPercent of
//    the time (the same kind, size class, order, cgroup or lock, adapted to
//    the context; the interrupted CPU's ops first): an interrupt races with
//    the code it interrupts only when both touch the same structure.
//  - Same arguments, same output: the seed decides every choice (a
//    ByteMutator's own choices aside).
// Context: task; allocates (programs are vectors). Not async-signal-safe.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>

#include "harness/program.h"

namespace anyctx::harness {

// libFuzzer's LLVMFuzzerMutate: mutates data[0, size) in place, at most
// max_size bytes. Return: the new size.
using ByteMutator = std::size_t (*)(std::uint8_t* data, std::size_t size, std::size_t max_size);

// The order of this list is the order of the counters in MutationCounts.
#define ANYCTX_MUTATION_LIST(X)                                                                    \
  X(kInsertOp, "insert_op")                         /* a new op on a CPU or in an injection */     \
  X(kDeleteOp, "delete_op")                                                                        \
  X(kDuplicateOp, "duplicate_op")                   /* a copy of an op, placed after it */         \
  X(kReplaceOp, "replace_op")                       /* another kind, same slot and path */         \
  X(kSwapOps, "swap_ops")                           /* two ops of one list trade places */         \
  X(kChangeOpArgs, "change_op_args")                /* path, order/size/cgroup/lock, flags, slot */\
  X(kByteMutateOpArgs, "byte_mutate_op_args")       /* the ByteMutator on an op's fields */        \
  X(kMoveOpToCpu, "move_op_to_cpu")                                                                \
  X(kMirrorOps, "mirror_ops")                       /* another CPU runs a copy of a CPU's ops */   \
  X(kRemoteFrees, "remote_frees")                   /* another CPU frees every slot filled */      \
  X(kReleaseHeld, "release_held")                   /* a CPU frees, nolock, every slot it holds */ \
  X(kMoveOpIntoInjection, "move_op_into_injection") /* only where the context allows the op */     \
  X(kMoveOpOutOfInjection, "move_op_out_of_injection")                                             \
  X(kAddInjection, "add_injection")                                                                \
  X(kDeleteInjection, "delete_injection")                                                          \
  X(kRetargetInjection, "retarget_injection")       /* site, nth, level, kind or CPU */            \
  X(kAddAnchoredSwitch, "add_anchored_switch")                                                     \
  X(kRetargetAnchoredSwitch, "retarget_anchored_switch")                                           \
  X(kDeleteAnchoredSwitch, "delete_anchored_switch")                                               \
  X(kAddEventSwitch, "add_event_switch")                                                           \
  X(kMoveEventSwitch, "move_event_switch")                                                         \
  X(kDeleteEventSwitch, "delete_event_switch")                                                     \
  X(kChangeCpuCount, "change_cpu_count")                                                           \
  X(kTogglePct, "toggle_pct")                       /* written switches <-> a PCT schedule */      \
  X(kChangePct, "change_pct")                       /* seed (mostly), depth or steps */            \
  X(kChangeFault, "change_fault")                                                                  \
  X(kByteMutateEncoding, "byte_mutate_encoding")    /* the ByteMutator on the whole encoding */

enum class Mutation : std::uint8_t {
#define ANYCTX_MUTATION_ENUM(name, text) name,
  ANYCTX_MUTATION_LIST(ANYCTX_MUTATION_ENUM)
#undef ANYCTX_MUTATION_ENUM
  kCount
};
inline constexpr int kMutationKinds = static_cast<int>(Mutation::kCount);

// How often each kind was applied (indexed by the Mutation's value).
using MutationCounts = std::array<std::uint64_t, kMutationKinds>;

// Percent of site choices (injections, anchored switches) made among the
// sites inside a lock or a half-done update (site_inside_update()).
inline constexpr int kInsideUpdatePercent = 75;

// Percent of the ops added to an injection that repeat an op of the program
// (its kind and arguments; half as often for ops added to a CPU's list).
inline constexpr int kEchoOpPercent = 50;

// Percent of placements (injections, anchored switches, their retargets)
// drawn from the input's observed site hits, when they are known.
inline constexpr int kObservedSitePercent = 85;

// Percent of observed placements drawn among the moments where another CPU,
// switched out, held a lock or was inside an update (SiteMap::held_elsewhere),
// when the input has such moments.
inline constexpr int kHeldElsewherePercent = 50;

// Return: the site map of the program that data[0, size) reads as (as
// fuzz_one reads it), from a run of it (the fuzz target's last run, or one
// now), or nullptr when not known; *first_seen is set when this call ran it
// for the first time (a corpus input the fuzzer picks for the first time).
// Context: task, between fuzz runs.
using SiteObserver = const SiteMap* (*)(const TargetSpec& target, const std::uint8_t* data, std::size_t size,
                                        bool* first_seen);

class PlanQueue;

// Return: the kind's name ("insert_op"), or "?" out of range. Context: any.
const char* mutation_name(Mutation m);

// Return: whether kind `m` can ever apply to programs of `target` (given a
// ByteMutator or not). Context: any.
bool mutation_applies(const TargetSpec& target, Mutation m, bool have_byte_mutator);

// A small deterministic generator (splitmix64).
class Rng {
 public:
  explicit Rng(std::uint64_t seed) : state_(seed) {}
  std::uint64_t next() {
    std::uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  // Return: uniform in [0, n); 0 when n is 0.
  std::uint32_t below(std::uint32_t n) {
    return n == 0 ? 0 : static_cast<std::uint32_t>(((next() >> 32) * n) >> 32);
  }
  // Return: true with probability percent / 100.
  bool chance(unsigned percent) { return below(100) < percent; }

 private:
  std::uint64_t state_;
};

// Writes into `out` an op of the program again, made valid for `ctx`: the
// same kind and arguments (size class, order, cgroup, lock), its own slot
// when it produces one, the slot it names when it consumes one; an op of
// `cpu` 60 % of the time when it has any. Return: false when no op of the
// program is allowed in `ctx`.
bool echo_op(const TargetSpec& target, Ctx ctx, const Program& p, int cpu, Rng& rng, Op& out);

// CPU `to` (another CPU of the program, or a new one when `to` is its CPU
// count) gets a copy of CPU `from`'s ops in place of its own, so the two
// contend on the same locks, stocks and lists: producers take slots nothing
// else fills (while there are any) and their consumers follow; a third of
// the paths flip (a nolock caller meets a held lock by going around it).
// Return: false when `from` has no ops or `to` is not allowed (itself, or a
// CPU beyond the target's).
bool mirror_ops(const TargetSpec& target, Program& p, int from, int to, Rng& rng);

// CPU `to` (as for mirror_ops) gets, in place of its own, ops that ask CPU
// `from` to give back what it holds at `site`: where `from` is inside its
// memcg stock, for each subtree (below the root) that its charges name, a
// limit on the subtree's top and a spinning charge over it of a cgroup
// `from` charges there (the charge meets the limit and posts a drain
// request to every stock that caches a cgroup of the subtree, whichever
// `from` caches then); where it is inside its pcp, drain_all (a drain
// request to every CPU). Return: false for a site of another kind, when
// the target has no such ops, or when `from` charges no cgroup that can be
// limited.
bool request_ops(const TargetSpec& target, Program& p, int from, int to, int site, Rng& rng);

// CPU `to` (as for mirror_ops) gets, in place of its own, a free of every
// slot the program fills (free_pages, kfree or memcg_uncharge, after the
// op that fills it), half of them nolock: switched to while CPU `from` is
// inside a section, it frees from another CPU what is live at that moment
// (a remote free into the slab, the deferred stack or the stock `from` is
// in the middle of editing; a nolock free of a page that misses the pcp
// pushes while `from` holds zone.lock); a slot that is empty then is
// skipped. Return: false when no op fills a slot or `to` is not allowed.
bool remote_free_ops(const TargetSpec& target, Program& p, int from, int to, Rng& rng);

// CPU `cpu` gets, after its last op and while it has room, a release of
// every slot it still holds there (filled by one of its ops and not given
// back by a later one), nolock where the kind has a path, in slot order: a
// burst of frees that crosses the thresholds single frees rarely reach (a
// pcp above `high`, where a nolock free parks a batch; a stock past its
// batch). Return: whether it added one (false when `cpu` holds nothing the
// target may release, or has no room).
bool release_held_ops(const TargetSpec& target, Program& p, int cpu);

// Applies one structural mutation to `p` (valid for `target`; still valid
// after). `bytes` may be nullptr: the byte-level kinds are then skipped.
// `sites`, when given, is the site map of `p` (or of the program it was
// mutated from). Return: the kind applied.
Mutation mutate_program(const TargetSpec& target, Program& p, Rng& rng, ByteMutator bytes,
                        const SiteMap* sites = nullptr);

// Reads data[0, size) (text or bytes), applies one to four stacked
// mutations and writes the canonical encoding into data (capacity
// max_size). `counts`, when given, counts each kind applied; `observe`,
// when given, says where the input goes (asked once, before mutating, for
// targets with injections or more than one CPU). `plans`, when given (with
// `observe`), receives plan()'s candidates for an input seen the first time,
// and kPlannedPercent of the calls write its next candidate instead of a
// mutation (planner.h); the output then depends on the queue as well.
// Return: the new size.
std::size_t mutate_input(const TargetSpec& target, std::uint8_t* data, std::size_t size, std::size_t max_size,
                         unsigned seed, ByteMutator bytes, MutationCounts* counts = nullptr,
                         SiteObserver observe = nullptr, PlanQueue* plans = nullptr);

// Splices programs a and b (CPU lists of one with the injections and
// schedule of the other, op sequences cut and joined, injections merged, a
// CPU of b in place of one of a's) and writes the canonical encoding into
// out (capacity max_out). Return: its size.
std::size_t cross_over(const TargetSpec& target, const std::uint8_t* a, std::size_t asize, const std::uint8_t* b,
                       std::size_t bsize, std::uint8_t* out, std::size_t max_out, unsigned seed);

// A ByteMutator of its own (flip a bit, set a random or interesting byte,
// add a small delta, for where LLVMFuzzerMutate is not there (AFL++, tests).
// Context: any.
std::size_t simple_byte_mutator(std::uint8_t* data, std::size_t size, std::size_t max_size);

}  // namespace anyctx::harness
