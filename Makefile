# nodenet — build, test and demo. `sudo make demo` and `sudo make test` are the two commands of the
# README; both install what they need (Debian packages, Go tools through hack/tools).

GO        ?= go
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X main.version=$(VERSION)
BIN       := bin
TOOLS     := $(GO) tool -modfile=hack/tools/go.mod
# Heavy builds (benchmark peers, later the control plane) are cached here between runs.
export NODENET_CACHE ?= $(HOME)/.cache/nodenet

# Debian packages the tests and the demo run (ip, nft, ping, dig), and those whose programs
# e2e/realnode/images copies into the real-node test images (its MissingPackages).
DEB_PACKAGES := iproute2 nftables iputils-ping dnsutils netcat-openbsd socat curl busybox-static nginx procps
DEB_COMMANDS := ip nft ping dig nc.openbsd socat curl busybox nginx ps

.PHONY: all build deps lint test test-unit test-e2e demo demo-shell demo-down real-cluster real-cluster-shell real-cluster-down conformance conformance-all bench bench-cni bench-proxy bench-dns clean cluster-bins node-bins

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/nodenet .
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/nodenet-cni ./cmd/nodenet-cni

# deps installs the Debian packages only when one of their commands is missing, so a prepared
# machine needs no package index.
deps:
	@missing=""; for c in $(DEB_COMMANDS); do command -v $$c >/dev/null 2>&1 || missing="$$missing $$c"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages for:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEB_PACKAGES); \
	fi

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(TOOLS) staticcheck ./...

# Unit tests (race detector) and the root-only suites: kernel tests in namespaces they create and
# the end-to-end suite driving real daemons through libcni.
test: deps build lint
	NODENET_CLUSTER_BIN_DIR=$$(hack/cluster-bins.sh) && export NODENET_CLUSTER_BIN_DIR && \
	NODENET_NODE_BIN_DIR=$$(hack/node-bins.sh) && export NODENET_NODE_BIN_DIR && \
	NODENET_BIN_DIR=$(CURDIR)/$(BIN) $(TOOLS) gotestsum --format testname -- -race -count=1 -timeout 30m ./...

# The test cluster's control plane (etcd, kube-apiserver, kube-controller-manager, kubectl) and the
# kube-proxy benchmark peer, built from the Go module proxy once and cached in $(NODENET_CACHE).
cluster-bins:
	hack/cluster-bins.sh

# A real node's binaries for the real-node test harness (kubelet, kube-scheduler, e2e.test,
# agnhost, containerd, ctr, containerd-shim-runc-v2, runc with seccomp), built from the Go module
# proxy once and cached in $(NODENET_CACHE).
node-bins:
	hack/node-bins.sh

test-unit:
	$(GO) test -race -count=1 ./config/ ./ipam/ ./cniexec/...

test-e2e: deps build
	NODENET_CLUSTER_BIN_DIR=$$(hack/cluster-bins.sh) && export NODENET_CLUSTER_BIN_DIR && \
	NODENET_BIN_DIR=$(CURDIR)/$(BIN) $(GO) test -count=1 -v -timeout 30m ./e2e/

# The seed article's lab on a 2-node cluster in network namespaces. It keeps running afterwards:
# demo-shell opens kubectl against it, demo-down removes every namespace, process and file.
demo: deps build
	@dir=$$(hack/cluster-bins.sh) && \
	$(GO) build -o $(BIN)/nodenet-demo ./hack/demo && \
	$(BIN)/nodenet-demo up --bin $(CURDIR)/$(BIN) --cluster-bin $$dir

# A cluster of real nodes (kubelet + containerd + runc in namespaces) with nodenet installed by
# `kubectl apply -f deploy/`; real-cluster-shell opens kubectl against it, real-cluster-down removes
# it. conformance runs the upstream [sig-network] [Conformance] specs against it (starting one for
# the run if none is up; about 30 minutes), conformance-all adds [Serial] and [Disruptive]; the
# JUnit report is kept in _artifacts/conformance.
REALCLUSTER = cluster=$$(hack/cluster-bins.sh) && nodes=$$(hack/node-bins.sh) && coredns=$$(hack/coredns-bin.sh) && \
	$(GO) build -o $(BIN)/nodenet-realcluster ./hack/realcluster && \
	$(BIN)/nodenet-realcluster

REALCLUSTER_FLAGS = --bin $(CURDIR)/$(BIN) --cluster-bin $$cluster --node-bin $$nodes --coredns $$coredns

real-cluster: deps build
	@$(REALCLUSTER) up $(REALCLUSTER_FLAGS)

real-cluster-shell:
	@$(GO) build -o $(BIN)/nodenet-realcluster ./hack/realcluster && $(BIN)/nodenet-realcluster shell

real-cluster-down:
	@$(GO) build -o $(BIN)/nodenet-realcluster ./hack/realcluster && $(BIN)/nodenet-realcluster down

conformance: deps build
	@$(REALCLUSTER) conformance $(REALCLUSTER_FLAGS)

conformance-all: deps build
	@$(REALCLUSTER) conformance --all $(REALCLUSTER_FLAGS)

demo-shell:
	@$(GO) build -o $(BIN)/nodenet-demo ./hack/demo && $(BIN)/nodenet-demo shell

demo-down:
	@$(GO) build -o $(BIN)/nodenet-demo ./hack/demo && $(BIN)/nodenet-demo down

# The benchmarks of bench/RESULTS.md, each against its peer in the same run: bench-cni (issue 2,
# reference bridge + host-local; e.g. make bench-cni BENCH_FLAGS=--rounds=5) and bench-proxy
# (issue 4, kube-proxy --proxy-mode=nftables against the same API server; about 15 minutes on 2
# cores; e.g. make bench-proxy BENCH_PROXY_FLAGS="--scales=1000 --rounds=1") and bench-dns (issue
# 5, CoreDNS as NodeLocal DNSCache + kubernetes plugin against the same API server; about 25
# minutes; e.g. make bench-dns BENCH_DNS_FLAGS="--scales=10 --generator=dnsperf").
bench: bench-cni bench-proxy bench-dns

bench-cni: deps build
	$(GO) run ./bench/cni --bin $(CURDIR)/$(BIN) $(BENCH_FLAGS)

bench-proxy: deps build
	@dir=$$(hack/cluster-bins.sh) && \
	$(GO) run ./bench/proxy --bin $(CURDIR)/$(BIN) --cluster-bin $$dir $(BENCH_PROXY_FLAGS)

# dnsperf (for --generator=dnsperf) is installed here rather than in deps: only this benchmark
# uses it.
bench-dns: deps build
	@command -v dnsperf >/dev/null 2>&1 || { echo "installing Debian package dnsperf"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dnsperf; }
	@dir=$$(hack/cluster-bins.sh) && coredns=$$(hack/coredns-bin.sh) && \
	$(GO) run ./bench/dns --bin $(CURDIR)/$(BIN) --cluster-bin $$dir --coredns $$coredns $(BENCH_DNS_FLAGS)

clean:
	rm -rf $(BIN)
