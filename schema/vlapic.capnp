# SPDX-License-Identifier: MIT
# The vlapic protocol: how a hypervisor front drives vlapicd.
#
# Capability-scoped, the way a microkernel hands out rights: the bootstrap
# `Service` creates a VM and returns a `Vm` capability; the `Vm` hands out one
# `Vcpu` capability per vCPU. Holding a vCPU's capability lets a front drive
# that vCPU and nothing else; no method takes the name of another VM's object,
# so there is no way to reach what one was not given. (The one exception is
# `Service.admin()`, the operator's right over the whole server: see `Admin`.)
#
# Lifetime: a VM lives while its creator holds any capability to it (`Vm`, or
# a `Vcpu` obtained from it or through a ticket) or until `Vm.release()`. When
# a front disconnects, the RPC system drops everything it held, so its VMs and
# all their resources (pages, armed timers, queued events) are released; other
# fronts never notice. A call on a capability whose VM was released fails with
# an error reply ("VM released").
#
# Errors: a guest's bad access is never an error: it is a result (#GP, or
# ignored with a reason). Errors (RPC exceptions) are reserved for a front's
# bad requests: out-of-range vCPU index, bad access size, malformed state
# blobs, calls after release.
#
# Evolution: fields and methods are only ever added, with new ordinals; each
# struct leaves gaps in its meaning, never in its numbering (Cap'n Proto
# ordinals must be dense), so new fields simply take the next ordinal.

@0x94ec31c93d427af9;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("vlapic::proto");

# ---------------------------------------------------------------------------
# Configuration

struct VmConfig {
  # Everything that shapes a VM's LAPICs. Zero / empty means "default".

  vcpuCount @0 :UInt32;
  # Number of vCPUs (1 .. the server's limit, at least 1024).

  apicIds @1 :List(UInt32);
  # Initial APIC ID of each vCPU (x2APIC IDs may exceed 255). Empty: vCPU i
  # gets ID i. Otherwise exactly `vcpuCount` entries.

  bootVcpu @2 :UInt32;
  # Index of the boot vCPU (IA32_APIC_BASE.BSP set; runs at power-on). The
  # others wait for INIT-SIPI.

  timerHz @3 :UInt64;
  # LAPIC timer input clock before the divider. 0: 1 GHz (as KVM).

  tscHz @4 :UInt64;
  # Guest TSC frequency (TSC-deadline mode, IA32_TSC_DEADLINE). 0: default.

  lvtEntries @5 :UInt8;
  # 6, or 7 with LVT CMCI. 0: 6.

  eoiBroadcastSuppression @6 :Bool;
  # Advertise Version bit 24: the guest may set SVR bit 12.

  x2apicSupported @7 :Bool = true;
  # CPUID.1:ECX.x2APIC. Without it, setting IA32_APIC_BASE.EXTD raises #GP.

  tscDeadlineSupported @8 :Bool = true;
  # CPUID.1:ECX.TSC_DEADLINE. Without it LVT Timer bit 18 is reserved.

  strictReservedBits @9 :Bool;
  # #GP on every reserved x2APIC bit (SDM, Xen) instead of KVM's masking.

  minTimerPeriodNs @10 :UInt64;
  # Periodic timers shorter than this are clamped (KVM: 200 us). 0: default.

  bspLint0ExtInt @11 :Bool;
  # Boot vCPU's LVT LINT0 is ExtINT after reset, as PC firmware leaves it.

  name @12 :Text;
  # Free-form label shown by vlapicctl.

  maxBatchesInFlight @13 :UInt32;
  # Flow control: at most this many `EventSink.deliver` calls outstanding.
  # 0: the server's default (4).

  maxEventsPerBatch @14 :UInt32;
  # At most this many events in one batch. 0: the server's default (256).

  x2apicBroadcastQuirk @15 :Bool;
  # KVM's x2APIC broadcast quirk: an MSI or I/O APIC destination 0xFF
  # (extended ID bits 0) also broadcasts to x2APIC-mode LAPICs. Off (the
  # default, as QEMU runs KVM with 32-bit IDs): it names x2APIC ID 255.

  ioapic @16 :IoApicConfig;
  # The VM's own I/O APIC. Unset: one at 0xFEC00000, ID 0, version 0x11.
}

