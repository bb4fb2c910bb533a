package images

import (
	"archive/tar"
	"bufio"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// epoch is the modification time of every file and the creation time of every image. A fixed
// time makes a layer's digest depend on its content only, so containerd on each node unpacks a
// layer it has seen before only once, across rebuilds too.
var epoch = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

// writeLayer writes t's own entries to the file p as a gzip stream of a tar and returns it as
// a layer. The gzip stream stores the tar uncompressed: deflate costs seconds per build (tens
// under the race detector) to save disk a test machine has, while a stored stream is still
// the gzip layer every runtime expects. Both digests are taken while writing, in one pass.
func writeLayer(t *tree, p string) (v1.Layer, error) {
	f, err := os.Create(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	l := &fileLayer{path: p}
	buf := bufio.NewWriterSize(f, 1<<20)
	digest := sha256.New()
	counted := &countingWriter{w: io.MultiWriter(buf, digest)}
	zw, err := gzip.NewWriterLevel(counted, gzip.NoCompression)
	if err != nil {
		return nil, err
	}
	diffID := sha256.New()
	if err := t.writeTar(io.MultiWriter(zw, diffID)); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	if err := buf.Flush(); err != nil {
		return nil, err
	}
	if err := f.Close(); err != nil {
		return nil, err
	}
	l.size = counted.n
	l.digest = v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(digest.Sum(nil))}
	l.diffID = v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(diffID.Sum(nil))}
	return l, nil
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// fileLayer is a layer writeLayer has written: a gzip file and the digests of it and of the tar
// inside, so that nothing reads it again until the archive is written.
type fileLayer struct {
	path   string
	size   int64
	digest v1.Hash // of the gzip file
	diffID v1.Hash // of the tar
}

var _ v1.Layer = (*fileLayer)(nil)

func (l *fileLayer) Digest() (v1.Hash, error)             { return l.digest, nil }
func (l *fileLayer) DiffID() (v1.Hash, error)             { return l.diffID, nil }
func (l *fileLayer) Size() (int64, error)                 { return l.size, nil }
func (l *fileLayer) MediaType() (types.MediaType, error)  { return types.DockerLayer, nil }
func (l *fileLayer) Compressed() (io.ReadCloser, error)   { return os.Open(l.path) }
func (l *fileLayer) Uncompressed() (io.ReadCloser, error) { return openGzip(l.path) }

// openGzip opens the gzip file p for reading what it holds.
func openGzip(p string) (io.ReadCloser, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	zr, err := gzip.NewReader(f)
	if err != nil {
		f.Close()
		return nil, err
	}
	return &gzipFile{Reader: zr, f: f}, nil
}

type gzipFile struct {
	*gzip.Reader
	f *os.File
}

func (g *gzipFile) Close() error {
	return errors.Join(g.Reader.Close(), g.f.Close())
}

// writeTar writes t's own entries as an uncompressed tar stream: paths relative to the root,
// owned by root, at epoch.
func (t *tree) writeTar(w io.Writer) error {
	tw := tar.NewWriter(w)
	for _, p := range t.paths() {
		e := t.entries[p]
		hdr := &tar.Header{
			Typeflag: e.typ,
			Name:     strings.TrimPrefix(p, "/"),
			Linkname: e.link,
			Mode:     tarMode(e.mode),
			ModTime:  epoch,
		}
		if e.typ == tar.TypeDir {
			hdr.Name += "/"
		}
		var src *os.File
		if e.typ == tar.TypeReg {
			hdr.Size = int64(len(e.data))
			if e.src != "" {
				var err error
				if src, err = os.Open(e.src); err != nil {
					return err
				}
				fi, err := src.Stat()
				if err != nil {
					src.Close()
					return err
				}
				hdr.Size = fi.Size()
			}
		}
		if err := writeEntry(tw, hdr, e, src); err != nil {
			return fmt.Errorf("write %s: %w", p, err)
		}
	}
	return tw.Close()
}

// writeEntry writes one header and its content, from src (which it closes) or from e.data.
func writeEntry(tw *tar.Writer, hdr *tar.Header, e *entry, src *os.File) error {
	if src != nil {
		defer src.Close()
	}
	if err := tw.WriteHeader(hdr); err != nil {
		return err
	}
	switch {
	case src != nil:
		// A host file that changes size while copied (a package upgrade) makes tar fail here
		// rather than write a truncated entry.
		_, err := io.CopyN(tw, src, hdr.Size)
		return err
	case e.typ == tar.TypeReg:
		_, err := tw.Write(e.data)
		return err
	}
	return nil
}

// tarMode turns permission bits and the sticky bit into tar's mode field.
func tarMode(m os.FileMode) int64 {
	mode := int64(m.Perm())
	if m&os.ModeSticky != 0 {
		mode |= 0o1000 // c_ISVTX
	}
	return mode
}
