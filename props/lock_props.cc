// props/lock_props.cc — Spinlock and LocalTryLock with nested interrupts,
// against a model of frames.
//
// The model is a stack of frames (task, an IRQ on top of it, an NMI on top
// of either), each with the locks it holds and how (plain or irqsave). Two
// Spinlocks (A, B) and one LocalTryLock (L, CPU 0's) are used from every
// frame:
//  - try_lock() (plain or irqsave) succeeds exactly when no frame holds the
//    lock, and fails exactly when this frame or an interrupted one does;
//  - lock() (plain or irqsave) is only asked for when the lock is free
//    (anything else is a self-deadlock, which debug builds report);
//  - after every step, is_locked() of each lock, owner_cpu(), irqs_disabled(),
//    in_irq() and in_nmi() are what the model says: unlock restores the
//    lock's state, unlock_irqrestore the IRQ mask it saved;
//  - an IRQ raised while the task masks IRQs runs once, exactly when the
//    outermost irqsave section ends, and sees the locks the task still holds.
// Interrupt frames release what they took before they return; the task
// frame keeps its locks across commands.
#include <array>
#include <vector>

#include "anyctx/lock/local_lock.h"
#include "anyctx/lock/spinlock.h"
#include "anyctx/lock/validator.h"
#include "props_common.h"

namespace anyctx::props {
namespace {

enum LockId : std::uint8_t { kA = 0, kB = 1, kL = 2 };
constexpr int kLocks = 3;
inline const char* lock_name(int l) { return l == kA ? "A" : l == kB ? "B" : "L"; }

constexpr int kMaxFrameSteps = 6;
constexpr int kMaxHolds = 8;

enum class Breakage : std::uint8_t {
  kNone,
  kForgetInterruptedHolder,  // try_lock in an interrupt ignores the frames it interrupted
  kUnlockKeepsLocked,        // the model thinks unlock() leaves the lock taken
  kRestoreKeepsMasked,       // the model thinks unlock_irqrestore() leaves IRQs masked
  kMaskedIrqLost,            // the model thinks an IRQ raised while masked is dropped
};

struct Hold {
  std::uint8_t lock;
  bool irqsave;
};

// What the SUT is expected to show after a step.
struct Snapshot {
  std::array<bool, kLocks> locked{};
  std::array<int, 2> owner{kNoCpu, kNoCpu};  // Spinlock::owner_cpu() of A, B
  bool irqs_off = false;
  bool in_irq = false;
  bool in_nmi = false;
  bool operator==(const Snapshot&) const = default;
};

// A replayed IRQ: what it found (try_lock of A, B, L; context).
struct Replay {
  bool ran = false;
  std::array<bool, kLocks> got{};
  bool in_irq = false;
  bool irqs_off = false;
  bool operator==(const Replay&) const = default;
};

struct Prediction {
  bool result = false;  // try_lock*: whether it took the lock
  Snapshot after;
  Replay replay;  // an IRQ replayed by this step (unlock_irqrestore)
};

struct LockModel {
  Breakage broken = Breakage::kNone;
  std::vector<std::vector<Hold>> frames{{}};  // [0] is the task
  std::vector<Ctx> ctxs{Ctx::kTask};
  bool irq_pending = false;  // raised while the task masked IRQs

  std::vector<Hold>& top() { return frames.back(); }
  const std::vector<Hold>& top() const { return frames.back(); }
  Ctx ctx() const { return ctxs.back(); }

  bool held_anywhere(int l) const {
    for (const auto& f : frames)
      for (const Hold& h : f)
        if (h.lock == l) return true;
    return false;
  }
  bool held_here(int l) const {
    for (const Hold& h : top())
      if (h.lock == l) return true;
    return false;
  }
  bool task_masked() const {
    for (const Hold& h : frames[0])
      if (h.irqsave) return true;
    return false;
  }
  bool irqs_off() const { return ctx() != Ctx::kTask || task_masked(); }
  // The most recent irqsave hold of this frame, or -1.
  int last_irqsave() const {
    for (auto it = top().rbegin(); it != top().rend(); ++it)
      if (it->irqsave) return it->lock;
    return -1;
  }

