package dot

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/miekg/dns"

	"xdoh/datapath/internal/pipetest"
	"xdoh/datapath/tlsconf"
)

var testPKI *tlsconf.PKI

func pki(t testing.TB) *tlsconf.PKI {
	t.Helper()
	if testPKI == nil {
		p, err := tlsconf.NewPKI("127.0.0.1", "localhost")
		if err != nil {
			t.Fatal(err)
		}
		testPKI = p
	}
	return testPKI
}

// start runs a DoT server on a loopback port in front of h and shuts it
// down when the test ends; Shutdown returning means every connection's
// goroutines have ended.
func start(t testing.TB, cfg Config, h Handler) *Server {
	t.Helper()
	cfg.Name, cfg.Addr = "test", "127.0.0.1:0"
	if cfg.CertFile == "" {
		cfg.TLS = &tls.Config{Certificates: []tls.Certificate{pki(t).Cert}}
	}
	s, err := New(cfg, h)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if n := s.Stats().Open; n != 0 {
			t.Errorf("%d connections open after Shutdown", n)
		}
	})
	return s
}

// dial opens a DoT connection trusting the test CA.
func dial(t testing.TB, s *Server) *tls.Conn {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", s.Addr().String(),
		&tls.Config{RootCAs: pki(t).Pool, ServerName: "localhost", NextProtos: []string{ALPN}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func frame(msg []byte) []byte {
	return append(binary.BigEndian.AppendUint16(nil, uint16(len(msg))), msg...)
}

// readAnswer reads one framed answer.
func readAnswer(t testing.TB, r io.Reader) *dns.Msg {
	t.Helper()
	var p [2]byte
	if _, err := io.ReadFull(r, p[:]); err != nil {
		t.Fatalf("reading an answer: %v", err)
	}
	b := make([]byte, binary.BigEndian.Uint16(p[:]))
	if _, err := io.ReadFull(r, b); err != nil {
		t.Fatalf("reading an answer: %v", err)
	}
	m := new(dns.Msg)
	if err := m.Unpack(b); err != nil {
		t.Fatal(err)
	}
	return m
}

// waitFor polls cond for up to 5s.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(5 * time.Second); !cond(); {
		if time.Now().After(end) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// closedByServer reports whether the server closed c: a read ends with
// EOF or a reset within 5s.
func closedByServer(t testing.TB, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := c.Read(make([]byte, 1))
	if err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read = %v, want the connection closed by the server", err)
	}
}

// TestAnswers: local, upstream and NXDOMAIN-free answers over one
// connection, with the DoT transport in the query log.
func TestAnswers(t *testing.T) {
	log := &pipetest.Log{}
	s := start(t, Config{}, pipetest.Forwarder(t, &pipetest.Upstream{}, log))
	c := dial(t, s)
	if p := c.ConnectionState().NegotiatedProtocol; p != ALPN {
		t.Errorf("ALPN %q, want %q", p, ALPN)
	}
	tests := []struct {
		name, qname, want string
	}{
		{"zone", pipetest.LocalA, pipetest.LocalIP},
		{"upstream", "www.example.org.", pipetest.UpstreamIP},
		{"cached", "www.example.org.", pipetest.UpstreamIP},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := c.Write(frame(pipetest.Query(t, tt.qname, uint16(i+1)))); err != nil {
				t.Fatal(err)
			}
			m := readAnswer(t, c)
			if m.Id != uint16(i+1) || len(m.Answer) != 1 || m.Answer[0].(*dns.A).A.String() != tt.want {
				t.Fatalf("answer %v, want ID %d and %s", m, i+1, tt.want)
			}
		})
	}
	for _, tr := range log.Seen() {
		if tr != "DoT" {
			t.Errorf("query log transport %q, want DoT", tr)
		}
	}
}
