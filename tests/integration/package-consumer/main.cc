// SPDX-License-Identifier: MIT
// Links against the installed libvlapic-client and uses its API and the
// re-exported register views; run against a live vlapicd with its socket.
#include "client/lib/vlapic_client.h"
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
  return version == 0x14 ? 0 : 1;
}