struct IoApicConfig {
  # An 82093AA-compatible I/O APIC with 24 pins, beside the VM's LAPICs in
  # vlapicd, so remote IRR and EOI broadcast never cross the process
  # boundary. Its MMIO window goes through Vcpu.mmioRead/mmioWrite (and the
  # channel) like LAPIC MMIO; its pins through Vm.setIrqLine.
  absent @0 :Bool;
  # true: the VM has no I/O APIC here (a front with its own uses
  # Vm.deliverIoApic and the EOI events); setIrqLine is then an error.
  base @1 :UInt64;
  # Guest-physical base of its 4 KiB window, 4 KiB aligned. 0: 0xFEC00000.
  id @2 :UInt8;
  # I/O APIC ID after reset, 0-15.
  version @3 :UInt8;
  # Version register: 0x11 (as KVM's) or 0x20 (adds the EOI register at
  # base + 0x40, for directed EOI). 0: 0x11.
}

# ---------------------------------------------------------------------------
# Access results

enum AccessReason {
  # Why an access faulted or was ignored. Mirrors vlapic::AccessReason.
  none @0;
  reservedRegister @1;      # offset or MSR names no register
  readOnlyRegister @2;      # write to a read-only register
  writeOnlyRegister @3;     # read of a write-only register
  notInMode @4;             # register absent in the current mode
  badSizeOrAlignment @5;    # MMIO size/alignment the APIC does not decode
  notDecoding @6;           # MMIO while the APIC is disabled or in x2APIC mode
  outsideWindow @7;         # MMIO address outside [base, base + 4 KiB)
  reservedBits @8;          # reserved bits set
  illegalTransition @9;     # IA32_APIC_BASE transition the SDM forbids
  apicDisabled @10;         # x2APIC MSR while not in x2APIC mode
  nonZeroWrite @11;         # x2APIC EOI/ESR written with a non-zero value
  timerMode @12;            # timer register not meaningful in this timer mode
}

struct AccessResult {
  # What one guest access turned into.

  union {
    value @0 :UInt64;
    # The access took effect. For a read, what the guest reads; 0 for a write.

    gp @1 :AccessReason;
    # Inject #GP into the guest (MSR accesses only).

    ignored :group {
      # No fault: the write was dropped / the read returns `value`.
      reason @2 :AccessReason;
      value @3 :UInt64;
    }
  }

  # Side effects, already handled by the server; reported so that a front
  # can act at once instead of waiting for the matching event.
  ipiSent @4 :Bool;            # an ICR write sent an interrupt message
  eoiBroadcast @5 :Bool;       # a level-triggered EOI went to the I/O APICs
  eoiVector @6 :UInt8;         #   ... with this vector
  timerChanged @7 :Bool;       # the timer was (re)armed or stopped

  interruptPending @8 :Bool;   # after the access, a vector beats PPR
  pendingVector @9 :UInt8;     #   ... this one (see Vcpu.acknowledge)

  timerDeadlineNs @10 :UInt64;
  # After the access, when this vCPU's timer expires next (host
  # CLOCK_MONOTONIC ns, as VcpuInfo.timerDeadlineNs); 0: not armed. A hint
  # for the front's wait, the way KVM's timer advance knows the deadline:
  # sleep until shortly before it, then poll for the expiry's events
  # (client/lib/wake_ahead.h). The expiry itself never happens before it.
}

# ---------------------------------------------------------------------------
# Per-vCPU state

enum ApicMode {
  disabled @0;
  xapic @1;
  x2apic @2;
}

enum RunState {
  running @0;        # executing (or halted: halting is the front's business)
  waitForSipi @1;    # an AP after INIT, waiting for a start-up IPI
}

struct InterruptState {
  # The interrupt-related state of one vCPU, for a front deciding whether to
  # open an interrupt window.
  interruptPending @0 :Bool;   # pendingVector is valid
  pendingVector @1 :UInt8;     # highest IRR vector whose class beats PPR
  tpr @2 :UInt8;
  ppr @3 :UInt8;
  cr8 @4 :UInt8;               # TPR[7:4]
  runState @5 :RunState;
  apicMode @6 :ApicMode;
  apicId @7 :UInt32;           # current APIC ID (32-bit in x2APIC mode)
  timerDeadlineNs @8 :UInt64;  # next timer expiry, as AccessResult's; 0: none
}

