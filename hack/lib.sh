# shellcheck shell=bash disable=SC2034 # variables used by the sourcing scripts
# Shared helpers for the hack/ scripts: pinned versions, cache layout, and the
# path of every binary built by hack/build-k8s.sh. Source it; it sets no
# shell options of its own.

TLSID_HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=hack/versions.env
. "${TLSID_HACK_DIR}/versions.env"

# Everything big (binaries, wrapper modules, clusters) lives outside the repo.
TLSID_CACHE="${TLSID_CACHE:-${HOME}/.cache/tlsid}"

# Sets accepted by build-k8s.sh. etcd comes first: every tier needs it.
TLSID_CONTROL_PLANE_COMPONENTS=(etcd kube-apiserver kubectl)
TLSID_NODE_COMPONENTS=(kube-controller-manager kube-scheduler kubelet kube-proxy coredns helm)
TLSID_ALL_COMPONENTS=("${TLSID_CONTROL_PLANE_COMPONENTS[@]}" "${TLSID_NODE_COMPONENTS[@]}")
TLSID_TOOLS=(kubernetes etcd helm coredns)

# tlsid_profile NAME: export TLSID_CLUSTER_DIR, TLSID_APISERVER_PORT and TLSID_ETCD_PORT for a
# control-plane profile of hack/profiles.tsv (the one table of state dirs and ports).
tlsid_profile() {
  local line
  line="$(awk -F'\t' -v p="$1" '$1 == p { print $2, $3, $4 }' "${TLSID_HACK_DIR}/profiles.tsv")"
  [[ -n ${line} ]] || { echo "unknown control-plane profile: $1 (see hack/profiles.tsv)" >&2; return 1; }
  read -r TLSID_APISERVER_PORT TLSID_ETCD_PORT TLSID_CLUSTER_DIR <<<"${line}"
  TLSID_CLUSTER_DIR="${TLSID_CACHE}/${TLSID_CLUSTER_DIR}"
  export TLSID_CLUSTER_DIR TLSID_APISERVER_PORT TLSID_ETCD_PORT
}

tlsid_log() { printf '%s: %s\n' "$(basename "$0")" "$*"; }
tlsid_die() { printf '%s: error: %s\n' "$(basename "$0")" "$*" >&2; exit 1; }

# tlsid_tool_of COMPONENT -> the wrapper module (tool) that builds it.
tlsid_tool_of() {
  case "$1" in
    kube-apiserver | kubectl | kube-controller-manager | kube-scheduler | kubelet | kube-proxy) echo kubernetes ;;
    etcd | helm | coredns) echo "$1" ;;
    *) return 1 ;;
  esac
}

# tlsid_tool_version TOOL -> pinned version.
tlsid_tool_version() {
  case "$1" in
    kubernetes) echo "${K8S_VERSION}" ;;
    etcd) echo "${ETCD_VERSION}" ;;
    helm) echo "${HELM_VERSION}" ;;
    coredns) echo "${COREDNS_VERSION}" ;;
    *) return 1 ;;
  esac
}

# tlsid_bin_dir TOOL -> version-keyed directory holding that tool's binaries.
tlsid_bin_dir() {
  local v
  v="$(tlsid_tool_version "$1")" || return 1
  echo "${TLSID_CACHE}/bin/$1-${v}"
}

# tlsid_bin COMPONENT -> absolute path of the binary (whether built or not).
tlsid_bin() {
  local tool
  tool="$(tlsid_tool_of "$1")" || { echo "unknown component: $1" >&2; return 1; }
  echo "$(tlsid_bin_dir "${tool}")/$1"
}

# tlsid_bin_path -> all bin dirs joined with ':' (for PATH).
tlsid_bin_path() {
  local t out=""
  for t in "${TLSID_TOOLS[@]}"; do out="${out:+${out}:}$(tlsid_bin_dir "$t")"; done
  echo "${out}"
}
