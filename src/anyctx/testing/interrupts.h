// anyctx/testing/interrupts.h — test helper: run a piece of test code inside
// a real IRQ- or NMI-class signal handler on the calling thread.
//
// Contract (tests only):
//  - run_in_irq(fn) / run_in_nmi(fn) install a dispatching handler, raise the
//    signal at the calling thread and return after fn ran inside the handler.
//    They nest: fn may itself call run_in_nmi().
//  - run_in_irq() while IRQs are masked: fn runs when they are unmasked,
//    which must happen before run_in_irq() returns — so such a call is a test
//    bug and fails loudly.
//  - Interrupts that arrive with no fn queued (a deferred or blocked one, or
//    one a test raised itself) go to the fallback handler, if one is set.
//  - The calling thread must be a CPU (CpuScope).
#pragma once

#include <atomic>
#include <cstdlib>
#include <utility>

#include "anyctx/ctx/context.h"
#include "anyctx/ctx/interrupt.h"
#include "anyctx/ctx/report.h"

namespace anyctx::testing {

namespace detail {

struct Thunk {
  void (*call)(void*) = nullptr;
  void* fn = nullptr;
};

inline thread_local constinit Thunk t_thunk[2]{};
inline constinit std::atomic<InterruptHandler> g_fallback{nullptr};

inline void dispatch(InterruptKind kind) {
  Thunk& slot = t_thunk[static_cast<int>(kind)];
  if (slot.call == nullptr) {
    if (InterruptHandler h = g_fallback.load()) h(kind);
    return;
  }
  Thunk mine = slot;
  slot = Thunk{};  // a nested interrupt of the same kind starts empty
  mine.call(mine.fn);
}

template <class Fn>
void run_in(InterruptKind kind, Fn&& fn) {
  bool ran = false;
  auto body = [&] {
    ran = true;
    fn();
  };
  Thunk& slot = t_thunk[static_cast<int>(kind)];
  Thunk saved = slot;
  slot = Thunk{[](void* p) { (*static_cast<decltype(body)*>(p))(); }, &body};
  set_interrupt_handler(InterruptKind::kIrq, dispatch);
  set_interrupt_handler(InterruptKind::kNmi, dispatch);
  if (kind == InterruptKind::kIrq) {
    raise_irq();
  } else {
    raise_nmi();
  }
  slot = saved;
  if (!ran) {
    (Report("test harness") << "run_in_" << (kind == InterruptKind::kIrq ? "irq" : "nmi")
                            << "(): the handler did not run (masked or blocked here)")
        .fatal();
  }
}

}  // namespace detail

// Where interrupts without a queued fn go (nullptr: nowhere).
inline void set_fallback_handler(InterruptHandler handler) {
  detail::g_fallback.store(handler);
  set_interrupt_handler(InterruptKind::kIrq, detail::dispatch);
  set_interrupt_handler(InterruptKind::kNmi, detail::dispatch);
}

template <class Fn>
void run_in_irq(Fn&& fn) {
  detail::run_in(InterruptKind::kIrq, std::forward<Fn>(fn));
}

template <class Fn>
void run_in_nmi(Fn&& fn) {
  detail::run_in(InterruptKind::kNmi, std::forward<Fn>(fn));
}

}  // namespace anyctx::testing
