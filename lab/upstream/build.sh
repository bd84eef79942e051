#!/usr/bin/env bash
# Builds the upstream binaries the real-cluster lab runs, from the pinned wrapper modules
# next to this script (kubernetes/, etcd/, containerd/, kube-state-metrics/: go.mod + go.sum
# only).
#
# Output: ${SELFHEAL_UPSTREAM_CACHE:-/var/cache/selfheal-lab/upstream}/<key>/bin, where <key>
# names the three pinned versions and the Go version. A finished build leaves a stamp file;
# a second run with the same pins only checks it and returns at once.
# kube-state-metrics (the comparison, not part of the cluster) has a cache dir and stamp of
# its own, <cache root>/ksm-<version>_<go>/bin, so its pin never changes the cluster's key.
# The default run builds both (whichever is missing). The last line on stdout is always the
# cluster's bin directory (progress goes to stderr).
#
# `build.sh --check` builds nothing: it prints the bin dir if the cache is complete and
# fails otherwise (tests use it so they never start a 17-minute build on their own).
# `build.sh --check-ksm` is the same for kube-state-metrics: it prints its bin dir or fails.
#
# Environment: SELFHEAL_UPSTREAM_CACHE (cache root), GOFLAGS (default "-p=2 -buildvcs=false").
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export GOTOOLCHAIN=local
export GOFLAGS="${GOFLAGS:--p=2 -buildvcs=false}"
export CGO_ENABLED=0

log() { printf 'build.sh: %s\n' "$*" >&2; }

modver() { # <wrapper dir> <module path>
  go -C "$here/$1" list -m -f '{{.Version}}' "$2"
}

k8s_v=$(modver kubernetes k8s.io/kubernetes)
etcd_v=$(modver etcd go.etcd.io/etcd/server/v3)
ctrd_v=$(modver containerd github.com/containerd/containerd/v2)
go_v=$(go env GOVERSION)

cache_root=${SELFHEAL_UPSTREAM_CACHE:-/var/cache/selfheal-lab/upstream}
key="k8s-${k8s_v}_etcd-${etcd_v}_containerd-${ctrd_v}_${go_v}"
out="$cache_root/$key"
bin="$out/bin"
stamp="$out/STAMP"

binaries=(kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl kube-proxy
  etcd containerd containerd-shim-runc-v2 ctr)

complete() {
  [[ -f $stamp ]] || return 1
  local b
  for b in "${binaries[@]}"; do [[ -x $bin/$b ]] || return 1; done
}

# kube-state-metrics: its own key and stamp (see the top).
ksm_v=$(modver kube-state-metrics k8s.io/kube-state-metrics/v2)
ksm_key="ksm-${ksm_v}_${go_v}"
ksm_out="$cache_root/$ksm_key"
ksm_bin="$ksm_out/bin"
ksm_stamp="$ksm_out/STAMP"

ksm_complete() {
  [[ -f $ksm_stamp && -x $ksm_bin/kube-state-metrics ]]
}

case ${1:-} in
  --check)
    if complete; then
      log "up to date: $key"
      printf '%s\n' "$bin"
      exit 0
    fi
    log "not built: $bin (run $here/build.sh)"
    exit 1
    ;;
  --check-ksm)
    if ksm_complete; then
      log "up to date: $ksm_key"
      printf '%s\n' "$ksm_bin"
      exit 0
    fi
    log "not built: $ksm_bin (run $here/build.sh)"
    exit 1
    ;;
  "") ;;
  *)
    log "unknown argument: $1 (usage: build.sh [--check | --check-ksm])"
    exit 2
    ;;
esac

mkdir -p "$cache_root"

