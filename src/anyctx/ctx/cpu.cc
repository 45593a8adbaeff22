#include "anyctx/ctx/cpu.h"

#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <mutex>

#include "anyctx/ctx/interrupt.h"
#include "anyctx/ctx/report.h"

namespace anyctx {
namespace {

std::mutex g_registry_mu;
pthread_t g_cpu_thread[kMaxCpus]{};      // guarded by g_registry_mu
pid_t g_cpu_tid[kMaxCpus]{};             // guarded by g_registry_mu
std::atomic<bool> g_online[kMaxCpus]{};  // written under g_registry_mu
std::atomic<CpuOfflineFn> g_offline_fns[kMaxOfflineCallbacks]{};  // written under g_registry_mu
std::atomic<int> g_ids_used{0};  // written under g_registry_mu
std::atomic<unsigned> g_generation[kMaxCpus]{};  // written under g_registry_mu

std::size_t page_bytes() { return static_cast<std::size_t>(sysconf(_SC_PAGESIZE)); }

// A thread's alternate signal stack (a guard page below it), mapped when
// the thread first comes online. It stays attached while the thread is
// offline, and is handed back when the thread exits: a thread that comes
// online for every program (a fuzzer's) then makes one sigaltstack call per
// CPU scope, a query, where an attach and a detach took 4 % of a fuzzing
// run on a machine where a system call costs microseconds. Handlers that
// run while the thread is offline use it too; it lives as long as the
// thread. A stack the thread had before (under ASan every thread has one,
// and ASan unmaps whatever stack is current when a thread ends) is put back
// at exit if ours is still current; one set while the thread was offline is
// replaced by ours at its next CPU scope and put back at exit the same way.
class ThreadAltstack {
 public:
  ThreadAltstack() = default;
  ThreadAltstack(const ThreadAltstack&) = delete;
  ThreadAltstack& operator=(const ThreadAltstack&) = delete;
  ~ThreadAltstack() { unmap(); }

