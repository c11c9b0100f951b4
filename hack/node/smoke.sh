#!/usr/bin/env bash
# Smoke test of a single-node cluster (hack/cluster.sh up --node): pods run
# our images, reach each other through a ClusterIP Service by its DNS name,
# and reach the apiserver through the `kubernetes` Service with their
# service-account token.
#
# Usage: hack/node/smoke.sh [TLSID_BINARY]
#   Imports the nettest image (hack/image.sh nettest) and the tlsid image
#   (hack/image.sh tlsid [TLSID_BINARY], skipped when no binary is given and
#   target/release/tlsid does not exist), then runs in namespace tlsid-smoke:
#     tlsid      /tlsid --version as uid 65532 with a read-only root filesystem
#     web        nettest serve, behind Service `web` (port 80 -> 8080)
#     client     nettest get http://web.tlsid-smoke.svc.cluster.local/
#     kube       nettest kube: /version via 10.0.0.1:443 and
#                kubernetes.default.svc.cluster.local, and a SelfSubjectReview
#   The namespace is deleted at the end (kept with TLSID_SMOKE_KEEP=1).
# Environment: TLSID_CLUSTER_DIR (as for cluster.sh), TLSID_SMOKE_TIMEOUT (120 s).
set -euo pipefail

HACK="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROOT="$(cd "${HACK}/.." && pwd)"
NS=tlsid-smoke
TIMEOUT="${TLSID_SMOKE_TIMEOUT:-120}"

log() { printf 'smoke.sh: %s\n' "$*" >&2; }
die() { printf 'smoke.sh: error: %s\n' "$*" >&2; exit 1; }

# Our node cluster's kubeconfig (the images are imported into its containerd).
eval "$("${HACK}/cluster.sh" env)"
[[ -n ${CONTAINERD_ADDRESS:-} ]] || die "no node cluster in ${TLSID_CLUSTER_DIR:-the default cluster dir}: run hack/cluster.sh up --node"

bin="${1:-${ROOT}/target/release/tlsid}"
with_tlsid=false
if [[ -f ${bin} ]]; then
  tlsid_image="$("${HACK}/image.sh" tlsid "${bin}")"
  with_tlsid=true
else
  log "no ${bin}: skipping the tlsid pod"
fi
nettest_image="$("${HACK}/image.sh" nettest)"

kubectl delete namespace "${NS}" --ignore-not-found --wait=true >/dev/null
kubectl create namespace "${NS}" >/dev/null
# The pods as the chart runs the controller: non-root, nothing writable.
security='
    securityContext:
      runAsNonRoot: true
      allowPrivilegeEscalation: false
      readOnlyRootFilesystem: true
      capabilities: { drop: [ALL] }
      seccompProfile: { type: RuntimeDefault }'
pod() { # NAME IMAGE ARGS-JSON
  cat <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: $1
  namespace: ${NS}
  labels: { app: $1 }
spec:
  restartPolicy: Never
  containers:
  - name: main
    image: $2
    imagePullPolicy: Never
    args: $3${security}
---
EOF
}
{
  if [[ ${with_tlsid} == true ]]; then pod tlsid "${tlsid_image}" '["--version"]'; fi
  pod web "${nettest_image}" '["serve", ":8080"]'
  pod client "${nettest_image}" '["get", "http://web.tlsid-smoke.svc.cluster.local/", "90s"]'
  pod kube "${nettest_image}" '["kube", "90s"]'
  cat <<EOF
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: ${NS}
spec:
  selector: { app: web }
  ports:
  - port: 80
    targetPort: 8080
EOF
} | kubectl apply -f - >/dev/null

status=0
check() { # POD
  if kubectl -n "${NS}" wait "pod/$1" --for=jsonpath='{.status.phase}'=Succeeded --timeout="${TIMEOUT}s" >/dev/null 2>&1; then
    log "$1: Succeeded: $(kubectl -n "${NS}" logs "$1" 2>&1 | tr '\n' ' ')"
  else
    log "$1: FAILED (phase $(kubectl -n "${NS}" get pod "$1" -o 'jsonpath={.status.phase}'))"
    kubectl -n "${NS}" describe pod "$1" | tail -20 >&2
    kubectl -n "${NS}" logs "$1" >&2 || true
    status=1
  fi
}
if [[ ${with_tlsid} == true ]]; then check tlsid; fi
check client
check kube
if [[ ${status} -eq 0 ]]; then
  log "all checks passed"
fi
if [[ -z ${TLSID_SMOKE_KEEP:-} ]]; then
  kubectl delete namespace "${NS}" --wait=false >/dev/null
fi
exit "${status}"
