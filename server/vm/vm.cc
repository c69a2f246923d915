// SPDX-License-Identifier: MIT
// The per-VM delivery layer. See vm.h for the contract and README.md beside
// this file for the routing rules and the choices the SDM leaves open.

#include "server/vm/vm.h"
#include "server/vm/destination-map.h"
#include <kj/debug.h>
#include <algorithm>

namespace vlapic {

namespace {

constexpr uint32_t kNoVcpu = 0xFFFFFFFF;

void saturatingAdd(uint32_t& counter, uint32_t amount) {
  counter = amount > UINT32_MAX - counter ? UINT32_MAX : counter + amount;
}

// Events of these kinds appear at most once in a queue.
bool isSingletonKind(VcpuEvent::Kind kind) {
  return kind != VcpuEvent::Kind::EOI;
}

}  // namespace

kj::StringPtr vcpuEventKindName(VcpuEvent::Kind kind) {
  switch (kind) {
    case VcpuEvent::Kind::VECTOR_DELIVERABLE: return "vector-deliverable";
    case VcpuEvent::Kind::NMI: return "NMI";
    case VcpuEvent::Kind::SMI: return "SMI";
    case VcpuEvent::Kind::INIT: return "INIT";
    case VcpuEvent::Kind::SIPI: return "SIPI";
    case VcpuEvent::Kind::EXTINT: return "ExtINT";
    case VcpuEvent::Kind::EOI: return "EOI";
    case VcpuEvent::Kind::TIMER_EXPIRED: return "timer-expired";
  }
  return "unknown";
}

kj::StringPtr deliveryStatusName(DeliveryStatus status) {
  switch (status) {
    case DeliveryStatus::DELIVERED: return "delivered";
    case DeliveryStatus::NO_TARGET: return "no target";
    case DeliveryStatus::DROPPED: return "dropped";
    case DeliveryStatus::NOT_AN_INTERRUPT: return "not an interrupt";
  }
  return "unknown";
}

kj::Maybe<kj::String> validateVmConfig(const VmConfig& config) {
  if (config.vcpuCount == 0 || config.vcpuCount > kMaxVcpus) {
    return kj::str("vCPU count ", config.vcpuCount, " outside 1..", kMaxVcpus);
  }
  if (config.apicIds.size() != 0 && config.apicIds.size() != config.vcpuCount) {
    return kj::str(config.apicIds.size(), " APIC IDs for ", config.vcpuCount, " vCPUs");
  }
  if (config.bootVcpu >= config.vcpuCount) {
    return kj::str("boot vCPU ", config.bootVcpu, " is not a vCPU of ", config.vcpuCount);
  }
  if (config.tscHz == 0) return kj::str("TSC frequency must not be 0");
  if (config.ioapic.present) {
    KJ_IF_MAYBE(problem, validateIoApicConfig(config.ioapic)) {
      return kj::str("I/O APIC: ", *problem);
    }
  }
  if (config.lapic.lvtEntries != 6 && config.lapic.lvtEntries != 7) {
    return kj::str("LVT entries must be 6 or 7 (with CMCI), not ", config.lapic.lvtEntries);
  }
  if (config.lapic.timer.timerHz == 0) return kj::str("timer frequency must not be 0");

  auto ids = kj::heapArray<uint32_t>(config.vcpuCount);
  for (uint32_t i = 0; i < config.vcpuCount; i++) {
    ids[i] = config.apicIds.size() == 0 ? i : config.apicIds[i];
  }
  for (uint32_t i = 0; i < config.vcpuCount; i++) {
    if (ids[i] == kX2apicBroadcast) {
      return kj::str("vCPU ", i, ": APIC ID 0xFFFFFFFF is the x2APIC broadcast address");
    }
    if (!config.lapic.x2apicSupported && ids[i] >= kXapicBroadcast) {
      return kj::str("vCPU ", i, ": APIC ID ", ids[i],
                     " needs x2APIC (xAPIC IDs are 8 bits and 0xFF is the broadcast)");
    }
  }
  std::sort(ids.begin(), ids.end());
  for (uint32_t i = 1; i < ids.size(); i++) {
    if (ids[i] == ids[i - 1]) return kj::str("APIC ID ", ids[i], " is given twice");
  }
  return nullptr;
}

kj::Maybe<DecodedMsi> decodeMsi(uint64_t address, uint32_t data) {
  // SDM "Message Address Register Format": bits 31:20 are 0xFEE for every
  // interrupt message; anything else is an ordinary memory write.
  if (((address >> 20) & 0xFFF) != 0xFEE) return nullptr;
  DecodedMsi msi;
  InterruptMessage& m = msi.message;
  uint32_t addressHigh = uint32_t(address >> 32);
  m.destination = uint32_t((address >> 12) & 0xFF)
                | uint32_t(((address >> 5) & 0x7F) << 8)  // extended destination ID
                | (addressHigh & 0xFFFFFF00);              // KVM's 32-bit x2APIC API
  // Only a destination with bits 31:8 in the high address is x2APIC-format
  // (its broadcast is 0xFFFFFFFF); the 15-bit form stays xAPIC-format, so
  // 0xFF still broadcasts.
  m.x2apicFormat = (addressHigh & 0xFFFFFF00) != 0;
  msi.redirectionHint = (address >> 3) & 1;
  m.logicalDestination = (address >> 2) & 1;
  m.vector = data & 0xFF;
  m.deliveryMode = DeliveryMode((data >> 8) & 7);
  m.levelAssert = (data >> 14) & 1;
  m.trigger = (data >> 15) & 1 ? TriggerMode::LEVEL : TriggerMode::EDGE;
  // Edge-triggered messages carry no level (SDM: "Level ... ignored for
  // edge-triggered interrupts"); treat them as asserts.
  if (m.trigger == TriggerMode::EDGE) m.levelAssert = true;
  return msi;
}

// ---------------------------------------------------------------------------

struct Vm::Impl final : public IoApicSink {
  struct Vcpu {
    kj::Own<Lapic> lapic;
    uint32_t initialApicId;
    kj::Vector<VcpuEvent> events;
    // The vector of the last VECTOR_DELIVERABLE queued for this vCPU, while
    // it is still what pendingVector() says; nullptr when none was reported.
    kj::Maybe<uint8_t> reportedVector;
    kj::Maybe<uint64_t> reportedDeadline;
    uint64_t routingGeneration;
  };

