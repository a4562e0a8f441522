#!/usr/bin/env bash
# Installs the Debian packages calinet's tests, benchmarks and lab need.
# Runs apt only when something is missing, unless CALINET_DEPS_FORCE=1 (CI).
set -euo pipefail

packages=(
  iproute2 procps iputils-ping tcpdump openssl
  nftables libnftnl-dev libmnl-dev pkg-config
  wireguard-go wireguard-tools
  etcd-server etcd-client
  protobuf-compiler
  containernetworking-plugins
  musl-tools
)
# A command each package provides, to tell whether it is installed.
probes=(ip sysctl ping tcpdump openssl nft /usr/include/libnftnl/table.h
        /usr/include/libmnl/libmnl.h pkg-config wireguard-go wg etcd etcdctl protoc
        /usr/lib/cni/host-local musl-gcc)

missing=0
for probe in "${probes[@]}"; do
  if [[ "$probe" == /* ]]; then
    [[ -e "$probe" ]] || missing=1
  else
    command -v "$probe" >/dev/null 2>&1 || missing=1
  fi
done

if [[ "$missing" == 1 || "${CALINET_DEPS_FORCE:-0}" == 1 ]]; then
  if [[ "$(id -u)" != 0 ]]; then
    echo "calinet: packages are missing and installing them needs root: sudo $0" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
  echo "calinet: installed ${packages[*]}"
fi
