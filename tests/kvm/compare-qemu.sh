#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Runs the architectural guest kernels under QEMU with KVM's in-kernel LAPIC,
# to show they test the architecture and not our implementation. Not part of
# ctest or CI (QEMU is big); run by hand:
#   bash tests/kvm/compare-qemu.sh [BUILD_DIR]
# It installs Debian's qemu-system-x86 when qemu-system-x86_64 is missing.
# Prints PASS/FAIL per kernel and every failing check; the exit status is
# the number of kernels that did not pass.
set -uo pipefail
cd "$(dirname "$0")/../.."
build=${1:-build}
guests=$build/tests/guests

if ! command -v qemu-system-x86_64 > /dev/null; then
  echo "compare-qemu: installing qemu-system-x86 (Debian)"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends qemu-system-x86
fi
if ! [ -c /dev/kvm ]; then
  echo "compare-qemu: /dev/kvm is not available"
  exit 77
fi
for guest in apic-regs apic-base apic-ipi apic-timer apic-priority ioapic; do
  if ! [ -f "$guests/$guest.elf" ]; then
    echo "compare-qemu: $guests/$guest.elf is missing: build first (cmake --build $build)"
    exit 2
  fi
done

qemu-system-x86_64 --version | head -1
failed=0
# SMP runs use 2 vCPUs: this host's KVM recommends no more (it has 2 CPUs),
# and QEMU with 4 busy-waiting vCPUs on it sometimes stalls past the timeout.
run() {  # run LABEL KERNEL SMP CPU [QEMU ARGS...]
  local label=$1 kernel=$2 smp=$3 cpu=$4 output status
  shift 4
  # -nodefaults: no devices at the addresses apic-base relocates the window
  # to. invtsc lets QEMU offer the 0x40000010 timing leaf (TSC/APIC kHz).
  output=$(timeout 120 qemu-system-x86_64 -accel kvm -cpu "$cpu" -m 128 -smp "$smp" \
    -nodefaults -no-reboot -display none -serial stdio \
    -device isa-debug-exit,iobase=0xf4,iosize=4 "$@" -kernel "$kernel" 2>&1)
  status=$?
  local passes fails
  passes=$(printf '%s\n' "$output" | grep -c '^PASS')
  fails=$(printf '%s\n' "$output" | grep -c '^FAIL')
  if [ "$status" -eq 1 ] && [ "$fails" -eq 0 ]; then
    echo "PASS $label: $passes checks"
  else
    echo "FAIL $label: status $status, $passes passed, $fails failed"
    printf '%s\n' "$output" | grep -E '^(FAIL|SKIP)|qemu' | sed 's/^/    /'
    failed=$((failed + 1))
  fi
}

run "apic-regs (x2APIC)" "$guests/apic-regs.elf" 2 host,+invtsc,-arch-capabilities
run "apic-regs (no x2APIC)" "$guests/apic-regs.elf" 2 host,+invtsc,-arch-capabilities,-x2apic
run "apic-base (x2APIC)" "$guests/apic-base.elf" 1 host,+invtsc,-arch-capabilities
run "apic-base (no x2APIC)" "$guests/apic-base.elf" 1 host,+invtsc,-arch-capabilities,-x2apic
run "apic-ipi (2 vCPUs)" "$guests/apic-ipi.elf" 2 host,+invtsc,-arch-capabilities
run "apic-ipi (2 vCPUs, no x2APIC)" "$guests/apic-ipi.elf" 2 host,+invtsc,-arch-capabilities,-x2apic
run "apic-timer" "$guests/apic-timer.elf" 1 host,+invtsc,-arch-capabilities
run "apic-priority" "$guests/apic-priority.elf" 1 host,+invtsc,-arch-capabilities
# KVM's in-kernel I/O APIC, QEMU's 16550 and pc-testdev's IRQ-line ports.
run "ioapic (x2APIC)" "$guests/ioapic.elf" 1 host,+invtsc,-arch-capabilities -device pc-testdev
run "ioapic (no x2APIC)" "$guests/ioapic.elf" 1 host,+invtsc,-arch-capabilities,-x2apic -device pc-testdev
echo "compare-qemu: $failed kernel run(s) did not pass under QEMU's in-kernel LAPIC"
exit $failed
