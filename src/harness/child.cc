#include "harness/child.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>

namespace anyctx::harness {
namespace {

void write_all(int fd, const void* data, std::size_t n) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w <= 0) return;
    p += w;
    n -= static_cast<std::size_t>(w);
  }
}

}  // namespace

ChildRun run_in_child(const TargetSpec& target, const Program& program, const RunOptions& options, int timeout_ms) {
  ChildRun r;
  int err[2], stats[2];
  if (pipe2(err, O_CLOEXEC) != 0 || pipe2(stats, O_CLOEXEC) != 0) {
    r.failed = true;
    r.how = std::string("pipe: ") + std::strerror(errno);
    return r;
  }
  std::fflush(stdout);
  std::fflush(stderr);
  pid_t pid = fork();
  if (pid == 0) {
    close(err[0]);
    close(stats[0]);
    dup2(err[1], STDERR_FILENO);
    RunStats s = run_program(target, program, options);
    write_all(stats[1], &s, sizeof s);  // fits the pipe: no reader needed yet
    std::_Exit(0);
  }
  close(err[1]);
  close(stats[1]);
  if (pid < 0) {
    close(err[0]);
    close(stats[0]);
    r.failed = true;
    r.how = std::string("fork: ") + std::strerror(errno);
    return r;
  }
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  char buf[4096];
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      kill(pid, SIGKILL);
      r.timed_out = true;
      break;
    }
    pollfd pfd{err[0], POLLIN, 0};
    int n = poll(&pfd, 1, static_cast<int>(left.count()));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) continue;  // timed out: the check above kills it
    ssize_t got = read(err[0], buf, sizeof buf);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) break;  // EOF: the child exited (or closed stderr)
    r.output.append(buf, static_cast<std::size_t>(got));
  }
  // After a kill, collect what it wrote before; the pipe ends at its exit.
  for (ssize_t got; r.timed_out && (got = read(err[0], buf, sizeof buf)) > 0;)
    r.output.append(buf, static_cast<std::size_t>(got));
  close(err[0]);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  RunStats s;
  std::size_t have = 0;
  for (ssize_t got; have < sizeof s && (got = read(stats[0], reinterpret_cast<char*>(&s) + have, sizeof s - have)) > 0;)
    have += static_cast<std::size_t>(got);
  close(stats[0]);
  if (r.timed_out) {
    r.failed = true;
    r.how = "timeout after " + std::to_string(timeout_ms) + " ms";
  } else if (WIFSIGNALED(status)) {
    r.failed = true;
    r.how = "signal " + std::to_string(WTERMSIG(status));
  } else if (WEXITSTATUS(status) != 0) {
    r.failed = true;
    r.how = "exit " + std::to_string(WEXITSTATUS(status));
  }
  if (!r.failed && have == sizeof s) {
    r.have_stats = true;
    r.stats = s;
  }
  return r;
}

std::string step_kind_of(const std::string& bracket) {
  std::size_t b = bracket.find("): ");
  if (b == std::string::npos) return {};
  std::size_t e = bracket.find("; event", b);
  std::istringstream words(bracket.substr(b + 3, e == std::string::npos ? std::string::npos : e - b - 3));
  std::string out, w;
  bool skip_number = false;
  while (words >> w) {
    if (skip_number) {  // the number after "op" or "injection"
      skip_number = false;
      continue;
    }
    if (w == "op" || w == "injection") {
      skip_number = true;
      continue;
    }
    if (!out.empty()) out += ' ';
    out += w;
  }
  return out;
}

Signature signature_of_output(const std::string& output) {
  Signature sig;
  std::size_t pos = 0;
  while (pos < output.size()) {
    std::size_t nl = output.find('\n', pos);
    std::string line = output.substr(pos, nl == std::string::npos ? std::string::npos : nl - pos);
    pos = nl == std::string::npos ? output.size() : nl + 1;
    if (line.rfind("anyctx: harness step: ", 0) == 0) {
      std::size_t b = line.find('[');
      if (b != std::string::npos && sig.step.empty()) sig.step = line.substr(b);
    } else if (sig.oracle.empty() && line.rfind("anyctx: ", 0) == 0) {
      std::size_t colon = line.find(": ", 8);
      sig.oracle = line.substr(8, colon == std::string::npos ? std::string::npos : colon - 8);
      if (sig.oracle == "harness" && colon != std::string::npos) {  // "harness: WHAT"
        std::size_t next = line.find(": ", colon + 2);
        sig.oracle = line.substr(8, next == std::string::npos ? std::string::npos : next - 8);
      }
      std::size_t b = line.rfind('[');
      if (b != std::string::npos && line.back() == ']') sig.step = line.substr(b);
    } else if (sig.oracle.empty() && line.find("Sanitizer") != std::string::npos &&
               line.find("ERROR: ") != std::string::npos) {
      std::string what = line.substr(line.find("ERROR: ") + 7);
      std::size_t on = what.find(" on ");
      sig.oracle = what.substr(0, on);
    }
  }
  sig.step_kind = step_kind_of(sig.step);
  return sig;
}

Signature signature_of(const ChildRun& run) {
  if (!run.failed) return {};
  Signature sig = signature_of_output(run.output);
  if (run.timed_out && sig.oracle.empty()) sig.oracle = "timeout";
  if (sig.oracle.empty()) sig.oracle = "(no report: " + run.how + ")";
  return sig;
}

std::string Signature::text() const {
  if (oracle.empty()) return "no failure";
  return oracle + (step_kind.empty() ? " outside a program step" : " at " + step_kind);
}

std::function<bool(const Program&)> fails_like(const TargetSpec& target, const Signature& want,
                                               const RunOptions& options, int timeout_ms) {
  return [&target, want, options, timeout_ms](const Program& p) {
    ChildRun run = run_in_child(target, p, options, timeout_ms);
    return run.failed && signature_of(run).same_failure(want);
  };
}

}  // namespace anyctx::harness
