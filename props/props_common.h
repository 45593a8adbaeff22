// props/props_common.h — what every property test of props/ shares: the
// process's CPU, a per-case allocator world, nested-interrupt helpers, and
// the runner behind the *_CatchesBrokenModel tests.
//
// Conventions (docs/properties.md says more):
//  - One executable per layer (NAME_props.cc). The test thread is CPU 0 for
//    the whole process (CpuEnvironment below).
//  - Each case (one command sequence) builds its own world and tears it down,
//    so a case does not depend on the cases before it: that is what makes
//    RC_PARAMS="reproduce=..." replay a failure exactly.
//  - Code that runs inside an IRQ/NMI handler or a site hook never throws
//    and never allocates: the command plans its steps (and reserves every
//    buffer) in task context, the handler only executes and records, and
//    the command compares (prop_fail) after the handler returned.
//  - A property's model is correct; its *_CatchesBrokenModel twins run the
//    same state machine with one deliberate mistake (a `Breakage`) and must
//    be reported as failing, with the message of the property they prove.
#pragma once

#include <vector>

#include <gtest/gtest.h>
#include <rapidcheck.h>
#include <rapidcheck/gtest.h>
#include <rapidcheck/state.h>

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <sstream>
#include <string>

#include "anyctx/ctx/cpu.h"
#include "anyctx/ctx/interrupt.h"
#include "anyctx/ctx/site.h"
#include "anyctx/page/fault.h"
#include "anyctx/page/page_alloc.h"
#include "anyctx/testing/interrupts.h"

namespace anyctx::props {

// The test thread is a logical CPU for the whole run (so per-CPU state such
// as pcp lists and the memcg stock lives on CPU 0 throughout).
class CpuEnvironment : public ::testing::Environment {
 public:
  void SetUp() override { cpu_ = std::make_unique<CpuScope>(); }
  void TearDown() override { cpu_.reset(); }

 private:
  std::unique_ptr<CpuScope> cpu_;
};

inline ::testing::Environment* const g_cpu_environment = ::testing::AddGlobalTestEnvironment(new CpuEnvironment);

// Fails the current case with `message` as its whole description (RC_FAIL
// would prefix the stringified expression that builds the message).
[[noreturn]] inline void prop_fail(const std::string& message) {
  throw rc::detail::CaseResult(rc::detail::CaseResult::Type::Failure, message);
}

// Puts the hooks a case may have set back to nothing. Context: task.
inline void reset_hooks() {
  set_site_hook(nullptr);
  testing::set_fallback_handler(nullptr);
  set_interrupt_handler(InterruptKind::kIrq, nullptr);
  set_interrupt_handler(InterruptKind::kNmi, nullptr);
  fault_plan_clear();
}

// A page allocator over a small arena for one case (pcp batch 8, high 24,
// watermarks 0, as testing::config_of()). Tears down in reverse, also when
// the case fails half-way (the pages a failed case still holds vanish with
// the arena).
class PageWorld {
 public:
  explicit PageWorld(std::size_t pages, int pcp_batch = 8, int pcp_high = 24) {
    PageAllocatorConfig c;
    c.pages = pages;
    c.pcp_batch = pcp_batch;
    c.pcp_high = pcp_high;
    c.watermark_min = c.watermark_low = c.watermark_high = 0;
    std::string_view err = page_allocator_init(c);
    if (!err.empty()) prop_fail("page_allocator_init: " + std::string(err));
  }
  ~PageWorld() {
    reset_hooks();
    page_allocator_shutdown();
  }
  PageWorld(const PageWorld&) = delete;
  PageWorld& operator=(const PageWorld&) = delete;
};

// Context of a modelled operation (as ContextLevel; index into [3] stats).
enum class Ctx : std::uint8_t { kTask = 0, kIrq = 1, kNmi = 2 };
inline const char* ctx_name(Ctx c) { return c == Ctx::kTask ? "task" : c == Ctx::kIrq ? "irq" : "nmi"; }
inline int ctx_index(Ctx c) { return static_cast<int>(c); }

// The argument of InterruptAtSite work that replays a list of model steps
// through an executor: `run_in_interrupt` is the work function.
template <class Executor, class Step>
struct NestedSteps {
  Executor* ex;
  const std::vector<Step>* steps;
  static void run_in_interrupt(void* arg) {
    auto* w = static_cast<NestedSteps*>(arg);
    w->ex->run(*w->steps);
  }
};

// A site hook that, at the nth hit of `site` in context `level` (task
// context unless said) after arm(), runs the armed work inside an interrupt
// of `kind` (an NMI, or an IRQ where the site is reached with IRQs
// unmasked). The work is a plain function pointer + argument: no
// allocation, and no exception may leave it.
class InterruptAtSite {
 public:
  using Work = void (*)(void* arg);
  // Fires at the `nth` hit of `site` in context `level` (1: the first).
  static void arm(Site site, Work work, void* arg, InterruptKind kind = InterruptKind::kNmi, int nth = 1,
                  ContextLevel level = ContextLevel::kTask) {
    s_site = site;
    s_work = work;
    s_arg = arg;
    s_kind = kind;
    s_countdown = nth;
    s_level = level;
    s_fired = false;
    set_site_hook(&hook);
  }
  // Return: whether the work ran. Removes the hook.
  static bool disarm() {
    set_site_hook(nullptr);
    s_work = nullptr;
    return s_fired;
  }

