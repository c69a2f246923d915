// SPDX-License-Identifier: MIT
// The channel's wire codec and its adaptive polling rule, without threads:
// every request and reply kind survives a round trip, and whatever a hostile
// peer writes decodes to a rejection, never to a crash or an exception.
#include "tests/channel/test-support.h"
#include "schema/channel/channel.capnp.h"
#include <capnp/serialize.h>
#include <catch2/catch.hpp>
#include <random>

namespace vlapic::channel {
namespace {

using test::expectedReply;
using test::requestNumber;

struct Slot {
  alignas(8) kj::byte bytes[kReplySlotBytes] = {};
  size_t used = 0;
  capnp::word copy[kReplySlotBytes / sizeof(capnp::word)];

  kj::ArrayPtr<kj::byte> slot(size_t size) { return kj::arrayPtr(bytes, size); }
  kj::ArrayPtr<const capnp::word> message() {
    auto copied = copyOutOfSlot(bytes, kReplySlotBytes, static_cast<uint32_t>(used), copy);
    return copied.get<kj::ArrayPtr<const capnp::word>>();
  }
};

// Where two encodings of the same size differ, which must be in exactly one
// byte: the low byte of a union discriminant, when the two messages differ
// only in which Void (or zero) member is set.
size_t onlyDifferingByte(const Slot& a, const Slot& b) {
  REQUIRE(a.used == b.used);
  size_t differing = 0, at = 0;
  for (size_t i = 0; i < a.used; i++) {
    if (a.bytes[i] != b.bytes[i]) {
      differing++;
      at = i;
    }
  }
  REQUIRE(differing == 1);
  return at;
}

Request roundTrip(const Request& request) {
  Slot slot;
  slot.used = encodeRequest(request, slot.slot(kRequestSlotBytes));
  auto decoded = decodeRequest(slot.message());
  REQUIRE(decoded.is<Request>());
  return decoded.get<Request>();
}

Reply roundTrip(const Reply& reply) {
  Slot slot;
  slot.used = encodeReply(reply, slot.slot(kReplySlotBytes));
  KJ_IF_MAYBE(decoded, decodeReply(slot.message())) {
    return *decoded;
  }
  FAIL("reply did not decode");
  return Reply();
}

TEST_CASE("channel: every request kind survives encode and decode", "[codec]") {
  for (uint64_t i = 0; i < 7 * 16; i++) {
    Request request = requestNumber(i);
    CHECK(roundTrip(request) == request);
  }
  Request extreme = Request::mmioWrite(~uint64_t(0), 0xFF, ~uint64_t(0));
  extreme.injectIfPending = true;
  CHECK(roundTrip(extreme) == extreme);
  CHECK(roundTrip(Request::msrWrite(0xFFFFFFFF, 0x8000000000000001)) ==
        Request::msrWrite(0xFFFFFFFF, 0x8000000000000001));
}

TEST_CASE("channel: every reply kind, status, reason and event survives encode and decode", "[codec]") {
  for (uint64_t i = 0; i < 7 * 16; i++) {
    Reply reply = expectedReply(requestNumber(i));
    CHECK(roundTrip(reply) == reply);
  }
  for (auto reason = uint8_t(AccessReason::NONE); reason <= uint8_t(AccessReason::TIMER_MODE);
       reason++) {
    Reply reply = Reply::access(AccessResult::ignored(static_cast<AccessReason>(reason), reason));
    CHECK(roundTrip(reply) == reply);
  }
  for (auto why: {Rejection::MALFORMED, Rejection::OVERSIZED, Rejection::UNKNOWN_REQUEST,
                  Rejection::HANDLER_FAILED}) {
    CHECK(roundTrip(Reply::rejected(why)) == Reply::rejected(why));
  }
}

TEST_CASE("channel: a full reply carries a whole Vm event queue and flags the overflow", "[codec]") {
  Reply reply = Reply::done();
  for (size_t i = 0; i < kMaxEventsPerReply; i++) {
    REQUIRE(reply.addEvent(Event{EventKind::EOI, static_cast<uint8_t>(i), uint32_t(i)}));
  }
  CHECK_FALSE(reply.moreEvents);
  CHECK_FALSE(reply.addEvent(Event{EventKind::NMI, 0, 1}));
  CHECK(reply.moreEvents);
  CHECK(reply.events().size() == kMaxEventsPerReply);
  Reply decoded = roundTrip(reply);
  CHECK(decoded == reply);
  CHECK(decoded.moreEvents);
}

TEST_CASE("channel: a reply carries the timer deadline and the vCPUs it notified, within bounds",
          "[codec]") {
  Reply reply = Reply::access(AccessResult{});
  CHECK(roundTrip(reply).timerDeadlineNs == nullptr);  // not armed
  reply.timerDeadlineNs = uint64_t(0x123456789ABCull);
  for (uint32_t v = 0; v < kMaxNotifiedPerReply; v++) REQUIRE(reply.addNotified(v * 1000 + 1));
  CHECK_FALSE(reply.addNotified(7));  // beyond the bound: left to the watchers
  REQUIRE(reply.addEvent(Event{EventKind::DELIVERABLE, 0x40, 1}));
  Reply decoded = roundTrip(reply);
  CHECK(decoded == reply);
  CHECK(decoded.timerDeadlineNs == uint64_t(0x123456789ABCull));
  CHECK(decoded.notified().size() == kMaxNotifiedPerReply);
  CHECK(decoded.notified()[kMaxNotifiedPerReply - 1] == (kMaxNotifiedPerReply - 1) * 1000 + 1);
  // A full event queue, the deadline and a full notified list fit one slot.
  Reply full = reply;
  for (size_t i = 1; i < kMaxEventsPerReply; i++) {
    REQUIRE(full.addEvent(Event{EventKind::EOI, static_cast<uint8_t>(i), 1}));
  }
  CHECK(roundTrip(full) == full);
}

TEST_CASE("channel: a request sets CR8 bits 3:0 only (SDM 10.8.6.1): above 15 is malformed", "[codec]") {
  // Encode a valid setCr8 and then patch the value the way a buggy or
  // hostile front could.
  Slot slot;
  slot.used = encodeRequest(Request::setCr8(0x0A), slot.slot(kRequestSlotBytes));
  kj::byte* value = std::find(slot.bytes + 8, slot.bytes + slot.used, kj::byte(0x0A));
  REQUIRE(value != slot.bytes + slot.used);
  *value = 0x1A;
  auto decoded = decodeRequest(slot.message());
  REQUIRE(decoded.is<Rejection>());
  CHECK(decoded.get<Rejection>() == Rejection::MALFORMED);
}

TEST_CASE("channel: a request kind from a newer schema is rejected as unknown", "[codec]") {
  // The union discriminant is the only 16-bit field that differs between
  // two encodings of Void operations; set it to a kind nobody knows.
  Slot ack, fetch;
  ack.used = encodeRequest(Request::acknowledge(), ack.slot(kRequestSlotBytes));
  fetch.used = encodeRequest(Request::fetchEvents(), fetch.slot(kRequestSlotBytes));
  ack.bytes[onlyDifferingByte(ack, fetch)] = 0x77;
  auto decoded = decodeRequest(ack.message());
  REQUIRE(decoded.is<Rejection>());
  CHECK(decoded.get<Rejection>() == Rejection::UNKNOWN_REQUEST);
}

// A reply built field by field, as a buggy or hostile server could write
// it, bypassing encodeReply(): each case starts from a reply that decodes
// and changes one field.
struct HostileReply {
  capnp::word scratch[4096] = {};
  capnp::MallocMessageBuilder builder{kj::arrayPtr(scratch, kj::size(scratch))};
  wire::ChannelReply::Builder root = builder.initRoot<wire::ChannelReply>();

