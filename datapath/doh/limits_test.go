package doh

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/net/http2"

	"xdoh/datapath/tlsconf"
)

// logBuffer collects slog output; safe for concurrent use.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// startServerWith runs a Server configured by cfg (Addr, TLS and Name
// filled in when empty) and returns it with its PKI.
func startServerWith(t *testing.T, cfg Config) (*Server, *tlsconf.PKI) {
	t.Helper()
	pki := mustPKI(t)
	if cfg.Name == "" {
		cfg.Name = "test"
	}
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:0"
	}
	if cfg.TLS == nil && cfg.CertFile == "" {
		cfg.TLS = &tls.Config{Certificates: []tls.Certificate{pki.Cert}}
	}
	s, err := New(cfg, answerHandler(t))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if err := s.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
	return s, pki
}

func TestStats(t *testing.T) {
	s, pki := startServerWith(t, Config{MaxBodySize: testMaxBody})
	c := newClient(t, pki)
	base := "https://" + s.Addr().String()
	ok := query(t, "example.com.", dns.TypeA, nil)
	big := make([]byte, testMaxBody+1)
	requests := []struct {
		method, target, contentType string
		body                        []byte
	}{
		{"POST", "/dns-query", mediaType, ok},
		{"GET", "/dns-query?dns=" + base64.RawURLEncoding.EncodeToString(ok), "", nil},
		{"POST", "/dns-query", mediaType, ok[:5]},                                       // 400
		{"GET", "/dns-query", "", nil},                                                  // 400
		{"POST", "/dns-query", mediaType, query(t, "drop.example.com.", 1, nil)},        // 400: not answered
		{"POST", "/dns-query", "text/plain", ok},                                        // 415
		{"POST", "/dns-query", mediaType, big},                                          // 413
		{"PUT", "/dns-query", mediaType, ok},                                            // 405
		{"POST", "/other", mediaType, ok},                                               // 404
		{"GET", "/", "", nil},                                                           // 404
		{"GET", "/dns-query?dns=" + base64.RawURLEncoding.EncodeToString(big), "", nil}, // 413
	}
	for _, r := range requests {
		req, err := http.NewRequest(r.method, base+r.target, bytes.NewReader(r.body))
		if err != nil {
			t.Fatal(err)
		}
		if r.contentType != "" {
			req.Header.Set("Content-Type", r.contentType)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", r.method, r.target, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	want := Stats{OK: 2, BadRequest: 3, UnsupportedMediaType: 1, TooLarge: 2, MethodNotAllowed: 1, NotFound: 2, Conns: 1, Open: 1}
	if got := s.Stats(); got != want {
		t.Errorf("Stats() = %+v\nwant        %+v", got, want)
	}
}

// TestServerHTTP2Settings reads the SETTINGS the server sends on a new
// HTTP/2 connection.
func TestServerHTTP2Settings(t *testing.T) {
	s, pki := startServerWith(t, Config{MaxConcurrentStreams: 17, MaxHeaderBytes: 4000})
	c, err := tls.Dial("tcp", s.Addr().String(), &tls.Config{RootCAs: pki.Pool, NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if p := c.ConnectionState().NegotiatedProtocol; p != "h2" {
		t.Fatalf("ALPN = %q, want h2", p)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(c, c)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("reading frames: %v", err)
		}
		sf, ok := f.(*http2.SettingsFrame)
		if !ok || sf.IsAck() {
			continue
		}
		if v, ok := sf.Value(http2.SettingMaxConcurrentStreams); !ok || v != 17 {
			t.Errorf("SETTINGS_MAX_CONCURRENT_STREAMS = %d (sent: %v), want 17", v, ok)
		}
		if v, ok := sf.Value(http2.SettingMaxHeaderListSize); !ok || v != 4000 {
			t.Errorf("SETTINGS_MAX_HEADER_LIST_SIZE = %d (sent: %v), want 4000", v, ok)
		}
		return
	}
}

func TestServerMaxHeaderBytes(t *testing.T) {
	s, pki := startServerWith(t, Config{MaxHeaderBytes: 4000})
	url := "https://" + s.Addr().String() + "/dns-query?dns=" + base64.RawURLEncoding.EncodeToString(query(t, "example.com.", dns.TypeA, nil))
	c := newClient(t, pki)
	for _, tt := range []struct {
		pad     int
		wantErr bool // the client refuses to send what the server said it would not take
	}{
		{pad: 1000},
		{pad: 8000, wantErr: true},
	} {
		req, _ := http.NewRequest("GET", url, nil)
		req.Header.Set("X-Pad", strings.Repeat("a", tt.pad))
		resp, err := c.Do(req)
		if tt.wantErr {
			if err == nil {
				resp.Body.Close()
				t.Errorf("%d octets of header sent, want the client to refuse", tt.pad)
			}
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("%d octets of header: status %d, want 200", tt.pad, resp.StatusCode)
		}
	}
}

// TestServerReadHeaderTimeout: a client that connects and never completes
// the TLS handshake is dropped after ReadHeaderTimeout, and the failed
// handshake goes to ErrorLog at debug level and into Stats.
func TestServerReadHeaderTimeout(t *testing.T) {
	var logs logBuffer
	errorLog := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	const timeout = 300 * time.Millisecond
	s, _ := startServerWith(t, Config{ReadHeaderTimeout: timeout, ErrorLog: errorLog})
	c, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	c.SetReadDeadline(start.Add(10 * timeout))
	_, err = c.Read(make([]byte, 1))
	if ne := (net.Error)(nil); errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("connection still open after %v", time.Since(start))
	}
	if d := time.Since(start); d < timeout/2 {
		t.Errorf("connection closed after %v, before ReadHeaderTimeout %v", d, timeout)
	}
	// The log line is written after the connection is closed.
	for deadline := time.Now().Add(5 * time.Second); s.Stats().HandshakeErrors == 0 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if n := s.Stats().HandshakeErrors; n != 1 {
		t.Errorf("Stats().HandshakeErrors = %d, want 1", n)
	}
	if l := logs.String(); !strings.Contains(l, "level=DEBUG") || !strings.Contains(l, "TLS handshake error") || !strings.Contains(l, "listener=test") {
		t.Errorf("ErrorLog got %q, want a debug record of the handshake error", l)
	}
}

// TestServerIdleTimeout: an idle HTTP/2 connection gets GOAWAY NO_ERROR
// and is closed.
func TestServerIdleTimeout(t *testing.T) {
	const idle = 300 * time.Millisecond
	s, pki := startServerWith(t, Config{IdleTimeout: idle})
	c, err := tls.Dial("tcp", s.Addr().String(), &tls.Config{RootCAs: pki.Pool, NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, http2.ClientPreface)
	fr := http2.NewFramer(c, c)
	fr.WriteSettings()
	start := time.Now()
	var goAway *http2.GoAwayFrame
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			if !errors.Is(err, io.EOF) {
				t.Fatalf("reading frames: %v", err)
			}
			break
		}
		if g, ok := f.(*http2.GoAwayFrame); ok {
			goAway = g
		}
	}
	if d := time.Since(start); d < idle/2 || d > 5*time.Second {
		t.Errorf("idle connection closed after %v, want about %v", d, idle)
	}
	if goAway == nil || goAway.ErrCode != http2.ErrCodeNo {
		t.Errorf("GOAWAY before the close = %v, want NO_ERROR", goAway)
	}
	if n := s.Stats().IdleClosed; n != 1 {
		t.Errorf("Stats().IdleClosed = %d, want 1", n)
	}
}

// TestConnLimits: past MaxConns, or MaxConnsPerClient from one address, a
// connection is reset before its handshake, counted apart; another
// address still gets in while only the per-client limit is reached, and a
// closed connection frees its slots.
func TestConnLimits(t *testing.T) {
	dialFrom := func(e *h2env, from string) (*tls.Conn, error) {
		d := &net.Dialer{Timeout: readWait, LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
		c, err := tls.DialWithDialer(d, "tcp", e.s.Addr().String(), &tls.Config{RootCAs: e.pki.Pool, NextProtos: []string{"h2"}})
		if err == nil {
			t.Cleanup(func() { c.Close() })
		}
		return c, err
	}
	t.Run("per client", func(t *testing.T) {
		e := newEnv(t, Config{MaxConnsPerClient: 2}, nil)
		first := e.dial(t)
		e.dial(t)
		e.waitStats(t, "2 open", func(s Stats) bool { return s.Open == 2 })
		if _, err := dialFrom(e, "127.0.0.1"); err == nil {
			t.Fatal("a third connection from 127.0.0.1 completed its handshake")
		}
		if _, err := dialFrom(e, "127.0.0.2"); err != nil {
			t.Fatalf("from 127.0.0.2: %v", err)
		}
		// A refusal is counted after the connection is closed: the
		// client may see the close first.
		e.waitStats(t, "RefusedPerClient 1, Refused 0, Conns 3", func(st Stats) bool {
			return st.RefusedPerClient == 1 && st.Refused == 0 && st.Conns == 3
		})
		first.nc.Close()
		e.waitStats(t, "2 open", func(s Stats) bool { return s.Open == 2 })
		if _, err := dialFrom(e, "127.0.0.1"); err != nil {
			t.Fatalf("after a close: %v", err)
		}
	})
	t.Run("total", func(t *testing.T) {
		e := newEnv(t, Config{MaxConns: 2}, nil)
		e.dial(t)
		if _, err := dialFrom(e, "127.0.0.2"); err != nil {
			t.Fatal(err)
		}
		e.waitStats(t, "2 open", func(s Stats) bool { return s.Open == 2 })
		if _, err := dialFrom(e, "127.0.0.3"); err == nil {
			t.Fatal("a third connection completed its handshake")
		}
		e.waitStats(t, "Refused 1, RefusedPerClient 0", func(st Stats) bool { return st.Refused == 1 && st.RefusedPerClient == 0 })
	})
}

// TestSlowPreface (slowloris): a client that completes the TLS handshake
// and then sends the HTTP/2 preface a few octets at a time, too slowly, is
// closed once ReadHeaderTimeout has passed since it connected, counted in
// Timeouts.
func TestSlowPreface(t *testing.T) {
	e := newEnv(t, Config{ReadHeaderTimeout: 300 * time.Millisecond}, nil)
	nc, err := tls.Dial("tcp", e.s.Addr().String(), &tls.Config{RootCAs: e.pki.Pool, NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	go func() {
		for i := 0; i < len(http2.ClientPreface)-1; i++ { // never the whole preface
			if _, err := nc.Write([]byte{http2.ClientPreface[i]}); err != nil {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	nc.SetReadDeadline(time.Now().Add(readWait))
	if _, err := io.Copy(io.Discard, nc); errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the server did not close the connection within %v", readWait)
	}
	e.waitStats(t, "Timeouts 1", func(s Stats) bool { return s.Timeouts == 1 })
	e.settled(t)
}
