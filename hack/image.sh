#!/usr/bin/env bash
# Container images without Docker or a registry: build OCI image archives of
# our own binaries and import them into the node cluster's containerd
# (hack/cluster.sh up --node). Archives are cached by content in
# ${TLSID_CACHE:-~/.cache/tlsid}/images/, so an unchanged image is neither
# rebuilt nor re-imported.
#
# Usage: hack/image.sh [--no-import] IMAGE [ARGS]
#   pause            the sandbox ("pause") image, built statically from
#                    build/pause/linux/pause.c of the pinned k8s.io/kubernetes
#                    module, named as containerd's sandbox_image expects
#   tlsid [BINARY]   the tlsid image (default binary: target/release/tlsid):
#                    /tlsid plus the shared libraries `ldd` lists, /etc/passwd,
#                    CA certificates; user 65532:65532, entrypoint /tlsid,
#                    command `controller` (as the Dockerfile's image)
#   nettest          test helper (hack/node/nettest, static Go): HTTP
#                    server/client, DNS lookup, apiserver check from pods
#   name IMAGE       print the image's name only
#   archive IMAGE [ARGS]  build only; print the archive path
#
# stdout: the image name (one line), e.g. docker.io/library/tlsid:dev;
# progress goes to stderr. The image is imported when the node cluster's
# containerd answers (its socket: /run/tlsid-node/containerd.sock), unless
# --no-import; without a node cluster it is only built (the archive loads
# elsewhere too: `ctr -n k8s.io images import FILE`, `kind load image-archive
# FILE`, `k3d image import FILE`).
#
# Environment:
#   TLSID_CACHE        cache root (default ~/.cache/tlsid)
#   TLSID_TLSID_IMAGE  name of the tlsid image (default docker.io/library/tlsid:dev)
#
# The images are plain OCI layouts written here (one uncompressed layer, files
# owned by root, mtimes zero), so the same inputs give the same digest.
set -euo pipefail

# shellcheck source=hack/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=hack/node/common.sh
. "${TLSID_HACK_DIR}/node/common.sh"

ROOT="$(cd "${TLSID_HACK_DIR}/.." && pwd)"
IMAGES="${TLSID_CACHE}/images"
TLSID_IMAGE="${TLSID_TLSID_IMAGE:-docker.io/library/tlsid:dev}"
NETTEST_IMAGE=docker.io/library/tlsid-nettest:dev
# Bumped when the layout written below changes: part of every cache key.
BUILDER_VERSION=1

log() { printf 'image.sh: %s\n' "$*" >&2; }
die() { printf 'image.sh: error: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,34s/^# \{0,1\}//p' "$0"; }

oci_arch() {
  case "$(uname -m)" in
    x86_64) echo amd64 ;;
    aarch64) echo arm64 ;;
    *) uname -m ;;
  esac
}

# Directory of the pinned k8s.io/kubernetes module (downloaded if missing).
k8s_module_dir() {
  local dir
  dir="$(cd / && GOTOOLCHAIN=local GOFLAGS=-mod=mod go mod download -json "k8s.io/kubernetes@${K8S_VERSION}" |
    jq -r '.Dir // empty')"
  [[ -n ${dir} && -f ${dir}/build/pause/linux/pause.c ]] ||
    die "no build/pause/linux/pause.c in k8s.io/kubernetes@${K8S_VERSION} (go mod download failed?)"
  echo "${dir}"
}

# The pause tag k/k's own build uses (build/pause/Makefile: TAG ?= 3.10.1).
# Read from the module when it is cached, else the value for 1.34.
pause_tag() {
  local mk tag=""
  mk="$(go env GOMODCACHE 2>/dev/null)/k8s.io/kubernetes@${K8S_VERSION}/build/pause/Makefile"
  [[ -f ${mk} ]] && tag="$(sed -n 's/^TAG ?= *//p' "${mk}")"
  echo "${tag:-3.10.1}"
}

