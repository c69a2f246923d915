#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Every source, build and documentation file names its license (MIT) in an
# SPDX line near its top. Fuzz corpora are binary data covered by LICENSE
# (tests/fuzz/corpus/README.md says so); .gitkeep files are empty markers.
set -euo pipefail
root=${1:?usage: check-spdx.sh SOURCE_DIR}
cd "$root"
[[ -f LICENSE ]] && grep -q '^MIT License' LICENSE || { echo "FAIL: LICENSE missing or not MIT"; exit 1; }
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  mapfile -t files < <(git ls-files)
else
  mapfile -t files < <(find . -path ./build -prune -o -path './build-*' -prune -o -type f -print | sed 's@^\./@@')
fi
missing=0
checked=0
for f in "${files[@]}"; do
  case "$f" in
    tests/fuzz/corpus/*/*|*.gitkeep|LICENSE) continue ;;
    # Formats with no comment syntax: dpkg would read the line as data.
    debian/changelog|debian/source/format) continue ;;
  esac
  [[ -f "$f" ]] || continue
  checked=$((checked + 1))
  if ! head -c 400 "$f" | grep -q 'SPDX-License-Identifier: MIT'; then
    echo "missing SPDX line: $f"
    missing=$((missing + 1))
  fi
done
echo "checked $checked files, $missing without an SPDX line"
[[ $missing -eq 0 ]]
