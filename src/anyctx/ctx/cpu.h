// anyctx/ctx/cpu.h — logical CPUs: threads registered with CpuScope, per-CPU
// data, and the callbacks that drain per-CPU caches when a CPU goes offline.
//
// Contract:
//  - CpuScope registers the calling thread as the lowest free CPU id in
//    0..kMaxCpus-1 for its lifetime; ids are reused after offline. Creating a
//    CpuScope also installs the IRQ/NMI signal handlers (interrupt.h) if they
//    are not installed yet, and gives the thread an alternate signal stack.
//    The stack stays attached while the thread is offline and is handed
//    back when the thread exits: a stack the thread had before (ASan gives
//    every thread one) is current again from then on.
//  - Fatal reports (misuse): more than kMaxCpus CPUs online, a second
//    CpuScope on a thread that already is a CPU, a CpuScope ending inside an
//    interrupt handler, with IRQs masked or inside a local-lock section.
//  - Offline callbacks run on the departing thread, last registered first
//    (as the kernel's CPU-hotplug teardown runs its states in reverse), while
//    it is still that CPU with IRQs masked, so they may drain its per-CPU
//    caches with the ordinary (spinning) entry points: a layer set up on top
//    of another (slab on the page allocator) flushes into it before the
//    lower layer drains its own caches. From the
//    callbacks on, IRQ- and NMI-class signals that reach the thread are
//    dropped (no interrupt can refill a cache after its drain), as they are
//    on a thread that is no CPU (interrupts_dropped() counts them).
//  - PerCpu<T>::this_cpu() on a thread that is not a CPU is a fatal report.
//    Entry points that may spin call require_cpu(); nolock entry points test
//    current_cpu() and return nullptr instead.
// Context: CpuScope, the callback registry and send_* are task-only (they
// take a mutex); current_cpu() and PerCpu access are async-signal-safe.
#pragma once

#include <bit>
#include <cstddef>

#include "anyctx/ctx/config.h"
#include "anyctx/ctx/context.h"

namespace anyctx {

class CpuScope {
 public:
  CpuScope();
  ~CpuScope();
  CpuScope(const CpuScope&) = delete;
  CpuScope& operator=(const CpuScope&) = delete;

  int id() const { return id_; }

 private:
  int id_;
};

// Return: the number of CPUs online now. Context: any (a snapshot).
int cpus_online();

// Return: whether `cpu` is online now. Context: any (a snapshot).
bool cpu_is_online(int cpu);

// Return: how many times a CPU with id `cpu` has come online: a waiter that
// remembers it knows when the id it waits on went away and came back.
// Context: any (a snapshot).
unsigned cpu_online_generation(int cpu);

// Return: 1 + the highest CPU id that has ever been online (0 when none):
// per-CPU data above it has never been touched. (The kernel's nr_cpu_ids.)
// Context: any (a snapshot; it only grows).
int cpu_ids_used();

// Called with the id of the CPU going offline, on that CPU's thread.
using CpuOfflineFn = void (*)(int cpu);

inline constexpr int kMaxOfflineCallbacks = 16;

// Registers `fn` (idempotent for the same fn). Context: task.
// Return: false when kMaxOfflineCallbacks are already registered.
[[nodiscard]] bool cpu_offline_callback_add(CpuOfflineFn fn);

// Context: task. Return: false when `fn` was not registered.
bool cpu_offline_callback_remove(CpuOfflineFn fn);

namespace detail {
[[noreturn]] ANYCTX_COLD void report_not_a_cpu(const char* entry_point);
}  // namespace detail

// Fatal report naming `entry_point` when this thread is not a CPU.
// Context: any. Return: the current CPU id.
inline int require_cpu(const char* entry_point) {
  int cpu = current_cpu();
  if (ANYCTX_UNLIKELY(cpu == kNoCpu)) detail::report_not_a_cpu(entry_point);
  return cpu;
}

// One T per possible CPU, each on its own cache lines. A slot's size is a
// power of two (at least a cache line), so that finding a CPU's slot is a
// shift rather than a multiply: the fast paths do it on every call, and the
// multiply's latency showed on the kmalloc + kfree pair (0.12 ns of 4.2,
// docs/benchmarks.md). Slots of CPUs that never come online are never
// touched, so the padding costs address space, not memory.
template <class T>
class PerCpu {
 public:
  constexpr PerCpu() = default;

  T& this_cpu() { return slots_[require_cpu("PerCpu::this_cpu")].value; }
  T& on(int cpu) { return slots_[cpu].value; }
  const T& on(int cpu) const { return slots_[cpu].value; }

  // Every possible CPU's slot (setting up, resetting).
  template <class Fn>
  void for_each(Fn&& fn) {
    for (int cpu = 0; cpu < kMaxCpus; ++cpu) fn(cpu, slots_[cpu].value);
  }
  // The slots of CPU ids that have ever been online (summing, draining,
  // checking): the others are as for_each() left them.
  template <class Fn>
  void for_each_used(Fn&& fn) {
    for (int cpu = 0, n = cpu_ids_used(); cpu < n; ++cpu) fn(cpu, slots_[cpu].value);
  }

 private:
  static constexpr std::size_t kSlotSize = std::bit_ceil(sizeof(T) > kCacheLine ? sizeof(T) : kCacheLine);
  struct alignas(kSlotSize) Slot {
    T value{};
  };
  static_assert(sizeof(Slot) == kSlotSize);
  Slot slots_[kMaxCpus]{};
};

}  // namespace anyctx
