#!/usr/bin/env bash
# Builds what a real Kubernetes node of the real-node test harness runs, from the Go module proxy,
# once per version, into $NODENET_CACHE (default $HOME/.cache/nodenet): kubelet, kube-scheduler,
# e2e.test and agnhost (tools module hack/tools/k8s), containerd, ctr and
# containerd-shim-runc-v2 (hack/tools/containerd) and runc with seccomp (hack/tools/runc; cgo,
# installs Debian's libseccomp-dev when its header is missing). Versions come from those modules'
# go.mod files. The first build takes about 20 minutes on 2 cores; later runs find the binaries and
# return at once. Prints the directory holding them on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."

# modver GO_MOD MODULE prints the version MODULE is required at in GO_MOD.
modver() {
	awk -v m="$2" '{ for (i = 1; i < NF; i++) if ($i == m && $(i + 1) ~ /^v/) { print $(i + 1); exit } }' "$1"
}
K8S_VERSION=$(modver hack/tools/k8s/go.mod k8s.io/kubernetes)
CONTAINERD_VERSION=$(modver hack/tools/containerd/go.mod github.com/containerd/containerd/v2)
RUNC_VERSION=$(modver hack/tools/runc/go.mod github.com/opencontainers/runc)
for v in K8S_VERSION CONTAINERD_VERSION RUNC_VERSION; do
	[ -n "${!v}" ] || { echo "node-bins: no $v in the go.mod files of hack/tools" >&2; exit 1; }
done
cache=${NODENET_CACHE:-$HOME/.cache/nodenet}
out="$cache/node-k8s-$K8S_VERSION-containerd-$CONTAINERD_VERSION-runc-$RUNC_VERSION"
bins=(kubelet kube-scheduler e2e.test agnhost containerd ctr containerd-shim-runc-v2 runc)

complete=1
for b in "${bins[@]}"; do [ -x "$out/$b" ] || complete=0; done
if [ "$complete" = 1 ]; then
	echo "$out"
	exit 0
fi

# runc's seccomp support links libseccomp through cgo.
if [ ! -e /usr/include/seccomp.h ]; then
	echo "node-bins: installing libseccomp-dev (runc's seccomp support)" >&2
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libseccomp-dev >&2
fi

mkdir -p "$out.tmp"
export CGO_ENABLED=0
start=$(date +%s)
step=$start
progress() { echo "node-bins: $* ($(( $(date +%s) - start ))s)" >&2; }
# stepdone NAME reports how long the step just finished took.
stepdone() {
	local now
	now=$(date +%s)
	progress "$1 built in $(( now - step ))s"
	step=$now
}
log="$out.tmp/build.log"
# build DIR ARGS... runs go ARGS in the tools module DIR, counting the packages -v names: the
# progress a long build needs. The whole output goes to $log; its tail to stderr on failure.
build() {
	local dir=$1
	shift
	if ! (cd "$dir" && go "$@") 2>&1 |
		tee -a "$log" | awk '{ n++; if (n % 200 == 0) { printf "node-bins: %d packages compiled\n", n > "/dev/stderr" } }'; then
		tail -30 "$log" >&2
		exit 1
	fi
}

minor=${K8S_VERSION#v1.}
minor=${minor%%.*}
ldk="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1"
ldk="$ldk -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
progress "building kubelet, kube-scheduler, e2e.test, agnhost $K8S_VERSION, containerd $CONTAINERD_VERSION, runc $RUNC_VERSION (first time: ~20 min on 2 cores)"
build hack/tools/k8s build -v -trimpath -ldflags "$ldk" -o "$out.tmp/kubelet" k8s.io/kubernetes/cmd/kubelet
stepdone kubelet
build hack/tools/k8s build -v -trimpath -ldflags "$ldk" -o "$out.tmp/kube-scheduler" k8s.io/kubernetes/cmd/kube-scheduler
stepdone kube-scheduler
build hack/tools/k8s build -v -trimpath -ldflags "$ldk" -o "$out.tmp/agnhost" k8s.io/kubernetes/test/images/agnhost
stepdone agnhost
# go test -c has no -v naming packages: compile what the test imports first, with -v, and link the
# test from the build cache.
e2e_imports=$(cd hack/tools/k8s && go list -f '{{join .TestImports " "}} {{join .Imports " "}}' k8s.io/kubernetes/test/e2e)
# shellcheck disable=SC2086 # one word per package
build hack/tools/k8s build -v -trimpath $e2e_imports
build hack/tools/k8s test -c -trimpath -ldflags "$ldk" -o "$out.tmp/e2e.test" k8s.io/kubernetes/test/e2e
stepdone e2e.test

ldc="-s -w -X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION"
build hack/tools/containerd build -v -trimpath -tags urfave_cli_no_docs -ldflags "$ldc" -o "$out.tmp/" \
	github.com/containerd/containerd/v2/cmd/containerd github.com/containerd/containerd/v2/cmd/ctr \
	github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2
stepdone "containerd, ctr, containerd-shim-runc-v2"

# runc embeds its version (its VERSION file); cgo for libcontainer's nsenter and libseccomp.
CGO_ENABLED=1 build hack/tools/runc build -v -trimpath -tags "seccomp urfave_cli_no_docs" -ldflags "-s -w" \
	-o "$out.tmp/runc" github.com/opencontainers/runc
stepdone runc

for b in "${bins[@]}"; do
	[ -x "$out.tmp/$b" ] || { echo "node-bins: $b was not built" >&2; exit 1; }
done
rm -rf "$out"
mv "$out.tmp" "$out"
progress "done: $out"
echo "$out"