image_name() {
  case "$1" in
    pause) echo "registry.k8s.io/pause:$(pause_tag)" ;;
    tlsid) echo "${TLSID_IMAGE}" ;;
    nettest) echo "${NETTEST_IMAGE}" ;;
    *) die "unknown image '$1' (pause, tlsid, nettest)" ;;
  esac
}

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# write_blob LAYOUT FILE -> moves FILE into LAYOUT's blobs, prints its digest.
write_blob() {
  local layout="$1" file="$2" d
  d="$(sha256_of "${file}")"
  mkdir -p "${layout}/blobs/sha256"
  mv -f "${file}" "${layout}/blobs/sha256/${d}"
  echo "${d}"
}

# build_archive NAME ROOTFS CONFIG_JSON OUT: an OCI image archive of one
# layer (ROOTFS) with the image config CONFIG_JSON (the "config" object).
build_archive() {
  local name="$1" rootfs="$2" config="$3" out="$4" work layout layer_d layer_size cfg_d cfg_size man_d man_size
  work="$(mktemp -d "${IMAGES}/.build.XXXXXX")"
  layout="${work}/layout"
  mkdir -p "${layout}"
  # Reproducible layer: sorted, root-owned, mtime 0.
  tar -C "${rootfs}" --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 \
    --format=gnu -cf "${work}/layer.tar" .
  layer_size="$(stat -c %s "${work}/layer.tar")"
  layer_d="$(write_blob "${layout}" "${work}/layer.tar")"
  jq -n --argjson config "${config}" --arg arch "$(oci_arch)" --arg diff "sha256:${layer_d}" '{
      created: "1970-01-01T00:00:00Z", architecture: $arch, os: "linux", config: $config,
      rootfs: { type: "layers", diff_ids: [$diff] },
      history: [{ created: "1970-01-01T00:00:00Z", created_by: "hack/image.sh" }]
    }' >"${work}/config.json"
  cfg_size="$(stat -c %s "${work}/config.json")"
  cfg_d="$(write_blob "${layout}" "${work}/config.json")"
  jq -n --arg cfg "sha256:${cfg_d}" --argjson cfg_size "${cfg_size}" \
    --arg layer "sha256:${layer_d}" --argjson layer_size "${layer_size}" '{
      schemaVersion: 2, mediaType: "application/vnd.oci.image.manifest.v1+json",
      config: { mediaType: "application/vnd.oci.image.config.v1+json", digest: $cfg, size: $cfg_size },
      layers: [{ mediaType: "application/vnd.oci.image.layer.v1.tar", digest: $layer, size: $layer_size }]
    }' >"${work}/manifest.json"
  man_size="$(stat -c %s "${work}/manifest.json")"
  man_d="$(write_blob "${layout}" "${work}/manifest.json")"
  # io.containerd.image.name: the full name `ctr images import` gives it;
  # org.opencontainers.image.ref.name: the tag, for other OCI tools.
  jq -n --arg man "sha256:${man_d}" --argjson man_size "${man_size}" --arg name "${name}" '{
      schemaVersion: 2, mediaType: "application/vnd.oci.image.index.v1+json",
      manifests: [{ mediaType: "application/vnd.oci.image.manifest.v1+json", digest: $man, size: $man_size,
        annotations: { "io.containerd.image.name": $name, "org.opencontainers.image.ref.name": ($name | sub(".*:"; "")) } }]
    }' >"${layout}/index.json"
  echo '{"imageLayoutVersion":"1.0.0"}' >"${layout}/oci-layout"
  tar -C "${layout}" --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 --format=gnu \
    -cf "${work}/image.tar" oci-layout index.json blobs
  echo "sha256:${man_d}" >"${out%.tar}.digest"
  mv -f "${work}/image.tar" "${out}"
  rm -rf "${work}"
}

# archive_path KIND KEY -> path of the archive for KEY.
archive_path() { echo "${IMAGES}/$1-${2:0:16}.tar"; }
# Remove the other archives of KIND (a cache of one image per kind), except
# those younger than 10 minutes: a concurrent image.sh may be importing one.
prune_archives() { # KIND KEEP
  local f
  while read -r f; do
    [[ ${f} != "$2" ]] || continue
    rm -f "${f}" "${f%.tar}.digest"
  done < <(find "${IMAGES}" -maxdepth 1 -name "$1-*.tar" -mmin +10)
}

