package forward

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/miekg/dns"

	"github.com/nodenet/nodenet/dns/wire"
)

func TestSanitize(t *testing.T) {
	type sections struct{ Answer, Ns, Extra string }
	tests := []struct {
		name  string
		qname string
		qtype uint16
		in    sections
		want  sections
	}{
		{
			name:  "answer for the name, not for others",
			qname: "www.example.com.", qtype: dns.TypeA,
			in: sections{Answer: `
www.example.com. 300 IN A 192.0.2.1
www.bank.example. 300 IN A 203.0.113.66
www.example.com. 300 IN AAAA 2001:db8::1
www.example.com. 300 CH A 192.0.2.2`},
			want: sections{Answer: "www.example.com. 300 IN A 192.0.2.1"},
		},
		{
			name:  "CNAME chain in any order, and nothing beside it",
			qname: "www.example.com.", qtype: dns.TypeA,
			in: sections{Answer: `
edge.cdn.example.net. 60 IN A 192.0.2.7
www.example.com. 300 IN CNAME www.example.com.cdn.example.net.
www.example.com.cdn.example.net. 300 IN CNAME edge.cdn.example.net.
other.cdn.example.net. 60 IN A 203.0.113.66`},
			want: sections{Answer: `edge.cdn.example.net. 60 IN A 192.0.2.7
www.example.com. 300 IN CNAME www.example.com.cdn.example.net.
www.example.com.cdn.example.net. 300 IN CNAME edge.cdn.example.net.`},
		},
		{
			name:  "CNAME loop ends the chain",
			qname: "a.example.", qtype: dns.TypeA,
			in: sections{Answer: `
a.example. 300 IN CNAME b.example.
b.example. 300 IN CNAME a.example.`},
			want: sections{Answer: `a.example. 300 IN CNAME b.example.
b.example. 300 IN CNAME a.example.`},
		},
		{
			name:  "DNAME and the CNAME it synthesized",
			qname: "www.old.example.", qtype: dns.TypeA,
			in: sections{Answer: `
old.example. 300 IN DNAME new.example.
www.old.example. 300 IN CNAME www.new.example.
www.new.example. 300 IN A 192.0.2.1
evil.example. 300 IN DNAME bank.example.`},
			want: sections{Answer: `old.example. 300 IN DNAME new.example.
www.old.example. 300 IN CNAME www.new.example.
www.new.example. 300 IN A 192.0.2.1`},
		},
		{
			name:  "signatures of the answer stay",
			qname: "example.com.", qtype: dns.TypeA,
			in: sections{Answer: `
example.com. 300 IN A 192.0.2.1
example.com. 300 IN RRSIG A 13 2 300 20300101000000 20200101000000 1 example.com. c2ln
example.com. 300 IN RRSIG MX 13 2 300 20300101000000 20200101000000 1 example.com. c2ln`},
			want: sections{Answer: `example.com. 300 IN A 192.0.2.1
example.com. 300 IN RRSIG A 13 2 300 20300101000000 20200101000000 1 example.com. c2ln`},
		},
		{
			name:  "authority and glue within the zone only",
			qname: "www.example.com.", qtype: dns.TypeA,
			in: sections{
				Answer: "www.example.com. 300 IN A 192.0.2.1",
				Ns: `
example.com. 300 IN NS ns1.example.com.
example.com. 300 IN NS ns.attacker.example.
attacker.example. 300 IN NS ns.attacker.example.`,
				Extra: `
ns1.example.com. 300 IN A 192.0.2.53
ns.attacker.example. 300 IN A 203.0.113.66
www.bank.example. 300 IN A 203.0.113.66`,
			},
			want: sections{
				Answer: "www.example.com. 300 IN A 192.0.2.1",
				Ns: `example.com. 300 IN NS ns1.example.com.
example.com. 300 IN NS ns.attacker.example.`,
				Extra: "ns1.example.com. 300 IN A 192.0.2.53",
			},
		},
		{
			name:  "denial keeps its SOA and NSEC, not another zone's",
			qname: "nope.example.com.", qtype: dns.TypeA,
			in: sections{Ns: `
example.com. 300 IN SOA ns1.example.com. host.example.com. 1 7200 900 1209600 60
example.com. 300 IN NSEC www.example.com. A NS SOA
bank.example. 300 IN SOA ns.bank.example. host.bank.example. 1 7200 900 1209600 86400`},
			want: sections{Ns: `example.com. 300 IN SOA ns1.example.com. host.example.com. 1 7200 900 1209600 60
example.com. 300 IN NSEC www.example.com. A NS SOA`},
		},
		{
			name:  "denial at the end of a chain is about the last name's zone",
			qname: "www.example.com.", qtype: dns.TypeA,
			in: sections{
				Answer: "www.example.com. 300 IN CNAME gone.example.net.",
				Ns: `
example.net. 300 IN SOA ns.example.net. host.example.net. 1 7200 900 1209600 60
example.com. 300 IN SOA ns.example.com. host.example.com. 1 7200 900 1209600 60`,
			},
			want: sections{
				Answer: "www.example.com. 300 IN CNAME gone.example.net.",
				Ns:     "example.net. 300 IN SOA ns.example.net. host.example.net. 1 7200 900 1209600 60",
			},
		},
		{
			name:  "without authority, additional records below the name only",
			qname: "example.com.", qtype: dns.TypeMX,
			in: sections{
				Answer: "example.com. 300 IN MX 10 mail.example.com.",
				Extra: `
mail.example.com. 300 IN A 192.0.2.25
mail.other.example. 300 IN A 203.0.113.66`,
			},
			want: sections{
				Answer: "example.com. 300 IN MX 10 mail.example.com.",
				Extra:  "mail.example.com. 300 IN A 192.0.2.25",
			},
		},
		{
			name:  "query for the CNAME itself does not follow it",
			qname: "www.example.com.", qtype: dns.TypeCNAME,
			in: sections{Answer: `
www.example.com. 300 IN CNAME target.example.net.
target.example.net. 300 IN CNAME further.example.net.`},
			want: sections{Answer: "www.example.com. 300 IN CNAME target.example.net."},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := &dns.Msg{Answer: parseRRs(t, tt.in.Answer), Ns: parseRRs(t, tt.in.Ns), Extra: parseRRs(t, tt.in.Extra)}
			resp.SetEdns0(1232, false)
			k := wire.Key{Name: tt.qname, Type: tt.qtype, Class: dns.ClassINET}
			dropped := sanitize(resp, k)
			got := sections{Answer: records(resp.Answer), Ns: records(resp.Ns), Extra: records(resp.Extra)}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("(-want +got)\n%s", diff)
			}
			if resp.IsEdns0() != nil {
				t.Error("the upstream's OPT record was kept")
			}
			in := len(parseRRs(t, tt.in.Answer)) + len(parseRRs(t, tt.in.Ns)) + len(parseRRs(t, tt.in.Extra))
			if want := in - len(resp.Answer) - len(resp.Ns) - len(resp.Extra); dropped != want {
				t.Errorf("dropped = %d, want %d", dropped, want)
			}
		})
	}
}

