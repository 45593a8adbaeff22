// anyctx/page/page.h — the arena and its page descriptors.
//
// Contract:
//  - The arena is one mmap of `pages` 4 KiB page frames; every frame has a
//    64-byte Page descriptor in a separate array. A frame's number (pfn) is
//    its index from the arena's start.
//  - page_address / virt_to_page / page_to_pfn / pfn_to_page convert between
//    the three names of a frame. virt_to_page and pfn_to_page return nullptr
//    for addresses and numbers outside the arena.
//  - Descriptor fields belong to the allocator; callers read them only
//    through the functions here and in page_alloc.h.
// Context: any (the conversions are arithmetic).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "anyctx/ctx/config.h"  // the link-time configuration check

namespace anyctx {

inline constexpr unsigned kPageShift = 12;
inline constexpr std::size_t kPageSize = std::size_t{1} << kPageShift;
inline constexpr unsigned kMaxOrder = 10;    // buddy blocks of 1..1024 pages
inline constexpr unsigned kPcpMaxOrder = 3;  // pcp lists and nolock: orders 0..3

// Where a frame is. A block of 2^order frames has its state in its first
// frame (the head); the others are kTail.
enum class PageState : std::uint8_t {
  kTail = 0,   // inside a block whose head is another frame
  kBuddy,      // head of a free block on the zone's buddy lists
  kPcp,        // head of a free block on a CPU's pcp list
  kDeferred,   // head of a free block on the zone's deferred-free stack
  kAllocated,  // head of an allocated block
};

const char* page_state_name(PageState state);

class MemCgroup;

struct alignas(64) Page {
  Page* next = nullptr;           // buddy list links (a pcp list uses next only)
  Page* prev = nullptr;
  Page* deferred_next = nullptr;  // deferred-free stack link
  // The cgroup this block is charged to (kGfpAccount), on its head frame.
  std::atomic<MemCgroup*> memcg{nullptr};
  // Free for the block's owner while it is allocated, on every frame of the
  // block (the slab layer keeps its slab here); the allocator never reads it.
  std::atomic<void*> owner_private{nullptr};
  std::atomic<std::int32_t> refcount{0};
  std::atomic<PageState> state{PageState::kTail};
  std::atomic<std::uint8_t> order{0};  // of the block this frame heads
};
static_assert(sizeof(Page) == 64, "a page descriptor is one cache line (pfn arithmetic is a shift)");

// Return: the first byte of the frame. Context: any.
void* page_address(const Page* page);
// Return: the descriptor of the frame holding `addr`, or nullptr outside the
// arena. Context: any.
Page* virt_to_page(const void* addr);
// Return: the frame number of `page`. Context: any.
std::size_t page_to_pfn(const Page* page);
// Return: the descriptor of frame `pfn`, or nullptr beyond the arena.
Page* pfn_to_page(std::size_t pfn);
// Return: the arena's size in frames (0 before page_allocator_init).
std::size_t arena_pages();

}  // namespace anyctx
