// slab_check_invariants(): the slab layer's oracle. Run quiesced; it walks
// every list the way the allocator would (decoding and validating links)
// and accounts for every object of every live slab.
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "anyctx/slab/slab.h"
#include "anyctx/slab/slab_internal.h"

namespace anyctx {
namespace {

using namespace detail;

// Where a free object was found.
enum class Where : std::uint8_t { kNowhere = 0, kSlabFreelist, kCpuFreelist, kDeferred };

const char* where_name(Where w) {
  switch (w) {
    case Where::kNowhere: return "no list";
    case Where::kSlabFreelist: return "its slab's freelist";
    case Where::kCpuFreelist: return "a CPU freelist";
    case Where::kDeferred: return "a deferred list";
  }
  return "?";
}

// Names a list in a report. Text is built only when something fails: the
// check runs after every harness op, over every CPU of every cache.
struct ListName {
  enum Kind : std::uint8_t { kCpuDeferred, kSharedDeferred, kCpuFreelist, kCpuInterruptFreelist, kSlabFreelist };
  Kind kind;
  int cpu = -1;
  const KmemCache* cache = nullptr;
  const Slab* slab = nullptr;
};

class SlabChecker {
 public:
  InvariantResult run() ANYCTX_NO_TSA {
    sum_stats();
    find_slabs();
    for (int cpu = 0, used = cpu_ids_used(); cpu < used && ok(); ++cpu)
      walk_deferred(g_cpu_slabs.on(cpu).deferred, ListName{ListName::kCpuDeferred, cpu});
    if (ok()) walk_deferred(g_shared_deferred, ListName{ListName::kSharedDeferred});
    std::uint64_t pending = 0;
    for (int i = 0; i < kKmallocCaches; ++i)
      pending += total(i, kSlabStatDeferredPushed) - total(i, kSlabStatDeferredFreed);
    if (ok() && deferred_found_ != pending)
      fail("deferred lists hold " + std::to_string(deferred_found_) + " objects, the counters say " +
           std::to_string(pending) + " are pending");
    for (int i = 0; i < kKmallocCaches && ok(); ++i) check_cache(g_caches[i]);
    return result_;
  }

 private:
  struct Found {
    Slab* slab;
    Where* where;  // per object: the slab's run of where_
  };

  // The statistics of every cache, summed once over the shared slots and
  // every CPU's (as slab_stat_sum does one at a time).
  void sum_stats() {
    auto add = [&](const SlabStatSlots& slots) {
      for (int ctx = 0; ctx < 3; ++ctx)
        for (int c = 0; c < kKmallocCaches; ++c)
          for (int st = 0; st < kSlabStatCount; ++st) totals_[c][st] += slots.v[ctx][c][st].load(std::memory_order_relaxed);
    };
    add(g_shared_stats);
    g_stats.for_each_used([&](int, const SlabStatSlots& slots) { add(slots); });
    for (int c = 0; c < kKmallocCaches; ++c)
      for (int st : {kSlabStatAllocs, kSlabStatFrees}) totals_[c][st] += cpu_slab_count(c, st);
  }
  std::uint64_t total(int cache, int stat) const { return totals_[cache][stat]; }

  bool ok() const { return result_.ok; }
  // fail(), for a function that returns whether all was well.
  bool failed(std::string what) {
    fail(std::move(what));
    return false;
  }
  void fail(std::string what) {
    if (result_.ok) {
      result_.ok = false;
      result_.what = std::move(what);
    }
  }
  static std::string slab_str(const Slab* s) {
    return std::string(s->cache->name) + ": slab pfn " + std::to_string(slab_pfn(s));
  }
  static std::string str(const ListName& l) {
    switch (l.kind) {
      case ListName::kCpuDeferred: return "cpu " + std::to_string(l.cpu) + " deferred list";
      case ListName::kSharedDeferred: return "the shared deferred list";
      case ListName::kCpuFreelist: return "cpu " + std::to_string(l.cpu) + "'s " + l.cache->name + " CPU freelist";
      case ListName::kCpuInterruptFreelist:
        return "cpu " + std::to_string(l.cpu) + "'s " + l.cache->name + " CPU freelist of interrupt frames";
      case ListName::kSlabFreelist: return slab_str(l.slab) + " freelist";
    }
    return "?";
  }
  static std::string hex(std::uintptr_t v) {
    char buf[24];
    std::snprintf(buf, sizeof buf, "0x%lx", static_cast<unsigned long>(v));
    return buf;
  }