  Impl(hal::Hal& hal, const VmConfig& config)
      : tsc(hal.clock(), config.tscHz, config.tscOffset),
        bootVcpu(config.bootVcpu),
        policy(config.lowestPriority),
        useDestinationMap(config.destinationMap),
        x2apicBroadcastQuirk(config.x2apicBroadcastQuirk) {
    auto builder = kj::heapArrayBuilder<Vcpu>(config.vcpuCount);
    for (uint32_t i = 0; i < config.vcpuCount; i++) {
      uint32_t id = config.apicIds.size() == 0 ? i : config.apicIds[i];
      auto lapic = kj::heap<Lapic>(hal, tsc, config.lapic, id, i == config.bootVcpu);
      uint64_t generation = lapic->routingGeneration();
      kj::Maybe<uint64_t> deadline = lapic->timerDeadlineNs();
      builder.add(Vcpu{kj::mv(lapic), id, {}, nullptr, deadline, generation});
    }
    vcpus = builder.finish();
    seenStamps = kj::heapArray<uint32_t>(vcpus.size());
    std::fill(seenStamps.begin(), seenStamps.end(), 0);
  }

  // The I/O APIC's messages take the path every external message takes.
  void sendIoApicMessage(const InterruptMessage& message) override {
    stats.ioapicMessages++;
    deliverExternal(message, false);
  }

  GuestTsc tsc;
  uint32_t bootVcpu;
  LowestPriorityPolicy policy;
  bool useDestinationMap;
  bool x2apicBroadcastQuirk;
  kj::Array<Vcpu> vcpus;
  // After vcpus: its messages reach them (and it is destroyed first).
  kj::Maybe<kj::Own<IoApic>> ioapic;
  kj::Maybe<VmEventListener&> listener;
  mutable VmStats stats;
  // The previous lowest-priority winner (kNoVcpu: none yet).
  uint32_t lowestPriorityCursor = kNoVcpu;

  mutable DestinationMap map;
  mutable bool mapDirty = true;
  // Scratch space for resolving destinations without allocating.
  mutable kj::Vector<uint32_t> targets;
  kj::Vector<uint32_t> candidates;
  mutable kj::Array<uint32_t> seenStamps;
  mutable uint32_t currentStamp = 0;

  Vcpu& vcpu(uint32_t index) {
    KJ_REQUIRE(index < vcpus.size(), "no such vCPU", index, vcpus.size());
    return vcpus[index];
  }
  const Vcpu& vcpu(uint32_t index) const {
    KJ_REQUIRE(index < vcpus.size(), "no such vCPU", index, vcpus.size());
    return vcpus[index];
  }

  // ---- Events ----

  void notifyPending(uint32_t index) {
    KJ_IF_MAYBE(l, listener) l->eventsPending(index);
  }

  // Appends or merges one event, per the coalescing rules in vm.h.
  void pushEvent(uint32_t index, VcpuEvent event) {
    auto& events = vcpus[index].events;
    bool wasEmpty = events.empty();
    switch (event.kind) {
      case VcpuEvent::Kind::VECTOR_DELIVERABLE:
        KJ_FAIL_ASSERT("vector-deliverable is queued by refreshDeliverable()");
      case VcpuEvent::Kind::NMI:
        // NMIs are counted, never dropped. The CPU latches one NMI while it
        // handles another (SDM 6.7.1, "Handling Multiple NMIs"), so two
        // NMIs sent together are both taken; whether the guest is inside
        // its NMI handler (and so whether a second one collapses) only the
        // front can see (KVM's nmi.masked). The queue keeps one NMI entry
        // whose count says how many arrived since the front last fetched.
        for (auto& queued : events) {
          if (queued.kind == event.kind) {
            saturatingAdd(queued.count, event.count);
            stats.eventsCoalesced++;  // merged into the count, not lost
            return;
          }
        }
        break;
      case VcpuEvent::Kind::SMI:
      case VcpuEvent::Kind::EXTINT:
      case VcpuEvent::Kind::SIPI:
        // One SMI is latched by the CPU; ExtINT means "INTR is asserted", a
        // level; a second SIPI after the first started the AP is ignored by
        // it (SDM "MP Initialization Protocol").
        for (auto& queued : events) {
          if (queued.kind == event.kind) {
            stats.eventsCoalesced++;
            return;
          }
        }
        break;
      case VcpuEvent::Kind::INIT: {
        // INIT resets the processor: an INIT or SIPI still queued before it
        // has no effect left, and the reset discards a pending NMI or SMI
        // (as KVM's vCPU reset does). Later NMIs and SMIs queue after it.
        size_t kept = 0;
        for (size_t i = 0; i < events.size(); i++) {
          auto kind = events[i].kind;
          if (kind == VcpuEvent::Kind::INIT || kind == VcpuEvent::Kind::SIPI ||
              kind == VcpuEvent::Kind::NMI || kind == VcpuEvent::Kind::SMI) {
            stats.eventsCoalesced++;
          } else {
            events[kept++] = events[i];
          }
        }
        events.resize(kept);
        break;
      }
      case VcpuEvent::Kind::EOI:
      case VcpuEvent::Kind::TIMER_EXPIRED:
        for (auto& queued : events) {
          if (queued.kind == event.kind && queued.vector == event.vector) {
            saturatingAdd(queued.count, event.count);
            stats.eventsCoalesced++;
            return;
          }
        }
        break;
    }
    append(index, event, wasEmpty);
  }