  // Context: task, the thread coming online as `cpu`.
  void attach(int cpu) {
    const std::size_t guard = page_bytes();
    std::size_t bytes = interrupts_config().altstack_bytes;
    bytes = (bytes + guard - 1) / guard * guard;
    if (map_ != nullptr && map_bytes_ != bytes + guard) unmap();  // interrupts_configure() changed the size
    if (map_ == nullptr) {
      void* map = mmap(nullptr, bytes + guard, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (map == MAP_FAILED) {
        (Report("cpu online") << "cpu " << cpu << ": cannot map a " << bytes
                              << "-byte signal stack, errno " << errno).fatal();
      }
      mprotect(map, guard, PROT_NONE);
      map_ = map;
      map_bytes_ = bytes + guard;
    } else if (is_current()) {
      return;
    }
    stack_t ss{};
    ss.ss_sp = stack_base();
    ss.ss_size = map_bytes_ - guard;
    if (sigaltstack(&ss, &previous_) != 0) {
      (Report("cpu online") << "cpu " << cpu << ": sigaltstack failed, errno " << errno).fatal();
    }
  }

 private:
  void* stack_base() const { return static_cast<char*>(map_) + page_bytes(); }

  bool is_current() const {
    stack_t now{};
    sigaltstack(nullptr, &now);
    return (now.ss_flags & SS_DISABLE) == 0 && now.ss_sp == stack_base();
  }

  // Context: task, no handler running on this thread.
  void unmap() {
    if (map_ == nullptr) return;
    if (is_current()) sigaltstack(&previous_, nullptr);
    munmap(map_, map_bytes_);
    map_ = nullptr;
  }

  void* map_ = nullptr;
  std::size_t map_bytes_ = 0;
  stack_t previous_{};  // what was current when ours was last attached
};

// Task-only (CpuScope); never touched by a handler.
thread_local ThreadAltstack t_altstack;

// ThreadSanitizer keeps a signal context per thread and creates it on first
// use: in the first blocking call the thread makes, or in the handler of the
// first signal that reaches it. When the two race, one context replaces the
// other, and a signal pending in the replaced one is never delivered (clang
// 14's runtime: a drain IRQ lost 1 time in 200 for a thread that went to
// sleep right after it came online; in a plain program whose new thread
// polls, 4 signals of 40,000 lost, none of 40,000 when the thread has
// polled once before it is signalled). One blocking call before the CPU
// goes online creates it before any other CPU can send this one an
// interrupt.
void tsan_signal_context_create() {
  if constexpr (ANYCTX_TSAN) poll(nullptr, 0, 0);
}

[[noreturn]] void report_offline_misuse(int cpu, const char* what) {
  (Report("cpu offline") << "CpuScope of cpu " << cpu << " ends " << what).fatal();
}

}  // namespace

CpuScope::CpuScope() {
  detail::ThreadState& t = detail::this_thread();
  if (t.cpu != kNoCpu) {
    (Report("cpu online") << "this thread is already cpu " << t.cpu
                          << "; one CpuScope per thread").fatal();
  }
  interrupts_install();
  tsan_signal_context_create();
  std::unique_lock<std::mutex> lock(g_registry_mu);
  int id = 0;
  while (id < kMaxCpus && g_online[id].load(std::memory_order_relaxed)) ++id;
  if (id == kMaxCpus) {
    lock.unlock();
    (Report("cpu online") << "more than kMaxCpus = " << kMaxCpus
                          << " logical CPUs: ids 0.." << kMaxCpus - 1
                          << " are all online (raise ANYCTX_MAX_CPUS or end a CpuScope first)")
        .fatal();
  }
  t_altstack.attach(id);
  g_cpu_thread[id] = pthread_self();
  g_cpu_tid[id] = detail::this_thread_tid();
  t.cpu = id;
  if (t.depths.load(std::memory_order_relaxed) == 0) t.task_cpu.store(id, std::memory_order_relaxed);
  if (id >= g_ids_used.load(std::memory_order_relaxed)) g_ids_used.store(id + 1, std::memory_order_release);
  g_generation[id].store(g_generation[id].load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  g_online[id].store(true, std::memory_order_release);
  id_ = id;
}

CpuScope::~CpuScope() {
  detail::ThreadState& t = detail::this_thread();
  if (!in_task()) report_offline_misuse(id_, "inside an interrupt handler");
  if (t.irq_save_depth.load(std::memory_order_relaxed) != 0)
    report_offline_misuse(id_, "with IRQs masked (an irq_save() was never restored)");
  if (t.preempt_count.load(std::memory_order_relaxed) != 0)
    report_offline_misuse(id_, "inside a local-lock section");

  CpuOfflineFn fns[kMaxOfflineCallbacks];
  {
    std::lock_guard<std::mutex> guard(g_registry_mu);
    for (int i = 0; i < kMaxOfflineCallbacks; ++i) fns[i] = g_offline_fns[i].load(std::memory_order_relaxed);
  }
  // From here on no interrupt runs on this CPU: the entries drop what
  // arrives while the callbacks drain its per-CPU caches (an IRQ or NMI in
  // between would refill them after the drain) and while it goes offline,
  // as they drop what reaches a thread that is no CPU. A flag, not a signal
  // mask: two system calls less per CPU scope.
  t.going_offline.store(true, std::memory_order_relaxed);
  detail::barrier_against_interrupts();
  {
    IrqSaveScope masked;
    for (int i = kMaxOfflineCallbacks - 1; i >= 0; --i)  // the last registered first
      if (fns[i] != nullptr) fns[i](id_);
  }
  {
    std::lock_guard<std::mutex> guard(g_registry_mu);
    g_online[id_].store(false, std::memory_order_release);
    t.cpu = kNoCpu;
    t.task_cpu.store(kNoCpu, std::memory_order_relaxed);
    t.irq_pending.store(false, std::memory_order_relaxed);
  }
  detail::barrier_against_interrupts();
  t.going_offline.store(false, std::memory_order_relaxed);
}

int cpus_online() {
  int n = 0;
  for (const auto& online : g_online) n += online.load(std::memory_order_relaxed) ? 1 : 0;
  return n;
}

unsigned cpu_online_generation(int cpu) {
  return cpu >= 0 && cpu < kMaxCpus ? g_generation[cpu].load(std::memory_order_acquire) : 0;
}

int cpu_ids_used() { return g_ids_used.load(std::memory_order_acquire); }

bool cpu_is_online(int cpu) {
  return cpu >= 0 && cpu < kMaxCpus && g_online[cpu].load(std::memory_order_acquire);
}

bool cpu_offline_callback_add(CpuOfflineFn fn) {
  std::lock_guard<std::mutex> guard(g_registry_mu);
  for (auto& slot : g_offline_fns)
    if (slot.load(std::memory_order_relaxed) == fn) return true;
  for (auto& slot : g_offline_fns) {
    if (slot.load(std::memory_order_relaxed) == nullptr) {
      slot.store(fn, std::memory_order_relaxed);
      return true;
    }
  }
  return false;
}

// The registry stays in registration order with no holes: a removal moves
// the later callbacks down one slot.
bool cpu_offline_callback_remove(CpuOfflineFn fn) {
  std::lock_guard<std::mutex> guard(g_registry_mu);
  for (int i = 0; i < kMaxOfflineCallbacks; ++i) {
    if (g_offline_fns[i].load(std::memory_order_relaxed) != fn) continue;
    for (; i + 1 < kMaxOfflineCallbacks; ++i)
      g_offline_fns[i].store(g_offline_fns[i + 1].load(std::memory_order_relaxed), std::memory_order_relaxed);
    g_offline_fns[kMaxOfflineCallbacks - 1].store(nullptr, std::memory_order_relaxed);
    return true;
  }
  return false;
}

bool send_interrupt(int cpu, InterruptKind kind) {
  int signo = detail::interrupt_signal(kind);
  if (cpu == current_cpu() && cpu != kNoCpu) {
    return detail::signal_thread(pthread_self(), detail::this_thread_tid(), signo);
  }
  std::lock_guard<std::mutex> guard(g_registry_mu);
  if (!cpu_is_online(cpu)) return false;
  return detail::signal_thread(g_cpu_thread[cpu], g_cpu_tid[cpu], signo);
}

namespace detail {
void report_not_a_cpu(const char* entry_point) {
  (Report("not a cpu") << entry_point
                       << "() called on a thread that is not a logical CPU "
                          "(create an anyctx::CpuScope on the thread first)")
      .fatal();
}
}  // namespace detail

}  // namespace anyctx
