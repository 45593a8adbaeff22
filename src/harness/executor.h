// harness/executor.h — the deterministic executor and its oracles.
//
// Contract:
//  - run_program() runs a program on real threads, one per program CPU
//    (CPU 0 runs on the calling thread; the others are worker threads
//    started by the first multi-CPU program and parked between programs),
//    exactly one running at a time. The running CPU
//    changes only where the schedule says (at a global event count; events
//    are site hits and op boundaries), when a CPU finishes, and when a CPU
//    spins on a lock (kSpinWait): then it hands over, so the holder can run.
//    A switch happens at a global event count (Switch), when a CPU reaches
//    the nth hit of a site in a context (AnchoredSwitch), or, under a PCT
//    schedule, whenever a CPU of higher priority can run (a CPU spinning on
//    a held lock cannot).
//    Interrupts are real signals raised synchronously (a tgkill to
//    itself) at the injection's site hit; one that a CPU sends another
//    (memcg's drain request) is held until the receiver runs again. Same
//    program, same execution: the trace hash is a function of the program
//    alone. When run_program returns, every CPU has gone offline.
//  - Oracles, each a fatal report naming the oracle, the CPU, the frame
//    (task or which injection) and the op: the page allocator's free lists
//    (check_free_lists) after every top-level op that reached the allocator
//    while every other CPU is between ops (the cheap form), the slab
//    invariants when the last CPU has finished its ops (before going offline
//    flushes the CPU slabs), and page, slab and memcg invariants in full at
//    the end; a shadow map of live
//    allocations (no overlap; the content pattern written at allocation is
//    intact at free); the lock model (a try_lock succeeds exactly when the
//    model says the lock is free); global deadlock (every unfinished CPU
//    spinning); one CPU at a time (a site reached without the turn);
//    liveness after quiesce (deferred lists empty, a nolock allocation
//    succeeds while the zone has free pages, no page lost). The library's
//    own debug reports (self-deadlock, context rules, bad page, ...) are
//    oracles too; the executor adds the step to them.
//  - The code that runs in signal handlers allocates nothing and takes no
//    lock (fixed arrays; only the running CPU touches executor state).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "harness/program.h"

namespace anyctx::harness {

class PlanQueue;

// Test seams: each makes one oracle's condition true on purpose, so a test
// can show that the oracle fires; applied at the first op boundary at or
// after `sabotage_event`. The fuzz targets never set one.
enum class Sabotage : std::uint8_t {
  kNone,
  kCorruptLiveBlock,    // at the event: flip a byte of a live block (shadow map)
  kCorruptFreePage,     // at the event: mark a free frame allocated (invariants)
  kLeakPage,            // at the event: allocate a page and forget it (conservation)
  kLockModelLie,        // at the event: the model believes lock A is held (lock model)
  kNoLockLegalization,  // spin_lock always waits (self-deadlock, global deadlock)
  kSpinningInNmi,       // allocations in an NMI take the spinning path (context rule)
  // For the injection sweep: an injection that landed at the 3rd hit of
  // ZoneListEdit (on its CPU, at its level) marks a free frame allocated at
  // its first op boundary (invariants). Visible at that one site hit only.
  kThirdZoneListEdit,
  // For PCT: program CPU 1 reaches a task op boundary while CPU 0 is between
  // the boundaries of its op 1 and op 2 (an atomicity violation of depth 2):
  // a free frame is marked allocated (invariants).
  kAtomicityCpu0Op1,
};

struct RunOptions {
  std::size_t arena_pages = 256;
  bool invariants_each_op = true;
  Sabotage sabotage = Sabotage::kNone;
  std::uint64_t sabotage_event = 1;
};

struct RunStats {
  std::uint64_t trace_hash = 0;
  std::uint64_t events = 0;
  int ops_run = 0;
  int ops_skipped = 0;  // slot in the wrong state, lock legalised away, ...
  int injections_fired = 0;
  int switches = 0;
  SiteMap sites;  // where the program went
};

// Runs `program` (valid for `target`); aborts with a report on any oracle.
// The page allocator is initialised on the first run and kept (every run
// leaves it fully free and coalesced, as a fresh one is).
// Context: task, not a CPU, no other anyctx user in the process.
RunStats run_program(const TargetSpec& target, const Program& program, const RunOptions& options = {});

// Parses (aborting with the parse error) and runs a text program.
RunStats run_text_or_die(std::string_view text);

// The fuzz entry: a text program (kTextMagic) is parsed — an input that does
// not parse is decoded as bytes instead — anything else is decoded for
// `target`; then it runs. With ANYCTX_FEEDBACK=edges in the environment
// the executor's feedback counters (feedback.h) are cleared after the run,
// so libFuzzer judges an input by the library's edges alone (for merging a
// corpus that a reader can review: the interleaving states multiply it).
// Return: 0.
int fuzz_one(const TargetSpec& target, const std::uint8_t* data, std::size_t size);

// The fuzz targets' SiteObserver (mutator.h): where the input data[0, size)
// goes. The input fuzz_one ran last is answered from that run; another is
// run now (it must be one that ran clean: a corpus input) and remembered.
// Return: its site map, valid until the next call of either function;
// *first_seen (when not nullptr) is set when it ran the input now.
// Context: task, between fuzz runs (libFuzzer resets its counters before
// each input, so this run adds no coverage of its own).
const SiteMap* fuzz_site_map(const TargetSpec& target, const std::uint8_t* data, std::size_t size,
                             bool* first_seen);

// How the fuzz targets' custom mutator works, from ANYCTX_MUTATOR (read once;
// any other value is a fatal error that names it): unset, the structural
// mutator with the planner; "unplanned", without it; "bytes", libFuzzer's
// LLVMFuzzerMutate alone.
enum class MutatorMode { kPlanned, kUnplanned, kBytes };
MutatorMode fuzz_mutator_mode();

// The fuzz targets' planned candidates (planner.h). The custom mutator takes
// them, and adds the plans of a corpus input it picks for the first time;
// the plans of a run that reached an interleaving state no run before it did
// (feedback::novel_interleaving), and the follow-ups of a run whose planned
// switch ran, are added from that run's site map before the next mutation
// (fuzz_plan_last_run), once a custom mutator has asked for a site map (so
// never where none takes from the queue: AFL++, a replayer). Return: nullptr
// unless the mode is kPlanned.
PlanQueue* fuzz_plans();

// Adds the plans fuzz_one left pending for its last run to fuzz_plans(), if
// any. The custom mutator and cross-over call it first; fuzz_one calls it too, so two runs
// without a mutation between them lose nothing. fuzz_one only marks them:
// libFuzzer runs an input a second time, for a leak check, when the run
// malloced more than it freed, and the queue's candidates are freed by the
// mutator, outside any run. Context: task, between fuzz runs.
void fuzz_plan_last_run(const TargetSpec& target);

}  // namespace anyctx::harness
