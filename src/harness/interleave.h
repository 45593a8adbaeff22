// harness/interleave.h — what a site says about the state of its frame: a
// lock class just taken or about to be released, or an update half done.
//
// The executor follows each frame's sites to know which lock classes a CPU
// holds and whether an update is in flight (a list edit, a lock-free push
// between its read and its CAS); the fuzzer's feedback keys on that state,
// and the mutator aims injections and switches at the sites where it is
// non-empty. One table, read by both.
//
// Contract: a frame's held set starts empty at each of its op boundaries (the
// library holds no lock across a call); `takes` adds a class, `drops` removes
// it (at the site just before or just after the release), and kHeldMidUpdate
// is set at a mid-update site and cleared at the frame's next site. The set
// is a summary for search, not an oracle: nested local locks share one bit.
// Context: any (constant tables).
#pragma once

#include <cstdint>

#include "anyctx/ctx/site.h"
#include "harness/program.h"

namespace anyctx::harness {

enum HeldClass : std::uint8_t {
  kHeldZone = 1,         // zone.lock
  kHeldPcp = 2,          // a pcp lock
  kHeldStock = 4,        // a memcg stock
  kHeldSlabCpu = 8,      // a CPU slab lock
  kHeldSlabList = 16,    // a cache's list_lock
  kHeldLocal = 32,       // a local lock (the library's, or the program's L)
  kHeldSpin = 64,        // the program's spinlock A or B
  kHeldMidUpdate = 128,  // a list edit or lock-free update half done
};

struct SiteEffect {
  std::uint8_t takes = 0;
  std::uint8_t drops = 0;
  bool mid_update = false;
};

// Return: what reaching `site` (a Site or kOpBoundary) means for its frame.
constexpr SiteEffect site_effect(int site) {
  switch (static_cast<Site>(site)) {
    case Site::kZoneLocked: return {kHeldZone, 0, false};
    case Site::kZoneUnlocked: return {0, kHeldZone, false};
    case Site::kPcpLocked: return {kHeldPcp, 0, false};
    case Site::kPcpUnlocked: return {0, kHeldPcp, false};
    case Site::kStockLocked: return {kHeldStock, 0, false};
    case Site::kStockUnlock: return {0, kHeldStock, false};
    case Site::kSlabCpuLocked: return {kHeldSlabCpu, 0, false};
    case Site::kSlabCpuUnlock: return {0, kHeldSlabCpu, false};
    case Site::kSlabListLocked: return {kHeldSlabList, 0, false};
    case Site::kSlabListUnlock: return {0, kHeldSlabList, false};
    case Site::kLocalLockHeld: return {kHeldLocal, 0, false};
    case Site::kLocalLockRelease: return {0, kHeldLocal, false};
    case Site::kZoneListEdit: case Site::kPcpListEdit: case Site::kPcpRefill: case Site::kPcpBulkFree:
    case Site::kDeferredPush: case Site::kDeferredDrain: case Site::kStockEdit: case Site::kStockDrain:
    case Site::kChargeWalk:
    case Site::kEventPush: case Site::kSlabFreelistEdit: case Site::kSlabListEdit: case Site::kSlabNewSlab:
    case Site::kSlabDeferredPush: case Site::kSlabDeferredDrain: case Site::kPcpDrainServe: case Site::kPcpPark:
    case Site::kDeferredTake:
      return {0, 0, true};
    default: return {};
  }
}

// Return: whether at `site` its frame holds a lock or is inside an update:
// where an interrupt or a switch can meet a half-done state.
constexpr bool site_inside_update(int site) {
  SiteEffect e = site_effect(site);
  return e.takes != 0 || e.mid_update || site == static_cast<int>(Site::kZoneUnlock) ||
         site == static_cast<int>(Site::kPcpUnlock);
}

// Return: whether at `site` its frame has read the head of a list that
// other frames push to and not yet published its change with the CAS
// (a lock-free push's window). A second pusher that lands in the window
// makes the CAS fail: the moment a CAS loop's retry exists for, which
// nothing else reaches (no lock keeps the other CPUs out).
constexpr bool site_in_cas_window(int site) {
  return site == static_cast<int>(Site::kDeferredPush) || site == static_cast<int>(Site::kEventPush) ||
         site == static_cast<int>(Site::kSlabDeferredPush);
}

}  // namespace anyctx::harness