struct VcpuState {
  # A saved vCPU: KVM's `struct kvm_lapic_state` (1 KiB register page) plus
  # IA32_APIC_BASE and the versioned hidden-state record the page cannot
  # hold (timer phase, TSC deadline, ESR accumulator, run state, LINT
  # levels, ...). Restore validates everything before changing anything.
  # Without a hidden record (an image from KVM's KVM_GET_LAPIC) the timer
  # restarts from the current count, taken as KVM means it (time left in
  # counts, above the initial count for a periodic timer clamped to the
  # minimum period), and what KVM can hold but this model never does is
  # normalised, not refused: a legacy-layout x2APIC ID field (the vCPU's ID
  # is used), LVT delivery status, ICR low bits not stored, IRR/TMR bits of
  # vectors 0-15 (cleared), bytes 0x304-0x307 (rebuilt from ICR high).
  index @0 :UInt32;            # the vCPU within its VM
  apicBase @1 :UInt64;         # IA32_APIC_BASE
  regs @2 :Data;               # exactly 1024 bytes, kvm_lapic_state.regs
  x2apic32BitIds @3 :Bool;     # KVM_X2APIC_API_USE_32BIT_IDS layout
  hidden @4 :Data;             # versioned hidden-state record
}

struct VmState {
  # A saved VM: every vCPU plus the VM-wide state (guest TSC, the
  # lowest-priority rotation, events the front has not received yet).
  # Restore requires a VM with the same vCPU count.
  vcpus @0 :List(VcpuState);
  tscOffset @1 :Int64;             # guest TSC = host ns * tscHz / 1e9 + offset
  tscAtSave @2 :UInt64;            # guest TSC value when saved
  lowestPriorityCursor @3 :UInt32; # rotation state of lowest-priority delivery
  queuedEvents @4 :List(List(Event));  # per vCPU, oldest first
  ioapic @5 :IoApicState;
  # The VM's I/O APIC. Unset in a state saved from a VM without one (or by
  # a vlapicd before it had one); restoring such a state leaves the I/O
  # APIC as it is. Restore validates it with the rest and then re-sends
  # what its asserted pins ask for (as KVM_SET_IRQCHIP does).
}

struct IoApicState {
  id @0 :UInt8;                  # 4-bit I/O APIC ID
  ioregsel @1 :UInt8;            # last IOREGSEL write
  pinLevels @2 :UInt32;          # bit n: pin n's wire is high
  pendingEdges @3 :UInt32;       # bit n: an edge that met a masked entry
  redirection @4 :List(UInt64);  # exactly 24 redirection table entries
}

struct IrqLine {
  pin @0 :UInt8;     # I/O APIC input pin, 0-23
  level @1 :Bool;    # the wire's electrical level (high = true)
}

struct IoApicPin {
  pin @0 :UInt8;
  entry @1 :UInt64;        # the redirection table entry as the guest reads it
  level @2 :Bool;          # the wire is high
  asserted @3 :Bool;       # level, with the entry's polarity applied
  pendingEdge @4 :Bool;    # an edge waits for the entry to be unmasked
  assertions @5 :UInt64;   # de-asserted -> asserted transitions
  messages @6 :UInt64;     # interrupt messages sent
  eois @7 :UInt64;         # EOIs that cleared remote IRR
  redeliveries @8 :UInt64; # messages re-sent at EOI or unmask, pin asserted
  coalesced @9 :UInt64;    # assertions that found the previous one pending
}

struct IoApicStatus {
  present @0 :Bool;        # false: the VM has no I/O APIC (the rest unset)
  base @1 :UInt64;
  id @2 :UInt8;
  version @3 :UInt8;
  ioregsel @4 :UInt8;
  pins @5 :List(IoApicPin);
}

struct PageInfo {
  # An architectural page the server owns.
  address @0 :UInt64;
  # What a hypervisor would program into the VMCS (virtual-APIC address /
  # APIC-access address): host-virtual for the host-memory HAL, an arena
  # tag + offset for the shared-memory HAL.
  shared @1 :Bool;
  # The page can be mapped through `Page` (getFd) at `fdOffset`.
  fdOffset @2 :UInt64;
}

interface Page {
  # A page the front can map (read-only) when the server runs the
  # shared-memory HAL: the capability carries the memfd (Capability
  # getFd(); Cap'n Proto passes it as SCM_RIGHTS over the Unix socket).
  # mmap(fd, 4096, PROT_READ, MAP_SHARED, fd, info.fdOffset).
  info @0 () -> (info :PageInfo);
}

struct RegisterCount {
  offset @0 :UInt16;           # xAPIC offset of the register (index << 4)
  count @1 :UInt64;
}

