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
// --sabotage KIND makes an oracle fire on purpose (see Sabotage in
// harness/executor.h), to check the tool chain end to end.
// Exit status: 0 when no run failed, 1 when some did, 2 on bad usage or input.
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "harness/executor.h"
#include "harness/program.h"
#include "harness/text.h"

namespace {

using namespace anyctx::harness;

[[noreturn]] void usage(const char* why) {
  std::fprintf(stderr, "anyctx-repro: %s\nusage: anyctx-repro [--target NAME] [--runs N] [--emit-test NAME] "
                       "[--encode OUT] [--print] [--sabotage KIND] FILE\n", why);
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

struct Outcome {
  bool failed = false;
  std::string how;     // "exit 1", "signal 6"
  std::string output;  // what the child wrote to stderr
};

// Runs the program in a child, collecting its stderr.
Outcome run_child(const TargetSpec& target, const Program& program, const RunOptions& options) {
  int fds[2];
  if (pipe(fds) != 0) usage("pipe failed");
  pid_t pid = fork();
  if (pid == 0) {
    close(fds[0]);
    dup2(fds[1], STDERR_FILENO);
    run_program(target, program, options);
    std::_Exit(0);
  }
  close(fds[1]);
  Outcome o;
  char buf[4096];
  for (ssize_t n; (n = read(fds[0], buf, sizeof buf)) > 0;) o.output.append(buf, static_cast<std::size_t>(n));
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  if (WIFSIGNALED(status)) {
    o.failed = true;
    o.how = "signal " + std::to_string(WTERMSIG(status));
  } else if (WEXITSTATUS(status) != 0) {
    o.failed = true;
    o.how = "exit " + std::to_string(WEXITSTATUS(status));
  }
  return o;
}

// The first "anyctx: KIND: ..." line names the oracle; "harness step" or the
// bracket at the end of a harness report names the step.
void describe(const std::string& output) {
  std::string oracle, step;
  std::size_t pos = 0;
  while (pos < output.size()) {
    std::size_t nl = output.find('\n', pos);
    std::string line = output.substr(pos, nl == std::string::npos ? std::string::npos : nl - pos);
    pos = nl == std::string::npos ? output.size() : nl + 1;
    if (line.rfind("anyctx: harness step: ", 0) == 0) {
      std::size_t b = line.find('[');
      if (b != std::string::npos) step = line.substr(b);
    } else if (oracle.empty() && line.rfind("anyctx: ", 0) == 0) {
      std::size_t colon = line.find(": ", 8);
      oracle = line.substr(8, colon == std::string::npos ? std::string::npos : colon - 8);
      std::size_t b = line.rfind('[');
      if (b != std::string::npos && line.back() == ']') step = line.substr(b);
    } else if (oracle.empty() && line.find("Sanitizer") != std::string::npos && line.find("ERROR") != std::string::npos) {
      oracle = line;
    }
  }
  std::printf("oracle: %s\n", oracle.empty() ? "(none printed: see the output above)" : oracle.c_str());
  std::printf("step:   %s\n", step.empty() ? "(not inside a program step)" : step.c_str());
}

}  // namespace

int main(int argc, char** argv) {
  const TargetSpec* target = nullptr;
  int runs = 10;
  const char* emit_test = nullptr;
  const char* encode_to = nullptr;
  bool print_only = false;
  const char* file = nullptr;
  RunOptions options;
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
    } else if (a == "--encode") {
      encode_to = value("--encode");
    } else if (a == "--sabotage") {
      std::string kind = value("--sabotage");
      const std::pair<const char*, Sabotage> kinds[] = {
          {"corrupt-live-block", Sabotage::kCorruptLiveBlock}, {"corrupt-free-page", Sabotage::kCorruptFreePage},
          {"leak-page", Sabotage::kLeakPage},                  {"lock-model-lie", Sabotage::kLockModelLie},
          {"no-lock-legalization", Sabotage::kNoLockLegalization}, {"spinning-in-nmi", Sabotage::kSpinningInNmi}};
      bool known = false;
      for (const auto& [name, k] : kinds)
        if (kind == name) options.sabotage = k, known = true;
      if (!known) usage(("unknown sabotage '" + kind + "'").c_str());
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

  std::printf("program (target %s):\n%s\n", target->name, print(*target, program).c_str());
  int failed = 0;
  Outcome first_failure;
  for (int r = 1; r <= runs; ++r) {
    Outcome o = run_child(*target, program, options);
    if (o.failed) {
      if (failed == 0) first_failure = o;
      ++failed;
    }
    std::printf("run %d/%d: %s\n", r, runs, o.failed ? ("FAILED (" + o.how + ")").c_str() : "ok");
  }
  std::printf("hit rate: %d/%d runs failed\n", failed, runs);
  if (failed == 0) return 0;
  std::printf("first failure's output:\n%s", first_failure.output.c_str());
  describe(first_failure.output);
  return 1;
}
