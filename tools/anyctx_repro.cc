// anyctx-repro: reproduce a fuzzer finding from one file.
//
//   anyctx-repro [--target NAME] [--runs N] [--emit-test NAME] [--encode OUT]
//                [--sabotage KIND] FILE
//
// FILE is a fuzz input: bytes (decoded for the target) or a text program
// ("# anyctx program v1"). The target comes from --target, else the text's
// `target` line, else the artifact path (build/fuzz-artifacts/NAME/...,
// corpus/NAME/...). It prints the program as text, replays it N times (default
// 10), each in a child process, and reports the hit rate, the oracle that
// fired and the step it fired at. --emit-test prints the program as a gtest
// regression test instead of running it; --encode writes its canonical bytes.
// --print writes the program as text and exits (a regression kept as text
// stays the same program when the binary format grows).
// --trace runs it once in this process and prints FILE, the run's trace hash
// and event count: a row of src/harness/testdata/v1-traces.txt, which a
// deliberate change of what runs regenerates (see that file's header).
// --sites runs it once in this process and prints where it went: for each
// CPU, site and context level it reached, the hits, and which of the first 32
// came while another CPU, switched out, held a lock or was inside an update,
// or while this CPU was back inside a section another CPU ran in the middle
// of (the moments an anchored switch or an injection can name).
// --sabotage KIND makes an oracle fire on purpose (see Sabotage in
// harness/executor.h), to check the tool chain end to end.
//
// Program-level tools (every run in a child process, killed after --timeout
// seconds, default 10; progress on stderr, results on stdout):
//   --minimize [--out OUT] [--budget S]  shrink a failing program while the same
//        oracle fires at the same kind of step (harness/minimize.h); prints the
//        result as a v2 text program (to OUT with --out) and its oracle and step.
//   --sweep [--max-runs N] [--out DIR]   one more injection (the standard nolock
//        workload) at every site hit × IRQ/NMI (harness/explore.h); prints each
//        failing point with its oracle and the first failing program (with
//        --out, every failing program goes to DIR/ and its path is printed).
//   --plan D [--max-runs N] [--out OUT]  the fuzzer's planned moments
//        (harness/planner.h) around the program, to D levels (a switch, then
//        the interrupts it makes possible); prints the first failing program.
//   --schedules N [--depth D] [--out OUT]  N PCT schedules (seeds 0..N-1, depth
//        D, default 3); prints how many fail and the first failing one as a
//        program with its `pct` line (replaying it replays the schedule).
// Exit status: 0 when no run failed, 1 when some did, 2 on bad usage or input.
#include <sys/stat.h>

#include <bit>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "harness/child.h"
#include "harness/executor.h"
#include "harness/explore.h"
#include "harness/minimize.h"
#include "harness/program.h"
#include "harness/text.h"

namespace {

using namespace anyctx::harness;

[[noreturn]] void usage(const char* why) {
  std::fprintf(stderr, "anyctx-repro: %s\nusage: anyctx-repro [--target NAME] [--runs N] [--emit-test NAME] "
                       "[--encode OUT] [--print] [--trace] [--sites] [--sabotage KIND] [--timeout S] FILE\n"
                       "       anyctx-repro --minimize [--out OUT] [--budget S] FILE\n"
                       "       anyctx-repro --sweep [--max-runs N] [--out DIR] FILE\n"
                       "       anyctx-repro --schedules N [--depth D] [--out OUT] FILE\n"
                       "       anyctx-repro --plan D [--max-runs N] [--out OUT] FILE\n", why);
  std::exit(2);
}

const TargetSpec* target_from_path(const std::string& path) {
  for (const char* name : {"page_ops", "page_smp", "slab_ops", "memcg_ops", "lock_ops", "program_text"}) {
    std::string dir = std::string("/") + name + "/";
    std::string dir2 = std::string("/") + name + "-regressions/";
    std::string rel = std::string(name) + "/";
    if (path.find(dir) != std::string::npos || path.find(dir2) != std::string::npos || path.rfind(rel, 0) == 0)
      return target_spec(std::string(name) == "program_text" ? "all" : name);
  }
  return nullptr;
}

// Prints the oracle and the step of a failure.
void describe(const Signature& sig, const char* prefix = "") {
  std::printf("%soracle: %s\n", prefix, sig.oracle.empty() ? "(none printed: see the output above)" : sig.oracle.c_str());
  std::printf("%sstep:   %s\n", prefix, sig.step.empty() ? "(not inside a program step)" : sig.step.c_str());
}

void progress(const std::string& line) { std::fprintf(stderr, "anyctx-repro: %s\n", line.c_str()); }

bool write_file(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary);
  f << text;
  return static_cast<bool>(f);
}