struct VcpuStats {
  index @0 :UInt32;
  reads @1 :UInt64;
  writes @2 :UInt64;
  gpFaults @3 :UInt64;
  ignoredAccesses @4 :UInt64;
  accepted @5 :UInt64;         # vectors accepted into IRR
  acknowledged @6 :UInt64;
  eois @7 :UInt64;
  ipisSent @8 :UInt64;
  timerExpiries @9 :UInt64;
  eventsPosted @10 :UInt64;    # events sent to the front for this vCPU
  perRegister @11 :List(RegisterCount);  # non-zero access counts only
}

struct VcpuInfo {
  index @0 :UInt32;
  apicId @1 :UInt32;
  initialApicId @2 :UInt32;
  bsp @3 :Bool;
  apicMode @4 :ApicMode;
  runState @5 :RunState;
  timerArmed @6 :Bool;
  timerDeadlineNs @7 :UInt64;  # host CLOCK_MONOTONIC ns, when armed
  channelOpen @8 :Bool;        # a shared-memory channel serves this vCPU
}

interface Vcpu {
  # One vCPU's local APIC. Every access method returns an AccessResult.

  mmioRead @0 (address :UInt64, size :UInt8) -> (result :AccessResult);
  # Guest read at guest-physical `address`, decoded against the current
  # IA32_APIC_BASE. size 1, 2, 4 or 8; anything else is an error reply.

  mmioWrite @1 (address :UInt64, size :UInt8, value :UInt64) -> (result :AccessResult);
  # Guest write. An ICR write routes its IPI through the VM before replying.

  msrRead @2 (msr :UInt32) -> (result :AccessResult);
  # RDMSR of 0x800-0x8FF, IA32_APIC_BASE (0x1B) or IA32_TSC_DEADLINE (0x6E0);
  # any other MSR answers #GP.

  msrWrite @3 (msr :UInt32, value :UInt64) -> (result :AccessResult);
  # WRMSR. An x2APIC ICR write routes its IPI through the VM before replying.

  acknowledge @4 () -> (delivered :Bool, vector :UInt8, state :InterruptState);
  # The front injects an interrupt now: moves the highest deliverable vector
  # from IRR to ISR and returns it (delivered = false if nothing beats PPR
  # any more). `state` is the state afterwards.

  interruptState @5 () -> (state :InterruptState);
  # Pending interrupt, TPR/PPR, run state, mode and ID.

  setCr8 @6 (cr8 :UInt8) -> (state :InterruptState);
  # MOV to CR8 (TPR = cr8 << 4), as a VMM syncs kvm_run->cr8 on exits.

  startup @7 (vector :UInt8) -> (started :Bool, state :InterruptState);
  # Delivers a start-up IPI to this vCPU as if from the APIC bus (for fronts
  # that model a SIPI source themselves; SIPIs between vCPUs arrive as
  # events). A vCPU waiting for SIPI starts (started = true); a running one
  # drops it (SDM "MP Initialization Protocol").

  save @8 (legacyX2apicIds :Bool) -> (state :VcpuState);
  # legacyX2apicIds: write KVM's layout without KVM_X2APIC_API_USE_32BIT_IDS
  # (an x2APIC vCPU's ID field holds its ID's low 8 bits in bits 31:24), for
  # a KVM that does not enable the 32-bit-ID API. Restore takes both
  # layouts, and normalises what KVM's KVM_GET_LAPIC can write and this
  # model does not hold: see VcpuState.
  restore @9 (state :VcpuState) -> ();
  # Validates first; a malformed blob is an error reply and leaves the vCPU
  # unchanged. `state.index` is ignored (the capability names the vCPU).

  pages @10 () -> (virtualApic :PageInfo, apicAccess :PageInfo);
  # Addresses of this vCPU's virtual-APIC page and of the server object's
  # single APIC-access page.

  virtualApicPage @11 () -> (page :Page);
  # The virtual-APIC page as a mappable capability (fd with --hal shared).

  stats @12 () -> (stats :VcpuStats);

  info @13 () -> (info :VcpuInfo);

  ticket @14 () -> (ticket :Data);
  # An unguessable bearer token (a sturdy ref) for this vCPU alone, which
  # another connection redeems with Service.attachVcpu: how a front gives
  # each vCPU thread its own connection. Valid while the VM lives.

  openChannel @15 () -> (channel :VcpuChannel);
  # The exit fast path (schema/channel/README.md): a shared-memory call/reply
  # channel for this vCPU, carrying the same requests as the methods above
  # (MMIO/MSR read/write, acknowledge, set CR8) plus this vCPU's events.
  # While it is open, this vCPU's events go through the channel only (never
  # also through the EventSink), so they keep their single order; when the
  # front closes its end, they go to the EventSink again. One channel per
  # vCPU at a time: a second open is an error reply.
}

