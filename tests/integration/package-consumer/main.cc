// SPDX-License-Identifier: MIT
// Links against the installed libvlapic-client and uses its API, the
// register model it re-exports (typed views, decoded dumps) and the channel
// front's header; run against a live vlapicd with its socket.
#include "client/lib/vlapic_client.h"
#include "schema/model/dump.h"
#include "schema/channel/channel.h"
#include <cstdio>

int main(int argc, char** argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: consumer SOCKET\n");
    return 2;
  }
  auto session = vlapic::client::ThreadSession::open(argv[1]);
  auto& ws = session->waitScope();
  auto vm = session->connection().createVm(vlapic::client::VmOptions(), [](auto) {}).wait(ws);
  auto state = vm->vcpu(0)->save().wait(ws);
  // SDM "Local APIC Version Register": the version is 0x14 on every modern APIC.
  unsigned version = state.view().version().version();
  printf("echo %llu, APIC version 0x%x\n", (unsigned long long)session->echo(5), version);
  // The decoded dump from the model inside the library, as vlapicctl prints it.
  auto dump = vlapic::dumpRegisters(state.view());
  printf("%s", dump.cStr());
  // The channel's request type from the installed channel.h.
  auto request = vlapic::channel::Request::msrRead(vlapic::kMsrX2apicFirst + 3);
  return version == 0x14 && dump.size() > 0 && request.msr == 0x803 ? 0 : 1;
}