  // Queues TIMER_EXPIRED for the expiries the LAPIC counted since `before`
  // (its stats().timerExpiries then). Besides onTimer(), a register access
  // can collect an expiry: a WRMSR to IA32_TSC_DEADLINE with a deadline
  // already past raises the interrupt within the write (SDM 11.5.4.1), and a
  // reprogram or restore collects one that was due. Each is an expiry the
  // front must hear of, wherever it was collected.
  void queueTimerExpiriesSince(uint32_t index, uint64_t before) {
    uint64_t expiries = vcpus[index].lapic->stats().timerExpiries - before;
    if (expiries == 0) return;
    stats.timerExpiries += expiries;
    uint32_t count = expiries > UINT32_MAX ? UINT32_MAX : uint32_t(expiries);
    pushEvent(index, VcpuEvent{VcpuEvent::Kind::TIMER_EXPIRED, 0, count});
  }

  // Range-checks `index`: the access wrappers call this first.
  uint64_t timerExpiriesSoFar(uint32_t index) const {
    return vcpu(index).lapic->stats().timerExpiries;
  }

  void append(uint32_t index, VcpuEvent event, bool queueWasEmpty) {
    vcpus[index].events.add(event);
    stats.eventsQueued++;
    if (queueWasEmpty) notifyPending(index);
  }

  // VECTOR_DELIVERABLE is state: keep at most one, the latest, and withdraw
  // it when nothing is deliverable any more.
  void refreshDeliverable(uint32_t index) {
    auto& v = vcpus[index];
    kj::Maybe<uint8_t> pending = v.lapic->pendingVector();
    if (pending == v.reportedVector) return;
    auto& events = v.events;
    bool wasEmpty = events.empty();
    for (size_t i = 0; i < events.size(); i++) {
      if (events[i].kind == VcpuEvent::Kind::VECTOR_DELIVERABLE) {
        for (size_t j = i + 1; j < events.size(); j++) events[j - 1] = events[j];
        events.removeLast();
        stats.eventsCoalesced++;
        break;
      }
    }
    v.reportedVector = pending;
    KJ_IF_MAYBE(vector, pending) {
      append(index, VcpuEvent{VcpuEvent::Kind::VECTOR_DELIVERABLE, *vector, 1}, wasEmpty);
    }
  }

  void checkTimer(uint32_t index) {
    auto& v = vcpus[index];
    kj::Maybe<uint64_t> deadline = v.lapic->timerDeadlineNs();
    if (deadline == v.reportedDeadline) return;
    v.reportedDeadline = deadline;
    KJ_IF_MAYBE(l, listener) l->timerChanged(index);
  }

  void checkRouting(uint32_t index) {
    auto& v = vcpus[index];
    uint64_t generation = v.lapic->routingGeneration();
    if (generation != v.routingGeneration) {
      v.routingGeneration = generation;
      mapDirty = true;
    }
  }

  // Everything that may have changed after any operation on one vCPU.
  void settle(uint32_t index) {
    checkRouting(index);
    refreshDeliverable(index);
    checkTimer(index);
  }

  void afterAccess(uint32_t index, const AccessResult& result, uint64_t expiriesBefore) {
    // The expiry first, as onTimer() queues it: the vector it raised is
    // announced after it.
    queueTimerExpiriesSince(index, expiriesBefore);
    checkRouting(index);
    KJ_IF_MAYBE(ipi, result.ipi) {
      InterruptMessage message = *ipi;
      message.sourceVcpu = index;
      stats.ipisRouted++;
      route(message, index, false);
    }
    KJ_IF_MAYBE(vector, result.eoiBroadcast) {
      // The front hears of it too: a front with its own I/O APIC (or a
      // device that waits for its interrupt's EOI) acts on the event.
      pushEvent(index, VcpuEvent{VcpuEvent::Kind::EOI, *vector, 1});
      KJ_IF_MAYBE(device, ioapic) (*device)->eoiBroadcast(*vector);
    }
    refreshDeliverable(index);
    checkTimer(index);
  }

  // ---- INIT / SIPI / local interrupts ----

  void doInit(uint32_t index) {
    vcpus[index].lapic->init();
    pushEvent(index, VcpuEvent{VcpuEvent::Kind::INIT, 0, 1});
    settle(index);
  }

  void doStartup(uint32_t index, uint8_t vector) {
    KJ_IF_MAYBE(start, vcpus[index].lapic->startup(vector)) {
      pushEvent(index, VcpuEvent{VcpuEvent::Kind::SIPI, *start, 1});
    }
    settle(index);
  }

