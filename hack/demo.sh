#!/usr/bin/env bash
# `make demo`: the mTLS demo on a real cluster. Builds tlsid and its image,
# `helm install`s the chart, applies examples/mtls-demo.yaml (a server and a
# client identity, each running a demo pod with its certificate mounted),
# waits until the pods are ready, and streams the client's handshake log.
#
# Usage: hack/demo.sh [up]   (make demo)
#        hack/demo.sh down   (make demo-down): remove the demo and the chart;
#                            stop the cluster if this script started it
#
# Which cluster:
#   - KUBECONFIG set and its cluster answers (kind, k3d, a real one): that
#     one, said so on the way. The image is loaded with `kind load` / `k3d
#     image import` when the context is kind-*/k3d-*; on other clusters set
#     TLSID_DEMO_IMAGE to an image the nodes can pull (the archive to push
#     is printed).
#   - otherwise: a local single-node cluster (hack/cluster.sh up --node; root;
#     state in ~/.cache/tlsid/demo-cluster, apiserver on :17443), which
#     `make demo-down` stops again.
#
# The log: on a terminal it streams until Ctrl-C; otherwise (piped, CI) for
# TLSID_DEMO_FOLLOW seconds (default 30), so `make demo | tee` ends.
#
# Environment: TLSID_DEMO_IMAGE (repo:tag, skip building/loading the image),
# TLSID_DEMO_FOLLOW, TLSID_DEMO_TIMEOUT (seconds per wait, default 180),
# TLSID_CACHE.
set -euo pipefail

# shellcheck source=hack/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "${TLSID_HACK_DIR}/.."

RELEASE=tlsid
SYSTEM_NS=tlsid-system
DEMO_NS=tlsid-demo
TIMEOUT="${TLSID_DEMO_TIMEOUT:-180}"
FOLLOW="${TLSID_DEMO_FOLLOW:-30}"
# The demo's own node cluster: apart from `make cluster` (6443) and the tests'.
# (profile demo of hack/profiles.tsv)
DEMO_CLUSTER_DIR="$(tlsid_profile demo && echo "${TLSID_CLUSTER_DIR}")"
DEMO_APISERVER_PORT="$(tlsid_profile demo && echo "${TLSID_APISERVER_PORT}")"
DEMO_ETCD_PORT="$(tlsid_profile demo && echo "${TLSID_ETCD_PORT}")"
# What `up` used, for `down`: KUBECONFIG=... and OWN_CLUSTER=true|false.
STATE_FILE="${TLSID_CACHE}/demo.env"

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
note() { printf '    %s\n' "$*"; }
die() { printf 'demo.sh: error: %s\n' "$*" >&2; exit 1; }

own_cluster() { # hack/cluster.sh with the demo's state dir and ports
  TLSID_CLUSTER_DIR="${DEMO_CLUSTER_DIR}" TLSID_APISERVER_PORT="${DEMO_APISERVER_PORT}" \
    TLSID_ETCD_PORT="${DEMO_ETCD_PORT}" hack/cluster.sh "$@"
}

kubectl_bin() {
  local bin
  bin="$(tlsid_bin kubectl)"
  [[ -x ${bin} ]] || hack/build-k8s.sh kubectl >&2
  echo "${bin}"
}

reachable() { # KUBECONFIG -> exit 0 if its current cluster answers
  KUBECONFIG="$1" timeout 15 "$(kubectl_bin)" --request-timeout=10s get --raw /version >/dev/null 2>&1
}

# --- down --------------------------------------------------------------------

