// SPDX-License-Identifier: MIT
// Running vlapicctl against a test's own vlapicd (integration-tests only:
// VLAPICCTL_PATH is its compile definition).
#pragma once

#include "client/lib/vlapic_client.h"
#include "tests/integration/daemon_process.h"

#include <initializer_list>

namespace vlapic::testing {

// vlapicctl --socket <socket> args..., stdout and stderr kept apart.
inline SeparatedToolResult runCtl(kj::StringPtr socket, std::initializer_list<kj::StringPtr> args) {
  kj::Vector<kj::StringPtr> all;
  all.add("--socket");
  all.add(socket);
  for (auto a: args) all.add(a);
  return runToolSeparated(VLAPICCTL_PATH, all);
}

// A daemon of its own, one VM created through the client library, one of
// its vCPUs attached on this thread, and vlapicctl pointed at the daemon.
struct CtlServed {
  CtlServed(client::VmOptions options, uint32_t vcpuIndex)
      : front(client::Client::connect(daemon.socketPath())),
        vm(front->createVm(kj::mv(options), [](kj::ArrayPtr<const client::Event>) {})),
        session(client::ThreadSession::open(daemon.socketPath())),
        vcpu(session->attachVcpu(vm->ticket(vcpuIndex))),
        id(kj::str(vm->info().id)) {}

  SeparatedToolResult ctl(std::initializer_list<kj::StringPtr> args) {
    return runCtl(daemon.socketPath(), args);
  }

  DaemonProcess daemon{VLAPICD_PATH};
  kj::Own<client::Client> front;
  kj::Own<client::Vm> vm;
  kj::Own<client::ThreadSession> session;
  kj::Own<client::VcpuHandle> vcpu;
  kj::String id;   // the VM's, as vlapicctl takes it
};

}  // namespace vlapic::testing
