// harness/explore.h — try one program many ways, each run in a child
// process: an injection sweep (every site hit × IRQ/NMI, like fail-nth) and
// PCT schedules (one program under many seeded schedules), and the
// planner's moments, level by level.
//
// Contract:
//  - sweep(): a first run (no injection added) gives RunStats::sites;
//    then, for every program CPU, site, level (task, irq), nth 1..min(hits, 8)
//    and interrupt kind that may land there (an IRQ at level task, an NMI at
//    task or irq), the program runs once with one more injection: the
//    standard nolock workload (sweep_workload). A program that already has
//    kMaxInjections injections has its last one replaced (the first run is
//    of the program without it, so the map matches). Runs are bounded by
//    max_runs, in a fixed order: the same program gives the same sweep.
//  - schedules(): a first run with the written switches stripped gives the
//    event count k (steps, capped at kMaxPctSteps); schedule i is the program
//    with pct {seed = i, depth, steps = k}. A failing schedule is a program
//    with a `pct` line: replaying its text replays the schedule.
//  - plan_search(): the planner's candidates for the program (planner.h),
//    each run once; then, over every candidate that ran clean, the
//    candidates of its own run, to `depth` levels, breadth first, bounded by
//    max_runs. The fuzzer keeps a candidate only when it reaches something
//    new; this tries them all. The first failing candidate is the result.
//  - A first run that fails is an error (there is nothing to explore).
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "harness/child.h"
#include "harness/program.h"

namespace anyctx::harness {

struct SweepPoint {
  int cpu = 0;
  int site = kOpBoundary;
  Ctx level = Ctx::kTask;
  int nth = 1;
  Ctx kind = Ctx::kNmi;
  std::string text() const;  // "cpu=0 site=ZoneListEdit level=task nth=3 nmi"
};

// Return: every point of the sweep of a program whose first run gave `stats`
// (at most `max_nth` hits per site, CPU and level).
std::vector<SweepPoint> sweep_points(const TargetSpec& target, const Program& program, const RunStats& stats,
                                     int max_nth = 8);

// Return: the injected ops: alloc_pages nolock order 0 and order 3, kmalloc
// nolock 64 bytes, memcg_charge nolock 1 page, then the uncharge and the
// frees; only kinds the target allows in `kind`'s context, into slots the
// program does not use where it leaves enough.
std::vector<Op> sweep_workload(const TargetSpec& target, const Program& program, Ctx kind);

// Return: `program` with an injection at `at` running sweep_workload.
Program with_sweep_injection(const TargetSpec& target, const Program& program, const SweepPoint& at);

struct SweepFinding {
  SweepPoint point;
  Program program;  // the reproducer
  Signature signature;
  std::string output;
};

struct SweepOptions {
  RunOptions run;
  int timeout_ms = kDefaultChildTimeoutMs;
  int max_runs = 4000;
  std::function<void(const std::string&)> progress;  // the count first, then a line per 100 runs
};

struct SweepResult {
  std::string error;          // non-empty: the sweep did not run
  bool replaced_last = false; // the program had kMaxInjections: its last is replaced
  int points = 0;             // in the full sweep
  int runs = 0;               // run (<= max_runs)
  std::vector<SweepFinding> findings;
};

SweepResult sweep(const TargetSpec& target, const Program& program, const SweepOptions& options = {});

struct SchedulesOptions {
  RunOptions run;
  int timeout_ms = kDefaultChildTimeoutMs;
  int depth = 3;
  std::function<void(const std::string&)> progress;
};

struct SchedulesResult {
  std::string error;
  int steps = 0;           // k: events of the first run, capped
  int runs = 0;
  int failed = 0;
  int first_failing = -1;  // its seed
  Program first;           // the first failing schedule, replayable
  Signature signature;
  std::string output;
};

// Return: `program` without written switches, under PCT {seed, depth, steps}.
Program with_pct(const Program& program, int seed, int depth, int steps);

SchedulesResult schedules(const TargetSpec& target, const Program& program, int n,
                          const SchedulesOptions& options = {});

struct PlanSearchOptions {
  RunOptions run;
  int timeout_ms = kDefaultChildTimeoutMs;
  int depth = 2;
  int max_runs = 4000;
  std::function<void(const std::string&)> progress;
};

struct PlanSearchResult {
  std::string error;
  int runs = 0;
  int level = 0;       // of the first failing candidate (1: planned over the program)
  bool failed = false;
  Program first;       // the first failing candidate
  Signature signature;
  std::string output;
};

PlanSearchResult plan_search(const TargetSpec& target, const Program& program, const PlanSearchOptions& options = {});

}  // namespace anyctx::harness
