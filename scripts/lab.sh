#!/usr/bin/env bash
# The main job (README.md): the reference agent's lab. Builds the seed
# article's cluster in network namespaces (four nodes on two subnets, a router,
# an outside host), runs one calinet-agent per node, prints what a Calico user
# looks at plus a connectivity matrix with the paths observed on the underlay,
# and tears everything down. Needs root. Arguments go to `calinet-lab run`
# (e.g. --mode crosssubnet|direct|wireguard).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "$(id -u)" != 0 ]]; then
  echo "calinet lab: builds network namespaces, so it needs root: sudo bash scripts/lab.sh" >&2
  exit 2
fi
bash scripts/deps.sh
# The lab runs the agent binary next to its own, so both are built.
cargo build --quiet -p calinet-agent -p calinet-lab
exec target/debug/calinet-lab run "$@"
