#!/usr/bin/env bash
# The library crates as crates.io would get them: `cargo package`, then every
# .crate unpacked into one throwaway workspace, with the calinet crates patched
# to those unpacked copies (they are not on crates.io yet), whose libraries and
# tests must build (`cargo test --no-run`, all features). That build is the
# verification, so `cargo package` runs with `--no-verify` (its own verify
# would compile every crate a second time). Kernel tests that need the
# dev-only testlab crate are excluded from the packages, so this proves a
# downstream `cargo test` of an unpacked package compiles. Run by
# scripts/test.sh (and so by CI); needs the crates.io registry.
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
        print(p["name"], p["version"])
')
args=()
for l in "${libs[@]}"; do
  read -r name _ <<<"$l"
  args+=(-p "$name")
done

echo "package-check: cargo package ${#libs[@]} crates"
# --allow-dirty: checks the working tree as it is (CI runs on a clean checkout).
cargo package --locked --quiet --allow-dirty --no-verify "${args[@]}"

members=()
{
  echo '[workspace]'
  echo 'resolver = "3"'
  echo 'members = ['
  for l in "${libs[@]}"; do
    read -r name version <<<"$l"
    tar -xzf "$root/target/package/$name-$version.crate" -C "$dir"
    echo "    \"$name-$version\","
    members+=("$name")
  done
  echo ']'
  echo
  echo '[patch.crates-io]'
  for l in "${libs[@]}"; do
    read -r name version <<<"$l"
    echo "$name = { path = \"$name-$version\" }"
  done
} > "$dir/Cargo.toml"
# The same target directory as the workspace, so registry dependencies built
# there are reused. Start from the repository's lock file so the same dependency versions build.
cp "$root/Cargo.lock" "$dir/Cargo.lock"

cd "$dir"
for l in "${libs[@]}"; do
  read -r name version <<<"$l"
  # Nothing from the repository may leak in: no path outside the package.
  if grep -n 'path = "\.\./' "$name-$version/Cargo.toml"; then
    echo "package-check: $name's packaged manifest points outside the package"
    exit 1
  fi
done
CARGO_TARGET_DIR="${CALINET_PACKAGE_TARGET:-$root/target}" \
  cargo test --quiet --workspace --all-features --no-run
echo "package-check: ${#members[@]} packages unpacked, their tests build"
