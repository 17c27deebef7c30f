package doh

import (
	"crypto/tls"
	"net"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/net/http2"
)

// TestNagleClientNotStalled: a client that keeps Nagle's algorithm on and
// writes a POST's HEADERS and DATA in two writes (dnsperf, dnsdist 1.7's
// DoH backend) holds the DATA until the HEADERS segment is acknowledged.
// The server must acknowledge it at once (conn.ackNow), not after the
// kernel's delayed-ACK timer (at least 40 ms on Linux): sequential POSTs
// on one connection must not take 40 ms each. The bound is a quarter of
// what the stall would cost, so a busy machine does not make it fail.
func TestNagleClientNotStalled(t *testing.T) {
	e := newEnv(t, Config{}, nil)
	raw, err := net.Dial("tcp", e.s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	if err := raw.(*net.TCPConn).SetNoDelay(false); err != nil {
		t.Fatal(err)
	}
	nc := tls.Client(raw, &tls.Config{RootCAs: e.pki.Pool, ServerName: "127.0.0.1", NextProtos: []string{"h2"}})
	t.Cleanup(func() { nc.Close() })
	if err := nc.Handshake(); err != nil {
		t.Fatal(err)
	}
	c := newH2(t, nc)
	c.nc = nc
	c.ok(c.writeRaw([]byte(http2.ClientPreface)))
	c.ok(c.fr.WriteSettings())
	q := query(t, "example.com.", dns.TypeA, nil)

	const n = 20
	const stall = 40 * time.Millisecond
	start := time.Now()
	for i := range n {
		id := uint32(2*i + 1)
		// writeRequest writes HEADERS and then DATA: two TLS records in
		// two writes, as the clients above do.
		c.ok(c.writeRequest(id, "POST", len(q), q))
		c.readUntil(c.ended(id))
		if st := c.streams[id]; st.status != "200" {
			t.Fatalf("stream %d: %q, want 200", id, st.status)
		}
	}
	if took := time.Since(start); took > n*stall/4 {
		t.Errorf("%d sequential POSTs from a Nagle client took %v (%v each): the server delays its ACKs", n, took, took/n)
	}
}
