/* SPDX-License-Identifier: MIT */
/*
 * vlapic.h: the C API of the vlapic client library (libvlapic-client).
 *
 * A hypervisor front (QEMU, crosvm, cloud-hypervisor, Firecracker, any C or
 * Rust VMM) drives a virtual x86 local APIC served by vlapicd through it:
 * connect, create a VM, open each vCPU's shared-memory channel on that vCPU's
 * thread, forward every LAPIC access of the guest (MMIO in the APIC page, the
 * x2APIC MSRs, CR8) over the channel, and inject what the replies say.
 * C11, no Cap'n Proto or kj type appears here; every handle is opaque.
 *
 *   pkg-config --cflags --libs vlapic      #include <vlapic/vlapic.h>
 *
 * Errors. Every function that can fail returns an int: VLAPIC_OK (0) or a
 * negative vlapic_error. vlapic_last_error() then returns a message for the
 * failure on the calling thread (valid until that thread's next call into
 * the library). A guest's bad access is NOT an error: it is a result
 * (VLAPIC_ACCESS_GP: inject #GP; VLAPIC_ACCESS_IGNORED: reads return
 * `value`, writes are dropped), with the function returning VLAPIC_OK.
 * VLAPIC_ERR_DISCONNECTED means vlapicd went away: the VM is lost.
 *
 * Threads.
 *  - vlapic_client and vlapic_vm functions may be called from any thread
 *    (the client owns a background thread with its connection to vlapicd).
 *    Destroy every VM before its client.
 *  - A vlapic_vcpu is bound to the thread that opened it: call its functions
 *    (access, acknowledge, CR8, events, save/restore, close) on that thread
 *    only. A thread may open several vCPUs (they share one connection).
 *    vlapic_vcpu_attention_fd() is the exception: any thread may poll it
 *    and call vlapic_vcpu_consume_attention().
 *  - Events of a vCPU with an open channel come in its channel replies
 *    (vlapic_vcpu_take_events); events of other vCPUs come through the VM's
 *    event fd (vlapic_vm_take_events). Both fds fit an epoll/poll loop.
 */
#ifndef VLAPIC_VLAPIC_H
#define VLAPIC_VLAPIC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define VLAPIC_API_VERSION 2   /* 2: the I/O APIC in vlapicd */

/* ---- Errors ------------------------------------------------------------ */

typedef enum vlapic_error {
  VLAPIC_OK = 0,
  VLAPIC_ERR_INVALID = -1,       /* a bad argument (NULL, index out of range, ...) */
  VLAPIC_ERR_DISCONNECTED = -2,  /* vlapicd is absent or went away */
  VLAPIC_ERR_FAILED = -3,        /* vlapicd refused the request (see message) */
  VLAPIC_ERR_OVERLOADED = -4,    /* a quota or resource limit was hit */
  VLAPIC_ERR_UNIMPLEMENTED = -5, /* this vlapicd does not offer the call */
  VLAPIC_ERR_BUFFER = -6         /* the caller's buffer is too small */
} vlapic_error;

/* The message of the calling thread's last failure ("" if none). */
const char* vlapic_last_error(void);
/* A constant name for an error code ("VLAPIC_ERR_DISCONNECTED"). */
const char* vlapic_error_name(int error);

/* ---- Handles ----------------------------------------------------------- */

typedef struct vlapic_client vlapic_client;  /* control connection */
typedef struct vlapic_vm vlapic_vm;          /* one VM's LAPICs */
typedef struct vlapic_vcpu vlapic_vcpu;      /* one vCPU's channel, one thread */

/* ---- Connection -------------------------------------------------------- */

/* socket_path NULL: $XDG_RUNTIME_DIR/vlapic/vlapicd.sock, else
 * /run/vlapic/vlapicd.sock (vlapicd's own default). */
int vlapic_connect(const char* socket_path, vlapic_client** out);
void vlapic_disconnect(vlapic_client* client);   /* NULL is a no-op */

/* ---- VMs --------------------------------------------------------------- */

