#!/usr/bin/env bash
# Installs the Debian packages calinet's build, tests, benchmarks and lab need,
# then checks that every file and command they use is really there.
#
# apt-get runs with --no-install-recommends, so every package is named here,
# never assumed to arrive as another package's recommendation (protoc's
# include files, for example, come with libprotobuf-dev, which
# protobuf-compiler only recommends).
#
# Runs apt only when something is missing, unless CALINET_DEPS_FORCE=1 (CI).
# CALINET_DEPS_CHECK_ONLY=1 only checks and reports (never installs), which is
# what a non-root user gets too: missing packages are listed, the exit status
# is 1, and the caller decides whether that is fatal.
set -euo pipefail

# One line per need: the Debian package, then the file or command (a name
# without a slash is looked up on PATH) whose presence proves it is installed.
# Every entry is used by the build or by a test, benchmark or the lab.
needs=(
  # The workspace build.
  "gcc                          gcc"                 # rusqlite's bundled SQLite, ring, the nftnl oracle
  "libc6-dev                    /usr/include/stdio.h"
  "pkg-config                   pkg-config"          # nftnl-sys finds libnftnl/libmnl
  "libnftnl-dev                 /usr/include/libnftnl/table.h"
  "libmnl-dev                   /usr/include/libmnl/libmnl.h"
  "protobuf-compiler            protoc"              # etcd-client's build script
  "libprotobuf-dev              /usr/include/google/protobuf/descriptor.proto"
  "binutils                     readelf"             # scripts/build-cni.sh checks the static link
  "musl-tools                   musl-gcc"            # the static CNI build (scripts/build-cni.sh)
  # Kernel tests, lab and benchmarks.
  "iproute2                     ip"
  "procps                       sysctl"
  "procps                       pgrep"
  "util-linux                   nsenter"             # the lab's CNI test enters a node like a runtime
  "util-linux                   unshare"             # the lab's per-node wireguard-go socket directory
  "iputils-ping                 ping"
  "tcpdump                      tcpdump"
  "openssl                      openssl"             # etcd TLS test certificates
  "nftables                     nft"
  "wireguard-go                 wireguard-go"
  "wireguard-tools              wg"
  "etcd-server                  etcd"
  "etcd-client                  etcdctl"
  "containernetworking-plugins  /usr/lib/cni/host-local"
  "containernetworking-plugins  /usr/lib/cni/ptp"
  "bird2                        bird"                # calinet-bgp's tests, the lab's BGP
  "bird2                        birdc"
  "prometheus                   /usr/bin/prometheus" # the agent's dashboard test
)

missing_pkgs=()
missing_what=()
check() {
  missing_pkgs=()
  missing_what=()
  local line pkg probe
  for line in "${needs[@]}"; do
    read -r pkg probe <<<"$line"
    if [[ "$probe" == /* ]]; then
      [[ -e "$probe" ]] && continue
    else
      command -v "$probe" >/dev/null 2>&1 && continue
    fi
    missing_what+=("$probe ($pkg)")
    [[ " ${missing_pkgs[*]} " == *" $pkg "* ]] || missing_pkgs+=("$pkg")
  done
}

report_missing() {
  echo "calinet: missing: ${missing_what[*]}" >&2
  echo "calinet: install with: apt-get install --no-install-recommends ${missing_pkgs[*]}" >&2
}

check
if [[ "${CALINET_DEPS_CHECK_ONLY:-0}" == 1 ]]; then
  if [[ ${#missing_pkgs[@]} -gt 0 ]]; then report_missing; exit 1; fi
  exit 0
fi

if [[ ${#missing_pkgs[@]} -gt 0 || "${CALINET_DEPS_FORCE:-0}" == 1 ]]; then
  if [[ "$(id -u)" != 0 ]]; then
    report_missing
    echo "calinet: installing them needs root: sudo $0" >&2
    exit 1
  fi
  all_pkgs=()
  for line in "${needs[@]}"; do
    read -r pkg _ <<<"$line"
    [[ " ${all_pkgs[*]} " == *" $pkg "* ]] || all_pkgs+=("$pkg")
  done
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${all_pkgs[@]}" >/dev/null
  # Prove it: every file and command above must now exist.
  check
  if [[ ${#missing_pkgs[@]} -gt 0 ]]; then
    echo "calinet: apt-get reported success, but files are still missing" >&2
    report_missing
    exit 1
  fi
  echo "calinet: installed and checked ${all_pkgs[*]}"
fi
