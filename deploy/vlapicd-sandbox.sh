#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Starts vlapicd as a separate protection domain without systemd: an
# unprivileged user, fresh user/mount/network/PID/IPC/UTS/cgroup namespaces
# (bubblewrap), a root file system holding only the read-only system
# libraries and the vlapicd binary, and one writable directory: the one that
# holds vlapicd's socket. vlapicd then confines itself further (seccomp
# allow-list, no_new_privs: server/daemon/sandbox.cc). deploy/README.md lists
# what each layer blocks.
#
# Usage: deploy/vlapicd-sandbox.sh --socket PATH [--vlapicd EXE]
#            [--pid-file FILE] [--user UID:GID] [-- VLAPICD-ARGS...]
#   --socket PATH   the Unix socket vlapicd listens on (its directory is
#                   created if needed and is the only path shared with the
#                   sandbox; fronts connect to PATH from outside as usual);
#                   the operator socket (vlapicctl) is beside it,
#                   NAME-admin.sock for NAME.sock
#   --vlapicd EXE   the vlapicd binary (default: vlapicd on PATH, else the
#                   repository's build/ or build-*/ tree)
#   --pid-file FILE write vlapicd's PID (as seen from outside) to FILE once
#                   it runs, so a supervisor can signal it
#   --user UID:GID  who vlapicd runs as when this script is started as root
#                   (default: nobody:nogroup, 65534:65534); ignored otherwise:
#                   an unprivileged caller's own uid is used
# SIGTERM/SIGINT to this script are forwarded to vlapicd (clean shutdown);
# its exit status is vlapicd's (128+N when a signal N ended it, e.g. 159 for
# SIGSYS from its seccomp filter).
set -euo pipefail

die() { echo "vlapicd-sandbox: $*" >&2; exit 1; }

socket=""
exe=""
pid_file=""
user_spec="65534:65534"
while [ $# -gt 0 ]; do
  case "$1" in
    --socket) socket=${2:?}; shift 2 ;;
    --vlapicd) exe=${2:?}; shift 2 ;;
    --pid-file) pid_file=${2:?}; shift 2 ;;
    --user) user_spec=${2:?}; shift 2 ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    --) shift; break ;;
    *) die "unknown option '$1' (try --help)" ;;
  esac
done
[ -n "$socket" ] || die "--socket PATH is required"
command -v bwrap >/dev/null || die "bubblewrap is not installed (apt-get install bubblewrap)"

if [ -z "$exe" ]; then
  repo=$(cd "$(dirname "$0")/.." && pwd)
  exe=$(command -v vlapicd || true)
  for candidate in "$repo"/build/server/daemon/vlapicd "$repo"/build*/server/daemon/vlapicd; do
    [ -n "$exe" ] && break
    [ -x "$candidate" ] && exe=$candidate
  done
fi
[ -n "$exe" ] && [ -x "$exe" ] || die "no vlapicd binary found (build it, or pass --vlapicd EXE)"
exe=$(readlink -f "$exe")

case "$socket" in /*) ;; *) socket="$PWD/$socket" ;; esac
socket_dir=$(dirname "$socket")
# The socket file itself is vlapicd's business: it replaces a stale one and
# refuses (exit status 4, one line) to replace one a live server answers on.
# This script never deletes it.
created_dir=0
if [ ! -d "$socket_dir" ]; then
  mkdir -p "$socket_dir"
  created_dir=1
fi

# As root, the sandbox is entered as an unprivileged uid (so the user
# namespace maps to it, not to root: file ownership checks outside see that
# uid). The socket directory must then be writable by it: a directory this
# script created is given to that uid; one that existed is never changed
# (its owner, mode and sticky bit are someone else's decision).
launcher=()
if [ "$(id -u)" -eq 0 ]; then
  uid=${user_spec%%:*}
  gid=${user_spec##*:}
  if [ "$created_dir" -eq 1 ]; then
    chown "$uid:$gid" "$socket_dir"
    chmod 0755 "$socket_dir"
  elif ! setpriv --reuid="$uid" --regid="$gid" --clear-groups test -w "$socket_dir" -a -x "$socket_dir"; then
    die "$socket_dir exists and uid $uid cannot create the socket in it; choose a directory of its own (it is created for uid $uid) or make this one writable by it"
  fi
  launcher=(setpriv --reuid="$uid" --regid="$gid" --clear-groups --inh-caps=-all --bounding-set=-all)
fi

# The system's libraries, read-only; Debian 12 has a merged /usr.
root_fs=(--ro-bind /usr /usr --symlink usr/lib /lib --symlink usr/lib64 /lib64
         --symlink usr/bin /bin --symlink usr/sbin /sbin
         --ro-bind /etc/ld.so.cache /etc/ld.so.cache)
[ -e /etc/localtime ] && root_fs+=(--ro-bind /etc/localtime /etc/localtime)

info=$(mktemp)
trap 'rm -f "$info"' EXIT
# --as-pid-1: vlapicd is the namespace's init, so the PID bwrap reports is
# vlapicd's own and a signal to it reaches vlapicd (not a helper init).
# --new-session: no controlling terminal to inject input into (TIOCSTI).
# --die-with-parent: the sandbox never outlives this script.
"${launcher[@]}" bwrap \
  --unshare-user --unshare-net --unshare-pid --unshare-ipc --unshare-uts --unshare-cgroup-try \
  --as-pid-1 --die-with-parent --new-session --cap-drop ALL \
  "${root_fs[@]}" \
  --proc /proc --dev /dev \
  --ro-bind "$exe" /sandbox/vlapicd \
  --bind "$socket_dir" "$socket_dir" \
  --chdir / --clearenv --setenv PATH /usr/bin \
  --setenv ASAN_OPTIONS "${ASAN_OPTIONS:-}" --setenv UBSAN_OPTIONS "${UBSAN_OPTIONS:-}" \
  --info-fd 3 \
  -- /sandbox/vlapicd --socket "$socket" "$@" 3>"$info" &
bwrap_pid=$!

forward() { [ -n "${child:-}" ] && kill -"$1" "$child" 2>/dev/null || kill -"$1" "$bwrap_pid" 2>/dev/null || true; }
trap 'forward TERM' TERM
trap 'forward INT' INT

child=""
for _ in $(seq 1 500); do
  child=$(sed -n 's/.*"child-pid": *\([0-9]*\).*/\1/p' "$info")
  [ -n "$child" ] && break
  kill -0 "$bwrap_pid" 2>/dev/null || break
  sleep 0.01
done
if [ -n "$child" ] && [ -n "$pid_file" ]; then
  echo "$child" >"$pid_file"
fi

# `wait` returns early when a trapped signal arrives; keep waiting until
# bwrap itself has exited, then collect its status (bash keeps it).
while kill -0 "$bwrap_pid" 2>/dev/null; do
  wait "$bwrap_pid" || true
done
status=0
wait "$bwrap_pid" || status=$?
exit "$status"