struct vlapic_vm_config {
  uint32_t struct_size;       /* sizeof(struct vlapic_vm_config): set by _init */
  uint32_t vcpu_count;        /* 1 .. 4096 */
  const uint32_t* apic_ids;   /* vcpu_count initial APIC IDs; NULL: vCPU i has ID i */
  uint32_t boot_vcpu;         /* the BSP */
  uint64_t timer_hz;          /* LAPIC timer input clock; 0: vlapicd's default */
  uint64_t tsc_hz;            /* 0: vlapicd's default */
  uint8_t lvt_entries;        /* 6, or 7 with CMCI */
  bool eoi_broadcast_suppression;
  bool x2apic_supported;
  bool tsc_deadline_supported;
  bool strict_reserved_bits;
  bool bsp_lint0_extint;      /* BSP's LINT0 wired as ExtINT (PC compatibility) */
  const char* name;           /* for vlapicctl list; NULL: none */
  bool x2apic_broadcast_quirk; /* KVM's quirk: MSI/I/O APIC destination 0xFF
                                  also broadcasts to x2APIC-mode LAPICs;
                                  false: it names x2APIC ID 255 */
  /* Since VLAPIC_API_VERSION 2. A caller built against version 1 passes
   * its smaller struct_size and gets these defaults. */
  uint64_t ioapic_base;       /* 4 KiB aligned; 0: 0xFEC00000 */
  bool ioapic_present;        /* the VM's I/O APIC in vlapicd (24 pins,
                                 vlapic_vm_set_irq_line); false: the front
                                 emulates its own (vlapic_vm_deliver_ioapic_entry) */
  uint8_t ioapic_id;          /* I/O APIC ID after reset, 0-15 */
  uint8_t ioapic_version;     /* 0x11, or 0x20 (EOI register at base + 0x40); 0: 0x11 */
};
/* Fills the defaults: 1 vCPU, 6 LVT entries, x2APIC and TSC-deadline on,
 * an I/O APIC at 0xFEC00000 with ID 0 and version 0x11. */
void vlapic_vm_config_init(struct vlapic_vm_config* config);

int vlapic_vm_create(vlapic_client* client, const struct vlapic_vm_config* config,
                     vlapic_vm** out);
void vlapic_vm_destroy(vlapic_vm* vm);   /* releases the VM in vlapicd; NULL: no-op */
uint32_t vlapic_vm_vcpu_count(const vlapic_vm* vm);
uint64_t vlapic_vm_id(const vlapic_vm* vm);   /* vlapicd's id (vlapicctl dump ID) */

/* Interrupt sources outside the LAPICs. */
int vlapic_vm_deliver_msi(vlapic_vm* vm, uint64_t address, uint32_t data);
/* One I/O APIC redirection table entry (64-bit, architectural format). */
int vlapic_vm_deliver_ioapic_entry(vlapic_vm* vm, uint64_t redirection_entry);
#define VLAPIC_ALL_VCPUS 0xFFFFFFFFu
int vlapic_vm_set_lint(vlapic_vm* vm, uint32_t vcpu, uint8_t pin, bool level);

/* ---- The VM's I/O APIC (82093AA, in vlapicd) ---------------------------- */
/* Its MMIO window (IOREGSEL base + 0x00, IOWIN + 0x10, EOI + 0x40 for
 * version 0x20) is reached with vlapic_mmio_read/write like the LAPIC's;
 * remote IRR and EOI broadcast stay inside vlapicd. A VM created with
 * ioapic_present false refuses these calls (VLAPIC_ERR_FAILED). */

#define VLAPIC_IOAPIC_PINS 24

/* A device drives pin `pin` (0-23) to the electrical `level` (true: high);
 * the entry's polarity (bit 13) says which level asserts it. An edge entry
 * fires on the asserting edge, a level entry while asserted and remote IRR
 * is clear. After reset every wire is low. */
int vlapic_vm_set_irq_line(vlapic_vm* vm, uint32_t pin, bool level);

struct vlapic_irq_line {
  uint8_t pin;      /* 0-23 */
  bool level;       /* electrical: true high */
};
/* Several wires in one call, applied in order (a pulse is {p, 1}, {p, 0}).
 * Every pin is checked first: a bad one fails the call with none applied. */
int vlapic_vm_set_irq_lines(vlapic_vm* vm, const struct vlapic_irq_line* lines, size_t count);

struct vlapic_ioapic_pin {
  uint64_t entry;          /* redirection table entry, as the guest reads it */
  bool level;              /* the wire is high */
  bool asserted;           /* the level, with the entry's polarity applied */
  bool pending_edge;       /* an edge waits for the entry to be unmasked */
  uint64_t assertions;     /* de-asserted -> asserted transitions */
  uint64_t messages;       /* interrupt messages sent */
  uint64_t eois;           /* EOIs that cleared remote IRR */
  uint64_t redeliveries;   /* messages re-sent at EOI or unmask, pin asserted */
  uint64_t coalesced;      /* assertions that found the previous one pending */
};

