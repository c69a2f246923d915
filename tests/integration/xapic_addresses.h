// SPDX-License-Identifier: MIT
// xAPIC MMIO addresses at the default base and ICR bits the integration
// tests and bench-rpc program (SDM "Local APIC Register Address Map",
// "Interrupt Command Register").
#pragma once

#include <cstdint>

namespace vlapic::testing {

constexpr uint64_t kBase = 0xFEE00000;
constexpr uint64_t kId = kBase + 0x020;
constexpr uint64_t kTpr = kBase + 0x080;
constexpr uint64_t kEoi = kBase + 0x0B0;
constexpr uint64_t kSvr = kBase + 0x0F0;
constexpr uint64_t kIcrLow = kBase + 0x300;
constexpr uint64_t kIcrHigh = kBase + 0x310;
constexpr uint64_t kLvtTimer = kBase + 0x320;
constexpr uint64_t kInitialCount = kBase + 0x380;
constexpr uint64_t kDivide = kBase + 0x3E0;

constexpr uint32_t kIcrAssert = 1u << 14;
constexpr uint32_t kIcrLevel = 1u << 15;
constexpr uint32_t kIcrNmi = 4u << 8;
constexpr uint32_t kIcrInit = 5u << 8;
constexpr uint32_t kIcrStartup = 6u << 8;
constexpr uint32_t kIcrAllExcludingSelf = 3u << 18;
constexpr uint32_t kTimerPeriodic = 1u << 17;   // LVT Timer mode bits 18:17 = 01b

}  // namespace vlapic::testing
