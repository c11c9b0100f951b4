#!/usr/bin/env bash
# `make bench`: tlsid against a real control plane (etcd + kube-apiserver, API Priority and
# Fairness on, as real clusters have it).
#
# For each N (default 100 and 1000): a fresh namespace, a fresh controller process watching it
# (as a ServiceAccount, so that priority and fairness classify it as in a cluster), then
# benches/idents/ measures, in order:
#   1. calibration (N plain Secrets), N TlsIdentities created at once -> all Ready and Secrets
#      valid, requests and writes per issuance, writes during an idle window, peak RSS;
#   2. a restart (SIGTERM, start: writes, time to catch up, RSS);
#   3. at the largest N only: 30,000 unrelated Secrets created in the namespace while the
#      controller is down, then the restart again (its RSS against the first restart's);
#   4. a renewal storm: the identities were created due TLSID_BENCH_STORM_AFTER after issuance;
#      the controller is stopped before the first is due and started once the last is, so all N
#      are due at once; renewals against the issuance budget, a canary client's latency;
#   5. a CA change (emergency rollover: time and writes to re-issue all).
# Prints markdown tables (also target/bench/report.md, with report.svg: identities Ready over
# time).
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
#   TLSID_BENCH_ISSUANCE_RATE / _BURST  the controller's issuance budget (default 100/s, 500:
#                            the controller's defaults)
#   TLSID_BENCH_STORM_AFTER  seconds from issuance until the bulk's certificates are due
#                            (default 120 + N/40, 240 + N/40 at the largest N); they live
#                            that plus 2N/rate + 120 s
#   TLSID_BENCH_UNRELATED    unrelated Secrets at the largest N (default 30000; 0: skip)
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
CANARY_NAMESPACE=bench-canary
RATE="${TLSID_BENCH_ISSUANCE_RATE:-100}"
BURST="${TLSID_BENCH_ISSUANCE_BURST:-500}"
UNRELATED="${TLSID_BENCH_UNRELATED:-30000}"
[[ ${RATE} =~ ^[1-9][0-9]*$ ]] || { echo "bench.sh: TLSID_BENCH_ISSUANCE_RATE must be a whole number" >&2; exit 2; }
LARGEST=0
for n in ${SIZES}; do ((n > LARGEST)) && LARGEST=${n}; done
# API Priority and Fairness on: the renewal storm's canary is measured under it.
export TLSID_APISERVER_APF=true
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
rm -f "${OUT}"/row-*.json "${OUT}"/storm-*.armed "${OUT}"/*.kubeconfig "${OUT}/report.md" "${OUT}/report.svg" "${OUT}"/controller-*.log "${OUT}/kube-apiserver.log"

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

# token_kubeconfig NS SA FILE: the admin kubeconfig's cluster with a token of ServiceAccount NS/SA.
token_kubeconfig() {
  local token
  token="$("${KUBECTL}" -n "$1" create token "$2" --duration=24h)"
  (umask 077 && cp "${KUBECONFIG}" "$3")
  KUBECONFIG="$3" "${KUBECTL}" config set-credentials "$2" --token="${token}" >/dev/null
  KUBECONFIG="$3" "${KUBECTL}" config set-context --current --user="$2" >/dev/null
}
# The controller runs as a ServiceAccount, as in a cluster: priority and fairness put it in the
# default flows (workload-low), not the exempt ones of the admin. (cluster-admin for brevity:
# permissions are not what this measures; the chart's RBAC is tested by hack/chart.sh and e2e.)
"${KUBECTL}" -n "${CA_NAMESPACE}" create serviceaccount tlsid >&2
"${KUBECTL}" create clusterrolebinding tlsid-bench --clusterrole=cluster-admin \
  --serviceaccount="${CA_NAMESPACE}:tlsid" >&2
token_kubeconfig "${CA_NAMESPACE}" tlsid "${OUT}/controller.kubeconfig"
# The storm's canary: another user (a ServiceAccount that may read its namespace) and what it
# reads. (The view rules themselves: no controller-manager here aggregates them into `view`.)
# (The view rules themselves: no controller-manager here aggregates them into `view`.)
"${KUBECTL}" create namespace "${CANARY_NAMESPACE}" >&2
"${KUBECTL}" -n "${CANARY_NAMESPACE}" create serviceaccount canary >&2
"${KUBECTL}" -n "${CANARY_NAMESPACE}" create rolebinding canary --clusterrole=system:aggregate-to-view \
  --serviceaccount="${CANARY_NAMESPACE}:canary" >&2
"${KUBECTL}" -n "${CANARY_NAMESPACE}" create configmap canary --from-literal=hello=world >&2
token_kubeconfig "${CANARY_NAMESPACE}" canary "${OUT}/canary.kubeconfig"

# --- one controller per N ------------------------------------------------------
# start_controller N: a controller watching bench-N, logging (appending) to controller-N.log;
# returns once it answers /readyz.
start_controller() {
  local n=$1 ns="bench-$1"
  # A short trust-propagation delay: the CA change below measures the re-issue, not the wait.
  local args=(controller --watch-namespace "${ns}" --namespace "${CA_NAMESPACE}" --listen "127.0.0.1:${CONTROLLER_PORT}"
    --trust-propagation-delay "${TLSID_BENCH_PROPAGATION_DELAY:-5s}"
    --issuance-rate "${RATE}" --issuance-burst "${BURST}")
  [[ -n ${TLSID_BENCH_CONCURRENCY:-} ]] && args+=(--concurrency "${TLSID_BENCH_CONCURRENCY}")
  KUBECONFIG="${OUT}/controller.kubeconfig" "${TLSID}" "${args[@]}" >>"${OUT}/controller-${n}.log" 2>&1 &
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

# restart N [UNRELATED]: stop the controller, start it again, measure (writes, catch-up, RSS).
restart() {
  "${BENCH_EXE}" restart-mark
  stop_controller
  [[ -n ${2:-} ]] && "${BENCH_EXE}" unrelated
  [[ -n ${2:-} ]] && "${BENCH_EXE}" restart-mark
  local started_ms
  started_ms=$(date +%s%3N)
  start_controller "$1"
  TLSID_BENCH_STARTED_MS="${started_ms}" TLSID_BENCH_CONTROLLER_PID="${CONTROLLER_PID}" \
    TLSID_BENCH_UNRELATED="${2:-}" "${BENCH_EXE}" restart-measure
}

for n in ${SIZES}; do
  ns="bench-${n}"
  # The bulk's certificates come due STORM_AFTER after issuance (after the idle window and the
  # restarts) and live long enough after that for every renewal at the budget, twice over.
  unrelated=""
  ((n == LARGEST && UNRELATED > 0)) && unrelated=${UNRELATED}
  storm_after=${TLSID_BENCH_STORM_AFTER:-$(( (${unrelated:-0} > 0 ? 240 : 120) + n / 40 ))}
  renew_before=$((2 * n / RATE + 120))
  export TLSID_BENCH_DURATION="$((storm_after + renew_before))s" TLSID_BENCH_RENEW_BEFORE="${renew_before}s"
  log "N=${n}: starting the controller (watching ${ns}; log ${OUT}/controller-${n}.log); certificates due ${storm_after}s after issuance"
  start_controller "${n}"
  export TLSID_BENCH_N="${n}" TLSID_BENCH_NAMESPACE="${ns}" TLSID_BENCH_CONTROLLER_METRICS="127.0.0.1:${CONTROLLER_PORT}"
  TLSID_BENCH_CONTROLLER_PID="${CONTROLLER_PID}" \
    TLSID_BENCH_CONTROLLER_CONCURRENCY="${TLSID_BENCH_CONCURRENCY:-16}" \
    TLSID_BENCH_APISERVER_PID="$(cat "${TLSID_CLUSTER_DIR}/pids/kube-apiserver.pid" 2>/dev/null || true)" \
    TLSID_BENCH_ETCD_PID="$(cat "${TLSID_CLUSTER_DIR}/pids/etcd.pid" 2>/dev/null || true)" \
    "${BENCH_EXE}" run
  # Restart with N converged: SIGTERM (the Lease is released), start again, measure.
  log "N=${n}: restarting the controller"
  restart "${n}"
  if [[ -n ${unrelated} ]]; then
    log "N=${n}: ${unrelated} unrelated Secrets in ${ns}, created while the controller is down; restart again"
    TLSID_BENCH_UNRELATED="${unrelated}" restart "${n}" "${unrelated}"
  fi
  # The renewal storm: down before the first is due, up once the last is.
  log "N=${n}: renewal storm"
  "${BENCH_EXE}" storm-wait
  stop_controller
  TLSID_BENCH_CANARY_KUBECONFIG="${OUT}/canary.kubeconfig" TLSID_BENCH_CANARY_NAMESPACE="${CANARY_NAMESPACE}" \
    TLSID_BENCH_ISSUANCE_RATE="${RATE}" TLSID_BENCH_ISSUANCE_BURST="${BURST}" "${BENCH_EXE}" storm &
  storm_pid=$!
  until [[ -e ${OUT}/storm-${n}.armed ]]; do
    kill -0 "${storm_pid}" 2>/dev/null || { wait "${storm_pid}" || true; die "the storm ended before it armed"; }
    sleep 0.2
  done
  start_controller "${n}"
  wait "${storm_pid}" || die "the renewal storm failed"
  # A CA change with N converged: an emergency rollover to a new root, every leaf re-issued.
  log "N=${n}: CA change"
  TLSID_BENCH_CA_NAMESPACE="${CA_NAMESPACE}" "${BENCH_EXE}" ca-change
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
