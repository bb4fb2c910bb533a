package dns

import (
	"hash/maphash"
	"sync"

	"github.com/nodenet/nodenet/dns/wire"
)

// answerCache keeps the packed answers the zone gave, each for the zone generation it was given
// at: the zone is still asked nothing twice between two changes of the cluster, but an answer is
// served only while no Service has changed since, so it is the answer the zone would give now.
// Cluster names and the search-path misses of external names are the bulk of a node's queries,
// and packing them again for each one is most of their cost.
type answerCache struct {
	seed   maphash.Seed
	shards [answerShards]answerShard
}

const (
	answerShards = 16
	// answersPerShard bounds the cache: a client asking random names cannot grow it.
	answersPerShard = 1024
	// maxCachedAnswer is the largest answer kept: one that fits any client's UDP limit, so the
	// same bytes serve every transport.
	maxCachedAnswer = wire.MinUDPSize
)

type answerShard struct {
	mu sync.RWMutex
	m  map[answerKey]*packedAnswer
}

type answerKey struct {
	name           string
	qtype          uint16
	edns, dnssecOK bool
}

type packedAnswer struct {
	generation uint64
	wire       []byte // with the lower-case question and ID 0
	rcode      int
	source     string
}

func newAnswerCache() *answerCache {
	c := &answerCache{seed: maphash.MakeSeed()}
	for i := range c.shards {
		c.shards[i].m = map[answerKey]*packedAnswer{}
	}
	return c
}

func keyOf(q wire.Query) answerKey {
	return answerKey{name: q.Name, qtype: q.Type, edns: q.EDNS, dnssecOK: q.DO}
}

func (c *answerCache) shard(k answerKey) *answerShard {
	return &c.shards[maphash.String(c.seed, k.name)%answerShards]
}

// appendAnswer appends the answer for q if one was packed at generation, with q's ID, flags and
// spelling of the question.
func (c *answerCache) appendAnswer(dst, req []byte, q wire.Query, generation uint64) (answer, bool) {
	k := keyOf(q)
	sh := c.shard(k)
	sh.mu.RLock()
	p, ok := sh.m[k]
	sh.mu.RUnlock()
	if !ok || p.generation != generation {
		return answer{}, false
	}
	out := append(dst, p.wire...)
	msg := out[len(dst):]
	msg[0], msg[1] = byte(q.ID>>8), byte(q.ID)
	setRD(msg, q.RD)
	setCD(msg, q.CD)
	echoQuestion(msg, req, q)
	return answer{wire: out, rcode: p.rcode, source: p.source}, true
}

// store keeps a packed answer (msg, without any prefix) given at generation.
func (c *answerCache) store(q wire.Query, msg []byte, a answer, generation uint64) {
	const truncated = 0x02 // TC, in the third header byte: cut for one client's limit
	if len(msg) > maxCachedAnswer || msg[2]&truncated != 0 {
		return
	}
	p := &packedAnswer{generation: generation, wire: append([]byte(nil), msg...), rcode: a.rcode, source: a.source}
	p.wire[0], p.wire[1] = 0, 0
	k := keyOf(q)
	sh := c.shard(k)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if _, ok := sh.m[k]; !ok && len(sh.m) >= answersPerShard {
		for old := range sh.m { // any one: map order is random
			delete(sh.m, old)
			break
		}
	}
	sh.m[k] = p
}

// setCD makes a response's CD flag the query's.
func setCD(msg []byte, cd bool) {
	const cdBit = 0x10 // in the fourth header byte
	if cd {
		msg[3] |= cdBit
	} else {
		msg[3] &^= cdBit
	}
}
