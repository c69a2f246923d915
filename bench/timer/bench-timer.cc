// SPDX-License-Identifier: MIT
// bench-timer: how late LAPIC timer expiries reach a front through a real
// vlapicd, and whether periodic timers drift.
//
// It starts vlapicd on a temporary Unix socket (or uses --socket), creates a
// VM through the client library's promise-based API and, on several vCPUs at
// once (--vcpus):
//   * one-shot: writes a random initial count (10 us - 10 ms at 1 ns a count),
//     waits until the timer vector is deliverable, then acknowledges and EOIs
//     it as a guest's handler would;
//   * TSC-deadline: the same with IA32_TSC_DEADLINE at a random absolute
//     deadline 10 us - 10 ms ahead;
//   * periodic: runs a 1 ms periodic timer for thousands of periods and
//     counts its TIMER events.
// Lateness = when the client received the event - the deadline, both
// CLOCK_MONOTONIC on this host. For one-shot timers the deadline is the one
// vlapicd reports in the write's reply (AccessResult.timerDeadlineNs); for
// TSC-deadline timers it is the deadline the client chose (the VM's guest TSC
// runs at 1 GHz from a known offset, so TSC = ns + offset exactly); for
// periodic timers it is the first deadline plus whole periods. Drift is taken
// from the lower envelope of periodic lateness (and, for comparison, a
// least-squares fit), and vlapicd's own grid is checked at the end.
//
// The one-shot and TSC-deadline runs are made with each way a client can
// wait, side by side: over RPC blocking in epoll until the event wakes it
// (a plain front), over RPC waking ahead of the deadline vlapicd reported
// (client/lib/wake_ahead.h: sleep until deadline - margin, then poll), and
// over the shared-memory channel with a thread per vCPU (as vlapic-kvm),
// blocking on the attention eventfd or waking ahead. The headline
// (lateness_median_us) is the channel waking ahead, what vlapic-kvm's
// halted vCPUs do; each way's CPU cost per expiry is printed beside it.
//
// Two floors at the same random delays put the figures in context: a timerfd
// in this process (one wake-up), and a timerfd in a second process that wakes
// this one through a pipe (two wake-ups, the shape of any timer server, with
// no RPC).

#include "bench/common/stats.h"
#include "client/lib/vlapic_client.h"
#include "schema/channel/channel.h"
#include "server/core/timer.h"   // ApicTimer, GuestTsc: the in-process figure

#include <kj/async-io.h>
#include <kj/debug.h>
#include <kj/thread.h>
#include <kj/string.h>
#include <kj/vector.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fcntl.h>
#include <random>
#include <signal.h>
#include <sys/timerfd.h>
#include <sys/wait.h>
#include <poll.h>
#include <unistd.h>

namespace vlapic::bench {
namespace {

using client::AccessOutcome;
using client::AsyncVcpu;
using client::AsyncVm;
using client::Connection;
using client::Event;
using client::EventKind;
using client::VcpuInfo;
using client::VmOptions;

// xAPIC MMIO addresses at the default base (the register table's offsets).
constexpr uint64_t mmio(Reg reg) { return kDefaultApicBase + regOffset(reg); }
constexpr uint64_t kEoi = mmio(Reg::EOI);
constexpr uint64_t kSvr = mmio(Reg::SVR);
constexpr uint64_t kLvtTimer = mmio(Reg::LVT_TIMER);
constexpr uint64_t kInitialCount = mmio(Reg::TIMER_INITIAL_COUNT);
constexpr uint64_t kDivideConfig = mmio(Reg::TIMER_DIVIDE_CONFIG);
constexpr uint32_t kDivideBy1 = 0xB;
constexpr uint8_t kTimerVector = 0xEC;
constexpr uint32_t kModeOneShot = 0u << 17, kModePeriodic = 1u << 17,
                   kModeTscDeadline = 2u << 17;

constexpr uint64_t kMinDelayNs = 10'000, kMaxDelayNs = 10'000'000;
constexpr uint64_t kPeriodNs = 1'000'000;  // 1 ms, 1'000'000 counts at 1 GHz

uint64_t nowNs() {
  struct timespec ts;
  KJ_SYSCALL(clock_gettime(CLOCK_MONOTONIC, &ts));
  return uint64_t(ts.tv_sec) * 1'000'000'000ull + uint64_t(ts.tv_nsec);
}

// ---------------------------------------------------------------------------
// Figures

// Lateness figures in us, by bench/common/stats.h's nearest rank (the p99
// is the one figure beyond its Spread).
struct Summary {
  size_t samples = 0;
  double medianUs = 0, p10Us = 0, p90Us = 0, p99Us = 0, maxUs = 0, minUs = 0;
};

Summary summarize(kj::ArrayPtr<const int64_t> latenessNs) {
  std::vector<double> us;
  us.reserve(latenessNs.size());
  for (int64_t ns: latenessNs) us.push_back(double(ns) / 1000.0);
  Samples samples(std::move(us));
  Summary s;
  s.samples = samples.count();
  s.minUs = samples.min();
  s.p10Us = samples.percentile(0.1);
  s.medianUs = samples.median();
  s.p90Us = samples.percentile(0.9);
  s.p99Us = samples.percentile(0.99);
  s.maxUs = samples.max();
  return s;
}

void printRow(const char* label, const Summary& s) {
  printf("  %-38s %8zu %9.1f %9.1f %9.1f %9.1f %9.1f %9.1f\n", label, s.samples, s.minUs,
         s.p10Us, s.medianUs, s.p90Us, s.p99Us, s.maxUs);
}

void printHeader() {
  printf("  %-38s %8s %9s %9s %9s %9s %9s %9s\n", "lateness (us)", "samples", "min", "p10",
         "median", "p90", "p99", "max");
}

// CPU time of this whole process (the client: vlapicd is another process).
uint64_t processCpuNs() {
  struct timespec ts;
  KJ_SYSCALL(clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts));
  return uint64_t(ts.tv_sec) * 1'000'000'000ull + uint64_t(ts.tv_nsec);
}

// ---------------------------------------------------------------------------
// The floor: a timerfd in this process, no server.

kj::Array<int64_t> measureLocalTimerfd(std::mt19937_64& rng, size_t samples) {
  int fd;
  KJ_SYSCALL(fd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC));
  KJ_DEFER(close(fd));
  std::uniform_int_distribution<uint64_t> delays(kMinDelayNs, kMaxDelayNs);
  auto lateness = kj::heapArrayBuilder<int64_t>(samples);
  for (size_t i = 0; i < samples; ++i) {
    uint64_t deadline = nowNs() + delays(rng);
    struct itimerspec spec = {};
    spec.it_value.tv_sec = deadline / 1'000'000'000ull;
    spec.it_value.tv_nsec = deadline % 1'000'000'000ull;
    KJ_SYSCALL(timerfd_settime(fd, TFD_TIMER_ABSTIME, &spec, nullptr));
    uint64_t expirations;
    ssize_t n;
    KJ_SYSCALL(n = read(fd, &expirations, sizeof(expirations)));
    lateness.add(int64_t(nowNs() - deadline));
  }
  return lateness.finish();
}

