#!/usr/bin/env bash
# Builds the CNI plugin binaries (`calinet`, `calinet-ipam`) the way they are
# meant to be installed in /opt/cni/bin: statically linked (glibc, not PIE),
# like the reference plugins. A runtime execs the plugin for every ADD and DEL,
# and a dynamic PIE build spends a quarter of a millisecond or more of each
# exec in the dynamic loader (BENCHMARKS.md, "CNI plugin").
#
# Prints the directory holding the two binaries. Caveat of static glibc: a
# hostname in `etcd_endpoints` is resolved through glibc's NSS, which a static
# binary loads at run time from the host's glibc; use IP addresses there, or
# build dynamically (`cargo build --release -p calinet-cni`).
set -euo pipefail
cd "$(dirname "$0")/.."
host=$(rustc -vV | sed -n 's/^host: //p')
target_dir=${CALINET_CNI_STATIC_TARGET_DIR:-target/cni-static}
# With --target, RUSTFLAGS reach only the binaries' crates, not build
# scripts and proc macros (which cannot be static).
RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static" \
  CARGO_TARGET_DIR="$target_dir" \
  cargo build --quiet --release -p calinet-cni --target "$host" >&2
out="$target_dir/$host/release"
for b in calinet calinet-ipam; do
  # A static binary has no program interpreter (no dynamic loader).
  if readelf -l "$out/$b" | grep -q INTERP; then
    echo "build-cni: $out/$b is dynamically linked" >&2
    exit 1
  fi
done
echo "$out"
