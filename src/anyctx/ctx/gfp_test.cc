// Truth tables for the gfp predicates: every flag alone, every composite.
#include "anyctx/ctx/gfp.h"

#include <gtest/gtest.h>

namespace anyctx {
namespace {

struct Row {
  const char* name;
  Gfp gfp;
  bool spinning, direct_reclaim, reserves;
};

constexpr Row kTable[] = {
    {"none", Gfp{}, false, false, false},
    {"kGfpDirectReclaim", kGfpDirectReclaim, true, true, false},
    {"kGfpKswapdReclaim", kGfpKswapdReclaim, true, false, false},
    {"kGfpHigh", kGfpHigh, false, false, true},
    {"kGfpZero", kGfpZero, false, false, false},
    {"kGfpAccount", kGfpAccount, false, false, false},
    {"kGfpNowarn", kGfpNowarn, false, false, false},
    {"kGfpNomemalloc", kGfpNomemalloc, false, false, false},
    {"kGfpComp", kGfpComp, false, false, false},
    {"kGfpKernel", kGfpKernel, true, true, false},
    {"kGfpAtomic", kGfpAtomic, true, false, true},
    {"kGfpNowait", kGfpNowait, true, false, false},
    {"kGfpKernel|kGfpZero|kGfpAccount", kGfpKernel | kGfpZero | kGfpAccount, true, true, false},
    {"kGfpAtomic|kGfpNomemalloc", kGfpAtomic | kGfpNomemalloc, true, false, false},
    {"nolock: kGfpAccount|kGfpZero|kGfpNomemalloc|kGfpNowarn|kGfpComp",
     kGfpAccount | kGfpZero | kGfpNomemalloc | kGfpNowarn | kGfpComp, false, false, false},
};

TEST(GfpTest, PredicateTruthTable) {
  for (const Row& row : kTable) {
    EXPECT_EQ(allows_spinning(row.gfp), row.spinning) << row.name;
    EXPECT_EQ(allows_direct_reclaim(row.gfp), row.direct_reclaim) << row.name;
    EXPECT_EQ(allows_reserves(row.gfp), row.reserves) << row.name;
  }
}

// allows_spinning over all 2^8 masks equals "either reclaim bit": the kernel
// once shipped the inverse.
TEST(GfpTest, AllowsSpinningIffAReclaimBitOverEveryMask) {
  for (std::uint32_t bits = 0; bits < (1u << kGfpFlagCount); ++bits) {
    Gfp g{bits};
    bool reclaim = (bits & (kGfpDirectReclaim.bits() | kGfpKswapdReclaim.bits())) != 0;
    EXPECT_EQ(allows_spinning(g), reclaim) << "mask 0x" << std::hex << bits;
  }
}

TEST(GfpTest, FlagsAreDistinctBits) {
  const Gfp flags[] = {kGfpDirectReclaim, kGfpKswapdReclaim, kGfpHigh,       kGfpZero,
                       kGfpAccount,       kGfpNowarn,        kGfpNomemalloc, kGfpComp};
  std::uint32_t all = 0;
  for (Gfp f : flags) {
    EXPECT_EQ(__builtin_popcount(f.bits()), 1);
    EXPECT_EQ(all & f.bits(), 0u);
    all |= f.bits();
  }
  EXPECT_EQ(all, (1u << kGfpFlagCount) - 1);
}

TEST(GfpTest, MaskOperations) {
  Gfp g = kGfpKernel | kGfpZero;
  EXPECT_TRUE(g.has(kGfpZero));
  EXPECT_TRUE(g.has(kGfpKernel));
  EXPECT_FALSE(g.has(kGfpAccount));
  EXPECT_TRUE(g.has_any(kGfpAccount | kGfpZero));
  EXPECT_TRUE((g & ~kGfpKernel) == kGfpZero);
  EXPECT_TRUE(Gfp{}.empty());
}

}  // namespace
}  // namespace anyctx
