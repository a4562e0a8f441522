#!/usr/bin/env bash
# Semver gate: each library crate's public API (every public item, signature,
# field, variant, `#[non_exhaustive]` and implemented trait, auto traits
# included), listed from rustdoc's JSON output by scripts/public-api.py, must
# equal the committed listing in .ci/public-api/<crate>.txt. Any difference
# fails with the diff: removals and changes break downstream users and need a
# version bump; additions are reviewed the same way. After an intended change,
# `bash scripts/semver-check.sh --bless` rewrites the listings, and the diff
# is part of the commit. Rustdoc's JSON output needs the nightly toolchain
# (`rustup toolchain list`); without it the check reports SKIPPED.
# See README.md ("Use the crates") for why not cargo-semver-checks.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
bless=0
[[ "${1:-}" == "--bless" ]] && bless=1

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "SKIPPED: semver-check: no nightly toolchain for rustdoc's JSON output"
  exit 0
fi

mapfile -t libs < <(cargo metadata --no-deps --format-version 1 --locked |
  python3 -c '
import json, sys
m = json.load(sys.stdin)
for p in m["packages"]:
    if p.get("publish") != []:
        print(p["name"])
')

target="${CALINET_API_TARGET:-$root/target/api}"
mkdir -p .ci/public-api
fail=0
for name in "${libs[@]}"; do
  CARGO_TARGET_DIR="$target" cargo +nightly rustdoc --locked --quiet -p "$name" --all-features \
    -- -Z unstable-options --output-format json
  now=$(mktemp)
  python3 scripts/public-api.py "$target/doc/${name//-/_}.json" > "$now"
  want=".ci/public-api/$name.txt"
  if (( bless )); then
    mv "$now" "$want"
    echo "semver-check: $name: $(wc -l < "$want") items written to $want"
  elif ! diff -u "$want" "$now"; then
    echo "semver-check: $name: public API differs from $want (see the diff above;"
    echo "  bump the version for a breaking change, then: bash scripts/semver-check.sh --bless)"
    fail=1
    rm -f "$now"
  else
    echo "semver-check: $name: $(wc -l < "$want") items, unchanged"
    rm -f "$now"
  fi
done
exit "$fail"
