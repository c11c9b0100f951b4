#!/usr/bin/env bash
# A real Kubernetes for tests, built from the pinned upstream versions
# (hack/build-k8s.sh): a control plane (etcd + kube-apiserver on loopback),
# or with --node a single-node cluster that runs pods (see hack/node/lib.sh).
#
# Usage: hack/cluster.sh up [--node]|down|status|env
#   up      start (or reuse) the cluster; stdout is exactly one line, the
#           kubeconfig path:  KUBECONFIG=$(hack/cluster.sh up | tail -1)
#           progress goes to stderr.
#   up --node  also kube-controller-manager, kube-scheduler, containerd, CNI
#           (bridge tlsid0), kubelet (node tlsid-node), kube-proxy, CoreDNS;
#           returns when the node is Ready and the default ServiceAccount
#           exists. Needs root; one node cluster per machine. Load images
#           with hack/image.sh (pause is built and imported here).
#   down    stop the processes (TERM, then KILL) and remove the state dir;
#           for a node cluster also its containers, mounts, bridge, veths,
#           KUBE-*/CNI-* iptables chains and cgroups, and restore sysctls.
#   status  print what runs; exit 0 if the apiserver (and the node) is ready.
#   env     print `export KUBECONFIG=...` and `export PATH=...` lines for eval
#           (node cluster: also CONTAINERD_ADDRESS/CONTAINERD_NAMESPACE for ctr).
#
# Environment (a second cluster needs another dir and other ports):
#   TLSID_CACHE                  cache root (default ~/.cache/tlsid)
#   TLSID_CLUSTER_DIR            state dir (default $TLSID_CACHE/cluster):
#                                pki/, etcd/, logs/, pids/, kubeconfig
#   TLSID_APISERVER_PORT         kube-apiserver secure port (default 6443)
#   TLSID_APISERVER_BIND_ADDRESS (default 127.0.0.1, with --node 0.0.0.0:
#                                pods reach it through the node IP)
#   TLSID_APISERVER_ADVERTISE_ADDRESS  IP written to the `kubernetes` Service
#                                (default: the bind address, or the default
#                                route's source IP when binding 0.0.0.0)
#   TLSID_APISERVER_EXTRA_SANS   comma-separated extra IPs/DNS names for the
#                                serving certificate
#   TLSID_ETCD_PORT              etcd client port (default 2379; peer = +1)
#   TLSID_APISERVER_APF          true: API Priority and Fairness on (default off),
#                                with TLSID_APISERVER_MAX_INFLIGHT (400) and
#                                TLSID_APISERVER_MAX_MUTATING_INFLIGHT (200)
#   TLSID_SERVICE_CIDR           (default 10.0.0.0/24)
#   TLSID_START_TIMEOUT          seconds to wait for readiness (default 180)
# Node tier only (up --node):
#   TLSID_NODE_NAME              node name (default tlsid-node)
#   TLSID_POD_CIDR               pod network (default 10.244.0.0/24)
#   TLSID_NODE_SNAPSHOTTER       containerd snapshotter (default overlayfs,
#                                native when an overlay mount fails)
#   TLSID_NODE_SYNC_FREQUENCY    kubelet syncFrequency (default 1m): also how
#                                soon an updated Secret reaches pod volumes
# The node IP is the advertise address (default: the default route's source).
set -euo pipefail

# shellcheck source=hack/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# Absolute: the daemons get these paths in their flags.
STATE="$(realpath -m "${TLSID_CLUSTER_DIR:-${TLSID_CACHE}/cluster}")"
APISERVER_PORT="${TLSID_APISERVER_PORT:-6443}"
APISERVER_BIND="${TLSID_APISERVER_BIND_ADDRESS:-127.0.0.1}"
ETCD_PORT="${TLSID_ETCD_PORT:-2379}"
ETCD_PEER_PORT="$((ETCD_PORT + 1))"
SERVICE_CIDR="${TLSID_SERVICE_CIDR:-10.0.0.0/24}"
START_TIMEOUT="${TLSID_START_TIMEOUT:-180}"
SA_ISSUER="https://kubernetes.default.svc.cluster.local"