  // What try_lock predicts (the broken model ignores interrupted frames).
  bool predict_try(int l) const {
    if (broken == Breakage::kForgetInterruptedHolder) return !held_here(l);
    return !held_anywhere(l);
  }

  Snapshot snapshot() const {
    Snapshot s;
    for (int l = 0; l < kLocks; ++l) s.locked[l] = held_anywhere(l);
    for (int l = 0; l < 2; ++l) s.owner[l] = kDebug && s.locked[l] ? 0 : kNoCpu;
    s.irqs_off = irqs_off();
    s.in_irq = false;
    s.in_nmi = false;
    for (Ctx c : ctxs) {
      if (c == Ctx::kIrq) s.in_irq = true;
      if (c == Ctx::kNmi) s.in_nmi = true;
    }
    return s;
  }

  void release(int l) {
    auto& f = top();
    for (auto it = f.begin(); it != f.end(); ++it)
      if (it->lock == l) {
        f.erase(it);
        return;
      }
  }
};

// --- steps ------------------------------------------------------------------------

struct Step {
  enum Kind : std::uint8_t {
    kLock,
    kTryLock,
    kLockIrqsave,
    kTryLockIrqsave,
    kUnlock,
    kUnlockIrqrestore,
    kIrq,
    kNmi,
    kRaiseMasked,
  } kind = kTryLock;
  std::uint8_t lock = kA;
  std::vector<Step> nested;
};

const char* step_name(Step::Kind k) {
  switch (k) {
    case Step::kLock:
      return "lock";
    case Step::kTryLock:
      return "try_lock";
    case Step::kLockIrqsave:
      return "lock_irqsave";
    case Step::kTryLockIrqsave:
      return "try_lock_irqsave";
    case Step::kUnlock:
      return "unlock";
    case Step::kUnlockIrqrestore:
      return "unlock_irqrestore";
    case Step::kIrq:
      return "irq";
    case Step::kNmi:
      return "nmi";
    case Step::kRaiseMasked:
      return "raise_irq(masked)";
  }
  return "?";
}

void show_steps(std::ostream& os, const std::vector<Step>& steps) {
  for (std::size_t i = 0; i < steps.size(); ++i) {
    const Step& s = steps[i];
    if (i) os << "; ";
    os << step_name(s.kind);
    if (s.kind <= Step::kUnlockIrqrestore) os << "(" << lock_name(s.lock) << ")";
    if (s.kind == Step::kIrq || s.kind == Step::kNmi) {
      os << "{";
      show_steps(os, s.nested);
      os << "}";
    }
  }
}

bool step_valid(const LockModel& m, const Step& s) {
  Ctx c = m.ctx();
  bool acquires = s.kind == Step::kLock || s.kind == Step::kLockIrqsave || s.kind == Step::kTryLock ||
                  s.kind == Step::kTryLockIrqsave;
  // Lock order A -> B, as a real user would keep it (TSan's deadlock
  // detector would report A and B taken in both orders on one thread).
  if (acquires && s.lock == kA && m.held_anywhere(kB)) return false;
  switch (s.kind) {
    case Step::kLock:
    case Step::kLockIrqsave:
      return c != Ctx::kNmi && !m.held_anywhere(s.lock);  // else a self-deadlock
    case Step::kTryLock:
    case Step::kTryLockIrqsave:
      return true;
    case Step::kUnlock:
      for (const Hold& h : m.top())
        if (h.lock == s.lock) return !h.irqsave;
      return false;
    case Step::kUnlockIrqrestore:
      return m.last_irqsave() == s.lock;
    case Step::kIrq:
      return c == Ctx::kTask && !m.task_masked();
    case Step::kNmi:
      return c != Ctx::kNmi;
    case Step::kRaiseMasked:
      return c == Ctx::kTask && m.task_masked();
  }
  return false;
}

bool simulate(LockModel& m, const std::vector<Step>& steps, std::vector<Prediction>* out);

// One step on the model. Return: false when it is not valid there.
bool simulate_step(LockModel& m, const Step& s, std::vector<Prediction>* out) {
  if (!step_valid(m, s)) return false;
  Prediction p;
  std::size_t slot = out ? out->size() : 0;
  if (out) out->push_back(p);
  switch (s.kind) {
    case Step::kLock:
      m.top().push_back(Hold{s.lock, false});
      p.result = true;
      break;
    case Step::kLockIrqsave:
      m.top().push_back(Hold{s.lock, true});
      p.result = true;
      break;
    case Step::kTryLock:
    case Step::kTryLockIrqsave: {
      // The model's state follows the truth; only the prediction may be
      // broken (so a broken model never asks for a self-deadlock).
      bool taken = !m.held_anywhere(s.lock);
      p.result = m.predict_try(s.lock);
      if (taken) m.top().push_back(Hold{s.lock, s.kind == Step::kTryLockIrqsave});
      break;
    }
    case Step::kUnlock:
      m.release(s.lock);
      break;
    case Step::kUnlockIrqrestore:
      m.release(s.lock);
      // Unmasking (the outermost irqsave section of the task ends) runs the
      // IRQ recorded meanwhile, in IRQ context, before the call returns.
      if (m.ctx() == Ctx::kTask && !m.task_masked() && m.irq_pending) {
        m.irq_pending = false;
        if (m.broken != Breakage::kMaskedIrqLost) {
          p.replay.ran = true;
          m.frames.push_back({});
          m.ctxs.push_back(Ctx::kIrq);
          for (int l = 0; l < kLocks; ++l) p.replay.got[l] = m.predict_try(l);
          p.replay.in_irq = true;
          p.replay.irqs_off = true;
          m.frames.pop_back();
          m.ctxs.pop_back();
        }
      }
      break;
    case Step::kRaiseMasked:
      m.irq_pending = true;
      break;
    case Step::kIrq:
    case Step::kNmi: {
      m.frames.push_back({});
      m.ctxs.push_back(s.kind == Step::kIrq ? Ctx::kIrq : Ctx::kNmi);
      if (!simulate(m, s.nested, out)) return false;
      bool clean = m.top().empty();  // an interrupt releases what it took
      m.frames.pop_back();
      m.ctxs.pop_back();
      if (!clean) return false;
      break;
    }
  }
  p.after = m.snapshot();
  if (s.kind == Step::kUnlock && m.broken == Breakage::kUnlockKeepsLocked) p.after.locked[s.lock] = true;
  if (s.kind == Step::kUnlockIrqrestore && m.broken == Breakage::kRestoreKeepsMasked) p.after.irqs_off = true;
  if (out) (*out)[slot] = p;
  return true;
}

bool simulate(LockModel& m, const std::vector<Step>& steps, std::vector<Prediction>* out) {
  for (const Step& s : steps)
    if (!simulate_step(m, s, out)) return false;
  return true;
}

// Steps for the frame on top of `m` (an interrupt's), ending with the
// releases of what it still holds, newest first.
std::vector<Step> gen_frame(LockModel& m, int max) {
  std::vector<Step> steps;
  int n = uniform(0, max + 1);
  for (int i = 0; i < n; ++i) {
    Step s;
    int pick = uniform(0, 12);
    s.lock = static_cast<std::uint8_t>(uniform(0, kLocks));
    if (pick < 3)
      s.kind = Step::kTryLock;
    else if (pick < 5)
      s.kind = Step::kTryLockIrqsave;
    else if (pick < 6)
      s.kind = Step::kLock;
    else if (pick < 7)
      s.kind = Step::kLockIrqsave;
    else if (pick < 9)
      s.kind = m.last_irqsave() >= 0 && coin() ? Step::kUnlockIrqrestore : Step::kUnlock;
    else if (pick < 11) {
      if (m.ctx() != Ctx::kIrq) continue;
      s.kind = Step::kNmi;
      LockModel inner = m;
      inner.frames.push_back({});
      inner.ctxs.push_back(Ctx::kNmi);
      s.nested = gen_frame(inner, max / 2);
    } else {
      continue;
    }
    if (s.kind == Step::kUnlockIrqrestore) s.lock = static_cast<std::uint8_t>(m.last_irqsave());
    if (s.kind == Step::kUnlock) {
      std::vector<std::uint8_t> plain;
      for (const Hold& h : m.top())
        if (!h.irqsave) plain.push_back(h.lock);
      if (plain.empty()) continue;
      s.lock = plain[uniform<std::size_t>(0, plain.size())];
    }
    LockModel trial = m;
    if (!simulate_step(trial, s, nullptr)) continue;
    m = std::move(trial);
    steps.push_back(std::move(s));
  }
  while (!m.top().empty()) {
    const Hold h = m.top().back();
    Step s;
    s.kind = h.irqsave ? Step::kUnlockIrqrestore : Step::kUnlock;
    s.lock = h.lock;
    simulate_step(m, s, nullptr);
    steps.push_back(std::move(s));
  }
  return steps;
}

// --- the system under test -----------------------------------------------------------

struct Observed {
  bool ran = false;
  bool result = false;
  Snapshot after;
  Replay replay;
};

// The model decides when lock() may be asked for (only when no frame holds
// the lock), in any order and context, as the executor's model does for the
// program locks: the lock validator leaves these classes' order and IRQ
// safety to it. Set before main (the class table is constant-initialised).
[[maybe_unused]] const bool g_sut_locks_unchecked = set_lock_class_unchecked("props.A") &&
                                                    set_lock_class_unchecked("props.B") &&
                                                    set_lock_class_unchecked("props.L");

struct LockSut {
  Spinlock a{"props.A"};
  Spinlock b{"props.B"};
  LocalTryLock l{"props.L"};
  // The task frame's holds (persist across commands), newest last.
  std::vector<Hold> task_holds;
  std::vector<IrqFlags> task_flags;
  Replay replay_seen;  // written by the replayed IRQ

