# SPDX-License-Identifier: MIT
@0xe296844dac57f235;
# The wire format of the per-vCPU shared-memory channel between a front and
# vlapicd (see README.md in this folder). Each message is one flat-array
# Cap'n Proto message (segment table + one segment) written into a fixed-size
# slot of the channel's memfd. The receiver copies the slot out of shared
# memory before decoding, and treats every field as untrusted.
#
# These structs mirror the plain RPC methods of the vCPU capability (MMIO and
# MSR read/write, acknowledge, CR8), so both paths carry the same requests and
# results. Field numbering leaves room to evolve: new requests are new union
# members, which an older receiver rejects as `unknownRequest`.

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("vlapic::channel::wire");

struct ChannelRequest {
  operation :union {
    mmioRead @0 :MmioAccess;        # value unused
    mmioWrite @1 :MmioAccess;
    msrRead @2 :MsrAccess;          # value unused
    msrWrite @3 :MsrAccess;
    acknowledge @4 :Void;           # take the vector to inject now
    setCr8 @5 :UInt8;               # MOV to CR8: bits 3:0 only (SDM 10.8.6.1)
    fetchEvents @6 :Void;           # no access: just collect pending events
  }
  injectIfPending @7 :Bool;
  # The vCPU can take an external interrupt right after this exit (KVM:
  # ready_for_interrupt_injection with RFLAGS.IF set). The server may then
  # acknowledge the pending vector within the same call and return it in
  # ChannelReply.inject, which saves the second round trip.
}

struct MmioAccess {
  gpa @0 :UInt64;
  size @1 :UInt8;
  value @2 :UInt64;
}

struct MsrAccess {
  msr @0 :UInt32;
  value @1 :UInt64;
}

struct ChannelReply {
  result :union {
    access @0 :AccessResult;        # mmioRead/mmioWrite/msrRead/msrWrite
    done @1 :Void;                  # acknowledge, setCr8, fetchEvents
    rejected @2 :Rejection;         # the request never reached the LAPIC
  }
  inject :union {
    none @3 :Void;
    vector @4 :UInt8;               # acknowledged: inject this vector now
  }
  cr8 @5 :UInt8;                    # TPR[7:4] after the call, for kvm_run->cr8
  events @6 :List(Event);           # at most kMaxEventsPerReply, oldest first
  moreEvents @7 :Bool;              # more are queued: send fetchEvents
  timerDeadlineNs @8 :UInt64;
  # When this vCPU's LAPIC timer expires next (host CLOCK_MONOTONIC ns) as
  # the reply leaves; 0: not armed. The front needs no other call to learn
  # it: it sleeps or kicks itself at this time.
  notified @9 :List(UInt32);
  # Other vCPUs of this VM whose attention this request raised (an IPI it
  # sent, say), at most kMaxNotifiedPerReply: the front kicks those vCPU
  # threads itself, ahead of its attention watchers (which still see every
  # raise, so a list cut short loses nothing).
}

# Mirrors vlapic::AccessStatus.
enum AccessStatus {
  ok @0;
  gp @1;
  ignored @2;
}

struct AccessResult {
  status @0 :AccessStatus;
  reason @1 :UInt8;                 # vlapic::AccessReason, numerically
  value @2 :UInt64;
}

enum Rejection {
  malformed @0;        # not a valid message, or a field out of range
  oversized @1;        # declared size larger than the slot
  unknownRequest @2;   # a request kind this server does not know
  handlerFailed @3;    # the server failed to serve a well-formed request
}

# One event for this vCPU; the same kinds as vlapic.capnp's Event and the
# Vm layer's VcpuEvent.
struct Event {
  union {
    deliverable @0 :UInt8;          # a vector beats PPR: open an interrupt window
    nmi @1 :Void;
    smi @2 :Void;
    init @3 :Void;                  # the LAPIC was reset by INIT
    sipi @4 :UInt8;                 # start at CS = vector << 8, IP = 0
    extInt @5 :Void;                # ask the legacy PIC for the vector
    eoi @6 :UInt8;                  # level-triggered EOI for the I/O APIC
    timer @7 :Void;                 # the LAPIC timer expired
  }
  count @8 :UInt32;                 # timer/eoi: merged occurrences; else 1
}
