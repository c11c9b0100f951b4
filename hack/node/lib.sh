# shellcheck shell=bash disable=SC2034 # variables used by hack/cluster.sh
# The single-node tier of hack/cluster.sh (`up --node`): containerd, CNI,
# kube-controller-manager, kube-scheduler, kubelet, kube-proxy and CoreDNS on
# the host, beside cluster.sh's etcd and kube-apiserver. Sourced by
# cluster.sh after its own definitions (log, die, spawn, wait_until,
# running_pid, sign_cert, STATE, PKI, ...); not a script of its own.
#
# Everything lives under ${STATE}/node, except what the host forces elsewhere
# and `down` removes again:
#   /run/tlsid-node/            containerd's socket and the registry naming the
#                               cluster dir that owns the node (one per machine)
#   bridge tlsid0 + pod veths   the CNI network (10.244.0.0/24 by default)
#   KUBE-*, CNI-* chains        kube-proxy's, kubelet's and the CNI plugins'
#                               iptables/ip6tables chains
#   /sys/fs/cgroup/*/tlsid-node the kubelet's cgroup root (pods live under it)
#   sysctls                     ip_forward and the ones kubelet sets; saved at
#                               the first `up --node` and restored by `down`
#   /var/log/containers/*.log   kubelet's symlinks (a fixed path in kubelet)
#   /var/lib/kubelet/device-plugins/  kubelet's device-plugin socket and
#                               checkpoint (a fixed path in kubelet)
#   /var/lib/cni/results/tlsid-node-*  libcni's result cache (fixed path)
#   iptables tables             iptables-nft makes the filter/nat/mangle
#                               tables on first use; `down` deletes the ones
#                               that did not exist before, once empty, when
#                               `nft` is installed (Debian package nftables)

# shellcheck source=hack/node/common.sh
. "${TLSID_HACK_DIR}/node/common.sh"

NODE_DIR="${STATE}/node"
NODE_IP="" # set by `up --node` (node_ip)
NODE_NAME="${TLSID_NODE_NAME:-tlsid-node}"
POD_CIDR="${TLSID_POD_CIDR:-10.244.0.0/24}"
CLUSTER_DOMAIN=cluster.local
NODE_BRIDGE=tlsid0
CNI_NETWORK=tlsid-node
CGROUP_ROOT_NAME=tlsid-node
# CoreDNS readiness endpoint (loopback only).
COREDNS_READY_ADDR=127.0.0.1:8181
# Ports the node components bind (fixed: one node cluster per machine).
node_ports() { # COMPONENT
  case "$1" in
    kubelet) echo 10248 10250 ;;
    kube-proxy) echo 10249 10256 ;;
    kube-controller-manager) echo 10257 ;;
    kube-scheduler) echo 10259 ;;
    coredns) echo "${COREDNS_READY_ADDR##*:}" ;;
  esac
}
# Host paths the kubelet and libcni use whatever their configuration says:
# made by us when absent before the first `up --node`, removed when empty.
# Deepest first.
NODE_HOST_DIRS=(
  /var/log/containers /var/log/pods /var/lib/cni/results /var/lib/cni
  /var/lib/kubelet/device-plugins /var/lib/kubelet /run/containerd/s /run/containerd /run/mount
)
# Kernel settings kubelet, kube-proxy, the CNI plugins or this script change.
NODE_SYSCTLS=(
  net/ipv4/ip_forward net/ipv6/conf/all/forwarding
  net/bridge/bridge-nf-call-iptables net/bridge/bridge-nf-call-ip6tables
  net/ipv4/conf/all/route_localnet
  vm/overcommit_memory vm/panic_on_oom kernel/panic kernel/panic_on_oops
  kernel/keys/root_maxkeys kernel/keys/root_maxbytes
)

# Start order after etcd and kube-apiserver; `down` stops in reverse.
NODE_COMPONENTS=(containerd kube-controller-manager kube-scheduler kubelet kube-proxy coredns)

# --- addresses and preflight -------------------------------------------------

# The node's IP: what the apiserver advertises (the `kubernetes` Service's
# endpoint), the kubelet's InternalIP and where CoreDNS listens for pods.
node_ip() {
  local ip
  ip="$(advertise_address)"
  [[ -n ${ip} ]] || die "no node IP: no default route; set TLSID_APISERVER_ADVERTISE_ADDRESS to an IP of this host"
  [[ ${ip} != 127.* ]] || die "the node tier needs a non-loopback node IP (TLSID_APISERVER_ADVERTISE_ADDRESS=${ip})"
  ip -4 -o addr show | grep -qF " ${ip}/" || die "node IP ${ip} is not an address of this host"
  echo "${ip}"
}

