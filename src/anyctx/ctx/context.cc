#include "anyctx/ctx/context.h"

#include "anyctx/ctx/report.h"

namespace anyctx {

namespace detail {
thread_local constinit ThreadState t_state{};

void irq_restore_unbalanced(std::uint16_t expected, std::uint16_t current) {
  Report r("bad irq_restore");
  if (expected == 0) {
    r << "irq_restore() with flags that no irq_save() returned";
  } else if (current == 0) {
    r << "irq_restore() without a matching irq_save() on this thread";
  } else {
    r << "irq_restore() out of order: these flags come from save level " << expected
      << " but the innermost unrestored irq_save() is level " << current;
  }
  r << " (cpu " << current_cpu() << ", " << context_name(context_level()) << " context)";
  r.fatal();
}
}  // namespace detail

const char* context_name(ContextLevel level) {
  switch (level) {
    case ContextLevel::kTask: return "task";
    case ContextLevel::kIrq: return "irq";
    case ContextLevel::kNmi: return "nmi";
  }
  return "?";
}

}  // namespace anyctx
