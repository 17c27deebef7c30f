package upstream

import (
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"xdoh/datapath/tlsconf"
	"xdoh/forwarder/upstream/upstreamtest"
)

// bootstrapVia is the bootstrap list of the tests: 127.0.0.2, where
// nothing listens (the test servers are on 127.0.0.1), then 127.0.0.1,
// so that a dial that starts with the first has to move on.
var bootstrapVia = []netip.Addr{netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.1")}

// TestBootstrapDoH: a DoH target named by a host no resolver knows is
// dialled at its bootstrap addresses, and the host is what the client
// sends as SNI and :authority and what it verifies the certificate for
// (the server's certificate carries only that name, no address).
func TestBootstrapDoH(t *testing.T) {
	pki, err := tlsconf.NewPKI(upstreamtest.BootstrapHost)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var snis, authorities []string
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		snis, authorities = append(snis, r.TLS.ServerName), append(authorities, r.Host)
		mu.Unlock()
		body, err := io.ReadAll(r.Body)
		q := new(dns.Msg)
		if err != nil || q.Unpack(body) != nil || len(q.Question) != 1 {
			http.Error(w, "bad query", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", upstreamtest.DNSMessage)
		w.Write(upstreamtest.MustPack(upstreamtest.AnswerFor(q)))
	}))
	srv.EnableHTTP2 = true
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{pki.Cert}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	authority := upstreamtest.BootstrapHost + ":" + port

	u, err := New("https://"+authority+"/dns-query", Options{RootCAs: pki.Pool, Conns: 2, Bootstrap: bootstrapVia, Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { u.Close() })
	for i := range 4 {
		resp, err := exchange(t, u, "boot.example.", uint16(i))
		if err != nil {
			t.Fatalf("query %d: %v", i, err)
		}
		checkAnswer(t, resp, "boot.example.", uint16(i))
		dropH2Conns(u.(*DoH)) // the next query dials again, from the next address
	}
	mu.Lock()
	defer mu.Unlock()
	for i := range snis {
		if snis[i] != upstreamtest.BootstrapHost || authorities[i] != authority {
			t.Errorf("request %d: SNI %q, :authority %q; want %q, %q", i, snis[i], authorities[i], upstreamtest.BootstrapHost, authority)
		}
	}
	if len(snis) != 4 {
		t.Errorf("%d requests, want 4", len(snis))
	}
}

// dropH2Conns shuts down every connection of d, as broken ones would be.
func dropH2Conns(d *DoH) {
	d.mu.Lock()
	var cs []*h2Conn
	for c := range d.conns {
		cs = append(cs, c)
	}
	d.mu.Unlock()
	for _, c := range cs {
		c.shutdown(ErrConnClosed)
	}
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		d.mu.Lock()
		n := len(d.conns)
		d.mu.Unlock()
		if n == 0 {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestBootstrapDoT: the same for a DoT target; the server sees the host as
// SNI on every connection.
func TestBootstrapDoT(t *testing.T) {
	f := upstreamtest.StartDoTFault(t, upstreamtest.TCPAnswerAll)
	_, port, _ := net.SplitHostPort(f.Addr)
	u := newDoTFor(t, "tls://"+upstreamtest.BootstrapHost+":"+port, Options{RootCAs: upstreamtest.PKI(t).Pool, Conns: 1, Bootstrap: bootstrapVia})
	for i := range 3 {
		resp, err := exchange(t, u, "boot.example.", uint16(i))
		if err != nil {
			t.Fatalf("query %d: %v", i, err)
		}
		checkAnswer(t, resp, "boot.example.", uint16(i))
		if sni := f.Conn(i + 1).(*tls.Conn).ConnectionState().ServerName; sni != upstreamtest.BootstrapHost {
			t.Errorf("connection %d: SNI %q, want %q", i+1, sni, upstreamtest.BootstrapHost)
		}
		dropConns(u)
	}
}

// TestBootstrapDoQ: the same for a DoQ target (127.0.0.2 answers the QUIC
// dial with ICMP port unreachable, and the dial moves on).
func TestBootstrapDoQ(t *testing.T) {
	var mu sync.Mutex
	var snis []string
	s := upstreamtest.StartDoQServer(t, upstreamtest.DoQServerOptions{}, func(r *upstreamtest.DoQQuery) {
		mu.Lock()
		snis = append(snis, r.Conn.ConnectionState().TLS.ServerName)
		mu.Unlock()
		r.Answer(upstreamtest.AnswerFor(r.Msg))
	})
	_, port, _ := net.SplitHostPort(s.Addr)
	u := newDoQFor(t, "quic://"+upstreamtest.BootstrapHost+":"+port, Options{Conns: 1, Bootstrap: bootstrapVia, Timeout: 2 * time.Second})
	for i := range 2 {
		resp, err := exchange(t, u, "boot.example.", uint16(i))
		if err != nil {
			t.Fatalf("query %d: %v", i, err)
		}
		checkAnswer(t, resp, "boot.example.", uint16(i))
	}
	mu.Lock()
	defer mu.Unlock()
	if len(snis) != 2 || snis[0] != upstreamtest.BootstrapHost {
		t.Errorf("SNIs %q, want %q", snis, upstreamtest.BootstrapHost)
	}
}

// TestBootstrapOptions: bootstrap addresses only go with a target named
// by host.
func TestBootstrapOptions(t *testing.T) {
	for target, want := range map[string]string{
		"https://127.0.0.1/dns-query": "127.0.0.1 is an IP address",
		"tls://[::1]:853":             "::1 is an IP address",
		"udp://127.0.0.1":             "for https, tls and quic targets named by host",
		"tcp://127.0.0.1":             "for https, tls and quic targets named by host",
	} {
		_, err := New(target, Options{Bootstrap: bootstrapVia})
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("New(%q) with bootstrap: %v, want an error with %q", target, err, want)
		}
	}
}