cmd_down() {
  local KUBECONFIG="" OWN_CLUSTER=false
  # shellcheck disable=SC1090
  [[ -f ${STATE_FILE} ]] && . "${STATE_FILE}"
  if [[ ${OWN_CLUSTER} != true && -n ${KUBECONFIG} ]]; then
    if reachable "${KUBECONFIG}"; then
      export KUBECONFIG
      local kubectl helm
      kubectl="$(kubectl_bin)"
      helm="$(tlsid_bin helm)"
      say "Removing the demo from ${KUBECONFIG} (context $("${kubectl}" config current-context)); the cluster stays"
      "${kubectl}" delete -f examples/mtls-impostor.yaml --ignore-not-found --wait=false >/dev/null 2>&1 || true
      "${kubectl}" delete namespace "${DEMO_NS}" --ignore-not-found --timeout="${TIMEOUT}s"
      "${helm}" uninstall "${RELEASE}" --namespace "${SYSTEM_NS}" --ignore-not-found --wait --timeout "${TIMEOUT}s"
      "${kubectl}" delete namespace "${SYSTEM_NS}" --ignore-not-found --timeout="${TIMEOUT}s"
      note "The CRDs are kept (chart value crds.keep); remove them with:"
      note "  kubectl delete crd tlsidentities.tlsid.dev tlsidentitypolicies.tlsid.dev tlsauthorities.tlsid.dev"
    else
      echo "demo.sh: the cluster the demo used (${KUBECONFIG}) does not answer; nothing removed there"
    fi
  fi
  # The cluster this script started, whichever cluster the last `up` used.
  if [[ -d ${DEMO_CLUSTER_DIR} ]]; then
    say "Stopping the demo's cluster (${DEMO_CLUSTER_DIR})"
    own_cluster down
  elif [[ ! -f ${STATE_FILE} ]]; then
    echo "demo.sh: nothing to stop"
  fi
  rm -f "${STATE_FILE}"
}

# --- up ----------------------------------------------------------------------

# Load the image into the cluster; prints the image to install.
load_image() {
  local archive context
  if [[ -n ${TLSID_DEMO_IMAGE:-} ]]; then
    note "using TLSID_DEMO_IMAGE=${TLSID_DEMO_IMAGE} (not built here)" >&2
    echo "${TLSID_DEMO_IMAGE}"
    return
  fi
  archive="$(hack/image.sh archive tlsid target/release/tlsid)"
  if [[ ${OWN_CLUSTER} == true ]]; then
    hack/image.sh tlsid target/release/tlsid >/dev/null
  else
    context="$("${kubectl}" config current-context 2>/dev/null || true)"
    if [[ ${context} == kind-* ]] && command -v kind >/dev/null; then
      kind load image-archive "${archive}" --name "${context#kind-}" >&2
    elif [[ ${context} == k3d-* ]] && command -v k3d >/dev/null; then
      k3d image import "${archive}" --cluster "${context#k3d-}" >&2
    else
      note "cannot load images into context '${context}' from here: the nodes need" >&2
      note "docker.io/library/tlsid:dev (OCI archive ${archive}); import it on each node" >&2
      note "(ctr -n k8s.io images import FILE) or push it and rerun with TLSID_DEMO_IMAGE=REPO:TAG" >&2
    fi
  fi
  hack/image.sh name tlsid
}

