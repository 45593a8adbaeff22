// anyctx-stress: the stress executor (harness/stress.h) from the command line.
//
//   anyctx-stress [--seconds S] [--threads N] [--irq-rate R] [--nmi-rate R]
//                 [--seed N] [--watchdog SECONDS] [--arena-pages N]
//                 [--test-seam never-released|abba]
//
// Runs N free-running CPUs (default: one per core) for S seconds (default
// 10) with IRQ-class and NMI-class signals fired by per-thread timers at R
// per second in total (defaults 20000 and 5000), then quiesces, drains and
// checks every oracle, and prints the table of counts on stdout. A failure
// (an oracle, a library report, the watchdog) is a report on stderr and an
// abort. --test-seam makes the watchdog fire on purpose (a test seam: a lock
// never released, or an ABBA deadlock between the first two CPUs).
// Exit status: 0 when every oracle held, 2 on bad usage; an abort otherwise.
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "harness/stress.h"

namespace {

using anyctx::harness::StressOptions;
using anyctx::harness::StressSeam;

[[noreturn]] void usage(const char* why) {
  std::fprintf(stderr,
               "anyctx-stress: %s\n"
               "usage: anyctx-stress [--seconds S] [--threads N] [--irq-rate R] [--nmi-rate R] [--seed N]\n"
               "                     [--watchdog SECONDS] [--arena-pages N] [--test-seam never-released|abba]\n",
               why);
  std::exit(2);
}

double number(const char* flag, const char* text, double min, double max) {
  char* end = nullptr;
  errno = 0;
  double v = std::strtod(text, &end);
  if (errno != 0 || end == text || *end != '\0' || !(v >= min && v <= max)) {
    std::string why = std::string(flag) + ": expected a number in [" + std::to_string(min) + ", " +
                      std::to_string(max) + "], got '" + text + "'";
    usage(why.c_str());
  }
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  StressOptions o;
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i];
    if (flag == "--help" || flag == "-h") usage("help");
    std::string value;
    if (auto eq = flag.find('='); eq != std::string::npos) {
      value = flag.substr(eq + 1);
      flag = flag.substr(0, eq);
    } else {
      if (i + 1 >= argc) usage((flag + " needs a value").c_str());
      value = argv[++i];
    }
    const char* v = value.c_str();
    if (flag == "--seconds") o.seconds = number("--seconds", v, 0, 1e6);
    else if (flag == "--threads") o.threads = static_cast<int>(number("--threads", v, 0, anyctx::kMaxCpus));
    else if (flag == "--irq-rate") o.irq_rate = number("--irq-rate", v, 0, 1e7);
    else if (flag == "--nmi-rate") o.nmi_rate = number("--nmi-rate", v, 0, 1e7);
    else if (flag == "--seed") o.seed = static_cast<std::uint64_t>(number("--seed", v, 0, 1e18));
    else if (flag == "--watchdog") o.watchdog_seconds = number("--watchdog", v, 0.1, 1e6);
    else if (flag == "--arena-pages") o.arena_pages = static_cast<std::size_t>(number("--arena-pages", v, 64, 1 << 22));
    else if (flag == "--test-seam") {
      if (value == "never-released") o.seam = StressSeam::kLockNeverReleased;
      else if (value == "abba") o.seam = StressSeam::kAbbaDeadlock;
      else usage("--test-seam: expected never-released or abba");
    } else {
      usage(("unknown option " + flag).c_str());
    }
  }
  anyctx::harness::StressResult r = anyctx::harness::run_stress(o);
  std::fputs(anyctx::harness::format_stress_table(r).c_str(), stdout);
  std::fflush(stdout);
  return 0;
}