  // Every live slab: its frames point at it, its page block is allocated
  // with the cache's order.
  void find_slabs() {
    index_.assign(g_slab_table_entries, -1);
    std::size_t objects = 0;
    for (std::size_t pfn = 0; pfn < g_slab_table_entries; ++pfn)
      if (g_slab_table[pfn].cache != nullptr) objects += g_slab_table[pfn].objects;
    where_.assign(objects, Where::kNowhere);
    objects = 0;
    for (std::size_t pfn = 0; pfn < g_slab_table_entries && ok(); ++pfn) {
      Slab* s = &g_slab_table[pfn];
      if (s->cache == nullptr) continue;
      const KmemCache& c = *s->cache;
      const Page* head = pfn_to_page(pfn);
      if (head->state.load() != PageState::kAllocated || head->order.load() != c.order)
        return fail(slab_str(s) + ": its page block is " + page_state_name(head->state.load()) + " of order " +
                    std::to_string(head->order.load()) + ", not allocated of order " + std::to_string(c.order));
      if (s->base != page_address(head)) return fail(slab_str(s) + ": base is not its block's address");
      for (std::size_t i = 0; i < (std::size_t{1} << c.order); ++i)
        if (pfn_to_page(pfn + i)->owner_private.load() != s)
          return fail(slab_str(s) + ": frame " + std::to_string(pfn + i) + " does not point at the slab");
      index_[pfn] = static_cast<int>(found_.size());
      found_.push_back(Found{s, where_.data() + objects});
      objects += s->objects;
    }
  }

  // Records `obj` as found free on `where`; `expect` is the slab the list
  // belongs to (nullptr for a deferred list, whose objects come from any
  // slab: found through their page). Return: false after a failure.
  bool claim(Slab* expect, std::uintptr_t obj, Where where, const ListName& list) {
    Slab* s = expect != nullptr ? expect : slab_of(reinterpret_cast<void*>(obj));
    Found* f = s != nullptr ? found_of(s) : nullptr;
    if (f == nullptr || !is_object_of(s, obj)) {
      fail(str(list) + ": " + hex(obj) + " is not an object of " + (expect ? slab_str(expect) : std::string("a live slab")));
      return false;
    }
    unsigned i = object_index(s, obj);
    if (f->where[i] != Where::kNowhere) {
      fail(slab_str(s) + ": free object " + std::to_string(i) + " is on " + str(list) + " and already on " +
           where_name(f->where[i]));
      return false;
    }
    if (kSlabExactFree && (s->allocated[i >> 6].load() & (std::uint64_t{1} << (i & 63)))) {
      fail(slab_str(s) + ": object " + std::to_string(i) + " is marked allocated but is on " + str(list));
      return false;
    }
    f->where[i] = where;
    return true;
  }

  // Return: what find_slabs() recorded for `s`, or nullptr when `s` is not a
  // live slab of the table.
  Found* found_of(const Slab* s) {
    std::uintptr_t off = reinterpret_cast<std::uintptr_t>(s) - reinterpret_cast<std::uintptr_t>(g_slab_table);
    if (off >= g_slab_table_entries * sizeof(Slab) || off % sizeof(Slab) != 0) return nullptr;
    int at = index_[off / sizeof(Slab)];
    return at < 0 ? nullptr : &found_[static_cast<std::size_t>(at)];
  }

  // Return: whether `s` is frozen on `cpu`: the CPU slab of its cache in
  // either set, or on that CpuSlab's retired chain.
  static bool frozen_on(const Slab* s, int cpu) {
    for (const auto& set : g_cpu_slabs.on(cpu).sets) {
      const CpuSlab& cs = set[s->cache->index];
      if (cs.slab == s) return true;
      for (const Slab* r = cs.retired; r != nullptr; r = r->next)
        if (r == s) return true;
    }
    return false;
  }