// The program as v2 text, then its failure as comments (so it still parses).
std::string reproducer(const TargetSpec& target, const Program& program, const Signature& sig) {
  return print(target, program) + "# oracle: " + sig.oracle + "\n# step:   " +
         (sig.step.empty() ? "(not inside a program step)" : sig.step) + "\n";
}

int run_minimize(const TargetSpec& target, const Program& program, const RunOptions& options, int timeout_ms,
                 int budget_s, const char* out) {
  ChildRun first = run_in_child(target, program, options, timeout_ms);
  if (!first.failed) {
    std::fprintf(stderr, "anyctx-repro: the program does not fail: nothing to minimize\n");
    return 2;
  }
  Signature want = signature_of(first);
  progress("minimize: the program fails with " + want.text() + " (" + first.how + ")");
  MinimizeOptions mo;
  mo.progress = [](const std::string& line) { progress("minimize: " + line); };
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(budget_s);
  if (budget_s > 0) mo.stop = [deadline] { return std::chrono::steady_clock::now() >= deadline; };
  MinimizeStats stats;
  Program small = minimize(target, program, fails_like(target, want, options, timeout_ms), mo, &stats);
  // The step of the result (its numbers changed with the program).
  Signature got = signature_of(run_in_child(target, small, options, timeout_ms));
  progress("minimize: " + std::to_string(total_ops(program)) + " -> " + std::to_string(total_ops(small)) +
           " ops; " + std::to_string(stats.candidates) + " candidates, " + std::to_string(stats.accepted) +
           " accepted, " + std::to_string(stats.rounds) + " rounds" +
           (stats.stopped ? " (stopped by --budget before a fixpoint)" : ""));
  std::string text = reproducer(target, small, got);
  if (out != nullptr) {
    if (!write_file(out, text)) usage((std::string("cannot write ") + out).c_str());
    std::printf("minimized: %s (%d ops, was %d)\n", out, total_ops(small), total_ops(program));
    describe(got);
  } else {
    std::fputs(text.c_str(), stdout);
  }
  return 0;
}

int run_sweep(const TargetSpec& target, const Program& program, const RunOptions& options, int timeout_ms,
              int max_runs, const char* file, const char* out_dir) {
  SweepOptions so;
  so.run = options;
  so.timeout_ms = timeout_ms;
  so.max_runs = max_runs;
  so.progress = progress;
  SweepResult r = sweep(target, program, so);
  if (!r.error.empty()) {
    std::fprintf(stderr, "anyctx-repro: %s: sweep: %s\n", file, r.error.c_str());
    return 2;
  }
  if (out_dir != nullptr) mkdir(out_dir, 0777);
  for (const SweepFinding& f : r.findings) {
    std::printf("%s: sweep: %s: %s", file, f.point.text().c_str(), f.signature.text().c_str());
    if (out_dir != nullptr) {
      std::string path = std::string(out_dir) + "/sweep-cpu" + std::to_string(f.point.cpu) + "-" +
                         injection_site_name(f.point.site) + "-" + ctx_word(f.point.level) + "-nth" +
                         std::to_string(f.point.nth) + "-" + ctx_word(f.point.kind) + ".txt";
      if (!write_file(path, reproducer(target, f.program, f.signature))) usage(("cannot write " + path).c_str());
      std::printf(" -> %s", path.c_str());
    }
    std::printf("\n");
  }
  std::printf("%s: sweep: %d of %d points run%s, %zu failed%s\n", file, r.runs, r.points,
              r.runs < r.points ? " (--max-runs)" : "", r.findings.size(),
              r.replaced_last ? " (each replaced the program's last injection)" : "");
  if (!r.findings.empty() && out_dir == nullptr) {
    std::printf("first failing program (%s):\n%s", r.findings[0].point.text().c_str(),
                reproducer(target, r.findings[0].program, r.findings[0].signature).c_str());
  }
  return r.findings.empty() ? 0 : 1;
}

