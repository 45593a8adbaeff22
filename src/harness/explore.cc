#include "harness/explore.h"

#include <algorithm>
#include <utility>

#include "harness/planner.h"

namespace anyctx::harness {

std::string SweepPoint::text() const {
  return "cpu=" + std::to_string(cpu) + " site=" + injection_site_name(site) + " level=" + ctx_word(level) +
         " nth=" + std::to_string(nth) + " " + ctx_word(kind);
}

std::vector<SweepPoint> sweep_points(const TargetSpec& target, const Program& program, const RunStats& stats,
                                     int max_nth) {
  std::vector<SweepPoint> out;
  if (!target.injections) return out;
  bool irq = !sweep_workload(target, program, Ctx::kIrq).empty();
  bool nmi = !sweep_workload(target, program, Ctx::kNmi).empty();
  for (int cpu = 0; cpu < static_cast<int>(program.cpus.size()); ++cpu) {
    for (int site = 0; site < kInjectionSites; ++site) {
      for (Ctx level : {Ctx::kTask, Ctx::kIrq}) {
        int hits = std::min<int>(stats.sites.hits[cpu][site][static_cast<int>(level)], max_nth);
        for (int nth = 1; nth <= hits; ++nth) {
          if (irq && level == Ctx::kTask) out.push_back(SweepPoint{cpu, site, level, nth, Ctx::kIrq});
          if (nmi) out.push_back(SweepPoint{cpu, site, level, nth, Ctx::kNmi});
        }
      }
    }
  }
  return out;
}

std::vector<Op> sweep_workload(const TargetSpec& target, const Program& program, Ctx kind) {
  bool used[kSlots] = {};
  auto mark = [&used](const std::vector<Op>& ops) {
    for (const Op& op : ops)
      if (op_has_slot(op.kind)) used[op.slot % kSlots] = true;
  };
  for (const auto& ops : program.cpus) mark(ops);
  for (const Injection& inj : program.injections) mark(inj.ops);
  std::vector<int> slots;  // unused ones first, from the top; then used ones, from the top
  for (int pass = 0; pass < 2; ++pass)
    for (int s = kSlots - 1; s >= 0; --s)
      if (used[s] == (pass == 1)) slots.push_back(s);

  auto allowed = [&](OpKind k) { return op_allowed(target, kind, k); };
  std::vector<Op> take, give;  // allocations, and their releases in reverse
  std::size_t next = 0;
  auto pair = [&](Op get, Op put) {
    if (!allowed(get.kind) || !allowed(put.kind)) return;
    get.slot = put.slot = static_cast<std::uint8_t>(slots[next++]);
    take.push_back(normalize_op(get, kind));
    give.insert(give.begin(), normalize_op(put, kind));
  };
  int kmalloc64 = static_cast<int>(std::find(std::begin(kKmallocSizes), std::end(kKmallocSizes), 64u) -
                                   std::begin(kKmallocSizes));
  pair(Op{OpKind::kAllocPages, Path::kNolock, 0, 0, 0}, Op{OpKind::kFreePages, Path::kNolock, 0, 0, 0});
  pair(Op{OpKind::kAllocPages, Path::kNolock, 3, 0, 0}, Op{OpKind::kFreePages, Path::kNolock, 0, 0, 0});
  pair(Op{OpKind::kKmalloc, Path::kNolock, static_cast<std::uint8_t>(kmalloc64), 0, 0},
       Op{OpKind::kKfree, Path::kNolock, 0, 0, 0});
  pair(Op{OpKind::kMemcgCharge, Path::kNolock, 1, 1, 0}, Op{OpKind::kMemcgUncharge, Path::kSpinning, 0, 0, 0});
  take.insert(take.end(), give.begin(), give.end());
  return take;
}

Program with_sweep_injection(const TargetSpec& target, const Program& program, const SweepPoint& at) {
  Program p = program;
  Injection inj;
  inj.kind = at.kind;
  inj.cpu = static_cast<std::uint8_t>(at.cpu);
  inj.site = static_cast<std::uint16_t>(at.site);
  inj.level = at.level;
  inj.nth = static_cast<std::uint8_t>(at.nth);
  inj.ops = sweep_workload(target, program, at.kind);
  p.injections.push_back(std::move(inj));
  return p;
}

namespace {

// The first run of a sweep or of schedules: it must pass, and return stats.
bool first_run(const TargetSpec& target, const Program& program, const RunOptions& run, int timeout_ms,
               RunStats& stats, std::string& error) {
  ChildRun r = run_in_child(target, program, run, timeout_ms);
  if (r.failed) {
    error = "the program fails on its own (" + signature_of(r).text() + "); nothing to explore";
    return false;
  }
  if (!r.have_stats) {
    error = "the first run sent no stats";
    return false;
  }
  stats = r.stats;
  return true;
}

}  // namespace

SweepResult sweep(const TargetSpec& target, const Program& program, const SweepOptions& options) {
  SweepResult result;
  auto say = [&](const std::string& s) { if (options.progress) options.progress(s); };
  if (!target.injections) {
    result.error = std::string("target ") + target.name + " takes no injections";
    return result;
  }
  Program base = program;
  if (static_cast<int>(base.injections.size()) >= kMaxInjections) {
    base.injections.pop_back();
    result.replaced_last = true;
  }
  RunStats stats;
  if (!first_run(target, base, options.run, options.timeout_ms, stats, result.error)) return result;
  if (sweep_workload(target, base, Ctx::kIrq).empty() && sweep_workload(target, base, Ctx::kNmi).empty())
    say(std::string("sweep: target ") + target.name + " allows none of the workload's ops in an interrupt");
  std::vector<SweepPoint> points = sweep_points(target, base, stats);
  result.points = static_cast<int>(points.size());
  int runs = std::min(result.points, options.max_runs);
  say("sweep: " + std::to_string(result.points) + " points (site hits x irq/nmi), running " +
      std::to_string(runs) + (result.replaced_last ? "; the program has the most injections: each replaces its last"
                                                   : ""));
  for (int i = 0; i < runs; ++i) {
    Program p = with_sweep_injection(target, base, points[static_cast<std::size_t>(i)]);
    ++result.runs;
    if (std::string e = validate(target, p); !e.empty()) {
      say("sweep: " + points[static_cast<std::size_t>(i)].text() + ": skipped (" + e + ")");
      continue;
    }
    ChildRun r = run_in_child(target, p, options.run, options.timeout_ms);
    if (r.failed) {
      SweepFinding f{points[static_cast<std::size_t>(i)], p, signature_of(r), r.output};
      say("sweep: FAIL " + f.point.text() + ": " + f.signature.text());
      result.findings.push_back(std::move(f));
    }
    if ((i + 1) % 100 == 0) say("sweep: " + std::to_string(i + 1) + "/" + std::to_string(runs) + " runs");
  }
  return result;
}

Program with_pct(const Program& program, int seed, int depth, int steps) {
  Program p = program;
  p.schedule.clear();
  p.anchored.clear();
  p.pct = PctSpec{static_cast<std::uint16_t>(seed), static_cast<std::uint8_t>(depth),
                  static_cast<std::uint16_t>(std::clamp(steps, 1, kMaxPctSteps))};
  return p;
}

SchedulesResult schedules(const TargetSpec& target, const Program& program, int n, const SchedulesOptions& options) {
  SchedulesResult result;
  auto say = [&](const std::string& s) { if (options.progress) options.progress(s); };
  if (program.cpus.size() < 2) {
    result.error = "a one-cpu program has one schedule";
    return result;
  }
  if (options.depth < 1 || options.depth > kMaxPctDepth) {
    result.error = "depth must be 1.." + std::to_string(kMaxPctDepth);
    return result;
  }
  Program plain = program;
  plain.schedule.clear();
  plain.anchored.clear();
  plain.pct = {};
  RunStats stats;
  if (!first_run(target, plain, options.run, options.timeout_ms, stats, result.error)) return result;
  result.steps = static_cast<int>(std::clamp<std::uint64_t>(stats.events, 1, kMaxPctSteps));
  say("schedules: " + std::to_string(n) + " PCT schedules, depth " + std::to_string(options.depth) + ", " +
      std::to_string(program.cpus.size()) + " cpus, steps " + std::to_string(result.steps) + " (events of a plain run" +
      (stats.events > kMaxPctSteps ? ", capped)" : ")"));
  for (int seed = 0; seed < n; ++seed) {
    Program p = with_pct(program, seed, options.depth, result.steps);
    ChildRun r = run_in_child(target, p, options.run, options.timeout_ms);
    ++result.runs;
    if (r.failed) {
      if (result.failed++ == 0) {
        result.first_failing = seed;
        result.first = p;
        result.signature = signature_of(r);
        result.output = r.output;
        say("schedules: seed " + std::to_string(seed) + " fails: " + result.signature.text());
      }
    }
    if ((seed + 1) % 100 == 0)
      say("schedules: " + std::to_string(seed + 1) + "/" + std::to_string(n) + " run, " +
          std::to_string(result.failed) + " failed");
  }
  return result;
}

PlanSearchResult plan_search(const TargetSpec& target, const Program& program, const PlanSearchOptions& options) {
  PlanSearchResult result;
  auto say = [&](const std::string& s) { if (options.progress) options.progress(s); };
  RunStats stats;
  if (!first_run(target, program, options.run, options.timeout_ms, stats, result.error)) return result;
  std::vector<std::pair<Program, SiteMap>> frontier;
  frontier.emplace_back(program, stats.sites);
  for (int level = 1; level <= options.depth && !frontier.empty(); ++level) {
    std::vector<std::pair<Program, SiteMap>> next;
    int planned = 0;
    for (std::size_t i = 0; i < frontier.size(); ++i) {
      for (Planned& c : plan(target, frontier[i].first, frontier[i].second, i)) {
        if (result.runs >= options.max_runs) {
          say("plan: --max-runs reached at level " + std::to_string(level));
          return result;
        }
        ++planned;
        ++result.runs;
        ChildRun r = run_in_child(target, c.program, options.run, options.timeout_ms);
        if (r.failed) {
          result.failed = true;
          result.level = level;
          result.first = std::move(c.program);
          result.signature = signature_of(r);
          result.output = r.output;
          say("plan: level " + std::to_string(level) + " tier " + std::to_string(c.tier) + " fails: " +
              result.signature.text());
          return result;
        }
        if (r.have_stats && level < options.depth) next.emplace_back(std::move(c.program), r.stats.sites);
      }
    }
    say("plan: level " + std::to_string(level) + ": " + std::to_string(planned) + " candidates ran clean");
    frontier = std::move(next);
  }
  return result;
}

}  // namespace anyctx::harness
