// Lock acquisition: anyctx::Spinlock against std::mutex and
// pthread_spinlock_t, uncontended (1 thread) and contended (2 threads, one
// shared lock, empty critical section).
//
//   cmake --workflow --preset release && build/release/bench/lock_bench
//
// The Validator rows time lock+unlock with the lock validator on and off (at
// run time): they mean something in a debug build (`dev`), where the
// validator is compiled in; in `release` it is compiled out and both rows
// equal BM_Spinlock. The Nested rows hold another lock (one edge lookup).
//
//   cmake --build --preset dev --target lock_bench &&
//     build/dev/bench/lock_bench --benchmark_filter=Validator
//
// Built with ANYCTX_LOCK_STATS=1 (lock_bench_rmw) the Spinlock rows also
// report `rmw_per_acq`: atomic RMW attempts on the lock word per acquisition.
#include <benchmark/benchmark.h>
#include <pthread.h>

#include <mutex>

#include "anyctx/lock/spinlock.h"
#include "anyctx/lock/validator.h"

namespace {

anyctx::Spinlock g_spinlock("bench.spinlock");
std::mutex g_mutex;
pthread_spinlock_t g_pthread_spin;
const int g_pthread_spin_init = pthread_spin_init(&g_pthread_spin, PTHREAD_PROCESS_PRIVATE);

void BM_Spinlock(benchmark::State& state) {
  std::uint64_t rmw_before = anyctx::lock_rmw_count();
  for (auto _ : state) {
    g_spinlock.lock();
    benchmark::ClobberMemory();
    g_spinlock.unlock();
  }
  if (ANYCTX_LOCK_STATS) {
    state.counters["rmw_per_acq"] = benchmark::Counter(
        static_cast<double>(anyctx::lock_rmw_count() - rmw_before) / static_cast<double>(state.iterations()),
        benchmark::Counter::kAvgThreads);
  }
}

void BM_StdMutex(benchmark::State& state) {
  for (auto _ : state) {
    g_mutex.lock();
    benchmark::ClobberMemory();
    g_mutex.unlock();
  }
}

void BM_PthreadSpinlock(benchmark::State& state) {
  benchmark::DoNotOptimize(g_pthread_spin_init);
  for (auto _ : state) {
    pthread_spin_lock(&g_pthread_spin);
    benchmark::ClobberMemory();
    pthread_spin_unlock(&g_pthread_spin);
  }
}

// Argument: 1 = validator on, 0 = off.
void BM_SpinlockValidator(benchmark::State& state) {
  anyctx::set_lock_validator(state.range(0) != 0 ? anyctx::LockValidator::kOn : anyctx::LockValidator::kOff);
  anyctx::Spinlock l("bench.validator");
  for (auto _ : state) {
    l.lock();
    benchmark::ClobberMemory();
    l.unlock();
  }
  anyctx::set_lock_validator(anyctx::LockValidator::kOn);
  state.SetLabel(state.range(0) != 0 ? "validator on" : "validator off");
}

void BM_SpinlockNestedValidator(benchmark::State& state) {
  anyctx::set_lock_validator(state.range(0) != 0 ? anyctx::LockValidator::kOn : anyctx::LockValidator::kOff);
  anyctx::Spinlock outer("bench.validator_outer");
  anyctx::Spinlock inner("bench.validator_inner");
  outer.lock();
  for (auto _ : state) {
    inner.lock();
    benchmark::ClobberMemory();
    inner.unlock();
  }
  outer.unlock();
  anyctx::set_lock_validator(anyctx::LockValidator::kOn);
  state.SetLabel(state.range(0) != 0 ? "validator on" : "validator off");
}

BENCHMARK(BM_Spinlock)->Threads(1)->Threads(2)->UseRealTime();
BENCHMARK(BM_SpinlockValidator)->Arg(0)->Arg(1);
BENCHMARK(BM_SpinlockNestedValidator)->Arg(0)->Arg(1);
BENCHMARK(BM_StdMutex)->Threads(1)->Threads(2)->UseRealTime();
BENCHMARK(BM_PthreadSpinlock)->Threads(1)->Threads(2)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