// Prints a failing program's oracle and step, and the program (to `out`
// when given, else to stdout).
void emit_failing(const TargetSpec& target, const Program& program, const Signature& signature, const char* out) {
  describe(signature);
  std::string text = reproducer(target, program, signature);
  if (out != nullptr) {
    if (!write_file(out, text)) usage((std::string("cannot write ") + out).c_str());
    std::printf("wrote %s\n", out);
  } else {
    std::fputs(text.c_str(), stdout);
  }
}

int run_schedules(const TargetSpec& target, const Program& program, const RunOptions& options, int timeout_ms, int n,
                  int depth, const char* out) {
  SchedulesOptions so;
  so.run = options;
  so.timeout_ms = timeout_ms;
  so.depth = depth;
  so.progress = progress;
  SchedulesResult r = schedules(target, program, n, so);
  if (!r.error.empty()) {
    std::fprintf(stderr, "anyctx-repro: schedules: %s\n", r.error.c_str());
    return 2;
  }
  std::printf("schedules: %d of %d failed (depth %d, steps %d)\n", r.failed, r.runs, depth, r.steps);
  if (r.failed == 0) return 0;
  std::printf("first failing schedule: seed %d\n", r.first_failing);
  emit_failing(target, r.first, r.signature, out);
  return 1;
}

int run_plan(const TargetSpec& target, const Program& program, const RunOptions& options, int timeout_ms, int depth,
             int max_runs, const char* out) {
  PlanSearchOptions po;
  po.run = options;
  po.timeout_ms = timeout_ms;
  po.depth = depth;
  po.max_runs = max_runs;
  po.progress = progress;
  PlanSearchResult r = plan_search(target, program, po);
  if (!r.error.empty()) {
    std::fprintf(stderr, "anyctx-repro: plan: %s\n", r.error.c_str());
    return 2;
  }
  std::printf("plan: %d candidates run to depth %d, %s\n", r.runs, depth,
              r.failed ? ("one failed at level " + std::to_string(r.level)).c_str() : "none failed");
  if (!r.failed) return 0;
  emit_failing(target, r.first, r.signature, out);
  return 1;
}

// One line per (CPU, site, level) reached: "cpu 1 SpinWait task hits=3
// held-elsewhere=1,3 resumed-inside=2 irqs-off=1,2" (irqs-off: task level).
void print_sites(const Program& program, const SiteMap& sites) {
  for (int c = 0; c < static_cast<int>(program.cpus.size()); ++c)
    for (int site = 0; site < kInjectionSites; ++site)
      for (int l = 0; l < 3; ++l) {
        unsigned hits = sites.hits[c][site][l];
        if (hits == 0) continue;
        std::printf("cpu %d %s %s hits=%u", c, injection_site_name(site), ctx_word(static_cast<Ctx>(l)), hits);
        auto nths = [](const char* what, std::uint32_t bits) {
          for (const char* sep = what; bits != 0; bits &= bits - 1, sep = ",")
            std::printf("%s%d", sep, std::countr_zero(bits) + 1);
        };
        nths(" held-elsewhere=", sites.held_elsewhere[c][site][l]);
        nths(" resumed-inside=", sites.resumed_inside[c][site][l]);
        if (l == 0) nths(" irqs-off=", sites.irqs_off[c][site]);
        std::printf("\n");
      }
}

}  // namespace

