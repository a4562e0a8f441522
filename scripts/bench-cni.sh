#!/usr/bin/env bash
# The CNI ADD benchmark (BENCHMARKS.md): the plugin as cargo builds it and as
# scripts/build-cni.sh builds it for installation, against the reference
# `ptp` + `host-local` plugins, interleaved in one run. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
static_dir=$(bash scripts/build-cni.sh)
CALINET_CNI_STATIC_DIR="$PWD/$static_dir" CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target} \
  exec cargo bench --quiet -p calinet-cni --bench add
