package ipam

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Database layout. It is kept small because every commit copies the pages
// on the path from the root to each changed leaf and syncs them.
//
//	meta/schemaVersion         "1"
//	allocations/<cid>\x00<if>  {"netns":"/proc/..","ips":["10.244.1.7/24"],"created":"2025-..Z"}
//	cursors/<range>            last address handed out from the range, e.g. "10.244.1.7"
var (
	bucketMeta        = []byte("meta")
	bucketAllocations = []byte("allocations")
	bucketCursors     = []byte("cursors")
	keySchemaVersion  = []byte("schemaVersion")
)

const schemaVersion = "1"

// record is the stored value of an allocation; the key carries the rest.
type record struct {
	Netns   string         `json:"netns,omitempty"`
	IPs     []netip.Prefix `json:"ips"`
	Created time.Time      `json:"created"`
}

func encodeAllocation(al Allocation) ([]byte, error) {
	return json.Marshal(record{Netns: al.Netns, IPs: al.IPs, Created: al.Created})
}

func decodeAllocation(key, value []byte) (Allocation, error) {
	cid, ifName, ok := strings.Cut(string(key), "\x00")
	if !ok {
		return Allocation{}, fmt.Errorf("key %q has no separator", key)
	}
	var r record
	if err := json.Unmarshal(value, &r); err != nil {
		return Allocation{}, fmt.Errorf("decode allocation %s/%s: %w", cid, ifName, err)
	}
	return Allocation{ContainerID: cid, IfName: ifName, Netns: r.Netns, IPs: r.IPs, Created: r.Created}, nil
}

// prepare creates the buckets of a new database, or checks the schema of an
// existing one.
func prepare(tx *bolt.Tx) error {
	meta, err := tx.CreateBucketIfNotExists(bucketMeta)
	if err != nil {
		return fmt.Errorf("create bucket %s: %w", bucketMeta, err)
	}
	switch v := meta.Get(keySchemaVersion); {
	case v == nil:
		if err := meta.Put(keySchemaVersion, []byte(schemaVersion)); err != nil {
			return fmt.Errorf("write schema version: %w", err)
		}
	case string(v) != schemaVersion:
		return fmt.Errorf("schema version %q is not supported (want %q)", v, schemaVersion)
	}
	for _, name := range [][]byte{bucketAllocations, bucketCursors} {
		if _, err := tx.CreateBucketIfNotExists(name); err != nil {
			return fmt.Errorf("create bucket %s: %w", name, err)
		}
	}
	return nil
}

// putAllocation stores an allocation and the cursors of the pools it came
// from. The cursor is read at commit time, so the stored cursor is never
// behind an address committed with it, whatever order Batch runs calls in.
func putAllocation(tx *bolt.Tx, key string, value []byte, pools []*pool) error {
	if err := tx.Bucket(bucketAllocations).Put([]byte(key), value); err != nil {
		return fmt.Errorf("put allocation: %w", err)
	}
	cursors := tx.Bucket(bucketCursors)
	for _, p := range pools {
		if err := cursors.Put([]byte(p.prefix.String()), []byte(p.cursorAddr().String())); err != nil {
			return fmt.Errorf("put cursor %s: %w", p.prefix, err)
		}
	}
	return nil
}

func deleteAllocation(tx *bolt.Tx, key string) error {
	if err := tx.Bucket(bucketAllocations).Delete([]byte(key)); err != nil {
		return fmt.Errorf("delete allocation: %w", err)
	}
	return nil
}

// syncDir makes the directory entry of a new database file durable; bbolt
// syncs the file's contents but not its name.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	if err := d.Sync(); err != nil {
		d.Close() // the sync error is the one worth reporting
		return err
	}
	return d.Close()
}
