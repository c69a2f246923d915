# SPDX-License-Identifier: MIT
# Debian packages the build, the tests and the main job need. Sourced by the
# README's two commands.
VLAPIC_PACKAGES=(
  g++ cmake make pkg-config
  capnproto libcapnp-dev
  catch2
  # Hardening (issue 8): vlapicd's seccomp filter, the sandbox script, the
  # libFuzzer harnesses (clang + its runtime), leak checks.
  libseccomp-dev bubblewrap clang libclang-rt-14-dev valgrind
  # The shipped units checked offline (tests/deploy/units-test.sh):
  # systemd-analyze. Installing it starts nothing.
  systemd
  # Packaging (issue 15): the debian/ build and its checks, man(1) for the
  # installed pages.
  debhelper dpkg-dev fakeroot lintian man-db
)

install_packages() {
  local missing=()
  for p in "${VLAPIC_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends "${missing[@]}"
  fi
}
