#include "harness/minimize.h"

#include <algorithm>
#include <vector>

namespace anyctx::harness {

namespace {

class Minimizer {
 public:
  Minimizer(const TargetSpec& target, const Program& program, const std::function<bool(const Program&)>& fails,
            const MinimizeOptions& options, MinimizeStats& stats)
      : target_(target), best_(program), fails_(fails), options_(options), stats_(stats) {}

  Program run() {
    for (bool changed = true; changed && !stopped();) {
      ++stats_.rounds;
      changed = false;
      changed |= drop_cpus();
      changed |= drop_injections();
      changed |= drop_schedule();
      changed |= drop_fault();
      changed |= drop_ops();
      changed |= lower_numbers();
      changed |= simplify_flags();
      say("round " + std::to_string(stats_.rounds) + ": " + describe(best_) +
          (changed ? "" : " (fixpoint)"));
    }
    stats_.stopped = stopped();
    return best_;
  }

  static std::string describe(const Program& p) {
    return std::to_string(p.cpus.size()) + " cpu(s), " + std::to_string(total_ops(p)) + " ops, " +
           std::to_string(p.injections.size()) + " injection(s), " +
           std::to_string(p.schedule.size() + p.anchored.size()) + " switch(es)" + (p.pct.on() ? ", pct" : "") +
           (p.fault == FaultSpec{} ? "" : ", fault plan");
  }

 private:
  bool stopped() {
    if (!stats_.stopped && options_.stop && options_.stop()) stats_.stopped = true;
    return stats_.stopped;
  }

  void say(const std::string& line) {
    if (options_.progress) options_.progress(line);
  }

  // Return: whether `c` (valid, different, and still failing) became the best.
  bool accept(const Program& c, const char* what) {
    if (stopped() || c == best_ || !validate(target_, c).empty()) return false;
    ++stats_.candidates;
    if (!fails_(c)) return false;
    best_ = c;
    ++stats_.accepted;
    say(std::string(what) + ": " + describe(best_));
    return true;
  }

  bool drop_cpus() {
    bool changed = false;
    for (int c = static_cast<int>(best_.cpus.size()) - 1; c >= 0; --c) {
      if (static_cast<int>(best_.cpus.size()) <= target_.min_cpus) break;
      if (c >= static_cast<int>(best_.cpus.size())) continue;
      changed |= accept(without_cpu(best_, c), ("dropped cpu " + std::to_string(c)).c_str());
    }
    return changed;
  }

  static Program without_cpu(const Program& p, int c) {
    Program q = p;
    q.cpus.erase(q.cpus.begin() + c);
    auto renumber = [c](std::uint8_t& cpu) { if (cpu > c) --cpu; };
    std::erase_if(q.injections, [c](const Injection& i) { return i.cpu == c; });
    for (Injection& i : q.injections) renumber(i.cpu);
    std::erase_if(q.schedule, [c](const Switch& s) { return s.cpu == c; });
    for (Switch& s : q.schedule) renumber(s.cpu);
    std::erase_if(q.anchored, [c](const AnchoredSwitch& a) { return a.on == c || a.cpu == c; });
    for (AnchoredSwitch& a : q.anchored) renumber(a.on), renumber(a.cpu);
    if (q.cpus.size() == 1) {  // one CPU: nothing to switch to
      q.schedule.clear();
      q.anchored.clear();
      q.pct = {};
    }
    return q;
  }

  bool drop_injections() {
    bool changed = false;
    for (int i = static_cast<int>(best_.injections.size()) - 1; i >= 0; --i) {
      if (i >= static_cast<int>(best_.injections.size())) continue;
      Program c = best_;
      c.injections.erase(c.injections.begin() + i);
      changed |= accept(c, ("dropped injection " + std::to_string(i)).c_str());
    }
    return changed;
  }

  bool drop_schedule() {
    bool changed = false;
    if (best_.pct.on()) {
      Program c = best_;
      c.pct = {};
      changed |= accept(c, "dropped the pct schedule");
    }
    if (best_.schedule.size() + best_.anchored.size() > 1) {
      Program c = best_;
      c.schedule.clear();
      c.anchored.clear();
      changed |= accept(c, "dropped every switch");
    }
    for (int i = static_cast<int>(best_.schedule.size()) - 1; i >= 0; --i) {
      if (i >= static_cast<int>(best_.schedule.size())) continue;
      Program c = best_;
      c.schedule.erase(c.schedule.begin() + i);
      changed |= accept(c, ("dropped switch " + std::to_string(i)).c_str());
    }
    for (int i = static_cast<int>(best_.anchored.size()) - 1; i >= 0; --i) {
      if (i >= static_cast<int>(best_.anchored.size())) continue;
      Program c = best_;
      c.anchored.erase(c.anchored.begin() + i);
      changed |= accept(c, ("dropped anchored switch " + std::to_string(i)).c_str());
    }
    return changed;
  }

  bool drop_fault() {
    if (best_.fault == FaultSpec{}) return false;
    Program c = best_;
    c.fault = {};
    return accept(c, "dropped the fault plan");
  }