struct vlapic_ioapic_status {
  uint32_t struct_size;    /* the caller sets sizeof(struct vlapic_ioapic_status) */
  bool present;            /* false: the VM has no I/O APIC in vlapicd (rest 0) */
  uint8_t id;
  uint8_t version;
  uint8_t ioregsel;        /* the last IOREGSEL write */
  uint64_t base;
  uint32_t pin_count;      /* pins filled in: VLAPIC_IOAPIC_PINS when present */
  struct vlapic_ioapic_pin pins[VLAPIC_IOAPIC_PINS];
};
/* The I/O APIC's registers, wires, remote IRR and counters (what vlapicctl
 * ioapic shows). Any thread. */
int vlapic_vm_ioapic_status(vlapic_vm* vm, struct vlapic_ioapic_status* out);

/* ---- Events ------------------------------------------------------------ */

typedef enum vlapic_event_kind {
  VLAPIC_EVENT_DELIVERABLE = 0,  /* `vector` beats PPR: open an interrupt window */
  VLAPIC_EVENT_NMI = 1,
  VLAPIC_EVENT_SMI = 2,
  VLAPIC_EVENT_INIT = 3,         /* the LAPIC was reset by INIT */
  VLAPIC_EVENT_SIPI = 4,         /* start at CS = vector << 8, IP = 0 */
  VLAPIC_EVENT_EXTINT = 5,       /* ask the legacy PIC for the vector */
  VLAPIC_EVENT_EOI = 6,          /* level-triggered `vector` EOIed (for the I/O APIC) */
  VLAPIC_EVENT_TIMER = 7         /* the LAPIC timer expired `count` times */
} vlapic_event_kind;

struct vlapic_event {
  uint32_t vcpu;
  uint8_t kind;      /* vlapic_event_kind */
  uint8_t vector;    /* DELIVERABLE, SIPI, EOI */
  uint32_t count;    /* TIMER, EOI: merged occurrences; else 1 */
};
const char* vlapic_event_kind_name(int kind);

/* Readable (poll/epoll POLLIN) while events of channel-less vCPUs are queued. */
int vlapic_vm_event_fd(const vlapic_vm* vm);
/* Moves up to `max` queued events (oldest first) into `out`; returns how
 * many (0: none), or a negative vlapic_error. */
int vlapic_vm_take_events(vlapic_vm* vm, struct vlapic_event* out, size_t max);

/* ---- vCPUs: the channel (the exit fast path) ---------------------------- */

/* Opens vCPU `index`'s shared-memory channel on the calling thread. From
 * then on its events come in its channel replies. */
int vlapic_vcpu_open(vlapic_vm* vm, uint32_t index, vlapic_vcpu** out);
void vlapic_vcpu_close(vlapic_vcpu* vcpu);   /* on its thread; NULL: no-op */
uint32_t vlapic_vcpu_index(const vlapic_vcpu* vcpu);

typedef enum vlapic_access_status {
  VLAPIC_ACCESS_OK = 0,       /* a read returns `value`; a write took effect */
  VLAPIC_ACCESS_GP = 1,       /* inject #GP (MSR accesses only) */
  VLAPIC_ACCESS_IGNORED = 2   /* a read returns `value`, a write was dropped */
} vlapic_access_status;

/* Flags of an access. */
#define VLAPIC_INJECT_IF_PENDING 1u  /* the vCPU can take an interrupt right
                                        after this exit (KVM:
                                        ready_for_interrupt_injection, IF=1):
                                        acknowledge in the same call */

struct vlapic_result {
  uint8_t status;     /* vlapic_access_status; OK for non-access calls */
  uint8_t reason;     /* why GP/IGNORED (vlapic::AccessReason); 0 otherwise */
  uint8_t cr8;        /* TPR[7:4] after the call: load it into the guest's CR8 */
  int16_t inject;     /* acknowledged vector to inject now, or -1 */
  uint64_t value;     /* read value */
  uint32_t events;    /* events now waiting in vlapic_vcpu_take_events */
};

int vlapic_mmio_read(vlapic_vcpu* vcpu, uint64_t gpa, uint8_t size, unsigned flags,
                     struct vlapic_result* out);