  // One CpuSlab of `cpu` for cache `c`, named `list`. Return: false after a
  // failure.
  bool check_cpu_slab(const KmemCache& c, int cpu, CpuSlab& cs, const ListName& list) {
    std::size_t retired = 0;
    for (Slab* r = cs.retired; r != nullptr; r = r->next) {
      if (++retired > found_.size()) return failed(str(list) + ": retired chain longer than the live slabs (a cycle)");
      if (r->cache != &c) return failed(str(list) + ": retired chain holds a slab that is not a live slab of the cache");
      if (r->cpu != cpu || r->on_partial || r == cs.slab)
        return failed(slab_str(r) + ": on cpu " + std::to_string(cpu) + "'s retired chain but not frozen there alone");
    }
    if (cs.secret != c.secret || cs.object_mask != c.object_mask)
      return failed(str(list) + ": its copies of the cache's secret and object mask differ from the cache's");
    if (cs.base != (cs.slab != nullptr ? reinterpret_cast<std::uintptr_t>(cs.slab->base) : 0))
      return failed(str(list) + ": its copy of the slab's base differs from the slab's");
    if (cs.slab == nullptr) {
      if (cs.free.head != 0 || cpu_free_count(cs) != 0) return failed(str(list) + " is not empty but cpu has no slab");
      return true;
    }
    if (cs.slab->cache != &c) return failed(str(list) + ": its slab is not a live slab of the cache");
    if (cs.slab->cpu != cpu)
      return failed(slab_str(cs.slab) + ": cpu " + std::to_string(cpu) + "'s slab, but the slab says cpu " +
                  std::to_string(cs.slab->cpu));
    if (cs.slab->corrupted) return true;
    return walk_freelist(cs.slab, cpu_freelist(cs), Where::kCpuFreelist, list) >= 0;
  }

  // Walks a freelist of slab `s`. Return: its length, or -1 after a failure.
  long walk_freelist(Slab* s, const Freelist& fl, Where where, const ListName& list) {
    long n = 0;
    for (std::uintptr_t obj = fl.head; obj != 0;) {
      if (n > s->objects) {
        fail(str(list) + " is longer than the slab (a cycle)");
        return -1;
      }
      if (!claim(s, obj, where, list)) return -1;
      ++n;
      obj = decode_link(s->cache->secret, load_link_word(obj), obj);
    }
    if (n != static_cast<long>(fl.count)) {
      fail(str(list) + " holds " + std::to_string(n) + " objects, its count says " + std::to_string(fl.count));
      return -1;
    }
    return n;
  }

  void walk_deferred(const std::atomic<std::uintptr_t>& head, const ListName& list) {
    std::size_t limit = 0;
    for (const Found& f : found_) limit += f.slab->objects;
    for (std::uintptr_t obj = head.load(std::memory_order_acquire); obj != 0 && ok();) {
      if (deferred_found_ > limit) return fail(str(list) + " is longer than all slabs together (a cycle)");
      if (!claim(nullptr, obj, Where::kDeferred, list)) return;
      ++deferred_found_;
      obj = decode_link(g_deferred_secret, load_link_word(obj), obj);
    }
  }

  void check_cache(KmemCache& c) ANYCTX_NO_TSA {
    IrqFlags flags = c.list_lock.lock_irqsave();
    check_cache_locked(c);
    c.list_lock.unlock_irqrestore(flags);
  }

