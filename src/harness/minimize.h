// harness/minimize.h — shrink a failing program while it still fails the
// same way (program-level delta debugging).
//
// Contract:
//  - minimize() starts from `program` (which `still_fails`) and tries smaller
//    or simpler candidates, keeping each one the predicate accepts, until a
//    whole round of reductions changes nothing (a fixpoint) or the budget
//    (options.stop) says stop. Every candidate it asks about is valid for
//    `target` (validate()); the result is one the predicate accepted (or the
//    input, when none was).
//  - Reductions, in the order of each round: drop a whole CPU (injections and
//    switches renumbered, those on the CPU dropped); drop injections; drop the
//    PCT schedule, all switches, then each switch (event and anchored); drop
//    the fault plan; drop ops from each CPU and injection in halves, quarters,
//    ... down to single ops (ddmin's chunks); lower numbers (alloc orders,
//    kmalloc size indexes, charge pages, nth of injections and anchored
//    switches, PCT depth); clear op flags.
//  - The predicate is called on the calling thread, once per candidate; it
//    may be slow (a child process per call in anyctx-repro).
#pragma once

#include <functional>
#include <string>

#include "harness/program.h"

namespace anyctx::harness {

struct MinimizeOptions {
  std::function<void(const std::string&)> progress;  // a line per accepted step and per round
  std::function<bool()> stop;                          // polled before each candidate: give up early
};

struct MinimizeStats {
  int candidates = 0;  // predicate calls
  int accepted = 0;
  int rounds = 0;
  bool stopped = false;  // the budget ran out before a fixpoint
};

Program minimize(const TargetSpec& target, const Program& program,
                 const std::function<bool(const Program&)>& still_fails, const MinimizeOptions& options = {},
                 MinimizeStats* stats = nullptr);

}  // namespace anyctx::harness
