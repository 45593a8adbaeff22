// Allocation from a signal handler at a high rate while the interrupted
// thread is itself allocating: what a sampling profiler or a tracing hook
// does when it allocates in SIGPROF. One source, one binary per subject
// (bench/subject.h): signal_bench_anyctx, signal_bench_glibc, ...
//
// The workload, per trial, in a child process:
//  - the thread keeps 256 slots of live objects; each step frees a random
//    slot (after checking its content pattern) and refills it with an object
//    of 16 B..8 KiB that it stamps with a fresh pattern;
//  - a POSIX timer (CLOCK_MONOTONIC, SIGEV_THREAD_ID) fires a real-time
//    signal at that thread every --interval-us; the handler allocates
//    1..7 KiB, stamps and checks it, and frees it. A volatile sink keeps the
//    handler's pair, which clang would otherwise delete;
//  - anyctx: the thread uses kmalloc/kfree (a CPU in task context), the
//    handler runs under NmiScope and uses kmalloc_nolock/kfree_nolock (a
//    nullptr is "no memory in this context" and is counted, not an error);
//    after the run the slab and page invariants are checked. Peers: malloc
//    and free in both places;
//  - a watchdog thread (signal blocked, no allocation) ends the child as
//    "deadlocked" when the thread makes no step for --stall seconds, noting
//    whether it sleeps (futex: a lock held by the frame it interrupted) or
//    spins. The parent kills a child that outlives every deadline, so no
//    trial can hang the benchmark.
// Outcomes: completed | deadlocked | corrupted (a pattern no longer matches,
// or an anyctx invariant fails) | crashed (killed by a signal: SIGSEGV,
// SIGABRT from the allocator's own consistency checks ...).
//
//   build/release/bench/signal_bench_glibc [--trials=3] [--seconds=2]
//       [--stall=3] [--interval-us=20] [--json=FILE]
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "subject.h"

#if ANYCTX_BENCH_ANYCTX
#include "anyctx/ctx/cpu.h"
#include "anyctx/ctx/interrupt.h"
#include "anyctx/page/page_alloc.h"
#include "anyctx/slab/slab.h"
#endif