interface VcpuChannel {
  # Carries one fd (Capability getFd()): the front's end of the channel's
  # doorbell socket; the shared memory and the attention eventfd arrive
  # through that socket (vlapic::channel::ChannelFront::connect). The front
  # keeps its own duplicate and may drop this capability at once; the
  # channel lives until the front closes its fd.
}

# ---------------------------------------------------------------------------
# Events (server -> front)

struct Event {
  # One thing vCPU `vcpu` must act on. Events of one vCPU arrive in the
  # order they happened; events of different vCPUs are independent.
  vcpu @0 :UInt32;
  union {
    deliverable @1 :UInt8;
    # A vector now beats PPR: open an interrupt window, then acknowledge.
    # Coalesced: a later `deliverable` supersedes an earlier one (IRR is a
    # set), so the front always re-reads the state when it acknowledges.
    nmi @2 :Void;
    smi @3 :Void;
    init @4 :Void;            # INIT received: the LAPIC was reset
    sipi @5 :UInt8;           # start at CS = vector << 8, IP = 0
    extint @6 :Void;          # ask the legacy PIC for the vector
    eoi @7 :UInt8;            # level-triggered EOI for the I/O APIC
    timer @8 :Void;           # the LAPIC timer expired; its vector, if
                              # unmasked, is in IRR (a deliverable event
                              # follows when it beats PPR)
  }
  count @9 :UInt32;
  # timer: expiries merged into this event (periods the host was late by);
  # eoi: EOIs of `eoi` merged into this event; 1 for every other kind.

  timerDeadlineNs @10 :UInt64;
  # timer: when this vCPU's timer expires next (a periodic timer's next
  # period; host CLOCK_MONOTONIC ns), as the batch leaves the server; 0: not
  # armed. 0 on every other kind, and in saved state.
}

interface EventSink {
  # Implemented by the front, called by the server without any request from
  # the front. Flow control: the server keeps at most
  # VmConfig.maxBatchesInFlight calls outstanding; the front applies
  # backpressure simply by returning later. Meanwhile events queue (and
  # coalesce where the architecture allows) in the server; none is lost.

  deliver @0 (events :List(Event), droppedCoalesced :UInt64) -> ();
  # `droppedCoalesced`: how many events were merged into later ones since
  # the previous batch (informational).
}

# ---------------------------------------------------------------------------
# The VM

struct MsiMessage {
  # An MSI in the architectural format (SDM "Message Signalled Interrupts").
  address @0 :UInt64;   # 0xFEExxxxx: dest ID 19:12, ext. ID 11:5, RH 3, DM 2
  data @1 :UInt32;      # vector 7:0, delivery mode 10:8, level 14, trigger 15
}

struct VmStats {
  vcpus @0 :List(VcpuStats);
  eventsPosted @1 :UInt64;
  batchesPosted @2 :UInt64;
  eventsCoalesced @3 :UInt64;
  timerExpiries @4 :UInt64;
  msisDelivered @5 :UInt64;
}

struct VmInfo {
  id @0 :UInt64;              # server-wide id (for operators, not a right)
  name @1 :Text;
  vcpuCount @2 :UInt32;
  owner @3 :UInt64;           # id of the connection that created it
  createdNs @4 :UInt64;
  eventsQueued @5 :UInt64;
  batchesInFlight @6 :UInt32;
}

interface Vm {
  vcpu @0 (index :UInt32) -> (vcpu :Vcpu);
  # Out-of-range index: error reply.

  listVcpus @1 () -> (vcpus :List(VcpuInfo));

  deliverMsi @2 (msi :MsiMessage) -> ();
  # Route a device's MSI through the VM (physical/logical, lowest priority,
  # extended destination ID).

  deliverIoApic @3 (entry :UInt64) -> ();
  # Route an I/O APIC redirection-table entry (the 64-bit RTE format) that
  # is firing now (for level-triggered entries: asserting).

  setLint @4 (vcpu :UInt32, pin :UInt8, level :Bool) -> ();
  # Drive LINT0/LINT1 of one vCPU (`vcpu` = 0xFFFFFFFF: of every vCPU, as a
  # board wires the PIC to all LAPICs). pin 0 or 1.

