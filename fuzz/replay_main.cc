// replay_main.cc: runs a fuzz target's LLVMFuzzerTestOneInput over saved
// inputs, without a fuzzer. Linked into every replay_NAME executable, in every
// preset, so a crash found by ci/fuzz reproduces in a plain debug build:
//
//   build/dev/fuzz/replay_NAME build/fuzz-artifacts/NAME/crash-...
//   build/dev/fuzz/replay_NAME corpus/NAME corpus/NAME-regressions
//
// Each FILE argument is run once; each DIR argument runs every regular file
// directly inside it, sorted by name. After each argument it prints
// "replayed N inputs from PATH". A path that cannot be read is an error that
// names the path; the exit status is then non-zero. Options: -v (print each
// input's path before running it), -- (end of options).
//
// Each input is copied into a heap buffer of exactly its size, as libFuzzer
// does, so an out-of-bounds read past the input is caught by ASan here too.

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include <signal.h>
#include <unistd.h>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);
// Optional in a fuzz target; null when the target does not define it.
extern "C" __attribute__((weak)) int LLVMFuzzerInitialize(int* argc, char*** argv);
// Present only when a sanitizer runtime is linked.
extern "C" __attribute__((weak)) void __sanitizer_set_death_callback(void (*callback)());

namespace {

namespace fs = std::filesystem;

// The input being run, kept in a fixed buffer so the sanitizer death callback
// can print it without allocating.
char g_current_input[4096];

void print_current_input() {
  if (g_current_input[0] == '\0') return;
  static constexpr char kPrefix[] = "\nreplay: crashed on input ";
  // Best effort: nothing useful to do if stderr is gone.
  (void)!write(STDERR_FILENO, kPrefix, sizeof(kPrefix) - 1);
  (void)!write(STDERR_FILENO, g_current_input, std::strlen(g_current_input));
  (void)!write(STDERR_FILENO, "\n", 1);
}

// Without a sanitizer runtime nothing reports a crash, so a fatal signal
// prints the input's path and then dies of the same signal (SA_RESETHAND).
void on_fatal_signal(int sig) {
  print_current_input();
  raise(sig);
}

void install_fatal_signal_handlers() {
  struct sigaction sa;
  std::memset(&sa, 0, sizeof(sa));
  sa.sa_handler = on_fatal_signal;
  sa.sa_flags = SA_RESETHAND | SA_NODEFER;
  sigemptyset(&sa.sa_mask);
  for (int sig : {SIGSEGV, SIGBUS, SIGABRT, SIGILL, SIGFPE}) sigaction(sig, &sa, nullptr);
}

void set_current_input(const std::string& path) {
  const std::size_t n = std::min(path.size(), sizeof(g_current_input) - 1);
  std::memcpy(g_current_input, path.data(), n);
  g_current_input[n] = '\0';
}

// Reads the whole file at path into out. Return: false (with a message naming
// the path on stderr) when it cannot be read.
bool read_file(const fs::path& path, std::vector<char>& out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "replay: cannot read %s: %s\n", path.c_str(), std::strerror(errno));
    return false;
  }
  out.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  if (in.bad()) {
    std::fprintf(stderr, "replay: error while reading %s\n", path.c_str());
    return false;
  }
  return true;
}

// Runs one input file. Return: false when the file cannot be read.
bool run_one(const fs::path& path, bool verbose) {
  std::vector<char> bytes;
  if (!read_file(path, bytes)) return false;
  if (verbose) std::fprintf(stderr, "replay: %s (%zu bytes)\n", path.c_str(), bytes.size());
  // Exactly-sized heap copy; new[0] still yields a valid, unique pointer.
  std::unique_ptr<std::uint8_t[]> data(new std::uint8_t[bytes.size()]);
  if (!bytes.empty()) std::memcpy(data.get(), bytes.data(), bytes.size());
  set_current_input(path.string());
  std::fflush(nullptr);
  // The return value (-1: "do not add to corpus") means nothing to a replay.
  (void)LLVMFuzzerTestOneInput(data.get(), bytes.size());
  g_current_input[0] = '\0';
  return true;
}

// Runs a file or every regular file of a directory.
// Return: false when the path or one of its files cannot be read.
bool replay_path(const char* arg, bool verbose) {
  const fs::path path(arg);
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (ec) {
    std::fprintf(stderr, "replay: cannot read %s: %s\n", arg, ec.message().c_str());
    return false;
  }
  if (fs::is_regular_file(st)) {
    if (!run_one(path, verbose)) return false;
    std::printf("replayed 1 inputs from %s\n", arg);
    return true;
  }
  if (!fs::is_directory(st)) {
    std::fprintf(stderr, "replay: cannot read %s: not a regular file or directory\n", arg);
    return false;
  }

  std::vector<fs::path> files;
  fs::directory_iterator it(path, ec);
  if (ec) {
    std::fprintf(stderr, "replay: cannot read %s: %s\n", arg, ec.message().c_str());
    return false;
  }
  for (const fs::directory_entry& entry : it) {
    std::error_code entry_ec;
    if (entry.is_regular_file(entry_ec)) files.push_back(entry.path());
  }
  std::sort(files.begin(), files.end(), [](const fs::path& a, const fs::path& b) {
    return a.filename().native() < b.filename().native();
  });

  bool ok = true;
  std::size_t replayed = 0;
  for (const fs::path& file : files) {
    if (run_one(file, verbose)) {
      ++replayed;
    } else {
      ok = false;
    }
  }
  std::printf("replayed %zu inputs from %s\n", replayed, arg);
  return ok;
}

void usage(const char* argv0) {
  std::fprintf(stderr,
               "usage: %s [-v] [--] FILE|DIR...\n"
               "  runs LLVMFuzzerTestOneInput once on each FILE and on each regular\n"
               "  file directly inside each DIR (sorted by name)\n",
               argv0);
}

}  // namespace

int main(int argc, char** argv) {
  // Before LLVMFuzzerInitialize, so that handlers the target installs win.
  if (__sanitizer_set_death_callback != nullptr) {
    __sanitizer_set_death_callback(print_current_input);
  } else {
    install_fatal_signal_handlers();
  }
  if (LLVMFuzzerInitialize != nullptr) LLVMFuzzerInitialize(&argc, &argv);

  bool verbose = false;
  std::vector<const char*> paths;
  bool options_done = false;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg(argv[i]);
    if (!options_done && arg == "--") {
      options_done = true;
    } else if (!options_done && (arg == "-v" || arg == "--verbose")) {
      verbose = true;
    } else if (!options_done && (arg == "-h" || arg == "--help")) {
      usage(argv[0]);
      return 0;
    } else if (!options_done && arg.size() > 1 && arg[0] == '-') {
      std::fprintf(stderr, "replay: unknown option %s\n", argv[i]);
      usage(argv[0]);
      return 2;
    } else {
      paths.push_back(argv[i]);
    }
  }
  if (paths.empty()) {
    usage(argv[0]);
    return 2;
  }

  bool ok = true;
  for (const char* path : paths) {
    if (!replay_path(path, verbose)) ok = false;
    std::fflush(stdout);
  }
  return ok ? 0 : 1;
}
