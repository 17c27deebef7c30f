package forwarder

import (
	"context"
	"net"
	"testing"

	"github.com/miekg/dns"

	"xdoh/forwarder/cache"
)

// Regression (review): a recursive upstream answers an RD=0 query from its cache only: for a name
// it has not resolved yet, a referral. xdoh caches that under a key without
// RD and serves it to every RD=1 client.
func TestRD0AnswersAreNotServedToRD1Clients(t *testing.T) {
	up := &fakeUp{name: "resolver", fn: func(_ context.Context, q *dns.Msg) (*dns.Msg, error) {
		r := new(dns.Msg)
		r.SetReply(q)
		r.RecursionAvailable = true
		if !q.RecursionDesired {
			ns, _ := dns.NewRR("com. 172800 IN NS a.gtld-servers.net.")
			r.Ns = append(r.Ns, ns)
			return r, nil
		}
		r.Answer = append(r.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 300}, A: net.ParseIP("192.0.2.1")})
		return r, nil
	}}
	f, err := New(Config{Default: []Target{{Up: up}}, Cache: cache.New(cache.Config{})})
	if err != nil {
		t.Fatal(err)
	}
	ask := func(rd bool) *dns.Msg {
		m := new(dns.Msg)
		m.SetQuestion("www.example.com.", dns.TypeA)
		m.RecursionDesired = rd
		b, _ := m.Pack()
		out := f.ServeDNS(context.Background(), &Request{Msg: b, Transport: TransportUDP}, nil)
		r := new(dns.Msg)
		if err := r.Unpack(out); err != nil {
			t.Fatal(err)
		}
		return r
	}
	ask(false) // one RD=0 query from anyone
	if r := ask(true); len(r.Answer) == 0 {
		t.Errorf("RD=1 client got %d answers (rcode %s, %d authority records): the RD=0 referral was cached for everyone",
			len(r.Answer), dns.RcodeToString[r.Rcode], len(r.Ns))
	}
}
