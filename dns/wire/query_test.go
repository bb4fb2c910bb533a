package wire

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/miekg/dns"
)

func pack(t testing.TB, m *dns.Msg) []byte {
	t.Helper()
	b, err := m.Pack()
	if err != nil {
		t.Fatalf("pack: %v", err)
	}
	return b
}

func query(name string, qtype uint16) *dns.Msg {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.Id = 0x1234
	m.Compress = false
	return m
}

func TestParseQuery(t *testing.T) {
	withEDNS := func(m *dns.Msg, size uint16, do bool) *dns.Msg { m.SetEdns0(size, do); return m }
	cd := query("a.example.", dns.TypeA)
	cd.CheckingDisabled = true
	cd.RecursionDesired = false
	tests := []struct {
		name string
		msg  *dns.Msg
		want Query
	}{
		{
			name: "plain A with RD",
			msg:  query("Nginx-Svc.Default.svc.cluster.local.", dns.TypeA),
			want: Query{ID: 0x1234, RD: true, Name: "nginx-svc.default.svc.cluster.local.", Type: dns.TypeA, Class: dns.ClassINET, UDPSize: 512},
		},
		{
			name: "SRV with underscores",
			msg:  query("_http._tcp.web.default.svc.cluster.local.", dns.TypeSRV),
			want: Query{ID: 0x1234, RD: true, Name: "_http._tcp.web.default.svc.cluster.local.", Type: dns.TypeSRV, Class: dns.ClassINET, UDPSize: 512},
		},
		{
			name: "root",
			msg:  query(".", dns.TypeNS),
			want: Query{ID: 0x1234, RD: true, Name: ".", Type: dns.TypeNS, Class: dns.ClassINET, UDPSize: 512},
		},
		{
			name: "EDNS0 with DO",
			msg:  withEDNS(query("example.com.", dns.TypeAAAA), 1232, true),
			want: Query{ID: 0x1234, RD: true, Name: "example.com.", Type: dns.TypeAAAA, Class: dns.ClassINET, EDNS: true, UDPSize: 1232, DO: true},
		},
		{
			name: "EDNS0 size below 512 counts as 512",
			msg:  withEDNS(query("example.com.", dns.TypeA), 100, false),
			want: Query{ID: 0x1234, RD: true, Name: "example.com.", Type: dns.TypeA, Class: dns.ClassINET, EDNS: true, UDPSize: 512},
		},
		{
			name: "CD without RD",
			msg:  cd,
			want: Query{ID: 0x1234, CD: true, Name: "a.example.", Type: dns.TypeA, Class: dns.ClassINET, UDPSize: 512},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := pack(t, tt.msg)
			got, err := ParseQuery(b, nil)
			if err != nil {
				t.Fatalf("ParseQuery: %v", err)
			}
			tt.want.QuestionEnd = headerLen + len(tt.msg.Question[0].Name) + 1 + 4
			if tt.msg.Question[0].Name == "." {
				tt.want.QuestionEnd = headerLen + 1 + 4
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("(-want +got)\n%s", diff)
			}
		})
	}
}

func TestParseQueryRefuses(t *testing.T) {
	good := pack(t, query("example.com.", dns.TypeA))
	response := pack(t, query("example.com.", dns.TypeA).SetReply(query("example.com.", dns.TypeA)))
	twoQuestions := query("example.com.", dns.TypeA)
	twoQuestions.Question = append(twoQuestions.Question, dns.Question{Name: "b.", Qtype: dns.TypeA, Qclass: dns.ClassINET})
	escaped := query(`a\.b.example.`, dns.TypeA)
	tests := []struct {
		name    string
		req     []byte
		plain   bool // want ErrNotPlain rather than a malformed-request error
		errText string
	}{
		{name: "short", req: good[:5], errText: "shorter than a DNS header"},
		{name: "response", req: response, errText: "QR set"},
		{name: "truncated name", req: good[:15], errText: "ends inside the question name"},
		{name: "truncated type", req: good[:len(good)-2], errText: "ends inside the question"},
		{name: "trailing bytes", req: append(append([]byte{}, good...), 0), errText: "after its question"},
		{name: "two questions", req: pack(t, twoQuestions), plain: true},
		{name: "escaped dot in a label", req: pack(t, escaped), plain: true},
		{name: "compression pointer", req: append(append([]byte{}, good[:headerLen]...), 0xc0, 0x0c, 0, 1, 0, 1), plain: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseQuery(tt.req, nil)
			switch {
			case err == nil:
				t.Fatal("ParseQuery accepted the request")
			case tt.plain && !errors.Is(err, ErrNotPlain):
				t.Fatalf("err = %v, want ErrNotPlain", err)
			case !tt.plain && (errors.Is(err, ErrNotPlain) || !strings.Contains(err.Error(), tt.errText)):
				t.Fatalf("err = %v, want one containing %q", err, tt.errText)
			}
		})
	}
}

// FuzzParseQuery checks that whatever ParseQuery accepts, miekg/dns reads the same way.
func FuzzParseQuery(f *testing.F) {
	for _, name := range []string{"example.com.", "A.b-C._d.", "."} {
		m := query(name, dns.TypeA)
		f.Add(pack(f, m))
		m.SetEdns0(4096, true)
		f.Add(pack(f, m))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		q, err := ParseQuery(b, nil)
		if err != nil {
			return
		}
		var m dns.Msg
		if err := m.Unpack(b); err != nil {
			t.Fatalf("ParseQuery accepted what miekg/dns rejects (%v): %x", err, b)
		}
		if len(m.Question) != 1 || !strings.EqualFold(m.Question[0].Name, q.Name) || m.Question[0].Qtype != q.Type || m.Id != q.ID {
			t.Fatalf("ParseQuery read %+v, miekg/dns %v", q, m.Question)
		}
		if opt := m.IsEdns0(); (opt != nil) != q.EDNS || opt != nil && opt.Do() != q.DO {
			t.Fatalf("ParseQuery read EDNS=%v DO=%v, miekg/dns %v", q.EDNS, q.DO, opt)
		}
	})
}

func BenchmarkParseQuery(b *testing.B) {
	m := query("nginx-svc.default.svc.cluster.local.", dns.TypeA)
	m.SetEdns0(1232, false)
	req := pack(b, m)
	names := NewNames()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseQuery(req, names); err != nil {
			b.Fatal(err)
		}
	}
}
