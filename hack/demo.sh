#!/usr/bin/env bash
# `make demo`: start a local control plane, run the tlsid controller against it, apply the
# examples and show what was issued. `hack/demo.sh down` stops it all.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "${TLSID_HACK_DIR}/.."

export TLSID_CLUSTER_DIR="${TLSID_CLUSTER_DIR:-${TLSID_CACHE}/cluster}"
pidfile="${TLSID_CLUSTER_DIR}/tlsid-controller.pid"
logfile="${TLSID_CLUSTER_DIR}/tlsid-controller.log"
listen="127.0.0.1:${TLSID_DEMO_METRICS_PORT:-18080}"

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

if [[ "${1:-up}" == "down" ]]; then
  if [[ -f "${pidfile}" ]]; then
    kill "$(cat "${pidfile}")" 2>/dev/null || true
    rm -f "${pidfile}"
  fi
  hack/cluster.sh down
  exit 0
fi

say "Installing what the demo needs (cached after the first run)"
hack/install-deps.sh
hack/build-k8s.sh control-plane
kubectl="$(tlsid_bin kubectl)"

say "Building tlsid"
cargo build --release --locked
tlsid=target/release/tlsid

say "Starting etcd + kube-apiserver"
KUBECONFIG="$(hack/cluster.sh up | tail -n 1)"
export KUBECONFIG

say "Installing the TlsIdentity CRD from crds/"
"${kubectl}" apply --server-side -f crds/
"${kubectl}" wait --for condition=established --timeout=60s crd/tlsidentities.tlsid.dev
"${kubectl}" create namespace tlsid-system --dry-run=client -o yaml | "${kubectl}" apply -f - >/dev/null

say "Starting the controller (log: ${logfile})"
if [[ -f "${pidfile}" ]] && kill -0 "$(cat "${pidfile}")" 2>/dev/null; then
  kill "$(cat "${pidfile}")"; sleep 1
fi
POD_NAMESPACE=tlsid-system nohup "${tlsid}" controller --listen "${listen}" >"${logfile}" 2>&1 &
echo $! >"${pidfile}"
for _ in $(seq 1 100); do
  curl -fsS "http://${listen}/readyz" >/dev/null 2>&1 && break
  sleep 0.2
done
curl -fsS "http://${listen}/readyz" >/dev/null || { tail -20 "${logfile}"; exit 1; }

say "Applying examples/server-identity.yaml and examples/client-identity.yaml"
"${kubectl}" apply -f examples/server-identity.yaml -f examples/client-identity.yaml
"${kubectl}" wait --for condition=Ready --timeout=60s tlsidentity/orders-server tlsidentity/billing-client

say "An invalid identity is refused at admission"
"${kubectl}" apply -f examples/invalid/renew-before-too-long.yaml 2>&1 | sed 's/^/    /' || true

say "kubectl get tlsid -o wide"
"${kubectl}" get tlsid -A -o wide

say "The certificate in Secret orders-server-tls"
tmp="$(mktemp -d)"; trap 'rm -rf "${tmp}"' EXIT
"${kubectl}" get secret orders-server-tls -o jsonpath='{.data.tls\.crt}' | base64 -d >"${tmp}/tls.crt"
"${kubectl}" get secret orders-server-tls -o jsonpath='{.data.ca\.crt}' | base64 -d >"${tmp}/ca.crt"
openssl x509 -in "${tmp}/tls.crt" -noout -subject -issuer -serial -dates -ext subjectAltName,extendedKeyUsage | sed 's/^/    /'
printf '    openssl verify: '; openssl verify -CAfile "${tmp}/ca.crt" "${tmp}/tls.crt"

say "Events"
"${kubectl}" get events -n default --field-selector involvedObject.kind=TlsIdentity 2>/dev/null | sed 's/^/    /' || true

cat <<MSG

Try it:
  export KUBECONFIG=${KUBECONFIG}
  $(tlsid_bin kubectl) annotate tlsid orders-server tlsid.dev/renew=\$(date +%s) --overwrite   # rotate now
  $(tlsid_bin kubectl) describe tlsid orders-server
  curl -s http://${listen}/metrics | grep tlsid_certificate
Stop it: make demo-down
MSG