cmd_up() {
  say "Installing what the demo needs (cached after the first run)"
  hack/install-deps.sh

  OWN_CLUSTER=true
  if [[ -n ${KUBECONFIG:-} ]] && [[ "$(realpath -m "${KUBECONFIG}")" != "$(realpath -m "${DEMO_CLUSTER_DIR}/kubeconfig")" ]]; then
    if reachable "${KUBECONFIG}"; then
      OWN_CLUSTER=false
    else
      note "KUBECONFIG=${KUBECONFIG} does not answer: using a local cluster instead"
    fi
  fi
  hack/build-k8s.sh kubectl helm
  kubectl="$(tlsid_bin kubectl)"
  helm="$(tlsid_bin helm)"

  if [[ ${OWN_CLUSTER} == true ]]; then
    [[ ${EUID} -eq 0 ]] || die "a local node cluster needs root; run as root, or point KUBECONFIG at a cluster (kind, k3d, ...)"
    say "Starting a local single-node cluster (hack/cluster.sh up --node; first run builds Kubernetes, ~15 min)"
    KUBECONFIG="$(own_cluster up --node | tail -n 1)"
  else
    say "Using the cluster KUBECONFIG points at: ${KUBECONFIG} (context $("${kubectl}" config current-context))"
    note "the demo installs the chart (release ${RELEASE}, namespace ${SYSTEM_NS}) and namespace ${DEMO_NS} there"
  fi
  export KUBECONFIG
  printf 'KUBECONFIG=%q\nOWN_CLUSTER=%s\n' "${KUBECONFIG}" "${OWN_CLUSTER}" >"${STATE_FILE}"

  local image repo tag digest=""
  if [[ -z ${TLSID_DEMO_IMAGE:-} ]]; then
    say "Building tlsid (release) and its image"
    cargo build --release --locked
  else
    say "Image"
  fi
  image="$(load_image)"
  repo="${image%:*}"
  tag="${image##*:}"
  if [[ -z ${TLSID_DEMO_IMAGE:-} ]]; then
    digest="$(cat "$(hack/image.sh archive tlsid target/release/tlsid | sed 's/\.tar$/.digest/')")"
    note "${image} (${digest:0:19})"
  fi

  say "helm upgrade --install ${RELEASE} charts/tlsid -n ${SYSTEM_NS}"
  # The image's digest as a pod annotation: a rebuilt binary under the same
  # tag still rolls the controller.
  "${helm}" upgrade --install "${RELEASE}" charts/tlsid --namespace "${SYSTEM_NS}" --create-namespace \
    --set image.repository="${repo}" --set image.tag="${tag}" \
    --set-string "podAnnotations.tlsid\.dev/image-digest=${digest:-none}" \
    --wait --timeout "${TIMEOUT}s" >/dev/null ||
    die "the controller did not become ready; see: kubectl -n ${SYSTEM_NS} describe pods"
  "${kubectl}" -n "${SYSTEM_NS}" get pods -l app.kubernetes.io/instance="${RELEASE}"

  say "kubectl apply -f examples/mtls-demo.yaml"
  local existed=false
  "${kubectl}" get namespace "${DEMO_NS}" >/dev/null 2>&1 && existed=true
  "${kubectl}" apply -f examples/mtls-demo.yaml
  "${kubectl}" -n "${DEMO_NS}" wait --for=condition=Ready tlsidentity/demo-server tlsidentity/demo-client --timeout="${TIMEOUT}s"
  for d in demo-server-demo demo-client-demo; do
    "${kubectl}" -n "${DEMO_NS}" wait --for=create "deployment/${d}" --timeout="${TIMEOUT}s" >/dev/null
  done
  # Pods of an earlier run may hold an older image under the same tag.
  if [[ ${existed} == true ]]; then
    "${kubectl}" -n "${DEMO_NS}" rollout restart deployment/demo-server-demo deployment/demo-client-demo >/dev/null
  fi
  # The client is Ready after its first successful mTLS exchange.
  "${kubectl}" -n "${DEMO_NS}" rollout status deployment/demo-server-demo --timeout="${TIMEOUT}s"
  "${kubectl}" -n "${DEMO_NS}" rollout status deployment/demo-client-demo --timeout="${TIMEOUT}s"
  echo
  "${kubectl}" -n "${DEMO_NS}" get tlsidentities,pods

  local k="kubectl"
  [[ ${OWN_CLUSTER} == true ]] && k="$(tlsid_bin kubectl)"
  say "The demo client's handshake log"
  cat <<MSG
    Rotate both certificates now (the log shows the new serials, and no failure):
      export KUBECONFIG=${KUBECONFIG}
      ${k} -n ${DEMO_NS} annotate tlsid demo-server demo-client tlsid.dev/renew=\$(date +%s) --overwrite
    Watch an impostor (a client certificate from another CA) be rejected:
      ${k} apply -f examples/mtls-impostor.yaml && ${k} -n ${DEMO_NS} logs -f deploy/demo-server-demo
    The pods switch when the kubelet next refreshes the mounted Secret: within about 1 to 1.5 minutes.
    They also rotate on their own every ~7 minutes (10-minute certificates, renewed at 2/3).
MSG
  if [[ -t 1 ]]; then
    note "Ctrl-C stops following the log (the demo keeps running); make demo-down removes it."
    echo
    trap 'echo' INT
    "${kubectl}" -n "${DEMO_NS}" logs -f --tail=10 deployment/demo-client-demo || true
    trap - INT
  else
    note "Not a terminal: following the log for ${FOLLOW}s (TLSID_DEMO_FOLLOW). make demo-down removes the demo."
    echo
    # No colours in a file or a pipe.
    timeout "${FOLLOW}" "${kubectl}" -n "${DEMO_NS}" logs -f --tail=10 deployment/demo-client-demo |
      sed 's/\x1b\[[0-9;]*m//g' || true
  fi
  echo
  note "The demo is still running. Stop it: make demo-down"
}

case "${1:-up}" in
  up) cmd_up ;;
  down) cmd_down ;;
  -h | --help | help) sed -n '2,28s/^# \{0,1\}//p' "$0" ;;
  *) sed -n '7,9s/^# \{0,1\}//p' "$0" >&2; exit 2 ;;
esac
