package upstream

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"xdoh/forwarder/upstream/upstreamtest"
)

// Regression (review): a batch larger than the 32 KiB bufio.Writer is flushed by
// WriteData before writeFrames refreshes the write deadline; after the
// connection has been idle longer than dialTime that deadline is in the past.
func TestDoHIdleThenLargeBatchKeepsConnection(t *testing.T) {
	srv := upstreamtest.StartDoHServer(t, true)
	u := newTestDoH(t, srv.URL+"/dns-query", Options{Conns: 1, Timeout: 300 * time.Millisecond}) // dialTime = 1s
	if _, err := Exchange(context.Background(), u, makeQuery(t, "a.example.", 1)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1300 * time.Millisecond) // idle for longer than dialTime

	m := new(dns.Msg)
	m.SetQuestion("big.example.", dns.TypeA)
	m.Id = 2
	txt := &dns.TXT{Hdr: dns.RR_Header{Name: "big.example.", Rrtype: dns.TypeTXT, Class: dns.ClassINET}}
	for range 160 {
		txt.Txt = append(txt.Txt, strings.Repeat("x", 250))
	}
	m.Extra = append(m.Extra, txt)
	big, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("query is %d bytes", len(big))
	if _, err := Exchange(context.Background(), u, big); err != nil {
		t.Fatal(err)
	}
	if n := srv.Conns.Load(); n != 1 {
		t.Errorf("server saw %d connections, want 1: the idle connection was torn down by a stale write deadline", n)
	}
}
