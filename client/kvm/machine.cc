// SPDX-License-Identifier: MIT
#include "client/kvm/machine.h"

#include "client/kvm/nmi_gate.h"

#include "schema/model/ioapic.h"
#include "schema/model/types.h"

#include <kj/debug.h>
#include <cerrno>
#include <csignal>
#include <pthread.h>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

namespace vlapic::kvm {

int MachineExit::processStatus() const {
  switch (kind) {
    case Kind::GUEST_EXIT: return int(((guestValue << 1) | 1) & 0xFF);
    case Kind::TRIPLE_FAULT: return kStatusTripleFault;
    case Kind::UNHANDLED_EXIT: return kStatusUnhandledExit;
    case Kind::BACKEND_LOST: return kStatusBackendLost;
    case Kind::TIMEOUT: return kStatusTimeout;
    case Kind::INTERNAL_ERROR: return kStatusInternalError;
  }
  return kStatusInternalError;
}

namespace {

// The APIC MSR numbers and IA32_APIC_BASE bits come from the core's
// schema/model/types.h (kMsrApicBase, kMsrTscDeadline, kMsrX2apicFirst/Last,
// kApicBaseEnable, kApicBaseExtd).
constexpr uint32_t kMsrTsc = 0x10;
constexpr uint32_t kMsrX2apicTpr = 0x808;
constexpr uint64_t kApicBaseAddressMask = 0x000FFFFFFFFFF000ull;
constexpr uint64_t kApicWindowSize = 4096;
constexpr uint32_t kApicTprOffset = 0x80;
// KVM and QEMU tick the LAPIC timer at 1 GHz; vlapicd's default is the same.
constexpr uint32_t kApicBusKhz = 1'000'000;

// CPUID bits (SDM Vol. 2A, CPUID).
constexpr uint32_t kCpuid1EcxX2apic = 1u << 21;
constexpr uint32_t kCpuid1EcxTscDeadline = 1u << 24;
constexpr uint32_t kCpuid1EcxHypervisor = 1u << 31;
constexpr uint32_t kCpuid1EdxHtt = 1u << 28;

bool isApicMsr(uint32_t msr) {
  return msr == kMsrApicBase || msr == kMsrTscDeadline ||
         (msr >= kMsrX2apicFirst && msr <= kMsrX2apicLast);
}

uint64_t monotonicNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * 1'000'000'000ull + ts.tv_nsec;
}

// The signal that kicks a vCPU thread out of KVM_RUN. Its handler does
// nothing: the point is the -EINTR it causes.
int kickSignal() { return SIGRTMIN + 2; }

void installKickHandler() {
  struct sigaction action;
  memset(&action, 0, sizeof(action));
  action.sa_handler = [](int) {};
  sigemptyset(&action.sa_mask);
  KJ_SYSCALL(sigaction(kickSignal(), &action, nullptr));
}

kvm_segment flatSegment(uint16_t selector, uint8_t type) {
  kvm_segment segment;
  memset(&segment, 0, sizeof(segment));
  segment.base = 0;
  segment.limit = 0xFFFFFFFF;
  segment.selector = selector;
  segment.type = type;
  segment.present = 1;
  segment.s = 1;
  segment.db = 1;
  segment.g = 1;
  return segment;
}

kvm_segment realModeSegment(uint16_t selector, uint8_t type) {
  kvm_segment segment;
  memset(&segment, 0, sizeof(segment));
  segment.base = uint64_t(selector) << 4;
  segment.limit = 0xFFFF;
  segment.selector = selector;
  segment.type = type;
  segment.present = 1;
  segment.s = 1;
  return segment;
}

kj::String describeApicAccess(const ApicAccess& access) {
  return kj::str(access.kind == ApicAccess::Kind::GP ? "#GP" : "ignored", " (", access.reason, ")");
}

}  // namespace

// ---------------------------------------------------------------------------

class Machine::Vcpu {
public:
  // Events for this vCPU not yet acted on (posted by the backend's thread).
  struct Pending {
    bool interrupt = false;
    uint32_t nmis = 0;
    bool init = false;
    kj::Maybe<uint8_t> sipi;
    // The backend holds events only this thread can fetch.
    bool attention = false;
    // The server's state was restored from a snapshot.
    bool restored = false;
  };

  Vcpu(Machine& machine, uint32_t index)
      : machine(machine), index(index), bsp(index == 0),
        fd(machine.kvm, machine.vmFd.get(), index) {}

  VcpuFd& kvmVcpu() { return fd; }

  void start() {
    thread = kj::heap<kj::Thread>([this]() { threadMain(); });
  }
  void join() { thread = nullptr; }

  // Event entry points (backend thread).
  void post(kj::FunctionParam<void(Pending&)> update) {
    {
      auto locked = pending.lockExclusive();
      update(*locked);
    }
    kick();
  }

  void kick() {
    kicked.store(true);
    __atomic_store_n(&fd.run().immediate_exit, 1, __ATOMIC_SEQ_CST);
    // inGuest is only ever true on the running vCPU thread, after it set
    // selfThread, so the signal never targets a thread that is gone.
    if (inGuest.load()) {
      machine.stats.kicks++;
      pthread_kill(selfThread, kickSignal());
    }
  }

  void wakeForStop() { post([](Pending&) {}); }

private:
  Machine& machine;
  uint32_t index;
  bool bsp;
  VcpuFd fd;
  kj::Maybe<kj::Own<kj::Thread>> thread;

  kj::MutexGuarded<Pending> pending;
  std::atomic<bool> kicked{false};
  std::atomic<bool> inGuest{false};
  pthread_t selfThread{};