 private:
  static void hook(Site site) {
    if (site != s_site || s_work == nullptr || context_level() != s_level) return;
    if (--s_countdown > 0) return;
    if (s_kind == InterruptKind::kIrq && irqs_disabled()) return;  // not here: masked
    Work work = s_work;
    s_work = nullptr;  // once: sites hit inside the interrupt or later are ignored
    s_fired = true;
    void* arg = s_arg;
    if (s_kind == InterruptKind::kIrq) {
      testing::run_in_irq([&] { work(arg); });
    } else {
      testing::run_in_nmi([&] { work(arg); });
    }
  }
  static inline Site s_site = Site::kCount;
  static inline Work s_work = nullptr;
  static inline void* s_arg = nullptr;
  static inline InterruptKind s_kind = InterruptKind::kNmi;
  static inline int s_countdown = 0;
  static inline ContextLevel s_level = ContextLevel::kTask;
  static inline bool s_fired = false;
};

// --- generation helpers ----------------------------------------------------------
//
// rc::gen::inRange scales its range with the generation size (size 0 gives
// only `lo`); commands pick among alternatives uniformly at every size and
// leave the sequence length to the size. Use inside rc::gen::exec.
template <class T>
T uniform(T lo, T hi_exclusive) {
  return *rc::gen::resize(rc::kNominalSize, rc::gen::inRange<T>(lo, hi_exclusive));
}
inline int uniform(int lo, int hi_exclusive) { return uniform<int>(lo, hi_exclusive); }
inline bool coin() { return uniform(0, 2) == 1; }

// --- the broken-model runner ------------------------------------------------------

// Receives nothing: a deliberately failing run must not be reported as a
// failure to reproduce at exit (that is the global listener's job for real
// properties).
class QuietListener : public rc::detail::TestListener {
 public:
  void onTestCaseFinished(const rc::detail::CaseDescription&) override {}
  void onShrinkTried(const rc::detail::CaseDescription&, bool) override {}
  void onTestFinished(const rc::detail::TestMetadata&, const rc::detail::TestResult&) override {}
};

struct BrokenRun {
  bool failed = false;      // rapidcheck reported a counterexample
  int cases = 0;            // cases that passed before it
  std::string description;  // the failure message
  std::string summary;      // rapidcheck's report of the result
};

// Runs `testable` (a property, as for RC_GTEST_PROP) with no shrinking and
// at most `max_success` cases; it stops at the first failure, which a broken
// model must reach. The seed is fixed so the test is deterministic;
// ANYCTX_BROKEN_SEED=N picks another one (docs/properties.md: every broken
// model is checked against many seeds before it is kept).
template <class Testable>
BrokenRun run_broken(const std::string& id, Testable&& testable, int max_success = 300) {
  std::uint64_t seed = 0x5eedULL;
  if (const char* s = std::getenv("ANYCTX_BROKEN_SEED")) seed = std::strtoull(s, nullptr, 0);
  rc::detail::TestParams params = rc::detail::configuration().testParams;
  params.seed = seed;
  params.maxSuccess = max_success;
  params.disableShrinking = true;
  rc::detail::TestMetadata metadata;
  metadata.id = "broken/" + id;
  metadata.description = id;
  QuietListener quiet;
  rc::detail::TestResult result =
      rc::detail::checkProperty(rc::detail::toProperty(std::forward<Testable>(testable)), metadata, params, quiet);
  BrokenRun run;
  std::ostringstream os;
  rc::detail::printResultMessage(result, os);
  run.summary = os.str();
  rc::detail::FailureResult failure;
  if (result.match(failure)) {
    run.failed = true;
    run.cases = failure.numSuccess;
    run.description = failure.description;
  }
  return run;
}

// The failure message without rapidcheck's "file:line:" line.
inline std::string first_message_line(const std::string& description) {
  std::size_t start = 0;
  std::size_t nl = description.find('\n');
  if (nl != std::string::npos && nl > 0 && description[nl - 1] == ':') start = nl + 1;
  std::size_t end = description.find('\n', start);
  return description.substr(start, end == std::string::npos ? std::string::npos : end - start);
}

// Return: whether `text` contains one of the '|'-separated `needles`.
inline bool contains_any(const std::string& text, const std::string& needles) {
  std::size_t start = 0;
  for (;;) {
    std::size_t bar = needles.find('|', start);
    std::string needle = needles.substr(start, bar == std::string::npos ? std::string::npos : bar - start);
    if (!needle.empty() && text.find(needle) != std::string::npos) return true;
    if (bar == std::string::npos) return false;
    start = bar + 1;
  }
}

// The body of every *_CatchesBrokenModel test: the run failed, and for the
// expected reason (one of the '|'-separated messages of the property).
#define ANYCTX_EXPECT_CAUGHT(run, needles)                                                            \
  do {                                                                                                \
    const ::anyctx::props::BrokenRun& r_ = (run);                                                     \
    EXPECT_TRUE(r_.failed) << "the broken model was not caught:\n" << r_.summary;                     \
    EXPECT_TRUE(::anyctx::props::contains_any(r_.description, needles))                               \
        << "caught, but not by the expected property (" << (needles) << "):\n"                        \
        << r_.description;                                                                            \
    if (r_.failed)                                                                                    \
      std::cout << "[ caught   ] after " << r_.cases                                                  \
                << " passing cases: " << ::anyctx::props::first_message_line(r_.description) << "\n"; \
  } while (0)

}  // namespace anyctx::props
