// SPDX-License-Identifier: MIT
// bench-channel: what one call through the per-vCPU shared-memory channel
// costs between two processes, next to the transports it replaces.
//
//   channel busy-poll         both sides spin forever (the floor)
//   channel adaptive          the default policy, calls back to back, with
//                             50 us of "guest time" between calls (inside the
//                             200 us window) and with 2 ms (outside it)
//   channel sleep-only        every wait sleeps on the doorbell socket
//   raw futex ping-pong       two processes waking each other with futexes
//   capnp rpc echo            a two-party Cap'n Proto call on a socketpair
//   handler + mutex/executor  the ways vlapicd can run the handler on its
//                             single-threaded Vm layer, over a busy channel
//   idle server CPU           a server process with an idle channel, 3 s
//
// Every figure is a median over many samples with p10/p90 beside it. The
// last line is `RESULT channel ...`.
#include "bench/common/stats.h"
#include "schema/channel/channel.h"
#include "schema/channel/shared-layout.h"
#include "echo.capnp.h"
#include <capnp/rpc-twoparty.h>
#include <kj/async-io.h>
#include <kj/debug.h>
#include <kj/mutex.h>
#include <kj/thread.h>
#include <sched.h>
#include <cstring>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <linux/futex.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include <vector>

namespace vlapic::channel::bench {
namespace {

using vlapic::bench::Spread;
using vlapic::bench::spreadOf;

double nowUs() { return static_cast<double>(monotonicNowNs()) / 1000.0; }

void spinUs(double us) {
  double until = nowUs() + us;
  while (nowUs() < until) {}
}

void sleepUs(long us) {
  struct timespec ts = {us / 1'000'000, (us % 1'000'000) * 1000};
  nanosleep(&ts, nullptr);
}

// A forked child running `body`; killed and reaped if still alive at the end.
// Where the two processes run: by default wherever the scheduler puts them;
// with --pin, the front on one CPU and the server process on another, as a
// deployment with a core per vCPU thread and per channel thread would.
struct Placement {
  int frontCpu = -1;
  int serverCpu = -1;
};

void pinTo(int cpu) {
  if (cpu < 0) return;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  KJ_SYSCALL(sched_setaffinity(0, sizeof(set), &set));
}

class Child {
public:
  template <typename Body>
  Child(const Placement& placement, Body&& body) {
    KJ_SYSCALL(pid = fork());
    if (pid == 0) {
      pinTo(placement.serverCpu);
      int status = 1;
      KJ_IF_MAYBE(e, kj::runCatchingExceptions([&]() { status = body(); })) {
        KJ_LOG(ERROR, "bench child failed", *e);
      }
      _exit(status);
    }
  }
  ~Child() {
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
  }
  pid_t id() const { return pid; }

private:
  pid_t pid;
};

struct SocketPair {
  explicit SocketPair(int type = SOCK_STREAM) {
    int fds[2];
    KJ_SYSCALL(socketpair(AF_UNIX, type | SOCK_CLOEXEC, 0, fds));
    a = kj::AutoCloseFd(fds[0]);
    b = kj::AutoCloseFd(fds[1]);
  }
  kj::AutoCloseFd a, b;
};

void sendFd(int socket, int fd) { sendFds(socket, kj::arrayPtr(&fd, 1)); }

kj::AutoCloseFd receiveFd(int socket) {
  auto fds = receiveFds(socket);
  KJ_REQUIRE(fds.size() == 1, "the server process sent no channel fd");
  return kj::mv(fds[0]);
}

// ---- The channel between a server process and this (front) process ----

enum class HandlerStyle { INLINE, MUTEX, EXECUTOR };

// What the handler does: the answer to an xAPIC version read. The point is
// the transport, not the LAPIC.
Reply work(const Request& request) {
  return Reply::access(AccessResult::ok(0x50014 ^ request.gpa));
}

// Runs a ChannelServer in this (child) process until the transport closes.
int serveChannel(int transport, PollPolicy policy, HandlerStyle style) {
  ChannelServer::Options options;
  options.poll = policy;

  // The executor style: a kj event loop thread stands in for vlapicd's, and
  // the channel thread hands each request to it with executeSync().
  struct Loop {
    const kj::Executor* executor;
    kj::PromiseFulfiller<void>* stop;
  };
  kj::MutexGuarded<kj::Maybe<Loop>> loop;
  kj::Maybe<kj::Own<kj::Thread>> loopThread;
  const kj::Executor* executor = nullptr;
  kj::PromiseFulfiller<void>* stopLoop = nullptr;
  if (style == HandlerStyle::EXECUTOR) {
    loopThread = kj::heap<kj::Thread>([&loop]() {
      auto io = kj::setupAsyncIo();  // as vlapicd's loop thread
      auto paf = kj::newPromiseAndFulfiller<void>();
      *loop.lockExclusive() = Loop{&kj::getCurrentThreadExecutor(), paf.fulfiller.get()};
      paf.promise.wait(io.waitScope);
    });
    loop.when([](const kj::Maybe<Loop>& l) { return l != nullptr; },
              [&](kj::Maybe<Loop>& l) {
                KJ_IF_MAYBE(found, l) {
                  executor = found->executor;
                  stopLoop = found->stop;
                }
              });
  }

  kj::MutexGuarded<uint64_t> vmLock;
  ChannelServer::Handler handler = [&](const Request& request) -> Reply {
    switch (style) {
      case HandlerStyle::INLINE:
        return work(request);
      case HandlerStyle::MUTEX: {
        auto locked = vmLock.lockExclusive();
        ++*locked;
        return work(request);
      }
      case HandlerStyle::EXECUTOR:
        return executor->executeSync([&]() { return work(request); });
    }
    KJ_UNREACHABLE;
  };

  auto created = ChannelServer::create(kj::mv(handler), []() {}, options);
  sendFd(transport, created.frontFd);
  created.frontFd = nullptr;
  char byte;
  while (read(transport, &byte, 1) > 0) {}  // until the front closes it
  created.server = nullptr;
  if (executor != nullptr) {
    executor->executeSync([stopLoop]() { stopLoop->fulfill(); });
  }
  return 0;
}

using Samples = std::vector<double>;

void append(Samples& to, const Samples& from) { to.insert(to.end(), from.begin(), from.end()); }

struct ChannelRun {
  Samples rtt;
  double idleCpuPercent = -1;       // the server process
  double parkedFrontCpuPercent = -1;  // a vCPU thread in waitForAttention()
};

double threadCpuNs() {
  struct timespec ts;
  KJ_SYSCALL(clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts));
  return static_cast<double>(ts.tv_sec) * 1e9 + static_cast<double>(ts.tv_nsec);
}

enum class Gap { NONE, SPIN_50US, SLEEP_2MS };

// One mode: a fresh server process, then `samples` samples of `batch` calls.
ChannelRun measureChannel(const Placement& placement, PollPolicy policy, HandlerStyle style,
                          Gap gap, size_t batch, size_t samples, bool measureIdle = false) {
  SocketPair transport;
  Child server(placement, [&]() {
    transport.a = nullptr;
    return serveChannel(transport.b, policy, style);
  });
  transport.b = nullptr;
  ChannelFront::Options options;
  options.poll = policy;
  auto front = ChannelFront::connect(receiveFd(transport.a), options);

  Request request = Request::mmioRead(0xFEE00030, 4);
  for (int i = 0; i < 1000; i++) front->call(request);  // warm-up; windows settle
  std::vector<double> perCall;
  perCall.reserve(samples);
  for (size_t s = 0; s < samples; s++) {
    if (gap == Gap::SPIN_50US) spinUs(50);
    if (gap == Gap::SLEEP_2MS) sleepUs(2000);
    double start = nowUs();
    for (size_t b = 0; b < batch; b++) front->call(request);
    perCall.push_back((nowUs() - start) / static_cast<double>(batch));
  }
  ChannelRun run;
  run.rtt = kj::mv(perCall);


  if (measureIdle) {
    // The channel stays open and idle: CPU of the whole server process.
    clockid_t clock;
    KJ_ASSERT(clock_getcpuclockid(server.id(), &clock) == 0);
    auto cpuNs = [&]() {
      struct timespec ts;
      KJ_SYSCALL(clock_gettime(clock, &ts));
      return static_cast<double>(ts.tv_sec) * 1e9 + static_cast<double>(ts.tv_nsec);
    };
    double cpuBefore = cpuNs(), wallBefore = nowUs();
    {
      // Meanwhile a vCPU thread of this front is parked as for HLT.
      kj::Thread parked([&]() {
        double before = threadCpuNs(), wallStart = nowUs();
        bool raised = front->waitForAttention(uint64_t(3'000'000'000));
        KJ_ASSERT(!raised);
        run.parkedFrontCpuPercent =
            (threadCpuNs() - before) / 1000.0 / (nowUs() - wallStart) * 100.0;
      });
      sleepUs(3'000'000);
    }
    double cpuAfter = cpuNs(), wallAfter = nowUs();
    run.idleCpuPercent = (cpuAfter - cpuBefore) / 1000.0 / (wallAfter - wallBefore) * 100.0;
  }
  return run;
}

// ---- Baselines ----

long futex(std::atomic<uint32_t>* word, int op, uint32_t value) {
  return syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), op, value, nullptr, nullptr, 0);
}

void futexWaitFor(std::atomic<uint32_t>* word, uint32_t expected) {
  for (;;) {
    uint32_t seen = word->load(std::memory_order_acquire);
    if (seen == expected) return;
    futex(word, FUTEX_WAIT, seen);
  }
}

// Two processes waking each other through futexes on shared memory, never
// spinning: the floor of any sleeping wake-up on this machine.
Samples measureFutexPingPong(const Placement& placement, size_t samples) {
  void* mapped = mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  KJ_ASSERT(mapped != MAP_FAILED);
  KJ_DEFER(munmap(mapped, 4096));
  auto* ping = new (mapped) std::atomic<uint32_t>(0);
  auto* pong = new (static_cast<char*>(mapped) + 64) std::atomic<uint32_t>(0);
  uint32_t total = static_cast<uint32_t>(samples + 200);
  Child peer(placement, [&]() {
    for (uint32_t i = 1; i <= total; i++) {
      futexWaitFor(ping, i);
      pong->store(i, std::memory_order_release);
      futex(pong, FUTEX_WAKE, 1);
    }
    return 0;
  });
  std::vector<double> rtt;
  for (uint32_t i = 1; i <= total; i++) {
    double start = nowUs();
    ping->store(i, std::memory_order_release);
    futex(ping, FUTEX_WAKE, 1);
    futexWaitFor(pong, i);
    if (i > 200) rtt.push_back(nowUs() - start);
  }
  return rtt;
}

class EchoServer final : public Echo::Server {
protected:
  kj::Promise<void> echo(EchoContext context) override {
    context.getResults().setValue(context.getParams().getValue());
    return kj::READY_NOW;
  }
};

// A two-party Cap'n Proto call between two processes on a Unix socket pair.
Samples measureRpcEcho(const Placement& placement, size_t samples) {
  SocketPair transport;
  Child server(placement, [&]() {
    transport.a = nullptr;
    auto io = kj::setupAsyncIo();
    auto stream = io.lowLevelProvider->wrapSocketFd(transport.b.get());
    capnp::TwoPartyClient rpc(*stream, kj::heap<EchoServer>(), capnp::rpc::twoparty::Side::SERVER);
    rpc.onDisconnect().wait(io.waitScope);
    return 0;
  });
  transport.b = nullptr;
  auto io = kj::setupAsyncIo();
  auto stream = io.lowLevelProvider->wrapSocketFd(transport.a.get());
  capnp::TwoPartyClient rpc(*stream);
  auto echo = rpc.bootstrap().castAs<Echo>();
  std::vector<double> rtt;
  for (size_t i = 0; i < samples + 200; i++) {
    double start = nowUs();
    auto request = echo.echoRequest();
    request.setValue(i);
    KJ_ASSERT(request.send().wait(io.waitScope).getValue() == i);
    if (i >= 200) rtt.push_back(nowUs() - start);
  }
  return rtt;
}

void printRow(const char* mode, const Spread& f, double rpcMedian) {
  printf("%-40s %10.3f %9.3f %9.3f %8zu %9.3fx\n", mode, f.median, f.p10, f.p90, f.samples,
         rpcMedian > 0 ? f.median / rpcMedian : 0.0);
}

int run(const Placement& placement) {
  pinTo(placement.frontCpu);
  printf("bench-channel: one call = request + reply between two processes (us)%s\n",
         placement.frontCpu >= 0 ? ", front pinned to CPU 0, server to CPU 1" : "");
  printf("%-40s %10s %9s %9s %8s %10s\n", "mode", "median", "p10", "p90", "samples",
         "vs_rpc");

  // The host is shared and its load changes by the second: every mode runs
  // in each of several rounds, interleaved, and the samples are pooled.
  constexpr int kRounds = 3;
  Samples rpcSamples, futexSamples, busySamples, adaptiveSamples, gap50Samples, gap2msSamples,
      sleepSamples, mutexSamples, executorSamples;
  for (int round = 0; round < kRounds; round++) {
    append(rpcSamples, measureRpcEcho(placement, 1000));
    append(futexSamples, measureFutexPingPong(placement, 1000));
    auto inlineRun = [&](PollPolicy policy, Gap gap, size_t batch, size_t samples) {
      return measureChannel(placement, policy, HandlerStyle::INLINE, gap, batch, samples).rtt;
    };
    append(busySamples, inlineRun(PollPolicy::busyPolicy(), Gap::NONE, 100, 100));
    append(adaptiveSamples, inlineRun(PollPolicy::adaptivePolicy(), Gap::NONE, 100, 100));
    append(gap50Samples, inlineRun(PollPolicy::adaptivePolicy(), Gap::SPIN_50US, 1, 1000));
    append(gap2msSamples, inlineRun(PollPolicy::adaptivePolicy(), Gap::SLEEP_2MS, 1, 200));
    append(sleepSamples, inlineRun(PollPolicy::sleepPolicy(), Gap::NONE, 1, 1000));
    append(mutexSamples, measureChannel(placement, PollPolicy::busyPolicy(), HandlerStyle::MUTEX,
                                        Gap::NONE, 100, 100).rtt);
    append(executorSamples, measureChannel(placement, PollPolicy::busyPolicy(),
                                           HandlerStyle::EXECUTOR, Gap::NONE, 1, 1000).rtt);
  }
  // Idleness once, after a burst that grew the windows.
  auto idle = measureChannel(placement, PollPolicy::adaptivePolicy(), HandlerStyle::INLINE,
                             Gap::NONE, 100, 50, true);

  Spread rpc = spreadOf(rpcSamples);
  Spread futexFloor = spreadOf(futexSamples);
  Spread busy = spreadOf(busySamples), adaptive = spreadOf(adaptiveSamples);
  Spread gap50 = spreadOf(gap50Samples), gap2ms = spreadOf(gap2msSamples);
  Spread sleepOnly = spreadOf(sleepSamples), mutex = spreadOf(mutexSamples);
  Spread executor = spreadOf(executorSamples);

  printRow("channel busy-poll", busy, rpc.median);
  printRow("channel adaptive, back to back", adaptive, rpc.median);
  printRow("channel adaptive, 50 us between calls", gap50, rpc.median);
  printRow("channel adaptive, 2 ms between calls", gap2ms, rpc.median);
  printRow("channel sleep-only (doorbell wake-ups)", sleepOnly, rpc.median);
  printRow("raw futex ping-pong (no channel)", futexFloor, rpc.median);
  printRow("capnp rpc echo, socketpair", rpc, rpc.median);
  printRow("busy channel, handler inline", busy, rpc.median);
  printRow("busy channel, handler under a mutex", mutex, rpc.median);
  printRow("busy channel, handler via kj::Executor", executor, rpc.median);
  printf("idle server process CPU over 3 s with an open channel: %.4f%%\n",
         idle.idleCpuPercent);
  printf("parked front vCPU thread (waitForAttention) CPU over 3 s: %.4f%%\n",
         idle.parkedFrontCpuPercent);
  double load[3] = {0, 0, 0};
  getloadavg(load, 3);
  printf("host: %ld CPUs, load average %.2f while measuring (spinning modes need a free "
         "core each side)\n",
         sysconf(_SC_NPROCESSORS_ONLN), load[0]);

  printf("RESULT channel rtt_poll_us=%.3f rtt_busy_us=%.3f rtt_gap50_us=%.3f rtt_gap2ms_us=%.3f"
         " rtt_futex_us=%.3f futex_floor_us=%.3f rpc_echo_us=%.3f mutex_us=%.3f"
         " executor_us=%.3f ratio_poll_vs_rpc=%.4f idle_cpu_percent=%.4f\n",
         adaptive.median, busy.median, gap50.median, gap2ms.median, sleepOnly.median,
         futexFloor.median, rpc.median, mutex.median, executor.median,
         adaptive.median / rpc.median, idle.idleCpuPercent);
  return 0;
}

}  // namespace
}  // namespace vlapic::channel::bench

int main(int argc, char** argv) {
  signal(SIGPIPE, SIG_IGN);
  vlapic::channel::bench::Placement placement;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--pin") == 0 && sysconf(_SC_NPROCESSORS_ONLN) >= 2) {
      placement = {0, 1};
    } else {
      fprintf(stderr, "usage: %s [--pin]\n  --pin  front on CPU 0, server process on CPU 1\n",
              argv[0]);
      return 2;
    }
  }
  return vlapic::channel::bench::run(placement);
}
