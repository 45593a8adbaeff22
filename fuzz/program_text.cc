// program_text: the text parser. Any text either parses into a valid program
// — which must print back to an equal program and then runs — or gets an
// error naming a line; the parser never crashes.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "anyctx/ctx/report.h"
#include "harness/executor.h"
#include "harness/text.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace anyctx::harness;
  std::string_view text(reinterpret_cast<const char*>(data), size);
  ParseResult parsed = parse(text, *target_spec("all"));
  if (!parsed.ok()) {
    if (parsed.error.empty()) (anyctx::Report("program_text") << "a failed parse gave no error").fatal();
    return 0;
  }
  ParseResult again = parse(print(*parsed.target, parsed.program), *target_spec("all"));
  if (!again.ok() || !(again.program == parsed.program) || again.target != parsed.target)
    (anyctx::Report("program_text") << "parse(print(p)) != p: " << again.error).fatal();
  run_program(*parsed.target, parsed.program);
  return 0;
}