func parseRRs(t *testing.T, text string) []dns.RR {
	var out []dns.RR
	for line := range strings.SplitSeq(strings.TrimSpace(text), "\n") {
		if line != "" {
			out = append(out, mustRR(t, line))
		}
	}
	return out
}

// TestOutOfBailiwickRecordsAreNotCached follows sanitize's work through
// the cache to the client.
func TestOutOfBailiwickRecordsAreNotCached(t *testing.T) {
	up := startUpstream(t, zoneAnswer(t, dns.RcodeSuccess,
		"ANSWER www.example.com. 300 IN A 192.0.2.1",
		"ANSWER www.bank.example. 86400 IN A 203.0.113.66",
		"NS bank.example. 86400 IN NS ns.attacker.example.",
		"EXTRA ns.attacker.example. 86400 IN A 203.0.113.66"))
	f, _ := startForwarder(t, Config{Upstreams: []netip.AddrPort{up.addr}})
	for _, got := range []*dns.Msg{ask(t, f, "www.example.com.", dns.TypeA), ask(t, f, "www.example.com.", dns.TypeA)} {
		if records(got.Answer) != "www.example.com. 300 IN A 192.0.2.1" || len(got.Ns) != 0 || records(got.Extra) != "" {
			t.Errorf("answer:\n%v\nwant only www.example.com.'s A record", got)
		}
	}
}
