package wire

// maxNames bounds a Names table; past it the table starts afresh. A node's pods ask a few
// hundred names again and again; a storm of distinct names only costs what no table would.
const maxNames = 1024

// Names hands out one string per distinct question name, so that a name asked again costs no
// allocation: at a hundred thousand queries a second, a fresh string per query was a fifth of
// the garbage the server made. A Names belongs to one reader goroutine.
type Names struct {
	m map[string]string
}

// NewNames returns an empty table.
func NewNames() *Names {
	return &Names{m: make(map[string]string, maxNames)}
}

// intern returns b as a string, the same one as for earlier equal names. The lookup converts
// b without copying it.
func (n *Names) intern(b []byte) string {
	if s, ok := n.m[string(b)]; ok {
		return s
	}
	if len(n.m) >= maxNames {
		clear(n.m)
	}
	s := string(b)
	n.m[s] = s
	return s
}
