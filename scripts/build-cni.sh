#!/usr/bin/env bash
# Builds the CNI plugin binaries (`calinet`, `calinet-ipam`) the way they are
# meant to be installed in /opt/cni/bin: static musl executables, not PIE,
# like the reference plugins (static Go). A runtime execs the plugin for every
# ADD and DEL, and start-up is a large part of an ADD (BENCHMARKS.md, "CNI
# plugin"): a dynamic glibc build spends it in the dynamic loader, and glibc's
# start-up itself asks the CPU for its cache layout through dozens of CPUID
# instructions, each a VM exit (~7 us in our VMs). musl does neither.
#
# Needs the Rust musl target and a musl C compiler for SQLite and ring
# (Debian musl-tools); installs the target with rustup when it is missing.
# Prints the directory holding the two binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
target=x86_64-unknown-linux-musl
if ! command -v musl-gcc >/dev/null; then
  echo "build-cni: musl-gcc missing: apt-get install musl-tools" >&2
  exit 1
fi
if ! rustup target list --installed | grep -qx "$target"; then
  rustup target add "$target" >&2
fi
target_dir=${CALINET_CNI_STATIC_TARGET_DIR:-target/cni-static}
# With --target, RUSTFLAGS reach only the binaries' crates, not build scripts
# and proc macros. relocation-model=static: no start-up relocations (a static
# PIE touches ~50 pages relocating itself). sha1's portable backend: hashing
# one interface name does not pay for CPUID feature detection.
RUSTFLAGS='-C relocation-model=static --cfg sha1_backend="soft"' \
  CARGO_TARGET_DIR="$target_dir" \
  cargo build --quiet --release -p calinet-cni --target "$target" >&2
out="$target_dir/$target/release"
for b in calinet calinet-ipam; do
  # A static executable has no program interpreter (dynamic loader).
  if readelf -l "$out/$b" | grep -q INTERP; then
    echo "build-cni: $out/$b is dynamically linked" >&2
    exit 1
  fi
done
echo "$out"