// What the timer state machine itself costs per periodic expiry (expire(),
// the next deadline and a current-count read) on a virtual clock: the part of
// the lateness the arithmetic could be responsible for. Median of 5 runs.
double measureCoreExpiryNs() {
  constexpr int kIterations = 200'000;
  double runs[5];
  for (double& run: runs) {
    hal::ManualClock clock;
    GuestTsc tsc(clock, 2'000'000'000);
    ApicTimer timer(tsc, TimerConfig());
    timer.setMode(TimerMode::PERIODIC);
    timer.writeDivideConfig(kDivideBy1);
    timer.writeInitialCount(uint32_t(kPeriodNs));
    uint64_t sink = 0;
    uint64_t start = nowNs();
    for (int i = 0; i < kIterations; ++i) {
      clock.advance(kPeriodNs);
      sink += timer.expire();
      KJ_IF_MAYBE(deadline, timer.deadlineNs()) sink += *deadline;
      sink += timer.currentCount();
    }
    run = double(nowNs() - start) / kIterations;
    KJ_ASSERT(sink != 0);
  }
  std::sort(runs, runs + 5);
  return runs[2];
}

// The floor of a server design: a timerfd in another process whose expiry
// wakes this one through a pipe (two wake-ups, no RPC), at the same delays.
kj::Array<int64_t> measureTwoProcessTimerfd(std::mt19937_64& rng, size_t samples) {
  int toChild[2], toParent[2];
  KJ_SYSCALL(pipe2(toChild, O_CLOEXEC));
  KJ_SYSCALL(pipe2(toParent, O_CLOEXEC));
  pid_t child = fork();
  KJ_REQUIRE(child >= 0, "fork failed", strerror(errno));
  if (child == 0) {
    close(toChild[1]);
    close(toParent[0]);
    int fd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC);
    uint64_t deadline;
    while (fd >= 0 && read(toChild[0], &deadline, sizeof(deadline)) == sizeof(deadline)) {
      struct itimerspec spec = {};
      spec.it_value.tv_sec = deadline / 1'000'000'000ull;
      spec.it_value.tv_nsec = deadline % 1'000'000'000ull;
      uint64_t expirations;
      if (timerfd_settime(fd, TFD_TIMER_ABSTIME, &spec, nullptr) < 0 ||
          read(fd, &expirations, sizeof(expirations)) != sizeof(expirations) ||
          write(toParent[1], &deadline, sizeof(deadline)) != sizeof(deadline)) {
        break;
      }
    }
    _exit(0);
  }
  close(toChild[0]);
  close(toParent[1]);
  KJ_DEFER({
    close(toChild[1]);
    close(toParent[0]);
    int status;
    while (waitpid(child, &status, 0) < 0 && errno == EINTR) {}
  });
  std::uniform_int_distribution<uint64_t> delays(kMinDelayNs, kMaxDelayNs);
  auto lateness = kj::heapArrayBuilder<int64_t>(samples);
  for (size_t i = 0; i < samples; ++i) {
    uint64_t deadline = nowNs() + delays(rng);
    KJ_SYSCALL(write(toChild[1], &deadline, sizeof(deadline)));
    uint64_t echoed;
    ssize_t n;
    KJ_SYSCALL(n = read(toParent[0], &echoed, sizeof(echoed)));
    KJ_REQUIRE(n == sizeof(echoed) && echoed == deadline, "timer child failed");
    lateness.add(int64_t(nowNs() - deadline));
  }
  return lateness.finish();
}

// ---------------------------------------------------------------------------
// vlapicd as a child process

