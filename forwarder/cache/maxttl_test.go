package cache

import (
	"testing"
	"time"

	"github.com/miekg/dns"

	"xdoh/internal/dnsmsg"
)

// Regression (review): max_ttl also caps the TTL clients are given.
func TestMaxTTLCapsServedTTL(t *testing.T) {
	c := New(Config{MaxTTL: time.Hour})
	q := new(dns.Msg)
	q.SetQuestion("example.com.", dns.TypeA)
	qb, _ := q.Pack()
	var qv dnsmsg.Query
	if err := dnsmsg.Parse(qb, &qv); err != nil {
		t.Fatal(err)
	}
	r := new(dns.Msg)
	r.SetReply(q)
	a, _ := dns.NewRR("example.com. 604800 IN A 192.0.2.1")
	r.Answer = append(r.Answer, a)
	rb, _ := r.Pack()
	qend, err := dnsmsg.CheckResponse(rb, &qv)
	if err != nil {
		t.Fatal(err)
	}
	c.Put(&qv, rb, qend)
	out, res := c.Get(&qv, make([]byte, 65536), 512)
	if res == Miss {
		t.Fatal("miss")
	}
	m := new(dns.Msg)
	if err := m.Unpack(out); err != nil {
		t.Fatal(err)
	}
	if ttl := m.Answer[0].Header().Ttl; ttl > 3600 {
		t.Errorf("served TTL %d with max_ttl 1h: clients keep the record for a week", ttl)
	}
}
