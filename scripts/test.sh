#!/usr/bin/env bash
# The test command (README.md): formatting, lints, docs, then every test
# including the root-only kernel tests. Ends with "N passed, N failed, N skipped"
# and exits non-zero when anything failed.
set -uo pipefail
cd "$(dirname "$0")/.."

# As root, install what is missing (and fail if it still is). As another user,
# nothing can be installed: say what is missing and go on; the kernel tests
# report SKIPPED, and a build step that needs a missing package fails with the
# package named above.
if [[ "$(id -u)" == 0 ]]; then
  bash scripts/deps.sh || exit 1
elif ! CALINET_DEPS_CHECK_ONLY=1 bash scripts/deps.sh; then
  echo "calinet: not root: running what can run without the packages above"
fi

step() { echo; echo "==> $*"; }
fail=0

step "cargo fmt --check"
cargo fmt --all -- --check || fail=1

step "cargo clippy (all targets, default features and all features, -D warnings)"
cargo clippy --locked --workspace --all-targets --quiet -- -D warnings || fail=1
cargo clippy --locked --workspace --all-targets --all-features --quiet -- -D warnings || fail=1

step "cargo doc (-D warnings)"
RUSTDOCFLAGS="-D warnings" cargo doc --locked --workspace --no-deps --quiet || fail=1
RUSTDOCFLAGS="-D warnings" cargo doc --locked --workspace --no-deps --all-features --quiet || fail=1

step "downstream check (the library crates next to older serde, tokio, proptest)"
bash scripts/downstream-check.sh || fail=1

step "package check (cargo package; the unpacked packages' tests build)"
bash scripts/package-check.sh || fail=1

step "semver check (public API of the library crates against .ci/public-api)"
bash scripts/semver-check.sh || fail=1

if [[ "$(id -u)" != 0 ]]; then
  echo "calinet: not root: kernel tests will report SKIPPED (run with sudo to include them)"
fi

step "cargo test (every test, root tests included)"
skiplog=$(mktemp)
testlog=$(mktemp)
trap 'rm -f "$skiplog" "$testlog"' EXIT
lab_procs() { { pgrep -x wireguard-go; pgrep -x etcd; } | sort || true; }
before_procs=$(lab_procs)
CALINET_SKIP_LOG="$skiplog" cargo test --locked --workspace --all-features --no-fail-fast 2>&1 | tee "$testlog"
test_status=${PIPESTATUS[0]}
[[ "$test_status" == 0 ]] || fail=1

# Sum libtest's per-binary summaries; skipped tests are counted by libtest as
# passed, so move them to their own column.
read -r passed failed ignored < <(awk '
  /^test result:/ {
    for (i = 1; i <= NF; i++) {
      if ($(i) ~ /^passed;?$/)  p += $(i-1)
      if ($(i) ~ /^failed;?$/)  f += $(i-1)
      if ($(i) ~ /^ignored;?$/) g += $(i-1)
    }
  }
  END { print p+0, f+0, g+0 }' "$testlog")
skipped=$(wc -l < "$skiplog")
passed=$((passed - skipped))

step "leftovers"
# Lab namespaces are named cl<pid>x<n>-... after the test process that made
# them; one whose process has exited was leaked (others belong to runs still going).
leftover_ns=""
for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^cl(probe)?[0-9]+' || true); do
  pid=$(sed -E 's/^cl(probe)?([0-9]+).*/\2/' <<<"$ns")
  kill -0 "$pid" 2>/dev/null || leftover_ns+="$ns "
done
after_procs=$(lab_procs)
new_procs=$(comm -13 <(echo "$before_procs") <(echo "$after_procs") | grep . || true)
if [[ -n "$leftover_ns" ]]; then
  echo "namespaces left behind by tests: $leftover_ns"; fail=1
else
  echo "no test namespace left behind"
fi
if [[ -n "$new_procs" ]]; then
  echo "processes left behind by tests: $(ps -o pid=,args= -p $(echo $new_procs | tr ' ' ,))"; fail=1
else
  echo "no wireguard-go or etcd left running"
fi

if [[ "$skipped" -gt 0 ]]; then
  echo; echo "skipped tests (name, reason):"; sed 's/^/  /' "$skiplog"
fi
echo
echo "calinet: ${passed} passed, ${failed} failed, ${skipped} skipped"
[[ "$ignored" == 0 ]] || echo "(libtest also reported ${ignored} ignored)"
if [[ "$fail" != 0 ]]; then
  echo "calinet: FAILED (see the steps above)"
  exit 1
fi
