#!/usr/bin/env bash
# Install the Debian packages the project's scripts and test clusters need,
# and check the preinstalled Go and Rust toolchains. Idempotent and fast when
# everything is there: `apt-get update` runs (once) only if a package is
# missing.
#
# Usage: hack/install-deps.sh [--check]   (--check: report, install nothing)
set -euo pipefail

# shellcheck source=hack/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PACKAGES=(
  # cluster.sh: certificates, health polls, flock/setsid, kubeconfig
  openssl curl ca-certificates jq util-linux coreutils procps iproute2
  # single-node tier: container runtime, CNI, kube-proxy's needs
  containerd runc containernetworking-plugins iptables nftables conntrack kmod
  # interop tests: a JDK (keytool, javac) for the Java column, python3 for the driver; Go is on
  # the machine (curl and openssl are above)
  openjdk-17-jdk-headless python3
  # images without Docker: build OCI archives, import them into containerd
  buildah umoci
  # the static pause binary for the sandbox image (build/pause/linux/pause.c)
  gcc libc6-dev
)

# Minimum Go: etcd v3.6.16's go.mod says go 1.26.0, and builds use
# GOTOOLCHAIN=local (no toolchain downloads).
GO_MIN=1.26

check_only=false
case "${1:-}" in
  --check) check_only=true ;;
  "") ;;
  *) tlsid_die "usage: $0 [--check]" ;;
esac

# One dpkg-query for all packages keeps the no-op run fast.
installed=" $(dpkg-query -W -f='${Package}:${db:Status-Status} ' "${PACKAGES[@]}" 2>/dev/null || true) "
missing=()
for p in "${PACKAGES[@]}"; do
  [[ ${installed} == *" ${p}:installed "* ]] || missing+=("${p}")
done

if [[ ${#missing[@]} -eq 0 ]]; then
  tlsid_log "all ${#PACKAGES[@]} Debian packages present"
elif [[ ${check_only} == true ]]; then
  tlsid_log "missing Debian packages: ${missing[*]}"
else
  sudo=()
  if [[ ${EUID} -ne 0 ]]; then
    command -v sudo >/dev/null || tlsid_die "not root and no sudo: cannot install ${missing[*]}"
    sudo=(sudo)
  fi
  tlsid_log "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -qq
  # No recommends: buildah is used with the vfs driver, no fuse-overlayfs.
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  tlsid_log "installed: ${missing[*]}"
fi

# Toolchains come with the machine; say clearly when they do not.
status=0
if ! command -v go >/dev/null; then
  printf '%s: error: go not found in PATH; Go >= %s is needed to build the test cluster binaries\n' \
    "$(basename "$0")" "${GO_MIN}" >&2
  status=1
else
  gov="$(go env GOVERSION)" # e.g. go1.26.8
  gov="${gov#go}"
  if [[ "$(printf '%s\n%s\n' "${GO_MIN}" "${gov}" | sort -V | head -1)" != "${GO_MIN}" ]]; then
    printf '%s: error: go %s is too old; need >= %s (builds use GOTOOLCHAIN=local)\n' \
      "$(basename "$0")" "${gov}" "${GO_MIN}" >&2
    status=1
  else
    tlsid_log "go ${gov}"
  fi
fi
for t in cargo rustc; do
  if command -v "${t}" >/dev/null; then
    tlsid_log "$("${t}" --version)"
  else
    printf '%s: error: %s not found in PATH (Rust toolchain, normally from rustup)\n' "$(basename "$0")" "${t}" >&2
    status=1
  fi
done
if [[ ${check_only} == true && ${#missing[@]} -gt 0 ]]; then status=1; fi
exit "${status}"