  void handleLocal(uint32_t index, LocalInterrupt local) {
    switch (local.kind) {
      case LocalInterrupt::Kind::NONE:
      case LocalInterrupt::Kind::FIXED:
        break;
      case LocalInterrupt::Kind::NMI:
        pushEvent(index, VcpuEvent{VcpuEvent::Kind::NMI, 0, 1});
        break;
      case LocalInterrupt::Kind::SMI:
        pushEvent(index, VcpuEvent{VcpuEvent::Kind::SMI, 0, 1});
        break;
      case LocalInterrupt::Kind::EXTINT:
        pushEvent(index, VcpuEvent{VcpuEvent::Kind::EXTINT, 0, 1});
        break;
      case LocalInterrupt::Kind::INIT:
        doInit(index);
        return;
    }
    settle(index);
  }

  void setLint(uint32_t index, unsigned pin, bool level) {
    KJ_REQUIRE(pin <= 1, "LINT pin must be 0 or 1", pin);
    // The core also covers a hardware-disabled APIC, whose LINT0/LINT1 are
    // the processor's INTR and NMI pins (SDM 11.4.3).
    handleLocal(index, vcpus[index].lapic->setLint(pin, level));
  }

  // ---- Destinations ----

  void ensureMap() const {
    if (!mapDirty) return;
    map.rebuild(vcpus.size(), [this](uint32_t i) -> const Lapic& { return *vcpus[i].lapic; },
                [this](uint32_t i) { return vcpus[i].initialApicId; });
    mapDirty = false;
    stats.destinationMapRebuilds++;
  }

  // Appends every hardware-enabled vCPU but `excluded` to `targets`.
  void addEnabled(uint32_t excluded) const {
    if (useDestinationMap) {
      ensureMap();
      for (uint32_t i : map.enabledVcpus()) {
        if (i != excluded) targets.add(i);
      }
    } else {
      for (uint32_t i = 0; i < vcpus.size(); i++) {
        if (i != excluded && vcpus[i].lapic->hardwareEnabled()) targets.add(i);
      }
    }
  }

  // Fills `targets` with the hardware-enabled vCPUs the message addresses,
  // in index order. `source`: the sending vCPU of an IPI, nullptr for an
  // external message (MSI, I/O APIC entry).
  void resolve(const InterruptMessage& message, kj::Maybe<uint32_t> source) const {
    targets.clear();
    switch (message.shorthand) {
      case Shorthand::NONE:
        break;
      case Shorthand::SELF:
        KJ_IF_MAYBE(s, source) {
          if (vcpus[*s].lapic->hardwareEnabled()) targets.add(*s);
        }
        return;
      case Shorthand::ALL_INCLUDING_SELF:
      case Shorthand::ALL_EXCLUDING_SELF: {
        uint32_t excluded = kNoVcpu;
        if (message.shorthand == Shorthand::ALL_EXCLUDING_SELF) {
          KJ_IF_MAYBE(s, source) excluded = *s;
        }
        addEnabled(excluded);
        return;
      }
    }

    if (isBroadcastDestination(message)) {
      if (source == nullptr && !message.x2apicFormat && !x2apicBroadcastQuirk) {
        resolveExternalXapicBroadcast(message);
      } else {
        addEnabled(kNoVcpu);
      }
      return;
    }

    if (useDestinationMap) {
      ensureMap();
      if (map.lookup(message, targets, seenStamps, ++currentStamp)) return;
      targets.clear();
    }
    stats.destinationScans++;
    for (uint32_t i = 0; i < vcpus.size(); i++) {
      if (destinationMatches(*vcpus[i].lapic, vcpus[i].initialApicId, message)) targets.add(i);
    }
  }

  // An MSI or I/O APIC destination of 0xFF (extended ID bits 0) with KVM's
  // x2APIC broadcast quirk disabled (KVM_X2APIC_API_DISABLE_BROADCAST_QUIRK,
  // as QEMU sets it with 32-bit IDs): still the broadcast for xAPIC-mode
  // LAPICs, but for an x2APIC-mode LAPIC it is the 32-bit destination 0xFF,
  // APIC ID 255 (physical) or cluster 0, IDs 0-7 (logical). This is how
  // Linux's virtual extended destination ID names APIC ID 255. Scanned:
  // rare, and the map keys its entries by the message's format.
  void resolveExternalXapicBroadcast(const InterruptMessage& message) const {
    InterruptMessage asX2apic = message;
    asX2apic.x2apicFormat = true;
    stats.destinationScans++;
    for (uint32_t i = 0; i < vcpus.size(); i++) {
      const Lapic& lapic = *vcpus[i].lapic;
      if (!lapic.hardwareEnabled()) continue;
      if (lapic.mode() != ApicMode::X2APIC ||
          destinationMatches(lapic, vcpus[i].initialApicId, asX2apic)) {
        targets.add(i);
      }
    }
  }

  // ---- Routing ----

  uint32_t chooseLowestPriority(uint8_t vector) {
    stats.lowestPriorityArbitrations++;
    auto& c = candidates;
    KJ_ASSERT(c.size() > 0);
    uint32_t chosen = c[0];
    switch (policy) {
      case LowestPriorityPolicy::VECTOR_HASH:
        // The (vector mod n)-th candidate in index order, as KVM picks.
        chosen = c[vector % c.size()];
        break;
      case LowestPriorityPolicy::ROTATION:
      case LowestPriorityPolicy::PRIORITY_THEN_ROTATION: {
        uint8_t lowest = 0xFF;
        bool byPriority = policy == LowestPriorityPolicy::PRIORITY_THEN_ROTATION;
        if (byPriority) {
          for (uint32_t i : c) lowest = kj::min(lowest, vcpus[i].lapic->ppr());
        }
        // The first tied candidate after the previous winner, wrapping.
        uint32_t firstTied = kNoVcpu, afterCursor = kNoVcpu;
        for (uint32_t i : c) {
          if (byPriority && vcpus[i].lapic->ppr() != lowest) continue;
          if (firstTied == kNoVcpu) firstTied = i;
          if (lowestPriorityCursor == kNoVcpu || i > lowestPriorityCursor) {
            afterCursor = i;
            break;
          }
        }
        chosen = afterCursor != kNoVcpu ? afterCursor : firstTied;
        break;
      }
    }
    lowestPriorityCursor = chosen;
    return chosen;
  }

