#include "anyctx/ctx/report.h"

#include <gtest/gtest.h>

#include <string>

namespace anyctx {
namespace {

TEST(ReportTest, FormatsKindTextAndNumbers) {
  Report r("bad page");
  r << "pfn " << 42u << " refcount " << -3 << " at " << static_cast<const void*>(nullptr) << ' ' << true;
  EXPECT_EQ(r.text(), "anyctx: bad page: pfn 42 refcount -3 at 0x0 true");
}

TEST(ReportTest, FormatsExtremesAndHex) {
  Report r("n");
  r << static_cast<long long>(INT64_MIN) << ' ' << UINT64_MAX << ' ';
  r.hex(0xdeadbeef);
  EXPECT_EQ(r.text(), "anyctx: n: -9223372036854775808 18446744073709551615 0xdeadbeef");
}

TEST(ReportTest, LongTextIsCutNotOverrun) {
  Report r("long");
  std::string big(5000, 'x');
  r << big;
  EXPECT_EQ(r.text().size(), 1024u);
  EXPECT_EQ(r.text().substr(0, 14), "anyctx: long: ");
}

TEST(ReportTest, NullStringPrintsNull) {
  Report r("k");
  r << static_cast<const char*>(nullptr);
  EXPECT_EQ(r.text(), "anyctx: k: (null)");
}

TEST(ReportTest, SourceLocationPrintsFileAndLine) {
  Report r("k");
  SrcLoc at = SrcLoc::here();
  r << at;
#if ANYCTX_DEBUG
  EXPECT_NE(r.text().find("report_test.cc:"), std::string_view::npos);
#else
  EXPECT_NE(r.text().find("(unknown site)"), std::string_view::npos);
#endif
}

TEST(ReportTest, FatalWritesTheLineAndAborts) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH((Report("k") << "the reason").fatal(), "^anyctx: k: the reason\n");
}

}  // namespace
}  // namespace anyctx