class Daemon {
public:
  Daemon(kj::StringPtr binary, kj::StringPtr socketPath, kj::StringPtr logPath) {
    pid = fork();
    KJ_REQUIRE(pid >= 0, "fork failed", strerror(errno));
    if (pid == 0) {
      int log = open(logPath.cStr(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
      if (log >= 0) {
        dup2(log, STDOUT_FILENO);
        dup2(log, STDERR_FILENO);
      }
      execl(binary.cStr(), binary.cStr(), "--socket", socketPath.cStr(), (char*)nullptr);
      fprintf(stderr, "exec %s: %s\n", binary.cStr(), strerror(errno));
      _exit(127);
    }
  }
  ~Daemon() noexcept(false) { stop(); }
  KJ_DISALLOW_COPY(Daemon);

  // SIGTERM is vlapicd's clean shutdown; returns its exit status.
  int stop() {
    if (pid <= 0) return exitStatus;
    kill(pid, SIGTERM);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
    pid = 0;
    exitStatus = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    return exitStatus;
  }
  bool running() {
    if (pid <= 0) return false;
    int status;
    return waitpid(pid, &status, WNOHANG) == 0;
  }

private:
  pid_t pid = 0;
  int exitStatus = 0;
};

// ---------------------------------------------------------------------------
// Expiry events, routed per vCPU
//
// One-shot and TSC-deadline runs wait for the timer vector to become
// deliverable (a DELIVERABLE event), which is what a front injects from, and
// acknowledge + EOI it before arming again, as a guest's handler would. That
// also covers a deadline already past when the write arrives: vlapicd then
// raises the interrupt inside the write, which makes it deliverable but does
// not post a TIMER event. Periodic runs count TIMER events, whose `count`
// says how many periods were merged.

struct Arrival {
  uint64_t receivedNs;
  uint32_t count;  // TIMER: periods merged into this event
};

class ExpiryWatch {
public:
  explicit ExpiryWatch(uint32_t vcpus) : perVcpu(kj::heapArray<PerVcpu>(vcpus)) {}

  void onEvents(kj::ArrayPtr<const Event> events) {
    uint64_t received = nowNs();
    for (auto& event: events) {
      if (event.vcpu >= perVcpu.size()) continue;
      auto& v = perVcpu[event.vcpu];
      if (event.kind == EventKind::TIMER) {
        ++timerEvents;
        if (event.count > 1) mergedPeriods += event.count - 1;
        if (v.recordTimerEvents) v.arrivals.add(Arrival{received, event.count});
      } else if (event.kind == EventKind::DELIVERABLE && event.vector == kTimerVector) {
        KJ_IF_MAYBE(waiter, v.waiter) {
          (*waiter)->fulfill(Arrival{received, 1});
          v.waiter = nullptr;
        }
      }
    }
  }

  // The next time the timer vector becomes deliverable on `vcpu`.
  kj::Promise<Arrival> nextDeliverable(uint32_t vcpu) {
    auto paf = kj::newPromiseAndFulfiller<Arrival>();
    perVcpu[vcpu].waiter = kj::mv(paf.fulfiller);
    return kj::mv(paf.promise);
  }
  void recordTimerEvents(uint32_t vcpu, bool on) { perVcpu[vcpu].recordTimerEvents = on; }
  kj::ArrayPtr<const Arrival> arrivals(uint32_t vcpu) const { return perVcpu[vcpu].arrivals; }

  uint64_t timerEvents = 0, mergedPeriods = 0;

private:
  struct PerVcpu {
    kj::Maybe<kj::Own<kj::PromiseFulfiller<Arrival>>> waiter;
    bool recordTimerEvents = false;
    kj::Vector<Arrival> arrivals;
  };
  kj::Array<PerVcpu> perVcpu;
};

void requireOk(const AccessOutcome& outcome, const char* what) {
  KJ_REQUIRE(outcome.status == AccessStatus::OK, "register access failed", what,
             accessReasonName(outcome.reason));
}

// ---------------------------------------------------------------------------
// The runs

struct Run {
  Connection& connection;
  AsyncVm& vm;
  // The client's wait: plain blocking (nullptr) or waking ahead of the
  // deadlines vlapicd reports (client/lib/wake_ahead.h).
  kj::Maybe<client::WakeAheadWaiter&> waiter;
  kj::ArrayPtr<kj::Own<AsyncVcpu>> vcpus;
  ExpiryWatch& watch;
  kj::Timer& timer;
  kj::WaitScope& waitScope;
  std::mt19937_64& rng;
  int64_t tscOffset;

  uint64_t delay() {
    return std::uniform_int_distribution<uint64_t>(kMinDelayNs, kMaxDelayNs)(rng);
  }

  // The guest's interrupt handler: take the vector (as the front injects it)
  // and EOI it, until nothing is left pending.
  kj::Promise<void> handleInterrupts(AsyncVcpu& vcpu) {
    return vcpu.acknowledge().then([this, &vcpu](client::Acknowledged ack) -> kj::Promise<void> {
      if (ack.vector == nullptr) return kj::READY_NOW;
      return vcpu.mmioWrite(kEoi, 4, 0).then([this, &vcpu](AccessOutcome o) {
        requireOk(o, "EOI");
        return handleInterrupts(vcpu);
      });
    });
  }

  void setUp(uint32_t mode) {
    auto writes = kj::heapArrayBuilder<kj::Promise<void>>(vcpus.size());
    for (auto& vcpu: vcpus) {
      auto& v = *vcpu;
      writes.add(v.mmioWrite(kSvr, 4, 0x100 | 0xFF)
          .then([&v](AccessOutcome o) {
            requireOk(o, "SVR");
            return v.mmioWrite(kDivideConfig, 4, kDivideBy1);
          }).then([&v, mode](AccessOutcome o) {
            requireOk(o, "DCR");
            return v.mmioWrite(kLvtTimer, 4, kTimerVector | mode);
          }).then([this, &v](AccessOutcome o) {
            requireOk(o, "LVT Timer");
            return handleInterrupts(v);  // a clean IRR from a previous phase
          }));
    }
    kj::joinPromises(writes.finish()).wait(waitScope);
  }

  // An expiry that never becomes deliverable is counted as lost instead of
  // stalling the run: give up a second after the longest delay.
  size_t lost = 0;
  kj::Promise<kj::Maybe<Arrival>> awaitExpiry(kj::Promise<Arrival> expiry) {
    return timer.timeoutAfter((kMaxDelayNs + 1'000'000'000) * kj::NANOSECONDS, kj::mv(expiry))
        .then([](Arrival a) -> kj::Maybe<Arrival> { return a; },
              [this](kj::Exception&&) -> kj::Maybe<Arrival> {
                ++lost;
                return nullptr;
              });
  }

  // Run `loop(vcpu, endNs)` on every vCPU at once for `durationNs`.
  template <typename Loop>
  void onEveryVcpu(uint64_t durationNs, Loop&& loop) {
    uint64_t endNs = nowNs() + durationNs;
    auto loops = kj::heapArrayBuilder<kj::Promise<void>>(vcpus.size());
    for (uint32_t i = 0; i < vcpus.size(); ++i) loops.add(loop(i, endNs));
    waitFor(kj::joinPromises(loops.finish()));
  }

  void waitFor(kj::Promise<void> done) {
    KJ_IF_MAYBE(w, waiter) {
      w->wait(kj::mv(done), waitScope, vm.timerDeadlines());
    } else {
      done.wait(waitScope);
    }
  }

  // One-shot: initial count = delay; the deadline is what vlapicd reports
  // in the write's reply (AccessResult.timerDeadlineNs).
  kj::Promise<void> oneShotLoop(uint32_t index, uint64_t endNs, kj::Vector<int64_t>& out,
                                size_t& estimated) {
    if (nowNs() >= endNs) return kj::READY_NOW;
    auto& vcpu = *vcpus[index];
    uint64_t count = delay();
    auto expiry = watch.nextDeliverable(index);
    uint64_t sentNs = nowNs();
    return vcpu.mmioWrite(kInitialCount, 4, count)
        .then([this, expiry = kj::mv(expiry), sentNs, count, &estimated](AccessOutcome o) mutable {
      requireOk(o, "initial count");
      uint64_t deadline;
      KJ_IF_MAYBE(d, o.timerDeadlineNs) {
        deadline = *d;
      } else {
        // Not armed after the write (cannot happen for a count of 10 us or
        // more): take send time + count, which underestimates the lateness.
        deadline = sentNs + count;
        ++estimated;
      }
      return awaitExpiry(kj::mv(expiry)).then([deadline](kj::Maybe<Arrival> arrival) {
        return arrival.map([deadline](Arrival a) { return int64_t(a.receivedNs - deadline); });
      });
    }).then([this, &vcpu, &out](kj::Maybe<int64_t> lateness) {
      KJ_IF_MAYBE(l, lateness) out.add(*l);
      return handleInterrupts(vcpu);
    }).then([this, index, endNs, &out, &estimated]() {
      return oneShotLoop(index, endNs, out, estimated);
    });
  }

  // TSC-deadline: an absolute deadline chosen by the client.
  kj::Promise<void> tscDeadlineLoop(uint32_t index, uint64_t endNs, kj::Vector<int64_t>& out,
                                    size_t& pastOnArrival) {
    if (nowNs() >= endNs) return kj::READY_NOW;
    auto& vcpu = *vcpus[index];
    uint64_t deadline = nowNs() + delay();
    auto expiry = watch.nextDeliverable(index);
    // Guest TSC at 1 GHz: tsc = ns + offset, so this deadline is exactly
    // host ns `deadline`.
    uint64_t tsc = deadline + uint64_t(tscOffset);
    return vcpu.msrWrite(kMsrTscDeadline, tsc)
        .then([this, expiry = kj::mv(expiry), &pastOnArrival](AccessOutcome o) mutable {
          requireOk(o, "IA32_TSC_DEADLINE");
          // The deadline had passed when the write reached vlapicd: the
          // interrupt is pending in the reply already (SDM 11.5.4.1).
          if (o.pendingVector == kj::Maybe<uint8_t>(kTimerVector)) ++pastOnArrival;
          return awaitExpiry(kj::mv(expiry));
        }).then([this, &vcpu, deadline, &out](kj::Maybe<Arrival> arrival) {
          KJ_IF_MAYBE(a, arrival) out.add(int64_t(a->receivedNs - deadline));
          return handleInterrupts(vcpu);
        }).then([this, index, endNs, &out, &pastOnArrival]() {
          return tscDeadlineLoop(index, endNs, out, pastOnArrival);
        });
  }

  struct PeriodicResult {
    kj::Vector<int64_t> latenessNs;
    kj::Vector<double> driftPpm;        // lower envelope, per vCPU
    kj::Vector<double> leastSquaresPpm; // per vCPU, for comparison
    uint64_t periods = 0;
    int64_t worstServerGridErrorNs = 0;
  };

  PeriodicResult periodic(uint64_t durationNs) {
    PeriodicResult result;
    kj::Vector<uint64_t> firstDeadline;
    for (uint32_t i = 0; i < vcpus.size(); ++i) watch.recordTimerEvents(i, true);
    // Start every vCPU and learn its first deadline from vlapicd (the info
    // call is pipelined behind the write, so it is served long before the
    // first 1 ms period ends).
    {
      auto starts = kj::heapArrayBuilder<kj::Promise<uint64_t>>(vcpus.size());
      for (auto& vcpu: vcpus) {
        auto write = vcpu->mmioWrite(kInitialCount, 4, kPeriodNs);
        auto info = vcpu->info();
        starts.add(write.then([info = kj::mv(info)](AccessOutcome o) mutable {
          requireOk(o, "initial count");
          return kj::mv(info);
        }).then([](VcpuInfo info) -> uint64_t {
          KJ_IF_MAYBE(d, info.timerDeadlineNs) return *d;
          KJ_FAIL_REQUIRE("periodic timer is not armed after its initial-count write");
        }));
      }
      for (uint64_t first: kj::joinPromises(starts.finish()).wait(waitScope)) {
        firstDeadline.add(first);
      }
    }
    waitFor(timer.afterDelay(durationNs * kj::NANOSECONDS));
    // The server's grid after thousands of periods, before stopping it.
    kj::Vector<uint64_t> finalDeadline;
    for (auto& vcpu: vcpus) {
      VcpuInfo info = vcpu->info().wait(waitScope);
      KJ_IF_MAYBE(d, info.timerDeadlineNs) finalDeadline.add(*d);
      else finalDeadline.add(0);
    }
    for (auto& vcpu: vcpus) {
      requireOk(vcpu->mmioWrite(kInitialCount, 4, 0).wait(waitScope), "stop");
    }
    // Let events already on their way arrive before the tally.
    timer.afterDelay(50 * kj::MILLISECONDS).wait(waitScope);
    for (uint32_t i = 0; i < vcpus.size(); ++i) watch.recordTimerEvents(i, false);

    for (uint32_t i = 0; i < vcpus.size(); ++i) {
      auto arrivals = watch.arrivals(i);
      uint64_t first = firstDeadline[i];
      // Least squares of arrival time over period number.
      double n = 0, sx = 0, sy = 0, sxx = 0, sxy = 0;
      uint64_t k = 0;
      for (auto& a: arrivals) {
        k += a.count;  // the event covers periods up to k (1-based)
        uint64_t due = first + (k - 1) * kPeriodNs;
        result.latenessNs.add(int64_t(a.receivedNs - due));
        double x = double(k), y = double(int64_t(a.receivedNs - first));
        n += 1; sx += x; sy += y; sxx += x * x; sxy += x * y;
      }
      result.periods += k;
      if (n >= 2) {
        double slope = (n * sxy - sx * sy) / (n * sxx - sx * sx);
        result.leastSquaresPpm.add((slope - double(kPeriodNs)) / double(kPeriodNs) * 1e6);
      }
      // Drift from the lower envelope: the least-late arrival of the first
      // and of the last quarter of the run. Scheduling noise only ever adds
      // lateness, so the minimum is stable and its change over the run is
      // the timer's own drift (a few us over seconds: well under 1 ppm of
      // resolution), where a least-squares fit is pulled by bursts of load.
      size_t quarter = arrivals.size() / 4;
      if (quarter >= 1) {
        auto lateness = result.latenessNs.slice(result.latenessNs.size() - arrivals.size(),
                                                result.latenessNs.size());
        auto envelope = [&](size_t from, size_t to) {
          size_t best = from;
          for (size_t j = from; j < to; ++j) {
            if (lateness[j] < lateness[best]) best = j;
          }
          return best;
        };
        size_t early = envelope(0, quarter);
        size_t late = envelope(arrivals.size() - quarter, arrivals.size());
        double span = double(arrivals[late].receivedNs - arrivals[early].receivedNs);
        if (span > 0) {
          result.driftPpm.add(double(lateness[late] - lateness[early]) / span * 1e6);
        }
      }
      if (finalDeadline[i] != 0) {
        // vlapicd's next deadline must sit exactly on the grid.
        int64_t offGrid = int64_t((finalDeadline[i] - first) % kPeriodNs);
        if (offGrid > int64_t(kPeriodNs / 2)) offGrid -= int64_t(kPeriodNs);
        if (std::abs(offGrid) > std::abs(result.worstServerGridErrorNs)) {
          result.worstServerGridErrorNs = offGrid;
        }
      }
    }
    return result;
  }
};

// ---------------------------------------------------------------------------
// The exit fast path: each vCPU on its own thread with its own shared-memory
// channel (schema/channel), as vlapic-kvm runs. vlapicd raises the channel's
// attention flag at the expiry; the front sees it (blocking on the
// attention eventfd, or polling the flag when it woke ahead) and fetches
// the events with one call. Lateness is when the DELIVERABLE event is in
// the front's hands (the fetch's reply) - the deadline. Even vCPUs arm
// one-shot timers, whose deadline the front asks vlapicd for (Vcpu.info on
// its RPC connection: the channel's reply does not carry it, which is what
// vlapic-kvm does at a halt); odd vCPUs arm TSC deadlines they computed.

struct ChannelRun {
  uint64_t durationNs;
  int64_t tscOffset;
  bool wakeAhead;
  uint64_t seed;
  kj::Vector<int64_t> latenessNs;
  // When the front first saw the attention flag (waking ahead): what
  // vlapicd's loop took, apart from the fetch through its channel thread.
  kj::Vector<int64_t> flagSeenNs;
  client::WakeAheadStats stats;
  size_t lost = 0;
  channel::FrontStats front;   // the channel front's own waits for replies
};

void channelVcpu(const client::VcpuTicket& ticket, ChannelRun& run) {
  auto handle = client::openVcpu(ticket);
  auto front = channel::ChannelFront::connect(handle->openChannel());
  std::mt19937_64 rng(run.seed);
  bool oneShot = ticket.index % 2 == 0;
  auto call = [&](const channel::Request& request) {
    auto reply = front->call(request);
    KJ_REQUIRE(reply.kind != channel::Reply::Kind::REJECTED, "channel request rejected",
               channel::rejectionName(reply.rejection));
    return reply;
  };
  auto write = [&](uint64_t gpa, uint32_t value) {
    auto reply = call(channel::Request::mmioWrite(gpa, 4, value));
    KJ_REQUIRE(reply.status == AccessStatus::OK, "register write failed", gpa);
  };
  write(kSvr, 0x100 | 0xFF);
  write(kDivideConfig, kDivideBy1);
  write(kLvtTimer, kTimerVector | (oneShot ? kModeOneShot : kModeTscDeadline));
  // The periodic phase leaves its last vector pending: take it, or the first
  // expiry here would find it in IRR already and raise nothing new.
  while (call(channel::Request::acknowledge()).inject != nullptr) write(kEoi, 0);
  // Takes the events of a reply (and of more fetches while it says there
  // are more): whether the timer vector became deliverable.
  auto deliverable = [&](channel::Reply reply) {
    bool found = false;
    for (;;) {
      for (auto& e: reply.events()) {
        found = found || (e.kind == channel::EventKind::DELIVERABLE && e.vector == kTimerVector);
      }
      if (!reply.moreEvents) return found;
      reply = call(channel::Request::fetchEvents());
    }
  };
  // Sleeps on the attention eventfd (ns resolution), until `wakeAtNs`.
  auto sleepUntil = [&](kj::Maybe<uint64_t> wakeAtNs) -> bool {
    for (;;) {
      if (front->attentionPending()) return true;
      struct pollfd fd = {front->attentionFd(), POLLIN, 0};
      struct timespec timeout;
      struct timespec* limit = nullptr;
      KJ_IF_MAYBE(at, wakeAtNs) {
        uint64_t now = nowNs();
        if (now >= *at) return front->attentionPending();
        timeout.tv_sec = (*at - now) / 1'000'000'000ull;
        timeout.tv_nsec = (*at - now) % 1'000'000'000ull;
        limit = &timeout;
      }
      int n = ppoll(&fd, 1, limit, nullptr);
      if (n < 0 && errno != EINTR) KJ_FAIL_SYSCALL("ppoll", errno);
      front->consumeAttentionNotification();
      if (n == 0) return front->attentionPending();
    }
  };
  client::WakeAheadPolicy policy;
  bool early = false;   // the wake-up's fetch already brought the vector
  uint64_t earlyNs = 0;
  uint64_t endNs = nowNs() + run.durationNs;
  while (nowNs() < endNs) {
    uint64_t delay = std::uniform_int_distribution<uint64_t>(kMinDelayNs, kMaxDelayNs)(rng);
    uint64_t deadline;
    early = false;
    // A deadline already past when the write arrives raises the vector
    // within it (SDM 11.5.4.1): the reply carries the events.
    auto armed = [&](channel::Reply reply) {
      KJ_REQUIRE(reply.status == AccessStatus::OK, "timer write failed");
      if (deliverable(kj::mv(reply))) {
        early = true;
        earlyNs = nowNs();
      }
    };
    if (oneShot) {
      uint64_t sentNs = nowNs();
      armed(call(channel::Request::mmioWrite(kInitialCount, 4, delay)));
      deadline = handle->info().timerDeadlineNs.orDefault(sentNs + delay);
    } else {
      deadline = nowNs() + delay;
      armed(call(channel::Request::msrWrite(kMsrTscDeadline, deadline + uint64_t(run.tscOffset))));
    }
    client::WakeAheadHooks hooks;
    hooks.nowNs = []() { return nowNs(); };
    hooks.sleepUntil = sleepUntil;
    uint64_t flagSeenAt = 0;
    hooks.arrived = [&]() {
      if (early) return true;
      bool raised = front->attentionPending();
      if (raised && flagSeenAt == 0) flagSeenAt = nowNs();
      return raised;
    };
    if (run.wakeAhead) {
      // Wake vlapicd's channel thread too, ahead of the expiry.
      hooks.keepWarm = kj::Function<void()>([&]() {
        if (deliverable(call(channel::Request::fetchEvents()))) {
          early = true;
          earlyNs = nowNs();
        }
      });
    }
    bool got = false;
    uint64_t giveUp = deadline + 1'000'000'000;
    while (!got && !early) {
      if (nowNs() > giveUp) break;
      if (run.wakeAhead) {
        client::waitAhead(policy, run.stats, deadline, hooks);
      } else {
        sleepUntil(giveUp);
      }
      if (early) break;
      if (front->attentionPending()) got = deliverable(call(channel::Request::fetchEvents()));
    }
    if (early || got) {
      // (A one-shot timer can expire before its deadline is known: the
      // fetch came first; its lateness is then under-counted, never more.)
      run.latenessNs.add(int64_t((early ? earlyNs : nowNs()) - deadline));
      if (flagSeenAt != 0) run.flagSeenNs.add(int64_t(flagSeenAt - deadline));
    } else {
      ++run.lost;
    }
    // The guest's handler: take the vector and EOI it, until none is left.
    while (call(channel::Request::acknowledge()).inject != nullptr) write(kEoi, 0);
  }
  run.front = front->stats();
}

// Runs every vCPU's channel loop on its own thread; returns the lateness of
// all and this process's CPU time over the run.
struct ChannelFigures {
  kj::Vector<int64_t> latenessNs;
  kj::Vector<int64_t> flagSeenNs;
  client::WakeAheadStats stats;
  uint64_t cpuNs = 0, wallNs = 0;
  size_t lost = 0;
  channel::FrontStats front;
};

ChannelFigures channelRuns(kj::ArrayPtr<const client::VcpuTicket> tickets, uint64_t durationNs,
                           int64_t tscOffset, bool wakeAhead, std::mt19937_64& rng) {
  auto runs = kj::heapArrayBuilder<ChannelRun>(tickets.size());
  for (size_t i = 0; i < tickets.size(); ++i) {
    runs.add(ChannelRun{durationNs, tscOffset, wakeAhead, rng(), {}, {}, {}, 0, {}});
  }
  auto all = runs.finish();
  ChannelFigures figures;
  uint64_t cpuBefore = processCpuNs(), wallBefore = nowNs();
  {
    kj::Vector<kj::Own<kj::Thread>> threads;
    for (size_t i = 0; i < tickets.size(); ++i) {
      threads.add(kj::heap<kj::Thread>([&tickets, &all, i]() { channelVcpu(tickets[i], all[i]); }));
    }
  }   // joins
  figures.cpuNs = processCpuNs() - cpuBefore;
  figures.wallNs = nowNs() - wallBefore;
  for (auto& run: all) {
    figures.latenessNs.addAll(run.latenessNs);
    figures.flagSeenNs.addAll(run.flagSeenNs);
    figures.lost += run.lost;
    figures.stats.timedWakeUps += run.stats.timedWakeUps;
    figures.stats.pollHits += run.stats.pollHits;
    figures.stats.pollMisses += run.stats.pollMisses;
    figures.stats.contended += run.stats.contended;
    figures.stats.pollNs += run.stats.pollNs;
    figures.front.calls += run.front.calls;
    figures.front.pollHits += run.front.pollHits;
    figures.front.contended += run.front.contended;
    figures.front.sleeps += run.front.sleeps;
  }
  return figures;
}

struct Options {
  kj::String vlapicd;
  kj::Maybe<kj::String> socket;
  double seconds = 1.0;  // scale of every phase
  uint32_t vcpus = 4;    // timers running at once, one per vCPU
};

int run(const Options& options) {
  const uint32_t kVcpus = options.vcpus;
  std::mt19937_64 rng(20261122);

  printf("bench-timer: LAPIC timer lateness through vlapicd, as seen by a client\n");
  printf("  delays uniform in [%llu us, %llu ms], %u vCPUs at once, periodic %llu us\n",
         (unsigned long long)(kMinDelayNs / 1000), (unsigned long long)(kMaxDelayNs / 1'000'000),
         kVcpus, (unsigned long long)(kPeriodNs / 1000));
  fflush(stdout);

  auto floor = measureLocalTimerfd(rng, size_t(300 * options.seconds) + 20);
  auto twoProcessFloor = measureTwoProcessTimerfd(rng, size_t(300 * options.seconds) + 20);
  double coreExpiryNs = measureCoreExpiryNs();

  // A private socket in a fresh directory unless the user named a server.
  kj::String socketPath, logPath;
  kj::Maybe<kj::Own<Daemon>> daemon;
  char dirTemplate[] = "/tmp/bench-timer-XXXXXX";
  bool ownDir = false;
  KJ_IF_MAYBE(s, options.socket) {
    socketPath = kj::str(*s);
  } else {
    KJ_REQUIRE(mkdtemp(dirTemplate) != nullptr, "mkdtemp failed", strerror(errno));
    ownDir = true;
    socketPath = kj::str(dirTemplate, "/vlapicd.sock");
    logPath = kj::str(dirTemplate, "/vlapicd.log");
    daemon = kj::heap<Daemon>(options.vlapicd, socketPath, logPath);
  }
  KJ_DEFER({
    KJ_IF_MAYBE(d, daemon) (*d)->stop();
    if (ownDir) {
      unlink(socketPath.cStr());
      unlink(client::adminSocketPathFor(socketPath).cStr());
      unlink(logPath.cStr());
      rmdir(dirTemplate);
    }
  });

  auto io = kj::setupAsyncIo();
  kj::Own<Connection> connection;
  uint64_t giveUp = nowNs() + 10'000'000'000ull;
  for (;;) {
    KJ_IF_MAYBE(d, daemon) {
      if (!(*d)->running()) {
        fprintf(stderr, "bench-timer: vlapicd (%s) exited at start-up; its log:\n",
                options.vlapicd.cStr());
        FILE* f = fopen(logPath.cStr(), "r");
        if (f != nullptr) {
          char line[512];
          while (fgets(line, sizeof(line), f) != nullptr) fputs(line, stderr);
          fclose(f);
        }
        return 1;
      }
    }
    KJ_IF_MAYBE(e, kj::runCatchingExceptions([&]() {
      connection = Connection::connect(*io.lowLevelProvider, socketPath);
    })) {
      if (nowNs() > giveUp) {
        fprintf(stderr, "bench-timer: cannot connect to vlapicd at %s: %s\n",
                socketPath.cStr(), e->getDescription().cStr());
        return 1;
      }
      usleep(20'000);
      continue;
    }
    break;
  }

  ExpiryWatch watch(kVcpus);
  VmOptions vmOptions;
  vmOptions.vcpuCount = kVcpus;
  vmOptions.tscHz = 1'000'000'000;  // guest TSC = host ns + offset
  vmOptions.name = kj::str("bench-timer");
  auto vm = connection->createVm(kj::mv(vmOptions), [&watch](kj::ArrayPtr<const Event> events) {
    watch.onEvents(events);
  }).wait(io.waitScope);
  auto vcpus = kj::heapArrayBuilder<kj::Own<AsyncVcpu>>(kVcpus);
  for (uint32_t i = 0; i < kVcpus; ++i) vcpus.add(vm->vcpu(i));
  auto vcpuArray = vcpus.finish();
  int64_t tscOffset = vm->save().wait(io.waitScope).tscOffset;

  client::WakeAheadWaiter waiter(io.unixEventPort);
  Run runner{*connection, *vm, nullptr, vcpuArray, watch, io.provider->getTimer(), io.waitScope,
             rng, tscOffset};

  // One-shot and TSC-deadline timers, once with each wait: the client
  // blocking in epoll until the event wakes it (what any plain front does),
  // and the client waking ahead of the deadline vlapicd reported and
  // polling for the event. CPU time is this process's (the client's).
  struct ArmedRuns {
    kj::Vector<int64_t> oneShot, tscDeadline;
    size_t estimated = 0, pastOnArrival = 0;
    uint64_t cpuNs = 0, wallNs = 0;
    kj::Vector<int64_t> all() const {
      kj::Vector<int64_t> both;
      both.addAll(oneShot);
      both.addAll(tscDeadline);
      return both;
    }
  };
  auto armedRuns = [&](kj::Maybe<client::WakeAheadWaiter&> wait, ArmedRuns& out) {
    runner.waiter = wait;
    uint64_t cpuBefore = processCpuNs(), wallBefore = nowNs();
    runner.setUp(kModeOneShot);
    runner.onEveryVcpu(uint64_t(5e9 * options.seconds), [&](uint32_t i, uint64_t endNs) {
      return runner.oneShotLoop(i, endNs, out.oneShot, out.estimated);
    });
    runner.setUp(kModeTscDeadline);
    runner.onEveryVcpu(uint64_t(5e9 * options.seconds), [&](uint32_t i, uint64_t endNs) {
      return runner.tscDeadlineLoop(i, endNs, out.tscDeadline, out.pastOnArrival);
    });
    out.cpuNs = processCpuNs() - cpuBefore;
    out.wallNs = nowNs() - wallBefore;
  };
  ArmedRuns blocking, ahead;
  armedRuns(nullptr, blocking);
  armedRuns(waiter, ahead);
  auto waiterStats = waiter.stats();

  // Periodic, with the client blocking as before: the drift figure is
  // vlapicd's grid, measured the way it always was.
  runner.waiter = nullptr;
  runner.setUp(kModePeriodic);
  auto periodic = runner.periodic(uint64_t(10e9 * options.seconds));

  // Every expiry vlapicd counted (its LAPICs' statistics) against those its
  // TIMER events reported.
  uint64_t expiriesCounted = 0;
  for (auto& v: vm->stats().wait(io.waitScope).vcpus) expiriesCounted += v.timerExpiries;

  // The channel runs last: a vCPU's events go through its channel while it
  // is open, and back to the EventSink only once vlapicd saw it close.
  auto tickets = kj::heapArrayBuilder<client::VcpuTicket>(kVcpus);
  for (auto& vcpu: vcpuArray) tickets.add(vcpu->ticket().wait(io.waitScope));
  auto ticketArray = tickets.finish();
  uint64_t channelNs = uint64_t(5e9 * options.seconds);
  auto channelBlocking = channelRuns(ticketArray, channelNs, tscOffset, false, rng);
  // vlapicd's loop serves the fetch after a channel expiry when it comes
  // within its poll (server/daemon README): how often it did, in the phase
  // whose fronts wake ahead.
  // Server-wide counters are the operator's (its own socket).
  auto operatorConnection =
      Connection::connect(*io.lowLevelProvider, client::adminSocketPathFor(socketPath));
  auto loopBefore = operatorConnection->admin()->status().wait(io.waitScope);
  auto channelAhead = channelRuns(ticketArray, channelNs, tscOffset, true, rng);
  auto loopAfter = operatorConnection->admin()->status().wait(io.waitScope);
  operatorConnection = nullptr;
  vm->release().wait(io.waitScope);
  vm = nullptr;
  connection = nullptr;

  // The headline is the timers armed at random deadlines: the periodic ones
  // are reported beside them, not pooled in (their sample count is only a
  // matter of how many periods run).
  auto armedAhead = ahead.all();
  auto armedBlocking = blocking.all();
  Summary summaryArmed = summarize(armedAhead);
  Summary summaryBlocking = summarize(armedBlocking);
  Summary summaryPeriodic = summarize(periodic.latenessNs);
  Summary summaryChannelBlocking = summarize(channelBlocking.latenessNs);
  Summary summaryChannelAhead = summarize(channelAhead.latenessNs);

  double worstDrift = 0;
  for (double d: periodic.driftPpm) {
    if (std::abs(d) > std::abs(worstDrift)) worstDrift = d;
  }

  printf("\n");
  printHeader();
  printRow("timerfd in this process", summarize(floor));
  printRow("timerfd in a 2nd process + pipe", summarize(twoProcessFloor));
  printRow("one-shot, client blocks", summarize(blocking.oneShot));
  printRow("TSC-deadline, client blocks", summarize(blocking.tscDeadline));
  printRow("one-shot + TSC-deadline, client blocks", summaryBlocking);
  printRow("one-shot, client wakes ahead", summarize(ahead.oneShot));
  printRow("TSC-deadline, client wakes ahead", summarize(ahead.tscDeadline));
  printRow("one-shot + TSC-deadline, wakes ahead", summaryArmed);
  printRow("periodic 1 ms, client blocks", summaryPeriodic);
  printRow("channel, front blocks", summaryChannelBlocking);
  printRow("channel, front wakes ahead (headline)", summaryChannelAhead);
  printRow("  ... its attention flag seen", summarize(channelAhead.flagSeenNs));
  Summary floorSummary = summarize(floor);
  Summary twoProcessSummary = summarize(twoProcessFloor);
  if (floorSummary.medianUs > 0 && twoProcessSummary.medianUs > 0) {
    printf("  median ratio, one-shot + TSC-deadline woken ahead / in-process timerfd: %.2fx,"
           " / two-process timerfd: %.2fx; blocking / in-process timerfd: %.2fx\n",
           summaryArmed.medianUs / floorSummary.medianUs,
           summaryArmed.medianUs / twoProcessSummary.medianUs,
           summaryBlocking.medianUs / floorSummary.medianUs);
  }
  auto cpuPerExpiryUs = [](const ArmedRuns& r) {
    size_t n = r.oneShot.size() + r.tscDeadline.size();
    return n == 0 ? 0.0 : double(r.cpuNs) / 1000.0 / double(n);
  };
  auto corePercent = [](const ArmedRuns& r) {
    return r.wallNs == 0 ? 0.0 : 100.0 * double(r.cpuNs) / double(r.wallNs);
  };
  printf("  client CPU, one-shot + TSC-deadline phases: blocking %.1f us per expiry (%.1f%% of a"
         " core), waking ahead %.1f us per expiry (%.1f%% of a core)\n",
         cpuPerExpiryUs(blocking), corePercent(blocking), cpuPerExpiryUs(ahead),
         corePercent(ahead));
  printf("  wake-ahead: %llu timed wake-ups, %llu polls caught their event, %llu ran out,"
         " %llu stopped as contended; %.1f us polled per expiry; learned margin %.1f us,"
         " poll past the deadline %.1f us\n",
         (unsigned long long)waiterStats.timedWakeUps, (unsigned long long)waiterStats.pollHits,
         (unsigned long long)waiterStats.pollMisses, (unsigned long long)waiterStats.contended,
         armedAhead.size() == 0 ? 0.0
                                : double(waiterStats.pollNs) / 1000.0 / double(armedAhead.size()),
         double(waiter.policy().marginNs()) / 1000.0,
         double(waiter.policy().pollAfterNs()) / 1000.0);
  auto channelCpuUs = [](const ChannelFigures& f) {
    return f.latenessNs.size() == 0 ? 0.0 : double(f.cpuNs) / 1000.0 / double(f.latenessNs.size());
  };
  auto channelCore = [](const ChannelFigures& f) {
    return f.wallNs == 0 ? 0.0 : 100.0 * double(f.cpuNs) / double(f.wallNs);
  };
  printf("  channel (a thread per vCPU, as vlapic-kvm): front CPU blocking %.1f us per expiry"
         " (%.1f%% of a core), waking ahead %.1f us per expiry (%.1f%% of a core);"
         " wake-ahead %llu timed wake-ups, %llu polls caught the flag, %llu ran out,"
         " %llu contended; lost %zu + %zu\n",
         channelCpuUs(channelBlocking), channelCore(channelBlocking), channelCpuUs(channelAhead),
         channelCore(channelAhead), (unsigned long long)channelAhead.stats.timedWakeUps,
         (unsigned long long)channelAhead.stats.pollHits,
         (unsigned long long)channelAhead.stats.pollMisses,
         (unsigned long long)channelAhead.stats.contended, channelBlocking.lost, channelAhead.lost);
  printf("  vlapicd's loop after the channel expiries (fronts waking ahead): %llu polls served"
         " %llu fetches, %llu polls skipped by its back-off\n",
         (unsigned long long)(loopAfter.channelLoopPolls - loopBefore.channelLoopPolls),
         (unsigned long long)(loopAfter.channelLoopRequests - loopBefore.channelLoopRequests),
         (unsigned long long)(loopAfter.channelLoopSkipped - loopBefore.channelLoopSkipped));
  printf("  channel fronts waking ahead: %llu calls, %llu replies caught spinning, %llu slept"
         " for theirs, %llu spins contended\n",
         (unsigned long long)channelAhead.front.calls, (unsigned long long)channelAhead.front.pollHits,
         (unsigned long long)channelAhead.front.sleeps,
         (unsigned long long)channelAhead.front.contended);
  printf("  the timer arithmetic per periodic expiry (expire, deadline, count): %.0f ns\n",
         coreExpiryNs);
  printf("\n  periodic: %llu periods on %u vCPUs over %.1f s\n",
         (unsigned long long)periodic.periods, kVcpus, 10.0 * options.seconds);
  printf("  drift per vCPU, lower envelope (ppm):");
  for (double d: periodic.driftPpm) printf(" %+.3f", d);
  printf("\n  drift per vCPU, least squares (ppm): ");
  for (double d: periodic.leastSquaresPpm) printf(" %+.3f", d);
  printf("\n  vlapicd's periodic grid after the run: off by %lld ns (0 = exact)\n",
         (long long)periodic.worstServerGridErrorNs);
  printf("  TIMER events: %llu, periods merged into later events: %llu\n",
         (unsigned long long)watch.timerEvents, (unsigned long long)watch.mergedPeriods);
  uint64_t reported = watch.timerEvents + watch.mergedPeriods;
  printf("  expiries vlapicd counted: %llu, reported by TIMER events: %llu%s\n",
         (unsigned long long)expiriesCounted, (unsigned long long)reported,
         expiriesCounted == reported ? "" : " (the rest raised their vector without a TIMER event)");
  printf("  TSC deadlines already past when the WRMSR reached vlapicd: %zu of %zu\n",
         blocking.pastOnArrival + ahead.pastOnArrival,
         blocking.tscDeadline.size() + ahead.tscDeadline.size());
  printf("  armed timers whose vector never became deliverable (lost): %zu\n", runner.lost);
  if (blocking.estimated + ahead.estimated != 0) {
    printf("  one-shot timers not armed after their write: %zu\n"
           "  (their deadline taken as send time + count: lateness under-counted)\n",
           blocking.estimated + ahead.estimated);
  }

  KJ_IF_MAYBE(d, daemon) {
    int status = (*d)->stop();
    if (status != 0) printf("  vlapicd exited with status %d at SIGTERM\n", status);
  }

  // The headline is what a front should do, and what vlapic-kvm does: the
  // channel, waking ahead. Beside it: the plain blocking client over RPC
  // (the figure before deadline hints), RPC waking ahead, the channel
  // blocking, and what each costs the front in CPU per expiry.
  printf("RESULT timer lateness_median_us=%.1f lateness_p99_us=%.1f lateness_max_us=%.1f "
         "periodic_lateness_median_us=%.1f periodic_lateness_p99_us=%.1f drift_ppm=%.3f "
         "floor_median_us=%.1f two_process_floor_median_us=%.1f core_expiry_ns=%.0f "
         "samples=%zu blocking_lateness_median_us=%.1f blocking_lateness_p99_us=%.1f "
         "rpc_lateness_median_us=%.1f rpc_lateness_p99_us=%.1f "
         "channel_blocking_lateness_median_us=%.1f "
         "client_cpu_us_per_expiry=%.1f client_core_percent=%.1f "
         "blocking_client_cpu_us_per_expiry=%.1f blocking_client_core_percent=%.1f "
         "rpc_client_cpu_us_per_expiry=%.1f channel_blocking_client_cpu_us_per_expiry=%.1f\n",
         summaryChannelAhead.medianUs, summaryChannelAhead.p99Us, summaryChannelAhead.maxUs,
         summaryPeriodic.medianUs, summaryPeriodic.p99Us, worstDrift, floorSummary.medianUs,
         twoProcessSummary.medianUs, coreExpiryNs,
         summaryChannelAhead.samples + summaryArmed.samples + summaryBlocking.samples +
             summaryChannelBlocking.samples + summaryPeriodic.samples,
         summaryBlocking.medianUs, summaryBlocking.p99Us, summaryArmed.medianUs, summaryArmed.p99Us,
         summaryChannelBlocking.medianUs, channelCpuUs(channelAhead), channelCore(channelAhead),
         cpuPerExpiryUs(blocking), corePercent(blocking), cpuPerExpiryUs(ahead),
         channelCpuUs(channelBlocking));
  return 0;
}

void usage(const char* argv0) {
  printf("usage: %s [--vlapicd PATH] [--socket PATH] [--seconds SCALE] [--vcpus N]\n"
         "  --vlapicd PATH   vlapicd binary to start (default: the one built with this bench)\n"
         "  --socket PATH    use an already running vlapicd at PATH instead of starting one\n"
         "  --seconds SCALE  scale every phase (1.0: 5 s one-shot and 5 s TSC-deadline\n"
         "                   blocking, the same waking ahead, 10 s periodic, 5 s each\n"
         "                   on the channel blocking and waking ahead)\n"
         "  --vcpus N        timers running at once, one per vCPU (default 4)\n", argv0);
}

}  // namespace
}  // namespace vlapic::bench

int main(int argc, char** argv) {
  using namespace vlapic::bench;
  Options options;
  options.vlapicd = kj::str(VLAPICD_PATH);
  for (int i = 1; i < argc; ++i) {
    kj::StringPtr arg = argv[i];
    bool hasValue = i + 1 < argc;
    if (arg == "--vlapicd" && hasValue) {
      options.vlapicd = kj::str(argv[++i]);
    } else if (arg == "--socket" && hasValue) {
      options.socket = kj::str(argv[++i]);
    } else if (arg == "--seconds" && hasValue) {
      char* end;
      options.seconds = strtod(argv[++i], &end);
      if (*end != '\0' || !(options.seconds > 0) || options.seconds > 100) {
        fprintf(stderr, "bench-timer: --seconds wants a positive number\n");
        return 2;
      }
    } else if (arg == "--vcpus" && hasValue) {
      char* end;
      unsigned long n = strtoul(argv[++i], &end, 10);
      if (*end != '\0' || n < 1 || n > 64) {
        fprintf(stderr, "bench-timer: --vcpus wants 1 to 64\n");
        return 2;
      }
      options.vcpus = uint32_t(n);
    } else if (arg == "--help" || arg == "-h") {
      usage(argv[0]);
      return 0;
    } else {
      fprintf(stderr, "bench-timer: unknown argument '%s'\n", argv[i]);
      usage(argv[0]);
      return 2;
    }
  }
  int status = 1;
  KJ_IF_MAYBE(e, kj::runCatchingExceptions([&]() { status = run(options); })) {
    fprintf(stderr, "bench-timer: %s\n", e->getDescription().cStr());
    return 1;
  }
  return status;
}