  HostileReply() {
    auto access = root.initResult().initAccess();
    access.setStatus(wire::AccessStatus::OK);
    access.setReason(0);
    access.setValue(0x1234);
    root.initInject().setNone();
  }
  kj::Maybe<Reply> decoded() {
    auto segments = builder.getSegmentsForOutput();
    REQUIRE(segments.size() == 1);
    flat = capnp::messageToFlatArray(builder);
    return decodeReply(flat);
  }
  kj::Array<capnp::word> flat;
};

TEST_CASE("channel: a reply's fields out of range make it undecodable", "[codec]") {
  SECTION("the unchanged reply decodes") {
    HostileReply hostile;
    CHECK(hostile.decoded() != nullptr);
  }
  SECTION("CR8 is TPR[7:4] (SDM 10.8.6.1): 15 at most") {
    HostileReply highest, above;
    highest.root.setCr8(15);
    above.root.setCr8(16);
    CHECK(highest.decoded() != nullptr);
    CHECK(above.decoded() == nullptr);
  }
  SECTION("an access reason newer than this front knows") {
    HostileReply last, newer;
    last.root.getResult().getAccess().setReason(uint8_t(AccessReason::TIMER_MODE));
    newer.root.getResult().getAccess().setReason(uint8_t(AccessReason::TIMER_MODE) + 1);
    CHECK(last.decoded() != nullptr);
    CHECK(newer.decoded() == nullptr);
  }
  SECTION("an access status beyond ok, gp and ignored") {
    HostileReply ignored, unknown;
    ignored.root.getResult().getAccess().setStatus(wire::AccessStatus::IGNORED);
    unknown.root.getResult().getAccess().setStatus(static_cast<wire::AccessStatus>(3));
    CHECK(ignored.decoded() != nullptr);
    CHECK(unknown.decoded() == nullptr);
  }
  SECTION("a rejection beyond the four the channel knows") {
    HostileReply failed, unknown;
    failed.root.getResult().setRejected(wire::Rejection::HANDLER_FAILED);
    unknown.root.getResult().setRejected(static_cast<wire::Rejection>(4));
    CHECK(failed.decoded() != nullptr);
    CHECK(unknown.decoded() == nullptr);
  }
  SECTION("more events than a reply holds") {
    HostileReply full, overfull;
    full.root.initEvents(kMaxEventsPerReply);
    overfull.root.initEvents(kMaxEventsPerReply + 1);
    for (auto event: full.root.getEvents()) event.setNmi();
    for (auto event: overfull.root.getEvents()) event.setNmi();
    CHECK(full.decoded() != nullptr);
    CHECK(overfull.decoded() == nullptr);
  }
  SECTION("more notified vCPUs than a reply names") {
    HostileReply full, overfull;
    full.root.initNotified(kMaxNotifiedPerReply);
    overfull.root.initNotified(kMaxNotifiedPerReply + 1);
    CHECK(full.decoded() != nullptr);
    CHECK(overfull.decoded() == nullptr);
  }
}

// Encodes `a` and `b`, which must differ only in one union's discriminant,
// sets that discriminant to a member nobody knows and decodes the result.
kj::Maybe<Reply> replyWithUnknownMember(const Reply& a, const Reply& b) {
  Slot first, second;
  first.used = encodeReply(a, first.slot(kReplySlotBytes));
  second.used = encodeReply(b, second.slot(kReplySlotBytes));
  size_t at = onlyDifferingByte(first, second);
  REQUIRE(decodeReply(first.message()) != nullptr);
  first.bytes[at] = 0x77;
  return decodeReply(first.message());
}

TEST_CASE("channel: a reply with a result, inject or event kind from a newer schema is refused",
          "[codec]") {
  SECTION("result") {
    // rejected(malformed = 0) and done differ only in the discriminant.
    CHECK(replyWithUnknownMember(Reply::rejected(Rejection::MALFORMED), Reply::done()) == nullptr);
  }
  SECTION("inject") {
    Reply none = Reply::done(), vectorZero = Reply::done();
    vectorZero.inject = uint8_t(0);
    CHECK(replyWithUnknownMember(none, vectorZero) == nullptr);
  }
  SECTION("event") {
    Reply nmi = Reply::done(), smi = Reply::done();
    nmi.addEvent(Event{EventKind::NMI, 0, 1});
    smi.addEvent(Event{EventKind::SMI, 0, 1});
    CHECK(replyWithUnknownMember(nmi, smi) == nullptr);
  }
}

TEST_CASE("channel: slot sizes the peer declares are checked before anything is copied", "[codec]") {
  kj::byte slot[kRequestSlotBytes] = {};
  capnp::word copy[kRequestSlotBytes / sizeof(capnp::word)];
  auto check = [&](uint32_t declared, Rejection expected) {
    auto copied = copyOutOfSlot(slot, sizeof(slot), declared, copy);
    REQUIRE(copied.is<Rejection>());
    CHECK(copied.get<Rejection>() == expected);
  };
  check(kRequestSlotBytes + 8, Rejection::OVERSIZED);
  check(0xFFFFFFFF, Rejection::OVERSIZED);
  check(0, Rejection::MALFORMED);
  check(12, Rejection::MALFORMED);  // not whole words
  CHECK(copyOutOfSlot(slot, sizeof(slot), 16, copy).is<kj::ArrayPtr<const capnp::word>>());
}

TEST_CASE("channel: framing: more than one segment, truncation and trailing words are malformed",
          "[codec]") {
  Slot slot;
  slot.used = encodeRequest(Request::msrWrite(0x830, 5), slot.slot(kRequestSlotBytes));
  auto message = slot.message();
  auto rejected = [](kj::ArrayPtr<const capnp::word> m) {
    auto decoded = decodeRequest(m);
    return decoded.is<Rejection>() && decoded.get<Rejection>() == Rejection::MALFORMED;
  };
  CHECK(rejected(message.slice(0, message.size() - 1)));   // truncated
  CHECK(rejected(message.slice(0, 1)));                    // segment table only
  capnp::word longer[kRequestSlotBytes / sizeof(capnp::word)] = {};
  auto* longerBytes = reinterpret_cast<kj::byte*>(longer);
  memcpy(longerBytes, message.asBytes().begin(), message.asBytes().size());
  CHECK(rejected(kj::arrayPtr<const capnp::word>(longer, message.size() + 1)));  // trailing
  uint32_t twoSegments = 1;
  memcpy(longerBytes, &twoSegments, sizeof(twoSegments));
  CHECK(rejected(kj::arrayPtr<const capnp::word>(longer, message.size())));
}

TEST_CASE("channel: random bytes and bit flips never crash or throw out of the decoders", "[codec]") {
  std::mt19937_64 random(0x5eed);
  capnp::word buffer[kReplySlotBytes / sizeof(capnp::word)];
  uint64_t decodedRequests = 0, decodedReplies = 0;
  // Pure noise with a plausible segment table, so the reader gets past it.
  for (int round = 0; round < 20000; round++) {
    size_t words = 1 + random() % 40;
    auto* bytes = reinterpret_cast<kj::byte*>(buffer);
    for (size_t i = 0; i < words * sizeof(capnp::word); i++) bytes[i] = kj::byte(random());
    uint32_t table[2] = {0, static_cast<uint32_t>(words - 1)};
    memcpy(bytes, table, sizeof(table));
    auto message = kj::arrayPtr<const capnp::word>(buffer, words);
    if (decodeRequest(message).is<Request>()) decodedRequests++;
    if (decodeReply(message) != nullptr) decodedReplies++;
  }
  // Valid messages with bits flipped: far more reach deep into the decoder.
  for (int round = 0; round < 20000; round++) {
    Slot slot;
    slot.used = round % 2 == 0
        ? encodeRequest(requestNumber(round), slot.slot(kRequestSlotBytes))
        : encodeReply(expectedReply(requestNumber(round)), slot.slot(kReplySlotBytes));
    for (int flips = 0; flips < 1 + round % 4; flips++) {
      size_t bit = 64 + random() % ((slot.used - 8) * 8);  // keep the table
      slot.bytes[bit / 8] ^= kj::byte(1u << (bit % 8));
    }
    if (decodeRequest(slot.message()).is<Request>()) decodedRequests++;
    if (decodeReply(slot.message()) != nullptr) decodedReplies++;
  }
  // Reaching here is the test; the counts show both paths were exercised.
  CHECK(decodedRequests > 0);
  CHECK(decodedReplies > 0);
}

TEST_CASE("channel: poll window: grows from start to max while waits end within max", "[poll]") {
  PollWindow window(PollPolicy{0, 10'000, 200'000, true});
  CHECK(window.currentNs() == 0);
  window.onSlept(50'000);
  CHECK(window.currentNs() == 10'000);
  window.onSlept(50'000);
  CHECK(window.currentNs() == 20'000);
  for (int i = 0; i < 10; i++) window.onSlept(150'000);
  CHECK(window.currentNs() == 200'000);  // capped
  window.onPollHit();
  CHECK(window.currentNs() == 200'000);  // a hit keeps it
}

TEST_CASE("channel: poll window: shrinks to zero while waits outlast max", "[poll]") {
  PollWindow window(PollPolicy{200'000, 10'000, 200'000, true});
  window.onSlept(5'000'000);
  CHECK(window.currentNs() == 100'000);
  window.onSlept(5'000'000);
  CHECK(window.currentNs() == 50'000);
  for (int i = 0; i < 3; i++) window.onSlept(5'000'000);
  CHECK(window.currentNs() == 0);  // below start: stop spinning at all
  window.onSlept(1'000'000'000);
  CHECK(window.currentNs() == 0);
}

TEST_CASE("channel: poll window: a contended CPU stops the spin and holds growth off",
          "[poll]") {
  PollWindow window(PollPolicy{0, 10'000, 200'000, true});
  auto growToMax = [&]() {
    for (int i = 0; i < 6; i++) window.onSlept(50'000);
  };
  auto heldOffFor = [&](uint32_t waits) {
    for (uint32_t i = 0; i < waits; i++) window.onSlept(50'000);
    if (window.currentNs() != 0) return false;  // still held off until the last
    window.onSlept(50'000);
    return window.currentNs() == 10'000;        // then it probes again
  };
  growToMax();
  REQUIRE(window.currentNs() == 200'000);
  window.onContended();
  CHECK(window.currentNs() == 0);
  CHECK(heldOffFor(PollWindow::kMinContendedHoldoff));
  // Contended again straight after the probe: twice as long, and so on.
  window.onContended();
  CHECK(heldOffFor(2 * PollWindow::kMinContendedHoldoff));
  for (int i = 0; i < 20; i++) {
    window.onContended();
    heldOffFor(0);
  }
  window.onContended();
  CHECK(heldOffFor(PollWindow::kMaxContendedHoldoff));
  // A spin that hits means the CPU is free: back to the shortest hold-off.
  window.onPollHit();
  window.onContended();
  CHECK(heldOffFor(PollWindow::kMinContendedHoldoff));
}

TEST_CASE("channel: poll window: fixed policies never adapt", "[poll]") {
  PollWindow busy(PollPolicy::busyPolicy());
  busy.onSlept(1'000'000'000);
  busy.onContended();
  CHECK(busy.currentNs() == UINT64_MAX);
  PollWindow sleep(PollPolicy::sleepPolicy());
  sleep.onSlept(1'000);
  CHECK(sleep.currentNs() == 0);
}

}  // namespace
}  // namespace vlapic::channel
