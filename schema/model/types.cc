// SPDX-License-Identifier: MIT
#include "schema/model/types.h"

namespace vlapic {

kj::StringPtr accessReasonName(AccessReason reason) {
  switch (reason) {
    case AccessReason::NONE: return "none";
    case AccessReason::RESERVED_REGISTER: return "reserved register";
    case AccessReason::READ_ONLY_REGISTER: return "read-only register";
    case AccessReason::WRITE_ONLY_REGISTER: return "write-only register";
    case AccessReason::NOT_IN_MODE: return "register absent in this APIC mode";
    case AccessReason::BAD_SIZE_OR_ALIGNMENT: return "unsupported access size or alignment";
    case AccessReason::NOT_DECODING: return "MMIO window not decoding (APIC disabled or in x2APIC mode)";
    case AccessReason::OUTSIDE_WINDOW: return "address outside the APIC window";
    case AccessReason::RESERVED_BITS: return "reserved bits set";
    case AccessReason::ILLEGAL_TRANSITION: return "illegal IA32_APIC_BASE transition";
    case AccessReason::APIC_DISABLED: return "x2APIC MSR outside x2APIC mode";
    case AccessReason::NON_ZERO_WRITE: return "non-zero write to x2APIC EOI/ESR";
    case AccessReason::TIMER_MODE: return "not valid in the current timer mode";
  }
  return "unknown";
}

}  // namespace vlapic
