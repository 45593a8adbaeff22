// A fuzz target written outside anyctx, on the installed harness: page_ops
// programs under the deterministic executor (every oracle on). Under
// libFuzzer (-fsanitize=fuzzer -DANYCTX_CONSUMER_LIBFUZZER)
// LLVMFuzzerTestOneInput is the entry; built without it, main() below runs
// it on a text program, on a fixed sequence of pseudo-random inputs and on
// each file named on the command line. Exit 0 when every run was clean (an
// oracle aborts the process).
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <string_view>
#include <vector>

#include "harness/fuzz_target.h"

ANYCTX_FUZZ_TARGET("page_ops")

#ifndef ANYCTX_CONSUMER_LIBFUZZER
namespace {

// A text program is an input too: two allocations, an IRQ at the second op
// boundary that allocates and frees on the nolock path, then the frees.
constexpr std::string_view kTextInput = R"(# anyctx program v2
target page_ops
cpu 0
  alloc_pages spinning order=0 slot=0
  alloc_pages nolock order=2 zero slot=1
  write_verify slot=1
  free_pages nolock slot=0
  free_pages spinning slot=1
  drain_all
inject irq cpu=0 site=OpBoundary level=task nth=2
  alloc_pages nolock order=0 slot=2
  free_pages nolock slot=2
)";

int run(const std::vector<std::uint8_t>& input) { return LLVMFuzzerTestOneInput(input.data(), input.size()); }

}  // namespace

int main(int argc, char** argv) {
  int runs = 0;
  run(std::vector<std::uint8_t>(kTextInput.begin(), kTextInput.end()));
  ++runs;
  std::uint64_t state = 0x9e3779b97f4a7c15u;  // xorshift64: the same inputs every time
  for (int i = 0; i < 200; ++i) {
    std::vector<std::uint8_t> input(16 + i % 97);
    for (auto& b : input) {
      state ^= state << 13;
      state ^= state >> 7;
      state ^= state << 17;
      b = static_cast<std::uint8_t>(state);
    }
    run(input);
    ++runs;
  }
  for (int i = 1; i < argc; ++i) {
    std::ifstream in(argv[i], std::ios::binary);
    if (!in) {
      std::fprintf(stderr, "fuzz_pages: cannot read %s\n", argv[i]);
      return 1;
    }
    run(std::vector<std::uint8_t>(std::istreambuf_iterator<char>(in), {}));
    ++runs;
  }
  std::printf("fuzz_pages: %d inputs ran clean\n", runs);
  return 0;
}
#endif