# Minimal /etc for a non-root image.
write_etc() { # ROOTFS
  mkdir -p "$1/etc" "$1/tmp"
  chmod 1777 "$1/tmp"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$1/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' >"$1/etc/group"
  printf 'hosts: files dns\n' >"$1/etc/nsswitch.conf"
}

build_pause() {
  local src tag key out work
  src="$(k8s_module_dir)/build/pause/linux/pause.c"
  tag="$(pause_tag)"
  command -v gcc >/dev/null || die "gcc not found (run hack/install-deps.sh)"
  key="$(printf '%s\n' "${BUILDER_VERSION}" "${tag}" "${K8S_VERSION}" "$(sha256_of "${src}")" "$(gcc --version | head -1)" |
    sha256sum | cut -d' ' -f1)"
  out="$(archive_path pause "${key}")"
  if [[ ! -f ${out} ]]; then
    log "building pause ${tag} from ${src}"
    work="$(mktemp -d "${IMAGES}/.pause.XXXXXX")"
    mkdir -p "${work}/rootfs"
    # As build/pause/Makefile: gcc -Os -Wall -Werror -static -DVERSION=...
    gcc -Os -Wall -Werror -static -DVERSION="v${tag}-k8s-${K8S_VERSION}" -o "${work}/rootfs/pause" "${src}"
    strip "${work}/rootfs/pause"
    build_archive "$(image_name pause)" "${work}/rootfs" \
      '{"User":"65535:65535","Entrypoint":["/pause"],"WorkingDir":"/"}' "${out}"
    rm -rf "${work}"
    prune_archives pause "${out}"
  fi
  echo "${out}"
}

# The shared libraries BINARY needs (ldd), including the ELF interpreter.
needed_libs() { # BINARY
  local out
  out="$(ldd "$1" 2>&1)" || { [[ ${out} == *"not a dynamic executable"* || ${out} == *"statically linked"* ]] && return 0; die "ldd $1: ${out}"; }
  awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' <<<"${out}" | sort -u
}

build_tlsid() {
  local bin="${1:-${ROOT}/target/release/tlsid}" libs key out work lib
  [[ -f ${bin} ]] || die "${bin} not found: build it first (cargo build --release --bin tlsid)"
  [[ -x ${bin} ]] || die "${bin} is not executable"
  bin="$(realpath "${bin}")"
  mapfile -t libs < <(needed_libs "${bin}")
  # Key: the binary, each library (path and content), the CA bundle.
  key="$({
    echo "${BUILDER_VERSION} ${TLSID_IMAGE}"
    sha256_of "${bin}"
    for lib in "${libs[@]}"; do echo "${lib} $(sha256_of "${lib}")"; done
    [[ -f /etc/ssl/certs/ca-certificates.crt ]] && sha256_of /etc/ssl/certs/ca-certificates.crt
  } | sha256sum | cut -d' ' -f1)"
  out="$(archive_path tlsid "${key}")"
  if [[ ! -f ${out} ]]; then
    log "building ${TLSID_IMAGE} from ${bin} (libs: ${libs[*]:-none})"
    work="$(mktemp -d "${IMAGES}/.tlsid.XXXXXX")"
    mkdir -p "${work}/rootfs"
    write_etc "${work}/rootfs"
    install -m 0755 "${bin}" "${work}/rootfs/tlsid"
    for lib in "${libs[@]}"; do
      mkdir -p "${work}/rootfs$(dirname "${lib}")"
      cp -L "${lib}" "${work}/rootfs${lib}"
    done
    if [[ -f /etc/ssl/certs/ca-certificates.crt ]]; then
      mkdir -p "${work}/rootfs/etc/ssl/certs"
      cp -L /etc/ssl/certs/ca-certificates.crt "${work}/rootfs/etc/ssl/certs/"
    fi
    # As the Dockerfile's image (distroless/cc nonroot + /tlsid).
    build_archive "${TLSID_IMAGE}" "${work}/rootfs" '{
        "User": "65532:65532", "Entrypoint": ["/tlsid"], "Cmd": ["controller"], "WorkingDir": "/",
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"],
        "ExposedPorts": {"8080/tcp": {}},
        "Labels": {"org.opencontainers.image.title": "tlsid", "org.opencontainers.image.licenses": "Apache-2.0"}
      }' "${out}"
    rm -rf "${work}"
    prune_archives tlsid "${out}"
  fi
  echo "${out}"
}