  save @5 (legacyX2apicIds :Bool) -> (state :VmState);
  # legacyX2apicIds as in Vcpu.save, for every vCPU.
  restore @6 (state :VmState, resumeTscAtSaved :Bool) -> ();
  # VM-wide save/restore; restore validates every vCPU before changing any.
  # resumeTscAtSaved = false: keep the saved TSC offset (same host clock, e.g.
  # a restarted vlapicd); true: the guest TSC continues from tscAtSave, as
  # if no time had passed (another host, a paused VM).

  stats @7 () -> (stats :VmStats);
  info @8 () -> (info :VmInfo);

  apicAccessPage @9 () -> (info :PageInfo, page :Page);
  # The server object's APIC-access page (one per server, via the HAL).

  release @10 () -> ();
  # Release the VM now (otherwise: when the last capability is dropped).

  setIrqLine @11 (pin :UInt8, level :Bool) -> ();
  # A device drives the VM's I/O APIC input `pin` (0-23) to `level`, the
  # wire's electrical level: an entry's polarity (bit 13) says which level
  # asserts it, and after reset every wire is low. Edge entries send on the
  # asserting edge; level entries send while asserted and remote IRR is
  # clear, and again at EOI if still asserted. Error reply: no I/O APIC, or
  # pin out of range.

  setIrqLines @12 (lines :List(IrqLine)) -> ();
  # Several setIrqLine calls in one message, applied in order (a pulse is
  # [{pin, true}, {pin, false}]). At most 1024 lines; all are checked first,
  # so a bad one fails the call with none applied.

  ioapic @13 () -> (status :IoApicStatus);
  # The I/O APIC's registers, pin levels, remote IRR and counters (for
  # vlapicctl ioapic and dumps).
}

# ---------------------------------------------------------------------------
# Operator access

struct ServerStatus {
  version @0 :Text;
  hal @1 :Text;               # "host-memory" or "shared-memory"
  uptimeNs @2 :UInt64;
  connections @3 :UInt32;
  vms @4 :UInt32;
  vcpus @5 :UInt32;
  pagesInUse @6 :UInt64;
  armedTimers @7 :UInt32;
  totalEventsPosted @8 :UInt64;
  totalTimerExpiries @9 :UInt64;
  pid @10 :UInt32;
  # Right after a channel vCPU's timer expiry, vlapicd's loop thread polls
  # that channel briefly for the front's fetch and serves it itself (no
  # cold wake-up of the channel thread): polls made, fetches served by
  # them, and expiries whose poll was skipped by the back-off that follows
  # a poll that served nothing. Released VMs included.
  channelLoopPolls @11 :UInt64;
  channelLoopRequests @12 :UInt64;
  channelLoopSkipped @13 :UInt64;
  # The channel thread's own poll across a channel vCPU's timer expiry
  # (vlapicd --channel-timer-polls; off by default, for hosts with a core to
  # spare): whether it is on, hints given (one per new deadline of a vCPU
  # with a channel), hinted polls that began, those that had to wake the
  # sleeping thread, and requests served from them. Released VMs included.
  channelTimerPolls @14 :Bool;
  channelHintsGiven @15 :UInt64;
  channelHintedPolls @16 :UInt64;
  channelHintedWakeups @17 :UInt64;
  channelHintedRequests @18 :UInt64;
  # Timer expiries fired by a channel request that found its vCPU's timer
  # already due (the front woke or kicked itself at the deadline), rather
  # than by the loop's timer; included in totalTimerExpiries.
  channelRequestTimerFires @19 :UInt64;
}

interface Admin {
  # The operator's right over the whole server (vlapicctl). Whoever can
  # connect to the socket gets it: the socket's file permissions (or the
  # systemd socket unit) ARE this right, so the socket must not be reachable
  # by guests or untrusted fronts. It observes every VM and can save and
  # restore them; capabilities it hands out do not keep a VM alive (the
  # creator's do) and fail once the VM is released.
  status @0 () -> (status :ServerStatus);
  listVms @1 () -> (vms :List(VmInfo));
  openVm @2 (id :UInt64) -> (vm :Vm);
  # Unknown id: error reply.
}

# ---------------------------------------------------------------------------
# Bootstrap

interface Service {
  echo @0 (value :UInt64) -> (value :UInt64);
  # Does nothing: the transport floor for benchmarks.

  createVm @1 (config :VmConfig, sink :EventSink) -> (vm :Vm);
  # Invalid configuration: error reply naming the field.

  attachVcpu @2 (ticket :Data) -> (vcpu :Vcpu);
  # Redeem a ticket from Vcpu.ticket on this connection.

  admin @3 () -> (admin :Admin);

  status @4 () -> (status :ServerStatus);
}
