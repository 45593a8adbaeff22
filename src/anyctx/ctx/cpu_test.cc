// Logical CPUs: registration, id reuse, offline callbacks, misuse reports.
#include "anyctx/ctx/cpu.h"

#include <gtest/gtest.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "anyctx/ctx/interrupt.h"

namespace anyctx {
namespace {

class CpuTest : public ::testing::Test {
 protected:
  void SetUp() override { GTEST_FLAG_SET(death_test_style, "threadsafe"); }
};

TEST_F(CpuTest, ThreadIsNotACpuUntilRegistered) {
  EXPECT_EQ(current_cpu(), kNoCpu);
  {
    CpuScope cpu;
    EXPECT_EQ(current_cpu(), cpu.id());
    EXPECT_TRUE(cpu_is_online(cpu.id()));
    EXPECT_GE(cpus_online(), 1);
  }
  EXPECT_EQ(current_cpu(), kNoCpu);
}

TEST_F(CpuTest, IdsAreTheLowestFreeAndReusedAfterOffline) {
  CpuScope first;
  EXPECT_EQ(first.id(), 0);
  int second_id = -1;
  std::thread([&] {
    CpuScope second;
    second_id = second.id();
  }).join();
  EXPECT_EQ(second_id, 1);
  EXPECT_FALSE(cpu_is_online(1));
  std::thread([&] {
    CpuScope again;
    second_id = again.id();
  }).join();
  EXPECT_EQ(second_id, 1) << "id 1 went offline, so it is reused";
}

TEST_F(CpuTest, ManyThreadsRegisterAndLeaveWithUniqueIds) {
  constexpr int kThreads = 16;
  constexpr int kRounds = 200;
  std::atomic<int> holder[kMaxCpus]{};
  std::atomic<int> collisions{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int r = 0; r < kRounds; ++r) {
        CpuScope cpu;
        int expected = 0;
        if (cpu.id() < 0 || cpu.id() >= kMaxCpus || !holder[cpu.id()].compare_exchange_strong(expected, t + 1))
          collisions.fetch_add(1);
        std::this_thread::yield();
        holder[cpu.id()].store(0);
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(collisions.load(), 0);
  EXPECT_EQ(cpus_online(), 0);
}

std::atomic<int> g_offline_calls{0};
std::atomic<int> g_offline_cpu_seen{-2};
std::atomic<bool> g_offline_masked{false};

void record_offline(int cpu) {
  g_offline_calls.fetch_add(1);
  g_offline_cpu_seen.store(cpu == current_cpu() ? cpu : -3);
  g_offline_masked.store(irqs_disabled());
}

TEST_F(CpuTest, OfflineCallbacksRunOnTheDepartingCpu) {
  ASSERT_TRUE(cpu_offline_callback_add(record_offline));
  ASSERT_TRUE(cpu_offline_callback_add(record_offline)) << "adding twice is idempotent";
  int id = -1;
  std::thread([&] {
    CpuScope cpu;
    id = cpu.id();
  }).join();
  EXPECT_EQ(g_offline_calls.load(), 1);
  EXPECT_EQ(g_offline_cpu_seen.load(), id);
  EXPECT_TRUE(g_offline_masked.load()) << "callbacks run with IRQs masked";
  EXPECT_TRUE(cpu_offline_callback_remove(record_offline));
  EXPECT_FALSE(cpu_offline_callback_remove(record_offline));
  std::thread([] { CpuScope cpu; }).join();
  EXPECT_EQ(g_offline_calls.load(), 1);
}

void noop_a(int) {}

// Teardown runs in reverse: the layer registered last (built on the ones
// before it) flushes into them before they drain. A removal keeps the order
// of the rest, and a callback added after it runs first.
char g_order[4];
int g_order_n = 0;
void order_a(int) { g_order[g_order_n++] = 'a'; }
void order_b(int) { g_order[g_order_n++] = 'b'; }
void order_c(int) { g_order[g_order_n++] = 'c'; }

TEST_F(CpuTest, OfflineCallbacksRunLastRegisteredFirst) {
  ASSERT_TRUE(cpu_offline_callback_add(order_a));
  ASSERT_TRUE(cpu_offline_callback_add(order_b));
  ASSERT_TRUE(cpu_offline_callback_add(order_c));
  std::thread([] { CpuScope cpu; }).join();
  ASSERT_EQ(g_order_n, 3);
  EXPECT_EQ(std::string(g_order, g_order + 3), std::string("cba"));
  ASSERT_TRUE(cpu_offline_callback_remove(order_b));
  ASSERT_TRUE(cpu_offline_callback_add(order_b));
  g_order_n = 0;
  std::thread([] { CpuScope cpu; }).join();
  ASSERT_EQ(g_order_n, 3);
  EXPECT_EQ(std::string(g_order, g_order + 3), std::string("bca"));
  for (CpuOfflineFn fn : {order_a, order_b, order_c}) EXPECT_TRUE(cpu_offline_callback_remove(fn));
}

TEST_F(CpuTest, OfflineCallbackRegistryIsBounded) {
  // Distinct function pointers from a template, to fill every slot.
  using Fn = CpuOfflineFn;
  static const Fn fns[] = {
      [](int) {}, [](int) {}, [](int) {}, [](int) {}, [](int) {}, [](int) {},
      [](int) {}, [](int) {}, [](int) {}, [](int) {}, [](int) {}, [](int) {},
      [](int) {}, [](int) {}, [](int) {}, [](int) {}};
  static_assert(sizeof(fns) / sizeof(fns[0]) == kMaxOfflineCallbacks);
  for (Fn fn : fns) ASSERT_TRUE(cpu_offline_callback_add(fn));
  EXPECT_FALSE(cpu_offline_callback_add(noop_a)) << "no room left";
  for (Fn fn : fns) EXPECT_TRUE(cpu_offline_callback_remove(fn));
}

TEST_F(CpuTest, PerCpuSlotsAreSeparateAndAligned) {
  static PerCpu<long> counters;
  std::thread([] {
    CpuScope cpu;
    counters.this_cpu() += 5;
  }).join();
  CpuScope cpu;
  counters.this_cpu() += 1;
  EXPECT_EQ(counters.on(cpu.id()), 1 + (cpu.id() == 0 ? 5 : 0));
  long total = 0;
  counters.for_each([&](int, long& v) { total += v; });
  EXPECT_EQ(total, 6);
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(&counters.on(1)) -
                reinterpret_cast<std::uintptr_t>(&counters.on(0)),
            kCacheLine);
}

TEST_F(CpuTest, TooManyCpusIsReported) {
  EXPECT_DEATH(
      {
        std::atomic<bool> release{false};
        std::vector<std::thread> threads;
        std::atomic<int> up{0};
        for (int i = 0; i < kMaxCpus; ++i) {
          threads.emplace_back([&] {
            CpuScope cpu;
            up.fetch_add(1);
            while (!release.load()) std::this_thread::yield();
          });
        }
        while (up.load() < kMaxCpus) std::this_thread::yield();
        CpuScope one_too_many;
      },
      "cpu online: more than kMaxCpus = [0-9]+ logical CPUs");
}

TEST_F(CpuTest, SecondScopeOnOneThreadIsReported) {
  EXPECT_DEATH(
      {
        CpuScope a;
        CpuScope b;
      },
      "cpu online: this thread is already cpu [0-9]+; one CpuScope per thread");
}

TEST_F(CpuTest, NotACpuIsReportedByName) {
  EXPECT_DEATH(require_cpu("alloc_pages"),
               "not a cpu: alloc_pages\\(\\) called on a thread that is not a logical CPU");
  static PerCpu<int> data;
  EXPECT_DEATH(data.this_cpu() = 1, "not a cpu: PerCpu::this_cpu\\(\\)");
}

TEST_F(CpuTest, OfflineWithIrqsMaskedIsReported) {
  EXPECT_DEATH(
      {
        CpuScope cpu;
        IrqFlags leaked = irq_save();
        (void)leaked;
      },
      "cpu offline: CpuScope of cpu [0-9]+ ends with IRQs masked");
}

// An interrupt that reaches a CPU going offline could refill the caches its
// callbacks just drained: none runs from the callbacks on; each is dropped
// and counted.
std::atomic<int> g_handled{0};
void count_handled(InterruptKind) { g_handled.fetch_add(1); }
void raise_both(int) {
  raise_irq();
  raise_nmi();
}

TEST_F(CpuTest, InterruptsThatReachACpuGoingOfflineAreDropped) {
  set_interrupt_handler(InterruptKind::kIrq, count_handled);
  set_interrupt_handler(InterruptKind::kNmi, count_handled);
  ASSERT_TRUE(cpu_offline_callback_add(raise_both));
  g_handled = 0;
  std::uint64_t dropped = 0;
  std::thread([&] {
    {
      CpuScope cpu;
      raise_irq();  // a CPU that is not going offline takes them
      raise_nmi();
      EXPECT_EQ(g_handled.load(), 2);
      dropped = interrupts_dropped();
    }
    EXPECT_EQ(g_handled.load(), 2) << "an interrupt ran on a CPU going offline";
    EXPECT_EQ(interrupts_dropped() - dropped, 2u);
    CpuScope again;  // and the next scope of the thread takes them again
    raise_nmi();
    EXPECT_EQ(g_handled.load(), 3);
    ASSERT_TRUE(cpu_offline_callback_remove(raise_both));
  }).join();
  set_interrupt_handler(InterruptKind::kIrq, nullptr);
  set_interrupt_handler(InterruptKind::kNmi, nullptr);
}

stack_t current_altstack() {
  stack_t now{};
  sigaltstack(nullptr, &now);
  return now;
}

// A thread keeps the signal stack its first CPU scope gave it, also while
// offline (no system call but a query per scope after the first), and hands
// it back when it exits: what was current before is current again (ASan,
// which gives every thread a stack, unmaps whatever is current when a
// thread ends). A pthread key's destructor runs after the thread's
// thread_local destructors and sees what is current then.
std::atomic<void*> g_library_stack{nullptr};
std::atomic<bool> g_library_stack_current_at_exit{true};

TEST_F(CpuTest, SignalStackStaysWithTheThreadUntilItExits) {
  pthread_key_t key;
  ASSERT_EQ(pthread_key_create(&key,
                               [](void*) {
                                 stack_t now = current_altstack();
                                 g_library_stack_current_at_exit =
                                     (now.ss_flags & SS_DISABLE) == 0 && now.ss_sp == g_library_stack.load();
                               }),
            0);
  std::thread([&] {
    pthread_setspecific(key, &key);
    const stack_t before = current_altstack();
    {
      CpuScope cpu;
      g_library_stack = current_altstack().ss_sp;
      EXPECT_EQ(current_altstack().ss_flags & SS_DISABLE, 0);
      EXPECT_NE(current_altstack().ss_sp, before.ss_sp) << "a CPU runs its handlers on the library's stack";
      EXPECT_GE(current_altstack().ss_size, interrupts_config().altstack_bytes);
    }
    EXPECT_EQ(current_altstack().ss_sp, g_library_stack.load()) << "kept while offline";
    CpuScope again;
    EXPECT_EQ(current_altstack().ss_sp, g_library_stack.load()) << "the same stack for the next scope";
  }).join();
  EXPECT_FALSE(g_library_stack_current_at_exit.load()) << "the library's stack is still current as the thread ends";
  pthread_key_delete(key);
}

// A stack the thread sets while offline gives way to the library's at its
// next CPU scope.
TEST_F(CpuTest, SignalStackSetWhileOfflineGivesWayAtTheNextScope) {
  const std::size_t bytes = 128 * 1024;
  void* own = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(own, MAP_FAILED);
  std::thread([&] {
    const stack_t before = current_altstack();
    void* library = nullptr;
    { CpuScope cpu; library = current_altstack().ss_sp; }
    stack_t mine{};
    mine.ss_sp = own;
    mine.ss_size = bytes;
    ASSERT_EQ(sigaltstack(&mine, nullptr), 0);
    { CpuScope again; EXPECT_EQ(current_altstack().ss_sp, library); }
    sigaltstack(&before, nullptr);  // as the thread found it: `own` is unmapped below
  }).join();
  munmap(own, bytes);
}

}  // namespace
}  // namespace anyctx