build_nettest() {
  local src="${TLSID_HACK_DIR}/node/nettest" key out work
  command -v go >/dev/null || die "go not found"
  key="$(cat "${src}/go.mod" "${src}/main.go" <(echo "${BUILDER_VERSION}") <(go env GOVERSION) | sha256sum | cut -d' ' -f1)"
  out="$(archive_path nettest "${key}")"
  if [[ ! -f ${out} ]]; then
    log "building ${NETTEST_IMAGE} from ${src}"
    work="$(mktemp -d "${IMAGES}/.nettest.XXXXXX")"
    mkdir -p "${work}/rootfs"
    write_etc "${work}/rootfs"
    (cd "${src}" && CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-buildvcs=false \
      go build -trimpath -ldflags='-s -w' -o "${work}/rootfs/nettest" .)
    build_archive "${NETTEST_IMAGE}" "${work}/rootfs" \
      '{"User":"65532:65532","Entrypoint":["/nettest"],"Cmd":["serve"],"WorkingDir":"/","ExposedPorts":{"8080/tcp":{}}}' "${out}"
    rm -rf "${work}"
    prune_archives nettest "${out}"
  fi
  echo "${out}"
}

# import ARCHIVE NAME: into the node's containerd, unless it holds that
# exact manifest under NAME already.
import_archive() {
  local archive="$1" name="$2" want have snap
  want="$(cat "${archive%.tar}.digest")"
  have="$(ctr --address "${TLSID_NODE_CONTAINERD_SOCK}" -n "${TLSID_NODE_CONTAINERD_NS}" images ls "name==${name}" 2>/dev/null |
    awk 'NR > 1 { print $3 }')"
  if [[ ${have} == "${want}" ]]; then
    log "${name} (${want:0:19}) already in the node's containerd"
    return
  fi
  snap="$(tlsid_node_snapshotter)"
  ctr --address "${TLSID_NODE_CONTAINERD_SOCK}" -n "${TLSID_NODE_CONTAINERD_NS}" images import \
    --snapshotter "${snap}" "${archive}" >&2
  log "imported ${name} (${want:0:19}) into the node's containerd (${TLSID_NODE_CONTAINERD_SOCK})"
}

main() {
  local import=auto
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --no-import) import=never; shift ;;
      -h | --help | help) usage; return ;;
      *) break ;;
    esac
  done
  [[ $# -gt 0 ]] || { usage >&2; exit 2; }
  local what="$1"
  shift
  case "${what}" in
    name)
      [[ $# -eq 1 ]] || die "usage: image.sh name IMAGE"
      image_name "$1"
      return
      ;;
    archive)
      [[ $# -ge 1 ]] || die "usage: image.sh archive IMAGE [ARGS]"
      what="$1"
      shift
      import=archive
      ;;
  esac
  local name archive
  name="$(image_name "${what}")"
  case "${what}" in
    pause | nettest) [[ $# -eq 0 ]] || die "${what} takes no arguments" ;;
    tlsid) [[ $# -le 1 ]] || die "usage: image.sh tlsid [BINARY]" ;;
  esac
  for t in jq tar sha256sum; do command -v "${t}" >/dev/null || die "${t} not found (run hack/install-deps.sh)"; done
  mkdir -p "${IMAGES}"
  archive="$("build_${what}" "$@")"
  if [[ ${import} == archive ]]; then
    echo "${archive}"
    return
  fi
  log "${name}: ${archive}"
  if [[ ${import} == auto ]]; then
    if tlsid_node_containerd_up; then
      import_archive "${archive}" "${name}"
    else
      log "no node cluster running (hack/cluster.sh up --node): built only, not imported"
    fi
  fi
  echo "${name}"
}

main "$@"
