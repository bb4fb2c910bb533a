#!/usr/bin/env bash
# Builds CoreDNS, the node-local DNS benchmark's peer, from the Go module proxy through the tools
# module hack/tools/coredns (the default build: every in-tree plugin, as CoreDNS releases it),
# once per version, into $NODENET_CACHE (default $HOME/.cache/nodenet). The first build takes
# about 5 minutes on 2 cores; later runs find the binary and return at once. Prints the path of
# the binary on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."
COREDNS_VERSION=$(awk '$1 == "github.com/coredns/coredns" { print $2 }' hack/tools/coredns/go.mod)
[ -n "$COREDNS_VERSION" ] || { echo "coredns-bin: no github.com/coredns/coredns in hack/tools/coredns/go.mod" >&2; exit 1; }
cache=${NODENET_CACHE:-$HOME/.cache/nodenet}
out="$cache/coredns-$COREDNS_VERSION"
if [ -x "$out/coredns" ]; then
	echo "$out/coredns"
	exit 0
fi

mkdir -p "$out.tmp"
export CGO_ENABLED=0
start=$(date +%s)
progress() { echo "coredns-bin: $* ($(( $(date +%s) - start ))s)" >&2; }
progress "building CoreDNS $COREDNS_VERSION with its default plugins (first time: ~5 min on 2 cores)"
log="$out.tmp/build.log"
# -v names each package as it compiles: the progress a long build needs.
if ! (cd hack/tools/coredns && go build -v -trimpath -ldflags "-s -w" -o "$out.tmp/coredns" github.com/coredns/coredns) 2>&1 |
	tee "$log" | awk '{ n++; if (n % 100 == 0) { printf "coredns-bin: %d packages compiled\n", n > "/dev/stderr" } }'; then
	tail -30 "$log" >&2
	exit 1
fi
[ -x "$out.tmp/coredns" ] || { echo "coredns-bin: coredns was not built" >&2; tail -30 "$log" >&2; exit 1; }
rm -rf "$out"
mv "$out.tmp" "$out"
progress "done: $out/coredns"
echo "$out/coredns"
