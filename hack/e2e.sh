#!/usr/bin/env bash
# End to end on a real node (a stage of `make test`): start a single-node
# cluster (hack/cluster.sh up --node) in its own state dir, load the tlsid
# image built from the debug binary, `helm install` the chart, run the Rust
# test tests/e2e.rs (the mTLS demo: handshakes both ways, a rotation of both
# identities under load, an impostor, clients that never reload with and
# without restarts, a CA rollover under load and its control
# with every gate off), then `helm uninstall`, delete the
# namespaces and check that nothing is left behind: no object in the cluster
# and no container or pod network interface on the node. The cluster is always
# stopped on exit.
#
# Usage: hack/e2e.sh
# Environment:
#   TLSID_E2E_KEEP=1              leave the cluster running on exit (for a look
#                                 around: eval "$(TLSID_CLUSTER_DIR=... hack/cluster.sh env)")
#   TLSID_E2E_SYNC_FREQUENCY      kubelet syncFrequency (default 10s): bounds how
#                                 soon a renewed Secret reaches the pods; the
#                                 test asserts against it
# State dir and ports: profile e2e of hack/profiles.tsv.
# Needs root (the node tier does). Only one node cluster runs per machine: if
# another one (e.g. `make demo`'s) owns it, this fails and says which.
set -euo pipefail

# shellcheck source=hack/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "${TLSID_HACK_DIR}/.."

RELEASE=tlsid
SYSTEM_NS=tlsid-system
DEMO_NS=tlsid-demo
TIMEOUT=120s
# The CA rollover's --trust-propagation-delay (chart value ca.trustPropagationDelay,
# default 5m for a kubelet's default 1m syncFrequency). On this node a changed Secret
# reaches a pod's files on its next sync, every syncFrequency (10s) plus up to 50%
# jitter (the kubelet's Secret manager watches, so no cache TTL adds to it): at most
# ~15s; the demo pods look at their files every second (--reload-interval 1s). 30s
# covers that twice over and keeps the rollover step to about a minute. The test
# restores this value after its control (every gate off), so it is told it.
TRUST_PROPAGATION_DELAY=30s
INSTALL_VALUES=(--set image.pullPolicy=Never --set "ca.trustPropagationDelay=${TRUST_PROPAGATION_DELAY}")
# Own state dir and ports (hack/profiles.tsv), whatever the caller (hack/test.sh) exported.
tlsid_profile e2e
export TLSID_NODE_SYNC_FREQUENCY="${TLSID_E2E_SYNC_FREQUENCY:-10s}"
unset TLSID_APISERVER_BIND_ADDRESS

log() { printf 'e2e.sh: %s\n' "$*" >&2; }
die() { printf 'e2e.sh: error: %s\n' "$*" >&2; exit 1; }
stage() { printf '\n--- e2e: %s (%ss)\n' "$*" "${SECONDS}" >&2; }

[[ ${EUID} -eq 0 ]] || die "the node cluster needs root (containers, iptables, mounts)"

# One e2e at a time on this machine (there is one node anyway). The cluster's
# daemons never inherit fd 9 (cluster.sh closes it), so the lock ends with us.
mkdir -p "${TLSID_CACHE}"
exec 9>"${TLSID_CACHE}/e2e.lock"
if ! flock -n 9; then
  log "another hack/e2e.sh is running; waiting for it (up to 15 minutes)"
  flock -w 900 9 || die "another hack/e2e.sh holds ${TLSID_CACHE}/e2e.lock"
fi

down() {
  local status=$?
  if [[ -n ${TLSID_E2E_KEEP:-} ]]; then
    log "TLSID_E2E_KEEP set: cluster left running; stop it with TLSID_CLUSTER_DIR=${TLSID_CLUSTER_DIR} hack/cluster.sh down"
  else
    hack/cluster.sh down >/dev/null 2>&1 || log "warning: hack/cluster.sh down failed (TLSID_CLUSTER_DIR=${TLSID_CLUSTER_DIR})"
  fi
  exit "${status}"
}

stage "build"
# No-ops after `make test`'s `cargo test --all-targets`, except the e2e test, which
# --all-targets skips (test = false in Cargo.toml).
cargo build --locked --bin tlsid --test e2e
cargo clippy --locked --test e2e -- -D warnings
# The debug binary without its debug info (370 MB → 26 MB): same code, a
# quicker image import.
mkdir -p "${TLSID_CACHE}/e2e"
strip -o "${TLSID_CACHE}/e2e/tlsid.tmp" target/debug/tlsid
mv -f "${TLSID_CACHE}/e2e/tlsid.tmp" "${TLSID_CACHE}/e2e/tlsid"

