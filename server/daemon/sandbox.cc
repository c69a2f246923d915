// SPDX-License-Identifier: MIT
// vlapicd's self-confinement (sandbox.h): after start-up the daemon needs
// nothing but the sockets it already holds, the connections it accepts, its
// event loop, memory and time. Everything else is taken away, in this order:
//
//   1. Work that would need a forbidden system call later is done now
//      (loading libgcc_s for stack traces, resolving the user to drop to).
//   2. When started as root: supplementary groups cleared, then gid and uid
//      set to an unprivileged user (default "nobody"); every capability goes
//      with the uid change, and a check proves root cannot be regained.
//   3. PR_SET_DUMPABLE 0 (no ptrace by the same uid, no core dump of guest
//      state) and PR_SET_NO_NEW_PRIVS 1 (no execve can raise privileges).
//   4. A seccomp allow-list (libseccomp): any other system call kills the
//      whole process (SCMP_ACT_KILL_PROCESS), applied to every thread.
//
// deploy/README.md explains what each layer blocks and how it combines with
// the systemd unit and deploy/vlapicd-sandbox.sh.
#include "sandbox.h"

#include <kj/debug.h>
#include <kj/vector.h>

#include <cerrno>
#include <execinfo.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <sched.h>
#include <seccomp.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
#define VLAPIC_SANITIZER_BUILD 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define VLAPIC_SANITIZER_BUILD 1
#endif
#endif
#ifndef VLAPIC_SANITIZER_BUILD
#define VLAPIC_SANITIZER_BUILD 0
#endif

namespace vlapic {
namespace {

// The uid/gid pair "nobody"/"nogroup" has on Debian, for hosts (or
// namespaces) without a passwd entry for it.
constexpr uid_t kNobodyUid = 65534;
constexpr gid_t kNobodyGid = 65534;

struct Identity {
  uid_t uid;
  gid_t gid;
  kj::String name;
};

Identity resolveUser(kj::Maybe<kj::StringPtr> requested) {
  kj::StringPtr name = requested.orDefault("nobody");
  struct passwd entry;
  struct passwd* found = nullptr;
  char buffer[4096];
  int error = getpwnam_r(name.cStr(), &entry, buffer, sizeof(buffer), &found);
  if (found != nullptr) {
    KJ_REQUIRE(found->pw_uid != 0 && found->pw_gid != 0,
               "refusing to run as a user with uid or gid 0", name);
    return {found->pw_uid, found->pw_gid, kj::heapString(name)};
  }
  // An explicitly named user must exist; the default falls back to the
  // well-known numeric nobody (a host or namespace without /etc/passwd).
  KJ_REQUIRE(requested == nullptr, "--user names no such user", name, strerror(error));
  return {kNobodyUid, kNobodyGid, kj::str("nobody (", kNobodyUid, ")")};
}

void dropPrivileges(const Identity& identity) {
  KJ_SYSCALL(setgroups(0, nullptr), "clearing supplementary groups");
  KJ_SYSCALL(setresgid(identity.gid, identity.gid, identity.gid), "setresgid", identity.name);
  KJ_SYSCALL(setresuid(identity.uid, identity.uid, identity.uid), "setresuid", identity.name);
  // Prove the change is irreversible: with every uid non-zero and no
  // capability left, asking for root back must fail.
  uid_t ruid, euid, suid;
  KJ_SYSCALL(getresuid(&ruid, &euid, &suid));
  KJ_REQUIRE(ruid == identity.uid && euid == identity.uid && suid == identity.uid,
             "uid change did not take effect");
  KJ_REQUIRE(setresuid(0, 0, 0) < 0, "root privileges could be regained after dropping them");
}

// Work that needs files: done while files can still be opened.
void prepareForConfinement() {
  // glibc's backtrace() dlopen()s libgcc_s on first use, and kj captures a
  // stack trace in every exception (a front's bad request is one).
  void* frames[4];
  backtrace(frames, 4);
  // Core dumps would write guest state to disk; nothing legitimate needs one.
  // A supervisor that forbids setrlimit (systemd's ~@resources filter,
  // deploy/vlapicd.service) sets the limit itself (LimitCORE=0), and
  // PR_SET_DUMPABLE 0 below keeps the kernel from dumping us anyway.
  struct rlimit noCore = {0, 0};
  if (setrlimit(RLIMIT_CORE, &noCore) < 0) {
    int error = errno;
    KJ_REQUIRE(error == EPERM, "setrlimit(RLIMIT_CORE)", strerror(error));
    KJ_LOG(INFO, "setrlimit forbidden by the supervisor: core dumps stay off through its "
                 "limit and PR_SET_DUMPABLE");
  }
}

// RAII owner of a libseccomp filter under construction.
class SeccompFilter {
public:
  explicit SeccompFilter(uint32_t defaultAction) : context(seccomp_init(defaultAction)) {
    KJ_REQUIRE(context != nullptr, "seccomp_init failed");
  }
  ~SeccompFilter() { seccomp_release(context); }
  KJ_DISALLOW_COPY(SeccompFilter);