int vlapic_mmio_write(vlapic_vcpu* vcpu, uint64_t gpa, uint8_t size, uint64_t value,
                      unsigned flags, struct vlapic_result* out);
int vlapic_msr_read(vlapic_vcpu* vcpu, uint32_t msr, unsigned flags, struct vlapic_result* out);
int vlapic_msr_write(vlapic_vcpu* vcpu, uint32_t msr, uint64_t value, unsigned flags,
                     struct vlapic_result* out);
/* Take the highest deliverable vector (INTA cycle): out->inject. */
int vlapic_acknowledge(vlapic_vcpu* vcpu, struct vlapic_result* out);
/* MOV to CR8 (0-15; SDM 10.8.6.1). */
int vlapic_set_cr8(vlapic_vcpu* vcpu, uint8_t cr8, unsigned flags, struct vlapic_result* out);
/* No access: collect the events vlapicd queued for this vCPU. */
int vlapic_fetch_events(vlapic_vcpu* vcpu, unsigned flags, struct vlapic_result* out);

/* Moves up to `max` events collected by this vCPU's calls into `out`;
 * returns how many. */
int vlapic_vcpu_take_events(vlapic_vcpu* vcpu, struct vlapic_event* out, size_t max);

/* vlapicd queued events since the last call (one shared-memory load). */
bool vlapic_vcpu_attention_pending(const vlapic_vcpu* vcpu);
/* Parks the (halted) vCPU thread until attention is raised: 1, or the
 * timeout passes: 0 (timeout_ns < 0: no timeout); negative on error. */
int vlapic_vcpu_wait_attention(vlapic_vcpu* vcpu, int64_t timeout_ns);
/* An eventfd that turns readable when attention is raised: for an event
 * loop that kicks a vCPU out of KVM_RUN. Any thread. */
int vlapic_vcpu_attention_fd(const vlapic_vcpu* vcpu);
/* Re-arms the fd; returns whether a notification was pending. Any thread. */
bool vlapic_vcpu_consume_attention(vlapic_vcpu* vcpu);

/* ---- Save and restore --------------------------------------------------- */

#define VLAPIC_KVM_LAPIC_STATE_SIZE 1024   /* sizeof(struct kvm_lapic_state) */
#define VLAPIC_HIDDEN_MAX 512

/* One vCPU's LAPIC: KVM's kvm_lapic_state register image (x2APIC ID format
 * as KVM_CAP_X2APIC_API says), IA32_APIC_BASE, and vlapic's hidden record
 * (what the page does not show: timer phase, run state, LINT levels ...). A
 * restore without a hidden record (hidden_size 0) takes what the image
 * implies, as a KVM state would. */
struct vlapic_lapic_state {
  uint64_t apic_base;
  uint8_t regs[VLAPIC_KVM_LAPIC_STATE_SIZE];
  bool x2apic_32bit_ids;
  uint32_t hidden_size;
  uint8_t hidden[VLAPIC_HIDDEN_MAX];
};
int vlapic_vcpu_save(vlapic_vcpu* vcpu, struct vlapic_lapic_state* out);
/* vlapic_vcpu_save in a chosen x2APIC ID layout: x2apic_32bit_ids false
 * writes KVM's legacy layout (no KVM_X2APIC_API_USE_32BIT_IDS: an x2APIC
 * vCPU's ID field holds the ID's low 8 bits in bits 31:24), for a KVM that
 * does not enable the 32-bit-ID API. vlapic_vcpu_save is this with true. */
int vlapic_vcpu_save_layout(vlapic_vcpu* vcpu, bool x2apic_32bit_ids,
                            struct vlapic_lapic_state* out);
int vlapic_vcpu_restore(vlapic_vcpu* vcpu, const struct vlapic_lapic_state* state);

/* The whole VM (every vCPU, TSC offset, queued events, the I/O APIC's
 * entries, wires and pending edges) as one portable blob
 * (vlapicctl save's file format). Free it with vlapic_free. Any thread; the
 * VM's vCPUs should be stopped. */
int vlapic_vm_save(vlapic_vm* vm, void** blob, size_t* size);
int vlapic_vm_restore(vlapic_vm* vm, const void* blob, size_t size);
void vlapic_free(void* blob);

#ifdef __cplusplus
}
#endif

#endif /* VLAPIC_VLAPIC_H */