# First host address of POD_CIDR (the bridge's gateway).
pod_gateway() {
  local net="${POD_CIDR%/*}" a b c d
  IFS=. read -r a b c d <<<"${net}"
  echo "${a}.${b}.${c}.$((d + 1))"
}

node_listening() { # PORT -> exit 0 if something listens on it (TCP or UDP)
  [[ -n "$(ss -Hltun "( sport = :$1 )" 2>/dev/null)" ]]
}

node_preflight() {
  local t p
  for t in containerd ctr runc ip iptables iptables-save iptables-restore ss findmnt jq mount umount; do
    command -v "${t}" >/dev/null || die "${t} not found (run hack/install-deps.sh)"
  done
  for p in bridge host-local portmap loopback; do
    [[ -x /usr/lib/cni/${p} ]] || die "/usr/lib/cni/${p} not found (Debian package containernetworking-plugins)"
  done
  [[ ${EUID} -eq 0 ]] || die "the node tier needs root (containers, iptables, mounts, cgroups)"
  [[ -d /sys/fs/cgroup/memory || -f /sys/fs/cgroup/cgroup.controllers ]] || die "no cgroup hierarchy at /sys/fs/cgroup"
  if [[ ! -d /proc/sys/net/bridge ]]; then
    modprobe br_netfilter 2>/dev/null || true
    [[ -d /proc/sys/net/bridge ]] || die "br_netfilter is missing (/proc/sys/net/bridge): modprobe br_netfilter"
  fi
}

# Fail early (before anything is made) when another cluster dir owns the node.
node_check_owner() {
  local owner
  owner="$(tlsid_node_owner)" || return 0
  if [[ ${owner} != "${STATE}" && -f ${owner}/.tlsid-cluster ]]; then
    die "another node cluster owns this machine (state dir ${owner}); only one can run at a time (host network, iptables, ports): run 'TLSID_CLUSTER_DIR=${owner} hack/cluster.sh down' first"
  fi
}

# Claim the machine's node for this cluster dir: one node cluster at a time.
# mkdir is the atomic step; the registry file names the owner.
node_claim() {
  local owner
  if mkdir "${TLSID_NODE_RUN_DIR}" 2>/dev/null; then
    echo "${STATE}" >"${TLSID_NODE_REGISTRY}"
    return
  fi
  owner="$(tlsid_node_owner)" || { sleep 2; owner="$(tlsid_node_owner)"; } ||
    die "${TLSID_NODE_RUN_DIR} exists without a registry file: another 'up --node' is starting, or remove the dir if none is"
  [[ ${owner} == "${STATE}" ]] && return
  if [[ -f ${owner}/.tlsid-cluster ]]; then
    die "another node cluster owns this machine (state dir ${owner}); only one can run at a time (host network, iptables, ports): run 'TLSID_CLUSTER_DIR=${owner} hack/cluster.sh down' first"
  fi
  log "taking over the stale node registration of ${owner} (its state dir is gone)"
  echo "${STATE}" >"${TLSID_NODE_REGISTRY}"
}

# Ports of the node components that do not run yet must be free.
node_check_ports() {
  local c p
  for c in "${NODE_COMPONENTS[@]}"; do
    running_pid "${c}" >/dev/null && continue
    for p in $(node_ports "${c}"); do
      if node_listening "${p}"; then
        die "port ${p} (${c}) is taken: $(ss -Hltunp "( sport = :${p} )" | head -1)"
      fi
    done
  done
  running_pid coredns >/dev/null && return 0
  # CoreDNS listens on the node IP only, so a resolver on loopback is fine.
  local a
  for a in $(ss -Hltun "( sport = :53 )" 2>/dev/null | awk '{ print $5 }'); do
    case "${a}" in
      "${NODE_IP}:53" | "0.0.0.0:53" | "*:53" | "[::]:53") die "port 53 on ${NODE_IP} is taken (${a}); CoreDNS needs it for the pods" ;;
    esac
  done
}

# --- configuration -----------------------------------------------------------

gen_node_pki() {
  local client="basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth
authorityKeyIdentifier=keyid,issuer"
  local name subj
  while read -r name subj; do
    [[ -f ${PKI}/${name}.crt ]] || sign_cert "${name}" "${subj}" "${client}"
  done <<EOF
kubelet /O=system:nodes/CN=system:node:${NODE_NAME}
kube-proxy /CN=system:kube-proxy
kube-controller-manager /CN=system:kube-controller-manager
kube-scheduler /CN=system:kube-scheduler
coredns /CN=tlsid:coredns
apiserver-kubelet-client /O=system:masters/CN=kube-apiserver-kubelet-client
EOF
}