  bool is_locked(int id) const { return id == kA ? a.is_locked() : id == kB ? b.is_locked() : l.is_locked(); }

  Snapshot snapshot() const {
    Snapshot s;
    for (int id = 0; id < kLocks; ++id) s.locked[id] = is_locked(id);
    s.owner = {a.owner_cpu(), b.owner_cpu()};
    s.irqs_off = irqs_disabled();
    s.in_irq = in_irq();
    s.in_nmi = in_nmi();
    return s;
  }

  bool try_lock(int id) { return id == kA ? a.try_lock() : id == kB ? b.try_lock() : l.try_lock(); }
  bool try_lock_irqsave(int id, IrqFlags& f) {
    return id == kA ? a.try_lock_irqsave(f) : id == kB ? b.try_lock_irqsave(f) : l.try_lock_irqsave(f);
  }
  void lock(int id) {
    if (id == kA)
      a.lock();
    else if (id == kB)
      b.lock();
    else
      l.lock();
  }
  IrqFlags lock_irqsave(int id) { return id == kA ? a.lock_irqsave() : id == kB ? b.lock_irqsave() : l.lock_irqsave(); }
  void unlock(int id) {
    if (id == kA)
      a.unlock();
    else if (id == kB)
      b.unlock();
    else
      l.unlock();
  }
  void unlock_irqrestore(int id, IrqFlags f) {
    if (id == kA)
      a.unlock_irqrestore(f);
    else if (id == kB)
      b.unlock_irqrestore(f);
    else
      l.unlock_irqrestore(f);
  }

