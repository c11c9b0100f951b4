#!/usr/bin/env bash
# `make test`: lint, unit tests, then everything that needs a real control plane, on one
# etcd + kube-apiserver started here and stopped on exit. Safe on a fresh machine: installs
# Debian packages and builds (or reuses cached) Kubernetes binaries first.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "${TLSID_HACK_DIR}/.."

step() { printf '\n=== %s (%ss)\n' "$*" "${SECONDS}"; }

step "dependencies"
hack/install-deps.sh
hack/build-k8s.sh control-plane helm

step "lint"
cargo fmt --check
cargo clippy --locked --all-targets -- -D warnings

# The test control plane has its own state dir and ports (hack/profiles.tsv).
tlsid_profile test
# tests/control_plane.rs starts its own (profile faults) to restart and pause: stop both on exit.
faults_down() { (tlsid_profile faults && hack/cluster.sh down >/dev/null 2>&1) || true; }
hack/cluster.sh down >/dev/null 2>&1 || true
faults_down
trap 'hack/cluster.sh down >/dev/null 2>&1 || true; faults_down' EXIT

step "control plane"
TLSID_TEST_KUBECONFIG="$(hack/cluster.sh up | tail -n 1)"
export TLSID_TEST_KUBECONFIG

step "unit and integration tests"
# Builds every target too, the tlsid binary included (the e2e image is made from it).
rm -f target/faults.md
cargo test --locked --all-targets

step "faults injected (tests/ha.rs, tests/faults.rs, tests/control_plane.rs)"
[[ -s target/faults.md ]] || tlsid_die "target/faults.md was not written: did the fault suites run?"
printf '| fault | outcome |\n|---|---|\n'
sort target/faults.md

step "interop matrix"
# tests/interop (run above) issued identities with the real controller and ran rustls, Go, Python,
# Java, curl and openssl clients and servers against each other; show what it found this run.
matrix=target/interop/matrix.md
[[ -n $(find "${matrix}" -newermt "@$(($(date +%s) - SECONDS))" 2>/dev/null) ]] ||
  tlsid_die "${matrix} was not written by this run: did tests/interop run?"
sed '/^### Negative cases/,$d' "${matrix}"
# And the CA rollover states (old/new leaf × old/overlap/new bundle), signed by the library.
rollover=target/interop/rollover.md
[[ -n $(find "${rollover}" -newermt "@$(($(date +%s) - SECONDS))" 2>/dev/null) ]] ||
  tlsid_die "${rollover} was not written by this run: did tests/interop run?"
sed '/^### Rollover refusals/,$d' "${rollover}"

step "chart"
KUBECONFIG="${TLSID_TEST_KUBECONFIG}" hack/chart.sh check

step "e2e on a real node"
hack/e2e.sh

step "done"