stage "node cluster (${TLSID_CLUSTER_DIR}, kubelet syncFrequency ${TLSID_NODE_SYNC_FREQUENCY})"
# A leftover of an interrupted run goes first: the test starts from scratch.
hack/cluster.sh down >/dev/null 2>&1 || true
trap down EXIT
KUBECONFIG="$(hack/cluster.sh up --node | tail -n 1)"
export KUBECONFIG
kubectl="$(tlsid_bin kubectl)"
helm="$(tlsid_bin helm)"
k() { "${kubectl}" "$@"; }

stage "image and chart"
hack/image.sh tlsid "${TLSID_CACHE}/e2e/tlsid" >/dev/null
start=${SECONDS}
# The controller's namespace enforces the restricted Pod Security Standard (so does the demo's,
# examples/mtls-demo.yaml): every pod must be admitted under it.
k create namespace "${SYSTEM_NS}" --dry-run=client -o yaml | k apply -f - >/dev/null
k label namespace "${SYSTEM_NS}" --overwrite pod-security.kubernetes.io/enforce=restricted \
  pod-security.kubernetes.io/warn=restricted >/dev/null
"${helm}" install "${RELEASE}" charts/tlsid --namespace "${SYSTEM_NS}" \
  "${INSTALL_VALUES[@]}" --wait --timeout "${TIMEOUT}" >/dev/null
log "helm install: controller ready (webhook serving, caBundle in place) in $((SECONDS - start))s"

stage "test (tests/e2e.rs)"
# The test drives helm itself for the rollover's control (gates off, then back to these values).
TLSID_E2E_KUBECONFIG="${KUBECONFIG}" TLSID_E2E_KUBELET_SYNC_FREQUENCY="${TLSID_NODE_SYNC_FREQUENCY}" \
  TLSID_E2E_HELM="${helm}" TLSID_E2E_TRUST_PROPAGATION_DELAY="${TRUST_PROPAGATION_DELAY}" \
  cargo test --locked --test e2e -- --nocapture

stage "deletion keeps Secrets workloads mount (the garbage collector runs here)"
# Two identities: one with the default policy (Retain), and a control that opts in to deletion
# (Delete). The control's Secret is collected: that shows the garbage collector is running, so
# the kept Secret was kept by design, not by a missing collector.
k -n "${DEMO_NS}" apply -f - >/dev/null <<EOF
apiVersion: tlsid.dev/v1alpha1
kind: TlsIdentity
metadata: {name: gc-kept}
spec: {dnsNames: [gc-kept.${DEMO_NS}.svc]}
---
apiVersion: tlsid.dev/v1alpha1
kind: TlsIdentity
metadata: {name: gc-collected}
spec: {dnsNames: [gc-collected.${DEMO_NS}.svc], secretDeletionPolicy: Delete}
EOF
k -n "${DEMO_NS}" wait --for=condition=Ready tlsidentity/gc-kept tlsidentity/gc-collected --timeout "${TIMEOUT}" >/dev/null
k -n "${DEMO_NS}" delete tlsidentity gc-kept gc-collected --wait --timeout "${TIMEOUT}" >/dev/null
k -n "${DEMO_NS}" wait --for=delete secret/gc-collected-tls --timeout "${TIMEOUT}" >/dev/null ||
  die "control failed: the Secret of an identity with secretDeletionPolicy: Delete was not garbage-collected"
k -n "${DEMO_NS}" get secret gc-kept-tls >/dev/null ||
  die "deleting an identity deleted its Secret (secretDeletionPolicy defaults to Retain)"
log "identity deleted: its Secret kept; the control (Delete) collected by the garbage collector"

stage "uninstall keeps the CA and the Secrets; a reinstall adopts them without re-issuing"
ca_rv="$(k -n "${SYSTEM_NS}" get secret tlsid-ca -o jsonpath='{.metadata.resourceVersion}')"
serial_of() { k -n "${DEMO_NS}" get secret "$1" -o 'jsonpath={.metadata.annotations.tlsid\.dev/serial}'; }
server_serial="$(serial_of demo-server-tls)"
"${helm}" uninstall "${RELEASE}" --namespace "${SYSTEM_NS}" --wait --timeout "${TIMEOUT}" >/dev/null
k -n "${SYSTEM_NS}" get secret tlsid-ca >/dev/null || die "helm uninstall deleted the CA Secret"
k -n "${DEMO_NS}" get secret demo-server-tls demo-client-tls gc-kept-tls >/dev/null ||
  die "helm uninstall deleted identity Secrets that workloads mount"
