// SPDX-License-Identifier: MIT
// What vlapicctl prints: each command's text for a person and its --json
// document for a program, from values already fetched from vlapicd. Kept
// apart from the commands (vlapicctl.cc) so that how the tool talks to the
// server and how it shows the answers change independently. The JSON field
// names are an interface: they are listed in vlapicctl --help and
// vlapicctl(1), and only ever added to.
#pragma once

#include "client/lib/vlapic_client.h"

#include <kj/string.h>

namespace vlapic::ctl {

kj::String statusText(const client::ServerStatus& status, kj::StringPtr socketPath);
kj::String statusJson(const client::ServerStatus& status, kj::StringPtr socketPath);

struct VmListing {
  client::VmInfo vm;
  kj::Array<client::VcpuInfo> vcpus;
};
kj::String listText(kj::ArrayPtr<const VmListing> vms);
kj::String listJson(kj::ArrayPtr<const VmListing> vms);

// One I/O APIC redirection table entry's fields (82093AA datasheet
// 3.2.4), each by name, for the text and the JSON alike.
struct RedirectionFields {
  uint8_t vector = 0;
  kj::StringPtr deliveryMode;      // "Fixed", "LowestPriority", "SMI", "NMI", "INIT", "ExtINT", "reserved"
  kj::StringPtr destinationMode;   // "physical", "logical"
  kj::StringPtr deliveryStatus;    // "idle", "pending"
  kj::StringPtr polarity;          // "high", "low" (the level that asserts)
  bool remoteIrr = false;
  kj::StringPtr trigger;           // "edge", "level"
  bool masked = false;
  // Bits 63:56, with the extended destination ID (55:49) as bits 14:8, as
  // Linux and KVM use it for APIC IDs above 255.
  uint16_t destination = 0;
};
RedirectionFields decodeRedirection(uint64_t entry);
// "vector 0x41, delivery Fixed, dest mode physical, status idle, polarity
// high, remote IRR 0, trigger edge, unmasked, destination 0x00"
kj::String formatRedirectionEntry(uint64_t entry);

struct VcpuDump {
  uint64_t vmId;
  client::VcpuInfo info;
  client::VcpuState state;
  client::InterruptState interrupt;
  // The VM's I/O APIC; nullptr when this vlapicd does not report one.
  kj::Maybe<client::IoApicStatus> ioapic;
};
kj::String dumpText(const VcpuDump& dump);
kj::String dumpJson(const VcpuDump& dump);

// vlapicctl ioapic: pin levels, entries and per-pin counters.
kj::String ioapicText(uint64_t vmId, const client::IoApicStatus& status);
kj::String ioapicJson(uint64_t vmId, const client::IoApicStatus& status);

// With `before`, every figure is the change since that sample.
kj::String statsText(uint64_t vmId, const client::VmStats& now, kj::Maybe<const client::VmStats&> before);
// Always totals since the VM was created: a program takes its own differences.
kj::String statsJson(uint64_t vmId, const client::VmStats& stats, uint64_t sampledNs);

// vlapicctl top: one frame of per-VM and per-vCPU rates between two
// samples `seconds` apart. A VM without an earlier sample was created since
// then, so its counters started from zero inside the interval.
struct TopVm {
  client::VmInfo vm;
  client::VmStats now;
  kj::Maybe<const client::VmStats&> before;
};
kj::String topFrame(const client::ServerStatus& status, kj::ArrayPtr<const TopVm> vms, double seconds);

}  // namespace vlapic::ctl
