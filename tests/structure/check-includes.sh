#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# The client side never reaches into server internals: no source file under
# client/ or examples/ includes server/..., and neither does the shared part
# under schema/ (the register model, the channel), which the client library
# installs. What both sides share lives in schema/ (issue 15).
# Usage: check-includes.sh SOURCE_DIR
set -euo pipefail
root=${1:?usage: check-includes.sh SOURCE_DIR}
cd "$root"
status=0
checked=0
for dir in client examples schema; do
  [[ -d $dir ]] || continue
  while IFS= read -r -d '' f; do
    checked=$((checked + 1))
    if hits=$(grep -nE '^[[:space:]]*#[[:space:]]*include[[:space:]]*["<]server/' "$f"); then
      while IFS= read -r hit; do
        echo "FAIL: $f:$hit (server/ is vlapicd's; use schema/)"
      done <<< "$hits"
      status=1
    fi
  done < <(find "$dir" -type f \( -name '*.h' -o -name '*.hpp' -o -name '*.c' -o -name '*.cc' -o -name '*.cpp' \) -print0)
done
echo "checked $checked files under client/, examples/, schema/ for includes of server/"
exit $status
