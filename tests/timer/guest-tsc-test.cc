// SPDX-License-Identifier: MIT
// The guest TSC derived from the HAL clock (SDM Vol. 3A, 17.17 "Time-Stamp
// Counter"; the TSC-deadline timer compares against it, 11.5.4.1).

#include "server/core/timer.h"

#include <catch2/catch.hpp>

namespace vlapic {
namespace {

TEST_CASE("GuestTsc: counts at its own frequency from the host clock", "[tsc]") {
  hal::ManualClock clock(0);
  GuestTsc tsc(clock, 2'500'000'000);  // 2.5 GHz
  CHECK(tsc.now() == 0);
  clock.advance(1000);
  CHECK(tsc.now() == 2500);
  clock.advance(1);  // 2.5 ticks more: rounds down to whole ticks
  CHECK(tsc.now() == 2502);
  CHECK(tsc.frequencyHz() == 2'500'000'000);
}

TEST_CASE("GuestTsc: the per-VM offset shifts the guest TSC", "[tsc]") {
  hal::ManualClock clock(1'000'000);
  GuestTsc positive(clock, 1'000'000'000, 5'000);
  CHECK(positive.now() == 1'005'000);
  GuestTsc negative(clock, 1'000'000'000, -400'000);
  CHECK(negative.now() == 600'000);
  negative.setOffset(7);
  CHECK(negative.getOffset() == 7);
  CHECK(negative.now() == 1'000'007);
}

TEST_CASE("GuestTsc: nsAt is the first host ns at which the TSC reaches a value",
          "[tsc]") {
  hal::ManualClock clock(0);
  // 3 GHz: 3 ticks per ns, so most TSC values fall between two ns.
  GuestTsc tsc(clock, 3'000'000'000, 123);
  for (uint64_t value = 124; value < 5000; value += 7) {
    uint64_t ns = tsc.nsAt(value);
    INFO("tsc " << value << " ns " << ns);
    CHECK(tsc.atNs(ns) >= value);
    CHECK(tsc.atNs(ns - 1) < value);  // rounded up, never early
  }
  // A slow TSC: several ns per tick.
  GuestTsc slow(clock, 300'000'000);
  CHECK(slow.nsAt(1) == 4);  // 3.33 ns rounded up
  CHECK(slow.atNs(3) == 0);
  CHECK(slow.atNs(4) == 1);
}

TEST_CASE("GuestTsc: a TSC value already past maps to a time not after now", "[tsc]") {
  hal::ManualClock clock(10'000);
  GuestTsc tsc(clock, 1'000'000'000, 1'000);
  CHECK(tsc.nsAt(tsc.now()) <= clock.nowNs());
  CHECK(tsc.nsAt(5'000) == 4'000);
  CHECK(tsc.nsAt(500) == 0);  // before the guest's TSC started counting
  CHECK(tsc.nsAt(0) == 0);
}

TEST_CASE("GuestTsc: large values need 128-bit arithmetic and stay exact", "[tsc]") {
  // ~146 years of uptime at 5 GHz: hostNs * tscHz overflows 64 bits by far.
  uint64_t hostNs = uint64_t(1) << 62;
  hal::ManualClock clock(hostNs);
  GuestTsc tsc(clock, 5'000'000'000);
  // 2^62 * 5 = 23058430092136939520 overflows 2^64 and wraps like a TSC.
  unsigned __int128 exact = (unsigned __int128)hostNs * 5;
  CHECK(tsc.now() == uint64_t(exact));
  // A deadline one tick ahead of a far-future TSC, computed without overflow.
  GuestTsc slow(clock, 1'000'000);  // 1 MHz: TSC = ns / 1000
  uint64_t now = slow.now();
  CHECK(now == hostNs / 1000);
  CHECK(slow.nsAt(now + 1) == (now + 1) * 1000);
  // An unreachable deadline saturates instead of wrapping to the past.
  GuestTsc tiny(clock, 1);
  CHECK(tiny.nsAt(~uint64_t(0)) == ~uint64_t(0));
}

TEST_CASE("GuestTsc: setNow makes the TSC continuous across restore and migration",
          "[tsc]") {
  hal::ManualClock source(5'000'000'000);
  GuestTsc before(source, 2'000'000'000, 12345);
  source.advance(777);
  uint64_t savedTsc = before.now();

  // The destination host's clock is unrelated (it booted later).
  hal::ManualClock destination(42'000);
  GuestTsc after(destination, 2'000'000'000);
  after.setNow(savedTsc);
  CHECK(after.now() == savedTsc);
  destination.advance(1'000);
  CHECK(after.now() == savedTsc + 2'000);  // continues at the same rate

  // setNow also works when the TSC must move backwards relative to the host.
  hal::ManualClock late(uint64_t(1) << 50);
  GuestTsc rewound(late, 1'000'000'000);
  rewound.setNow(10);
  CHECK(rewound.getOffset() < 0);
  CHECK(rewound.now() == 10);
  late.advance(5);
  CHECK(rewound.now() == 15);
}

}  // namespace
}  // namespace vlapic
