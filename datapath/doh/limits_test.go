package doh

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/net/http2"
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
func startServerWith(t *testing.T, cfg Config) (*Server, *PKI) {
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
	pki := mustPKI(t)
	s, err := New(Config{Name: "test", Addr: "127.0.0.1:0", TLS: &tls.Config{Certificates: []tls.Certificate{pki.Cert}}, MaxBodySize: testMaxBody}, answerHandler(t))
	if err != nil {
		t.Fatal(err)
	}
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
		req := httptest.NewRequest(r.method, r.target, bytes.NewReader(r.body))
		if r.contentType != "" {
			req.Header.Set("Content-Type", r.contentType)
		}
		req.RemoteAddr = "127.0.0.1:5353"
		s.ServeHTTP(httptest.NewRecorder(), req)
	}
	want := Stats{OK: 2, BadRequest: 3, UnsupportedMediaType: 1, TooLarge: 2, MethodNotAllowed: 1, NotFound: 2}
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
		// net/http pads MaxHeaderBytes by 32 octets for each of 10 fields.
		if v, ok := sf.Value(http2.SettingMaxHeaderListSize); !ok || v != 4000+320 {
			t.Errorf("SETTINGS_MAX_HEADER_LIST_SIZE = %d (sent: %v), want %d", v, ok, 4000+320)
		}
		return
	}
}

func TestServerMaxHeaderBytes(t *testing.T) {
	s, pki := startServerWith(t, Config{MaxHeaderBytes: 4000})
	url := "https://" + s.Addr().String() + "/dns-query?dns=" + base64.RawURLEncoding.EncodeToString(query(t, "example.com.", dns.TypeA, nil))
	for _, h1 := range []bool{true, false} {
		c := newClient(t, pki, h1)
		for _, tt := range []struct {
			pad     int
			wantErr bool // HTTP/2: the client refuses to send what the server said it would not take
			want    int
		}{
			{pad: 1000, want: 200},
			{pad: 8000, want: http.StatusRequestHeaderFieldsTooLarge, wantErr: !h1},
		} {
			req, _ := http.NewRequest("GET", url, nil)
			req.Header.Set("X-Pad", strings.Repeat("a", tt.pad))
			resp, err := c.Do(req)
			if tt.wantErr {
				if err == nil {
					resp.Body.Close()
					t.Errorf("h1=%v: %d octets of header sent, want the client to refuse", h1, tt.pad)
				}
				continue
			}
			if err != nil {
				t.Fatalf("h1=%v: %v", h1, err)
			}
			resp.Body.Close()
			if resp.StatusCode != tt.want {
				t.Errorf("h1=%v, %d octets of header: status %d, want %d", h1, tt.pad, resp.StatusCode, tt.want)
			}
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

// TestServerIdleTimeout: an idle HTTP/1.1 keep-alive connection is closed.
func TestServerIdleTimeout(t *testing.T) {
	const idle = 300 * time.Millisecond
	s, pki := startServerWith(t, Config{IdleTimeout: idle})
	c, err := tls.Dial("tcp", s.Addr().String(), &tls.Config{RootCAs: pki.Pool, NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	req, _ := http.NewRequest("GET", "https://"+s.Addr().String()+"/dns-query?dns="+base64.RawURLEncoding.EncodeToString(query(t, "example.com.", dns.TypeA, nil)), nil)
	if err := req.Write(c); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Close {
		t.Fatalf("status %d, close %v; want 200 on a kept-alive connection", resp.StatusCode, resp.Close)
	}
	start := time.Now()
	if _, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("reading the idle connection: %v, want EOF", err)
	}
	if d := time.Since(start); d < idle/2 || d > 5*time.Second {
		t.Errorf("idle connection closed after %v, want about %v", d, idle)
	}
}
