// harness/child.h — run a program in a child process, with a time limit, and
// name the failure it ends in (the oracle and the kind of step).
//
// Contract:
//  - run_in_child() forks; the child runs the program (the oracles abort) and
//    sends back its stderr and, when it returns, its RunStats through pipes.
//    A child still running after `timeout_ms` is killed (SIGKILL) and counts
//    as failed, timed_out. The caller must not have run a multi-CPU program
//    in this process (its parked worker threads do not survive fork).
//  - signature_of() names a failure: the oracle (the KIND of the first
//    "anyctx: KIND: ..." line; for a harness report "harness: WHAT"; a
//    sanitizer's error kind; "timeout") and the kind of step: the frames of
//    the step's bracket without numbers ("task alloc_pages > nmi free_pages").
//    Two failures are the same when both match.
#pragma once

#include <functional>
#include <string>

#include "harness/executor.h"
#include "harness/program.h"

namespace anyctx::harness {

struct ChildRun {
  bool failed = false;
  bool timed_out = false;
  std::string how;     // "exit 1", "signal 6", "timeout after 10000 ms"
  std::string output;  // the child's stderr
  bool have_stats = false;
  RunStats stats;      // when have_stats (the run returned)
};

inline constexpr int kDefaultChildTimeoutMs = 10'000;

ChildRun run_in_child(const TargetSpec& target, const Program& program, const RunOptions& options = {},
                      int timeout_ms = kDefaultChildTimeoutMs);

struct Signature {
  std::string oracle;     // "" when the run did not fail
  std::string step;       // the bracket as printed, "" when outside a step
  std::string step_kind;  // the bracket's frames without numbers
  bool same_failure(const Signature& o) const { return oracle == o.oracle && step_kind == o.step_kind; }
  std::string text() const;  // "ORACLE at STEP_KIND" (or "... outside a program step")
};

Signature signature_of(const ChildRun& run);
Signature signature_of_output(const std::string& output);

// Return: the kind of a step bracket "[program cpu 0 (anyctx cpu 0): task op 3
// alloc_pages > nmi injection 0 op 1 free_pages; event 57]":
// "task alloc_pages > nmi free_pages".
std::string step_kind_of(const std::string& bracket);

// A predicate for minimize(): the program fails, in a child, the way `want` does.
std::function<bool(const Program&)> fails_like(const TargetSpec& target, const Signature& want,
                                               const RunOptions& options = {},
                                               int timeout_ms = kDefaultChildTimeoutMs);

}  // namespace anyctx::harness