build_cluster() {
  tmp=$(mktemp -d "$cache_root/.build-XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  mkdir -p "$tmp/bin"

  # Kubernetes: ldflags as upstream's hack/lib/version.sh (client-go and component-base version
  # variables) and hack/lib/golang.sh (-trimpath, -s -w, tags selinux,notest,grpcnotrace).
  # All six binaries in one `go build` so they share one compile.
  major=${k8s_v#v}; major=${major%%.*}
  minor=${k8s_v#v*.}; minor=${minor%%.*}
  build_date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  kl=""
  for p in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
    kl="$kl -X $p.gitVersion=$k8s_v -X $p.gitMajor=$major -X $p.gitMinor=$minor"
    kl="$kl -X $p.gitTreeState=clean -X $p.buildDate=$build_date"
  done
  log "building kubernetes $k8s_v"
  go -C "$here/kubernetes" build -trimpath -tags selinux,notest,grpcnotrace \
    -ldflags "-s -w $kl" -o "$tmp/bin/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubelet \
    k8s.io/kubernetes/cmd/kubectl k8s.io/kubernetes/cmd/kube-proxy

  # etcd: the server module's root package is its main; its version is a constant of api/v3.
  log "building etcd $etcd_v"
  go -C "$here/etcd" build -trimpath -ldflags "-s -w" -o "$tmp/bin/etcd" go.etcd.io/etcd/server/v3

  # containerd: ldflags and tags as its Makefile (version.Version/Package; no_grpc for the shim).
  log "building containerd $ctrd_v"
  cpkg=github.com/containerd/containerd/v2
  cl="-s -w -X $cpkg/version.Version=$ctrd_v -X $cpkg/version.Package=$cpkg"
  go -C "$here/containerd" build -trimpath -tags no_btrfs -ldflags "$cl" -o "$tmp/bin/" \
    $cpkg/cmd/containerd $cpkg/cmd/ctr
  go -C "$here/containerd" build -trimpath -tags no_btrfs,no_grpc -ldflags "$cl" \
    -o "$tmp/bin/containerd-shim-runc-v2" $cpkg/cmd/containerd-shim-runc-v2

  printf 'kubernetes=%s\netcd=%s\ncontainerd=%s\ngo=%s\nbuilt=%s\n' \
    "$k8s_v" "$etcd_v" "$ctrd_v" "$go_v" "$build_date" >"$tmp/STAMP"
  rm -rf "$out"
  mv "$tmp" "$out"
  trap - EXIT
  chmod 755 "$out"
  log "built $key"
}

# kube-state-metrics: ldflags as its Makefile's build-local target: the
# github.com/prometheus/common/version variables (Version = the tag, Revision = the tag's
# commit, which the module proxy records as the version's Origin.Hash; Branch as `git
# rev-parse --abbrev-ref HEAD` prints it on the tag's detached checkout; BuildUser
# user@host; BuildDate) and pkg/app.ClientGoVersion (client-go's version in its build
# list), `-s -w`, CGO_ENABLED=0; no -trimpath and no tags, as upstream.
build_ksm() {
  local pc revision client_go build_date kl
  ksm_tmp=$(mktemp -d "$cache_root/.build-ksm-XXXXXX")
  trap 'rm -rf "$ksm_tmp"' EXIT
  mkdir -p "$ksm_tmp/bin"
  pc=github.com/prometheus/common/version
  revision=$(go -C "$here/kube-state-metrics" mod download -json "k8s.io/kube-state-metrics/v2@$ksm_v" |
    sed -n 's/^[[:space:]]*"Hash": "\([0-9a-f]*\)".*/\1/p')
  client_go=$(modver kube-state-metrics k8s.io/client-go)
  build_date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  kl="-s -w -X $pc.Version=$ksm_v -X $pc.Revision=${revision:-unknown} -X $pc.Branch=HEAD"
  kl="$kl -X $pc.BuildUser=$(id -un)@$(hostname) -X $pc.BuildDate=$build_date"
  kl="$kl -X k8s.io/kube-state-metrics/v2/pkg/app.ClientGoVersion=$client_go"
  log "building kube-state-metrics $ksm_v"
  go -C "$here/kube-state-metrics" build -ldflags "$kl" -o "$ksm_tmp/bin/kube-state-metrics" \
    k8s.io/kube-state-metrics/v2
  printf 'kube-state-metrics=%s\nrevision=%s\nclient-go=%s\ngo=%s\nbuilt=%s\n' \
    "$ksm_v" "${revision:-unknown}" "$client_go" "$go_v" "$build_date" >"$ksm_tmp/STAMP"
  rm -rf "$ksm_out"
  mv "$ksm_tmp" "$ksm_out"
  trap - EXIT
  chmod 755 "$ksm_out"
  log "built $ksm_key"
}

if complete; then
  log "up to date: $key"
else
  build_cluster
fi
if ksm_complete; then
  log "up to date: $ksm_key"
else
  build_ksm
fi
printf '%s\n' "$bin"