  // Whether a message goes to one of its targets, chosen by lowest-priority
  // arbitration, rather than to all of them.
  static bool deliversToOne(const InterruptMessage& message, bool redirectionHint) {
    switch (message.deliveryMode) {
      case DeliveryMode::LOWEST_PRIORITY:
        // KVM's one exception ("phys broadcast and lowest prio"): an
        // xAPIC-format physical 0xFF turns into fixed delivery to all. An
        // MSI with the redirection hint keeps arbitrating even then (KVM
        // still treats it as lowest priority).
        return redirectionHint || message.shorthand != Shorthand::NONE ||
               message.logicalDestination || message.x2apicFormat ||
               message.destination != kXapicBroadcast;
      case DeliveryMode::FIXED:
      case DeliveryMode::NMI:
      case DeliveryMode::SMI:
        // SDM 11.11.1: with RH set the message goes to the processor with the
        // lowest priority among those the destination names, whatever its
        // delivery mode (the fact sheet: NMI included). INIT, SIPI and
        // ExtINT are not prioritised interrupts and keep going to all.
        return redirectionHint;
      default:
        return false;
    }
  }

  void acceptFixed(uint32_t index, const InterruptMessage& message) {
    vcpus[index].lapic->acceptInterrupt(message.vector, message.trigger);
    refreshDeliverable(index);
  }

  // Routes one message. `source`: the sending vCPU for IPIs (nullptr for
  // external messages). `redirectionHint`: an MSI's RH bit.
  DeliveryResult route(const InterruptMessage& message, kj::Maybe<uint32_t> source,
                       bool redirectionHint) {
    bool ipi = source != nullptr;
    if (!ipi) stats.externalMessages++;
    auto dropped = [this]() {
      stats.messagesDropped++;
      return DeliveryResult{DeliveryStatus::DROPPED, 0};
    };

    if (!ipi && message.shorthand != Shorthand::NONE) {
      return DeliveryResult{DeliveryStatus::NOT_AN_INTERRUPT, 0};
    }
    switch (message.deliveryMode) {
      case DeliveryMode::RESERVED_3:
        return dropped();
      case DeliveryMode::EXTINT:
        // Reserved in the ICR; an MSI or I/O APIC entry may carry it.
        if (ipi) return dropped();
        break;
      case DeliveryMode::STARTUP:
        // Reserved in MSI and I/O APIC messages.
        if (!ipi) return dropped();
        break;
      case DeliveryMode::FIXED:
      case DeliveryMode::LOWEST_PRIORITY:
        // KVM and the SDM's level-triggered semantics: a de-assert message
        // delivers nothing.
        if (message.trigger == TriggerMode::LEVEL && !message.levelAssert) return dropped();
        break;
      case DeliveryMode::INIT:
        // SDM "Interrupt Command Register": INIT level de-assert (trigger
        // level, level 0) only synchronises arbitration IDs; ignored.
        if (message.trigger == TriggerMode::LEVEL && !message.levelAssert) return dropped();
        break;
      case DeliveryMode::SMI:
      case DeliveryMode::NMI:
        break;
    }

    resolve(message, source);
    if (targets.size() == 0) {
      stats.messagesWithoutTarget++;
      return DeliveryResult{DeliveryStatus::NO_TARGET, 0};
    }

    if (deliversToOne(message, redirectionHint)) {
      // SDM 11.6.2.4: the one processor at the lowest priority among those
      // the destination names, however many it names (a logical 0xFF or
      // 0xFFFFFFFF, x2APIC physical 0xFFFFFFFF, a shorthand). Fixed and
      // lowest-priority interrupts go only to software-enabled LAPICs
      // (KVM); NMI and SMI are accepted by software-disabled ones too
      // (SDM 11.4.7.2).
      bool interrupt = message.deliveryMode == DeliveryMode::FIXED ||
                       message.deliveryMode == DeliveryMode::LOWEST_PRIORITY;
      candidates.clear();
      for (uint32_t i : targets) {
        if (!interrupt || vcpus[i].lapic->softwareEnabled()) candidates.add(i);
      }
      if (candidates.size() == 0) {
        stats.messagesWithoutTarget++;
        return DeliveryResult{DeliveryStatus::NO_TARGET, 0};
      }
      uint32_t chosen = chooseLowestPriority(message.vector);
      targets.clear();
      targets.add(chosen);
    }

    uint32_t count = targets.size();
    switch (message.deliveryMode) {
      case DeliveryMode::FIXED:
      case DeliveryMode::LOWEST_PRIORITY:
        // Receivers of an illegal vector set ESR bit 6 (Lapic::acceptInterrupt).
        for (uint32_t i : targets) acceptFixed(i, message);
        break;
      case DeliveryMode::SMI:
        for (uint32_t i : targets) pushEvent(i, VcpuEvent{VcpuEvent::Kind::SMI, 0, 1});
        break;
      case DeliveryMode::NMI:
        for (uint32_t i : targets) pushEvent(i, VcpuEvent{VcpuEvent::Kind::NMI, 0, 1});
        break;
      case DeliveryMode::EXTINT:
        for (uint32_t i : targets) pushEvent(i, VcpuEvent{VcpuEvent::Kind::EXTINT, 0, 1});
        break;
      case DeliveryMode::INIT:
        // A target's routing may change (xAPIC INIT clears LDR); the map is
        // only rebuilt by the next resolve(), so `targets` stays valid.
        for (uint32_t i : targets) doInit(i);
        break;
      case DeliveryMode::STARTUP:
        for (uint32_t i : targets) doStartup(i, message.vector);
        break;
      case DeliveryMode::RESERVED_3:
        KJ_UNREACHABLE;
    }
    return DeliveryResult{DeliveryStatus::DELIVERED, count};
  }

