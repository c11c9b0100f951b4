#!/usr/bin/env bash
# `make bench`: tlsid against a real control plane (etcd + kube-apiserver).
#
# For each N (default 100 and 1000): a fresh namespace, a fresh controller
# process watching it, then benches/idents/ measures calibration (N plain
# Secrets), N TlsIdentities created at once -> all Ready and Secrets valid,
# mutating API requests per issuance, writes during an idle window, the
# controller's peak RSS, a restart (SIGTERM, start: writes, time to catch
# up) and a CA change (emergency rollover: time and writes to re-issue all). Prints markdown tables (also target/bench/report.md, with report.svg:
# identities Ready over time).
#
# Exit 0 when the figures were measured, aims met or not; non-zero when
# something broke (build, cluster, identities never Ready...).
#
# Environment:
#   TLSID_BENCH_SIZES        N values, space-separated (default "100 1000")
#   TLSID_BENCH_IDLE_SECS    idle window after convergence (default 60)
#   TLSID_BENCH_PARALLELISM  client in-flight creates (default 32)
#   TLSID_BENCH_CONCURRENCY  controller --concurrency (default: the controller's own, 16)
#   TLSID_BENCH_TIMEOUT_SECS per-N limit for all Ready (default 600)
#   TLSID_BENCH_OUT          output dir (default target/bench)
#   TLSID_BENCH_CONTROLLER_PORT (default 19080); the control plane's state
#   dir and ports are profile TLSID_BENCH_PROFILE (default bench) of hack/profiles.tsv
#   TLSID_BENCH_NO_BUILD=1   use the binaries already in target/release
#   TLSID_BENCH_PROPAGATION_DELAY  the controller's --trust-propagation-delay (default 5s)
#   TLSID_BENCH_PUBLISH=DIR  also copy the report and its plot to DIR/bench.md and
#                            DIR/bench.svg (`make bench-large` publishes to docs/)
#   TLSID_CACHE              cache root (default ~/.cache/tlsid); the cluster
#                            lives in $TLSID_CACHE/bench-cluster
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${ROOT}"
# shellcheck source=hack/lib.sh
. hack/lib.sh

SIZES="${TLSID_BENCH_SIZES:-100 1000}"
OUT="$(realpath -m "${TLSID_BENCH_OUT:-target/bench}")"
CONTROLLER_PORT="${TLSID_BENCH_CONTROLLER_PORT:-19080}"
CA_NAMESPACE=tlsid-bench-system
tlsid_profile "${TLSID_BENCH_PROFILE:-bench}"
export TLSID_BENCH_OUT="${OUT}"

log() { printf 'bench.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# --- build -------------------------------------------------------------------
# One cargo call builds both (the bench target gets release settings). The
# bench exe is then run directly, not through `cargo bench`, so no cargo lock
# is held while it runs.
if [[ ${TLSID_BENCH_NO_BUILD:-} == 1 ]]; then
  log "TLSID_BENCH_NO_BUILD=1: using the binaries in target/release"
  BENCH_EXE="$(find target/release/deps -maxdepth 1 -type f -executable -name 'idents-*' -printf '%T@ %p\n' 2>/dev/null |
    sort -n | tail -1 | cut -d' ' -f2-)"
else
  log "building (release): tlsid and benches/idents.rs"
  BENCH_EXE="$(cargo build --release --locked --bins --bench idents --message-format=json-render-diagnostics |
    jq -r 'select(.reason == "compiler-artifact" and .target.name == "idents" and .executable != null) | .executable' | tail -1)"
fi
[[ -x ${BENCH_EXE} ]] || die "could not build benches/idents.rs"
TLSID="${ROOT}/target/release/tlsid"
[[ -x ${TLSID} ]] || die "${TLSID} not built"

mkdir -p "${OUT}"
rm -f "${OUT}"/row-*.json "${OUT}/report.md" "${OUT}/report.svg" "${OUT}"/controller-*.log "${OUT}/kube-apiserver.log"