int main(int argc, char** argv) {
  const TargetSpec* target = nullptr;
  int runs = 10;
  const char* emit_test = nullptr;
  const char* encode_to = nullptr;
  bool print_only = false;
  bool trace_only = false;
  bool sites_only = false;
  const char* file = nullptr;
  RunOptions options;
  enum class Mode { kReplay, kMinimize, kSweep, kSchedules, kPlan } mode = Mode::kReplay;
  const char* out = nullptr;
  int timeout_s = 10, budget_s = 0, max_runs = 4000, nschedules = 0, depth = 3, plan_depth = 2;
  auto count = [](const char* v, const char* what, int lo, int hi) {
    char* end = nullptr;
    long n = std::strtol(v, &end, 10);
    if (end == v || *end != 0 || n < lo || n > hi)
      usage((std::string(what) + " needs a number " + std::to_string(lo) + ".." + std::to_string(hi)).c_str());
    return static_cast<int>(n);
  };
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&](const char* what) {
      if (i + 1 >= argc) usage((std::string(what) + " needs a value").c_str());
      return argv[++i];
    };
    if (a == "--target") {
      std::string name = value("--target");
      target = target_spec(name == "program_text" ? "all" : name);
      if (target == nullptr) usage(("unknown target '" + name + "'").c_str());
    } else if (a == "--runs") {
      runs = std::atoi(value("--runs"));
      if (runs < 1) usage("--runs needs a positive number");
    } else if (a == "--emit-test") {
      emit_test = value("--emit-test");
    } else if (a == "--print") {
      print_only = true;
    } else if (a == "--trace") {
      trace_only = true;
    } else if (a == "--sites") {
      sites_only = true;
    } else if (a == "--encode") {
      encode_to = value("--encode");
    } else if (a == "--sabotage") {
      std::string kind = value("--sabotage");
      const std::pair<const char*, Sabotage> kinds[] = {
          {"corrupt-live-block", Sabotage::kCorruptLiveBlock}, {"corrupt-free-page", Sabotage::kCorruptFreePage},
          {"leak-page", Sabotage::kLeakPage},                  {"lock-model-lie", Sabotage::kLockModelLie},
          {"no-lock-legalization", Sabotage::kNoLockLegalization}, {"spinning-in-nmi", Sabotage::kSpinningInNmi},
          {"third-zone-list-edit", Sabotage::kThirdZoneListEdit},  {"atomicity-cpu0-op1", Sabotage::kAtomicityCpu0Op1}};
      bool known = false;
      for (const auto& [name, k] : kinds)
        if (kind == name) options.sabotage = k, known = true;
      if (!known) usage(("unknown sabotage '" + kind + "'").c_str());
    } else if (a == "--minimize") {
      mode = Mode::kMinimize;
    } else if (a == "--sweep") {
      mode = Mode::kSweep;
    } else if (a == "--schedules") {
      mode = Mode::kSchedules;
      nschedules = count(value("--schedules"), "--schedules", 1, 65536);
    } else if (a == "--plan") {
      mode = Mode::kPlan;
      plan_depth = count(value("--plan"), "--plan", 1, 4);
    } else if (a == "--depth") {
      depth = count(value("--depth"), "--depth", 1, kMaxPctDepth);
    } else if (a == "--out") {
      out = value("--out");
    } else if (a == "--timeout") {
      timeout_s = count(value("--timeout"), "--timeout", 1, 3600);
    } else if (a == "--budget") {
      budget_s = count(value("--budget"), "--budget", 0, 1 << 20);
    } else if (a == "--max-runs") {
      max_runs = count(value("--max-runs"), "--max-runs", 1, 1 << 24);
    } else if (a == "-h" || a == "--help") {
      usage("reproduce a fuzz input");
    } else if (!a.empty() && a[0] == '-') {
      usage(("unknown option " + a).c_str());
    } else if (file == nullptr) {
      file = argv[i];
    } else {
      usage("one FILE only");
    }
  }
  if (file == nullptr) usage("no FILE");
  std::ifstream in(file, std::ios::binary);
  if (!in) usage((std::string("cannot read ") + file).c_str());
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());

  Program program;
  bool as_text = is_text_program(bytes);
  if (as_text) {
    ParseResult parsed = parse(bytes, target != nullptr ? *target : *target_spec("all"));
    if (parsed.ok()) {
      if (target == nullptr) target = parsed.target;
      program = parsed.program;
    } else {
      // The fuzz targets decode text that does not parse as bytes; so do we,
      // when we know the target. A hand-written file gets the parse error.
      if (target == nullptr) target = target_from_path(file);
      if (target == nullptr) {
        std::fprintf(stderr, "anyctx-repro: %s: %s\n", file, parsed.error.c_str());
        return 2;
      }
      std::fprintf(stderr, "anyctx-repro: %s: text does not parse (%s); decoding it as bytes, as fuzz_%s does\n",
                   file, parsed.error.c_str(), target->name);
      as_text = false;
    }
  }
  if (!as_text) {
    if (target == nullptr) target = target_from_path(file);
    if (target == nullptr) usage("binary input: name the target with --target (page_ops, page_smp, ...)");
    program = decode(*target, std::span<const std::uint8_t>(reinterpret_cast<const std::uint8_t*>(bytes.data()),
                                                            bytes.size()));
  }

  if (print_only) {
    std::fputs(print(*target, program).c_str(), stdout);
    return 0;
  }
  if (trace_only) {
    RunStats s = run_program(*target, program, options);
    std::printf("%s %016llx %llu\n", file, static_cast<unsigned long long>(s.trace_hash),
                static_cast<unsigned long long>(s.events));
    return 0;
  }
  if (sites_only) {
    RunStats s = run_program(*target, program, options);
    print_sites(program, s.sites);
    return 0;
  }
  if (emit_test != nullptr) {
    std::fputs(print_regression_test(*target, program, emit_test).c_str(), stdout);
    return 0;
  }
  if (encode_to != nullptr) {
    std::vector<std::uint8_t> out = encode(*target, program);
    std::ofstream f(encode_to, std::ios::binary);
    f.write(reinterpret_cast<const char*>(out.data()), static_cast<std::streamsize>(out.size()));
    if (!f) usage((std::string("cannot write ") + encode_to).c_str());
    std::printf("wrote %zu bytes to %s\n", out.size(), encode_to);
    return 0;
  }

  const int timeout_ms = timeout_s * 1000;
  if (mode == Mode::kMinimize) return run_minimize(*target, program, options, timeout_ms, budget_s, out);
  if (mode == Mode::kSweep) return run_sweep(*target, program, options, timeout_ms, max_runs, file, out);
  if (mode == Mode::kSchedules)
    return run_schedules(*target, program, options, timeout_ms, nschedules, depth, out);
  if (mode == Mode::kPlan) return run_plan(*target, program, options, timeout_ms, plan_depth, max_runs, out);

  std::printf("program (target %s):\n%s\n", target->name, print(*target, program).c_str());
  int failed = 0;
  ChildRun first_failure;
  for (int r = 1; r <= runs; ++r) {
    ChildRun o = run_in_child(*target, program, options, timeout_ms);
    if (o.failed) {
      if (failed == 0) first_failure = o;
      ++failed;
    }
    std::printf("run %d/%d: %s\n", r, runs, o.failed ? ("FAILED (" + o.how + ")").c_str() : "ok");
  }
  std::printf("hit rate: %d/%d runs failed\n", failed, runs);
  if (failed == 0) return 0;
  std::printf("first failure's output:\n%s", first_failure.output.c_str());
  describe(signature_of(first_failure));
  return 1;
}
