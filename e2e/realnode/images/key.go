package images

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash"
	"io"
	"os"
)

// layoutVersion is part of every cache key. Bump it when the way an archive is written changes
// without any input changing (tar headers, compression, config fields set in code paths that
// the key does not see), so that archives written the old way are not reused.
const layoutVersion = 1

// archiveKey returns a hash of everything an archive of imgs is made of: the references, the
// run configurations, and for every layer each path with its type, mode, link target and
// content. Host files are hashed by content, so a Debian upgrade or a rebuilt agnhost makes a
// new key while an identical rebuild (same bytes, new mtime) does not.
func archiveKey(imgs []image) (string, error) {
	k := keyer{h: sha256.New(), files: map[string]string{}, layers: map[*tree]string{}}
	fmt.Fprintf(k.h, "layout %d\n", layoutVersion)
	for _, img := range imgs {
		cfg, err := json.Marshal(img.config)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(k.h, "image %q %s\n", img.refs, cfg)
		for _, l := range img.layers {
			sum, err := k.layer(l)
			if err != nil {
				return "", err
			}
			fmt.Fprintf(k.h, "layer %s\n", sum)
		}
	}
	return hex.EncodeToString(k.h.Sum(nil)), nil
}

// keyer hashes layers and host files once each, however many images share them.
type keyer struct {
	h      hash.Hash
	files  map[string]string // host path -> content hash
	layers map[*tree]string  // layer -> hash of its entries
}

func (k *keyer) layer(t *tree) (string, error) {
	if sum, ok := k.layers[t]; ok {
		return sum, nil
	}
	h := sha256.New()
	for _, p := range t.paths() {
		e := t.entries[p]
		content, err := k.content(e)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "%q %c %o %q %s\n", p, e.typ, e.mode, e.link, content)
	}
	sum := hex.EncodeToString(h.Sum(nil))
	k.layers[t] = sum
	return sum, nil
}

// content names what a regular file holds; other entries hold nothing.
func (k *keyer) content(e *entry) (string, error) {
	switch {
	case e.sum != "":
		return e.sum, nil
	case e.src != "":
		return k.file(e.src)
	case e.data != nil:
		s := sha256.Sum256(e.data)
		return hex.EncodeToString(s[:]), nil
	}
	return "-", nil
}

func (k *keyer) file(p string) (string, error) {
	if sum, ok := k.files[p]; ok {
		return sum, nil
	}
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("hash %s: %w", p, err)
	}
	sum := hex.EncodeToString(h.Sum(nil))
	k.files[p] = sum
	return sum, nil
}
