package images

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"golang.org/x/sync/errgroup"
)

// Options are Build's inputs besides this machine's Debian files.
type Options struct {
	// NodenetBinDir holds the static nodenet and nodenet-cni binaries (`make build`'s bin/).
	NodenetBinDir string
	// AgnhostPath is the agnhost binary, built static from k8s.io/kubernetes/test/images/agnhost.
	AgnhostPath string
	// CorednsPath, if set, is a CoreDNS binary put at /coredns in agnhost, where upstream has one
	// for the DNS tests that start their own server. Optional: without it only those tests fail.
	CorednsPath string
	// CacheDir holds the archives, one per distinct set of inputs (the newest few are kept).
	CacheDir string
}

func (o Options) validate() error {
	var errs []error
	for _, f := range []struct{ name, value string }{
		{"NodenetBinDir", o.NodenetBinDir}, {"AgnhostPath", o.AgnhostPath}, {"CacheDir", o.CacheDir},
	} {
		if f.value == "" {
			errs = append(errs, fmt.Errorf("%s is required", f.name))
		}
	}
	return errors.Join(errs...)
}

// keepArchives is how many archives CacheDir keeps: the one just built and the one before it,
// which a run started a moment ago may still be importing.
const keepArchives = 2

// Build writes the images of a real-node test cluster — pause, agnhost, busybox, nginx (two
// tags), glibc-dns-testing and nodenet — to one docker-archive tarball in opts.CacheDir, for
// `ctr -n k8s.io images import --platform linux/amd64 PATH`, and returns its path and the
// references it holds, fully qualified, in the order above.
//
// The archive is named after a hash of all its inputs (see archiveKey): when one with the same
// inputs exists, Build returns it after hashing them, without writing anything. Otherwise it
// compiles the pause program with the Go toolchain on PATH and writes the layers. The Debian
// packages of MissingPackages must be installed first.
func Build(ctx context.Context, opts Options) (path string, refs []string, err error) {
	if err := opts.validate(); err != nil {
		return "", nil, fmt.Errorf("images: %w", err)
	}
	if missing := MissingPackages(); len(missing) > 0 {
		return "", nil, fmt.Errorf("images: Debian packages not installed (make deps installs them): %s",
			strings.Join(missing, " "))
	}
	if err := os.MkdirAll(opts.CacheDir, 0o755); err != nil {
		return "", nil, err
	}
	work, err := os.MkdirTemp(opts.CacheDir, "e2e-images-*.tmp")
	if err != nil {
		return "", nil, err
	}
	defer os.RemoveAll(work)

	pausePath := filepath.Join(work, "pause")
	imgs, err := plan(ctx, opts, pausePath)
	if err != nil {
		return "", nil, fmt.Errorf("images: %w", err)
	}
	for _, img := range imgs {
		refs = append(refs, img.refs...)
	}
	key, err := archiveKey(imgs)
	if err != nil {
		return "", nil, fmt.Errorf("images: %w", err)
	}
	path = filepath.Join(opts.CacheDir, "e2e-images-"+key[:20]+".tar")
	if _, err := os.Stat(path); err == nil {
		return path, refs, nil
	}

	if err := buildPause(ctx, pausePath); err != nil {
		return "", nil, fmt.Errorf("images: %w", err)
	}
	tmp := filepath.Join(work, "archive.tar")
	if err := writeArchive(ctx, imgs, work, tmp); err != nil {
		return "", nil, fmt.Errorf("images: %w", err)
	}
	// Renamed into place whole, so a reader never sees a partial archive, and two builds of the
	// same inputs at once both end with a complete one.
	if err := os.Rename(tmp, path); err != nil {
		return "", nil, err
	}
	if err := prune(opts.CacheDir, path); err != nil {
		return "", nil, fmt.Errorf("images: prune old archives: %w", err)
	}
	return path, refs, nil
}

// writeArchive writes the layers of imgs into dir, each shared layer once and several at a
// time, then the docker archive of all images to p.
func writeArchive(ctx context.Context, imgs []image, dir, p string) error {
	var trees []*tree
	index := map[*tree]int{}
	for _, img := range imgs {
		for _, t := range img.layers {
			if _, ok := index[t]; !ok {
				index[t] = len(trees)
				trees = append(trees, t)
			}
		}
	}
	layers := make([]v1.Layer, len(trees))
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(runtime.NumCPU())
	for i, t := range trees {
		g.Go(func() error {
			if err := ctx.Err(); err != nil {
				return err
			}
			l, err := writeLayer(t, filepath.Join(dir, fmt.Sprintf("layer-%d.tar.gz", i)))
			if err != nil {
				return fmt.Errorf("layer %s: %w", t.name, err)
			}
			layers[i] = l
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}

	refToImage := map[name.Reference]v1.Image{}
	for _, img := range imgs {
		cfg := &v1.ConfigFile{
			Architecture: "amd64",
			OS:           "linux",
			Created:      v1.Time{Time: epoch},
			Config:       img.config,
			RootFS:       v1.RootFS{Type: "layers"},
		}
		base, err := mutate.ConfigFile(empty.Image, cfg)
		if err != nil {
			return err
		}
		var adds []mutate.Addendum
		for _, t := range img.layers {
			adds = append(adds, mutate.Addendum{
				Layer:   layers[index[t]],
				History: v1.History{Created: v1.Time{Time: epoch}, CreatedBy: "nodenet e2e images: " + t.name},
			})
		}
		v1img, err := mutate.Append(base, adds...)
		if err != nil {
			return err
		}
		for _, ref := range img.refs {
			tag, err := name.NewTag(ref, name.StrictValidation)
			if err != nil {
				return err
			}
			refToImage[tag] = v1img
		}
	}
	return tarball.MultiRefWriteToFile(p, refToImage)
}

// prune removes the archives in dir other than keep, beyond the keepArchives-1 newest.
func prune(dir, keep string) error {
	matches, err := filepath.Glob(filepath.Join(dir, "e2e-images-*.tar"))
	if err != nil {
		return err
	}
	type archive struct {
		path string
		mod  int64
	}
	var others []archive
	for _, m := range matches {
		fi, err := os.Stat(m)
		if m == keep || err != nil { // err: removed by a concurrent prune
			continue
		}
		others = append(others, archive{m, fi.ModTime().UnixNano()})
	}
	sort.Slice(others, func(i, j int) bool { return others[i].mod > others[j].mod })
	var errs []error
	for i, a := range others {
		if i < keepArchives-1 {
			continue
		}
		if err := os.Remove(a.path); err != nil && !os.IsNotExist(err) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
