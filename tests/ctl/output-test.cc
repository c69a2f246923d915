// SPDX-License-Identifier: MIT
// The I/O APIC's redirection entries decoded by name (82093AA datasheet
// 3.2.4) and the text and JSON vlapicctl makes of an I/O APIC status.
#include "client/ctl/output.h"

#include <catch2/catch.hpp>
#include <cstring>

namespace vlapic::ctl {
namespace {

bool contains(kj::StringPtr haystack, kj::StringPtr needle) {
  return strstr(haystack.cStr(), needle.cStr()) != nullptr;
}

TEST_CASE("redirection entry: every field by name at its datasheet bit", "[ctl]") {
  // Reset: masked, everything else 0.
  CHECK(formatRedirectionEntry(0x10000) ==
        "vector 0x00, delivery Fixed, dest mode physical, status idle, polarity high, remote IRR 0, "
        "trigger edge, masked, destination 0x00");
  // Vector 0x41, fixed, physical destination 0, unmasked, edge.
  CHECK(formatRedirectionEntry(0x41) ==
        "vector 0x41, delivery Fixed, dest mode physical, status idle, polarity high, remote IRR 0, "
        "trigger edge, unmasked, destination 0x00");
  // Level, active low, remote IRR, delivery pending, logical, LowestPriority,
  // destination 0x0F.
  uint64_t busy = 0x0F00'0000'0000'0000ull | (1u << 15) | (1u << 14) | (1u << 13) | (1u << 12) | (1u << 11) |
                  (1u << 8) | 0x3A;
  CHECK(formatRedirectionEntry(busy) ==
        "vector 0x3A, delivery LowestPriority, dest mode logical, status pending, polarity low, remote IRR 1, "
        "trigger level, unmasked, destination 0x0F");
  auto f = decodeRedirection(busy);
  CHECK(f.vector == 0x3A);
  CHECK(f.remoteIrr);
  CHECK(!f.masked);
  CHECK(f.destination == 0x0F);
}

TEST_CASE("redirection entry: the delivery modes, reserved included", "[ctl]") {
  const char* names[8] = {"Fixed", "LowestPriority", "SMI", "reserved", "NMI", "INIT", "reserved", "ExtINT"};
  for (uint64_t mode = 0; mode < 8; mode++) {
    INFO(mode);
    CHECK(decodeRedirection(mode << 8).deliveryMode == names[mode]);
  }
}

TEST_CASE("redirection entry: the extended destination ID is destination bits 14:8", "[ctl]") {
  // APIC ID 0x1234: 0x34 in 63:56, 0x12 in 55:49.
  uint64_t entry = (0x34ull << 56) | (0x12ull << 49) | 0x50;
  CHECK(decodeRedirection(entry).destination == 0x1234);
  CHECK(contains(formatRedirectionEntry(entry), "destination 0x1234"));
  // Bits 48:17 are not part of the destination.
  CHECK(decodeRedirection(0x0001'FFFF'FFFE'0000ull).destination == 0);
  CHECK(decodeRedirection(0xFFFE'0000'0000'0000ull).destination == 0x7FFF);
}

client::IoApicStatus sampleStatus() {
  client::IoApicStatus s;
  s.present = true;
  s.base = 0xFEC00000;
  s.id = 2;
  s.version = 0x20;
  s.ioregsel = 0x12;
  s.pins = kj::heapArray<client::IoApicPinStatus>(kIoApicPins);
  for (uint32_t i = 0; i < kIoApicPins; i++) {
    s.pins[i].pin = i;
    s.pins[i].entry = 0x10000;
  }
  auto& p = s.pins[1];
  p.entry = 0xFF00'0000'0000'0041ull;
  p.level = p.asserted = true;
  p.stats.assertions = 3;
  p.stats.messages = 2;
  p.stats.coalesced = 1;
  return s;
}

TEST_CASE("ioapic text: heading, one row per pin with wire, counters", "[ctl]") {
  auto text = ioapicText(7, sampleStatus());
  INFO(text.cStr());
  CHECK(contains(text, "VM 7 I/O APIC at 0xFEC00000: ID 2, version 0x20, IOREGSEL 0x12"));
  CHECK(contains(text, "\n  1    high  yes       no       0           0xFF00000000000041  3           2         0       0             1"));
  CHECK(contains(text, "\n  23   low   no"));

  client::IoApicStatus none;
  CHECK(ioapicText(7, none) == "VM 7 I/O APIC: none in vlapicd (the VM's front has its own)");
  CHECK(ioapicJson(7, none) == "{\"vm\":7,\"present\":false}");
}

TEST_CASE("ioapic JSON: the documented fields of a pin", "[ctl]") {
  auto json = ioapicJson(7, sampleStatus());
  INFO(json.cStr());
  CHECK(contains(json, "{\"vm\":7,\"present\":true,\"base\":4273995776,\"id\":2,\"version\":32,\"ioregsel\":18,"
                       "\"pins\":[{\"pin\":0,"));
  CHECK(contains(json,
      "{\"pin\":1,\"level\":true,\"asserted\":true,\"pending_edge\":false,\"entry\":\"0xFF00000000000041\","
      "\"decoded\":\"vector 0x41, delivery Fixed, dest mode physical, status idle, polarity high, remote IRR 0, "
      "trigger edge, unmasked, destination 0xFF\",\"vector\":65,\"delivery_mode\":\"Fixed\","
      "\"destination_mode\":\"physical\",\"delivery_status\":\"idle\",\"polarity\":\"high\",\"remote_irr\":false,"
      "\"trigger\":\"edge\",\"masked\":false,\"destination\":255,\"assertions\":3,\"messages\":2,\"eois\":0,"
      "\"redeliveries\":0,\"coalesced\":1}"));
}

}  // namespace
}  // namespace vlapic::ctl
