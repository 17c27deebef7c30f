package doq

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/quic-go/quic-go"

	"xdoh/datapath/internal/pipetest"
	"xdoh/datapath/tlsconf"
)

var testPKI = sync.OnceValues(func() (*tlsconf.PKI, error) { return tlsconf.NewPKI("127.0.0.1", "localhost") })

func pki(t testing.TB) *tlsconf.PKI {
	t.Helper()
	p, err := testPKI()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// start runs a DoQ server on a loopback port and shuts it down when the
// test ends; Shutdown returning means every connection's and stream's
// goroutine has ended.
func start(t testing.TB, cfg Config, h Handler) *Server {
	t.Helper()
	cfg.Name, cfg.Addr = "test", "127.0.0.1:0"
	cfg.TLS = &tls.Config{Certificates: []tls.Certificate{pki(t).Cert}}
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
	})
	return s
}

func dial(t testing.TB, s *Server, alpn string) (*quic.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := quic.DialAddr(ctx, s.Addr().String(), &tls.Config{RootCAs: pki(t).Pool, ServerName: "localhost", NextProtos: []string{alpn}}, &quic.Config{})
	if err == nil {
		t.Cleanup(func() { c.CloseWithError(0, "") })
	}
	return c, err
}

func mustDial(t testing.TB, s *Server) *quic.Conn {
	t.Helper()
	c, err := dial(t, s, ALPN)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func frame(msg []byte) []byte {
	return append(binary.BigEndian.AppendUint16(nil, uint16(len(msg))), msg...)
}

// exchange sends one query on a new stream, with FIN, and reads the answer
// to the stream's end.
func exchange(ctx context.Context, c *quic.Conn, q []byte) (*dns.Msg, error) {
	st, err := c.OpenStreamSync(ctx)
	if err != nil {
		return nil, err
	}
	if _, err := st.Write(frame(q)); err != nil {
		return nil, err
	}
	st.Close()
	st.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(st)
	if err != nil {
		return nil, err
	}
	if len(b) < 2 || len(b) != 2+int(binary.BigEndian.Uint16(b)) {
		return nil, fmt.Errorf("stream held %d octets, not one framed message", len(b))
	}
	m := new(dns.Msg)
	return m, m.Unpack(b[2:])
}

// TestAnswers: zone and upstream answers, ID 0, DoQ in the query log.
func TestAnswers(t *testing.T) {
	log := &pipetest.Log{}
	s := start(t, Config{}, pipetest.Forwarder(t, &pipetest.Upstream{}, log))
	c := mustDial(t, s)
	for _, tt := range []struct{ qname, want string }{{pipetest.LocalA, pipetest.LocalIP}, {"www.example.org.", pipetest.UpstreamIP}} {
		m, err := exchange(context.Background(), c, pipetest.Query(t, tt.qname, 0))
		if err != nil {
			t.Fatal(err)
		}
		if m.Id != 0 || len(m.Answer) != 1 || m.Answer[0].(*dns.A).A.String() != tt.want {
			t.Errorf("%s: answer %v, want ID 0 and %s", tt.qname, m, tt.want)
		}
	}
	for _, tr := range log.Seen() {
		if tr != "DoQ" {
			t.Errorf("query log transport %q, want DoQ", tr)
		}
	}
}

// TestConcurrentStreams: 300 queries at once on one connection, some held
// up by a slow upstream, through MaxStreams 100: all answered.
func TestConcurrentStreams(t *testing.T) {
	up := &pipetest.Upstream{Delay: func(name string) time.Duration {
		if strings.HasPrefix(name, "slow") {
			return 100 * time.Millisecond
		}
		return 0
	}}
	s := start(t, Config{}, pipetest.Forwarder(t, up, nil))
	c := mustDial(t, s)
	const n = 300
	errs := make(chan error, n)
	for i := range n {
		go func() {
			name := fmt.Sprintf("c%d.example.org", i)
			if i%5 == 0 {
				name = "slow" + name
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			m, err := exchange(ctx, c, pipetest.Query(t, name, 0))
			if err == nil && (len(m.Answer) != 1 || !strings.HasPrefix(m.Answer[0].Header().Name, name)) {
				err = fmt.Errorf("answer %v for %s", m, name)
			}
			errs <- err
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if st := s.Stats(); st.Queries != n || st.Answers != n {
		t.Errorf("stats %+v, want %d queries and answers", st, n)
	}
}

// appCode is the application error code a connection or stream was closed
// with, or -1.
func appCode(err error) int64 {
	var ae *quic.ApplicationError
	if errors.As(err, &ae) {
		return int64(ae.ErrorCode)
	}
	var se *quic.StreamError
	if errors.As(err, &se) {
		return int64(se.ErrorCode)
	}
	return -1
}

// TestBadStreams: each breach of RFC 9250 ends the connection (or, for a
// stream that never sends, the stream) with its code, and is counted.
func TestBadStreams(t *testing.T) {
	q := pipetest.Query(t, pipetest.LocalA, 0)
	withID := pipetest.Query(t, pipetest.LocalA, 4242)
	tests := []struct {
		name     string
		send     []byte
		fin      bool
		wantCode int64
		count    func(Stats) uint64
	}{
		{"two messages", append(frame(q), frame(q)...), true, CodeProtocolError, func(s Stats) uint64 { return s.ProtocolErrors }},
		{"ID not 0", frame(withID), true, CodeProtocolError, func(s Stats) uint64 { return s.ProtocolErrors }},
		{"FIN inside the message", frame(q)[:10], true, CodeProtocolError, func(s Stats) uint64 { return s.ProtocolErrors }},
		{"shorter than a header", frame(q[:5]), true, CodeProtocolError, func(s Stats) uint64 { return s.ProtocolErrors }},
		{"no FIN after the query", frame(q), false, CodeProtocolError, func(s Stats) uint64 { return s.ProtocolErrors }},
		{"never sends its query", []byte{0}, false, CodeRequestCancelled, func(s Stats) uint64 { return s.StreamTimeouts }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := start(t, Config{StreamReadTimeout: 300 * time.Millisecond}, pipetest.Forwarder(t, &pipetest.Upstream{}, nil))
			c := mustDial(t, s)
			st, err := c.OpenStreamSync(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			st.Write(tt.send) // a stream exists for the server once data arrives on it
			if tt.fin {
				st.Close()
			}
			st.SetReadDeadline(time.Now().Add(5 * time.Second))
			_, err = io.ReadAll(st)
			if got := appCode(err); got != tt.wantCode {
				t.Fatalf("stream read ended with %v (code %d), want code %d", err, got, tt.wantCode)
			}
			if n := tt.count(s.Stats()); n != 1 {
				t.Errorf("counter = %d, want 1 (stats %+v)", n, s.Stats())
			}
		})
	}
}

// TestMaxStreams: the client may open MaxStreams streams and no more until
// one is done (QUIC MAX_STREAMS).
func TestMaxStreams(t *testing.T) {
	s := start(t, Config{MaxStreams: 2, StreamReadTimeout: 5 * time.Second}, pipetest.Forwarder(t, &pipetest.Upstream{}, nil))
	c := mustDial(t, s)
	var open []*quic.Stream
	for range 2 {
		st, err := c.OpenStream()
		if err != nil {
			t.Fatal(err)
		}
		open = append(open, st)
	}
	_, err := c.OpenStream()
	var sl *quic.StreamLimitReachedError
	if !errors.As(err, &sl) {
		t.Fatalf("third OpenStream: %v, want StreamLimitReachedError", err)
	}
	// Finish one: a slot opens.
	open[0].Write(frame(pipetest.Query(t, pipetest.LocalA, 0)))
	open[0].Close()
	if _, err := io.ReadAll(open[0]); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := exchange(ctx, c, pipetest.Query(t, pipetest.LocalA, 0)); err != nil {
		t.Fatalf("a query after a stream was freed: %v", err)
	}
}

// TestConnLimits: MaxConns, the idle timeout and a failed handshake, each
// counted.
func TestConnLimits(t *testing.T) {
	t.Run("max conns", func(t *testing.T) {
		s := start(t, Config{MaxConns: 1}, pipetest.Forwarder(t, &pipetest.Upstream{}, nil))
		mustDial(t, s)
		if _, err := dial(t, s, ALPN); err == nil {
			t.Fatal("a second connection past MaxConns 1 was accepted")
		}
		// A refused client retransmits its Initial: each is refused and counted.
		waitFor(t, "the counters", func() bool { st := s.Stats(); return st.Refused >= 1 && st.Conns == 1 })
	})
	t.Run("idle", func(t *testing.T) {
		s := start(t, Config{IdleTimeout: 300 * time.Millisecond}, pipetest.Forwarder(t, &pipetest.Upstream{}, nil))
		mustDial(t, s)
		// The server's idle timeout ends the connection silently (RFC 9000
		// 10.1); the client finds out after its own, at least 5s in quic-go.
		waitFor(t, "IdleClosed", func() bool { return s.Stats().IdleClosed == 1 && s.Stats().Open == 0 })
	})
	t.Run("wrong ALPN", func(t *testing.T) {
		s := start(t, Config{}, pipetest.Forwarder(t, &pipetest.Upstream{}, nil))
		if _, err := dial(t, s, "h3"); err == nil {
			t.Fatal("handshake with ALPN h3 succeeded")
		}
		waitFor(t, "HandshakeErrors", func() bool { return s.Stats().HandshakeErrors == 1 && s.Stats().Open == 0 })
	})
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(5 * time.Second); !cond(); {
		if time.Now().After(end) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
