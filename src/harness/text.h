// harness/text.h — the text form of a program: print, parse, and print as a
// C++ regression test.
//
// Contract:
//  - print() writes the canonical text; parse(print(p)) == p for every valid
//    program of the target. The first line is kTextMagic (v2), which is how
//    the fuzz entry and the replayer tell a text program from a binary one.
//  - v2 adds switches anchored to a site hit and PCT schedules; a v1 text
//    (kTextMagicV1, no such lines) parses to the same program as before.
//  - parse() accepts what print() writes, with comments (#...) and blank
//    lines anywhere and the words of an op in any order; anything else is an
//    error "line N: expected ..., got ..." naming what was wrong. A parsed
//    program is also validated against its target.
//
//      # anyctx program v2
//      target page_smp
//      fault nth=3 percent=0 contexts=task,irq,nmi paths=spinning,nolock seed=7
//      cpu 0
//        alloc_pages nolock order=2 zero slot=1
//        free_pages spinning slot=1
//      cpu 1
//        kmalloc nolock size=64 account slot=3
//      inject nmi cpu=0 site=ZoneLocked level=task nth=1
//        alloc_pages nolock order=0 slot=2
//      switch event=5 cpu=1
//      switch on=0 site=ZoneListEdit level=task nth=2 cpu=1
//      pct seed=7 depth=3 steps=200          (instead of switch lines)
#pragma once

#include <string>
#include <string_view>

#include "harness/program.h"

namespace anyctx::harness {

inline constexpr std::string_view kTextMagic = "# anyctx program v2";
inline constexpr std::string_view kTextMagicV1 = "# anyctx program v1";

std::string print(const TargetSpec& target, const Program& program);

struct ParseResult {
  const TargetSpec* target = nullptr;  // from the `target` line
  Program program;
  std::string error;  // empty on success
  bool ok() const { return error.empty(); }
};

// `default_target` is used when the text has no `target` line.
ParseResult parse(std::string_view text, const TargetSpec& default_target);

// Return: whether `bytes` start with kTextMagic or kTextMagicV1.
bool is_text_program(std::string_view bytes);

// Reads a fuzz input as the fuzz targets do: a text program of `target` is
// parsed; anything else (bytes, a text that does not parse, or a text of
// another target) is decoded as bytes for `target`. `out` is valid for it.
void read_fuzz_input(const TargetSpec& target, const std::uint8_t* data, std::size_t size, Program& out);

// A gtest test that replays the program and passes when it runs clean.
std::string print_regression_test(const TargetSpec& target, const Program& program, std::string_view test_name);

}  // namespace anyctx::harness
