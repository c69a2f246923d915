// SPDX-License-Identifier: MIT
// Save and restore: KVM's 1 KiB kvm_lapic_state layout (KVM_GET_LAPIC /
// KVM_SET_LAPIC, both x2APIC ID layouts) plus the versioned hidden-state
// record; restore validates everything and leaves the vCPU unchanged on bad
// input. Register semantics per SDM Vol. 3A 11.4 - 11.12.
#include "fixture.h"

#include <functional>
#include <string.h>

namespace vlapic::test {
namespace {

LapicSnapshot clone(const LapicSnapshot& s) {
  LapicSnapshot copy;
  copy.apicBase = s.apicBase;
  memcpy(copy.regs, s.regs, sizeof(copy.regs));
  copy.x2apic32BitIds = s.x2apic32BitIds;
  copy.hidden = kj::heapArray(s.hidden.asPtr());
  return copy;
}

uint32_t word(const LapicSnapshot& s, uint32_t offset) {
  uint32_t v;
  memcpy(&v, s.regs + offset, 4);
  return v;
}
void setWord(LapicSnapshot& s, uint32_t offset, uint32_t v) { memcpy(s.regs + offset, &v, 4); }

// A vCPU with state in every corner the snapshot must carry.
kj::Own<Lapic> busyLapic(Env& env, uint32_t id = 1) {
  auto lapic = env.make({}, id);
  softwareEnable(*lapic);
  mmioWrite(*lapic, Reg::TPR, 0x20);
  mmioWrite(*lapic, Reg::LDR, 0x04000000);
  mmioWrite(*lapic, Reg::DFR, 0x0FFFFFFF);
  mmioWrite(*lapic, Reg::LVT_ERROR, 0xEE);
  mmioWrite(*lapic, Reg::LVT_LINT0, 0x8000 | 0x55);  // level-triggered fixed
  lapic->setLint(0, true);                           // remote IRR latched
  mmioWrite(*lapic, Reg::ICR_HIGH, 0x02000000);
  mmioWrite(*lapic, Reg::ICR_LOW, 0x00000440);  // NMI IPI: stays in ICR
  mmioWrite(*lapic, Reg::TIMER_DIVIDE_CONFIG, 0xB);
  mmioWrite(*lapic, Reg::LVT_TIMER, 0x20031);  // periodic
  mmioWrite(*lapic, Reg::TIMER_INITIAL_COUNT, 1'000'000);
  lapic->acceptInterrupt(0x90, TriggerMode::LEVEL);
  lapic->acknowledge();
  lapic->acceptInterrupt(0xA1, TriggerMode::EDGE);
  lapic->acceptInterrupt(0x41, TriggerMode::EDGE);
  lapic->acceptInterrupt(2, TriggerMode::EDGE);  // ESR accumulator: received illegal
  // 0xEE (raised by the error) goes in service; 0xA1, 0x55 and 0x41 stay
  // pending below it.
  lapic->acknowledge();
  env.clock.advance(250'000);
  return lapic;
}

void requireSameState(Lapic& a, Lapic& b) {
  CHECK(a.apicBase() == b.apicBase());
  CHECK(a.mode() == b.mode());
  CHECK(a.page().bytes() == b.page().bytes());
  CHECK(maybeVector(a.pendingVector()) == maybeVector(b.pendingVector()));
  CHECK(a.runState() == b.runState());
  CHECK(a.lintLevel(0) == b.lintLevel(0));
  CHECK(a.lintLevel(1) == b.lintLevel(1));
  KJ_IF_MAYBE(da, a.timerDeadlineNs()) {
    KJ_IF_MAYBE(db, b.timerDeadlineNs()) {
      CHECK(*da == *db);
    } else {
      FAIL("restored timer is not armed");
    }
  } else {
    CHECK(b.timerDeadlineNs() == nullptr);
  }
}

TEST_CASE("Save/restore round trip in xAPIC mode keeps every register and the hidden state") {
  Env env;
  auto a = busyLapic(env);
  LapicSnapshot snapshot = a->save();
  CHECK(snapshot.apicBase == a->apicBase());
  CHECK(word(snapshot, 0x390) == a->timer().currentCount());  // KVM fills it at save
  CHECK(snapshot.hidden.size() > 0);

  auto b = env.make({}, 1);
  KJ_IF_MAYBE(problem, b->restore(snapshot)) FAIL(problem->cStr());
  requireSameState(*a, *b);
  CHECK(b->readRegister(Reg::LVT_LINT0) == (0x8000 | 0x4000 | 0x55));
  // The ESR accumulator travelled too.
  CHECK(latchEsr(*b) == 0x40);
  CHECK(latchEsr(*a) == 0x40);
  // Both continue identically.
  env.clock.advance(1'000'000);
  CHECK(a->onTimer() == b->onTimer());
  CHECK(a->page().bytes() == b->page().bytes());
}

TEST_CASE("Save/restore round trip in x2APIC mode with 32-bit IDs and with legacy IDs") {
  Env env;
  auto a = env.make({}, 0x105);
  enterX2apic(*a);
  softwareEnable(*a);
  msrWrite(*a, regMsr(Reg::TPR), 0x30);
  msrWrite(*a, 0x830, 0x0000020000000400ull);  // ICR[63:32] = 0x200

  LapicSnapshot wide = a->save();
  CHECK(wide.x2apic32BitIds);
  CHECK(word(wide, 0x20) == 0x105);
  CHECK(word(wide, 0x310) == 0x200);
  auto b = env.make({}, 0x105);
  KJ_IF_MAYBE(problem, b->restore(wide)) FAIL(problem->cStr());
  requireSameState(*a, *b);
  CHECK(msrRead(*b, 0x830) == 0x0000020000000400ull);

  LapicSnapshot legacy = a->save(false);
  CHECK(!legacy.x2apic32BitIds);
  CHECK(word(legacy, 0x20) == 0x05000000);
  auto c = env.make({}, 0x105);
  KJ_IF_MAYBE(problem, c->restore(legacy)) FAIL(problem->cStr());
  requireSameState(*a, *c);
  CHECK(msrRead(*c, 0x802) == 0x105);
  CHECK(msrRead(*c, 0x80D) == ((0x10u << 16) | (1u << 5)));
}

TEST_CASE("Restore accepts KVM's x2APIC image with the 64-bit ICR also at 0x300-0x307") {
  Env env;
  auto a = env.make({}, 1);
  enterX2apic(*a);
  msrWrite(*a, 0x830, 0x0000000700000400ull);
  LapicSnapshot snapshot = a->save();
  CHECK(word(snapshot, 0x304) == 7);
  auto b = env.make({}, 1);
  KJ_IF_MAYBE(problem, b->restore(snapshot)) FAIL(problem->cStr());
  CHECK(msrRead(*b, 0x830) == 0x0000000700000400ull);
  // Without the copy (KVM's split layout) it restores the same.
  setWord(snapshot, 0x304, 0);
  auto c = env.make({}, 1);
  KJ_IF_MAYBE(problem, c->restore(snapshot)) FAIL(problem->cStr());
  CHECK(c->page().bytes() == a->page().bytes());
  // KVM rebuilds 0x304 from ICR high (0x310) on KVM_SET_LAPIC, so a word
  // there that disagrees is dropped, not refused.
  setWord(snapshot, 0x304, 8);
  auto d = env.make({}, 1);
  KJ_IF_MAYBE(problem, d->restore(snapshot)) FAIL(problem->cStr());
  CHECK(msrRead(*d, 0x830) == 0x0000000700000400ull);
}

TEST_CASE("KVM's layout alone restores (KVM_GET_LAPIC of a new vCPU 1, measured)") {
  Env env;
  LapicSnapshot kvm;
  kvm.apicBase = 0xFEE00800;
  setWord(kvm, 0x020, 0x01000000);
  setWord(kvm, 0x030, 0x00050014);
  setWord(kvm, 0x0E0, 0xFFFFFFFF);
  setWord(kvm, 0x0F0, 0xFF);
  for (uint32_t offset = 0x320; offset <= 0x370; offset += 0x10) setWord(kvm, offset, 0x10000);
  auto lapic = env.make({}, 1);
  mmioWrite(*lapic, Reg::TPR, 0x40);
  KJ_IF_MAYBE(problem, lapic->restore(kvm)) FAIL(problem->cStr());
  auto fresh = env.make({}, 1);
  CHECK(lapic->page().bytes() == fresh->page().bytes());
  CHECK(lapic->apicBase() == 0xFEE00800);
}

TEST_CASE("Restore accepts the boot vCPU's reset LINT0 ExtINT while software-disabled, "
          "nothing else unmasked") {
  Env env;
  LapicConfig config;
  config.bspLint0ExtInt = true;
  auto bsp = env.make(config, 0, true);
  LapicSnapshot snapshot = bsp->save();
  CHECK(word(snapshot, 0x350) == 0x700);
  CHECK(word(snapshot, 0xF0) == 0xFF);
  // KVM applies the quirk on every boot vCPU, so a plain boot vCPU takes it.
  auto plainBsp = env.make({}, 0, true);
  KJ_IF_MAYBE(problem, plainBsp->restore(snapshot)) FAIL(problem->cStr());
  auto ap = env.make({}, 0, false);
  CHECK(ap->restore(snapshot) != nullptr);
  setWord(snapshot, 0x360, 0x400);  // LINT1 NMI unmasked
  CHECK(plainBsp->restore(snapshot) != nullptr);
}

TEST_CASE("KVM's layout alone restarts the timer from the saved current count") {
  Env env;
  auto source = env.make();
  softwareEnable(*source);
  mmioWrite(*source, Reg::TIMER_DIVIDE_CONFIG, 0xB);
  mmioWrite(*source, Reg::LVT_TIMER, 0x30);
  mmioWrite(*source, Reg::TIMER_INITIAL_COUNT, 1000);
  env.clock.advance(600);
  LapicSnapshot snapshot = source->save();
  snapshot.hidden = nullptr;
  CHECK(word(snapshot, 0x390) == 400);

  auto lapic = env.make();
  KJ_IF_MAYBE(problem, lapic->restore(snapshot)) FAIL(problem->cStr());
  KJ_IF_MAYBE(deadline, lapic->timerDeadlineNs()) {
    CHECK(*deadline == env.clock.nowNs() + 400);
  } else {
    FAIL("timer not armed");
  }

  // A one-shot with current count 0 and a non-zero initial count fires once.
  setWord(snapshot, 0x390, 0);
  auto fired = env.make();
  KJ_IF_MAYBE(problem, fired->restore(snapshot)) FAIL(problem->cStr());
  CHECK(inIrr(*fired, 0x30));
}

TEST_CASE("Save/restore carries an armed TSC deadline and the run state") {
  Env env;
  auto a = env.make({}, 3);
  softwareEnable(*a);
  mmioWrite(*a, Reg::LVT_TIMER, 0x40033);
  enterX2apic(*a);
  uint64_t deadline = env.tsc.now() + 10'000;
  msrWrite(*a, kMsrTscDeadline, deadline);
  LapicSnapshot snapshot = a->save();
  auto b = env.make({}, 3);
  REQUIRE(b->runState() == RunState::WAIT_FOR_SIPI);
  REQUIRE(a->runState() == RunState::WAIT_FOR_SIPI);
  a->startup(0x20);
  snapshot = a->save();
  KJ_IF_MAYBE(problem, b->restore(snapshot)) FAIL(problem->cStr());
  CHECK(b->runState() == RunState::RUNNING);
  CHECK(msrRead(*b, kMsrTscDeadline) == deadline);
  env.clock.advance(5'000);
  CHECK(b->onTimer() == 1);
  CHECK(inIrr(*b, 0x33));
}

struct Mutation {
  const char* what;
  std::function<void(LapicSnapshot&)> apply;
};

void putHidden32(LapicSnapshot& s, size_t at, uint32_t v) { memcpy(s.hidden.begin() + at, &v, 4); }

// Older hidden-state records are shorter prefixes of the current one.
LapicSnapshot asOlderVersion(LapicSnapshot snapshot, kj::byte version, kj::byte length) {
  snapshot.hidden = kj::heapArray(snapshot.hidden.slice(0, length));
  snapshot.hidden[4] = version;
  snapshot.hidden[6] = length;
  return snapshot;
}

TEST_CASE("Restore still accepts version 1 and 2 hidden-state records") {
  // Version 1 records end before the remaining-time shortfall: their whole
  // ns are taken as exact, which they are at the default 1 GHz input clock.
  // Version 2 records end before the running count's length: the count is
  // taken as a full period, which it is unless a mode switch moved the
  // minimum-period clamp.
  struct OlderVersion {
    kj::byte version, length;
  };
  for (OlderVersion older : {OlderVersion{1, 48}, OlderVersion{2, 56}}) {
    INFO("version " << int(older.version));
    Env env;
    auto a = busyLapic(env);
    LapicSnapshot snapshot = a->save();
    REQUIRE(snapshot.hidden.size() == 72);
    auto b = env.make({}, 1);
    KJ_IF_MAYBE(problem,
                b->restore(asOlderVersion(kj::mv(snapshot), older.version, older.length))) {
      FAIL(problem->cStr());
    }
    requireSameState(*a, *b);
    env.clock.advance(1'000'000);
    CHECK(a->onTimer() == b->onTimer());
    CHECK(a->page().bytes() == b->page().bytes());
  }
}

// Images as KVM's KVM_GET_LAPIC writes them (no hidden record) that a real
// KVM produces and its KVM_SET_LAPIC accepts: migration from KVM must take
// them, normalised to what this model holds (Lapic::Impl::normaliseImage).
TEST_CASE("KVM: restore accepts and normalises every image KVM_GET_LAPIC can produce") {
  Env env;
  auto kvmImage = [&](Lapic& lapic, bool x2apic32BitIds = true) {
    LapicSnapshot s = lapic.save(x2apic32BitIds);
    s.hidden = nullptr;
    return s;
  };

  SECTION("a periodic timer clamped to the minimum period, current count above initial count") {
    // Initial count 1000 at divide 1 is 1 us, clamped to 200 us: KVM saves
    // the time left in counts, 150000 with 150 us left.
    auto source = env.make();
    softwareEnable(*source);
    mmioWrite(*source, Reg::TIMER_DIVIDE_CONFIG, 0xB);
    mmioWrite(*source, Reg::LVT_TIMER, 0x20031);
    mmioWrite(*source, Reg::TIMER_INITIAL_COUNT, 1000);
    env.clock.advance(50'000);
    LapicSnapshot image = kvmImage(*source);
    CHECK(word(image, 0x390) == 150'000);  // as KVM writes it
    CHECK(source->timer().currentCount() <= 1000);  // what the guest reads
    auto target = env.make();
    KJ_IF_MAYBE(problem, target->restore(image)) FAIL(problem->cStr());
    REQUIRE(target->timerDeadlineNs() != nullptr);
    CHECK(target->timerDeadlineNs().orDefault(0) == env.clock.nowNs() + 150'000);
    CHECK(target->timer().currentCount() <= target->readRegister(Reg::TIMER_INITIAL_COUNT));
    // The count is KVM's own figure, not only our save's.
    setWord(image, 0x390, 150'000);
    auto again = env.make();
    KJ_IF_MAYBE(problem, again->restore(image)) FAIL(problem->cStr());
    CHECK(again->timerDeadlineNs().orDefault(0) == env.clock.nowNs() + 150'000);
    // After the running count, the grid of clamped 200 us periods.
    env.clock.advance(150'000);
    CHECK(again->onTimer() == 1);
    CHECK(again->timerDeadlineNs().orDefault(0) == env.clock.nowNs() + 200'000);
  }

  SECTION("a current count beyond the period is a full period") {
    auto source = env.make();
    softwareEnable(*source);
    mmioWrite(*source, Reg::TIMER_DIVIDE_CONFIG, 0xB);
    mmioWrite(*source, Reg::LVT_TIMER, 0x30);  // one-shot
    mmioWrite(*source, Reg::TIMER_INITIAL_COUNT, 1000);
    LapicSnapshot image = kvmImage(*source);
    setWord(image, 0x390, 2'000'000);
    auto target = env.make();
    KJ_IF_MAYBE(problem, target->restore(image)) FAIL(problem->cStr());
    CHECK(target->timerDeadlineNs().orDefault(0) == env.clock.nowNs() + 1000);
  }

  SECTION("x2APIC in the legacy layout with an ID field other than this vCPU's") {
    auto source = env.make({}, 0x105);
    enterX2apic(*source);
    LapicSnapshot image = kvmImage(*source, false);
    setWord(image, 0x20, 0x07000000);  // KVM takes the ID from the vCPU
    auto target = env.make({}, 0x105);
    KJ_IF_MAYBE(problem, target->restore(image)) FAIL(problem->cStr());
    CHECK(msrRead(*target, 0x802) == 0x105);
    CHECK(msrRead(*target, 0x80D) == LdrValue::forX2apicId(0x105).raw());
    // In the 32-bit layout a foreign ID is refused, as KVM's -EINVAL.
    LapicSnapshot wide = kvmImage(*source, true);
    setWord(wide, 0x20, 7);
    CHECK(env.make({}, 0x105)->restore(wide) != nullptr);
  }

  SECTION("LVT delivery status (bit 12) set, as KVM's LVT masks keep it") {
    auto source = busyLapic(env);
    LapicSnapshot image = kvmImage(*source);
    setWord(image, 0x330, word(image, 0x330) | 0x1000);  // LVT Thermal
    setWord(image, 0x320, word(image, 0x320) | 0x1000);  // LVT Timer
    auto target = env.make({}, 1);
    KJ_IF_MAYBE(problem, target->restore(image)) FAIL(problem->cStr());
    CHECK(target->readRegister(Reg::LVT_THERMAL) == word(image, 0x330) - 0x1000);
    CHECK(target->readRegister(Reg::LVT_TIMER) == word(image, 0x320) - 0x1000);
  }

  SECTION("xAPIC ICR low with reserved bit 20 (KVM stores every bit but 12)") {
    auto source = busyLapic(env);
    LapicSnapshot image = kvmImage(*source);
    setWord(image, 0x300, 0x00100440);
    auto target = env.make({}, 1);
    KJ_IF_MAYBE(problem, target->restore(image)) FAIL(problem->cStr());
    CHECK(target->readRegister(Reg::ICR_LOW) == 0x440);
  }

  SECTION("IRR and TMR bits of vectors 0-15") {
    auto source = busyLapic(env);
    LapicSnapshot image = kvmImage(*source);
    setWord(image, 0x200, word(image, 0x200) | 0x8);
    setWord(image, 0x180, word(image, 0x180) | 0x8);
    auto target = env.make({}, 1);
    KJ_IF_MAYBE(problem, target->restore(image)) FAIL(problem->cStr());
    CHECK((target->readRegister(Reg::IRR0) & 0xFFFF) == 0);
    CHECK((target->readRegister(Reg::TMR0) & 0xFFFF) == 0);
    CHECK(target->readRegister(Reg::IRR0) == (word(image, 0x200) & 0xFFFF0000));
  }

  SECTION("bytes 0x304-0x307 left over by x2APIC -> disabled -> xAPIC and INIT") {
    auto source = env.make({}, 1);
    enterX2apic(*source);
    msrWrite(*source, 0x830, 0x0000000300000400ull);
    LapicSnapshot image = kvmImage(*source);
    // What KVM's image holds after the guest leaves x2APIC through disabled
    // and takes an INIT: xAPIC mode, the stale upper ICR half still there.
    auto xapic = env.make({}, 1);
    LapicSnapshot after = kvmImage(*xapic);
    setWord(after, 0x304, word(image, 0x304));
    REQUIRE(word(after, 0x304) == 3);
    auto target = env.make({}, 1);
    KJ_IF_MAYBE(problem, target->restore(after)) FAIL(problem->cStr());
    CHECK(target->page().bytes() == xapic->page().bytes());
  }

  SECTION("an image with nothing to normalise restores exactly as saved") {
    auto source = busyLapic(env);
    LapicSnapshot image = kvmImage(*source);
    auto target = env.make({}, 1);
    KJ_IF_MAYBE(problem, target->restore(image)) FAIL(problem->cStr());
    LapicSnapshot back = kvmImage(*target);
    CHECK(memcmp(back.regs, image.regs, sizeof(image.regs)) == 0);
  }
}

TEST_CASE("Restore rejects malformed snapshots with a reason and leaves the vCPU unchanged") {
  Env env;
  auto source = busyLapic(env);
  LapicSnapshot valid = source->save();

  std::vector<Mutation> mutations = {
      {"reserved IA32_APIC_BASE bit", [](auto& s) { s.apicBase |= 1; }},
      {"IA32_APIC_BASE above MAXPHYADDR", [](auto& s) { s.apicBase |= 1ull << 50; }},
      {"EXTD without EN", [](auto& s) { s.apicBase = kBase | kApicBaseExtd; }},
      {"TPR reserved bits", [](auto& s) { setWord(s, 0x80, 0x120); }},
      {"ISR vector below 16", [](auto& s) { setWord(s, 0x100, 1u << 15); }},
      {"bytes between registers", [](auto& s) { setWord(s, 0x84, 1); }},
      {"reserved offset", [](auto& s) { setWord(s, 0x40, 1); }},
      {"LVT CMCI in a 6-LVT VM", [](auto& s) { setWord(s, 0x2F0, 0x10000); }},
      {"SELF IPI slot", [](auto& s) { setWord(s, 0x3F0, 0x40); }},
      {"DFR low bits", [](auto& s) { setWord(s, 0xE0, 0xF0000000); }},
      {"xAPIC ID low bits", [](auto& s) { setWord(s, 0x20, 0x01000001); }},
      {"DCR reserved bit", [](auto& s) { setWord(s, 0x3E0, 0xF); }},
      {"LVTs unmasked while software-disabled", [](auto& s) { setWord(s, 0xF0, 0xFF); }},
      {"ESR beyond bit 7", [](auto& s) { setWord(s, 0x280, 0x100); }},
      {"x2APIC with a foreign 32-bit ID",
       [](auto& s) {
         s.apicBase = kX2apic;
         setWord(s, 0x20, 7);
       }},
      {"hidden: truncated", [](auto& s) { s.hidden = kj::heapArray(s.hidden.slice(0, 20)); }},
      {"hidden: too long",
       [](auto& s) {
         auto longer = kj::heapArray<kj::byte>(s.hidden.size() + 4);
         memset(longer.begin(), 0, longer.size());
         memcpy(longer.begin(), s.hidden.begin(), s.hidden.size());
         s.hidden = kj::mv(longer);
       }},
      {"hidden: bad magic", [](auto& s) { s.hidden[0] ^= 0xFF; }},
      {"hidden: unknown version", [](auto& s) { s.hidden[4] = 4; }},
      {"hidden: version 0", [](auto& s) { s.hidden[4] = 0; }},
      {"hidden: length field", [](auto& s) { s.hidden[6] = 40; }},
      {"hidden: other vCPU", [](auto& s) { putHidden32(s, 8, 9); }},
      {"hidden: ESR accumulator bit 8", [](auto& s) { putHidden32(s, 12, 0x100); }},
      {"hidden: run state", [](auto& s) { s.hidden[16] = 7; }},
      {"hidden: LINT bits", [](auto& s) { s.hidden[17] = 4; }},
      {"hidden: timer mode out of range", [](auto& s) { s.hidden[18] = 4; }},
      {"hidden: timer mode vs LVT Timer", [](auto& s) { s.hidden[18] = 0; }},
      {"hidden: armed flag", [](auto& s) { s.hidden[19] = 2; }},
      {"hidden: DCR vs register", [](auto& s) { putHidden32(s, 20, 0x3); }},
      {"hidden: initial count vs register", [](auto& s) { putHidden32(s, 24, 5); }},
      {"hidden: remaining longer than the period",
       [](auto& s) {
         uint64_t ns = 10'000'000'000ull;
         memcpy(s.hidden.begin() + 32, &ns, 8);
       }},
      {"hidden: TSC deadline outside TSC-deadline mode",
       [](auto& s) {
         uint64_t tsc = 5;
         memcpy(s.hidden.begin() + 40, &tsc, 8);
       }},
      {"hidden: version 3 header on a version 1 length",
       [](auto& s) {
         s.hidden = kj::heapArray(s.hidden.slice(0, 48));
         s.hidden[6] = 48;
       }},
      {"hidden: remaining-time shortfall of a whole ns",
       [](auto& s) {
         uint64_t shortfall = 1'000'000'000;  // the default input clock's sub-ticks in 1 ns
         memcpy(s.hidden.begin() + 48, &shortfall, 8);
       }},
      {"hidden: count-length shortfall of a whole ns",
       [](auto& s) {
         uint64_t shortfall = 1'000'000'000;
         memcpy(s.hidden.begin() + 64, &shortfall, 8);
       }},
      {"hidden: running count shorter than the remaining time",
       [](auto& s) {
         uint64_t ns = 1;
         memcpy(s.hidden.begin() + 56, &ns, 8);
       }},
      {"hidden: running count longer than its initial count and divide allow",
       [](auto& s) {
         uint64_t ns = 10'000'000'000ull;
         memcpy(s.hidden.begin() + 56, &ns, 8);
       }},
      {"KVM-only: current count in TSC-deadline mode",
       [](auto& s) {
         s.hidden = nullptr;
         setWord(s, 0x320, 0x40031);
         setWord(s, 0x380, 0);
         setWord(s, 0x390, 5);
       }},
      {"initial count in TSC-deadline mode",
       [](auto& s) {
         s.hidden = nullptr;
         setWord(s, 0x320, 0x40031);
         setWord(s, 0x390, 0);
       }},
  };

  auto target = env.make({}, 1);
  mmioWrite(*target, Reg::TPR, 0x70);
  target->acceptInterrupt(0x33, TriggerMode::EDGE);  // software-disabled: refused
  softwareEnable(*target);
  target->acceptInterrupt(0x99, TriggerMode::EDGE);
  for (const Mutation& m : mutations) {
    INFO(m.what);
    LapicSnapshot bad = clone(valid);
    m.apply(bad);
    auto pageBefore = kj::heapArray(target->page().bytes());
    uint64_t baseBefore = target->apicBase();
    auto problem = target->restore(bad);
    CHECK(problem != nullptr);
    KJ_IF_MAYBE(p, problem) { CHECK(p->size() > 0); }
    CHECK(target->page().bytes() == pageBefore.asPtr());
    CHECK(target->apicBase() == baseBefore);
    CHECK(maybeVector(target->pendingVector()) == 0x99);
  }
  // The valid snapshot still restores.
  KJ_IF_MAYBE(problem, target->restore(valid)) FAIL(problem->cStr());
  CHECK(target->tpr() == 0x20);
}

TEST_CASE("Restore rejects x2APIC state when CPUID hides x2APIC") {
  Env env;
  auto source = env.make({}, 1);
  enterX2apic(*source);
  LapicConfig config;
  config.x2apicSupported = false;
  auto target = env.make(config, 1);
  CHECK(target->restore(source->save()) != nullptr);
  CHECK(target->mode() == ApicMode::XAPIC);
}

}  // namespace
}  // namespace vlapic::test
