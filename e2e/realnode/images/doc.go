// Package images builds, with no registry and no Docker engine, the container images a
// real-node test cluster (kubelet + containerd on this machine) needs, as one docker-archive
// tarball for `ctr -n k8s.io images import`: pause, the upstream e2e suite's agnhost, busybox,
// nginx and glibc-dns-testing under the exact names e2e.test v1.37.2 asks for, and nodenet's own
// image.
//
// The upstream images are Alpine or Debian builds pulled from a registry; here each is put
// together from files: the caller's binaries (agnhost, nodenet), a pause program compiled from
// this package's pause directory, and programs copied out of this machine's Debian installation
// with their shared libraries (see MissingPackages for the packages that must be installed).
// Every layer is written with fixed timestamps, so the same inputs give the same digests.
package images
