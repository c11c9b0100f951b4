# shellcheck shell=bash disable=SC2034 # variables used by the sourcing scripts
# Shared by hack/cluster.sh (`up --node`) and hack/image.sh: where the one
# single-node cluster of this machine keeps its machine-wide files. Source it
# after hack/lib.sh; it sets no shell options.
#
# Only one node cluster can run per machine (host network, iptables, fixed
# component ports), so its containerd socket has a fixed path that image.sh
# finds without knowing the cluster dir, and a registry file names the state
# dir of the cluster that owns the node.

# Machine-wide dir of the node cluster: containerd's socket and the registry.
# Made by `up --node`, removed by `down`.
TLSID_NODE_RUN_DIR=/run/tlsid-node
TLSID_NODE_CONTAINERD_SOCK="${TLSID_NODE_RUN_DIR}/containerd.sock"
# Holds the absolute state dir of the cluster that owns the node.
TLSID_NODE_REGISTRY="${TLSID_NODE_RUN_DIR}/cluster-dir"
# The CRI's containerd namespace (what kubelet sees).
TLSID_NODE_CONTAINERD_NS=k8s.io

# tlsid_node_owner -> state dir of the registered node cluster (exit 1 if none).
tlsid_node_owner() {
  local dir
  dir="$(cat "${TLSID_NODE_REGISTRY}" 2>/dev/null)" || return 1
  [[ -n ${dir} ]] || return 1
  echo "${dir}"
}

# tlsid_node_containerd_up -> exit 0 if the node cluster's containerd answers.
tlsid_node_containerd_up() {
  [[ -S ${TLSID_NODE_CONTAINERD_SOCK} ]] &&
    timeout 5 ctr --address "${TLSID_NODE_CONTAINERD_SOCK}" version >/dev/null 2>&1
}

# Snapshotter the node's containerd runs with (overlayfs, or native when
# overlay mounts fail): images must be unpacked for it on import.
tlsid_node_snapshotter() {
  local owner
  owner="$(tlsid_node_owner)" && cat "${owner}/node/containerd/snapshotter" 2>/dev/null || echo overlayfs
}