  // Releases the task frame's locks, newest first (the end of a case, also
  // a failed one).
  ~LockSut() {
    while (!task_holds.empty()) {
      Hold h = task_holds.back();
      if (h.irqsave) {
        unlock_irqrestore(h.lock, task_flags.back());
      } else {
        unlock(h.lock);
      }
      task_holds.pop_back();
      task_flags.pop_back();
    }
  }
};

LockSut* g_sut = nullptr;  // for the replayed IRQ (the fallback handler)

// The IRQ that was raised while masked and replayed at unmask time.
void replay_handler(InterruptKind kind) {
  if (kind != InterruptKind::kIrq || g_sut == nullptr) return;
  Replay& r = g_sut->replay_seen;
  r.ran = true;
  r.in_irq = in_irq();
  r.irqs_off = irqs_disabled();
  for (int id = 0; id < kLocks; ++id) r.got[id] = g_sut->try_lock(id);
  for (int id = kLocks - 1; id >= 0; --id)
    if (r.got[id]) g_sut->unlock(id);
}

// The holds of one interrupt frame: on its handler's stack, no allocation.
struct FrameHolds {
  Hold holds[kMaxHolds];
  IrqFlags flags[kMaxHolds];
  int n = 0;
};

struct Executor {
  LockSut& sut;
  std::vector<Observed>& seen;
  std::size_t cursor = 0;
  bool stop = false;