# Component kubeconfigs reference the PKI files (they never leave the host).
write_component_kubeconfig() { # NAME
  cat >"${NODE_DIR}/kubeconfigs/$1.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: tlsid
  cluster:
    server: https://$(client_address):${APISERVER_PORT}
    certificate-authority: ${PKI}/ca.crt
users:
- name: $1
  user:
    client-certificate: ${PKI}/$1.crt
    client-key: ${PKI}/$1.key
contexts:
- name: tlsid
  context:
    cluster: tlsid
    user: $1
current-context: tlsid
EOF
  chmod 600 "${NODE_DIR}/kubeconfigs/$1.kubeconfig"
}

# overlayfs, or native when an overlay mount fails here (e.g. the state dir
# is itself on overlayfs).
detect_snapshotter() {
  local t="${NODE_DIR}/overlay-test" snap=native
  mkdir -p "${t}/lower" "${t}/upper" "${t}/work" "${t}/merged"
  if mount -t overlay overlay -o "lowerdir=${t}/lower,upperdir=${t}/upper,workdir=${t}/work" "${t}/merged" 2>/dev/null; then
    umount "${t}/merged"
    snap=overlayfs
  fi
  rm -rf "${t}"
  echo "${snap}"
}

write_node_configs() {
  local snap pause
  mkdir -p "${NODE_DIR}"/{kubeconfigs,containerd,cni/net.d,cni/ipam,coredns,pod-logs,kubelet}
  local c
  for c in kubelet kube-proxy kube-controller-manager kube-scheduler coredns; do write_component_kubeconfig "${c}"; done

  snap="${TLSID_NODE_SNAPSHOTTER:-$(detect_snapshotter)}"
  echo "${snap}" >"${NODE_DIR}/containerd/snapshotter"
  pause="$("${TLSID_HACK_DIR}/image.sh" name pause)"
  # Own root, state, socket and runc root: nothing shared with a system
  # containerd. netns_mounts_under_state_dir keeps the pods' netns mounts
  # under the state dir too (instead of /var/run/netns).
  cat >"${NODE_DIR}/containerd/config.toml" <<EOF
version = 2
root = "${NODE_DIR}/containerd/root"
state = "${NODE_DIR}/containerd/state"
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = "${TLSID_NODE_CONTAINERD_SOCK}"

[debug]
  level = "warn"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "${pause}"
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  # Sandboxes and containers ask for a negative oom_score_adj (-998 for the
  # pause process), which needs CAP_SYS_RESOURCE; sandboxed CI machines may
  # not grant it (runc then fails: "failed to update /proc/self/oom_score_adj:
  # Permission denied"). Clamp to containerd's own value instead.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "${snap}"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "${NODE_DIR}/containerd/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "${NODE_DIR}/cni/net.d"
    max_conf_num = 1
EOF

  cat >"${NODE_DIR}/cni/net.d/10-tlsid.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "${CNI_NETWORK}",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "${NODE_BRIDGE}",
      "isGateway": true,
      "isDefaultGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{ "subnet": "${POD_CIDR}", "gateway": "$(pod_gateway)" }]],
        "dataDir": "${NODE_DIR}/cni/ipam"
      }
    },
    { "type": "portmap", "capabilities": { "portMappings": true } }
  ]
}
EOF

  # Pods with dnsPolicy Default get this file; ClusterFirst pods get
  # clusterDNS plus its search list. Both end at our CoreDNS.
  printf 'nameserver %s\n' "${NODE_IP}" >"${NODE_DIR}/resolv.conf"

  cat >"${NODE_DIR}/kubelet-config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: ${PKI}/ca.crt
authorization:
  mode: Webhook
containerRuntimeEndpoint: unix://${TLSID_NODE_CONTAINERD_SOCK}
cgroupDriver: cgroupfs
cgroupRoot: /${CGROUP_ROOT_NAME}
failCgroupV1: false
failSwapOn: false
# Never collect images: the imported ones cannot be pulled again.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
# Small absolute thresholds: a test machine with a fullish disk should not
# evict the pods of a test.
evictionHard:
  memory.available: 50Mi
  nodefs.available: 200Mi
  imagefs.available: 200Mi
  nodefs.inodesFree: 1%