# --- cluster + teardown --------------------------------------------------------
CONTROLLER_PID=""
stop_controller() {
  [[ -n ${CONTROLLER_PID} ]] || return 0
  if kill -0 "${CONTROLLER_PID}" 2>/dev/null; then
    kill -TERM "${CONTROLLER_PID}" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "${CONTROLLER_PID}" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "${CONTROLLER_PID}" 2>/dev/null || true
  fi
  wait "${CONTROLLER_PID}" 2>/dev/null || true
  CONTROLLER_PID=""
}
cleanup() {
  local rc=$?
  stop_controller
  # Kept for evidence: `down` removes the state dir.
  cp -f "${TLSID_CLUSTER_DIR}/logs/kube-apiserver.log" "${OUT}/" 2>/dev/null || true
  hack/cluster.sh down >&2 || true
  exit "${rc}"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A leftover from an interrupted run would not give fresh namespaces.
hack/cluster.sh down >&2 || true
t_up=${SECONDS}
KUBECONFIG="$(hack/cluster.sh up | tail -1)"
export KUBECONFIG
log "control plane up in $((SECONDS - t_up))s (${KUBECONFIG})"
KUBECTL="$(tlsid_bin kubectl)"
"${KUBECTL}" apply -f crds/ >&2
"${KUBECTL}" wait --for=condition=Established --timeout=60s crd/tlsidentities.tlsid.dev crd/tlsidentitypolicies.tlsid.dev crd/tlsauthorities.tlsid.dev >&2
"${KUBECTL}" create namespace "${CA_NAMESPACE}" >&2

# --- one controller per N ------------------------------------------------------
# start_controller N: a controller watching bench-N, logging (appending) to controller-N.log;
# returns once it answers /readyz.
start_controller() {
  local n=$1 ns="bench-$1"
  # A short trust-propagation delay: the CA change below measures the re-issue, not the wait.
  local args=(controller --watch-namespace "${ns}" --namespace "${CA_NAMESPACE}" --listen "127.0.0.1:${CONTROLLER_PORT}"
    --trust-propagation-delay "${TLSID_BENCH_PROPAGATION_DELAY:-5s}")
  [[ -n ${TLSID_BENCH_CONCURRENCY:-} ]] && args+=(--concurrency "${TLSID_BENCH_CONCURRENCY}")
  "${TLSID}" "${args[@]}" >>"${OUT}/controller-${n}.log" 2>&1 &
  CONTROLLER_PID=$!
  for _ in $(seq 300); do
    kill -0 "${CONTROLLER_PID}" 2>/dev/null || { tail -20 "${OUT}/controller-${n}.log" >&2; die "controller exited"; }
    if [[ "$(curl -fsS --max-time 1 "http://127.0.0.1:${CONTROLLER_PORT}/readyz" 2>/dev/null)" == ready ]]; then
      return 0
    fi
    sleep 0.2
  done
  tail -20 "${OUT}/controller-${n}.log" >&2
  die "controller not ready after 60s"
}

for n in ${SIZES}; do
  ns="bench-${n}"
  log "N=${n}: starting the controller (watching ${ns}; log ${OUT}/controller-${n}.log)"
  start_controller "${n}"
  export TLSID_BENCH_N="${n}" TLSID_BENCH_CONTROLLER_METRICS="127.0.0.1:${CONTROLLER_PORT}"
  TLSID_BENCH_NAMESPACE="${ns}" \
    TLSID_BENCH_CONTROLLER_PID="${CONTROLLER_PID}" \
    TLSID_BENCH_CONTROLLER_CONCURRENCY="${TLSID_BENCH_CONCURRENCY:-16}" \
    TLSID_BENCH_APISERVER_PID="$(cat "${TLSID_CLUSTER_DIR}/pids/kube-apiserver.pid" 2>/dev/null || true)" \
    TLSID_BENCH_ETCD_PID="$(cat "${TLSID_CLUSTER_DIR}/pids/etcd.pid" 2>/dev/null || true)" \
    "${BENCH_EXE}" run
  # Restart with N converged: SIGTERM (the Lease is released), start again, measure.
  log "N=${n}: restarting the controller"
  "${BENCH_EXE}" restart-mark
  stop_controller
  started_ms=$(date +%s%3N)
  start_controller "${n}"
  TLSID_BENCH_STARTED_MS="${started_ms}" "${BENCH_EXE}" restart-measure
  # A CA change with N converged: an emergency rollover to a new root, every leaf re-issued.
  log "N=${n}: CA change"
  TLSID_BENCH_NAMESPACE="${ns}" TLSID_BENCH_CA_NAMESPACE="${CA_NAMESPACE}" "${BENCH_EXE}" ca-change
  stop_controller
done

"${BENCH_EXE}" report
if [[ -n ${TLSID_BENCH_PUBLISH:-} ]]; then
  mkdir -p "${TLSID_BENCH_PUBLISH}"
  {
    printf '<!-- Written by `make bench-large` (hack/bench.sh) on %s, commit %s. -->\n\n' \
      "$(date -u +%Y-%m-%d)" "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    sed 's/(report\.svg)/(bench.svg)/' "${OUT}/report.md"
  } >"${TLSID_BENCH_PUBLISH}/bench.md"
  cp "${OUT}/report.svg" "${TLSID_BENCH_PUBLISH}/bench.svg"
  log "published ${TLSID_BENCH_PUBLISH}/bench.md and bench.svg"
fi
log "controller and apiserver logs in ${OUT}"
