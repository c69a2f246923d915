#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Builds the binary packages with dpkg-buildpackage -us -uc -b from a copy
# of the source tree (the build writes into debian/ and the parent
# directory), checks each package's file list with dpkg-deb -c, runs lintian
# when installed (errors fail, warnings are printed), unpacks every package
# into one throw-away root with dpkg -x and runs the unpacked programs there.
set -euo pipefail
source_dir=$1

for tool in dpkg-buildpackage dh dpkg-deb; do
  if ! command -v "$tool" >/dev/null; then
    echo "SKIP: $tool not installed (deploy/packages.sh lists debhelper and dpkg-dev)"
    exit 77
  fi
done

work=$(mktemp -d "${TMPDIR:-/tmp}/vlapic-deb.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir "$work/src"
# The tracked and new files of the tree, without any build directory.
if git -C "$source_dir" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  (cd "$source_dir" && git ls-files -co --exclude-standard | grep -v -e '^build/' -e '^build-' \
     | tar -cf - -T -) | tar -xf - -C "$work/src"
else
  tar -C "$source_dir" --exclude='./build' --exclude='./build-*' -cf - . | tar -xf - -C "$work/src"
fi

echo "== dpkg-buildpackage"
if ! (cd "$work/src" && DEB_BUILD_OPTIONS="nocheck parallel=2" dpkg-buildpackage -us -uc -b) \
    > "$work/build.log" 2>&1; then
  tail -50 "$work/build.log"
  echo "FAIL: dpkg-buildpackage"
  exit 1
fi

failed=0
expect() {   # package, then the paths it must hold
  local package=$1; shift
  local deb
  deb=$(ls "$work"/"${package}"_*.deb)
  local listing
  listing=$(dpkg-deb -c "$deb" | awk '{print $6}')
  for path in "$@"; do
    if ! grep -qx -- "./$path" <<<"$listing"; then
      echo "FAIL: $package lacks $path"
      failed=1
    fi
  done
}
multiarch=$(dpkg-architecture -qDEB_HOST_MULTIARCH)
expect vlapicd usr/bin/vlapicd usr/share/man/man8/vlapicd.8.gz \
  usr/lib/systemd/system/vlapicd.service usr/lib/systemd/system/vlapicd.socket \
  usr/libexec/vlapic/vlapicd-sandbox.sh usr/share/doc/vlapic/schema/vlapic.capnp
expect libvlapic-client0 "usr/lib/$multiarch/libvlapic-client.so.0"
expect libvlapic-dev usr/include/vlapic/vlapic.h usr/include/vlapic/client/lib/vlapic_client.h \
  usr/include/vlapic/schema/model/regview.h usr/include/vlapic/schema/channel/channel.h \
  "usr/lib/$multiarch/libvlapic-client.so" "usr/lib/$multiarch/pkgconfig/vlapic.pc" \
  "usr/lib/$multiarch/cmake/vlapic/vlapicConfig.cmake"
expect vlapic-tools usr/bin/vlapicctl usr/bin/vlapic-kvm usr/share/man/man1/vlapicctl.1.gz \
  usr/share/man/man1/vlapic-kvm.1.gz

# The -dev package ships the client's and the shared model's headers, none
# of the server's internals (issue 15).
if dpkg-deb -c "$(ls "$work"/libvlapic-dev_*.deb)" | awk '{print $6}' | grep -q '^\./usr/include/vlapic/server'; then
  echo "FAIL: libvlapic-dev ships headers under usr/include/vlapic/server"
  failed=1
fi

if command -v lintian >/dev/null; then
  echo "== lintian"
  lintian_out=$(lintian --tag-display-limit 0 "$work"/*.changes 2>&1 || true)
  echo "$lintian_out"
  if grep -q '^E: ' <<<"$lintian_out"; then
    echo "FAIL: lintian reports errors"
    failed=1
  fi
else
  echo "lintian not installed: packages not linted"
fi

echo "== unpacked into a throw-away root"
root="$work/root"
for deb in "$work"/*.deb; do
  case "$deb" in *-dbgsym_*) continue ;; esac
  dpkg -x "$deb" "$root"
done
lib="$root/usr/lib/$multiarch"
for program in vlapicd vlapicctl vlapic-kvm; do
  if ! LD_LIBRARY_PATH="$lib" "$root/usr/bin/$program" --help >/dev/null; then
    echo "FAIL: $program --help"
    failed=1
  fi
done
grep -q "^ExecStart=/usr/bin/vlapicd " "$root/usr/lib/systemd/system/vlapicd.service" \
  || { echo "FAIL: the packaged unit does not start /usr/bin/vlapicd"; failed=1; }
# The unpacked daemon serves, and the unpacked vlapicctl talks to it.
socket="$work/vlapicd.sock"
LD_LIBRARY_PATH="$lib" "$root/usr/bin/vlapicd" --no-sandbox --socket "$socket" 2>"$work/daemon.log" &
daemon=$!
for _ in $(seq 100); do [ -S "$socket" ] && break; sleep 0.05; done
if ! LD_LIBRARY_PATH="$lib" "$root/usr/bin/vlapicctl" --socket "$socket" status --json | grep -q '"vms":0'; then
  echo "FAIL: unpacked vlapicctl status against the unpacked vlapicd"
  cat "$work/daemon.log"
  failed=1
fi
kill "$daemon"
wait "$daemon" || true

[ "$failed" -eq 0 ] && echo "debian packages: all checks passed"
exit "$failed"