clusterDNS:
- ${NODE_IP}
clusterDomain: ${CLUSTER_DOMAIN}
resolvConf: ${NODE_DIR}/resolv.conf
podLogsDir: ${NODE_DIR}/pod-logs
healthzBindAddress: 127.0.0.1
healthzPort: 10248
readOnlyPort: 0
serializeImagePulls: false
# How often each pod is synced, which is also how soon a changed Secret
# reaches the pods that mount it (kubelet's default: 1m).
syncFrequency: ${TLSID_NODE_SYNC_FREQUENCY:-1m}
rotateCertificates: false
serverTLSBootstrap: false
maxPods: 110
EOF

  cat >"${NODE_DIR}/coredns/Corefile" <<EOF
.:53 {
    bind ${NODE_IP}
    errors
    ready ${COREDNS_READY_ADDR}
    kubernetes ${CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {
        kubeconfig ${NODE_DIR}/kubeconfigs/coredns.kubeconfig tlsid
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }
    forward . /etc/resolv.conf
    cache 5
}
EOF

  cat >"${NODE_DIR}/coredns/rbac.yaml" <<'EOF'
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: tlsid:coredns
rules:
- apiGroups: [""]
  resources: [endpoints, services, pods, namespaces]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: tlsid:coredns
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: tlsid:coredns
subjects:
- apiGroup: rbac.authorization.k8s.io
  kind: User
  name: tlsid:coredns
EOF
}

# --- host state: sysctls, cgroups, host dirs ---------------------------------

# Saved once (the first `up --node` of this dir), restored by `down`.
save_sysctls() {
  local f="${NODE_DIR}/sysctls.saved" k
  [[ -f ${f} ]] && return
  for k in "${NODE_SYSCTLS[@]}"; do
    [[ -r /proc/sys/${k} ]] && printf '%s %s\n' "${k}" "$(tr '\t' ' ' <"/proc/sys/${k}")"
  done >"${f}.tmp"
  mv -f "${f}.tmp" "${f}"
}

restore_sysctls() {
  local f="${NODE_DIR}/sysctls.saved" k v
  [[ -f ${f} ]] || return 0
  while read -r k v; do
    [[ -w /proc/sys/${k} && "$(tr '\t' ' ' <"/proc/sys/${k}")" != "${v}" ]] || continue
    if echo "${v}" >"/proc/sys/${k}" 2>/dev/null; then
      log "restored ${k//\//.} = ${v}"
    else
      log "warning: could not restore ${k//\//.} = ${v}"
    fi
  done <"${f}"
}

set_sysctls() {
  echo 1 >/proc/sys/net/ipv4/ip_forward
  echo 1 >/proc/sys/net/bridge/bridge-nf-call-iptables
  [[ -w /proc/sys/net/bridge/bridge-nf-call-ip6tables ]] && echo 1 >/proc/sys/net/bridge/bridge-nf-call-ip6tables
  return 0
}

# What exists on the host before the first `up --node` of this dir, so that
# `down` removes only what the node made.
save_host_state() {
  local f="${NODE_DIR}/host-dirs.preexisting" d fam
  if [[ ! -f ${f} ]]; then
    for d in "${NODE_HOST_DIRS[@]}"; do [[ -e ${d} ]] && echo "${d}"; done >"${f}.tmp"
    mv -f "${f}.tmp" "${f}"
  fi
  for fam in iptables ip6tables; do
    f="${NODE_DIR}/${fam}-tables.preexisting"
    [[ -f ${f} ]] || "${fam}-save" 2>/dev/null | sed -n 's/^\*//p' >"${f}" || true
  done
  return 0
}

# Every cgroup hierarchy's dir for the kubelet's cgroup root.
cgroup_dirs() {
  local m
  while read -r m; do
    [[ ${m} == /sys/fs/cgroup* ]] && echo "${m}/${CGROUP_ROOT_NAME}"
  done < <(findmnt -rn -t cgroup,cgroup2 -o TARGET)
}

# kubelet's cgroupRoot must exist in every hierarchy; a new cpuset cgroup
# has no CPUs until given its parent's.
create_cgroups() {
  local d
  while read -r d; do
    mkdir -p "${d}"
    if [[ -f ${d}/cpuset.cpus && -z "$(cat "${d}/cpuset.cpus")" ]]; then
      cat "${d%/*}/cpuset.cpus" >"${d}/cpuset.cpus"
      cat "${d%/*}/cpuset.mems" >"${d}/cpuset.mems"
    fi
  done < <(cgroup_dirs)
}

cgroup_pids() {
  local d
  while read -r d; do
    [[ -d ${d} ]] && find "${d}" -name cgroup.procs -exec cat {} + 2>/dev/null
  done < <(cgroup_dirs) | sort -un
}