  void allow(int syscall) { add(SCMP_ACT_ALLOW, syscall, {}); }
  void allowIf(int syscall, std::initializer_list<scmp_arg_cmp> conditions) {
    add(SCMP_ACT_ALLOW, syscall, conditions);
  }
  void fail(int syscall, int error) { add(SCMP_ACT_ERRNO(error), syscall, {}); }

  void setAttribute(scmp_filter_attr attribute, uint32_t value) {
    int error = seccomp_attr_set(context, attribute, value);
    KJ_REQUIRE(error == 0, "seccomp_attr_set", attribute, strerror(-error));
  }

  void load() {
    int error = seccomp_load(context);
    KJ_REQUIRE(error == 0, "loading the seccomp filter failed", strerror(-error));
  }

private:
  scmp_filter_ctx context;

  void add(uint32_t action, int syscall, std::initializer_list<scmp_arg_cmp> conditions) {
    int error = seccomp_rule_add_array(context, action, syscall, conditions.size(),
                                       conditions.begin());
    KJ_REQUIRE(error == 0, "seccomp rule", seccomp_syscall_resolve_num_arch(SCMP_ARCH_NATIVE, syscall),
               strerror(-error));
  }
};

// The allow-list: what vlapicd does once serving, and nothing else. Found by
// tracing the daemon through the test suites (strace -f) and reading the
// code paths of kj's event loop, Cap'n Proto's two-party transport, the
// timers, the HAL and the shared-memory channel.
void addServingSyscalls(SeccompFilter& filter) {
  // Byte streams on descriptors already open (sockets, eventfds, timerfds,
  // stdout/stderr for logs).
  for (int sc : {SCMP_SYS(read), SCMP_SYS(write), SCMP_SYS(readv), SCMP_SYS(writev),
                 SCMP_SYS(close), SCMP_SYS(dup), SCMP_SYS(dup2), SCMP_SYS(dup3), SCMP_SYS(fstat)}) {
    filter.allow(sc);
  }
  // fstat() is newfstatat(fd, "", AT_EMPTY_PATH) in glibc 2.33+: allow only
  // that form, never a lookup by path.
  filter.allowIf(SCMP_SYS(newfstatat),
                 {SCMP_A3_32(SCMP_CMP_MASKED_EQ, AT_EMPTY_PATH, AT_EMPTY_PATH)});
  // Descriptor flags (O_NONBLOCK, FD_CLOEXEC, memfd seals).
  filter.allow(SCMP_SYS(fcntl));
  for (unsigned long request : {FIONBIO, FIOCLEX, FIONCLEX, FIONREAD}) {
    filter.allowIf(SCMP_SYS(ioctl), {SCMP_A1_64(SCMP_CMP_EQ, request)});
  }

  // The kj event loop (epoll, signals through the loop, cross-thread wakeups).
  for (int sc : {SCMP_SYS(epoll_create1), SCMP_SYS(epoll_ctl), SCMP_SYS(epoll_wait),
                 SCMP_SYS(epoll_pwait), SCMP_SYS(epoll_pwait2), SCMP_SYS(poll), SCMP_SYS(ppoll),
                 SCMP_SYS(eventfd2), SCMP_SYS(signalfd4), SCMP_SYS(rt_sigaction),
                 SCMP_SYS(rt_sigprocmask), SCMP_SYS(rt_sigreturn), SCMP_SYS(rt_sigtimedwait),
                 SCMP_SYS(sigaltstack), SCMP_SYS(restart_syscall)}) {
    filter.allow(sc);
  }
  // Fronts connecting on the listening socket and talking over their
  // connections (fds travel as SCM_RIGHTS). No socket(), bind(), connect().
  for (int sc : {SCMP_SYS(accept4), SCMP_SYS(accept), SCMP_SYS(recvmsg), SCMP_SYS(sendmsg),
                 SCMP_SYS(recvfrom), SCMP_SYS(sendto), SCMP_SYS(shutdown),
                 SCMP_SYS(getsockopt), SCMP_SYS(setsockopt), SCMP_SYS(getsockname),
                 SCMP_SYS(getpeername)}) {
    filter.allow(sc);
  }
  // Each vCPU's shared-memory channel (schema/channel) rings its doorbell
  // over a Unix socket pair made when the front opens it; a pair connects
  // nowhere, so this opens no network access.
  filter.allowIf(SCMP_SYS(socketpair), {SCMP_A0_32(SCMP_CMP_EQ, AF_UNIX)});

  // Time: the LAPIC timers on timerfds, the HAL clock.
  for (int sc : {SCMP_SYS(timerfd_create), SCMP_SYS(timerfd_settime), SCMP_SYS(timerfd_gettime),
                 SCMP_SYS(clock_gettime), SCMP_SYS(clock_getres), SCMP_SYS(gettimeofday),
                 SCMP_SYS(clock_nanosleep), SCMP_SYS(nanosleep)}) {
    filter.allow(sc);
  }

  // Memory: never executable (W^X for the whole process lifetime: no code
  // can be mapped or made executable after start-up).
  for (int sc : {SCMP_SYS(mmap), SCMP_SYS(mprotect)}) {
    filter.allowIf(sc, {SCMP_A2_32(SCMP_CMP_MASKED_EQ, PROT_EXEC, 0)});
  }
  for (int sc : {SCMP_SYS(munmap), SCMP_SYS(mremap), SCMP_SYS(madvise), SCMP_SYS(brk)}) {
    filter.allow(sc);
  }

  // Threads (the shared-memory channel's server threads), and only threads:
  // clone() must share the address space as a thread does. clone3() passes
  // its flags in memory a filter cannot read, so it answers ENOSYS and glibc
  // falls back to clone().
  filter.allowIf(SCMP_SYS(clone), {SCMP_A0_64(SCMP_CMP_MASKED_EQ, CLONE_THREAD, CLONE_THREAD)});
  filter.fail(SCMP_SYS(clone3), ENOSYS);
  for (int sc : {SCMP_SYS(futex), SCMP_SYS(set_robust_list), SCMP_SYS(get_robust_list),
                 SCMP_SYS(rseq), SCMP_SYS(sched_yield), SCMP_SYS(sched_getaffinity),
                 SCMP_SYS(membarrier), SCMP_SYS(exit), SCMP_SYS(exit_group), SCMP_SYS(getpid),
                 SCMP_SYS(gettid), SCMP_SYS(getuid), SCMP_SYS(geteuid), SCMP_SYS(getgid),
                 SCMP_SYS(getegid), SCMP_SYS(getrandom)}) {
    filter.allow(sc);
  }
  // Signals only to our own threads (abort() raises SIGABRT this way).
  filter.allowIf(SCMP_SYS(tgkill), {SCMP_A0_64(SCMP_CMP_EQ, uint64_t(getpid()))});

  // Anonymous shared memory, never a file: the shared-memory channel of
  // every vCPU (schema/channel) and, with --hal shared, each vCPU page is a
  // sealed memfd whose fd a front maps.
  filter.allow(SCMP_SYS(memfd_create));
  filter.allow(SCMP_SYS(ftruncate));

  // The daemon removes its socket file at shutdown as a best effort; the
  // filesystem is otherwise off limits, so this one path operation answers
  // EPERM instead of killing a daemon that is stopping cleanly.
  filter.fail(SCMP_SYS(unlink), EPERM);
  filter.fail(SCMP_SYS(unlinkat), EPERM);

  if (VLAPIC_SANITIZER_BUILD) {
    // ASan/LSan builds only: LeakSanitizer's exit-time check stops the
    // world from a ptrace()ing helper (clone without CLONE_THREAD, ptrace,
    // wait4) and reads /proc/self; reports are symbolised from the binary.
    // Release builds never get any of this.
    for (int sc : {SCMP_SYS(clone), SCMP_SYS(ptrace), SCMP_SYS(wait4), SCMP_SYS(prctl),
                   SCMP_SYS(getppid), SCMP_SYS(kill), SCMP_SYS(tgkill), SCMP_SYS(getdents),
                   SCMP_SYS(getdents64),
                   SCMP_SYS(readlink), SCMP_SYS(readlinkat), SCMP_SYS(lseek), SCMP_SYS(pread64),
                   SCMP_SYS(sched_getaffinity), SCMP_SYS(newfstatat), SCMP_SYS(stat),
                   SCMP_SYS(pipe2), SCMP_SYS(pipe)}) {
      filter.allow(sc);
    }
    filter.allowIf(SCMP_SYS(openat), {SCMP_A2_32(SCMP_CMP_MASKED_EQ, O_ACCMODE, O_RDONLY)});
    filter.allowIf(SCMP_SYS(open), {SCMP_A1_32(SCMP_CMP_MASKED_EQ, O_ACCMODE, O_RDONLY)});
  }
}

}  // namespace

void applySandbox(const SandboxOptions& options) {
  if (!options.enabled) {
    KJ_LOG(WARNING, "running unconfined (--no-sandbox): no seccomp filter, no privilege drop");
    return;
  }

  prepareForConfinement();

  kj::String runningAs = kj::str("uid ", geteuid());
  if (geteuid() == 0 || getuid() == 0) {
    // The socket file keeps root as its owner: handing it to the
    // unprivileged user would let every other process of that user connect.
    Identity identity = resolveUser(options.user);
    dropPrivileges(identity);
    runningAs = kj::str(identity.name, " (uid ", identity.uid, ")");
  } else KJ_IF_MAYBE(user, options.user) {
    KJ_LOG(WARNING, "--user is ignored: vlapicd was not started as root", *user);
  }

  if (!VLAPIC_SANITIZER_BUILD) {
    // Not in ASan builds: LeakSanitizer's exit-time check ptrace()s this
    // process from a helper, which a non-dumpable process refuses (the
    // check would then spin instead of reporting).
    KJ_SYSCALL(prctl(PR_SET_DUMPABLE, 0, 0, 0, 0));
  }
  KJ_SYSCALL(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0));

  SeccompFilter filter(SCMP_ACT_KILL_PROCESS);
  // Every thread that already exists gets the filter too, not just this one.
  filter.setAttribute(SCMP_FLTATR_CTL_TSYNC, 1);
  addServingSyscalls(filter);
  filter.load();

  KJ_LOG(INFO, "confined: seccomp allow-list loaded (others kill the process), no new privileges",
         runningAs, VLAPIC_SANITIZER_BUILD ? "sanitizer build: wider filter" : "");
}

}  // namespace vlapic