  // vCPU-thread state.
  bool waitingForSipi = false;
  bool halted = false;
  bool haltedWithInterruptsOn = false;
  bool interruptWanted = false;
  uint8_t knownCr8 = 0;
  uint64_t apicBase = 0;
  NmiGate nmiGate;
  // An NMI is in flight or latched behind the guest's handler: KVM injects
  // it at an exit after the IRET, and this host gives no NMI-window exit,
  // so the vCPU is kicked at the window-poll interval meanwhile.
  bool nmiExitSoon = false;

  bool serverApic() const { return machine.machineConfig.apic == ApicLocation::SERVER; }
  ApicBackend& backend() { return KJ_ASSERT_NONNULL(machine.backend); }

  void threadMain() {
    selfThread = pthread_self();
    blockKickOutsideGuest();
    KJ_DEFER(KJ_IF_MAYBE(timer, windowPollTimer) timer_delete(*timer));
    KJ_DEFER(KJ_IF_MAYBE(timer, deadlineKickTimer) timer_delete(*timer));
    KJ_IF_MAYBE(exception, kj::runCatchingExceptions([&]() {
      if (serverApic()) {
        backend().openOnThisThread(index);
        // Only the boot vCPU runs at power-on; the others wait for
        // INIT-SIPI (SDM "MP Initialization Protocol").
        waitingForSipi = !bsp;
        syncApicBase(readApicBaseFromServer());
      }
      while (!machine.stopping.load()) {
        if (serverApic() && !prepareEntry()) break;
        auto entry = enterGuest();
        if (entry == Entry::SKIPPED) continue;
        machine.stats.exits++;
        // kvm_run's cr8, if_flag and ready_for_interrupt_injection are
        // current after any return from KVM_RUN, signals included.
        if (serverApic()) syncCr8FromGuest();
        if (entry == Entry::EXITED) handleExit();
      }
      if (serverApic()) backend().closeOnThisThread(index);
    })) {
      if (serverApic()) {
        // Handles must die on their own thread, whatever happened.
        kj::runCatchingExceptions([&]() { backend().closeOnThisThread(index); });
      }
      // A backend failure has already stopped the machine as BACKEND_LOST
      // (first stop wins); anything else is a failed KVM call.
      MachineExit exit;
      exit.kind = MachineExit::Kind::INTERNAL_ERROR;
      exit.message = kj::str("vCPU ", index, ": ", exception->getDescription());
      machine.stop(kj::mv(exit));
    }
  }

  uint64_t readApicBaseFromServer() {
    auto access = backend().msrRead(index, kMsrApicBase, false);
    KJ_REQUIRE(access.kind == ApicAccess::Kind::VALUE, "vlapicd refused to read IA32_APIC_BASE",
               access.reason);
    return access.value;
  }

  // Keeps our view (where the MMIO window is) and KVM's (so that
  // CPUID.1:EDX.APIC follows the enable bit, SDM "Local APIC Status and
  // Location") equal to the server's IA32_APIC_BASE.
  void syncApicBase(uint64_t value) {
    apicBase = value;
    fd.setMsr(kMsrApicBase, value);
  }

  bool mmioDecoding() const {
    return (apicBase & kApicBaseEnable) && !(apicBase & kApicBaseExtd);
  }

  // Returns false when the machine stops. Blocks while the vCPU waits for
  // SIPI or is halted.
  bool prepareEntry() {
    uint32_t nmis = 0;
    for (bool fetch = true, resync = false; fetch;) {
      if (resync) resyncAfterRestore();
      // Events the backend holds for this vCPU reach `pending` through the
      // sink, which takes the lock: fetch them before taking it.
      backend().fetchEvents(index);
      fetch = false;
      resync = false;
      auto locked = pending.lockExclusive();
      for (;;) {
        if (machine.stopping.load()) return false;
        if (locked->attention || locked->restored) {
          resync = locked->restored;
          locked->attention = false;
          locked->restored = false;
          fetch = true;
          break;
        }
        if (locked->init) {
          locked->init = false;
          if (!bsp) {
            // INIT: the AP's LAPIC was reset by the server; the CPU waits
            // for a SIPI. Anything queued for the old context is gone.
            waitingForSipi = true;
            halted = false;
            interruptWanted = false;
            locked->interrupt = false;
            locked->nmis = 0;
            nmiGate.reset();
          }
        }
        if (waitingForSipi) {
          KJ_IF_MAYBE(vector, locked->sipi) {
            startAtSipiVector(*vector);
            locked->sipi = nullptr;
            waitingForSipi = false;
            continue;
          }
          locked.wait([&](const Pending& p) {
            return machine.stopping.load() || p.attention || p.restored || p.init || p.sipi != nullptr;
          });
          continue;
        }
        locked->sipi = nullptr;  // a SIPI to a running CPU is dropped
        if (locked->interrupt) {
          locked->interrupt = false;
          interruptWanted = true;
        }
        if (halted) {
          // HLT resumes on NMI, INIT, or an interrupt the CPU can take
          // (IF=1); with IF=0 an interrupt does not wake it.
          bool wake = locked->nmis > 0 || nmiGate.heldCount() > 0 ||
                      (interruptWanted && haltedWithInterruptsOn);
          if (!wake) {
            machine.stats.halts++;
            auto haltEnds = [&](const Pending& p) {
              return machine.stopping.load() || p.attention || p.restored || p.init || p.nmis > 0 ||
                     (haltedWithInterruptsOn && (p.interrupt || interruptWanted));
            };
            // The backend sleeps, or polls ahead of the LAPIC timer, with
            // the lock released: events must reach `pending` meanwhile.
            locked = {};
            HaltWait wait;
            wait.sleepUntil = [&](kj::Maybe<uint64_t> wakeAtNs) {
              auto relocked = pending.lockExclusive();
              KJ_IF_MAYBE(at, wakeAtNs) {
                uint64_t now = monotonicNs();
                if (*at > now) relocked.wait(haltEnds, int64_t(*at - now) * kj::NANOSECONDS);
              } else {
                relocked.wait(haltEnds);
              }
              return haltEnds(*relocked);
            };
            wait.posted = [&]() { return haltEnds(*pending.lockShared()); };
            backend().waitWhileHalted(index, wait);
            // The deadline kick may have fired during the halt: the halt's
            // wait covered the deadline, so it is not news.
            if (deadlineKickArmedFor != 0) dropPendingKick();
            // What ended the wait may be events the backend holds for this
            // thread (a channel's attention seen while polling): fetch them.
            fetch = true;
            break;
          }
          halted = false;
        }
        nmis = locked->nmis;
        locked->nmis = 0;
        break;
      }
    }
    // NMIs go to KVM one at a time, each once KVM shows the one before it
    // taken; how many collapse is the guest's NMI blocking to decide
    // (client/kvm/nmi_gate.h, SDM 6.7.1).
    if (nmis > 0) nmiGate.arrived(nmis);
    NmiDecision nmi;
    if (nmiGate.needsKvmState()) {
      kvm_vcpu_events events;
      memset(&events, 0, sizeof(events));
      checkedIoctl(fd.fd(), KVM_GET_VCPU_EVENTS, &events, "KVM_GET_VCPU_EVENTS");
      KvmNmiState state;
      state.injected = events.nmi.injected != 0;
      state.pending = events.nmi.pending != 0;
      state.masked = events.nmi.masked != 0;
      nmi = nmiGate.beforeEntry(state);
      if (nmi.injectNow) {
        checkedIoctl(fd.fd(), KVM_NMI, 0ul, "KVM_NMI");
        machine.stats.nmis++;
      }
    }
    nmiExitSoon = nmi.needExitSoon;
    auto& run = fd.run();
    if (interruptWanted && canInject() && !nmi.holdInterrupts) {
      // The interrupt window is open: take the vector from the LAPIC now
      // (IRR -> ISR) and inject it. CR8 is current as of this exit.
      auto ack = backend().acknowledge(index);
      interruptWanted = ack.after.interruptPending;
      KJ_IF_MAYBE(vector, ack.vector) {
        inject(*vector);
      } else if (machine.machineConfig.trace) {
        fprintf(stderr, "[vcpu %u] acknowledge: nothing\n", index);
      }
    }
    run.request_interrupt_window = interruptWanted ? 1 : 0;
    return true;
  }