  // The I/O APIC, if gpa is in its window and the vCPU's own LAPIC does not
  // decode the address itself.
  kj::Maybe<IoApic&> ioApicDecoding(uint32_t index, uint64_t gpa) {
    KJ_IF_MAYBE(device, ioapic) {
      if (!(*device)->windowContains(gpa)) return nullptr;
      const Lapic& lapic = *vcpu(index).lapic;
      if (lapic.mmioDecoding() && lapic.mmioWindowContains(gpa)) return nullptr;
      return **device;
    }
    return nullptr;
  }

  DeliveryResult deliverExternal(const InterruptMessage& message, bool redirectionHint) {
    auto result = route(message, nullptr, redirectionHint);
    if (result.status == DeliveryStatus::NOT_AN_INTERRUPT) stats.messagesDropped++;
    return result;
  }
};

// ---------------------------------------------------------------------------

Vm::Vm(hal::Hal& hal, const VmConfig& config) {
  KJ_IF_MAYBE(problem, validateVmConfig(config)) {
    KJ_FAIL_REQUIRE("invalid VM configuration", *problem);
  }
  impl = kj::heap<Impl>(hal, config);
  if (config.ioapic.present) impl->ioapic = kj::heap<IoApic>(config.ioapic, *impl);
}

Vm::~Vm() noexcept(false) {}

void Vm::setListener(kj::Maybe<VmEventListener&> listener) { impl->listener = listener; }

uint32_t Vm::vcpuCount() const { return impl->vcpus.size(); }
uint32_t Vm::bootVcpu() const { return impl->bootVcpu; }
uint32_t Vm::initialApicId(uint32_t vcpu) const { return impl->vcpu(vcpu).initialApicId; }

kj::Maybe<uint32_t> Vm::vcpuWithInitialApicId(uint32_t apicId) const {
  for (uint32_t i = 0; i < impl->vcpus.size(); i++) {
    if (impl->vcpus[i].initialApicId == apicId) return i;
  }
  return nullptr;
}

const Lapic& Vm::lapic(uint32_t vcpu) const { return *impl->vcpu(vcpu).lapic; }
const GuestTsc& Vm::tsc() const { return impl->tsc; }
GuestTsc& Vm::tsc() { return impl->tsc; }
const VmStats& Vm::stats() const { return impl->stats; }
bool Vm::hasIoApic() const { return impl->ioapic != nullptr; }
const IoApic& Vm::ioapic() const {
  KJ_IF_MAYBE(device, impl->ioapic) return **device;
  KJ_FAIL_REQUIRE("this VM has no I/O APIC");
}

AccessResult Vm::mmioRead(uint32_t vcpu, uint64_t gpa, uint8_t size) {
  KJ_IF_MAYBE(device, impl->ioApicDecoding(vcpu, gpa)) return device->mmioRead(gpa, size);
  uint64_t expiriesBefore = impl->timerExpiriesSoFar(vcpu);
  auto result = impl->vcpus[vcpu].lapic->mmioRead(gpa, size);
  impl->afterAccess(vcpu, result, expiriesBefore);
  return result;
}

AccessResult Vm::mmioWrite(uint32_t vcpu, uint64_t gpa, uint8_t size, uint64_t value) {
  KJ_IF_MAYBE(device, impl->ioApicDecoding(vcpu, gpa)) return device->mmioWrite(gpa, size, value);
  uint64_t expiriesBefore = impl->timerExpiriesSoFar(vcpu);
  auto result = impl->vcpus[vcpu].lapic->mmioWrite(gpa, size, value);
  impl->afterAccess(vcpu, result, expiriesBefore);
  return result;
}

AccessResult Vm::msrRead(uint32_t vcpu, uint32_t msr) {
  uint64_t expiriesBefore = impl->timerExpiriesSoFar(vcpu);
  auto result = impl->vcpus[vcpu].lapic->msrRead(msr);
  impl->afterAccess(vcpu, result, expiriesBefore);
  return result;
}

AccessResult Vm::msrWrite(uint32_t vcpu, uint32_t msr, uint64_t value) {
  uint64_t expiriesBefore = impl->timerExpiriesSoFar(vcpu);
  auto result = impl->vcpus[vcpu].lapic->msrWrite(msr, value);
  impl->afterAccess(vcpu, result, expiriesBefore);
  return result;
}

kj::Maybe<uint8_t> Vm::acknowledge(uint32_t vcpu) {
  auto& v = impl->vcpu(vcpu);
  auto vector = v.lapic->acknowledge();
  // The front has taken what it was told; whatever is deliverable next is
  // news again.
  v.reportedVector = nullptr;
  impl->refreshDeliverable(vcpu);
  return vector;
}

kj::Maybe<uint8_t> Vm::pendingVector(uint32_t vcpu) const {
  return impl->vcpu(vcpu).lapic->pendingVector();
}

void Vm::setCr8(uint32_t vcpu, uint8_t cr8) {
  impl->vcpu(vcpu).lapic->setCr8(cr8);
  impl->refreshDeliverable(vcpu);
}

RunState Vm::runState(uint32_t vcpu) const { return impl->vcpu(vcpu).lapic->runState(); }

kj::Maybe<uint64_t> Vm::timerDeadlineNs(uint32_t vcpu) const {
  return impl->vcpu(vcpu).lapic->timerDeadlineNs();
}

uint32_t Vm::onTimer(uint32_t vcpu) {
  uint64_t expiriesBefore = impl->timerExpiriesSoFar(vcpu);
  uint32_t expiries = impl->vcpus[vcpu].lapic->onTimer();
  impl->queueTimerExpiriesSince(vcpu, expiriesBefore);
  impl->settle(vcpu);
  return expiries;
}

DeliveryResult Vm::deliverMsi(uint64_t address, uint32_t data) {
  KJ_IF_MAYBE(msi, decodeMsi(address, data)) {
    return impl->deliverExternal(msi->message, msi->redirectionHint);
  }
  impl->stats.externalMessages++;
  impl->stats.messagesDropped++;
  return DeliveryResult{DeliveryStatus::NOT_AN_INTERRUPT, 0};
}

DeliveryResult Vm::deliverIoApic(uint64_t redirectionEntry) {
  auto entry = decodeRedirectionEntry(redirectionEntry);
  if (entry.masked) {
    impl->stats.externalMessages++;
    impl->stats.messagesDropped++;
    return DeliveryResult{DeliveryStatus::DROPPED, 0};
  }
  return impl->deliverExternal(entry.message, false);
}

void Vm::setIrqLine(uint32_t pin, bool level) {
  KJ_IF_MAYBE(device, impl->ioapic) {
    KJ_REQUIRE(pin < kIoApicPins, "no such I/O APIC pin", pin);
    (*device)->setPinLevel(pin, level);
    return;
  }
  KJ_FAIL_REQUIRE("this VM has no I/O APIC");
}

DeliveryResult Vm::deliverMessage(const InterruptMessage& message) {
  return impl->deliverExternal(message, false);
}

DeliveryResult Vm::sendIpi(uint32_t vcpu, const InterruptMessage& message) {
  impl->vcpu(vcpu);  // range check
  InterruptMessage ipi = message;
  ipi.sourceVcpu = vcpu;
  impl->stats.ipisRouted++;
  return impl->route(ipi, vcpu, false);
}

void Vm::setLint(uint32_t vcpu, unsigned pin, bool level) {
  impl->vcpu(vcpu);
  impl->setLint(vcpu, pin, level);
}

void Vm::setLintAll(unsigned pin, bool level) {
  for (uint32_t i = 0; i < impl->vcpus.size(); i++) impl->setLint(i, pin, level);
}

void Vm::signalLvt(uint32_t vcpu, LvtSource source) {
  impl->handleLocal(vcpu, impl->vcpu(vcpu).lapic->signalLvt(source));
}

void Vm::init(uint32_t vcpu) {
  impl->vcpu(vcpu);
  impl->doInit(vcpu);
}

void Vm::startup(uint32_t vcpu, uint8_t vector) {
  impl->vcpu(vcpu);
  impl->doStartup(vcpu, vector);
}

void Vm::reset(uint32_t vcpu) {
  auto& v = impl->vcpu(vcpu);
  v.lapic->reset();
  // Power-on RESET: nothing the CPU had pending survives it.
  v.events.clear();
  v.reportedVector = nullptr;
  impl->settle(vcpu);
}

bool Vm::hasEvents(uint32_t vcpu) const { return !impl->vcpu(vcpu).events.empty(); }

kj::ArrayPtr<const VcpuEvent> Vm::peekEvents(uint32_t vcpu) const {
  return impl->vcpu(vcpu).events.asPtr();
}

kj::Vector<VcpuEvent> Vm::takeEvents(uint32_t vcpu) {
  auto& v = impl->vcpu(vcpu);
  kj::Vector<VcpuEvent> taken = kj::mv(v.events);
  v.events = kj::Vector<VcpuEvent>();
  return taken;
}

LapicSnapshot Vm::saveVcpu(uint32_t vcpu, bool x2apic32BitIds) const {
  return impl->vcpu(vcpu).lapic->save(x2apic32BitIds);
}

kj::Maybe<kj::String> Vm::restoreVcpu(uint32_t vcpu, const LapicSnapshot& snapshot) {
  auto& v = impl->vcpu(vcpu);
  uint64_t expiriesBefore = impl->timerExpiriesSoFar(vcpu);
  KJ_IF_MAYBE(problem, v.lapic->restore(snapshot)) return kj::mv(*problem);
  v.reportedVector = nullptr;
  impl->queueTimerExpiriesSince(vcpu, expiriesBefore);
  impl->settle(vcpu);
  return nullptr;
}

VmSnapshot Vm::saveVm(bool x2apic32BitIds) const {
  VmSnapshot snapshot;
  snapshot.tscOffset = impl->tsc.getOffset();
  snapshot.tscAtSave = impl->tsc.now();
  snapshot.lowestPriorityCursor = impl->lowestPriorityCursor;
  auto lapics = kj::heapArrayBuilder<LapicSnapshot>(impl->vcpus.size());
  auto queues = kj::heapArrayBuilder<kj::Array<VcpuEvent>>(impl->vcpus.size());
  for (auto& v : impl->vcpus) {
    lapics.add(v.lapic->save(x2apic32BitIds));
    queues.add(kj::heapArray<VcpuEvent>(v.events.asPtr()));
  }
  snapshot.vcpus = lapics.finish();
  snapshot.queuedEvents = queues.finish();
  KJ_IF_MAYBE(device, impl->ioapic) snapshot.ioapic = (*device)->save();
  return snapshot;
}

namespace {

kj::Maybe<kj::String> validateQueue(kj::ArrayPtr<const VcpuEvent> events) {
  if (events.size() > kMaxQueuedEventsPerVcpu) {
    return kj::str(events.size(), " queued events, more than ", kMaxQueuedEventsPerVcpu);
  }
  bool seenKind[8] = {};
  bool seenEoi[256] = {};
  for (auto& event : events) {
    unsigned kind = unsigned(event.kind);
    if (kind > unsigned(VcpuEvent::Kind::TIMER_EXPIRED)) {
      return kj::str("unknown event kind ", kind);
    }
    if (event.count == 0) return kj::str(vcpuEventKindName(event.kind), " event with count 0");
    if (isSingletonKind(event.kind)) {
      if (seenKind[kind]) return kj::str("two queued ", vcpuEventKindName(event.kind), " events");
      seenKind[kind] = true;
    } else {
      if (seenEoi[event.vector]) return kj::str("two queued EOI events for one vector");
      seenEoi[event.vector] = true;
    }
  }
  return nullptr;
}

}  // namespace

kj::Maybe<kj::String> Vm::restoreVm(const VmSnapshot& snapshot, TscRestore tscRestore) {
  uint32_t n = impl->vcpus.size();
  if (snapshot.vcpus.size() != n || snapshot.queuedEvents.size() != n) {
    return kj::str("snapshot has ", snapshot.vcpus.size(), " vCPUs and ",
                   snapshot.queuedEvents.size(), " event queues; this VM has ", n, " vCPUs");
  }
  if (snapshot.lowestPriorityCursor != kNoVcpu && snapshot.lowestPriorityCursor >= n) {
    return kj::str("lowest-priority cursor ", snapshot.lowestPriorityCursor, " is not a vCPU");
  }
  for (uint32_t i = 0; i < n; i++) {
    KJ_IF_MAYBE(problem, validateQueue(snapshot.queuedEvents[i])) {
      return kj::str("vCPU ", i, ": ", *problem);
    }
  }

  KJ_IF_MAYBE(state, snapshot.ioapic) {
    KJ_IF_MAYBE(device, impl->ioapic) {
      KJ_IF_MAYBE(problem, (*device)->validate(*state)) return kj::str("I/O APIC: ", *problem);
    } else {
      return kj::str("the snapshot has an I/O APIC and this VM has none");
    }
  }

  // All or nothing: keep what we have, restore, and put it back on failure.
  int64_t previousOffset = impl->tsc.getOffset();
  auto previous = kj::heapArrayBuilder<LapicSnapshot>(n);
  for (auto& v : impl->vcpus) previous.add(v.lapic->save());
  auto backup = previous.finish();
  auto expiriesBefore = kj::heapArrayBuilder<uint64_t>(n);
  for (uint32_t i = 0; i < n; i++) expiriesBefore.add(impl->timerExpiriesSoFar(i));
  auto expiriesBeforeRestore = expiriesBefore.finish();

  // The TSC first: TSC-deadline timers are restored against it.
  switch (tscRestore) {
    case TscRestore::KEEP_OFFSET: impl->tsc.setOffset(snapshot.tscOffset); break;
    case TscRestore::RESUME_AT_SAVED: impl->tsc.setNow(snapshot.tscAtSave); break;
  }
  for (uint32_t i = 0; i < n; i++) {
    KJ_IF_MAYBE(problem, impl->vcpus[i].lapic->restore(snapshot.vcpus[i])) {
      impl->tsc.setOffset(previousOffset);
      for (uint32_t j = 0; j < i; j++) {
        KJ_IF_MAYBE(rollback, impl->vcpus[j].lapic->restore(backup[j])) {
          KJ_FAIL_ASSERT("a LAPIC rejected its own saved state", j, *rollback);
        }
      }
      return kj::str("vCPU ", i, ": ", *problem);
    }
  }

  impl->lowestPriorityCursor = snapshot.lowestPriorityCursor;
  for (uint32_t i = 0; i < n; i++) {
    auto& v = impl->vcpus[i];
    v.events = kj::Vector<VcpuEvent>();
    v.events.addAll(snapshot.queuedEvents[i]);
    v.reportedVector = nullptr;
    for (auto& event : v.events) {
      if (event.kind == VcpuEvent::Kind::VECTOR_DELIVERABLE) v.reportedVector = event.vector;
    }
    // After the saved queue is in place: an expiry the restore collected
    // is news on top of what was queued at save time.
    impl->queueTimerExpiriesSince(i, expiriesBeforeRestore[i]);
    impl->settle(i);
    if (!v.events.empty()) impl->notifyPending(i);
  }
  // Last: restoring the I/O APIC re-sends what its pins assert, into the
  // LAPICs as restored.
  KJ_IF_MAYBE(state, snapshot.ioapic) {
    KJ_IF_MAYBE(device, impl->ioapic) (*device)->restore(*state);
  }
  return nullptr;
}

kj::Array<uint32_t> Vm::resolveDestination(const InterruptMessage& message,
                                           kj::Maybe<uint32_t> source) const {
  KJ_IF_MAYBE(s, source) impl->vcpu(*s);
  impl->resolve(message, source);
  return kj::heapArray<uint32_t>(impl->targets.asPtr());
}

}  // namespace vlapic