PKI="${STATE}/pki"
LOGS="${STATE}/logs"
PIDS="${STATE}/pids"
KUBECONFIG_FILE="${STATE}/kubeconfig"
# Marks a dir this script made, so `down` never removes anything else.
MARKER="${STATE}/.tlsid-cluster"

# Components of each tier, in start order (stopped in reverse). The node
# tier (`up --node`, hack/node/lib.sh) adds NODE_COMPONENTS: containerd,
# kube-controller-manager, kube-scheduler, kubelet, kube-proxy, coredns.
CONTROL_PLANE=(etcd kube-apiserver)
# true while `up --node` runs (apiserver flags for the kubelet).
NODE_TIER=false

# Everything but the kubeconfig path goes to stderr (the output contract).
log() { printf 'cluster.sh: %s\n' "$*" >&2; }
die() { printf 'cluster.sh: error: %s\n' "$*" >&2; exit 1; }

# --- addresses ---------------------------------------------------------------

advertise_address() {
  if [[ -n ${TLSID_APISERVER_ADVERTISE_ADDRESS:-} ]]; then
    echo "${TLSID_APISERVER_ADVERTISE_ADDRESS}"
  elif [[ ${APISERVER_BIND} == 0.0.0.0 ]]; then
    # The IP pods would reach the host by: the default route's source.
    ip -4 route get 1.1.1.1 2>/dev/null | awk '{for (i = 1; i < NF; i++) if ($i == "src") { print $(i + 1); exit }}'
  else
    echo "${APISERVER_BIND}"
  fi
}

# Address clients on this host use (loopback unless bound elsewhere).
client_address() {
  case "${APISERVER_BIND}" in
    0.0.0.0 | 127.0.0.1) echo 127.0.0.1 ;;
    *) echo "${APISERVER_BIND}" ;;
  esac
}

# First address of the service CIDR: the `kubernetes` Service ClusterIP,
# which must be in the serving certificate.
service_first_ip() {
  local net="${SERVICE_CIDR%/*}" a b c d
  IFS=. read -r a b c d <<<"${net}"
  local n=$(((a << 24 | b << 16 | c << 8 | d) + 1))
  echo "$((n >> 24 & 255)).$((n >> 16 & 255)).$((n >> 8 & 255)).$((n & 255))"
}

apiserver_sans() {
  local sans adv extra e
  sans="IP:127.0.0.1,DNS:localhost,IP:$(service_first_ip)"
  sans+=",DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  adv="$(advertise_address)"
  [[ -n ${adv} && ${adv} != 127.0.0.1 ]] && sans+=",IP:${adv}"
  [[ ${APISERVER_BIND} != 0.0.0.0 && ${APISERVER_BIND} != 127.0.0.1 && ${APISERVER_BIND} != "${adv}" ]] && sans+=",IP:${APISERVER_BIND}"
  IFS=, read -ra extra <<<"${TLSID_APISERVER_EXTRA_SANS:-}"
  for e in "${extra[@]}"; do
    [[ -z ${e} ]] && continue
    if [[ ${e} =~ ^[0-9.]+$ || ${e} == *:* ]]; then sans+=",IP:${e}"; else sans+=",DNS:${e}"; fi
  done
  echo "${sans}"
}

# --- certificates (openssl) --------------------------------------------------
# RSA 2048 everywhere: every client library (Go, rustls, openssl) takes it.

new_key() { # FILE
  [[ -f $1 ]] || openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$1" 2>/dev/null
}

