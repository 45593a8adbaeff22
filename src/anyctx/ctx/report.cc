#include "anyctx/ctx/report.h"

#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>

namespace anyctx {

namespace {
std::atomic<ReportHook> g_report_hook{nullptr};
}  // namespace

ReportHook set_report_hook(ReportHook hook) { return g_report_hook.exchange(hook); }

Report::Report(const char* kind) {
  *this << "anyctx: " << kind << ": ";
}

Report& Report::operator<<(std::string_view text) {
  std::size_t room = kCapacity - len_;
  if (text.size() > room) {
    text = text.substr(0, room);
    cut_ = true;
  }
  for (char c : text) buf_[len_++] = c;
  return *this;
}

Report& Report::put_unsigned(unsigned long long value, unsigned base) {
  char digits[24];
  std::size_t n = 0;
  do {
    digits[n++] = "0123456789abcdef"[value % base];
    value /= base;
  } while (value != 0);
  char out[24];
  for (std::size_t i = 0; i < n; ++i) out[i] = digits[n - 1 - i];
  return *this << std::string_view(out, n);
}

Report& Report::put_signed(long long value) {
  if (value < 0) {
    *this << '-';
    return put_unsigned(0ull - static_cast<unsigned long long>(value), 10);
  }
  return put_unsigned(static_cast<unsigned long long>(value), 10);
}

Report& Report::hex(unsigned long long value) {
  *this << "0x";
  return put_unsigned(value, 16);
}

Report& Report::operator<<(const void* ptr) {
  return hex(reinterpret_cast<unsigned long long>(ptr));
}

Report& Report::operator<<(SrcLoc at) {
#if ANYCTX_DEBUG
  if (at.known()) return *this << at.file << ':' << at.line;
#else
  (void)at;
#endif
  return *this << "(unknown site)";
}

void Report::emit() const {
  int saved_errno = errno;
  char line[kCapacity + 5];
  std::size_t n = 0;
  for (std::size_t i = 0; i < len_; ++i) line[n++] = buf_[i];
  if (cut_) {
    line[n++] = '.';
    line[n++] = '.';
    line[n++] = '.';
  }
  line[n++] = '\n';
  std::size_t done = 0;
  while (done < n) {
    ssize_t w = ::write(STDERR_FILENO, line + done, n - done);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) break;
    done += static_cast<std::size_t>(w);
  }
  errno = saved_errno;
}

void Report::fatal() const {
  emit();
  if (ReportHook hook = g_report_hook.load()) hook(text());
  std::abort();
}

}  // namespace anyctx