  // `task` is the task frame (its holds live in the SUT) or nullptr.
  void run(const std::vector<Step>& steps, FrameHolds* frame) {
    for (const Step& s : steps) {
      if (stop) return;
      Observed& o = seen[cursor++];
      o.ran = true;
      run_one(s, frame, o);
      o.after = sut.snapshot();
    }
    // An interrupt frame must not return holding a lock: if a surprise
    // stopped it half-way, release what it really holds.
    if (frame != nullptr) {
      while (frame->n > 0) {
        --frame->n;
        if (frame->holds[frame->n].irqsave) {
          sut.unlock_irqrestore(frame->holds[frame->n].lock, frame->flags[frame->n]);
        } else {
          sut.unlock(frame->holds[frame->n].lock);
        }
      }
    }
  }

  void add_hold(FrameHolds* frame, Hold h, IrqFlags f) {
    if (frame == nullptr) {
      sut.task_holds.push_back(h);
      sut.task_flags.push_back(f);
    } else if (frame->n < kMaxHolds) {
      frame->holds[frame->n] = h;
      frame->flags[frame->n] = f;
      ++frame->n;
    }
  }

  // Return: whether this frame held it (and took it out of its list).
  bool take_hold(FrameHolds* frame, int id, bool irqsave, IrqFlags& f) {
    if (frame == nullptr) {
      for (std::size_t i = sut.task_holds.size(); i-- > 0;) {
        if (sut.task_holds[i].lock != id || sut.task_holds[i].irqsave != irqsave) continue;
        if (irqsave && i + 1 != sut.task_holds.size()) {
          // irq_restore must be LIFO among the irqsave holds
          for (std::size_t j = i + 1; j < sut.task_holds.size(); ++j)
            if (sut.task_holds[j].irqsave) return false;
        }
        f = sut.task_flags[i];
        sut.task_holds.erase(sut.task_holds.begin() + static_cast<std::ptrdiff_t>(i));
        sut.task_flags.erase(sut.task_flags.begin() + static_cast<std::ptrdiff_t>(i));
        return true;
      }
      return false;
    }
    for (int i = frame->n - 1; i >= 0; --i) {
      if (frame->holds[i].lock != id || frame->holds[i].irqsave != irqsave) continue;
      if (irqsave)
        for (int j = i + 1; j < frame->n; ++j)
          if (frame->holds[j].irqsave) return false;
      f = frame->flags[i];
      for (int j = i; j + 1 < frame->n; ++j) {
        frame->holds[j] = frame->holds[j + 1];
        frame->flags[j] = frame->flags[j + 1];
      }
      --frame->n;
      return true;
    }
    return false;
  }