# sign_cert NAME SUBJECT EXTENSIONS: $PKI/NAME.{key,crt} signed by the CA.
sign_cert() {
  local name="$1" subj="$2" ext="$3"
  new_key "${PKI}/${name}.key"
  openssl req -new -key "${PKI}/${name}.key" -subj "${subj}" -out "${PKI}/${name}.csr"
  printf '%s\n' "${ext}" >"${PKI}/${name}.ext"
  openssl x509 -req -sha256 -days 3650 -in "${PKI}/${name}.csr" \
    -CA "${PKI}/ca.crt" -CAkey "${PKI}/ca.key" -set_serial "0x$(openssl rand -hex 16)" \
    -extfile "${PKI}/${name}.ext" -out "${PKI}/${name}.crt" 2>/dev/null
  rm -f "${PKI}/${name}.csr"
}

gen_control_plane_pki() {
  mkdir -p "${PKI}"
  chmod 700 "${PKI}"
  if [[ ! -f ${PKI}/ca.crt ]]; then
    log "generating CA, service-account key pair and admin client cert in ${PKI}"
    new_key "${PKI}/ca.key"
    # Own config: the distro default would add a second copy of the extensions.
    cat >"${PKI}/ca.cnf" <<'EOF'
[req]
distinguished_name = dn
prompt = no
x509_extensions = v3_ca
[dn]
CN = tlsid-test-ca
[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign, digitalSignature
subjectKeyIdentifier = hash
EOF
    openssl req -x509 -new -sha256 -days 3650 -config "${PKI}/ca.cnf" \
      -key "${PKI}/ca.key" -out "${PKI}/ca.crt"
  fi
  if [[ ! -f ${PKI}/sa.pub ]]; then
    new_key "${PKI}/sa.key"
    openssl pkey -in "${PKI}/sa.key" -pubout -out "${PKI}/sa.pub"
  fi
  if [[ ! -f ${PKI}/admin.crt ]]; then
    sign_cert admin "/O=system:masters/CN=admin" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth
authorityKeyIdentifier=keyid,issuer"
  fi
  # The serving cert is redone when the wanted SANs change (e.g. another
  # bind address), the rest is kept across `up`s.
  local sans
  sans="$(apiserver_sans)"
  if [[ ! -f ${PKI}/apiserver.crt || "$(cat "${PKI}/apiserver.sans" 2>/dev/null)" != "${sans}" ]]; then
    log "generating apiserver serving cert (${sans})"
    sign_cert apiserver "/CN=kube-apiserver" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
authorityKeyIdentifier=keyid,issuer
subjectAltName=${sans}"
    echo "${sans}" >"${PKI}/apiserver.sans"
  fi
}

write_kubeconfig() {
  local tmp="${KUBECONFIG_FILE}.tmp"
  # Credentials embedded: the file stays valid when copied elsewhere.
  cat >"${tmp}" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: tlsid
  cluster:
    server: https://$(client_address):${APISERVER_PORT}
    certificate-authority-data: $(base64 -w0 "${PKI}/ca.crt")
users:
- name: admin
  user:
    client-certificate-data: $(base64 -w0 "${PKI}/admin.crt")
    client-key-data: $(base64 -w0 "${PKI}/admin.key")
contexts:
- name: tlsid
  context:
    cluster: tlsid
    user: admin
current-context: tlsid
EOF
  chmod 600 "${tmp}"
  mv -f "${tmp}" "${KUBECONFIG_FILE}"
}

# --- processes ---------------------------------------------------------------

# Binary of a component: ours (hack/build-k8s.sh), or the distro's containerd.
component_bin() { # NAME
  case "$1" in
    containerd) echo /usr/bin/containerd ;;
    *) tlsid_bin "$1" ;;
  esac
}

# pid of a running component, or nothing. The binary path in its cmdline
# guards against a recycled pid.
running_pid() { # NAME
  local pid
  pid="$(cat "${PIDS}/$1.pid" 2>/dev/null)" || return 1
  [[ ${pid} =~ ^[0-9]+$ ]] || return 1
  tr '\0' ' ' 2>/dev/null <"/proc/${pid}/cmdline" | grep -qF -- "$(component_bin "$1") " || return 1
  echo "${pid}"
}

