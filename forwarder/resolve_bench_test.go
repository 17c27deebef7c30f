package forwarder

import (
	"testing"
	"time"

	"github.com/miekg/dns"

	"xdoh/forwarder/group"
)

// echoAsync answers every Submit inline with a prepared response carrying
// the query's ID: the forwarder's own cost per miss, without an upstream.
type echoAsync struct{ resp []byte }

func (e *echoAsync) String() string { return "https://bench.invalid/dns-query" }
func (e *echoAsync) Submit(q []byte, _ time.Duration, done func([]byte, error)) group.Canceler {
	r := append([]byte(nil), e.resp...) // a fresh response, as an upstream's is
	r[0], r[1] = q[0], q[1]
	done(r, nil)
	return nil
}

// BenchmarkResolve: one miss through Resolve
// (the upstream answers inside Submit), allocations per query included.
func BenchmarkResolve(b *testing.B) {
	q := new(dns.Msg).SetQuestion("fwd.example.com.", dns.TypeA)
	msg, _ := q.Pack()
	a := new(dns.Msg).SetReply(q)
	a.Answer = append(a.Answer, &dns.A{Hdr: dns.RR_Header{Name: "fwd.example.com.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: []byte{192, 0, 2, 7}})
	resp, _ := a.Pack()
	f, err := New(Config{Default: []Target{{Up: &echoAsync{resp: resp}}}})
	if err != nil {
		b.Fatal(err)
	}
	out := make([]byte, 65536)
	got := 0
	done := func(resp []byte) { got += len(resp) }
	b.ReportAllocs()
	for b.Loop() {
		r := Request{Msg: msg, Transport: TransportUDP}
		if resp, ok := f.Answer(&r, out); ok {
			b.Fatalf("answered at once: %d bytes", len(resp))
		}
		if _, ok := f.Resolve(&r, out, done); ok {
			b.Fatal("not resolved upstream")
		}
	}
	if got == 0 {
		b.Fatal("no answers")
	}
}