  // The op lists of a program: CPUs 0..n-1, then injections.
  static int lists(const Program& p) { return static_cast<int>(p.cpus.size() + p.injections.size()); }
  static std::vector<Op>& list(Program& p, int l) {
    int ncpus = static_cast<int>(p.cpus.size());
    return l < ncpus ? p.cpus[static_cast<std::size_t>(l)] : p.injections[static_cast<std::size_t>(l - ncpus)].ops;
  }
  static std::string list_name(const Program& p, int l) {
    int ncpus = static_cast<int>(p.cpus.size());
    return l < ncpus ? "cpu " + std::to_string(l) : "injection " + std::to_string(l - ncpus);
  }

  // ddmin's complements: remove chunks of n/2, n/4, ..., 1 ops.
  bool drop_ops() {
    bool changed = false;
    for (int l = 0; l < lists(best_); ++l) {
      int size = static_cast<int>(list(best_, l).size());
      for (int chunk = std::max(1, size / 2);; chunk = std::max(1, chunk / 2)) {
        for (int start = 0; start < static_cast<int>(list(best_, l).size());) {
          Program c = best_;
          std::vector<Op>& ops = list(c, l);
          int end = std::min(static_cast<int>(ops.size()), start + chunk);
          ops.erase(ops.begin() + start, ops.begin() + end);
          std::string what = "dropped " + std::to_string(end - start) + " op(s) of " + list_name(best_, l);
          if (accept(c, what.c_str())) changed = true;  // the next chunk now starts here
          else start += chunk;
          if (stopped()) return changed;
        }
        if (chunk == 1) break;
      }
    }
    return changed;
  }

  // Smaller values to try for `v` (down to `lo`): lo, v/2, v-1.
  static std::vector<int> lower(int v, int lo) {
    std::vector<int> out;
    for (int w : {lo, v / 2, v - 1})
      if (w >= lo && w < v && std::find(out.begin(), out.end(), w) == out.end()) out.push_back(w);
    return out;
  }

  bool lower_numbers() {
    bool changed = false;
    for (int l = 0; l < lists(best_); ++l) {
      for (std::size_t i = 0; i < list(best_, l).size(); ++i) {
        const Op op = list(best_, l)[i];
        std::uint8_t Op::*field = nullptr;
        int lo = 0;
        if (op.kind == OpKind::kAllocPages || op.kind == OpKind::kKmalloc) field = &Op::order;
        else if (op.kind == OpKind::kMemcgCharge) field = &Op::arg, lo = 1;
        if (field == nullptr) continue;
        for (int w : lower(op.*field, lo)) {
          Program c = best_;
          list(c, l)[i].*field = static_cast<std::uint8_t>(w);
          if (accept(c, ("lowered an argument of " + list_name(best_, l) + " op " + std::to_string(i)).c_str())) {
            changed = true;
            break;
          }
        }
      }
    }
    for (std::size_t i = 0; i < best_.injections.size(); ++i) {
      for (int w : lower(best_.injections[i].nth, 1)) {
        Program c = best_;
        c.injections[i].nth = static_cast<std::uint8_t>(w);
        if (accept(c, ("lowered nth of injection " + std::to_string(i)).c_str())) {
          changed = true;
          break;
        }
      }
    }
    for (std::size_t i = 0; i < best_.anchored.size(); ++i) {
      for (int w : lower(best_.anchored[i].nth, 1)) {
        Program c = best_;
        c.anchored[i].nth = static_cast<std::uint8_t>(w);
        if (accept(c, ("lowered nth of anchored switch " + std::to_string(i)).c_str())) {
          changed = true;
          break;
        }
      }
    }
    if (best_.pct.on()) {
      for (int w : lower(best_.pct.depth, 1)) {
        Program c = best_;
        c.pct.depth = static_cast<std::uint8_t>(w);
        if (accept(c, "lowered the pct depth")) {
          changed = true;
          break;
        }
      }
    }
    if (best_.fault.nth > 1) {
      for (int w : lower(best_.fault.nth, 1)) {
        Program c = best_;
        c.fault.nth = static_cast<std::uint8_t>(w);
        if (accept(c, "lowered the fault plan's nth")) {
          changed = true;
          break;
        }
      }
    }
    return changed;
  }

  bool simplify_flags() {
    bool changed = false;
    for (int l = 0; l < lists(best_); ++l) {
      for (std::size_t i = 0; i < list(best_, l).size(); ++i) {
        const Op op = list(best_, l)[i];
        if ((op.kind != OpKind::kAllocPages && op.kind != OpKind::kKmalloc) || op.arg == 0) continue;
        for (std::uint8_t flags : {std::uint8_t{0}, std::uint8_t(op.arg & kFlagZero), std::uint8_t(op.arg & kFlagAccount)}) {
          Program c = best_;
          list(c, l)[i].arg = flags;
          if (accept(c, ("cleared flags of " + list_name(best_, l) + " op " + std::to_string(i)).c_str())) {
            changed = true;
            break;
          }
        }
      }
    }
    return changed;
  }

  const TargetSpec& target_;
  Program best_;
  const std::function<bool(const Program&)>& fails_;
  const MinimizeOptions& options_;
  MinimizeStats& stats_;
};

}  // namespace

Program minimize(const TargetSpec& target, const Program& program,
                 const std::function<bool(const Program&)>& still_fails, const MinimizeOptions& options,
                 MinimizeStats* stats) {
  MinimizeStats local;
  Minimizer m(target, program, still_fails, options, stats != nullptr ? *stats : local);
  return m.run();
}

}  // namespace anyctx::harness