"${helm}" install "${RELEASE}" charts/tlsid --namespace "${SYSTEM_NS}" \
  "${INSTALL_VALUES[@]}" --wait --timeout "${TIMEOUT}" >/dev/null
k -n "${DEMO_NS}" wait --for=condition=Ready tlsidentity/demo-server --timeout "${TIMEOUT}" >/dev/null
[[ "$(k -n "${SYSTEM_NS}" get secret tlsid-ca -o jsonpath='{.metadata.resourceVersion}')" == "${ca_rv}" ]] ||
  die "the reinstall changed the CA Secret"
[[ "$(serial_of demo-server-tls)" == "${server_serial}" ]] ||
  die "the reinstall re-issued a valid certificate"
log "uninstall kept the CA and the Secrets; the reinstall found the same CA and re-issued nothing"

stage "uninstall, delete the CRD (the Secrets stay), delete the namespaces, look for orphans"
start=${SECONDS}
"${helm}" uninstall "${RELEASE}" --namespace "${SYSTEM_NS}" --wait --timeout "${TIMEOUT}" >/dev/null
# The CRD stays on uninstall by design (crds.keep=true in values.yaml).
[[ "$(k get crd tlsidentities.tlsid.dev -o jsonpath='{.metadata.annotations.helm\.sh/resource-policy}')" == keep ]] ||
  die "the TlsIdentity CRD is gone or lost its helm.sh/resource-policy=keep annotation"
# Deleting the CRD deletes every identity; the Secrets workloads mount stay (no owner reference
# by default: the control above showed the garbage collector acts on those that have one).
k delete crd tlsidentities.tlsid.dev tlsidentitypolicies.tlsid.dev tlsauthorities.tlsid.dev --wait --timeout "${TIMEOUT}" >/dev/null
k -n "${DEMO_NS}" get secret demo-server-tls demo-client-tls >/dev/null ||
  die "deleting the CRD deleted identity Secrets that workloads mount"
k -n "${SYSTEM_NS}" get secret tlsid-ca >/dev/null || die "deleting the CRD deleted the CA Secret"
log "CRD deleted: identity Secrets and the CA kept"
# With the controller gone, the demo must still go away with its namespace:
# nothing of ours may block deletion (no finalizers) or survive it.
k delete namespace "${DEMO_NS}" "${DEMO_NS}-other" "${SYSTEM_NS}" --wait --timeout "${TIMEOUT}" >/dev/null
log "helm uninstall + CRD and namespace deletion: $((SECONDS - start))s"

# Every listable object in the cluster whose name, namespace or labels
# mention tlsid, but the node's own (its Node, CSINode and Lease are named
# tlsid-node, CoreDNS's RBAC tlsid:coredns).
leftovers() {
  local kinds
  kinds="$(k api-resources --verbs=list -o name | grep -v '^events' | paste -sd, -)"
  k get "${kinds}" --all-namespaces --ignore-not-found \
    -o 'jsonpath={range .items[*]}{.kind}/{.metadata.namespace}/{.metadata.name} {.metadata.labels}{"\n"}{end}' 2>/dev/null |
    grep -i tlsid |
    grep -vE '^(Node|CSINode)//tlsid-node |^Lease/kube-node-lease/tlsid-node |^ClusterRole(Binding)?//tlsid:coredns ' || true
}
# The apiserver drops the CRD's APIService on its own schedule: wait a little.
deadline=$((SECONDS + 30))
until [[ -z "$(leftovers)" ]]; do
  ((SECONDS < deadline)) || die "left behind after uninstall and namespace deletion:"$'\n'"$(leftovers)"
  sleep 1
done

# On the node: the pods' containers stopped and their veths gone (the kubelet
# tears pods down asynchronously, so wait for it).
node_leftovers() {
  ctr --address /run/tlsid-node/containerd.sock -n k8s.io tasks ls 2>/dev/null | awk 'NR > 1 && $3 == "RUNNING" { print "task " $1 }'
  ip -o link show master tlsid0 2>/dev/null | awk -F': ' '{ print "veth " $2 }'
}
deadline=$((SECONDS + 60))
until [[ -z "$(node_leftovers)" ]]; do
  ((SECONDS < deadline)) || die "left running on the node 60s after the pods were deleted:"$'\n'"$(node_leftovers)"
  sleep 1
done
log "no orphans: no tlsid object in the cluster, no container running and no pod interface on the node"
stage "done"