  // The vCPU can take an external interrupt when it next enters the guest
  // (KVM: the interrupt window is open, RFLAGS.IF = 1, nothing injected yet).
  bool canInject() {
    auto& run = fd.run();
    return run.ready_for_interrupt_injection && run.if_flag;
  }

  // The LAPIC acknowledged `vector` (IRR -> ISR): hand it to KVM.
  void inject(uint8_t vector) {
    kvm_interrupt interrupt;
    interrupt.irq = vector;
    checkedIoctl(fd.fd(), KVM_INTERRUPT, &interrupt, "KVM_INTERRUPT");
    machine.stats.injected++;
    fd.run().ready_for_interrupt_injection = 0;
    if (machine.machineConfig.trace) {
      fprintf(stderr, "[vcpu %u] inject 0x%x, more=%u\n", index, vector, interruptWanted);
    }
  }

  // What an access result asks of the front besides its value.
  void afterAccess(const ApicAccess& access) {
    if (access.interruptPending) interruptWanted = true;
    KJ_IF_MAYBE(vector, access.inject) {
      // Acknowledged by the server in this call; whatever is still
      // deliverable came back as a new DELIVERABLE event.
      interruptWanted = false;
      inject(*vector);
    }
  }

  // Returns true when KVM_RUN returned with an exit to handle.
  enum class Entry { SKIPPED, INTERRUPTED, EXITED };

  Entry enterGuest() {
    auto& run = fd.run();
    run.immediate_exit = 0;
    inGuest.store(true);
    if (kicked.exchange(false)) {
      inGuest.store(false);
      return Entry::SKIPPED;
    }
    // An interrupt waits but the guest had IF=0 at the last exit. KVM is
    // asked for an interrupt-window exit, but the nested KVM this project
    // runs on never delivers one to a user-space irqchip; so the vCPU is
    // also kicked at a short interval until an exit finds IF=1.
    bool poll = run.request_interrupt_window != 0 || nmiExitSoon;
    if (poll) armWindowPoll();
    if (serverApic()) followTimerDeadline();
    int result = ioctl(fd.fd(), KVM_RUN, 0);
    int error = errno;
    inGuest.store(false);
    if (poll) disarmWindowPoll();
    if (result < 0) {
      if (error == EINTR || error == EAGAIN) {
        // KVM_RUN put the thread's mask back with the kick still pending
        // (it is blocked outside the guest): take it, or the next entry
        // would return at once again.
        if (error == EINTR) dropPendingKick();
        return Entry::INTERRUPTED;
      }
      KJ_FAIL_SYSCALL("KVM_RUN", error);
    }
    return Entry::EXITED;
  }

  // The kick signal is blocked on this thread except inside KVM_RUN
  // (KVM_SET_SIGNAL_MASK), as QEMU does: a kick or timer signal that comes
  // while the thread is elsewhere (a channel call, a halt) waits and makes
  // the next KVM_RUN return at once, and never interrupts another system
  // call.
  void blockKickOutsideGuest() {
    sigset_t kick, before;
    sigemptyset(&kick);
    sigaddset(&kick, kickSignal());
    KJ_REQUIRE(pthread_sigmask(SIG_BLOCK, &kick, &before) == 0, "pthread_sigmask failed");
    sigdelset(&before, kickSignal());
    // The kernel's sigset is 8 bytes on x86-64: the first 8 bytes of
    // glibc's sigset_t.
    constexpr size_t kKernelSigsetBytes = 8;
    alignas(kvm_signal_mask) kj::byte buffer[sizeof(kvm_signal_mask) + kKernelSigsetBytes];
    auto* mask = reinterpret_cast<kvm_signal_mask*>(buffer);
    mask->len = kKernelSigsetBytes;
    memcpy(mask->sigset, &before, kKernelSigsetBytes);
    checkedIoctl(fd.fd(), KVM_SET_SIGNAL_MASK, mask, "KVM_SET_SIGNAL_MASK");
  }

