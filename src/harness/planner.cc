// harness/planner.cc — planned mutations (planner.h).
#include "harness/planner.h"

#include <algorithm>
#include <bit>
#include <map>
#include <utility>

#include "harness/interleave.h"
#include "harness/mutator.h"

namespace anyctx::harness {

namespace {

// A switch is planned at the first kSwitchNths hits of a site and at its
// last: one site is hit once per op that takes its lock, and the op that
// matters is often the second or third.
constexpr int kSwitchNths = 4;

// The moments of tiers 2 and 4: tier 2 switches at each to a copy of the
// switching CPU's ops and to a free of everything live, tier 4 to a drain
// request where the section takes one.
constexpr int kContendedMoments = kPlanPerInput[4];
static_assert(kPlanPerInput[2] == 2 * kContendedMoments);

// Tier 5's moments inside a CAS window: each gets the copy and the free of
// tier 2; the rest of the tier goes to switches there to the other CPUs.
constexpr int kWindowMoments = 4;
constexpr int kWindowSwitches = kPlanPerInput[5] - 2 * kWindowMoments;
static_assert(kWindowSwitches > 0);

// A moment of the run: the nth hit of a site on a CPU at a level.
struct Moment {
  int cpu = 0;
  int site = kOpBoundary;
  Ctx level = Ctx::kTask;
  int nth = 1;
  int rank = 0;  // which go first when there are more than a tier takes
};

// Planned injections name one of the first eight hits of their site.
constexpr int kMaxInjectionNth = 8;

// Whether the interrupted frame itself is at a sharp moment: spinning on a
// lock, holding one, or inside an update.
bool sharp(int site) { return site == static_cast<int>(Site::kSpinWait) || site_inside_update(site); }

// Ranks of tier-0 moments: a sharp one where the CPU resumed inside its
// section (few, and the other CPU has just run there), a sharp one while
// another CPU's section is open (every site the running CPU reaches then),
// the rest.
int rank_of(int site, bool resumed) { return !sharp(site) ? 2 : resumed ? 0 : 1; }

// Keeps at most `cap` of `v`, chosen uniformly by `rng`, in their order.
template <typename T>
void keep_at_most(std::vector<T>& v, std::size_t cap, Rng& rng) {
  while (v.size() > cap) v.erase(v.begin() + static_cast<std::ptrdiff_t>(rng.below(static_cast<std::uint32_t>(v.size()))));
}

// Keeps at most `cap` of `v`: lower ranks (`rank(x)`, 0 first) whole
// while they fit. Within a rank the places (`place(x)`: the CPU, site,
// level and whatever else tells one kind of moment from another) take
// turns: a round keeps one moment of every place, drawn uniformly from that
// place's, and the first round that does not fit is drawn uniformly. A
// uniform draw over moments let the sites hit many times crowd out those
// hit once: in a run that takes its pcp six times and parks once, the pcp
// gave five switch moments and the park's deferred push one, and the
// contention tier's twelve left the push out of 7 plans of 16
// (PlannerTest.ASiteHitOnceIsPlannedBesideSitesHitManyTimes). Return: the
// kept ones, by rank, round and then their order in `v`.
template <typename T, typename Rank, typename Place>
void keep_ranked(std::vector<T>& v, std::size_t cap, Rng& rng, Rank rank, Place place) {
  std::map<std::pair<int, std::uint64_t>, std::vector<std::size_t>> by_place;
  for (std::size_t i = 0; i < v.size(); ++i) by_place[{rank(v[i]), place(v[i])}].push_back(i);
  std::map<std::pair<int, std::size_t>, std::vector<std::size_t>> rounds;
  for (auto& [key, members] : by_place) {
    for (std::size_t i = members.size(); i > 1; --i)
      std::swap(members[i - 1], members[rng.below(static_cast<std::uint32_t>(i))]);
    for (std::size_t r = 0; r < members.size(); ++r) rounds[{key.first, r}].push_back(members[r]);
  }
  std::vector<T> kept;
  for (auto& [key, members] : rounds) {
    if (kept.size() == cap) break;
    std::sort(members.begin(), members.end());
    keep_at_most(members, cap - kept.size(), rng);
    for (std::size_t i : members) kept.push_back(std::move(v[i]));
  }
  v = std::move(kept);
}

// Places of planned moments (keep_ranked): a moment's CPU, site and level,
// with the kind of an injection or the target CPU of a switch.
std::uint64_t place_of(int cpu, int site, Ctx level, int other) {
  return ((static_cast<std::uint64_t>(cpu) * kSiteCount + static_cast<std::uint64_t>(site)) * 4 +
          static_cast<std::uint64_t>(level)) *
             256 +
         static_cast<std::uint64_t>(other);
}

// Ranks of switch moments: inside an update or just after taking a lock
// of a class of its own; a generic local lock last (LocalLockHeld: every
// pcp, stock and CPU slab section hits it too, beside its own site).
int switch_rank(int site) { return site_effect(site).takes == kHeldLocal ? 1 : 0; }

// The first and the last set bit of `bits` among the first `hits` hits, as
// nths (one when they are the same; none when no bit is set).
void first_and_last(std::uint32_t bits, int hits, int cpu, int site, Ctx level, int rank, std::vector<Moment>& out) {
  if (hits < 32) bits &= (1u << hits) - 1;
  if (bits == 0) return;
  int first = std::countr_zero(bits) + 1, last = 32 - std::countl_zero(bits);
  out.push_back({cpu, site, level, first, rank});
  if (last != first) out.push_back({cpu, site, level, last, rank});
}

// An injection of `kind` at `m` running one or two echoes of the program's
// ops (the interrupted CPU's first). Return: false when the program cannot
// take one more or no op of it may run in `kind`'s context.
bool add_echo_injection(const TargetSpec& t, Program& p, const Moment& m, Ctx kind, Rng& rng) {
  if (!t.injections || static_cast<int>(p.injections.size()) >= kMaxInjections) return false;
  Injection inj;
  inj.kind = kind;
  inj.cpu = static_cast<std::uint8_t>(m.cpu);
  inj.site = static_cast<std::uint16_t>(m.site);
  inj.level = m.level;
  inj.nth = static_cast<std::uint8_t>(m.nth);
  int nops = 1 + static_cast<int>(rng.below(2));
  for (int i = 0; i < nops; ++i) {
    Op op;
    if (!echo_op(t, kind, p, m.cpu, rng, op)) return false;
    inj.ops.push_back(op);
  }
  p.injections.push_back(std::move(inj));
  return true;
}

// Whether an IRQ can land at `m`: at task level, IRQs not masked there. An
// IRQ injected inside an irqsave section runs at its unmask, the same moment
// for every hit of the section: planned there, it took the room of the NMIs
// (which land), several times over.
bool irq_lands(const SiteMap& sites, const Moment& m) {
  return m.level == Ctx::kTask && (sites.irqs_off[m.cpu][m.site] >> (m.nth - 1) & 1u) == 0;
}

// Return: how many injections plan_injections() can place at `moments`.
std::size_t injection_points(const SiteMap& sites, const std::vector<Moment>& moments) {
  std::size_t n = 0;
  for (const Moment& m : moments)
    if (m.nth <= kMaxInjectionNth) n += irq_lands(sites, m) ? 2 : 1;
  return n;
}

// Injections at each moment: an NMI, and an IRQ where one lands (irq_lands),
// at most `room`, lower ranks first.
void plan_injections(const TargetSpec& t, const Program& p, const SiteMap& sites, const std::vector<Moment>& moments,
                     int tier, std::size_t room, Rng& rng, std::vector<Planned>& out) {
  struct Point {
    Moment at;
    Ctx kind;
  };
  std::vector<Point> points;
  for (const Moment& m : moments) {
    if (m.nth > kMaxInjectionNth) continue;
    points.push_back({m, Ctx::kNmi});
    if (irq_lands(sites, m)) points.push_back({m, Ctx::kIrq});
  }
  keep_ranked(points, room, rng, [](const Point& x) { return x.at.rank; },
              [](const Point& x) { return place_of(x.at.cpu, x.at.site, x.at.level, static_cast<int>(x.kind)); });
  const int noise = plan_noise(p);
  for (const Point& at : points) {
    Planned c{tier, p, at.at.site, noise};
    if (add_echo_injection(t, c.program, at.at, at.kind, rng)) out.push_back(std::move(c));
  }
}

}  // namespace

int plan_noise(const Program& p) {
  const std::size_t events = p.injections.size() + p.schedule.size() + p.anchored.size();
  return total_ops(p) + 3 * static_cast<int>(events) + (p.fault.nth != 0 || p.fault.percent != 0 ? 10 : 0);
}

Program bare_base(const Program& p) {
  Program bare;
  bare.cpus = p.cpus;
  return bare;
}

std::vector<Planned> plan(const TargetSpec& t, const Program& p, const SiteMap& sites, std::uint64_t seed) {
  Rng rng(seed ^ 0x706c616eull);
  std::vector<Planned> out;
  const int ncpus = static_cast<int>(p.cpus.size());
  auto hits = [&](int c, int site, int l) { return static_cast<int>(sites.hits[c][site][l]); };

  // Tier 0: interrupts where another CPU's section is open, or where this
  // CPU resumed inside one of its own.
  if (ncpus > 1) {
    std::vector<Moment> moments;
    for (int c = 0; c < ncpus; ++c)
      for (int site = 0; site < kInjectionSites; ++site)
        for (int l = 0; l < 2; ++l) {  // injections land at task or irq level
          const std::uint32_t resumed = sites.resumed_inside[c][site][l];
          first_and_last(resumed, hits(c, site, l), c, site, static_cast<Ctx>(l), rank_of(site, true), moments);
          first_and_last(sites.held_elsewhere[c][site][l] & ~resumed, hits(c, site, l), c, site, static_cast<Ctx>(l),
                         rank_of(site, false), moments);
        }
    plan_injections(t, p, sites, moments, 0, kPlanPerInput[0], rng, out);
  }

  // Tier 1: a switch where a CPU has just taken a lock or is mid-update.
  // Tier 2: the same switch to a copy of that CPU's ops on another CPU (a
  // new one when the target allows), which then meets the section open, and
  // to ops there that ask that section for a drain (tier 4). Tier 5: the
  // switches of both at moments inside a CAS window.
  if ((ncpus > 1 || t.max_cpus > 1) && !p.pct.on() && static_cast<int>(p.anchored.size()) < kMaxAnchoredSwitches) {
    std::vector<AnchoredSwitch> switches, contended, window_switches, window_moments;
    for (int on = 0; on < ncpus; ++on) {
      if (p.cpus[on].empty()) continue;
      for (int site = 0; site < kSiteCount; ++site) {
        SiteEffect e = site_effect(site);
        if (e.takes == 0 && !e.mid_update) continue;
        const bool window = site_in_cas_window(site);
        for (int l = 0; l < 3; ++l) {
          int n = std::min(hits(on, site, l), kMaxAnchorNth);
          for (int nth = 1; nth <= n; nth = nth < kSwitchNths || nth == n ? nth + 1 : n) {
            AnchoredSwitch a{static_cast<std::uint8_t>(on), static_cast<std::uint16_t>(site), static_cast<Ctx>(l),
                             static_cast<std::uint8_t>(nth), 0};
            for (int to = 0; to < ncpus; ++to)
              if (to != on && !p.cpus[to].empty()) {
                a.cpu = static_cast<std::uint8_t>(to);
                (window ? window_switches : switches).push_back(a);
              }
            (window ? window_moments : contended).push_back(a);  // .cpu: the copy's, chosen below
          }
        }
      }
    }
    const int noise = plan_noise(p);
    auto rank = [](const AnchoredSwitch& a) { return switch_rank(a.site); };
    auto place = [](const AnchoredSwitch& a) { return place_of(a.on, a.site, a.level, a.cpu); };
    // A CPU that pushes on the same list in its own run goes first: it is
    // the second pusher.
    auto pushes_too = [&](const AnchoredSwitch& a) {
      return hits(a.cpu, a.site, 0) + hits(a.cpu, a.site, 1) + hits(a.cpu, a.site, 2) > 0 ? 0 : 1;
    };
    keep_ranked(switches, static_cast<std::size_t>(kPlanPerInput[1]), rng, rank, place);
    keep_ranked(window_switches, static_cast<std::size_t>(kWindowSwitches), rng, pushes_too, place);
    for (int tier : {1, 5})
      for (const AnchoredSwitch& a : tier == 1 ? switches : window_switches) {
        Planned c{tier, p, a.site, noise};
        c.program.anchored.push_back(a);
        out.push_back(std::move(c));
      }
    // Each moment three times: a copy of the CPU's ops on the other CPU and
    // a free there of everything live (remote frees into the section), at
    // tier 2; where the section is one a drain request reaches, a request,
    // at tier 4. A moment inside a CAS window: the copy and the free, at
    // tier 5.
    keep_ranked(contended, static_cast<std::size_t>(kContendedMoments), rng, rank, place);
    keep_ranked(window_moments, static_cast<std::size_t>(kWindowMoments), rng, rank, place);
    for (std::vector<AnchoredSwitch>* moments : {&contended, &window_moments})
      for (AnchoredSwitch a : *moments) {
        int to = ncpus < t.max_cpus ? ncpus : static_cast<int>(rng.below(static_cast<std::uint32_t>(ncpus - 1)));
        if (to < ncpus && to >= a.on) ++to;
        a.cpu = static_cast<std::uint8_t>(to);
        const int copy_tier = moments == &window_moments ? 5 : 2;
        // The candidate of `tier` that `edit` makes of p, switched at `a`.
        auto contend = [&](int tier, auto edit) {
          Planned c{tier, p, a.site, noise};
          if (!edit(c.program)) return;
          c.program.anchored.push_back(a);
          out.push_back(std::move(c));
        };
        contend(copy_tier, [&](Program& q) { return mirror_ops(t, q, a.on, to, rng); });
        contend(copy_tier, [&](Program& q) { return remote_free_ops(t, q, a.on, to, rng); });
        if (copy_tier == 2) contend(4, [&](Program& q) { return request_ops(t, q, a.on, to, a.site, rng); });
      }
  }

  // Tier 3: an interrupt inside a lock or an update on its own CPU, at any
  // hit an injection can name: which op's edit an interrupt meets decides
  // what it finds there (an object the earlier ops left allocated for it to
  // free, or none yet).
  {
    std::vector<Moment> moments;
    for (int c = 0; c < ncpus; ++c)
      for (int site = 0; site < kSiteCount; ++site) {
        if (!site_inside_update(site)) continue;
        for (int l = 0; l < 2; ++l)
          for (int nth = 1; nth <= std::min(hits(c, site, l), kMaxInjectionNth); ++nth)
            moments.push_back({c, site, static_cast<Ctx>(l), nth, rank_of(site, false)});
      }
    plan_injections(t, p, sites, moments, 3, kPlanPerInput[3], rng, out);
  }
  return out;
}

std::vector<Planned> plan_followup(const TargetSpec& t, const Program& p, const SiteMap& sites,
                                   std::uint64_t seed) {
  std::vector<Planned> out;
  if (p.anchored.empty()) return out;
  Rng rng(seed ^ 0x666f6c6cull);
  const AnchoredSwitch& a = p.anchored.back();
  // Half where the switched CPU resumed inside its section (sharp moments
  // first), half where the CPU it ran met that section open (waiting for
  // its lock first, then other sharp moments); one side's unused room goes
  // to the other.
  std::vector<Moment> resumed, met;
  for (int site = 0; site < kInjectionSites; ++site)
    for (int l = 0; l < 2; ++l) {
      first_and_last(sites.resumed_inside[a.on][site][l], sites.hits[a.on][site][l], a.on, site, static_cast<Ctx>(l),
                     sharp(site) ? 0 : 1, resumed);
      first_and_last(sites.held_elsewhere[a.cpu][site][l], sites.hits[a.cpu][site][l], a.cpu, site,
                     static_cast<Ctx>(l), site == static_cast<int>(Site::kSpinWait) ? 0 : sharp(site) ? 1 : 2, met);
    }
  const std::size_t met_points = injection_points(sites, met);
  const std::size_t room = std::max(kFollowUps / 2, kFollowUps - std::min(met_points, kFollowUps));
  plan_injections(t, p, sites, resumed, 0, room, rng, out);
  plan_injections(t, p, sites, met, 0, kFollowUps - out.size(), rng, out);
  return out;
}

void PlanQueue::add(std::vector<Planned> candidates, int chain) {
  const int at = chain > 0 && chain < kPlanChainLevels ? chain : 0;
  auto& level = queues_[static_cast<std::size_t>(at)];
  for (Planned& c : candidates) {
    TierQueue& q = level[static_cast<std::size_t>(c.tier)];
    if (q.size >= kPlanQueueDepth) {
      auto longest = std::max_element(q.by_site.begin(), q.by_site.end(),
                                      [](const auto& a, const auto& b) { return a.size() < b.size(); });
      if (at == 0) {
        longest->erase(longest->begin() + static_cast<std::ptrdiff_t>(draw_by_noise(*longest, Noisiness::kMost)));
      } else {
        longest->pop_front();
      }
      --q.size;
    }
    const int noise = c.base_noise >= 0 ? c.base_noise : plan_noise(c.program);
    q.by_site[static_cast<std::size_t>(c.site)].push_back({std::move(c.program), noise});
    ++q.size;
  }
}

bool PlanQueue::take(Program& out) {
  static_assert(kPlanChainLevels == 2, "the levels take turns: follow-ups, then the inputs' own plans");
  for (int k = 0; k < kPlanChainLevels; ++k) {
    const int chain = follow_up_turn_ ? 1 - k : k;
    for (int i = 0; i < kPlanTiers; ++i) {
      int tier = chain == 0 ? (next_tier_ + i) % kPlanTiers : i;
      TierQueue& q = queues_[static_cast<std::size_t>(chain)][static_cast<std::size_t>(tier)];
      if (q.size == 0) continue;
      int site = q.next_site;
      while (q.by_site[static_cast<std::size_t>(site)].empty()) site = (site + 1) % kInjectionSites;
      std::deque<Queued>& list = q.by_site[static_cast<std::size_t>(site)];
      if (chain == 0) std::swap(list[draw_by_noise(list, Noisiness::kLeast)], list.back());
      out = std::move(list.back().program);
      list.pop_back();
      --q.size;
      q.next_site = (site + 1) % kInjectionSites;
      if (chain == 0) next_tier_ = (tier + 1) % kPlanTiers;
      taken_chain_ = chain;
      taken_tier_ = tier;
      follow_up_turn_ = chain == 0;
      return true;
    }
  }
  return false;
}

std::size_t PlanQueue::draw_by_noise(const std::deque<Queued>& list, Noisiness which) {
  const int sign = which == Noisiness::kMost ? 1 : -1;  // the draw with the greatest sign * noise
  std::size_t pick = rng_.below(static_cast<std::uint32_t>(list.size()));
  int best = sign * list[pick].base_noise;
  for (int d = 1; d < kNoiseDraws; ++d) {
    const std::size_t i = rng_.below(static_cast<std::uint32_t>(list.size()));
    if (const int n = sign * list[i].base_noise; n > best) pick = i, best = n;
  }
  return pick;
}

std::size_t PlanQueue::size() const {
  std::size_t n = 0;
  for (const auto& level : queues_)
    for (const TierQueue& q : level) n += q.size;
  return n;
}

void PlanQueue::wrote(const std::uint8_t* data, std::size_t size) {
  written_.assign(data, data + size);
  written_chain_ = taken_chain_;
  written_tier_ = taken_tier_;
}

bool PlanQueue::is_written(const std::uint8_t* data, std::size_t size) const {
  return written_chain_ >= 0 && size == written_.size() && std::equal(written_.begin(), written_.end(), data);
}

int PlanQueue::chain_of(const std::uint8_t* data, std::size_t size) const {
  return is_written(data, size) ? written_chain_ : -1;
}

int PlanQueue::tier_of(const std::uint8_t* data, std::size_t size) const {
  return is_written(data, size) ? written_tier_ : -1;
}

}  // namespace anyctx::harness
