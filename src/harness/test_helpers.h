// harness/test_helpers.h — what the harness's tests share: a text program
// parsed (or the test failed, naming the parser's error) and a site by the
// name the text form writes.
// Context: tests (gtest); task.
#pragma once

#include <gtest/gtest.h>

#include <string>

#include "harness/text.h"

namespace anyctx::harness::test {

// Return: the program `text` reads as (target `all` for the parser's
// tables), or an empty one after a test failure with the parser's error.
inline Program parse_or_fail(const std::string& text) {
  ParseResult r = parse(text, *target_spec("all"));
  EXPECT_TRUE(r.ok()) << r.error << "\n" << text;
  return r.program;
}

// Return: the site (or kOpBoundary) named `name`, as injection_site_name()
// writes it; kOpBoundary after a test failure when no site has that name.
inline int site_of(const std::string& name) {
  for (int s = 0; s < kInjectionSites; ++s)
    if (name == injection_site_name(s)) return s;
  ADD_FAILURE() << "no site " << name;
  return kOpBoundary;
}

}  // namespace anyctx::harness::test