  // A kick signal that became pending while the thread was not in the
  // guest, dropped (after a halt: the halt's own wait already saw why).
  void dropPendingKick() {
    sigset_t kick;
    sigemptyset(&kick);
    sigaddset(&kick, kickSignal());
    timespec zero{0, 0};
    while (sigtimedwait(&kick, nullptr, &zero) > 0) {
    }
  }

  // A per-thread POSIX timer delivering the kick signal to this thread at
  // the vCPU's LAPIC timer deadline, when the backend knows it (every
  // channel reply names it): the guest leaves KVM_RUN at the deadline as
  // with KVM's in-kernel LAPIC (its hrtimer kicks the vCPU), and the next
  // fetchEvents() fires the expiry in vlapicd and collects it, without
  // waiting for vlapicd's own timer, its attention flag and the watcher.
  kj::Maybe<timer_t> deadlineKickTimer;
  uint64_t deadlineKickArmedFor = 0;  // 0: not armed

  void followTimerDeadline() {
    uint64_t want = 0;
    KJ_IF_MAYBE(deadline, backend().knownTimerDeadline(index)) {
      // One already due is collected by prepareEntry's fetch.
      if (*deadline > monotonicNs()) want = *deadline;
    }
    if (want == deadlineKickArmedFor) return;
    if (deadlineKickTimer == nullptr) {
      if (want == 0) return;
      deadlineKickTimer = createKickTimer();
    }
    itimerspec spec;
    memset(&spec, 0, sizeof(spec));
    spec.it_value.tv_sec = time_t(want / 1'000'000'000ull);
    spec.it_value.tv_nsec = long(want % 1'000'000'000ull);
    KJ_SYSCALL(timer_settime(KJ_ASSERT_NONNULL(deadlineKickTimer), TIMER_ABSTIME, &spec, nullptr));
    deadlineKickArmedFor = want;
  }

  timer_t createKickTimer() {
    sigevent event;
    memset(&event, 0, sizeof(event));
    event.sigev_notify = SIGEV_THREAD_ID;
    event.sigev_signo = kickSignal();
    event._sigev_un._tid = gettid();
    timer_t timer;
    KJ_SYSCALL(timer_create(CLOCK_MONOTONIC, &event, &timer));
    return timer;
  }

  // A per-thread POSIX timer delivering the kick signal to this thread.
  kj::Maybe<timer_t> windowPollTimer;
  static constexpr long kWindowPollNs = 200'000;

  void armWindowPoll() {
    if (windowPollTimer == nullptr) windowPollTimer = createKickTimer();
    itimerspec spec;
    memset(&spec, 0, sizeof(spec));
    spec.it_value.tv_nsec = kWindowPollNs;
    spec.it_interval.tv_nsec = kWindowPollNs;
    KJ_SYSCALL(timer_settime(KJ_ASSERT_NONNULL(windowPollTimer), 0, &spec, nullptr));
  }

  void disarmWindowPoll() {
    itimerspec spec;
    memset(&spec, 0, sizeof(spec));
    KJ_SYSCALL(timer_settime(KJ_ASSERT_NONNULL(windowPollTimer), 0, &spec, nullptr));
  }

  void syncCr8FromGuest() {
    auto& run = fd.run();
    uint8_t cr8 = run.cr8 & 0xF;
    if (cr8 == knownCr8) return;
    // MOV to CR8 changed the TPR (SDM "Task Priority in IA-32e Mode").
    auto state = backend().setCr8(index, cr8);
    knownCr8 = cr8;
    if (state.interruptPending) interruptWanted = true;
  }

  // The server's LAPIC went back to a snapshot. IA32_APIC_BASE is read
  // again (the MMIO window and the page layout follow it); the guest's CR8,
  // which is the TPR it last set, is the newer truth and goes to the server.
  void resyncAfterRestore() {
    syncApicBase(readApicBaseFromServer());
    uint8_t cr8 = fd.run().cr8 & 0xF;
    if (backend().setCr8(index, cr8).interruptPending) interruptWanted = true;
    knownCr8 = cr8;
  }

  // The guest wrote the TPR through MMIO or MSR: CR8 follows it.
  void tprWritten(uint64_t tpr) {
    knownCr8 = (tpr >> 4) & 0xF;
    fd.run().cr8 = knownCr8;
  }

  void startAtSipiVector(uint8_t vector) {
    // SDM "MP Initialization Protocol": the AP starts in real mode at
    // CS:IP = (vector << 8):0000.
    auto sregs = fd.getSregs();
    sregs.cs = realModeSegment(uint16_t(vector) << 8, 0xB);
    sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = realModeSegment(0, 0x3);
    sregs.cr0 = 0x60000010;  // power-on/INIT value: CD, NW, ET
    sregs.cr4 = 0;
    sregs.efer = 0;
    sregs.cr8 = 0;
    fd.setSregs(sregs);
    kvm_regs regs;
    memset(&regs, 0, sizeof(regs));
    regs.rip = 0;
    regs.rflags = 0x2;
    fd.setRegs(regs);
    knownCr8 = 0;
    fd.run().cr8 = 0;
  }

  void handleExit() {
    auto& run = fd.run();
    if (machine.machineConfig.trace) {
      fprintf(stderr, "[vcpu %u] exit %u if=%u ready=%u want=%u cr8=%u\n", index, run.exit_reason,
              run.if_flag, run.ready_for_interrupt_injection, interruptWanted, (unsigned)run.cr8);
    }
    switch (run.exit_reason) {
      case KVM_EXIT_IO: handleIo(); break;
      case KVM_EXIT_MMIO: handleMmio(); break;
      case KVM_EXIT_X86_RDMSR: handleRdmsr(); break;
      case KVM_EXIT_X86_WRMSR: handleWrmsr(); break;
      case KVM_EXIT_HLT:
        halted = true;
        haltedWithInterruptsOn = run.if_flag;
        break;
      case KVM_EXIT_IRQ_WINDOW_OPEN:  // prepareEntry() injects
      case KVM_EXIT_INTR:             // kicked: prepareEntry() picks up events
      case KVM_EXIT_SET_TPR:          // CR8 lowered: already synced
        break;
      case KVM_EXIT_SHUTDOWN: {
        MachineExit exit;
        exit.kind = MachineExit::Kind::TRIPLE_FAULT;
        exit.message = kj::str("guest triple fault on vCPU ", index, " (", describeRegisters(), ")");
        machine.stop(kj::mv(exit));
        break;
      }
      case KVM_EXIT_SYSTEM_EVENT: {
        MachineExit exit;
        exit.kind = MachineExit::Kind::TRIPLE_FAULT;
        exit.message = kj::str("guest requested system event ", run.system_event.type,
                               " on vCPU ", index);
        machine.stop(kj::mv(exit));
        break;
      }
      default: {
        MachineExit exit;
        exit.kind = MachineExit::Kind::UNHANDLED_EXIT;
        exit.message = kj::str("unhandled KVM exit reason ", run.exit_reason, " on vCPU ", index,
                               describeUnhandled(), " (", describeRegisters(), ")");
        machine.stop(kj::mv(exit));
        break;
      }
    }
  }

  kj::String describeUnhandled() {
    auto& run = fd.run();
    if (run.exit_reason == KVM_EXIT_INTERNAL_ERROR) {
      return kj::str(": internal error suberror ", run.internal.suberror);
    }
    if (run.exit_reason == KVM_EXIT_FAIL_ENTRY) {
      return kj::str(": entry failed, hardware reason 0x",
                     kj::hex(run.fail_entry.hardware_entry_failure_reason));
    }
    return kj::str("");
  }

  kj::String describeRegisters() {
    auto regs = fd.getRegs();
    auto sregs = fd.getSregs();
    return kj::str("rip=0x", kj::hex(regs.rip), " cs=0x", kj::hex(sregs.cs.selector),
                   " cr0=0x", kj::hex(sregs.cr0), " rsp=0x", kj::hex(regs.rsp));
  }

  void handleIo() {
    auto& run = fd.run();
    auto* data = reinterpret_cast<kj::byte*>(&run) + run.io.data_offset;
    for (uint32_t i = 0; i < run.io.count; i++) {
      auto bytes = kj::arrayPtr(data + i * run.io.size, run.io.size);
      if (run.io.direction == KVM_EXIT_IO_OUT) {
        machine.ioBus.out(run.io.port, bytes);
      } else {
        machine.ioBus.in(run.io.port, bytes);
      }
    }
  }

  void handleMmio() {
    auto& run = fd.run();
    uint64_t gpa = run.mmio.phys_addr;
    uint64_t base = apicBase & kApicBaseAddressMask;
    // The vCPU's own xAPIC window comes first: a LAPIC claims accesses to
    // its window before they reach the system bus (SDM "Relocating the
    // Local APIC Registers"), so an I/O APIC window it overlaps is hidden
    // from this vCPU (vlapicd decides the same way).
    bool apicWindow = serverApic() && mmioDecoding() && gpa >= base && gpa - base < kApicWindowSize;
    if (apicWindow) {
      lapicMmio(gpa, base);
    } else if (ioApicWindow(gpa)) {
      ioApicMmio(gpa);
    } else {
      // No RAM and no device: reads float to all-ones, writes vanish (this
      // includes the xAPIC window while the APIC is disabled or in x2APIC
      // mode: SDM "Local APIC State After It Has Been Disabled"). With
      // KVM's in-kernel irqchip, its I/O APIC serves 0xFEC00000 and those
      // accesses never reach us.
      if (!run.mmio.is_write) memset(run.mmio.data, 0xFF, sizeof(run.mmio.data));
    }
  }

  bool ioApicWindow(uint64_t gpa) {
    if (!serverApic()) return false;
    KJ_IF_MAYBE(ioapic, backend().ioApicBase()) {
      return gpa >= *ioapic && gpa - *ioapic < kIoApicWindowSize;
    }
    return false;
  }

  void lapicMmio(uint64_t gpa, uint64_t base) {
    auto& run = fd.run();
    uint8_t size = run.mmio.len;
    machine.stats.apicAccesses++;
    if (run.mmio.is_write) {
      uint64_t value = guestWriteValue();
      auto access = backend().mmioWrite(index, gpa, size, value, canInject());
      if (access.kind == ApicAccess::Kind::VALUE && gpa - base == kApicTprOffset) tprWritten(value);
      afterAccess(access);
    } else {
      KJ_IF_MAYBE(value, backend().mmioReadFromPage(index, gpa - base, size)) {
        machine.stats.pageReads++;
        memcpy(run.mmio.data, value, kj::min<size_t>(size, sizeof(*value)));
        return;
      }
      mmioReadThroughServer(gpa);
    }
  }

  // The I/O APIC's window: the same access path as the LAPIC's (one call
  // on this vCPU's channel or connection; vlapicd routes by address), but
  // no page reads and no TPR: its registers are not the LAPIC's. An access
  // can uncover an interrupt for this vCPU (unmasking a pending entry, an
  // EOI register write), so the reply's inject and pending state count.
  void ioApicMmio(uint64_t gpa) {
    auto& run = fd.run();
    machine.stats.ioApicAccesses++;
    if (run.mmio.is_write) {
      afterAccess(backend().mmioWrite(index, gpa, run.mmio.len, guestWriteValue(), canInject()));
    } else {
      mmioReadThroughServer(gpa);
    }
  }

  uint64_t guestWriteValue() {
    auto& run = fd.run();
    uint64_t value = 0;
    memcpy(&value, run.mmio.data, kj::min<size_t>(run.mmio.len, sizeof(value)));
    return value;
  }

  void mmioReadThroughServer(uint64_t gpa) {
    auto& run = fd.run();
    auto access = backend().mmioRead(index, gpa, run.mmio.len, canInject());
    uint64_t value = access.value;
    memcpy(run.mmio.data, &value, kj::min<size_t>(run.mmio.len, sizeof(value)));
    afterAccess(access);
  }

  void handleRdmsr() {
    auto& run = fd.run();
    if (!serverApic() || !isApicMsr(run.msr.index)) {
      // An MSR KVM does not know: #GP as on hardware without it.
      run.msr.error = 1;
      return;
    }
    machine.stats.apicAccesses++;
    bool x2apicMode = (apicBase & kApicBaseEnable) && (apicBase & kApicBaseExtd);
    if (x2apicMode) {
      KJ_IF_MAYBE(value, backend().msrReadFromPage(index, run.msr.index)) {
        machine.stats.pageReads++;
        run.msr.error = 0;
        run.msr.data = *value;
        return;
      }
    }
    auto access = backend().msrRead(index, run.msr.index, canInject());
    if (access.kind == ApicAccess::Kind::GP) {
      KJ_LOG(INFO, "RDMSR faults", index, run.msr.index, describeApicAccess(access));
      run.msr.error = 1;
    } else {
      run.msr.error = 0;
      run.msr.data = access.value;
    }
    afterAccess(access);
  }

  void handleWrmsr() {
    auto& run = fd.run();
    if (!serverApic() || !isApicMsr(run.msr.index)) {
      run.msr.error = 1;
      return;
    }
    machine.stats.apicAccesses++;
    uint32_t msr = run.msr.index;
    uint64_t value = run.msr.data;
    auto access = backend().msrWrite(index, msr, value, canInject());
    if (access.kind == ApicAccess::Kind::GP) {
      KJ_LOG(INFO, "WRMSR faults", index, msr, value, describeApicAccess(access));
      run.msr.error = 1;
    } else {
      run.msr.error = 0;
      if (access.kind == ApicAccess::Kind::VALUE) {
        if (msr == kMsrApicBase) syncApicBase(readApicBaseFromServer());
        if (msr == kMsrX2apicTpr) tprWritten(value);
      }
    }
    afterAccess(access);
  }
};

// ---------------------------------------------------------------------------

Machine::Machine(KvmSystem& kvm, const MachineConfig& config, kj::Function<void(char)> serialOutput)
    : kvm(kvm), machineConfig(config),
      vmFd(checkedIoctl(kvm.fd(), KVM_CREATE_VM, 0ul, "KVM_CREATE_VM")),
      guestMemory(config.memoryBytes),
      ioBus(config.memoryBytes, config.vcpuCount, kj::mv(serialOutput),
            [this](uint32_t value) {
              MachineExit exit;
              exit.kind = MachineExit::Kind::GUEST_EXIT;
              exit.guestValue = value;
              exit.message = kj::str("guest exited with debug-exit value ", value);
              stop(kj::mv(exit));
            },
            [this](uint8_t pin, bool level) { driveIrqLine(pin, level); }) {
  KJ_REQUIRE(config.vcpuCount >= 1 && config.vcpuCount <= 255, "--smp must be 1..255",
             config.vcpuCount);
  installKickHandler();
  setUpVm();
}

Machine::~Machine() noexcept(false) {
  stopping.store(true);
  for (auto& vcpu : vcpus) vcpu->wakeForStop();
  for (auto& vcpu : vcpus) vcpu->join();
}

void Machine::setUpVm() {
  KJ_REQUIRE(kvm.checkExtension(KVM_CAP_IMMEDIATE_EXIT), "KVM lacks KVM_CAP_IMMEDIATE_EXIT");
  // Identity-mapped TSS pages for VMX real-mode support; just below the BIOS.
  checkedIoctl(vmFd.get(), KVM_SET_TSS_ADDR, 0xFFFBD000ul, "KVM_SET_TSS_ADDR");

  kvm_userspace_memory_region region;
  memset(&region, 0, sizeof(region));
  region.slot = 0;
  region.guest_phys_addr = 0;
  region.memory_size = guestMemory.size();
  region.userspace_addr = reinterpret_cast<uint64_t>(guestMemory.hostAddress());
  checkedIoctl(vmFd.get(), KVM_SET_USER_MEMORY_REGION, &region, "KVM_SET_USER_MEMORY_REGION");

  if (machineConfig.apic == ApicLocation::IN_KERNEL) {
    checkedIoctl(vmFd.get(), KVM_CREATE_IRQCHIP, 0ul, "KVM_CREATE_IRQCHIP");
  } else {
    // x2APIC MSRs reach user space only without an in-kernel LAPIC, and
    // then with reason INVAL; IA32_APIC_BASE and IA32_TSC_DEADLINE need the
    // filter below, else KVM absorbs them.
    KJ_REQUIRE(kvm.checkExtension(KVM_CAP_X86_USER_SPACE_MSR),
               "KVM lacks KVM_CAP_X86_USER_SPACE_MSR");
    kvm_enable_cap cap;
    memset(&cap, 0, sizeof(cap));
    cap.cap = KVM_CAP_X86_USER_SPACE_MSR;
    cap.args[0] = KVM_MSR_EXIT_REASON_INVAL | KVM_MSR_EXIT_REASON_UNKNOWN | KVM_MSR_EXIT_REASON_FILTER;
    checkedIoctl(vmFd.get(), KVM_ENABLE_CAP, &cap, "KVM_ENABLE_CAP(X86_USER_SPACE_MSR)");

    kvm_msr_filter filter;
    memset(&filter, 0, sizeof(filter));
    filter.flags = KVM_MSR_FILTER_DEFAULT_ALLOW;
    static uint8_t denyOne = 0;  // one MSR per range, its bit clear = deny
    uint32_t denied[] = {kMsrApicBase, kMsrTscDeadline};
    for (size_t i = 0; i < kj::size(denied); i++) {
      filter.ranges[i].flags = KVM_MSR_FILTER_READ | KVM_MSR_FILTER_WRITE;
      filter.ranges[i].nmsrs = 1;
      filter.ranges[i].base = denied[i];
      filter.ranges[i].bitmap = &denyOne;
    }
    checkedIoctl(vmFd.get(), KVM_X86_SET_MSR_FILTER, &filter, "KVM_X86_SET_MSR_FILTER");
  }

  for (uint32_t i = 0; i < machineConfig.vcpuCount; i++) {
    vcpus.add(kj::heap<Vcpu>(*this, i));
  }
  auto& first = vcpus[0]->kvmVcpu();
  guestTscHz = uint64_t(first.tscKhz()) * 1000;
  KJ_REQUIRE(guestTscHz > 0, "KVM reports no TSC frequency");

  for (uint32_t i = 0; i < machineConfig.vcpuCount; i++) {
    vcpus[i]->kvmVcpu().setCpuid(cpuidFor(i));
  }
}

int64_t Machine::measureGuestTscOffset() {
  // KVM_GET_MSRS(IA32_TSC) bracketed by CLOCK_MONOTONIC; the tightest of a
  // few samples bounds the error to a few microseconds of TSC.
  auto& vcpu = vcpus[0]->kvmVcpu();
  int64_t best = 0;
  uint64_t bestWindow = ~0ull;
  for (int sample = 0; sample < 8; sample++) {
    uint64_t before = monotonicNs();
    uint64_t tsc = vcpu.getMsr(kMsrTsc);
    uint64_t after = monotonicNs();
    if (after - before < bestWindow) {
      bestWindow = after - before;
      uint64_t middle = before + (after - before) / 2;
      best = int64_t(tsc - uint64_t((unsigned __int128)middle * guestTscHz / 1'000'000'000u));
    }
  }
  return best;
}

kj::Array<kvm_cpuid_entry2> Machine::cpuidFor(uint32_t index) const {
  auto supported = kvm.supportedCpuid();
  kj::Vector<kvm_cpuid_entry2> entries;
  uint32_t count = machineConfig.vcpuCount;
  uint32_t apicId = apicIdOf(index);
  for (auto& entry : supported) {
    // Topology and hypervisor leaves are rebuilt below.
    if (entry.function == 0xB || entry.function == 0x1F) continue;
    if (entry.function >= 0x40000000 && entry.function <= 0x400000FF) continue;
    auto copy = entry;
    if (copy.function == 1) {
      // EBX[31:24]: initial APIC ID; [23:16]: logical processors.
      copy.ebx = (apicId << 24) | ((count & 0xFF) << 16) | (copy.ebx & 0xFFFF);
      if (machineConfig.x2apic) copy.ecx |= kCpuid1EcxX2apic; else copy.ecx &= ~kCpuid1EcxX2apic;
      copy.ecx |= kCpuid1EcxTscDeadline | kCpuid1EcxHypervisor;
      if (count > 1) copy.edx |= kCpuid1EdxHtt;
    }
    entries.add(copy);
  }
  // Leaf 0xB: x2APIC topology, EDX = x2APIC ID at every level. One thread
  // per core, all cores in one package.
  uint32_t coreShift = 0;
  while ((1u << coreShift) < count) coreShift++;
  for (uint32_t level = 0; level < 3; level++) {
    kvm_cpuid_entry2 leaf;
    memset(&leaf, 0, sizeof(leaf));
    leaf.function = 0xB;
    leaf.index = level;
    leaf.flags = KVM_CPUID_FLAG_SIGNIFCANT_INDEX;
    leaf.edx = apicId;
    if (level == 0) {
      leaf.eax = 0; leaf.ebx = 1; leaf.ecx = (1u << 8) | level;  // SMT
    } else if (level == 1) {
      leaf.eax = coreShift; leaf.ebx = count; leaf.ecx = (2u << 8) | level;  // core
    } else {
      leaf.ecx = level;  // invalid level ends the enumeration
    }
    entries.add(leaf);
  }
  // Hypervisor leaves: our own signature (no KVM paravirtual features, the
  // guest must use the architectural APIC), and the timing leaf 0x40000010
  // (TSC and APIC bus frequency in kHz) that test kernels read.
  kvm_cpuid_entry2 signature;
  memset(&signature, 0, sizeof(signature));
  signature.function = 0x40000000;
  signature.eax = 0x40000010;
  memcpy(&signature.ebx, "Vlap", 4);
  memcpy(&signature.ecx, "icKV", 4);
  memcpy(&signature.edx, "M\0\0\0", 4);
  entries.add(signature);
  kvm_cpuid_entry2 timing;
  memset(&timing, 0, sizeof(timing));
  timing.function = 0x40000010;
  timing.eax = uint32_t(guestTscHz / 1000);
  timing.ebx = kApicBusKhz;
  entries.add(timing);
  return entries.releaseAsArray();
}

void Machine::attachApic(ApicBackend& apicBackend) {
  KJ_REQUIRE(machineConfig.apic == ApicLocation::SERVER);
  backend = apicBackend;
}

void Machine::setBootState(const BootState& state) {
  auto& vcpu = vcpus[0]->kvmVcpu();
  auto sregs = vcpu.getSregs();
  sregs.cs = flatSegment(0x10, 0xB);
  sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = flatSegment(0x18, 0x3);
  sregs.cr0 = multiboot::kEntryCr0;
  sregs.cr4 = 0;
  sregs.efer = 0;
  vcpu.setSregs(sregs);
  kvm_regs regs;
  memset(&regs, 0, sizeof(regs));
  regs.rax = multiboot::kBootMagic;
  regs.rbx = state.infoAddress;
  regs.rip = state.entry;
  regs.rflags = multiboot::kEntryRflags;
  vcpu.setRegs(regs);
}

Machine::Vcpu& Machine::vcpuAt(uint32_t index) {
  KJ_REQUIRE(index < vcpus.size(), "event for an unknown vCPU", index);
  return *vcpus[index];
}

MachineExit Machine::run(kj::Maybe<uint64_t> timeoutMs) {
  if (machineConfig.apic == ApicLocation::SERVER) {
    KJ_REQUIRE(backend != nullptr, "attachApic() before run()");
  }
  for (auto& vcpu : vcpus) vcpu->start();
  // Wake up now and then to notice a server that died while every vCPU was
  // parked (HLT, wait-for-SIPI) and so made no call that would fail, and to
  // let the backend do its periodic work (snapshots).
  constexpr uint64_t kSliceMs = 100;
  uint64_t startNs = monotonicNs();
  for (;;) {
    {
      auto locked = outcome.lockExclusive();
      locked.wait([](const kj::Maybe<MachineExit>& o) { return o != nullptr; },
                  int64_t(kSliceMs) * kj::MILLISECONDS);
      if (*locked != nullptr) break;
    }
    uint64_t waitedMs = (monotonicNs() - startNs) / 1'000'000;
    KJ_IF_MAYBE(b, backend) {
      if (!b->keepAlive()) {
        MachineExit exit;
        exit.kind = MachineExit::Kind::BACKEND_LOST;
        exit.message = kj::str("vlapicd went away (connection closed)");
        stop(kj::mv(exit));
        break;
      }
    }
    KJ_IF_MAYBE(ms, timeoutMs) {
      if (waitedMs >= *ms) {
        MachineExit exit;
        exit.kind = MachineExit::Kind::TIMEOUT;
        exit.message = kj::str("timeout: the guest did not exit within ", *ms, " ms");
        stop(kj::mv(exit));
        break;
      }
    }
  }
  for (auto& vcpu : vcpus) vcpu->join();
  return KJ_ASSERT_NONNULL(*outcome.lockExclusive()).clone();
}

void Machine::stop(MachineExit exit) {
  {
    auto locked = outcome.lockExclusive();
    if (*locked != nullptr) return;
    *locked = kj::mv(exit);
  }
  stopping.store(true);
  for (auto& vcpu : vcpus) vcpu->wakeForStop();
}

void Machine::driveIrqLine(uint8_t pin, bool level) {
  stats.irqLineChanges++;
  if (machineConfig.trace) fprintf(stderr, "[irq] pin %u -> %s\n", pin, level ? "high" : "low");
  switch (machineConfig.apic) {
    case ApicLocation::SERVER:
      KJ_IF_MAYBE(b, backend) {
        // Without an I/O APIC in the server the wire ends nowhere.
        if (b->ioApicBase() != nullptr) b->setIrqLine(pin, level);
      }
      break;
    case ApicLocation::IN_KERNEL: {
      // KVM's default routing sends GSI n < 24 to its I/O APIC's pin n
      // (and GSIs 0-15 to its PICs too).
      kvm_irq_level line;
      memset(&line, 0, sizeof(line));
      line.irq = pin;
      line.level = level ? 1 : 0;
      checkedIoctl(vmFd.get(), KVM_IRQ_LINE, &line, "KVM_IRQ_LINE");
      break;
    }
  }
}

void Machine::interruptDeliverable(uint32_t vcpu) {
  vcpuAt(vcpu).post([](Vcpu::Pending& p) { p.interrupt = true; });
}

void Machine::nmi(uint32_t vcpu, uint32_t count) {
  vcpuAt(vcpu).post([count](Vcpu::Pending& p) {
    p.nmis = count > UINT32_MAX - p.nmis ? UINT32_MAX : p.nmis + count;
  });
}

void Machine::init(uint32_t vcpu) {
  vcpuAt(vcpu).post([](Vcpu::Pending& p) {
    p.init = true;
    p.sipi = nullptr;
  });
}

void Machine::startup(uint32_t vcpu, uint8_t vector) {
  vcpuAt(vcpu).post([vector](Vcpu::Pending& p) { p.sipi = vector; });
}

void Machine::attention(uint32_t vcpu) {
  vcpuAt(vcpu).post([](Vcpu::Pending& p) { p.attention = true; });
}

void Machine::restored(uint32_t vcpu) {
  vcpuAt(vcpu).post([](Vcpu::Pending& p) { p.restored = true; });
}

void Machine::unhandledEvent(uint32_t vcpu, kj::StringPtr what) {
  stats.unhandledEvents++;
  KJ_LOG(INFO, "APIC event with no consumer in this front", vcpu, what);
}

void Machine::backendLost(kj::StringPtr why) {
  MachineExit exit;
  exit.kind = MachineExit::Kind::BACKEND_LOST;
  exit.message = kj::str("vlapicd went away: ", why);
  stop(kj::mv(exit));
}

}  // namespace vlapic::kvm
