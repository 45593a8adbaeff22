// The structure-aware mutator: every output is the canonical encoding of a
// valid program that fits, every kind of mutation is reached where it
// applies, sites are weighted toward locks and half-done updates, text
// inputs are parsed, and the same seed gives the same output.
#include "harness/mutator.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <string>
#include <vector>

#include "harness/executor.h"
#include "harness/interleave.h"
#include "harness/test_helpers.h"
#include "harness/text.h"

namespace anyctx::harness {
namespace {

const char* kFuzzTargets[] = {"page_ops", "page_smp", "slab_ops", "memcg_ops", "lock_ops"};

std::vector<std::uint8_t> random_bytes(std::mt19937& rng, std::size_t max) {
  std::vector<std::uint8_t> bytes(rng() % (max + 1));
  for (auto& b : bytes) b = static_cast<std::uint8_t>(rng());
  return bytes;
}

// Checks that out[0, n) is what mutate_input / cross_over promise.
void expect_canonical(const TargetSpec& t, const std::uint8_t* out, std::size_t n, std::size_t max,
                      const char* what, int i) {
  ASSERT_GT(n, 0u) << t.name << " " << what << " " << i << ": empty output";
  ASSERT_LE(n, max) << t.name << " " << what << " " << i;
  std::span<const std::uint8_t> bytes(out, n);
  Program p = decode(t, bytes);
  ASSERT_EQ(validate(t, p), "") << t.name << " " << what << " " << i;
  ASSERT_EQ(encode(t, p), std::vector<std::uint8_t>(bytes.begin(), bytes.end()))
      << t.name << " " << what << " " << i << ": not canonical";
}

TEST(MutatorTest, EveryOutputIsTheCanonicalEncodingOfAValidProgramThatFits) {
  std::mt19937 rng(11);
  for (const char* name : kFuzzTargets) {
    const TargetSpec& t = *target_spec(name);
    MutationCounts counts{};
    for (int i = 0; i < 2000; ++i) {
      // Random bytes, then a few rounds of mutation of the output: the
      // second and later rounds start from structured programs.
      std::size_t max = i % 10 == 0 ? 8 + rng() % 48 : 64 + rng() % 960;
      std::vector<std::uint8_t> buf = random_bytes(rng, max);
      std::size_t size = buf.size();
      buf.resize(max);
      int rounds = 1 + static_cast<int>(rng() % 4);
      for (int r = 0; r < rounds; ++r) {
        size = mutate_input(t, buf.data(), size, max, static_cast<unsigned>(rng()), simple_byte_mutator, &counts);
        expect_canonical(t, buf.data(), size, max, "mutate_input", i);
        if (HasFatalFailure()) return;
      }
    }
    for (int k = 0; k < kMutationKinds; ++k) {
      Mutation m = static_cast<Mutation>(k);
      if (mutation_applies(t, m, true))
        EXPECT_GT(counts[k], 0u) << name << ": " << mutation_name(m) << " never applied";
      else
        EXPECT_EQ(counts[k], 0u) << name << ": " << mutation_name(m) << " applied where it cannot";
    }
  }
}

TEST(MutatorTest, EveryMutationLeavesTheProgramValid) {
  std::mt19937 seeds(12);
  for (const char* name : kFuzzTargets) {
    const TargetSpec& t = *target_spec(name);
    MutationCounts counts{};
    for (int i = 0; i < 300; ++i) {
      Program p = decode(t, random_bytes(seeds, 300));
      Rng rng(seeds());
      for (int step = 0; step < 20; ++step) {
        Mutation m = mutate_program(t, p, rng, step % 2 == 0 ? simple_byte_mutator : nullptr);
        ++counts[static_cast<int>(m)];
        ASSERT_TRUE(mutation_applies(t, m, true)) << name << ": " << mutation_name(m);
        ASSERT_EQ(validate(t, p), "") << name << " program " << i << " step " << step << " after "
                                      << mutation_name(m) << "\n" << print(t, p);
      }
    }
    for (int k = 0; k < kMutationKinds; ++k)
      if (mutation_applies(t, static_cast<Mutation>(k), true))
        EXPECT_GT(counts[k], 0u) << name << ": " << mutation_name(static_cast<Mutation>(k));
  }
}

TEST(MutatorTest, WithoutAByteMutatorTheByteKindsNeverApply) {
  const TargetSpec& t = *target_spec("page_smp");
  std::mt19937 seeds(13);
  for (int i = 0; i < 500; ++i) {
    Program p = decode(t, random_bytes(seeds, 200));
    Rng rng(seeds());
    Mutation m = mutate_program(t, p, rng, nullptr);
    ASSERT_NE(m, Mutation::kByteMutateOpArgs);
    ASSERT_NE(m, Mutation::kByteMutateEncoding);
  }
}

TEST(MutatorTest, CrossOverGivesTheCanonicalEncodingOfAValidProgramThatFits) {
  std::mt19937 rng(14);
  for (const char* name : kFuzzTargets) {
    const TargetSpec& t = *target_spec(name);
    int differs = 0;
    for (int i = 0; i < 1500; ++i) {
      std::vector<std::uint8_t> a = random_bytes(rng, 400), b = random_bytes(rng, 400);
      if (i % 2 == 0) {  // structured parents: mutated once already
        a.resize(1024);
        a.resize(mutate_input(t, a.data(), a.size() / 4, a.size(), i, nullptr));
      }
      std::size_t max = i % 10 == 0 ? 8 + rng() % 48 : 64 + rng() % 960;
      std::vector<std::uint8_t> out(max);
      std::size_t n = cross_over(t, a.data(), a.size(), b.data(), b.size(), out.data(), max, rng());
      expect_canonical(t, out.data(), n, max, "cross_over", i);
      if (HasFatalFailure()) return;
      if (std::vector<std::uint8_t>(out.begin(), out.begin() + n) != encode(t, decode(t, a))) ++differs;
    }
    EXPECT_GT(differs, 750) << name << ": cross_over mostly returns its first parent";
  }
}

TEST(MutatorTest, LimitsAreKept) {
  const TargetSpec& t = *target_spec("page_smp");
  std::vector<std::uint8_t> buf(64, 0x5a);
  EXPECT_EQ(mutate_input(t, buf.data(), 64, 0, 1, nullptr), 0u);
  std::vector<std::uint8_t> out(4);
  EXPECT_EQ(cross_over(t, buf.data(), 64, buf.data(), 64, out.data(), 0, 1), 0u);
  for (std::size_t max = 3; max < 12; ++max) {
    for (unsigned seed = 0; seed < 50; ++seed) {
      std::vector<std::uint8_t> in(256, static_cast<std::uint8_t>(seed * 37));
      std::size_t n = mutate_input(t, in.data(), max, max, seed, simple_byte_mutator);
      expect_canonical(t, in.data(), n, max, "tiny max_size", static_cast<int>(seed));
      if (HasFatalFailure()) return;
    }
  }
}

TEST(MutatorTest, TheSameSeedGivesTheSameOutput) {
  const TargetSpec& t = *target_spec("memcg_ops");
  std::mt19937 rng(15);
  for (int i = 0; i < 200; ++i) {
    std::vector<std::uint8_t> in = random_bytes(rng, 200);
    std::vector<std::uint8_t> x = in, y = in;
    x.resize(512);
    y.resize(512);
    unsigned seed = rng();
    std::size_t nx = mutate_input(t, x.data(), in.size(), 512, seed, nullptr);
    std::size_t ny = mutate_input(t, y.data(), in.size(), 512, seed, nullptr);
    ASSERT_EQ(nx, ny);
    ASSERT_EQ(x, y);
  }
}

TEST(MutatorTest, ATextProgramIsParsedAndMutated) {
  const TargetSpec& t = *target_spec("page_smp");
  const std::string text =
      "# anyctx program v2\n"
      "target page_smp\n"
      "cpu 0\n"
      "  alloc_pages nolock order=2 zero slot=1\n"
      "  free_pages spinning slot=1\n"
      "  alloc_pages spinning order=1 slot=2\n"
      "  free_pages nolock slot=2\n"
      "cpu 1\n"
      "  alloc_pages spinning order=3 slot=3\n"
      "  free_pages spinning slot=3\n"
      "inject nmi cpu=0 site=ZoneLocked level=task nth=1\n"
      "  alloc_pages nolock order=0 slot=4\n"
      "switch on=0 site=ZoneListEdit level=task nth=2 cpu=1\n";
  ParseResult parsed = parse(text, t);
  ASSERT_TRUE(parsed.ok()) << parsed.error;
  int kept = 0;
  for (unsigned seed = 0; seed < 200; ++seed) {
    std::vector<std::uint8_t> buf(text.begin(), text.end());
    buf.resize(1024);
    std::size_t n = mutate_input(t, buf.data(), text.size(), buf.size(), seed, nullptr);
    expect_canonical(t, buf.data(), n, buf.size(), "text input", static_cast<int>(seed));
    if (HasFatalFailure()) return;
    Program p = decode(t, std::span<const std::uint8_t>(buf.data(), n));
    // One to four edits of the parsed program: most of it is still there.
    int same = 0;
    for (std::size_t c = 0; c < std::min(p.cpus.size(), parsed.program.cpus.size()); ++c)
      for (const Op& op : parsed.program.cpus[c])
        same += std::find(p.cpus[c].begin(), p.cpus[c].end(), op) != p.cpus[c].end();
    if (same >= 4) ++kept;
  }
  EXPECT_GT(kept, 140) << "mutations of a text program keep most of its ops";
}

// Sites drawn for new injections and anchored switches: inside a lock or an
// update about kInsideUpdatePercent of the time, and among the sites the
// target's ops reach.
TEST(MutatorTest, SitesAreWeightedTowardLocksAndUpdates) {
  for (const char* name : {"page_smp", "lock_ops"}) {
    const TargetSpec& t = *target_spec(name);
    int drawn = 0, inside = 0, lock_sites = 0;
    Rng rng(16);
    for (int i = 0; i < 3000; ++i) {
      Program p;
      p.cpus.assign(static_cast<std::size_t>(t.max_cpus), {});
      for (auto& ops : p.cpus) ops.push_back(normalize_op(Op{t.task_ops[0]}, Ctx::kTask));
      Mutation m = mutate_program(t, p, rng, nullptr);
      auto count = [&](int site) {
        ++drawn;
        inside += site_inside_update(site);
        lock_sites += site == static_cast<int>(Site::kSpinWait) || site == static_cast<int>(Site::kLocalLockHeld) ||
                      site == static_cast<int>(Site::kLocalLockRelease) || site == kOpBoundary;
      };
      if (m == Mutation::kAddInjection) count(p.injections[0].site);
      if (m == Mutation::kAddAnchoredSwitch) count(p.anchored[0].site);
    }
    ASSERT_GT(drawn, 100) << name;
    EXPECT_GT(inside * 100, drawn * 65) << name << ": " << inside << " of " << drawn << " inside an update";
    if (std::string(name) == "lock_ops")
      EXPECT_GT(lock_sites * 100, drawn * 90) << "lock_ops reaches the lock sites only";
  }
}

TEST(MutatorTest, AnchoredSwitchesGoBetweenCpusThatHaveOps) {
  const TargetSpec& t = *target_spec("page_smp");
  Rng rng(17);
  int added = 0, between_busy = 0;
  for (int i = 0; i < 3000; ++i) {
    Program p;
    p.cpus.assign(4, {});
    p.cpus[1].push_back(normalize_op(Op{OpKind::kAllocPages}, Ctx::kTask));
    p.cpus[3].push_back(normalize_op(Op{OpKind::kAllocPages}, Ctx::kTask));
    if (mutate_program(t, p, rng, nullptr) != Mutation::kAddAnchoredSwitch) continue;
    ++added;
    const AnchoredSwitch& a = p.anchored[0];
    between_busy += (a.on == 1 && a.cpu == 3) || (a.on == 3 && a.cpu == 1);
  }
  ASSERT_GT(added, 50);
  EXPECT_GT(between_busy * 100, added * 70) << between_busy << " of " << added;
}

// With the input's site hits, new injections and anchored switches land on a
// moment the input reaches (a CPU, site and level it hit, at most as often
// as it hit it); from the site tables alone most of them do not.
TEST(MutatorTest, PlacementsLandWhereTheInputWent) {
  const TargetSpec& t = *target_spec("page_smp");
  Program base;
  base.cpus.assign(2, {});
  base.cpus[0] = {Op{OpKind::kAllocPages, Path::kSpinning, 4, 0, 0}, Op{OpKind::kFreePages, Path::kNolock, 0, 0, 0}};
  base.cpus[1] = {Op{OpKind::kAllocPages, Path::kNolock, 0, 0, 1}, Op{OpKind::kFreePages, Path::kSpinning, 0, 0, 1}};
  for (auto& ops : base.cpus)
    for (Op& op : ops) op = normalize_op(op, Ctx::kTask);
  ASSERT_EQ(validate(t, base), "");
  RunStats stats = run_program(t, base);
  auto landed_share = [&](const SiteMap* sites) {
    Rng rng(18);
    int placed = 0, landed = 0;
    for (int i = 0; i < 4000; ++i) {
      Program p = base;
      Mutation m = mutate_program(t, p, rng, nullptr, sites);
      auto lands = [&](int cpu, int site, Ctx level, int nth) {
        ++placed;
        landed += stats.sites.hits[cpu][site][static_cast<int>(level)] >= nth;
      };
      if (m == Mutation::kAddInjection) {
        const Injection& inj = p.injections[0];
        lands(inj.cpu, inj.site, inj.level, inj.nth);
      }
      if (m == Mutation::kAddAnchoredSwitch) {
        const AnchoredSwitch& a = p.anchored[0];
        lands(a.on, a.site, a.level, a.nth);
      }
    }
    EXPECT_GT(placed, 200);
    return landed * 100 / std::max(placed, 1);
  };
  int observed = landed_share(&stats.sites);
  int blind = landed_share(nullptr);
  EXPECT_GE(observed, kObservedSitePercent - 5) << "with the hits";
  EXPECT_LT(blind, 50) << "from the site tables alone";
}

// Ops added to an interrupt repeat the program's ops (kind and arguments)
// often: the IRQ that races with a kmalloc of 96 bytes is one that
// allocates 96 bytes too.
TEST(MutatorTest, InterruptOpsEchoTheProgram) {
  const TargetSpec& t = *target_spec("slab_ops");
  const std::uint8_t size96 = static_cast<std::uint8_t>(
      std::find(std::begin(kKmallocSizes), std::end(kKmallocSizes), 96u) - std::begin(kKmallocSizes));
  Program base;
  base.cpus[0] = {normalize_op(Op{OpKind::kKmalloc, Path::kSpinning, size96, 0, 0}, Ctx::kTask),
                  normalize_op(Op{OpKind::kKfree, Path::kSpinning, 0, 0, 0}, Ctx::kTask)};
  Rng rng(19);
  int ops = 0, echoes = 0;
  for (int i = 0; i < 4000; ++i) {
    Program p = base;
    if (mutate_program(t, p, rng, nullptr) != Mutation::kAddInjection) continue;
    for (const Op& op : p.injections[0].ops) {
      ++ops;
      echoes += op.kind == OpKind::kKmalloc && op.order == size96;
    }
  }
  ASSERT_GT(ops, 200);
  // Half the ops echo one of two ops, one of them this kmalloc; a random op
  // is a kmalloc of this size about 1 time in 100.
  EXPECT_GT(echoes * 100, ops * 15) << echoes << " of " << ops;
}

// A copy of one CPU's ops on another: the same kinds and arguments; its
// producers take slots nothing else fills and its consumers follow them; a
// consumer of a slot it does not fill keeps that slot; the CPUs it may not
// name are refused.
TEST(MutatorTest, MirroredOpsTouchTheSameThingsWithSlotsOfTheirOwn) {
  const TargetSpec& t = *target_spec("memcg_ops");
  Program base;
  base.cpus[0] = {normalize_op(Op{OpKind::kMemcgSetMax, Path::kSpinning, 1, 0, 0}, Ctx::kTask),
                  normalize_op(Op{OpKind::kMemcgCharge, Path::kSpinning, 1, 2, 3}, Ctx::kTask),
                  normalize_op(Op{OpKind::kKmalloc, Path::kNolock, 2, 0, 5}, Ctx::kTask),
                  normalize_op(Op{OpKind::kMemcgUncharge, Path::kSpinning, 0, 0, 3}, Ctx::kTask),
                  normalize_op(Op{OpKind::kKfree, Path::kSpinning, 0, 0, 6}, Ctx::kTask)};
  ASSERT_EQ(validate(t, base), "");
  int flipped = 0, paths = 0;
  for (std::uint64_t seed = 0; seed < 200; ++seed) {
    Program p = base;
    Rng rng(seed);
    ASSERT_TRUE(mirror_ops(t, p, 0, 1, rng));
    ASSERT_EQ(validate(t, p), "");
    ASSERT_EQ(p.cpus.size(), 2u);
    ASSERT_TRUE(p.cpus[0] == base.cpus[0]) << "the original stays";
    const std::vector<Op>& copy = p.cpus[1];
    ASSERT_EQ(copy.size(), base.cpus[0].size());
    for (std::size_t i = 0; i < copy.size(); ++i) {
      EXPECT_EQ(copy[i].kind, base.cpus[0][i].kind);
      EXPECT_EQ(copy[i].order, base.cpus[0][i].order) << "the same cgroup, size class or order";
      if (op_has_path(copy[i].kind)) {
        ++paths;
        flipped += copy[i].path != base.cpus[0][i].path;
      }
    }
    EXPECT_NE(copy[1].slot, 3) << "the charge fills a slot of its own";
    EXPECT_NE(copy[2].slot, 5);
    EXPECT_NE(copy[1].slot, copy[2].slot);
    EXPECT_EQ(copy[3].slot, copy[1].slot) << "the uncharge follows its charge";
    EXPECT_EQ(copy[4].slot, 6) << "a slot the copy does not fill is kept";
  }
  EXPECT_GT(flipped * 100, paths * 20);
  EXPECT_LT(flipped * 100, paths * 45);

  Program p = base;
  Rng rng(1);
  EXPECT_FALSE(mirror_ops(t, p, 0, 0, rng)) << "onto itself";
  EXPECT_FALSE(mirror_ops(t, p, 0, 2, rng)) << "a CPU that would leave a gap";
  EXPECT_FALSE(mirror_ops(*target_spec("page_ops"), p, 0, 1, rng)) << "page_ops has one CPU";
  p.cpus.emplace_back();
  EXPECT_FALSE(mirror_ops(t, p, 1, 0, rng)) << "from a CPU without ops";
  EXPECT_FALSE(mirror_ops(t, p, 0, 2, rng)) << "memcg_ops has two CPUs";
  EXPECT_TRUE(p.cpus[1].empty()) << "a refusal changes nothing";
}

// The burst of frees: a CPU gives back, nolock, every slot it still holds
// after its last op (not one it freed already, not another CPU's), and the
// burst crosses the pcp's `high`: two order-3 pages freed nolock park a
// batch, which the program without them never does.
TEST(MutatorTest, ReleaseHeldFreesWhatACpuStillHoldsAndCrossesHigh) {
  using test::parse_or_fail;
  using test::site_of;
  const TargetSpec& t = *target_spec("page_smp");
  const Program base = parse_or_fail(R"(# anyctx program v2
target page_smp
cpu 0
  alloc_pages spinning order=3 slot=1
  alloc_pages spinning order=0 slot=2
  alloc_pages spinning order=3 slot=5
  free_pages spinning slot=2
cpu 1
  alloc_pages spinning order=0 slot=3
  drain_local
)");
  Program p = base;
  ASSERT_TRUE(release_held_ops(t, p, 0));
  ASSERT_EQ(validate(t, p), "");
  ASSERT_EQ(p.cpus[0].size(), base.cpus[0].size() + 2);
  EXPECT_TRUE(std::equal(base.cpus[0].begin(), base.cpus[0].end(), p.cpus[0].begin())) << "its ops stay";
  for (int i = 0; i < 2; ++i) {
    const Op& op = p.cpus[0][base.cpus[0].size() + static_cast<std::size_t>(i)];
    EXPECT_EQ(op.kind, OpKind::kFreePages);
    EXPECT_EQ(op.path, Path::kNolock);
    EXPECT_EQ(op.slot, i == 0 ? 1 : 5) << "the slots it holds, in order; not 2 (freed) nor 3 (cpu 1's)";
  }
  EXPECT_TRUE(p.cpus[1] == base.cpus[1]);
  const int park = site_of("PcpPark");
  EXPECT_EQ(run_program(t, base).sites.hits[0][park][0], 0u);
  EXPECT_GT(run_program(t, p).sites.hits[0][park][0], 0u) << "the burst does not park";

  Program again = p;
  EXPECT_FALSE(release_held_ops(t, again, 0)) << "it holds nothing now";
  EXPECT_TRUE(again == p) << "a refusal changes nothing";
  Program empty;
  EXPECT_FALSE(release_held_ops(t, empty, 0));
  EXPECT_FALSE(release_held_ops(t, p, 7)) << "no such CPU";
}

// The remote frees: one release per slot the program fills, of the kind
// that fills it (wherever: another CPU, an injection), in slot order, half
// of them nolock; a target without the release skips it.
TEST(MutatorTest, RemoteFreesReleaseEverySlotTheProgramFills) {
  const TargetSpec& t = *target_spec("memcg_ops");
  Program base;
  base.cpus[0] = {normalize_op(Op{OpKind::kMemcgCharge, Path::kSpinning, 1, 2, 3}, Ctx::kTask),
                  normalize_op(Op{OpKind::kKmalloc, Path::kNolock, 2, 0, 5}, Ctx::kTask),
                  normalize_op(Op{OpKind::kKfree, Path::kSpinning, 0, 0, 5}, Ctx::kTask)};
  Injection inj;
  inj.kind = Ctx::kNmi;
  inj.ops = {normalize_op(Op{OpKind::kAllocPages, Path::kNolock, 1, 0, 1}, Ctx::kNmi)};
  base.injections.push_back(inj);
  ASSERT_EQ(validate(t, base), "");
  int nolock = 0, paths = 0;
  for (std::uint64_t seed = 0; seed < 200; ++seed) {
    Program p = base;
    Rng rng(seed);
    ASSERT_TRUE(remote_free_ops(t, p, 0, 1, rng));
    ASSERT_EQ(validate(t, p), "");
    ASSERT_TRUE(p.cpus[0] == base.cpus[0]) << "the original stays";
    const std::vector<Op>& frees = p.cpus[1];
    ASSERT_EQ(frees.size(), 3u);
    EXPECT_EQ(frees[0].kind, OpKind::kFreePages);
    EXPECT_EQ(frees[0].slot, 1) << "a page an NMI allocated";
    EXPECT_EQ(frees[1].kind, OpKind::kMemcgUncharge);
    EXPECT_EQ(frees[1].slot, 3);
    EXPECT_EQ(frees[2].kind, OpKind::kKfree);
    EXPECT_EQ(frees[2].slot, 5);
    for (const Op& op : frees)
      if (op_has_path(op.kind)) {
        ++paths;
        nolock += op.path == Path::kNolock;
      }
  }
  EXPECT_GT(nolock * 100, paths * 35);
  EXPECT_LT(nolock * 100, paths * 65);

  Program p = base;
  Rng rng(1);
  EXPECT_FALSE(remote_free_ops(t, p, 0, 0, rng)) << "onto itself";
  EXPECT_FALSE(remote_free_ops(t, p, 0, 2, rng)) << "memcg_ops has two CPUs";
  EXPECT_FALSE(remote_free_ops(*target_spec("page_ops"), p, 0, 1, rng)) << "page_ops has one CPU";
  Program nothing;
  nothing.cpus[0] = {normalize_op(Op{OpKind::kDrainAll, Path::kSpinning, 0, 0, 0}, Ctx::kTask)};
  EXPECT_FALSE(remote_free_ops(t, nothing, 0, 1, rng)) << "nothing filled, nothing to free";
  EXPECT_EQ(nothing.cpus.size(), 1u) << "a refusal changes nothing";
}

// Ops that ask a section for a drain, by the section's kind: a limit over
// the subtree of a cgroup the stock's CPU charges and a charge over it; a
// drain_all for a pcp; nothing for a section no request reaches, for a
// target without the ops, or for a CPU that charges only the root.
TEST(MutatorTest, RequestOpsAskTheSectionForADrain) {
  using test::site_of;
  const TargetSpec& memcg = *target_spec("memcg_ops");
  Program base;
  base.cpus[0] = {normalize_op(Op{OpKind::kMemcgCharge, Path::kSpinning, 2, 1, 0}, Ctx::kTask)};  // A/B
  int limits[kCgroups] = {};
  for (std::uint64_t seed = 0; seed < 100; ++seed) {
    Program p = base;
    Rng rng(seed);
    ASSERT_TRUE(request_ops(memcg, p, 0, 1, site_of("StockEdit"), rng));
    ASSERT_EQ(validate(memcg, p), "");
    ASSERT_EQ(p.cpus[1].size(), 2u);
    EXPECT_EQ(p.cpus[1][0].kind, OpKind::kMemcgSetMax);
    EXPECT_EQ(kMemcgLimits[p.cpus[1][0].arg], 1u);
    ++limits[p.cpus[1][0].order];
    EXPECT_EQ(p.cpus[1][1].kind, OpKind::kMemcgCharge);
    EXPECT_EQ(p.cpus[1][1].path, Path::kSpinning);
    EXPECT_EQ(p.cpus[1][1].order, 2) << "the charge names the stock's cgroup";
    EXPECT_GT(p.cpus[1][1].arg, 1) << "over the limit";
    EXPECT_NE(p.cpus[1][1].slot, 0) << "a slot of its own";
  }
  EXPECT_EQ(limits[1], 100) << "the top of A/B's subtree below the root: A";

  // A CPU that charges two subtrees caches either when the request comes:
  // each gets its limit and a charge over it, in slots of their own.
  Program two = base;
  two.cpus[0].push_back(normalize_op(Op{OpKind::kMemcgCharge, Path::kSpinning, 3, 1, 1}, Ctx::kTask));  // C
  two.cpus[0].push_back(normalize_op(Op{OpKind::kMemcgCharge, Path::kSpinning, 1, 1, 2}, Ctx::kTask));  // A
  for (std::uint64_t seed = 0; seed < 100; ++seed) {
    Program p = two;
    Rng rng(seed);
    ASSERT_TRUE(request_ops(memcg, p, 0, 1, site_of("ChargeWalk"), rng));
    ASSERT_EQ(validate(memcg, p), "");
    ASSERT_EQ(p.cpus[1].size(), 4u) << "two subtrees: A's and C's";
    EXPECT_EQ(p.cpus[1][0].kind, OpKind::kMemcgSetMax);
    EXPECT_EQ(p.cpus[1][0].order, 1) << "A first: cpu 0 charged its subtree first";
    EXPECT_TRUE(p.cpus[1][1].order == 1 || p.cpus[1][1].order == 2) << "a cgroup cpu 0 charges under A";
    EXPECT_EQ(p.cpus[1][2].kind, OpKind::kMemcgSetMax);
    EXPECT_EQ(p.cpus[1][2].order, 3);
    EXPECT_EQ(p.cpus[1][3].order, 3);
    EXPECT_NE(p.cpus[1][1].slot, p.cpus[1][3].slot);
    for (int i : {1, 3}) EXPECT_GT(p.cpus[1][i].slot, 2) << "not a slot cpu 0 fills";
  }

  struct Row {
    const char* target;
    const char* site;
    int cgroup;  // of cpu 0's charge
    bool asks;
    OpKind first;
  } rows[] = {
      {"memcg_ops", "StockLocked", 3, true, OpKind::kMemcgSetMax},
      {"memcg_ops", "ChargeWalk", 1, true, OpKind::kMemcgSetMax},
      {"memcg_ops", "StockEdit", 0, false, {}},   // the root has no limit
      {"memcg_ops", "ZoneLocked", 1, false, {}},  // no request reaches zone.lock
      {"page_smp", "PcpLocked", 1, true, OpKind::kDrainAll},
      {"page_smp", "PcpRefill", 1, true, OpKind::kDrainAll},
      {"page_smp", "StockEdit", 1, false, {}},    // page_smp has no memcg ops
      {"lock_ops", "PcpLocked", 1, false, {}},    // nor drain_all
      {"page_smp", "DeferredPush", 1, false, {}},
  };
  for (const Row& r : rows) {
    const TargetSpec& t = *target_spec(r.target);
    Program p;
    p.cpus[0] = {normalize_op(Op{OpKind::kMemcgCharge, Path::kSpinning, static_cast<std::uint8_t>(r.cgroup), 1, 0},
                              Ctx::kTask)};
    if (!op_allowed(t, Ctx::kTask, OpKind::kMemcgCharge))
      p.cpus[0] = {normalize_op(Op{OpKind::kAllocPages, Path::kSpinning, 0, 0, 0}, Ctx::kTask)};
    p.cpus.emplace_back();
    Rng rng(3);
    Program before = p;
    bool asked = request_ops(t, p, 0, 1, site_of(r.site), rng);
    EXPECT_EQ(asked, r.asks) << r.target << " " << r.site;
    if (asked) {
      EXPECT_EQ(p.cpus[1][0].kind, r.first) << r.target << " " << r.site;
      EXPECT_EQ(validate(t, p), "");
    } else {
      EXPECT_TRUE(p == before) << "a refusal changes nothing";
    }
  }
}

}  // namespace
}  // namespace anyctx::harness
