package images

import (
	"archive/tar"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/nodenet/nodenet/internal/nstest"
)

// extract unpacks img's layers into dir, as a container runtime would before starting it.
func extract(t *testing.T, img v1.Image, dir string) {
	t.Helper()
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range layers {
		rc, err := l.Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		if err := untar(rc, dir); err != nil {
			rc.Close()
			t.Fatal(err)
		}
		rc.Close()
	}
}

// untar writes the directories, regular files and symlinks of the tar stream r under dir. The
// stream is one of our own layers, so names need no guarding against escapes beyond Clean.
func untar(r io.Reader, dir string) error {
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		p := filepath.Join(dir, filepath.Clean("/"+hdr.Name))
		mode := hdr.FileInfo().Mode()
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(p, 0o755); err != nil {
				return err
			}
			// Chmod, not the umask-filtered mkdir mode: /tmp needs its 1777.
			if err := os.Chmod(p, mode.Perm()|mode&os.ModeSticky); err != nil {
				return err
			}
		case tar.TypeReg:
			f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode.Perm())
			if err != nil {
				return err
			}
			_, err = io.Copy(f, tr)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return err
			}
		case tar.TypeSymlink:
			if err := os.Symlink(hdr.Linkname, p); err != nil {
				return err
			}
		default:
			return errors.New("unexpected tar entry type for " + hdr.Name)
		}
	}
}

// TestImagesRunInChroot runs, chrooted into each unpacked image, the kinds of commands the e2e
// suite runs in its containers: the programs start (loader, libraries and NSS all there) and
// resolve names from /etc/hosts. Nothing here touches the network.
func TestImagesRunInChroot(t *testing.T) {
	nstest.RequireRoot(t)
	_, archive, _ := sharedArchive(t)
	tests := []struct {
		name, ref, script string
		want              []string
		// prepare adjusts the unpacked root where a chroot lacks what a runtime provides.
		prepare func(t *testing.T, root string)
	}{
		{
			name: "agnhost network tools", ref: AgnhostRef,
			script: "dig -v; nc -h 2>&1 | head -1; curl --version | head -1; getent hosts localhost",
			want:   []string{"DiG 9.", "OpenBSD netcat", "curl ", "localhost"},
		},
		{
			name: "agnhost shell tools", ref: AgnhostRef,
			script: `set -e; bash -c 'echo bash $BASH_VERSION'; ip -V; ss -V; socat -V | grep 'socat version';
				echo a b | awk '{print "awk " $2}'; seq 1 3 | tail -1; echo x | sed s/x/sed/;
				test -d /tmp && [ -w /tmp ] && echo tmp; hostname -V 2>&1 | head -1; tar --version | head -1;
				getent passwd nobody; id -un; timeout 5 sleep 0; echo done`,
			want: []string{"bash 5", "iproute2", "ss utility", "socat version", "awk b", "3\n", "sed\n",
				"tmp\n", "hostname", "GNU tar", "nobody:x:65534", "root\n", "done\n"},
		},
		{
			// The probe loop of test/e2e/network/dns_common.go, against /etc/hosts.
			name: "glibc-dns-testing probe", ref: GlibcDNSTestingRef,
			script: `for i in $(seq 1 2); do check="$(getent hosts localhost)" && test -n "$check" && echo OK$i; done`,
			want:   []string{"OK1", "OK2"},
		},
		{
			name: "busybox with dash", ref: BusyboxRef,
			script: "readlink /bin/sh; busybox true && echo applets; ls /bin/busybox; echo hello | wc -c",
			want:   []string{"/usr/bin/dash", "applets", "/bin/busybox", "6"},
		},
		{
			name: "nginx config", ref: NginxRef,
			script: "/docker-entrypoint.sh nginx -t 2>&1",
			want:   []string{"syntax is ok", "test is successful"},
			prepare: func(t *testing.T, root string) {
				// The runtime makes /dev/stdout and /dev/stderr; nginx -t opens its logs.
				for _, n := range []string{"stdout", "stderr"} {
					if err := os.WriteFile(filepath.Join(root, "dev", n), nil, 0o644); err != nil {
						t.Fatal(err)
					}
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			img := readImage(t, archive, tt.ref)
			cfg, err := img.ConfigFile()
			if err != nil {
				t.Fatal(err)
			}
			root := t.TempDir()
			extract(t, img, root)
			if tt.prepare != nil {
				tt.prepare(t, root)
			}
			ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, "/bin/sh", "-c", tt.script)
			cmd.Dir = "/"
			cmd.Env = append([]string{"HOME=/root"}, cfg.Config.Env...)
			cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: root}
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("%s: %v\n%s", tt.script, err, out)
			}
			t.Logf("%s", out)
			for _, w := range tt.want {
				if !strings.Contains(string(out), w) {
					t.Errorf("no %q in the output:\n%s", w, out)
				}
			}
		})
	}
}
