#!/usr/bin/env bash
# Builds the test cluster's control plane from the Go module proxy, once per version, into
# $NODENET_CACHE (default $HOME/.cache/nodenet): etcd, kube-apiserver, kube-controller-manager,
# kubectl and kube-proxy. The first build takes about 15 minutes on 2 cores; later runs find the
# binaries and return at once. Prints the directory holding them on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."
K8S_VERSION=v1.37.2
ETCD_VERSION=v3.6.16
cache=${NODENET_CACHE:-$HOME/.cache/nodenet}
out="$cache/cluster-k8s-$K8S_VERSION-etcd-$ETCD_VERSION"
bins=(etcd kube-apiserver kube-controller-manager kubectl kube-proxy)

complete=1
for b in "${bins[@]}"; do [ -x "$out/$b" ] || complete=0; done
if [ "$complete" = 1 ]; then
	echo "$out"
	exit 0
fi

mkdir -p "$out.tmp"
export CGO_ENABLED=0
start=$(date +%s)
progress() { echo "cluster-bins: $* ($(( $(date +%s) - start ))s)" >&2; }
progress "building kube-apiserver, kube-controller-manager, kubectl, kube-proxy $K8S_VERSION (first time: ~15 min on 2 cores)"
ldk="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1"
ldk="$ldk -X k8s.io/component-base/version.gitMinor=37 -X k8s.io/component-base/version.gitTreeState=clean"
# -v names each package as it compiles: the progress a 15-minute build needs.
log="$out.tmp/build.log"
if ! (cd hack/tools/k8s && go build -v -trimpath -ldflags "$ldk" -o "$out.tmp/" \
	k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
	k8s.io/kubernetes/cmd/kubectl k8s.io/kubernetes/cmd/kube-proxy) 2>&1 |
	tee "$log" | awk '{ n++; if (n % 200 == 0) { printf "cluster-bins: %d packages compiled\n", n > "/dev/stderr" } }'; then
	tail -30 "$log" >&2
	exit 1
fi
progress "building etcd $ETCD_VERSION"
(cd hack/tools/etcd && go build -trimpath -ldflags "-s -w" -o "$out.tmp/etcd" go.etcd.io/etcd/server/v3)
for b in "${bins[@]}"; do
	[ -x "$out.tmp/$b" ] || { echo "cluster-bins: $b was not built" >&2; exit 1; }
done
rm -rf "$out"
mv "$out.tmp" "$out"
progress "done: $out"
echo "$out"