  void run_one(const Step& s, FrameHolds* frame, Observed& o) {
    switch (s.kind) {
      case Step::kLock:
        sut.lock(s.lock);
        add_hold(frame, Hold{s.lock, false}, IrqFlags{});
        o.result = true;
        break;
      case Step::kLockIrqsave:
        add_hold(frame, Hold{s.lock, true}, sut.lock_irqsave(s.lock));
        o.result = true;
        break;
      case Step::kTryLock:
        o.result = sut.try_lock(s.lock);
        if (o.result) add_hold(frame, Hold{s.lock, false}, IrqFlags{});
        break;
      case Step::kTryLockIrqsave: {
        IrqFlags f;
        o.result = sut.try_lock_irqsave(s.lock, f);
        if (o.result) add_hold(frame, Hold{s.lock, true}, f);
        break;
      }
      case Step::kUnlock: {
        IrqFlags f;
        if (!take_hold(frame, s.lock, false, f)) {
          stop = true;
          break;
        }  // it never got it
        sut.unlock(s.lock);
        break;
      }
      case Step::kUnlockIrqrestore: {
        IrqFlags f;
        if (!take_hold(frame, s.lock, true, f)) {
          stop = true;
          break;
        }
        sut.replay_seen = Replay{};
        sut.unlock_irqrestore(s.lock, f);
        o.replay = sut.replay_seen;
        break;
      }
      case Step::kRaiseMasked:
        raise_irq();
        break;
      case Step::kIrq:
      case Step::kNmi: {
        auto body = [&] {
          FrameHolds inner;
          run(s.nested, &inner);
        };
        if (s.kind == Step::kIrq) {
          testing::run_in_irq(body);
        } else {
          testing::run_in_nmi(body);
        }
        break;
      }
    }
  }
};

std::string show_snapshot(const Snapshot& s) {
  std::ostringstream os;
  os << "locked A=" << s.locked[kA] << " B=" << s.locked[kB] << " L=" << s.locked[kL] << " owner A=" << s.owner[0]
     << " B=" << s.owner[1] << " irqs_disabled=" << s.irqs_off << " in_irq=" << s.in_irq << " in_nmi=" << s.in_nmi;
  return os.str();
}

void check_steps(const std::vector<Step>& steps, const std::vector<Prediction>& expect,
                 const std::vector<Observed>& seen, std::size_t& at) {
  for (const Step& s : steps) {
    std::size_t i = at++;
    const Prediction& e = expect[i];
    const Observed& o = seen[i];
    std::ostringstream what;
    show_steps(what, {s});
    std::string name = what.str().substr(0, what.str().find('{'));
    if (!o.ran) prop_fail("step '" + name + "' did not run (an earlier surprise)");
    if ((s.kind == Step::kTryLock || s.kind == Step::kTryLockIrqsave) && o.result != e.result)
      prop_fail("try_lock: '" + name + "' " + (o.result ? "took" : "did not take") +
                " the lock but the model says it " + (e.result ? "does" : "does not") + " (" + show_snapshot(e.after) +
                ")");
    if (o.replay.ran != e.replay.ran)
      prop_fail(std::string("replay: the IRQ raised while masked ") + (o.replay.ran ? "ran" : "did not run") + " at '" +
                name + "' but the model says it " + (e.replay.ran ? "does" : "does not"));
    if (o.replay.ran && !(o.replay == e.replay))
      prop_fail("replay: the replayed IRQ at '" + name + "' saw try_lock A/B/L = " + std::to_string(o.replay.got[0]) +
                std::to_string(o.replay.got[1]) + std::to_string(o.replay.got[2]) +
                " in_irq=" + std::to_string(o.replay.in_irq) + " irqs_disabled=" + std::to_string(o.replay.irqs_off) +
                ", the model says " + std::to_string(e.replay.got[0]) + std::to_string(e.replay.got[1]) +
                std::to_string(e.replay.got[2]));
    if (!(o.after == e.after)) {
      std::string field = o.after.locked != e.after.locked       ? "is_locked"
                          : o.after.owner != e.after.owner       ? "owner_cpu"
                          : o.after.irqs_off != e.after.irqs_off ? "irqs_disabled"
                                                                 : "context";
      prop_fail(field + " after '" + name + "': " + show_snapshot(o.after) + "; the model says " +
                show_snapshot(e.after));
    }
    if (s.kind == Step::kIrq || s.kind == Step::kNmi) check_steps(s.nested, expect, seen, at);
  }
}

// --- commands ------------------------------------------------------------------------

using LockCmd = rc::state::Command<LockModel, LockSut>;

class RunSteps : public LockCmd {
 public:
  explicit RunSteps(std::vector<Step> steps) : steps_(std::move(steps)) {}
  void checkPreconditions(const LockModel& s0) const override {
    LockModel m = s0;
    RC_PRE(simulate(m, steps_, nullptr));
  }
  void apply(LockModel& s0) const override { simulate(s0, steps_, nullptr); }
  void run(const LockModel& s0, LockSut& sut) const override {
    LockModel m = s0;
    std::vector<Prediction> expect;
    simulate(m, steps_, &expect);
    std::vector<Observed> seen(expect.size());
    sut.task_holds.reserve(sut.task_holds.size() + expect.size());
    sut.task_flags.reserve(sut.task_flags.size() + expect.size());
    Executor ex{sut, seen};
    ex.run(steps_, nullptr);
    std::size_t at = 0;
    check_steps(steps_, expect, seen, at);
  }
  void show(std::ostream& os) const override { show_steps(os, steps_); }