port_in_use() { # PORT
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

check_ports() { # NAME PORT...
  local name="$1" p
  shift
  for p in "$@"; do
    if port_in_use "${p}"; then
      die "port ${p} (${name}) is taken: another cluster? set TLSID_ETCD_PORT / TLSID_APISERVER_PORT"
    fi
  done
}

# spawn NAME ARGS...: start the component's binary detached (own session,
# survives the caller), log and pid in the state dir.
spawn() {
  local name="$1" bin
  shift
  bin="$(component_bin "${name}")"
  mkdir -p "${LOGS}" "${PIDS}"
  # Not a process-group leader here, so setsid execs in place and $! is
  # the component's own pid. 8>&- 9>&-: a daemon must not inherit (and so
  # hold forever) the state lock or the build lock.
  setsid nohup "${bin}" "$@" >>"${LOGS}/${name}.log" 2>&1 </dev/null 8>&- 9>&- &
  echo "$!" >"${PIDS}/${name}.pid"
  log "${name}: started pid $! (log ${LOGS}/${name}.log)"
}

fail_with_log() { # NAME MESSAGE
  log "$2; last lines of ${LOGS}/$1.log:"
  tail -n 40 "${LOGS}/$1.log" >&2 || true
  die "$2 (state kept in ${STATE}; run 'hack/cluster.sh down' to clean up)"
}

# wait_until NAME CHECK...: poll CHECK until it succeeds, the process dies,
# or START_TIMEOUT passes.
wait_until() {
  local name="$1" deadline=$((SECONDS + START_TIMEOUT))
  shift
  until "$@"; do
    running_pid "${name}" >/dev/null || fail_with_log "${name}" "${name} exited"
    ((SECONDS < deadline)) || fail_with_log "${name}" "${name} not ready after ${START_TIMEOUT}s"
    sleep 0.5
  done
}

etcd_healthy() {
  curl -fsS --max-time 2 "http://127.0.0.1:${ETCD_PORT}/health" 2>/dev/null | grep -q '"health":"true"'
}

apiserver_ready() {
  [[ "$(curl -sS --max-time 5 --cacert "${PKI}/ca.crt" --cert "${PKI}/admin.crt" --key "${PKI}/admin.key" \
    "https://$(client_address):${APISERVER_PORT}/readyz" 2>/dev/null)" == ok ]]
}

start_etcd() {
  if running_pid etcd >/dev/null; then return; fi
  # Plain HTTP on loopback only. --unsafe-no-fsync: a throwaway test store,
  # fsync would only slow tests on a VM disk.
  spawn etcd \
    --name=tlsid \
    --data-dir="${STATE}/etcd" \
    --listen-client-urls="http://127.0.0.1:${ETCD_PORT}" \
    --advertise-client-urls="http://127.0.0.1:${ETCD_PORT}" \
    --listen-peer-urls="http://127.0.0.1:${ETCD_PEER_PORT}" \
    --initial-advertise-peer-urls="http://127.0.0.1:${ETCD_PEER_PORT}" \
    --initial-cluster="tlsid=http://127.0.0.1:${ETCD_PEER_PORT}" \
    --unsafe-no-fsync \
    --log-level=warn
}

start_kube-apiserver() {
  if running_pid kube-apiserver >/dev/null; then return; fi
  local adv
  adv="$(advertise_address)"
  [[ -n ${adv} ]] || die "cannot find an advertise address: set TLSID_APISERVER_ADVERTISE_ADDRESS"
  local extra=()
  # Endpoints may not hold loopback IPs: with a loopback advertise address the
  # reconciler of the `kubernetes` Service would fail every 10s. Nothing in
  # the control-plane tier needs those endpoints (no pods), so turn it off.
  if [[ ${adv} == 127.* ]]; then extra+=(--endpoint-reconciler-type=none); fi
  # Node tier: kubectl logs/exec reach the kubelet by the node's IP with a
  # client cert the kubelet's webhook authorizer accepts.
  if [[ ${NODE_TIER} == true ]]; then
    # shellcheck disable=SC2054 # the commas are part of the flag's value
    extra+=(
      --kubelet-client-certificate="${PKI}/apiserver-kubelet-client.crt"
      --kubelet-client-key="${PKI}/apiserver-kubelet-client.key"
      --kubelet-preferred-address-types=InternalIP,Hostname
    )
  fi
  # Priority and fairness off by default: less CPU on 2 cores, no throttling in tests.
  # TLSID_APISERVER_APF=true turns it on (tests/control_plane.rs: 429s for real), with the
  # server's concurrency limits from TLSID_APISERVER_MAX_INFLIGHT / _MAX_MUTATING_INFLIGHT.
  if [[ ${TLSID_APISERVER_APF:-false} == true ]]; then
    extra+=(
      --enable-priority-and-fairness=true
      --max-requests-inflight="${TLSID_APISERVER_MAX_INFLIGHT:-400}"
      --max-mutating-requests-inflight="${TLSID_APISERVER_MAX_MUTATING_INFLIGHT:-200}"
    )
  else
    extra+=(--enable-priority-and-fairness=false)
  fi
  # ClusterTrustBundles (beta, off by default in 1.34) are served: tlsid publishes its trust
  # bundle as one (tests/trust.rs).
  spawn kube-apiserver \
    --etcd-servers="http://127.0.0.1:${ETCD_PORT}" \
    --bind-address="${APISERVER_BIND}" \
    --secure-port="${APISERVER_PORT}" \
    --advertise-address="${adv}" \
    --cert-dir="${PKI}" \
    --tls-cert-file="${PKI}/apiserver.crt" \
    --tls-private-key-file="${PKI}/apiserver.key" \
    --client-ca-file="${PKI}/ca.crt" \
    --service-account-issuer="${SA_ISSUER}" \
    --service-account-key-file="${PKI}/sa.pub" \
    --service-account-signing-key-file="${PKI}/sa.key" \
    --service-cluster-ip-range="${SERVICE_CIDR}" \
    --authorization-mode=Node,RBAC \
    --allow-privileged=true \
    --feature-gates=ClusterTrustBundle=true \
    --runtime-config=certificates.k8s.io/v1beta1/clustertrustbundles=true \
    --profiling=false \
    --v=1 \
    "${extra[@]}"
}

wait_etcd() { wait_until etcd etcd_healthy; }
wait_kube-apiserver() { wait_until kube-apiserver apiserver_ready; }

stop_component() { # NAME
  local name="$1" pid i
  pid="$(running_pid "${name}")" || { rm -f "${PIDS}/${name}.pid"; return 0; }
  log "${name}: stopping pid ${pid}"
  kill -TERM "${pid}" 2>/dev/null || true
  # running_pid, not kill -0: an exited child not yet reaped (a zombie) has
  # no cmdline and counts as gone.
  for ((i = 0; i < 100; i++)); do # up to 20s for a clean shutdown
    running_pid "${name}" >/dev/null || break
    sleep 0.2
  done
  if running_pid "${name}" >/dev/null; then
    log "${name}: still running, sending KILL"
    kill -KILL "${pid}" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do running_pid "${name}" >/dev/null || break; sleep 0.1; done
  fi
  rm -f "${PIDS}/${name}.pid"
}

# --- commands ----------------------------------------------------------------

# Serialise up/down of one state dir (parallel test processes may race).
lock_state() {
  mkdir -p "$(dirname "${STATE}")"
  exec 8>"${STATE%/}.lock"
  # Held only while processes start (builds run before, under their own lock).
  flock -w "$((3 * START_TIMEOUT))" 8 || die "another cluster.sh holds ${STATE%/}.lock for too long"
}

cmd_up() {
  local node=false
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --node) node=true ;;
      *) die "up: unknown argument '$1'" ;;
    esac
    shift
  done
  # A node cluster's dir stays one: its apiserver needs the node flags.
  if [[ ${node} == true || -d ${NODE_DIR} ]]; then
    cmd_up_node
    return
  fi
  local components=("${CONTROL_PLANE[@]}")

  # Fast path: everything running and the apiserver ready.
  if is_up "${components[@]}"; then
    echo "${KUBECONFIG_FILE}"
    return
  fi
  local tool
  for tool in openssl curl setsid flock; do
    command -v "${tool}" >/dev/null || die "${tool} not found (run hack/install-deps.sh)"
  done
  # May take long the first time; serialised with other builds by its lock.
  "${TLSID_HACK_DIR}/build-k8s.sh" control-plane >&2

  lock_state
  if is_up "${components[@]}"; then # another `up` won the race
    echo "${KUBECONFIG_FILE}"
    return
  fi
  check_state_dir

  # Fail on taken ports before making anything.
  running_pid etcd >/dev/null || check_ports etcd "${ETCD_PORT}" "${ETCD_PEER_PORT}"
  running_pid kube-apiserver >/dev/null || check_ports kube-apiserver "${APISERVER_PORT}"
  mkdir -p "${STATE}"
  touch "${MARKER}"
  gen_control_plane_pki
  local c start=${SECONDS}
  for c in "${components[@]}"; do
    "start_${c}"
    "wait_${c}"
    log "${c}: ready"
  done
  write_kubeconfig
  log "cluster up in $((SECONDS - start))s: https://$(client_address):${APISERVER_PORT} (state ${STATE})"
  echo "${KUBECONFIG_FILE}"
}

check_state_dir() {
  if [[ -d ${STATE} && ! -f ${MARKER} ]] && [[ -n "$(ls -A "${STATE}")" ]]; then
    die "${STATE} exists and was not made by cluster.sh; choose another TLSID_CLUSTER_DIR"
  fi
}

# up --node: the control plane with node flags, then the node tier.
cmd_up_node() {
  NODE_TIER=true
  if [[ -z ${TLSID_APISERVER_BIND_ADDRESS:-} ]]; then APISERVER_BIND=0.0.0.0; fi
  [[ ${APISERVER_BIND} != 127.* ]] ||
    die "up --node: pods cannot reach an apiserver bound to ${APISERVER_BIND}; unset TLSID_APISERVER_BIND_ADDRESS"
  local all=("${CONTROL_PLANE[@]}" "${NODE_COMPONENTS[@]}")
  if [[ -d ${NODE_DIR} ]] && is_up "${all[@]}" && node_ready; then
    echo "${KUBECONFIG_FILE}"
    return
  fi
  local tool
  for tool in openssl curl setsid flock; do
    command -v "${tool}" >/dev/null || die "${tool} not found (run hack/install-deps.sh)"
  done
  node_preflight
  node_check_owner
  "${TLSID_HACK_DIR}/build-k8s.sh" all >&2

  lock_state
  if [[ -d ${NODE_DIR} ]] && is_up "${all[@]}" && node_ready; then
    echo "${KUBECONFIG_FILE}"
    return
  fi
  check_state_dir
  if [[ ! -d ${NODE_DIR} ]] && running_pid kube-apiserver >/dev/null; then
    die "a control-plane-only cluster runs in ${STATE}: 'hack/cluster.sh down' it first, or use another TLSID_CLUSTER_DIR for the node cluster"
  fi
  running_pid etcd >/dev/null || check_ports etcd "${ETCD_PORT}" "${ETCD_PEER_PORT}"
  running_pid kube-apiserver >/dev/null || check_ports kube-apiserver "${APISERVER_PORT}"
  local start=${SECONDS}
  NODE_IP="$(node_ip)"
  node_claim
  mkdir -p "${STATE}"
  touch "${MARKER}"
  gen_control_plane_pki
  node_prepare
  node_up
  log "node cluster up in $((SECONDS - start))s: https://$(client_address):${APISERVER_PORT}, node ${NODE_NAME} (${NODE_IP}), state ${STATE}"
  echo "${KUBECONFIG_FILE}"
}

is_up() { # COMPONENT...
  [[ -f ${KUBECONFIG_FILE} ]] && all_running "$@" && apiserver_ready
}

all_running() {
  local c
  for c in "$@"; do running_pid "${c}" >/dev/null || return 1; done
}

cmd_down() {
  lock_state
  if [[ ! -d ${STATE} ]]; then
    log "nothing to do: ${STATE} does not exist"
    return
  fi
  [[ -f ${MARKER} ]] || die "${STATE} was not made by cluster.sh; not removing it"
  # The node tier first: its pods, network and mounts, while the state is there.
  if [[ -d ${NODE_DIR} ]]; then node_down; fi
  local i c all=("${CONTROL_PLANE[@]}")
  # Reverse start order: the apiserver goes before its etcd.
  for ((i = ${#all[@]} - 1; i >= 0; i--)); do
    c="${all[i]}"
    stop_component "${c}"
  done
  if findmnt -rn -o TARGET | grep -qF "${STATE}/"; then
    die "mounts are left under ${STATE}; not removing it (see findmnt)"
  fi
  rm -rf "${STATE}"
  rm -f "${STATE%/}.lock"
  log "cluster down, removed ${STATE}"
}

cmd_status() {
  local c pid ok=0 all=("${CONTROL_PLANE[@]}")
  echo "state: ${STATE}"
  if [[ -d ${NODE_DIR} ]]; then
    echo "tier: node"
    all+=("${NODE_COMPONENTS[@]}")
  else
    echo "tier: control-plane"
  fi
  for c in "${all[@]}"; do
    if pid="$(running_pid "${c}")"; then echo "${c}: running (pid ${pid})"; else echo "${c}: stopped"; ok=1; fi
  done
  if [[ -f ${PKI}/ca.crt ]] && apiserver_ready; then
    echo "apiserver: ready at https://$(client_address):${APISERVER_PORT}"
  else
    echo "apiserver: not ready"
    ok=1
  fi
  if [[ -d ${NODE_DIR} ]]; then node_status || ok=1; fi
  [[ -f ${KUBECONFIG_FILE} ]] && echo "kubeconfig: ${KUBECONFIG_FILE}"
  if [[ -n ${KUBECONFIG:-} && ${KUBECONFIG} != "${KUBECONFIG_FILE}" ]]; then
    echo "note: KUBECONFIG in this shell is ${KUBECONFIG}, not this cluster's"
  fi
  return "${ok}"
}

cmd_env() {
  echo "export KUBECONFIG=${KUBECONFIG_FILE}"
  # \$PATH stays literal: expanded by the shell that evals this.
  echo "export PATH=\"$(tlsid_bin_path):\${PATH}\""
  if [[ -d ${NODE_DIR} ]]; then
    echo "export CONTAINERD_ADDRESS=${TLSID_NODE_CONTAINERD_SOCK}"
    echo "export CONTAINERD_NAMESPACE=${TLSID_NODE_CONTAINERD_NS}"
  fi
}

# The node tier (functions and settings; needs the definitions above).
# shellcheck source=hack/node/lib.sh
. "${TLSID_HACK_DIR}/node/lib.sh"

main() {
  local cmd="${1:-}"
  [[ $# -gt 0 ]] && shift
  case "${cmd}" in
    up) cmd_up "$@" ;;
    down) cmd_down ;;
    status) cmd_status ;;
    env) cmd_env ;;
    -h | --help | help) sed -n '2,44s/^# \{0,1\}//p' "$0" ;;
    *) sed -n '6,20s/^# \{0,1\}//p' "$0" >&2; exit 2 ;;
  esac
}

main "$@"