  void check_cache_locked(KmemCache& c) {
    const char* name = c.name;
    // The partial list.
    std::size_t partial = 0;
    if (c.partial != nullptr) {
      Slab* s = c.partial;
      do {
        if (++partial > found_.size()) return fail(std::string(name) + ": partial list is longer than the live slabs (a cycle)");
        if (s->cache != &c) return fail(std::string(name) + ": partial list holds a slab that is not a live slab of the cache");
        if (!s->on_partial) return fail(slab_str(s) + ": on the partial list but not marked so");
        if (s->cpu != kNoCpu) return fail(slab_str(s) + ": on the partial list and cpu " + std::to_string(s->cpu) + "'s slab");
        if (s->next->prev != s) return fail(slab_str(s) + ": partial list links broken");
        s = s->next;
      } while (s != c.partial);
    }
    if (partial != c.nr_partial)
      return fail(std::string(name) + ": partial list holds " + std::to_string(partial) + " slabs, nr_partial says " +
                  std::to_string(c.nr_partial));

    // CPU slabs and their freelists, of both sets.
    for (int cpu = 0, used = cpu_ids_used(); cpu < used; ++cpu) {
      CpuSlabs& sets = g_cpu_slabs.on(cpu);
      Slab* task_slab = sets.sets[kTaskCpuSlabs][c.index].slab;
      if (task_slab != nullptr && task_slab == sets.sets[kInterruptCpuSlabs][c.index].slab)
        return fail(slab_str(task_slab) + ": the CPU slab of both of cpu " + std::to_string(cpu) + "'s sets");
      for (int set = 0; set < kCpuSlabSets; ++set) {
        auto kind = set == kTaskCpuSlabs ? ListName::kCpuFreelist : ListName::kCpuInterruptFreelist;
        if (!check_cpu_slab(c, cpu, sets.sets[set][c.index], ListName{kind, cpu, &c})) return;
      }
    }

    // Every live slab of the cache.
    std::uint64_t slabs = 0, in_use = 0;
    for (Found& f : found_) {
      Slab* s = f.slab;
      if (s->cache != &c) continue;
      ++slabs;
      if (kSlabExactFree) {
        for (unsigned w = 0; w < kSlabBitmapWords; ++w) in_use += std::popcount(s->allocated[w].load());
      }
      if (s->objects != c.objects) return fail(slab_str(s) + ": object count differs from the cache's");
      if (s->cache_index != c.index || s->object_mask != c.object_mask)
        return fail(slab_str(s) + ": its copies of the cache's index and object mask differ from the cache's");
      if (s->cpu != kNoCpu && !frozen_on(s, s->cpu))
        return fail(slab_str(s) + ": says it is cpu " + std::to_string(s->cpu) + "'s slab, which it is not");
      if (s->corrupted) continue;  // reported when it happened; its objects are leaked
      long n = walk_freelist(s, s->free, Where::kSlabFreelist, ListName{ListName::kSlabFreelist, -1, &c, s});
      if (n < 0) return;
      if (s->cpu == kNoCpu) {
        bool should_be_partial = n > 0;
        if (should_be_partial != (s->on_partial != 0))
          return fail(slab_str(s) + (s->on_partial ? ": full but on the partial list" : ": has free objects but is on no list"));
      } else if (s->on_partial) {
        return fail(slab_str(s) + ": a CPU slab on the partial list");
      }
      for (unsigned i = 0; i < s->objects; ++i) {
        if (!kSlabExactFree) {  // no bits: an object on no list counts as allocated
          in_use += f.where[i] == Where::kNowhere;
          continue;
        }
        bool allocated = s->allocated[i >> 6].load() & (std::uint64_t{1} << (i & 63));
        if (!allocated && f.where[i] == Where::kNowhere)
          return fail(slab_str(s) + ": object " + std::to_string(i) + " is free but on no freelist or deferred list (lost)");
      }
    }
    std::uint64_t live = total(c.index, kSlabStatSlabsAllocated) - total(c.index, kSlabStatSlabsFreed);
    if (slabs != live)
      return fail(std::string(name) + ": " + std::to_string(slabs) + " live slabs, the counters say " + std::to_string(live));
    std::uint64_t counted = total(c.index, kSlabStatAllocs) - total(c.index, kSlabStatFrees);
    if (in_use != counted)
      return fail(std::string(name) + ": " + std::to_string(in_use) + " objects marked allocated, the counters say " +
                  std::to_string(counted) + " are in use (allocs - frees)");
  }

  InvariantResult result_;
  std::vector<int> index_;     // pfn -> found_ index, -1 when not a slab head
  std::vector<Found> found_;
  std::vector<Where> where_;  // every live slab's objects, slab after slab
  std::uint64_t totals_[kKmallocCaches][kSlabStatCount] = {};
  std::uint64_t deferred_found_ = 0;
};

}  // namespace

InvariantResult slab_check_invariants() {
  if (g_slab_table == nullptr) return InvariantResult{false, "the slab layer is not initialised"};
  return SlabChecker().run();
}

}  // namespace anyctx
