// anyctx/ctx/report.h — diagnostics that are safe to build and print from a
// signal handler.
//
// Contract:
//  - Report formats into a fixed buffer on the stack: no allocation, no lock,
//    no stdio. Text past the buffer is cut and marked with "...".
//  - emit() writes one line "anyctx: <kind>: <text>\n" to stderr with write(2).
//  - fatal() emits, calls the report hook (if any), then aborts. Misuse and
//    deadlock reports are fatal: the program cannot continue correctly.
// Context: any (task, IRQ, NMI).
#pragma once

#include <concepts>
#include <cstddef>
#include <string_view>

#include "anyctx/ctx/src_loc.h"

namespace anyctx {

// Called with the text of a fatal report just before the process aborts,
// so a harness can add what it was doing. Must be async-signal-safe.
using ReportHook = void (*)(std::string_view text);
// Context: any. Return: the previous hook.
ReportHook set_report_hook(ReportHook hook);

class Report {
 public:
  // `kind` names the class of problem ("self-deadlock", "bad irq_restore").
  explicit Report(const char* kind);
  Report(const Report&) = delete;
  Report& operator=(const Report&) = delete;

  Report& operator<<(std::string_view text);
  Report& operator<<(const char* text) { return *this << std::string_view(text ? text : "(null)"); }
  Report& operator<<(char c) { return *this << std::string_view(&c, 1); }
  template <std::integral T>
    requires(!std::same_as<T, char> && !std::same_as<T, bool>)
  Report& operator<<(T value) {
    if constexpr (std::signed_integral<T>) {
      return put_signed(static_cast<long long>(value));
    } else {
      return put_unsigned(static_cast<unsigned long long>(value), 10);
    }
  }
  Report& operator<<(bool value) { return *this << (value ? "true" : "false"); }
  Report& operator<<(const void* ptr);
  Report& operator<<(SrcLoc at);
  Report& hex(unsigned long long value);

  std::string_view text() const { return {buf_, len_}; }
  void emit() const;
  [[noreturn]] void fatal() const;

 private:
  Report& put_signed(long long value);
  Report& put_unsigned(unsigned long long value, unsigned base);

  static constexpr std::size_t kCapacity = 1024;
  char buf_[kCapacity];
  std::size_t len_ = 0;
  bool cut_ = false;
};

}  // namespace anyctx