kill_cgroup_processes() {
  local pids i
  for ((i = 0; i < 50; i++)); do
    mapfile -t pids < <(cgroup_pids)
    [[ ${#pids[@]} -eq 0 ]] && return 0
    ((i == 0)) && log "killing ${#pids[@]} container processes left in the pods' cgroups"
    kill -KILL "${pids[@]}" 2>/dev/null || true
    sleep 0.1
  done
  log "warning: processes left in the pods' cgroups: $(cgroup_pids | tr '\n' ' ')"
}

remove_cgroups() {
  local d i
  for ((i = 0; i < 20; i++)); do
    local left=0
    while read -r d; do
      [[ -d ${d} ]] || continue
      find "${d}" -depth -type d -exec rmdir {} + 2>/dev/null || true
      [[ -d ${d} ]] && left=1
    done < <(cgroup_dirs)
    ((left == 0)) && return 0
    sleep 0.2
  done
  log "warning: could not remove all of /sys/fs/cgroup/*/${CGROUP_ROOT_NAME}"
}

# --- processes ---------------------------------------------------------------

start_containerd() {
  if running_pid containerd >/dev/null; then return; fi
  if [[ -S ${TLSID_NODE_CONTAINERD_SOCK} ]]; then rm -f "${TLSID_NODE_CONTAINERD_SOCK}" "${TLSID_NODE_CONTAINERD_SOCK}.ttrpc"; fi
  spawn containerd --config "${NODE_DIR}/containerd/config.toml"
}
wait_containerd() { wait_until containerd tlsid_node_containerd_up; }

# kube-controller-manager and kube-scheduler: the client CA is given, not
# looked up in kube-system/extension-apiserver-authentication (which has no
# requestheader CA here: the lookup would log an error every few seconds).
start_kube-controller-manager() {
  if running_pid kube-controller-manager >/dev/null; then return; fi
  local kc="${NODE_DIR}/kubeconfigs/kube-controller-manager.kubeconfig"
  spawn kube-controller-manager \
    --kubeconfig="${kc}" \
    --authentication-kubeconfig="${kc}" \
    --authorization-kubeconfig="${kc}" \
    --authentication-skip-lookup=true \
    --client-ca-file="${PKI}/ca.crt" \
    --bind-address=127.0.0.1 \
    --secure-port=10257 \
    --leader-elect=false \
    --use-service-account-credentials=true \
    --service-account-private-key-file="${PKI}/sa.key" \
    --root-ca-file="${PKI}/ca.crt" \
    --cluster-signing-cert-file="${PKI}/ca.crt" \
    --cluster-signing-key-file="${PKI}/ca.key" \
    --service-cluster-ip-range="${SERVICE_CIDR}" \
    --cluster-cidr="${POD_CIDR}" \
    --allocate-node-cidrs=false \
    --cert-dir="${NODE_DIR}/kube-controller-manager" \
    --profiling=false \
    --v=1
}
wait_kube-controller-manager() { wait_until kube-controller-manager healthz_ok https://127.0.0.1:10257/healthz; }

start_kube-scheduler() {
  if running_pid kube-scheduler >/dev/null; then return; fi
  local kc="${NODE_DIR}/kubeconfigs/kube-scheduler.kubeconfig"
  spawn kube-scheduler \
    --kubeconfig="${kc}" \
    --authentication-kubeconfig="${kc}" \
    --authorization-kubeconfig="${kc}" \
    --authentication-skip-lookup=true \
    --client-ca-file="${PKI}/ca.crt" \
    --bind-address=127.0.0.1 \
    --secure-port=10259 \
    --leader-elect=false \
    --cert-dir="${NODE_DIR}/kube-scheduler" \
    --profiling=false \
    --v=1
}
wait_kube-scheduler() { wait_until kube-scheduler healthz_ok https://127.0.0.1:10259/healthz; }

start_kubelet() {
  if running_pid kubelet >/dev/null; then return; fi
  spawn kubelet \
    --config="${NODE_DIR}/kubelet-config.yaml" \
    --kubeconfig="${NODE_DIR}/kubeconfigs/kubelet.kubeconfig" \
    --root-dir="${NODE_DIR}/kubelet" \
    --cert-dir="${NODE_DIR}/kubelet-pki" \
    --hostname-override="${NODE_NAME}" \
    --node-ip="${NODE_IP}" \
    --v=1
}
wait_kubelet() { wait_until kubelet healthz_ok http://127.0.0.1:10248/healthz; }

start_kube-proxy() {
  if running_pid kube-proxy >/dev/null; then return; fi
  # conntrack 0s/0: leave the host's conntrack settings alone;
  # localhost nodeports off: no route_localnet sysctl.
  spawn kube-proxy \
    --kubeconfig="${NODE_DIR}/kubeconfigs/kube-proxy.kubeconfig" \
    --proxy-mode=iptables \
    --cluster-cidr="${POD_CIDR}" \
    --hostname-override="${NODE_NAME}" \
    --healthz-bind-address=127.0.0.1:10256 \
    --metrics-bind-address=127.0.0.1:10249 \
    --conntrack-max-per-core=0 \
    --conntrack-tcp-timeout-established=0s \
    --conntrack-tcp-timeout-close-wait=0s \
    --iptables-localhost-nodeports=false \
    --nodeport-addresses=primary \
    --profiling=false \
    --v=1
}
wait_kube-proxy() { wait_until kube-proxy healthz_ok http://127.0.0.1:10256/livez; }

start_coredns() {
  if running_pid coredns >/dev/null; then return; fi
  spawn coredns -conf "${NODE_DIR}/coredns/Corefile"
}
wait_coredns() { wait_until coredns healthz_ok "http://${COREDNS_READY_ADDR}/ready"; }

healthz_ok() { # URL
  curl -fsSk --max-time 3 "$1" >/dev/null 2>&1
}

kubectl_admin() {
  "$(tlsid_bin kubectl)" --kubeconfig="${KUBECONFIG_FILE}" "$@"
}

node_ready() {
  [[ "$(kubectl_admin get node "${NODE_NAME}" \
    -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}{range .spec.taints[*]}{" "}{.key}{end}' 2>/dev/null)" == True ]]
}

default_sa_ready() {
  kubectl_admin -n default get serviceaccount default >/dev/null 2>&1 &&
    kubectl_admin -n default get configmap kube-root-ca.crt >/dev/null 2>&1
}

# --- up / down ---------------------------------------------------------------

# Everything before the processes start; the caller holds the state lock.
# NODE_IP is set and the node claimed (node_claim) by the caller, and the
# control-plane PKI exists.
node_prepare() {
  node_check_ports
  mkdir -p "${NODE_DIR}"
  echo "${NODE_IP}" >"${NODE_DIR}/node-ip"
  save_host_state
  save_sysctls
  set_sysctls
  gen_node_pki
  write_node_configs
  create_cgroups
  if ip link show "${NODE_BRIDGE}" >/dev/null 2>&1 && [[ ! -f ${NODE_DIR}/cni/ipam/${CNI_NETWORK}/last_reserved_ip.0 ]]; then
    log "warning: bridge ${NODE_BRIDGE} already exists (left by an earlier node cluster?); the CNI plugin reuses it"
  fi
}

# Start the whole node tier; etcd and the apiserver come from cluster.sh.
# containerd starts beside etcd (it needs no apiserver) to save time.
node_up() {
  local pause_archive c
  pause_archive="$("${TLSID_HACK_DIR}/image.sh" archive pause)"
  start_etcd
  start_containerd
  wait_etcd
  log "etcd: ready"
  start_kube-apiserver
  wait_containerd
  log "containerd: ready (${TLSID_NODE_CONTAINERD_SOCK}, snapshotter $(cat "${NODE_DIR}/containerd/snapshotter"))"
  ctr --address "${TLSID_NODE_CONTAINERD_SOCK}" -n "${TLSID_NODE_CONTAINERD_NS}" images import \
    --snapshotter "$(cat "${NODE_DIR}/containerd/snapshotter")" "${pause_archive}" >/dev/null
  log "imported $("${TLSID_HACK_DIR}/image.sh" name pause)"
  wait_kube-apiserver
  log "kube-apiserver: ready"
  write_kubeconfig
  kubectl_admin apply -f "${NODE_DIR}/coredns/rbac.yaml" >/dev/null
  for c in kube-controller-manager kube-scheduler kubelet kube-proxy coredns; do "start_${c}"; done
  for c in kube-controller-manager kube-scheduler kubelet kube-proxy coredns; do
    "wait_${c}"
    log "${c}: ready"
  done
  wait_until kubelet node_ready
  log "node ${NODE_NAME}: Ready (${NODE_IP}, pods ${POD_CIDR})"
  wait_until kube-controller-manager default_sa_ready
  log "default ServiceAccount: ready"
}

# Stop the node's containers through containerd (kubelet must be stopped:
# it would restart them), then containerd itself.
remove_containers() {
  running_pid containerd >/dev/null || return 0
  local ctr=(ctr --address "${TLSID_NODE_CONTAINERD_SOCK}" -n "${TLSID_NODE_CONTAINERD_NS}") ids id
  kill_cgroup_processes
  mapfile -t ids < <(timeout 20 "${ctr[@]}" tasks ls -q 2>/dev/null)
  for id in "${ids[@]}"; do timeout 20 "${ctr[@]}" tasks delete --force "${id}" >/dev/null 2>&1 || true; done
  mapfile -t ids < <(timeout 20 "${ctr[@]}" containers ls -q 2>/dev/null)
  for id in "${ids[@]}"; do timeout 20 "${ctr[@]}" containers delete "${id}" >/dev/null 2>&1 || true; done
  [[ ${#ids[@]} -eq 0 ]] || log "removed ${#ids[@]} containers and sandboxes"
}

# Shims whose containerd was ours (they outlive a killed containerd).
kill_shims() {
  local pid
  for pid in $(pgrep -f "containerd-shim.* -address ${TLSID_NODE_CONTAINERD_SOCK}( |$)" || true); do
    log "killing leftover shim ${pid}"
    kill -KILL "${pid}" 2>/dev/null || true
  done
}

unmount_state() {
  local i m mounts
  for ((i = 0; i < 10; i++)); do
    mapfile -t mounts < <(findmnt -rn -o TARGET | awk -v s="${STATE}" '$0 == s || index($0, s "/") == 1' | sort -r)
    [[ ${#mounts[@]} -eq 0 ]] && return 0
    for m in "${mounts[@]}"; do
      m="$(printf '%b' "${m}")" # findmnt -r escapes blanks as \x20
      umount "${m}" 2>/dev/null || umount -l "${m}" 2>/dev/null || true
    done
  done
  log "warning: mounts left under ${STATE}:"
  findmnt -rn -o TARGET | grep -F "${STATE}" >&2 || true
  return 1
}

remove_network() {
  local v
  if ip link show "${NODE_BRIDGE}" >/dev/null 2>&1; then
    for v in $(ip -o link show master "${NODE_BRIDGE}" | awk -F': ' '{ sub(/@.*/, "", $2); print $2 }'); do
      ip link delete "${v}" 2>/dev/null || true
    done
    ip link delete "${NODE_BRIDGE}" && log "deleted bridge ${NODE_BRIDGE} and its veths"
  fi
}

# Remove every KUBE-* and CNI-* chain and the rules jumping to them, in one
# iptables-restore --noflush transaction per table (v4 and v6).
flush_iptables() {
  local fam t dump chains jumps c n=0
  for fam in iptables ip6tables; do
    command -v "${fam}-save" >/dev/null || continue
    for t in raw mangle nat filter; do
      dump="$("${fam}-save" -t "${t}" 2>/dev/null)" || continue
      mapfile -t chains < <(sed -n 's/^:\(\(KUBE\|CNI\)-[^ ]*\) .*/\1/p' <<<"${dump}")
      [[ ${#chains[@]} -gt 0 ]] || continue
      # Rules of other chains (the built-in ones) that jump to ours.
      mapfile -t jumps < <(grep -E '^-A [^ ]+ .*-[jg] (KUBE|CNI)-' <<<"${dump}" | grep -Ev '^-A (KUBE|CNI)-')
      {
        echo "*${t}"
        for c in "${jumps[@]}"; do echo "-D ${c#-A }"; done
        for c in "${chains[@]}"; do echo "-F ${c}"; done
        for c in "${chains[@]}"; do echo "-X ${c}"; done
        echo COMMIT
      } | "${fam}-restore" --noflush || log "warning: ${fam}-restore failed for table ${t}"
      n=$((n + ${#chains[@]}))
    done
  done
  ((n == 0)) || log "removed ${n} KUBE-*/CNI-* iptables chains"
  remove_new_tables
}

# iptables-nft made tables (filter, nat, ...) that did not exist before the
# node: delete those left without rules or chains of their own (needs nft).
remove_new_tables() {
  local fam nfam t dump
  for fam in iptables ip6tables; do
    [[ -f ${NODE_DIR}/${fam}-tables.preexisting ]] || continue
    [[ "$("${fam}" --version 2>/dev/null)" == *nf_tables* ]] || continue
    nfam=ip
    [[ ${fam} == ip6tables ]] && nfam=ip6
    for t in $("${fam}-save" 2>/dev/null | sed -n 's/^\*//p'); do
      grep -qxF "${t}" "${NODE_DIR}/${fam}-tables.preexisting" && continue
      dump="$("${fam}-save" -t "${t}" 2>/dev/null)"
      # Only the built-in chains, with ACCEPT policies, and no rules.
      if grep -q '^-A ' <<<"${dump}" || grep -E '^:' <<<"${dump}" | grep -qvE '^:(PREROUTING|INPUT|FORWARD|OUTPUT|POSTROUTING) ACCEPT '; then
        continue
      fi
      if command -v nft >/dev/null; then
        nft delete table "${nfam}" "${t}" 2>/dev/null && log "deleted the empty ${fam} table ${t} (made by the node)"
      else
        log "note: the empty ${fam} table ${t} made by the node is left (install nftables to have it deleted)"
      fi
    done
  done
  return 0
}

remove_host_files() {
  local f d
  # kubelet's symlinks into our pod-logs dir.
  for f in /var/log/containers/*.log; do
    [[ -L ${f} && "$(readlink "${f}")" == "${NODE_DIR}/"* ]] && rm -f "${f}"
  done
  # libcni's cache of the pods that were not torn down through CNI DEL: our
  # network's results, and the loopback results of our sandboxes.
  rm -f /var/lib/cni/results/"${CNI_NETWORK}"-* 2>/dev/null || true
  for d in "${NODE_DIR}"/containerd/{root,state}/io.containerd.grpc.v1.cri/sandboxes/*; do
    [[ -d ${d} ]] && rm -f "/var/lib/cni/results/cni-loopback-${d##*/}-lo"
  done
  # Sockets of shims that were killed (a shim removes its own when it exits
  # normally): containerd 1.6 names them /run/containerd/s/<sha256 of
  # "<containerd address>/<namespace>/<id>">, so ours are known exactly.
  for d in "${NODE_DIR}"/containerd/{root,state}/io.containerd.grpc.v1.cri/sandboxes/* \
    "${NODE_DIR}/containerd/state/io.containerd.runtime.v2.task/${TLSID_NODE_CONTAINERD_NS}"/*; do
    [[ -d ${d} ]] || continue
    f="$(printf '%s' "${TLSID_NODE_CONTAINERD_SOCK}/${TLSID_NODE_CONTAINERD_NS}/${d##*/}" | sha256sum | cut -d' ' -f1)"
    rm -f "/run/containerd/s/${f}"
  done
  # kubelet's device-plugin socket and checkpoint: ours when the dir is.
  if ! grep -qxF /var/lib/kubelet/device-plugins "${NODE_DIR}/host-dirs.preexisting" 2>/dev/null; then
    rm -f /var/lib/kubelet/device-plugins/kubelet.sock /var/lib/kubelet/device-plugins/kubelet_internal_checkpoint
  fi
  if ! grep -qxF /run/mount "${NODE_DIR}/host-dirs.preexisting" 2>/dev/null; then
    rm -f /run/mount/utab /run/mount/utab.lock 2>/dev/null || true
  fi
  for d in "${NODE_HOST_DIRS[@]}"; do
    grep -qxF "${d}" "${NODE_DIR}/host-dirs.preexisting" 2>/dev/null && continue
    if [[ -d ${d} ]]; then rmdir "${d}" 2>/dev/null || log "note: ${d} is not empty, kept"; fi
  done
  return 0
}

# The node part of `down`: processes, containers, mounts, network, iptables,
# cgroups, sysctls, host files, registry. Idempotent; the control plane is
# stopped by the caller afterwards.
node_down() {
  local owner c global=true
  if owner="$(tlsid_node_owner)" && [[ ${owner} != "${STATE}" ]]; then
    log "warning: the node is registered to ${owner}, not ${STATE}: cleaning this dir's processes and mounts only"
    global=false
  fi
  stop_component kubelet
  for c in coredns kube-proxy kube-scheduler kube-controller-manager; do stop_component "${c}"; done
  if [[ ${global} == true ]]; then
    remove_containers
    stop_component containerd
    kill_shims
    kill_cgroup_processes
  else
    stop_component containerd
  fi
  unmount_state || true
  if [[ ${global} == true ]]; then
    remove_network
    flush_iptables
    remove_cgroups
    restore_sysctls
    remove_host_files
    rm -f "${TLSID_NODE_CONTAINERD_SOCK}" "${TLSID_NODE_CONTAINERD_SOCK}.ttrpc" "${TLSID_NODE_REGISTRY}"
    rmdir "${TLSID_NODE_RUN_DIR}" 2>/dev/null || true
  fi
}

node_status() { # -> prints lines; exit 1 if the node is not Ready
  local out ready taints
  out="$(kubectl_admin get node "${NODE_NAME}" \
    -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}{"|"}{range .spec.taints[*]}{.key}:{.effect} {end}' 2>/dev/null)" || out="|"
  ready="${out%%|*}"
  taints="${out#*|}"
  echo "node ${NODE_NAME}: Ready=${ready:-unknown}${taints:+ taints: ${taints% }} ($(cat "${NODE_DIR}/node-ip" 2>/dev/null), pods ${POD_CIDR}, containerd ${TLSID_NODE_CONTAINERD_SOCK})"
  [[ ${ready} == True ]]
}
