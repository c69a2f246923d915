// Value types and the wire codec of the channel (channel.capnp).
#include "server/channel/shared-layout.h"
#include "server/channel/channel.capnp.h"
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

bool Reply::operator==(const Reply& other) const {
  // Only the fields the kind gives meaning to are compared: they are all
  // that travels on the wire.
  if (kind != other.kind || cr8 != other.cr8 || moreEvents != other.moreEvents ||
      inject != other.inject || events() != other.events()) {
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
  size_t words = 32 + reply.events().size();
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
  return writeFlat(builder, slot);
}

// ---- Decoding untrusted copies ----

namespace {

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
      // CR8 is 4 bits wide; the front injects #GP for a guest setting
      // bits 63:4 (SDM 10.8.6.1), so a value above 15 is a front bug.
      if (cr8 > 15) return Rejection::MALFORMED;
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
      AccessResult decoded;
      switch (access.getStatus()) {
        case wire::AccessStatus::OK: decoded.status = AccessStatus::OK; break;
        case wire::AccessStatus::GP: decoded.status = AccessStatus::GP; break;
        case wire::AccessStatus::IGNORED: decoded.status = AccessStatus::IGNORED; break;
        default: return nullptr;
      }
      uint8_t reason = access.getReason();
      if (reason > static_cast<uint8_t>(kLastKnownReason)) return nullptr;
      decoded.reason = static_cast<AccessReason>(reason);
      decoded.value = access.getValue();
      reply = Reply::access(decoded);
      break;
    }
    case wire::ChannelReply::Result::DONE:
      reply = Reply::done();
      break;
    case wire::ChannelReply::Result::REJECTED:
      switch (result.getRejected()) {
        case wire::Rejection::MALFORMED: reply = Reply::rejected(Rejection::MALFORMED); break;
        case wire::Rejection::OVERSIZED: reply = Reply::rejected(Rejection::OVERSIZED); break;
        case wire::Rejection::UNKNOWN_REQUEST:
          reply = Reply::rejected(Rejection::UNKNOWN_REQUEST);
          break;
        case wire::Rejection::HANDLER_FAILED:
          reply = Reply::rejected(Rejection::HANDLER_FAILED);
          break;
        default: return nullptr;
      }
      break;
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
  if (reply.cr8 > 15) return nullptr;
  auto events = root.getEvents();
  if (events.size() > kMaxEventsPerReply) return nullptr;
  for (auto event: events) {
    KJ_IF_MAYBE(decoded, decodeEvent(event)) {
      reply.addEvent(*decoded);
    } else {
      return nullptr;
    }
  }
  reply.moreEvents = root.getMoreEvents();
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
