package upstream

import (
	"crypto/tls"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"xdoh/forwarder/upstream/upstreamtest"
)

// TestDoTBIND: a real BIND 9.18 answers DoT queries, many of them
// pipelined on one connection, and a second connection resumes the TLS
// session of the first.
func TestDoTBIND(t *testing.T) {
	b := upstreamtest.StartBIND(t, upstreamtest.BINDOptions{QueryLog: true})
	u := newDoTFor(t, "tls://"+b.DoTAddr, Options{RootCAs: b.RootCAs(), Conns: 1, Timeout: 5 * time.Second})
	before := b.Stats(t)
	const n = 200
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		u.Submit(makeQuery(t, "foo.example.com.", uint16(i)), 0, func(resp []byte, err error) {
			defer wg.Done()
			if err == nil && (resp[0] != byte(i>>8) || resp[1] != byte(i)) {
				err = fmt.Errorf("answer with ID %#x, want %#x", uint16(resp[0])<<8|uint16(resp[1]), i)
			}
			if err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	st := tlsStates(u)
	if len(st) != 1 || st[0].NegotiatedProtocol != "dot" {
		t.Fatalf("TLS connections %v, want one with ALPN dot", st)
	}
	var local netip.AddrPort
	u.mu.Lock()
	for c := range u.live {
		local = netip.MustParseAddrPort(c.nc.LocalAddr().String())
	}
	u.mu.Unlock()
	d := b.Stats(t).Sub(before)
	// Stats' own connection to the statistics channel is one accept.
	if d.QueriesTCP != n || d.QueriesUDP != 0 || d.TCPAccepts != 2 {
		t.Errorf("BIND: %v; want QryTCP=%d QryUDP=0 and 2 TCP accepts (one DoT connection and the statistics channel's)", d, n)
	}
	log := b.QueryLog(t)
	if len(log) != n {
		t.Fatalf("%d query log entries, want %d", len(log), n)
	}
	for _, e := range log {
		if e.Client != local || !e.TCP || e.Flags != "+T" {
			t.Fatalf("query log: %s\nwant client %v (our one DoT connection) and flags +T", e.Line, local)
		}
	}
	t.Logf("BIND 9.18's query log for a DoT query: %s", log[0].Line)

	dropConns(u)
	if _, err := exchange(t, u, "foo.example.com.", 1); err != nil {
		t.Fatal(err)
	}
	st = tlsStates(u)
	if len(st) != 1 {
		t.Fatalf("%d connections after the reconnection, want 1", len(st))
	}
	if !st[0].DidResume || st[0].Version != tls.VersionTLS13 {
		t.Errorf("the reconnection: DidResume %v, version %#x; want a resumed TLS 1.3 session", st[0].DidResume, st[0].Version)
	}
}