namespace {

struct Options {
  int trials = 3;
  double seconds = 2.0;
  double stall = 3.0;
  long interval_us = 20;  // 0: no timer (the no-signal baseline)
  bool handler_allocates = true;  // false: the handler only counts (a control)
  std::string json;
};

enum Status : std::uint32_t { kCompleted = 0, kDeadlocked = 1, kCorrupted = 2 };

// What a child sends its parent: numbers only (the watchdog must not format).
struct Result {
  std::uint32_t status;
  char thread_state;         // /proc state of the stalled thread ('S', 'R' ...)
  std::uint8_t corrupt_site;  // 1 thread check, 2 handler check, 3 invariants
  std::uint64_t thread_pairs;
  std::uint64_t handler_pairs;
  std::uint64_t handler_failed;
  std::uint64_t thread_failed;
  std::uint64_t signals;
  std::uint64_t elapsed_ns;
  char invariant[200];
};

constexpr int kSlots = 256;
constexpr std::size_t kThreadMin = 16, kThreadMax = 8192;
constexpr std::size_t kHandlerMin = 1024, kHandlerMax = 7 * 1024;
constexpr std::uint64_t kHandlerTag = 0xa5a5'0000'0000'0000ull;

struct Slot {
  void* p;
  std::size_t n;
  std::uint64_t tag;
};
Slot g_slots[kSlots];

std::atomic<std::uint64_t> g_thread_pairs{0};
std::atomic<std::uint64_t> g_handler_pairs{0};
std::atomic<std::uint64_t> g_handler_failed{0};
std::atomic<std::uint64_t> g_signals{0};
std::atomic<int> g_corrupt{0};  // Result::corrupt_site
std::atomic<bool> g_done{false};
bool g_handler_allocates = true;
std::uint64_t g_handler_rng = 0x9e3779b97f4a7c15ull;
void* volatile g_sink;
pid_t g_tid;
int g_result_fd = -1;
struct timespec g_start;

inline std::uint64_t next(std::uint64_t& s) {
  s ^= s << 13;
  s ^= s >> 7;
  s ^= s << 17;
  return s;
}

// One word per 64 bytes and the last word: overlapping objects, a freelist
// link written into a live object, or a block handed out twice all show.
inline void stamp(void* p, std::size_t n, std::uint64_t tag) {
  auto* b = static_cast<unsigned char*>(p);
  for (std::size_t off = 0; off + 16 <= n; off += 64) {
    std::uint64_t v = tag ^ off;
    std::memcpy(b + off, &v, 8);
  }
  std::uint64_t last = ~tag;
  std::memcpy(b + n - 8, &last, 8);
}

inline bool stamp_intact(const void* p, std::size_t n, std::uint64_t tag) {
  const auto* b = static_cast<const unsigned char*>(p);
  for (std::size_t off = 0; off + 16 <= n; off += 64) {
    std::uint64_t v;
    std::memcpy(&v, b + off, 8);
    if (v != (tag ^ off)) return false;
  }
  std::uint64_t last;
  std::memcpy(&last, b + n - 8, 8);
  return last == ~tag;
}

#if ANYCTX_BENCH_ANYCTX
inline void* thread_alloc(std::size_t n) { return anyctx::kmalloc(n, anyctx::kGfpKernel); }
inline void thread_free(void* p) { anyctx::kfree(p); }
#else
inline void* thread_alloc(std::size_t n) { return std::malloc(n); }
inline void thread_free(void* p) { std::free(p); }
#endif

void on_signal(int, siginfo_t*, void*) {
  int saved_errno = errno;
  g_signals.fetch_add(1, std::memory_order_relaxed);
  if (!g_handler_allocates) return;
  std::size_t n = kHandlerMin + next(g_handler_rng) % (kHandlerMax - kHandlerMin + 1);
#if ANYCTX_BENCH_ANYCTX
  anyctx::NmiScope nmi;
  void* p = anyctx::kmalloc_nolock(n, anyctx::Gfp{});
#else
  void* p = std::malloc(n);
#endif
  if (p == nullptr) {
    g_handler_failed.fetch_add(1, std::memory_order_relaxed);
    errno = saved_errno;
    return;
  }
  g_sink = p;
  std::uint64_t tag = kHandlerTag ^ g_handler_pairs.load(std::memory_order_relaxed);
  stamp(p, n, tag);
  if (!stamp_intact(p, n, tag)) g_corrupt.store(2, std::memory_order_relaxed);
#if ANYCTX_BENCH_ANYCTX
  anyctx::kfree_nolock(p);
#else
  std::free(p);
#endif
  g_handler_pairs.fetch_add(1, std::memory_order_relaxed);
  errno = saved_errno;
}

std::uint64_t elapsed_ns() {
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return static_cast<std::uint64_t>(now.tv_sec - g_start.tv_sec) * 1'000'000'000ull +
         static_cast<std::uint64_t>(now.tv_nsec) - static_cast<std::uint64_t>(g_start.tv_nsec);
}

Result snapshot(Status status) {
  Result r{};
  r.status = status;
  r.thread_pairs = g_thread_pairs.load(std::memory_order_relaxed);
  r.handler_pairs = g_handler_pairs.load(std::memory_order_relaxed);
  r.handler_failed = g_handler_failed.load(std::memory_order_relaxed);
  r.signals = g_signals.load(std::memory_order_relaxed);
  r.elapsed_ns = elapsed_ns();
  return r;
}

void send(const Result& r) {
  const char* b = reinterpret_cast<const char*>(&r);
  std::size_t left = sizeof(r);
  while (left > 0) {
    ssize_t w = write(g_result_fd, b, left);
    if (w <= 0) {
      if (w < 0 && errno == EINTR) continue;
      return;
    }
    b += w;
    left -= static_cast<std::size_t>(w);
  }
}

// The state letter of the thread `tid` from /proc (no allocation, no stdio).
char thread_state(pid_t tid) {
  char path[64] = "/proc/self/task/";
  char digits[16];
  int nd = 0;
  for (pid_t t = tid; t > 0 && nd < 15; t /= 10) digits[nd++] = static_cast<char>('0' + t % 10);
  std::size_t len = std::strlen(path);
  while (nd > 0) path[len++] = digits[--nd];
  std::memcpy(path + len, "/stat", 6);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return '?';
  char buf[256];
  ssize_t got = read(fd, buf, sizeof(buf) - 1);
  close(fd);
  if (got <= 0) return '?';
  buf[got] = 0;
  const char* paren = std::strrchr(buf, ')');
  return paren && paren[1] == ' ' ? paren[2] : '?';
}

void* watchdog(void* arg) {
  double stall = *static_cast<double*>(arg);
  std::uint64_t last = g_thread_pairs.load(std::memory_order_relaxed);
  std::uint64_t last_change = elapsed_ns();
  const struct timespec tick = {0, 20'000'000};
  while (!g_done.load(std::memory_order_acquire)) {
    nanosleep(&tick, nullptr);
    std::uint64_t now = g_thread_pairs.load(std::memory_order_relaxed);
    std::uint64_t t = elapsed_ns();
    if (now != last) {
      last = now;
      last_change = t;
    } else if (static_cast<double>(t - last_change) > stall * 1e9 && !g_done.load(std::memory_order_acquire)) {
      Result r = snapshot(kDeadlocked);
      r.thread_state = thread_state(g_tid);
      send(r);
      _exit(0);
    }
  }
  return nullptr;
}

// Runs one trial in this (child) process; never returns.
[[noreturn]] void run_trial(const Options& o, int trial) {
  struct rlimit no_core = {0, 0};
  setrlimit(RLIMIT_CORE, &no_core);
  g_tid = static_cast<pid_t>(syscall(SYS_gettid));
  std::uint64_t rng = 0x2545f4914f6cdd1dull * static_cast<std::uint64_t>(trial + 1);
  g_handler_rng ^= rng;
  g_handler_allocates = o.handler_allocates;

#if ANYCTX_BENCH_ANYCTX
  anyctx::PageAllocatorConfig config;
  if (!anyctx::page_allocator_init(config).empty() || !anyctx::slab_init().empty()) _exit(3);
  anyctx::CpuScope cpu;
#endif

  const int signo = SIGRTMIN + 6;
  struct sigaction sa {};
  sa.sa_sigaction = on_signal;
  sa.sa_flags = SA_SIGINFO | SA_RESTART | SA_ONSTACK;
  sigemptyset(&sa.sa_mask);
  if (sigaction(signo, &sa, nullptr) != 0) _exit(3);

  // The watchdog never takes the signal.
  sigset_t block, old;
  sigemptyset(&block);
  sigaddset(&block, signo);
  pthread_sigmask(SIG_BLOCK, &block, &old);
  clock_gettime(CLOCK_MONOTONIC, &g_start);
  pthread_t dog;
  double stall = o.stall;
  if (pthread_create(&dog, nullptr, watchdog, &stall) != 0) _exit(3);
  pthread_sigmask(SIG_SETMASK, &old, nullptr);

  struct sigevent sev {};
  sev.sigev_notify = SIGEV_THREAD_ID;
  sev.sigev_signo = signo;
  sev._sigev_un._tid = g_tid;
  timer_t timer;
  if (timer_create(CLOCK_MONOTONIC, &sev, &timer) != 0) _exit(3);
  struct itimerspec its {};
  its.it_value.tv_sec = o.interval_us / 1'000'000;
  its.it_value.tv_nsec = o.interval_us % 1'000'000 * 1000;
  its.it_interval = its.it_value;
  if (o.interval_us > 0 && timer_settime(timer, 0, &its, nullptr) != 0) _exit(3);

  const std::uint64_t loop_start = elapsed_ns();
  const std::uint64_t deadline = loop_start + static_cast<std::uint64_t>(o.seconds * 1e9);
  std::uint64_t thread_failed = 0;
  std::uint64_t pairs = 0;
  for (;;) {
    Slot& s = g_slots[next(rng) % kSlots];
    if (s.p != nullptr) {
      if (!stamp_intact(s.p, s.n, s.tag)) {
        g_corrupt.store(1, std::memory_order_relaxed);
        break;
      }
      thread_free(s.p);
      s.p = nullptr;
    }
    std::size_t n = kThreadMin + next(rng) % (kThreadMax - kThreadMin + 1);
    void* p = thread_alloc(n);
    if (p == nullptr) {
      ++thread_failed;
    } else {
      s = Slot{p, n, next(rng) & ~kHandlerTag};
      stamp(p, n, s.tag);
    }
    g_thread_pairs.store(++pairs, std::memory_order_relaxed);
    if (g_corrupt.load(std::memory_order_relaxed) != 0) break;
    if ((pairs & 255) == 0 && elapsed_ns() >= deadline) break;
  }
  std::uint64_t loop_ns = elapsed_ns() - loop_start;

  // Quiesce: no more timer, the signal blocked, then check every live object.
  timer_delete(timer);
  pthread_sigmask(SIG_BLOCK, &block, nullptr);
  g_done.store(true, std::memory_order_release);
  pthread_join(dog, nullptr);
  Result r = snapshot(kCompleted);
  r.elapsed_ns = loop_ns;
  r.thread_failed = thread_failed;
  int corrupt = g_corrupt.load(std::memory_order_relaxed);
  for (Slot& s : g_slots) {
    if (s.p == nullptr) continue;
    if (corrupt == 0 && !stamp_intact(s.p, s.n, s.tag)) corrupt = 1;
    if (corrupt == 0) thread_free(s.p);
    s.p = nullptr;
  }
#if ANYCTX_BENCH_ANYCTX
  if (corrupt == 0) {
    anyctx::slab_drain_all();
    anyctx::InvariantResult slab = anyctx::slab_check_invariants();
    anyctx::InvariantResult page = anyctx::check_invariants();
    const anyctx::InvariantResult& bad = !slab.ok ? slab : page;
    if (!bad.ok) {
      corrupt = 3;
      std::snprintf(r.invariant, sizeof(r.invariant), "%s", bad.what.c_str());
    }
  }
#endif
  if (corrupt != 0) {
    r.status = kCorrupted;
    r.corrupt_site = static_cast<std::uint8_t>(corrupt);
  }
  send(r);
  _exit(0);
}

struct Trial {
  std::string outcome;  // completed | deadlocked | corrupted | crashed
  std::string detail;
  Result r{};
  bool have_result = false;
};

Trial run_child(const Options& o, int trial) {
  int fds[2];
  if (pipe(fds) != 0) {
    std::perror("pipe");
    std::exit(1);
  }
  std::fflush(nullptr);
  pid_t pid = fork();
  if (pid < 0) {
    std::perror("fork");
    std::exit(1);
  }
  if (pid == 0) {
    close(fds[0]);
    g_result_fd = fds[1];
    run_trial(o, trial);
  }
  close(fds[1]);
  Trial t;
  // Every deadline the child has, plus margin: after it, the child is killed.
  const double limit_s = o.seconds + o.stall + 10.0;
  struct timespec start, now;
  clock_gettime(CLOCK_MONOTONIC, &start);
  std::size_t got = 0;
  bool killed = false;
  for (;;) {
    clock_gettime(CLOCK_MONOTONIC, &now);
    double spent = static_cast<double>(now.tv_sec - start.tv_sec) + (now.tv_nsec - start.tv_nsec) * 1e-9;
    if (spent > limit_s) {
      kill(pid, SIGKILL);
      killed = true;
      break;
    }
    struct pollfd pfd = {fds[0], POLLIN, 0};
    int ready = poll(&pfd, 1, 100);
    if (ready < 0 && errno == EINTR) continue;
    if (ready <= 0) continue;
    ssize_t n = read(fds[0], reinterpret_cast<char*>(&t.r) + got, sizeof(Result) - got);
    if (n <= 0) break;  // EOF: the child is gone
    got += static_cast<std::size_t>(n);
    if (got == sizeof(Result)) break;
  }
  close(fds[0]);
  int wstatus = 0;
  // A child that sent its result exits at once; one that did not is dead or
  // killed. Either way waitpid returns promptly (bounded by a second SIGKILL).
  for (int i = 0; waitpid(pid, &wstatus, WNOHANG) == 0; ++i) {
    if (i == 50) kill(pid, SIGKILL);
    usleep(20'000);
  }
  t.have_result = got == sizeof(Result);
  char buf[400];
  if (killed) {
    t.outcome = "deadlocked";
    t.detail = "no result within " + std::to_string(static_cast<int>(limit_s)) + " s; killed by the parent";
  } else if (WIFSIGNALED(wstatus)) {
    t.outcome = "crashed";
    std::snprintf(buf, sizeof(buf), "killed by signal %d (%s)", WTERMSIG(wstatus), strsignal(WTERMSIG(wstatus)));
    t.detail = buf;
  } else if (!t.have_result) {
    t.outcome = "crashed";
    std::snprintf(buf, sizeof(buf), "exited with status %d and no result", WEXITSTATUS(wstatus));
    t.detail = buf;
  } else if (t.r.status == kDeadlocked) {
    t.outcome = "deadlocked";
    const char* what = t.r.thread_state == 'S'   ? "sleeping (futex: waits for a lock it holds)"
                       : t.r.thread_state == 'R' ? "running (spinning)"
                                                 : "in another state";
    std::snprintf(buf, sizeof(buf), "no step for %.1f s after %llu steps; thread %c, %s", o.stall,
                  static_cast<unsigned long long>(t.r.thread_pairs), t.r.thread_state, what);
    t.detail = buf;
  } else if (t.r.status == kCorrupted) {
    t.outcome = "corrupted";
    const char* where = t.r.corrupt_site == 1   ? "a live object's pattern changed (thread check)"
                        : t.r.corrupt_site == 2 ? "the handler's object changed under it"
                                                : "invariant failed: ";
    t.detail = std::string(where) + (t.r.corrupt_site == 3 ? t.r.invariant : "");
  } else {
    t.outcome = "completed";
    std::snprintf(buf, sizeof(buf), "%llu thread pairs, %llu handler pairs",
                  static_cast<unsigned long long>(t.r.thread_pairs),
                  static_cast<unsigned long long>(t.r.handler_pairs));
    t.detail = buf;
  }
  return t;
}

std::string json_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    if (static_cast<unsigned char>(c) < 0x20) continue;
    out += c;
  }
  return out;
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&](const char* key) -> const char* {
      std::size_t k = std::strlen(key);
      return a.compare(0, k, key) == 0 ? argv[i] + k : nullptr;
    };
    if (const char* v = value("--trials=")) {
      o.trials = std::max(1, std::atoi(v));
    } else if (const char* v = value("--seconds=")) {
      o.seconds = std::atof(v);
    } else if (const char* v = value("--stall=")) {
      o.stall = std::atof(v);
    } else if (const char* v = value("--interval-us=")) {
      o.interval_us = std::max(0L, std::atol(v));
    } else if (a == "--handler=none") {
      o.handler_allocates = false;
    } else if (a == "--handler=alloc") {
      o.handler_allocates = true;
    } else if (const char* v = value("--json=")) {
      o.json = v;
    } else {
      std::fprintf(stderr,
                   "usage: %s [--trials=N] [--seconds=S] [--stall=S] [--interval-us=US (0: no signals)]\n"
                   "       [--handler=alloc|none] [--json=FILE]\n",
                   argv[0]);
      std::exit(1);
    }
  }
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  Options o = parse(argc, argv);
  std::string check = bench::verify_subject();
  std::printf("signal_bench %s: %s\n", bench::kSubject, check.c_str());
  std::printf("  thread %zu..%zu B, handler %s, a signal every %ld us%s, %.1f s per trial, stall %.1f s\n",
              kThreadMin, kThreadMax, o.handler_allocates ? "1024..7168 B" : "does not allocate", o.interval_us,
              o.interval_us == 0 ? " (none: baseline)" : "", o.seconds, o.stall);
  std::vector<Trial> trials;
  int counts[4] = {0, 0, 0, 0};
  for (int i = 0; i < o.trials; ++i) {
    Trial t = run_child(o, i);
    double secs = t.r.elapsed_ns * 1e-9;
    std::printf("  trial %d: %-10s %s", i + 1, t.outcome.c_str(), t.detail.c_str());
    if (t.outcome == "completed" && secs > 0) {
      std::printf("; %.2f M thread pairs/s, %.1f k handler pairs/s, %.1f k signals/s, %llu handler nullptr",
                  t.r.thread_pairs / secs * 1e-6, t.r.handler_pairs / secs * 1e-3, t.r.signals / secs * 1e-3,
                  static_cast<unsigned long long>(t.r.handler_failed));
    }
    std::printf("\n");
    std::fflush(stdout);
    counts[t.outcome == "completed" ? 0 : t.outcome == "deadlocked" ? 1 : t.outcome == "corrupted" ? 2 : 3]++;
    trials.push_back(t);
  }
  std::printf("  %s: completed %d, deadlocked %d, corrupted %d, crashed %d (of %d)\n", bench::kSubject, counts[0],
              counts[1], counts[2], counts[3], o.trials);

  if (!o.json.empty()) {
    FILE* f = std::fopen(o.json.c_str(), "w");
    if (f == nullptr) {
      std::perror(o.json.c_str());
      return 1;
    }
    std::fprintf(f, "{\n  \"subject\": \"%s\",\n  \"subject_check\": \"%s\",\n", bench::kSubject,
                 json_escape(check).c_str());
    std::fprintf(f,
                 "  \"thread_bytes\": [%zu, %zu],\n  \"handler_bytes\": [%zu, %zu],\n  \"interval_us\": %ld,\n"
                 "  \"handler_allocates\": %s,\n  \"seconds\": %g,\n  \"stall_s\": %g,\n",
                 kThreadMin, kThreadMax, kHandlerMin, kHandlerMax, o.interval_us,
                 o.handler_allocates ? "true" : "false", o.seconds, o.stall);
    std::fprintf(f, "  \"counts\": {\"completed\": %d, \"deadlocked\": %d, \"corrupted\": %d, \"crashed\": %d},\n",
                 counts[0], counts[1], counts[2], counts[3]);
    std::fprintf(f, "  \"trials\": [\n");
    for (std::size_t i = 0; i < trials.size(); ++i) {
      const Trial& t = trials[i];
      double secs = t.r.elapsed_ns * 1e-9;
      std::fprintf(f,
                   "    {\"outcome\": \"%s\", \"detail\": \"%s\", \"thread_pairs\": %llu, \"handler_pairs\": %llu, "
                   "\"handler_nullptr\": %llu, \"thread_nullptr\": %llu, \"signals\": %llu, \"elapsed_s\": %.3f}%s\n",
                   t.outcome.c_str(), json_escape(t.detail).c_str(),
                   static_cast<unsigned long long>(t.r.thread_pairs),
                   static_cast<unsigned long long>(t.r.handler_pairs),
                   static_cast<unsigned long long>(t.r.handler_failed),
                   static_cast<unsigned long long>(t.r.thread_failed), static_cast<unsigned long long>(t.r.signals),
                   t.have_result ? secs : 0.0, i + 1 < trials.size() ? "," : "");
    }
    std::fprintf(f, "  ]\n}\n");
    std::fclose(f);
  }
  return 0;
}
