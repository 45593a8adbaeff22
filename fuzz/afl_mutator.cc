// afl_mutator.cc: the structure-aware mutator (harness/mutator.h) as an
// AFL++ custom mutator library (AFL++ docs/custom_mutators.md: the C API
// afl_custom_init / afl_custom_fuzz / afl_custom_deinit). One library for
// every target:
//
//   AFL_CUSTOM_MUTATOR_LIBRARY=build/afl/fuzz/libanyctx_afl_mutator.so \
//     afl-fuzz -i corpus/page_ops -o OUT -- build/afl/fuzz/fuzz_page_ops
//
// The target is ANYCTX_AFL_TARGET (page_ops, page_smp, ...) or, when unset,
// the NAME of the first fuzz_NAME on afl-fuzz's command line. When AFL++
// hands a second queue entry (add_buf), a fifth of the calls splice the two
// (cross_over). The byte-level kinds use simple_byte_mutator: AFL++'s own
// havoc stage does the rest of the byte mutation after this stage.
//
// ANYCTX_AFL_MUTATOR_STATS=FILE: the library writes how often it was called
// and each kind's count to FILE every 256 calls and at deinit
// (ci/test-afl-mutator checks it).
//
// Built without sanitizers and without AFL++'s instrumentation (it runs
// inside afl-fuzz, not in the target): see fuzz/CMakeLists.txt.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <string_view>
#include <vector>

#include "harness/mutator.h"

namespace {

using anyctx::harness::TargetSpec;

struct State {
  const TargetSpec* target = nullptr;
  anyctx::harness::Rng rng{0};
  std::vector<std::uint8_t> out;
  std::uint64_t calls = 0;
  std::uint64_t splices = 0;
  anyctx::harness::MutationCounts counts{};
  std::string stats_path;
};

// The target named by ANYCTX_AFL_TARGET, else by a fuzz_NAME argument of
// this process (afl-fuzz ... -- build/afl/fuzz/fuzz_NAME).
const TargetSpec* find_target() {
  if (const char* name = std::getenv("ANYCTX_AFL_TARGET"); name != nullptr && *name != '\0')
    return anyctx::harness::target_spec(name);
  std::FILE* f = std::fopen("/proc/self/cmdline", "rb");
  if (f == nullptr) return nullptr;
  std::string cmdline;
  char buf[4096];
  for (std::size_t n; (n = std::fread(buf, 1, sizeof buf, f)) != 0;) cmdline.append(buf, n);
  std::fclose(f);
  for (std::size_t at = 0; at < cmdline.size();) {
    std::string_view arg(cmdline.c_str() + at);
    at += arg.size() + 1;
    std::size_t slash = arg.rfind('/');
    std::string_view base = slash == std::string_view::npos ? arg : arg.substr(slash + 1);
    if (base.starts_with("fuzz_"))
      if (const TargetSpec* t = anyctx::harness::target_spec(base.substr(5)); t != nullptr) return t;
  }
  return nullptr;
}

void write_stats(const State& s, bool at_deinit) {
  if (s.stats_path.empty()) return;
  std::FILE* f = std::fopen(s.stats_path.c_str(), "w");
  if (f == nullptr) return;
  std::fprintf(f, "target %s\nat %s\ncalls %llu\ncross_over %llu\n", s.target->name, at_deinit ? "deinit" : "periodic",
               static_cast<unsigned long long>(s.calls), static_cast<unsigned long long>(s.splices));
  for (int k = 0; k < anyctx::harness::kMutationKinds; ++k)
    std::fprintf(f, "%s %llu\n", anyctx::harness::mutation_name(static_cast<anyctx::harness::Mutation>(k)),
                 static_cast<unsigned long long>(s.counts[k]));
  std::fclose(f);
}

}  // namespace

extern "C" {

// Context: afl-fuzz, once. Return: the state, or nullptr (afl-fuzz stops)
// when no target can be found.
void* afl_custom_init(void* /*afl*/, unsigned int seed) {
  const TargetSpec* target = find_target();
  if (target == nullptr) {
    std::fprintf(stderr,
                 "anyctx_afl_mutator: no target: set ANYCTX_AFL_TARGET (page_ops, page_smp, slab_ops, "
                 "memcg_ops, lock_ops) or run a fuzz_NAME binary\n");
    return nullptr;
  }
  State* s = new (std::nothrow) State;
  if (s == nullptr) return nullptr;
  s->target = target;
  s->rng = anyctx::harness::Rng(seed);
  if (const char* path = std::getenv("ANYCTX_AFL_MUTATOR_STATS"); path != nullptr) s->stats_path = path;
  return s;
}

// Return: the size of the mutated input, left in *out_buf (owned by the
// library until the next call).
std::size_t afl_custom_fuzz(void* data, std::uint8_t* buf, std::size_t buf_size, std::uint8_t** out_buf,
                            std::uint8_t* add_buf, std::size_t add_buf_size, std::size_t max_size) {
  State& s = *static_cast<State*>(data);
  ++s.calls;
  if (s.out.size() < max_size) s.out.resize(max_size);
  unsigned seed = static_cast<unsigned>(s.rng.next());
  std::size_t n;
  if (add_buf != nullptr && add_buf_size != 0 && s.rng.chance(20)) {
    ++s.splices;
    n = anyctx::harness::cross_over(*s.target, buf, buf_size, add_buf, add_buf_size, s.out.data(), max_size, seed);
  } else {
    std::size_t size = buf_size < max_size ? buf_size : max_size;
    std::memcpy(s.out.data(), buf, size);
    n = anyctx::harness::mutate_input(*s.target, s.out.data(), size, max_size, seed,
                                      anyctx::harness::simple_byte_mutator, &s.counts);
  }
  if (s.calls % 256 == 0) write_stats(s, false);
  *out_buf = s.out.data();
  return n;
}

void afl_custom_deinit(void* data) {
  State* s = static_cast<State*>(data);
  write_stats(*s, true);
  delete s;
}

}  // extern "C"