 private:
  std::vector<Step> steps_;
};

rc::Gen<std::shared_ptr<const LockCmd>> gen_command(const LockModel& model) {
  return rc::gen::exec([model]() -> std::shared_ptr<const LockCmd> {
    LockModel m = model;
    Step s;
    int pick = uniform(0, 10);
    if (pick < 4) {  // a task-frame lock operation
      s.lock = static_cast<std::uint8_t>(uniform(0, kLocks));
      const Step::Kind kinds[] = {Step::kTryLock,     Step::kTryLockIrqsave, Step::kLock,
                                  Step::kLockIrqsave, Step::kUnlock,         Step::kUnlockIrqrestore};
      s.kind = kinds[uniform(0, 6)];
      if (s.kind == Step::kUnlockIrqrestore) {
        RC_PRE(m.last_irqsave() >= 0);
        s.lock = static_cast<std::uint8_t>(m.last_irqsave());
      }
    } else if (pick < 5) {
      s.kind = Step::kRaiseMasked;
    } else {  // an interrupt: an IRQ when unmasked, else an NMI
      s.kind = !m.task_masked() && coin() ? Step::kIrq : Step::kNmi;
      LockModel inner = m;
      inner.frames.push_back({});
      inner.ctxs.push_back(s.kind == Step::kIrq ? Ctx::kIrq : Ctx::kNmi);
      s.nested = gen_frame(inner, kMaxFrameSteps);
    }
    RC_PRE(simulate_step(m, s, nullptr));
    return std::make_shared<RunSteps>(std::vector<Step>{s});
  });
}

void lock_state_machine(Breakage broken) {
  LockModel m0;
  m0.broken = broken;
  const auto commands = *rc::gen::scale(0.5, rc::state::gen::commands(m0, &gen_command));
  auto sut = std::make_unique<LockSut>();
  g_sut = sut.get();
  testing::set_fallback_handler(&replay_handler);
  struct Cleanup {
    ~Cleanup() {
      g_sut = nullptr;
      reset_hooks();
    }
  } cleanup;
  rc::state::runAll(commands, m0, *sut);
  sut.reset();  // releases the task's locks
  // Released: every lock free, IRQs unmasked, nothing pending.
  if (irqs_disabled() || in_irq() || in_nmi()) prop_fail("after the sequence the task still masks IRQs");
}

}  // namespace

RC_GTEST_PROP(LockProps, LocksMatchFrameModel, ()) { lock_state_machine(Breakage::kNone); }

TEST(LockProps, TryLockFailsForInterruptedHolder_CatchesBrokenModel) {
  ANYCTX_EXPECT_CAUGHT(run_broken("lock/forget-holder", [] { lock_state_machine(Breakage::kForgetInterruptedHolder); }),
                       "try_lock");
}

TEST(LockProps, UnlockRestoresState_CatchesBrokenModel) {
  ANYCTX_EXPECT_CAUGHT(run_broken("lock/unlock-keeps", [] { lock_state_machine(Breakage::kUnlockKeepsLocked); }),
                       "is_locked");
}

TEST(LockProps, IrqrestoreRestoresMask_CatchesBrokenModel) {
  ANYCTX_EXPECT_CAUGHT(run_broken("lock/restore-masked", [] { lock_state_machine(Breakage::kRestoreKeepsMasked); }),
                       "irqs_disabled");
}

TEST(LockProps, MaskedIrqReplays_CatchesBrokenModel) {
  ANYCTX_EXPECT_CAUGHT(run_broken("lock/irq-lost", [] { lock_state_machine(Breakage::kMaskedIrqLost); }), "replay");
}

}  // namespace anyctx::props
