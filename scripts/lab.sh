#!/usr/bin/env bash
# The main job (README.md): builds the seed article's cluster in network
# namespaces, shows routes, connectivity and captures, and tears it down.
# Needs root. Arguments are passed to the lab program.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "$(id -u)" != 0 ]]; then
  echo "calinet lab: builds network namespaces, so it needs root: sudo bash scripts/lab.sh" >&2
  exit 2
fi
bash scripts/deps.sh
exec cargo run --quiet -p calinet-testlab --example seed-lab -- "$@"
