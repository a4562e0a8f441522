#!/usr/bin/env bash
# A downstream project's view of the library crates: a throwaway crate that
# depends on every calinet library (all features) next to older, compatible
# releases of their main dependencies, pinned exactly as a downstream project
# might pin them. It must resolve and build. Run by scripts/test.sh (and so by
# CI); needs the crates.io registry.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

# The library crates: every workspace member that may be published.
mapfile -t libs < <(cargo metadata --no-deps --format-version 1 --locked |
  python3 -c '
import json, sys
m = json.load(sys.stdin)
for p in m["packages"]:
    if p.get("publish") != []:
        print(p["name"], p["manifest_path"].rsplit("/", 1)[0])
')

mkdir -p "$dir/src"
{
  echo '[package]'
  echo 'name = "calinet-downstream-check"'
  echo 'version = "0.0.0"'
  echo 'edition = "2021"'
  echo 'publish = false'
  echo
  echo '[dependencies]'
  # Older releases a downstream project may already have.
  echo 'serde = { version = "=1.0.203", features = ["derive"] }'
  echo 'tokio = "=1.41.1"'
  echo 'proptest = "=1.5.0"'
  for l in "${libs[@]}"; do
    read -r name path <<<"$l"
    echo "$name = { path = \"$path\", features = $(cargo metadata --no-deps --format-version 1 --locked --manifest-path "$path/Cargo.toml" |
      python3 -c '
import json, sys
m = json.load(sys.stdin)
name = sys.argv[1]
p = [p for p in m["packages"] if p["name"] == name][0]
print(json.dumps(sorted(f for f in p["features"] if f != "default")))' "$name") }"
  done
  echo
  echo '[workspace]'
} > "$dir/Cargo.toml"
echo 'fn main() {}' > "$dir/src/main.rs"
echo "downstream-check: $(grep -c ' = { path' "$dir/Cargo.toml") crates next to serde 1.0.203, tokio 1.41.1, proptest 1.5.0"
cd "$dir"
CARGO_TARGET_DIR="${CALINET_DOWNSTREAM_TARGET:-$root/target/downstream}" cargo check --quiet --keep-going
echo "downstream-check: resolved and built"
