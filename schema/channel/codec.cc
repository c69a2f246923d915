// SPDX-License-Identifier: MIT
// Value types and the wire codec of the channel (channel.capnp).
#include "schema/channel/shared-layout.h"
#include "schema/channel/channel.capnp.h"
#include <capnp/message.h>
#include <capnp/serialize.h>
#include <kj/debug.h>
#include <cstring>

namespace vlapic::channel {

// ---- Request and Reply helpers ----

Request Request::mmioRead(uint64_t gpa, uint8_t size) {
  Request r;
  r.operation = Operation::MMIO_READ;
  r.gpa = gpa;
  r.size = size;
  return r;
}
Request Request::mmioWrite(uint64_t gpa, uint8_t size, uint64_t value) {
  Request r = mmioRead(gpa, size);
  r.operation = Operation::MMIO_WRITE;
  r.value = value;
  return r;
}
Request Request::msrRead(uint32_t msr) {
  Request r;
  r.operation = Operation::MSR_READ;
  r.msr = msr;
  return r;
}
Request Request::msrWrite(uint32_t msr, uint64_t value) {
  Request r = msrRead(msr);
  r.operation = Operation::MSR_WRITE;
  r.value = value;
  return r;
}
Request Request::acknowledge() {
  Request r;
  r.operation = Operation::ACKNOWLEDGE;
  return r;
}
Request Request::setCr8(uint8_t cr8) {
  Request r;
  r.operation = Operation::SET_CR8;
  r.cr8 = cr8;
  return r;
}
Request Request::fetchEvents() { return Request(); }

kj::StringPtr rejectionName(Rejection rejection) {
  switch (rejection) {
    case Rejection::MALFORMED: return "malformed";
    case Rejection::OVERSIZED: return "oversized";
    case Rejection::UNKNOWN_REQUEST: return "unknown request";
    case Rejection::HANDLER_FAILED: return "handler failed";
  }
  return "unknown rejection";
}

Reply Reply::access(const AccessResult& result) {
  Reply r;
  r.kind = Kind::ACCESS;
  r.status = result.status;
  r.reason = result.reason;
  r.value = result.value;
  return r;
}
Reply Reply::done() { return Reply(); }
Reply Reply::rejected(Rejection why) {
  Reply r;
  r.kind = Kind::REJECTED;
  r.rejection = why;
  return r;
}

bool Reply::addEvent(Event event) {
  if (eventCount == kMaxEventsPerReply) {
    moreEvents = true;
    return false;
  }
  eventSlots[eventCount++] = event;
  return true;
}

bool Reply::addNotified(uint32_t vcpu) {
  if (notifiedCount == kMaxNotifiedPerReply) return false;
  notifiedSlots[notifiedCount++] = vcpu;
  return true;
}

bool Reply::operator==(const Reply& other) const {
  // Only the fields the kind gives meaning to are compared: they are all
  // that travels on the wire.
  if (kind != other.kind || cr8 != other.cr8 || moreEvents != other.moreEvents ||
      inject != other.inject || events() != other.events() ||
      timerDeadlineNs != other.timerDeadlineNs || notified() != other.notified()) {
    return false;
  }
  switch (kind) {
    case Kind::ACCESS:
      return status == other.status && reason == other.reason && value == other.value;
    case Kind::DONE:
      return true;
    case Kind::REJECTED:
      return rejection == other.rejection;
  }
  return false;
}

// ---- Encoding ----

namespace {

// Both the wire enums and ours are small; a slot holds a message whose
// first segment is at most the slot minus the 8-byte segment table.
constexpr size_t kMaxSlotWords = kReplySlotBytes / sizeof(capnp::word);

// The last AccessReason the wire knows; AccessReason is only ever extended.
constexpr AccessReason kLastKnownReason = AccessReason::TIMER_MODE;

// Writes `builder`'s single segment as a flat array (segment table: count-1
// = 0, then the segment's size in words) into `slot`.
size_t writeFlat(capnp::MallocMessageBuilder& builder, kj::ArrayPtr<kj::byte> slot) {
  auto segments = builder.getSegmentsForOutput();
  KJ_REQUIRE(segments.size() == 1, "channel message spilled out of its first segment");
  size_t bytes = 8 + segments[0].asBytes().size();
  KJ_REQUIRE(bytes <= slot.size(), "channel message larger than its slot", bytes, slot.size());
  uint32_t table[2] = {0, static_cast<uint32_t>(segments[0].size())};
  memcpy(slot.begin(), table, sizeof(table));
  memcpy(slot.begin() + 8, segments[0].asBytes().begin(), segments[0].asBytes().size());
  return bytes;
}

wire::AccessStatus toWire(AccessStatus status) {
  switch (status) {
    case AccessStatus::OK: return wire::AccessStatus::OK;
    case AccessStatus::GP: return wire::AccessStatus::GP;
    case AccessStatus::IGNORED: return wire::AccessStatus::IGNORED;
  }
  KJ_FAIL_REQUIRE("unknown AccessStatus", static_cast<int>(status));
}

wire::Rejection toWire(Rejection rejection) {
  switch (rejection) {
    case Rejection::MALFORMED: return wire::Rejection::MALFORMED;
    case Rejection::OVERSIZED: return wire::Rejection::OVERSIZED;
    case Rejection::UNKNOWN_REQUEST: return wire::Rejection::UNKNOWN_REQUEST;
    case Rejection::HANDLER_FAILED: return wire::Rejection::HANDLER_FAILED;
  }
  KJ_FAIL_REQUIRE("unknown Rejection", static_cast<int>(rejection));
}

void setEvent(wire::Event::Builder out, const Event& event) {
  out.setCount(event.count);
  switch (event.kind) {
    case EventKind::DELIVERABLE: out.setDeliverable(event.vector); return;
    case EventKind::NMI: out.setNmi(); return;
    case EventKind::SMI: out.setSmi(); return;
    case EventKind::INIT: out.setInit(); return;
    case EventKind::SIPI: out.setSipi(event.vector); return;
    case EventKind::EXTINT: out.setExtInt(); return;
    case EventKind::EOI: out.setEoi(event.vector); return;
    case EventKind::TIMER: out.setTimer(); return;
  }
  KJ_FAIL_REQUIRE("unknown EventKind", static_cast<int>(event.kind));
}

}  // namespace

size_t encodeRequest(const Request& request, kj::ArrayPtr<kj::byte> slot) {
  constexpr size_t kWords = kRequestSlotBytes / sizeof(capnp::word);
  capnp::word scratch[kWords] = {};
  capnp::MallocMessageBuilder builder(kj::arrayPtr(scratch, kWords));
  auto root = builder.initRoot<wire::ChannelRequest>();
  auto operation = root.initOperation();
  switch (request.operation) {
    case Operation::MMIO_READ:
    case Operation::MMIO_WRITE: {
      auto mmio = request.operation == Operation::MMIO_READ ? operation.initMmioRead()
                                                             : operation.initMmioWrite();
      mmio.setGpa(request.gpa);
      mmio.setSize(request.size);
      mmio.setValue(request.value);
      break;
    }
    case Operation::MSR_READ:
    case Operation::MSR_WRITE: {
      auto msr = request.operation == Operation::MSR_READ ? operation.initMsrRead()
                                                           : operation.initMsrWrite();
      msr.setMsr(request.msr);
      msr.setValue(request.value);
      break;
    }
    case Operation::ACKNOWLEDGE: operation.setAcknowledge(); break;
    case Operation::SET_CR8: operation.setSetCr8(request.cr8); break;
    case Operation::FETCH_EVENTS: operation.setFetchEvents(); break;
  }
  root.setInjectIfPending(request.injectIfPending);
  return writeFlat(builder, slot);
}

size_t encodeReply(const Reply& reply, kj::ArrayPtr<kj::byte> slot) {
  // The builder needs a zeroed first segment; zero only what this reply can
  // use (a few words plus one per event), not the whole slot.
  capnp::word scratch[kMaxSlotWords];
  size_t words = 32 + reply.events().size() + (reply.notified().size() + 1) / 2;
  memset(scratch, 0, words * sizeof(capnp::word));
  capnp::MallocMessageBuilder builder(kj::arrayPtr(scratch, words));
  auto root = builder.initRoot<wire::ChannelReply>();
  auto result = root.initResult();
  switch (reply.kind) {
    case Reply::Kind::ACCESS: {
      auto access = result.initAccess();
      access.setStatus(toWire(reply.status));
      access.setReason(static_cast<uint8_t>(reply.reason));
      access.setValue(reply.value);
      break;
    }
    case Reply::Kind::DONE: result.setDone(); break;
    case Reply::Kind::REJECTED: result.setRejected(toWire(reply.rejection)); break;
  }
  auto inject = root.initInject();
  KJ_IF_MAYBE(vector, reply.inject) {
    inject.setVector(*vector);
  } else {
    inject.setNone();
  }
  root.setCr8(reply.cr8);
  auto events = reply.events();
  auto list = root.initEvents(events.size());
  for (auto i: kj::indices(events)) setEvent(list[i], events[i]);
  root.setMoreEvents(reply.moreEvents);
  KJ_IF_MAYBE(deadline, reply.timerDeadlineNs) root.setTimerDeadlineNs(*deadline);
  auto notified = reply.notified();
  if (notified.size() > 0) {
    auto out = root.initNotified(notified.size());
    for (auto i: kj::indices(notified)) out.set(i, notified[i]);
  }
  return writeFlat(builder, slot);
}

// ---- Decoding untrusted copies ----

namespace {

// Every range check the decoders make on a field of an untrusted message, as
// one table: the field (which names its message kind) and the largest value
// it may carry. The decoders check fields only through within(), so a new
// limit is one new row here (and one hostile-message test in
// tests/channel/codec-test.cc). A field out of range makes a request
// MALFORMED and a reply undecodable, like any other malformed message.
enum class Field : uint8_t {
  REQUEST_CR8,    // ChannelRequest.setCr8
  REPLY_CR8,      // ChannelReply.cr8
  REPLY_EVENTS,   // ChannelReply.events, the list's length
  REPLY_NOTIFIED, // ChannelReply.notified, the list's length
  ACCESS_STATUS,  // AccessResult.status (a wire enum: a newer peer may send more)
  ACCESS_REASON,  // AccessResult.reason
  REJECTION,      // ChannelReply.rejected
};

struct FieldLimit {
  Field field;
  uint64_t max;
};

constexpr FieldLimit kFieldLimits[] = {
    // CR8 is 4 bits wide; the front injects #GP for a guest setting bits
    // 63:4 (SDM 10.8.6.1), so a value above 15 is a front bug.
    {Field::REQUEST_CR8, 15},
    // CR8 after the call is TPR[7:4] (SDM 10.8.6.1); the server's runHandler
    // refuses a handler's reply above 15 where the bug is.
    {Field::REPLY_CR8, 15},
    // Enough for a whole Vm event queue; beyond it the server sets moreEvents.
    {Field::REPLY_EVENTS, kMaxEventsPerReply},
    {Field::REPLY_NOTIFIED, kMaxNotifiedPerReply},
    {Field::ACCESS_STATUS, static_cast<uint64_t>(wire::AccessStatus::IGNORED)},
    // AccessReason is only ever extended: a larger value is from the future.
    {Field::ACCESS_REASON, static_cast<uint64_t>(kLastKnownReason)},
    {Field::REJECTION, static_cast<uint64_t>(wire::Rejection::HANDLER_FAILED)},
};

// The table is indexed by Field: row i describes Field(i).
constexpr bool limitsIndexedByField() {
  for (size_t i = 0; i < kj::size(kFieldLimits); i++) {
    if (static_cast<size_t>(kFieldLimits[i].field) != i) return false;
  }
  return true;
}
static_assert(limitsIndexedByField(), "kFieldLimits rows must follow the order of Field");

constexpr bool within(Field field, uint64_t value) {
  return value <= kFieldLimits[static_cast<size_t>(field)].max;
}

// A wire enum within its limit converts by number: both sides number alike.
static_assert(static_cast<uint8_t>(AccessStatus::OK) == static_cast<uint16_t>(wire::AccessStatus::OK) &&
              static_cast<uint8_t>(AccessStatus::GP) == static_cast<uint16_t>(wire::AccessStatus::GP) &&
              static_cast<uint8_t>(AccessStatus::IGNORED) ==
                  static_cast<uint16_t>(wire::AccessStatus::IGNORED));
static_assert(static_cast<uint8_t>(Rejection::MALFORMED) == static_cast<uint16_t>(wire::Rejection::MALFORMED) &&
              static_cast<uint8_t>(Rejection::OVERSIZED) == static_cast<uint16_t>(wire::Rejection::OVERSIZED) &&
              static_cast<uint8_t>(Rejection::UNKNOWN_REQUEST) ==
                  static_cast<uint16_t>(wire::Rejection::UNKNOWN_REQUEST) &&
              static_cast<uint8_t>(Rejection::HANDLER_FAILED) ==
                  static_cast<uint16_t>(wire::Rejection::HANDLER_FAILED));

// Generous for our messages (a reply is < 60 words) yet small enough that a
// hostile message cannot make a reader do real work.
capnp::ReaderOptions untrustedReaderOptions() {
  capnp::ReaderOptions options;
  options.traversalLimitInWords = 4 * kMaxSlotWords;
  options.nestingLimit = 4;
  return options;
}

// Checks the flat-array framing ourselves: exactly one segment that fills
// the message, so the reader never looks past the copy and trailing garbage
// is refused rather than ignored.
bool singleSegmentFraming(kj::ArrayPtr<const capnp::word> message) {
  if (message.size() < 1) return false;
  uint32_t table[2];
  memcpy(table, message.begin(), sizeof(table));
  return table[0] == 0 && static_cast<size_t>(table[1]) + 1 == message.size();
}

kj::OneOf<Request, Rejection> decodeRequestFields(kj::ArrayPtr<const capnp::word> message) {
  capnp::FlatArrayMessageReader reader(message, untrustedReaderOptions());
  auto root = reader.getRoot<wire::ChannelRequest>();
  Request request;
  auto operation = root.getOperation();
  switch (operation.which()) {
    case wire::ChannelRequest::Operation::MMIO_READ:
    case wire::ChannelRequest::Operation::MMIO_WRITE: {
      bool read = operation.which() == wire::ChannelRequest::Operation::MMIO_READ;
      auto mmio = read ? operation.getMmioRead() : operation.getMmioWrite();
      request = read ? Request::mmioRead(mmio.getGpa(), mmio.getSize())
                     : Request::mmioWrite(mmio.getGpa(), mmio.getSize(), mmio.getValue());
      break;
    }
    case wire::ChannelRequest::Operation::MSR_READ:
      request = Request::msrRead(operation.getMsrRead().getMsr());
      break;
    case wire::ChannelRequest::Operation::MSR_WRITE: {
      auto msr = operation.getMsrWrite();
      request = Request::msrWrite(msr.getMsr(), msr.getValue());
      break;
    }
    case wire::ChannelRequest::Operation::ACKNOWLEDGE:
      request = Request::acknowledge();
      break;
    case wire::ChannelRequest::Operation::SET_CR8: {
      uint8_t cr8 = operation.getSetCr8();
      if (!within(Field::REQUEST_CR8, cr8)) return Rejection::MALFORMED;
      request = Request::setCr8(cr8);
      break;
    }
    case wire::ChannelRequest::Operation::FETCH_EVENTS:
      request = Request::fetchEvents();
      break;
    default:
      return Rejection::UNKNOWN_REQUEST;
  }
  request.injectIfPending = root.getInjectIfPending();
  return request;
}

kj::Maybe<Event> decodeEvent(wire::Event::Reader in) {
  uint32_t count = in.getCount();
  switch (in.which()) {
    case wire::Event::DELIVERABLE: return Event{EventKind::DELIVERABLE, in.getDeliverable(), count};
    case wire::Event::NMI: return Event{EventKind::NMI, 0, count};
    case wire::Event::SMI: return Event{EventKind::SMI, 0, count};
    case wire::Event::INIT: return Event{EventKind::INIT, 0, count};
    case wire::Event::SIPI: return Event{EventKind::SIPI, in.getSipi(), count};
    case wire::Event::EXT_INT: return Event{EventKind::EXTINT, 0, count};
    case wire::Event::EOI: return Event{EventKind::EOI, in.getEoi(), count};
    case wire::Event::TIMER: return Event{EventKind::TIMER, 0, count};
  }
  return nullptr;
}

kj::Maybe<Reply> decodeReplyFields(kj::ArrayPtr<const capnp::word> message) {
  capnp::FlatArrayMessageReader reader(message, untrustedReaderOptions());
  auto root = reader.getRoot<wire::ChannelReply>();
  Reply reply;
  auto result = root.getResult();
  switch (result.which()) {
    case wire::ChannelReply::Result::ACCESS: {
      auto access = result.getAccess();
      auto status = static_cast<uint16_t>(access.getStatus());
      uint8_t reason = access.getReason();
      if (!within(Field::ACCESS_STATUS, status) || !within(Field::ACCESS_REASON, reason)) {
        return nullptr;
      }
      AccessResult decoded;
      decoded.status = static_cast<AccessStatus>(status);
      decoded.reason = static_cast<AccessReason>(reason);
      decoded.value = access.getValue();
      reply = Reply::access(decoded);
      break;
    }
    case wire::ChannelReply::Result::DONE:
      reply = Reply::done();
      break;
    case wire::ChannelReply::Result::REJECTED: {
      auto rejection = static_cast<uint16_t>(result.getRejected());
      if (!within(Field::REJECTION, rejection)) return nullptr;
      reply = Reply::rejected(static_cast<Rejection>(rejection));
      break;
    }
    default:
      return nullptr;
  }
  auto inject = root.getInject();
  switch (inject.which()) {
    case wire::ChannelReply::Inject::NONE: break;
    case wire::ChannelReply::Inject::VECTOR: reply.inject = inject.getVector(); break;
    default: return nullptr;
  }
  reply.cr8 = root.getCr8();
  if (!within(Field::REPLY_CR8, reply.cr8)) return nullptr;
  auto events = root.getEvents();
  if (!within(Field::REPLY_EVENTS, events.size())) return nullptr;
  for (auto event: events) {
    KJ_IF_MAYBE(decoded, decodeEvent(event)) {
      reply.addEvent(*decoded);
    } else {
      return nullptr;
    }
  }
  reply.moreEvents = root.getMoreEvents();
  if (root.getTimerDeadlineNs() != 0) reply.timerDeadlineNs = root.getTimerDeadlineNs();
  auto notified = root.getNotified();
  if (!within(Field::REPLY_NOTIFIED, notified.size())) return nullptr;
  for (uint32_t vcpu: notified) reply.addNotified(vcpu);
  return reply;
}

}  // namespace

kj::OneOf<Request, Rejection> decodeRequest(kj::ArrayPtr<const capnp::word> message) {
  if (!singleSegmentFraming(message)) return Rejection::MALFORMED;
  kj::OneOf<Request, Rejection> decoded = Rejection::MALFORMED;
  // Cap'n Proto reports out-of-bounds pointers and exceeded limits by
  // throwing; for untrusted input that is just "malformed".
  KJ_IF_MAYBE(exception, kj::runCatchingExceptions([&]() {
    decoded = decodeRequestFields(message);
  })) {
    (void)exception;
    return Rejection::MALFORMED;
  }
  return decoded;
}

kj::Maybe<Reply> decodeReply(kj::ArrayPtr<const capnp::word> message) {
  if (!singleSegmentFraming(message)) return nullptr;
  kj::Maybe<Reply> decoded;
  KJ_IF_MAYBE(exception, kj::runCatchingExceptions([&]() {
    decoded = decodeReplyFields(message);
  })) {
    (void)exception;
    return nullptr;
  }
  return decoded;
}

kj::OneOf<kj::ArrayPtr<const capnp::word>, Rejection> copyOutOfSlot(
    const kj::byte* slot, size_t slotBytes, uint32_t declaredBytes,
    kj::ArrayPtr<capnp::word> copy) {
  if (declaredBytes > slotBytes || declaredBytes > copy.asBytes().size()) {
    return Rejection::OVERSIZED;
  }
  if (declaredBytes == 0 || declaredBytes % sizeof(capnp::word) != 0) {
    return Rejection::MALFORMED;
  }
  // The only read of the peer's bytes: everything after works on the copy,
  // so a peer rewriting the slot meanwhile cannot change what was checked.
  memcpy(copy.begin(), slot, declaredBytes);
  return kj::arrayPtr<const capnp::word>(copy.begin(), declaredBytes / sizeof(capnp::word));
}

}  // namespace vlapic::channel
