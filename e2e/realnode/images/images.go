package images

import (
	"archive/tar"
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// The references the archive holds. The upstream ones are what e2e.test v1.37.2 asks for
// (test/utils/image/manifest.go), so pods find them without a registry; NodenetRef is written
// fully qualified, the name containerd gives "nodenet/nodenet:dev".
const (
	PauseRef           = "registry.k8s.io/pause:3.10.2"
	AgnhostRef         = "registry.k8s.io/e2e-test-images/agnhost:2.66.1"
	BusyboxRef         = "registry.k8s.io/e2e-test-images/busybox:1.37.0-2"
	NginxRef           = "registry.k8s.io/e2e-test-images/nginx:1.27.0-2"
	NginxNewRef        = "registry.k8s.io/e2e-test-images/nginx:1.28.0-2"
	GlibcDNSTestingRef = "registry.k8s.io/e2e-test-images/glibc-dns-testing:2.1.1"
	NodenetRef         = "docker.io/nodenet/nodenet:dev"
)

// defaultPath is the PATH of the upstream images' bases (Alpine, Debian, busybox).
const defaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// image is one image of the archive: the references it is tagged with, its layers from the
// bottom up, and its run configuration. Images may share layer trees; the archive stores a
// shared layer once.
type image struct {
	refs   []string
	layers []*tree
	config v1.Config
}

// plan returns every image of the archive, with their filesystems described but nothing built:
// the pause binary is to be compiled to pausePath.
func plan(ctx context.Context, opts Options, pausePath string) ([]image, error) {
	base, err := userland()
	if err != nil {
		return nil, fmt.Errorf("userland: %w", err)
	}
	pause := newTree("pause", nil)
	if err := pause.add("/pause", &entry{typ: tar.TypeReg, mode: 0o755, src: pausePath, sum: pauseSum()}); err != nil {
		return nil, err
	}
	agnhost, err := agnhostTree(base, opts)
	if err != nil {
		return nil, fmt.Errorf("agnhost: %w", err)
	}
	busybox, err := busyboxTree(ctx)
	if err != nil {
		return nil, fmt.Errorf("busybox: %w", err)
	}
	nginx, err := nginxTree(base)
	if err != nil {
		return nil, fmt.Errorf("nginx: %w", err)
	}
	nodenet := newTree("nodenet", nil)
	for _, name := range []string{"nodenet", "nodenet-cni"} {
		if err := nodenet.copyProgram("/"+name, filepath.Join(opts.NodenetBinDir, name)); err != nil {
			return nil, fmt.Errorf("nodenet: %w", err)
		}
	}
	return []image{
		// Upstream pause is FROM scratch and runs as nobody's uid and gid.
		{refs: []string{PauseRef}, layers: []*tree{pause}, config: v1.Config{
			Entrypoint: []string{"/pause"}, User: "65535:65535",
		}},
		// Ports as upstream's Dockerfile exposes them: test-webserver, netexec, serve-hostname,
		// grpc-health-checking.
		{refs: []string{AgnhostRef}, layers: []*tree{base, agnhost}, config: v1.Config{
			Entrypoint: []string{"/agnhost"}, Cmd: []string{"pause"}, Env: []string{defaultPath},
			ExposedPorts: ports("80/tcp", "8080/tcp", "8081/tcp", "9376/tcp", "5000/tcp"),
		}},
		{refs: []string{BusyboxRef}, layers: []*tree{busybox}, config: v1.Config{
			Cmd: []string{"sh"}, Env: []string{defaultPath},
		}},
		// Both nginx tags are one image: the tests only need an HTTP server on port 80.
		{refs: []string{NginxRef, NginxNewRef}, layers: []*tree{base, nginx}, config: v1.Config{
			Entrypoint: []string{"/docker-entrypoint.sh"}, Cmd: []string{"nginx", "-g", "daemon off;"},
			Env: []string{defaultPath}, ExposedPorts: ports("80/tcp"), StopSignal: "SIGQUIT",
		}},
		// The DNS tests run `sh -c` loops of dig, getent, test and echo in it (test/e2e/network/
		// dns_common.go): the userland alone. Upstream is debian:bookworm-slim with dnsutils.
		{refs: []string{GlibcDNSTestingRef}, layers: []*tree{base}, config: v1.Config{
			Cmd: []string{"bash"}, Env: []string{defaultPath},
		}},
		// As the repository's Dockerfile builds it: static binaries FROM scratch.
		{refs: []string{NodenetRef}, layers: []*tree{nodenet}, config: v1.Config{
			Entrypoint: []string{"/nodenet"},
		}},
	}, nil
}

func ports(ps ...string) map[string]struct{} {
	m := make(map[string]struct{}, len(ps))
	for _, p := range ps {
		m[p] = struct{}{}
	}
	return m
}

// agnhostTree returns agnhost's own layer over the userland: the binary at /agnhost, the
// /agnhost-2 link the entrypoint tests run, the netexec upload directory, the porter and
// HTTPS-probe certificate, and CoreDNS at /coredns when the caller has one.
func agnhostTree(base *tree, opts Options) (*tree, error) {
	t := newTree("agnhost", base)
	progs := []string{opts.AgnhostPath}
	if err := t.copyProgram("/agnhost", opts.AgnhostPath); err != nil {
		return nil, err
	}
	if opts.CorednsPath != "" {
		if err := t.copyProgram("/coredns", opts.CorednsPath); err != nil {
			return nil, err
		}
		progs = append(progs, opts.CorednsPath)
	}
	// Both are static Go binaries as built for the cluster; a dynamic one still gets its libraries.
	if err := t.addLibraries(progs); err != nil {
		return nil, err
	}
	if err := t.symlink("/agnhost-2", "agnhost"); err != nil {
		return nil, err
	}
	if err := t.dir("/uploads", 0o755); err != nil {
		return nil, err
	}
	cert, key, err := localhostCert()
	if err != nil {
		return nil, err
	}
	if err := t.file("/localhost.crt", cert, 0o644); err != nil {
		return nil, err
	}
	if err := t.file("/localhost.key", key, 0o600); err != nil {
		return nil, err
	}
	return t, nil
}

// busyboxTree returns the busybox image: Debian's static busybox in /bin with a link for each
// of its applets, as upstream's busybox image has them — except /bin/sh, which is dash. Debian
// builds busybox's shell to run its own applets in preference to what PATH finds, which
// real-node runs found the tests trip on; dash resolves every command through PATH as the
// shells of the other images do.
func busyboxTree(ctx context.Context) (*tree, error) {
	t := newTree("busybox", nil)
	if err := skeleton(t); err != nil {
		return nil, err
	}
	if err := t.copyProgram("/bin/busybox", busyboxFile.path); err != nil {
		return nil, err
	}
	out, err := exec.CommandContext(ctx, busyboxFile.path, "--list").Output()
	if err != nil {
		return nil, fmt.Errorf("busybox --list: %w", err)
	}
	for _, applet := range strings.Fields(string(out)) {
		if applet == "sh" || applet == "busybox" || strings.Contains(applet, "/") {
			continue
		}
		if err := t.symlink("/bin/"+applet, "busybox"); err != nil {
			return nil, err
		}
	}
	dash := lookTool("dash")
	if dash == "" {
		return nil, fmt.Errorf("dash is not installed")
	}
	if err := t.addPrograms([]string{dash}); err != nil {
		return nil, err
	}
	// Debian's busybox package (not -static) is dynamic; either works.
	if err := t.addLibraries([]string{busyboxFile.path}); err != nil {
		return nil, err
	}
	if err := t.symlink("/bin/sh", dash); err != nil {
		return nil, err
	}
	return t, nil
}
