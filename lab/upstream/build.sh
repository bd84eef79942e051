#!/usr/bin/env bash
# Builds the upstream binaries the real-cluster lab runs, from the pinned wrapper modules
# next to this script (kubernetes/, etcd/, containerd/: go.mod + go.sum only).
#
# Output: ${SELFHEAL_UPSTREAM_CACHE:-/var/cache/selfheal-lab/upstream}/<key>/bin, where <key>
# names the three pinned versions and the Go version. A finished build leaves a stamp file;
# a second run with the same pins only checks it and returns at once.
# The last line on stdout is always the bin directory (progress goes to stderr).
#
# `build.sh --check` builds nothing: it prints the bin dir if the cache is complete and
# fails otherwise (tests use it so they never start a 17-minute build on their own).
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

if complete; then
  log "up to date: $key"
  printf '%s\n' "$bin"
  exit 0
fi
if [[ ${1:-} == --check ]]; then
  log "not built: $bin (run $here/build.sh)"
  exit 1
fi

mkdir -p "$cache_root"
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
printf '%s\n' "$bin"
