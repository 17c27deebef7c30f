// Package doh is the inbound DNS-over-HTTPS datapath (RFC 8484): an HTTPS
// server, HTTP/2 with HTTP/1.1 fallback, that takes DNS queries by POST
// (application/dns-message body) and GET (?dns= base64url) and hands each to
// the forwarder pipeline through a Handler.
//
// The package knows about HTTP, TLS and the DoH framing, not about DNS
// beyond the header check that keeps garbage away from the pipeline and the
// TTL walk that sets Cache-Control.
package doh

import (
	"context"
	"crypto/fips140"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"xdoh/forwarder"
)

// Defaults for zero Config fields.
const (
	DefaultPath                 = "/dns-query"
	DefaultMaxBodySize          = 65535
	DefaultMaxConcurrentStreams = 256
	DefaultIdleTimeout          = 2 * time.Minute
	DefaultReadHeaderTimeout    = 10 * time.Second
	DefaultReadTimeout          = 30 * time.Second

	shutdownRetry = 2 * time.Second
)

// ErrServerClosed is returned by Start on a server that was shut down.
var ErrServerClosed = errors.New("doh server closed")

// Handler answers one query; it returns the response (which may be appended
// to out[:0]) or nil when the query deserves no answer.
//
// r and r.Msg are valid only until ServeDNS returns.
type Handler interface {
	ServeDNS(ctx context.Context, r *forwarder.Request, out []byte) []byte
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(ctx context.Context, r *forwarder.Request, out []byte) []byte

// ServeDNS calls f.
func (f HandlerFunc) ServeDNS(ctx context.Context, r *forwarder.Request, out []byte) []byte {
	return f(ctx, r, out)
}

// Config describes one DoH listener.
type Config struct {
	Name string // listener name, copied into Request.Listener
	Addr string // "127.0.0.1:8443", "[::]:443"
	Path string // URL path of the endpoint; default "/dns-query"

	// TLS is the server's TLS configuration; alternatively CertFile and
	// KeyFile name a PEM certificate chain and key, which
	// Server.ReloadCertificate reads again. Exactly one of the two must be
	// given. TLS 1.2 is the minimum version either way.
	TLS               *tls.Config
	CertFile, KeyFile string

	// FIPS makes this a DoH-FIPS listener: New fails unless the process runs
	// in Go's FIPS 140-3 mode (GODEBUG=fips140=on or only), TLS is limited
	// to FIPS-approved parameters (TLS 1.2–1.3, ECDHE with AES-GCM, P-256,
	// P-384 and the ML-KEM hybrids; see tls.go), the certificate key must be
	// an approved one, and requests carry forwarder.TransportDoHFIPS.
	FIPS bool

	MaxBodySize          int    // largest query accepted, octets; default and maximum 65535
	MaxConcurrentStreams uint32 // HTTP/2 streams per connection; default 256
	// MaxHeaderBytes bounds an HTTP/1.1 request line and header, and the
	// HTTP/2 header list; default: room for a GET of MaxBodySize plus 8 KiB.
	MaxHeaderBytes int
	// ReadHeaderTimeout bounds the TLS handshake and reading a request's
	// header; default 10s.
	ReadHeaderTimeout time.Duration
	// ReadTimeout bounds reading a whole request, header and body (per
	// stream on HTTP/2); default 30s. On HTTP/1.1 net/http also ends the
	// request's context when it passes, so it caps a query's whole life too.
	ReadTimeout time.Duration
	IdleTimeout time.Duration // idle keep-alive connections are closed after it; default 2m

	// ErrorLog receives what net/http reports: failed TLS handshakes and
	// client protocol errors at debug level, panics and accept errors at
	// warn. Nil means slog.Default().
	ErrorLog *slog.Logger
}

// Server is a DoH listener. Create it with New, run it with Start and stop it
// with Shutdown; or use it as a plain http.Handler.
type Server struct {
	cfg       Config
	h         Handler
	transport forwarder.Transport
	srv       *http.Server
	pool      sync.Pool // *exchange

	cert  atomic.Pointer[tls.Certificate] // served when loaded from CertFile/KeyFile
	stats counters

	mu       sync.Mutex
	ln       net.Listener
	closed   bool
	done     chan struct{} // closed when the serving goroutine returns
	serveErr error         // why serving stopped before Shutdown, if it did
}

var _ http.Handler = (*Server)(nil)

// New checks cfg, fills in defaults, loads the certificate and returns a
// server that is not yet listening. Errors name the offending field.
func New(cfg Config, h Handler) (*Server, error) {
	if h == nil {
		return nil, errors.New("doh: nil Handler")
	}
	if err := cfg.setDefaults(); err != nil {
		return nil, fmt.Errorf("doh listener %q: %w", cfg.Name, err)
	}
	if cfg.FIPS && !fips140.Enabled() {
		return nil, fmt.Errorf("doh listener %q: FIPS: %w", cfg.Name, ErrFIPSModeOff)
	}
	s := &Server{cfg: cfg, h: h, transport: forwarder.TransportDoH}
	if cfg.FIPS {
		s.transport = forwarder.TransportDoHFIPS
	}
	tlsConf, err := s.tlsConfig()
	if err != nil {
		return nil, fmt.Errorf("doh listener %q: %w", cfg.Name, err)
	}
	s.pool.New = func() any { return newExchange() }

	var protocols http.Protocols
	protocols.SetHTTP1(true)
	protocols.SetHTTP2(true)
	s.srv = &http.Server{
		Handler:           s,
		TLSConfig:         tlsConf,
		Protocols:         &protocols,
		ReadHeaderTimeout: cfg.ReadHeaderTimeout,
		ReadTimeout:       cfg.ReadTimeout,
		IdleTimeout:       cfg.IdleTimeout,
		MaxHeaderBytes:    cfg.MaxHeaderBytes,
		ErrorLog:          log.New(errorLogWriter{s}, "", 0),
		HTTP2: &http.HTTP2Config{
			MaxConcurrentStreams: int(cfg.MaxConcurrentStreams),
		},
	}
	return s, nil
}

func (c *Config) setDefaults() error {
	if c.Addr == "" {
		return errors.New("Addr: empty")
	}
	if _, _, err := net.SplitHostPort(c.Addr); err != nil {
		return fmt.Errorf("Addr: %w", err)
	}
	if c.Path == "" {
		c.Path = DefaultPath
	}
	if !strings.HasPrefix(c.Path, "/") {
		return fmt.Errorf("Path: %q does not start with /", c.Path)
	}
	switch {
	case c.MaxBodySize == 0:
		c.MaxBodySize = DefaultMaxBodySize
	case c.MaxBodySize < headerLen || c.MaxBodySize > DefaultMaxBodySize:
		return fmt.Errorf("MaxBodySize: %d is outside %d..%d", c.MaxBodySize, headerLen, DefaultMaxBodySize)
	}
	if c.MaxConcurrentStreams == 0 {
		c.MaxConcurrentStreams = DefaultMaxConcurrentStreams
	}
	switch {
	case c.MaxHeaderBytes == 0:
		// A GET carries the whole query in the URL.
		c.MaxHeaderBytes = base64.URLEncoding.EncodedLen(c.MaxBodySize) + 8<<10
	case c.MaxHeaderBytes < 0:
		return fmt.Errorf("MaxHeaderBytes: %d is negative", c.MaxHeaderBytes)
	}
	for _, d := range []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{
		{"ReadHeaderTimeout", &c.ReadHeaderTimeout, DefaultReadHeaderTimeout},
		{"ReadTimeout", &c.ReadTimeout, DefaultReadTimeout},
		{"IdleTimeout", &c.IdleTimeout, DefaultIdleTimeout},
	} {
		switch {
		case *d.v == 0:
			*d.v = d.def
		case *d.v < 0:
			return fmt.Errorf("%s: %v is negative", d.name, *d.v)
		}
	}
	return nil
}

// Start listens on Config.Addr (TCP) and serves TLS in the background.
func (s *Server) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.closed:
		return ErrServerClosed
	case s.ln != nil:
		return fmt.Errorf("doh listener %q: already started", s.cfg.Name)
	}
	ln, err := net.Listen("tcp", s.cfg.Addr)
	if err != nil {
		return fmt.Errorf("doh listener %q: listening on %s: %w", s.cfg.Name, s.cfg.Addr, err)
	}
	s.ln = ln
	s.done = make(chan struct{})
	go func() {
		defer close(s.done)
		// ServeTLS adds "h2" to the ALPN protocols. It returns
		// ErrServerClosed after Shutdown; anything else is an accept error
		// it could not retry, kept for Shutdown to report.
		if err := s.srv.ServeTLS(ln, "", ""); !errors.Is(err, http.ErrServerClosed) {
			s.mu.Lock()
			s.serveErr = err
			s.mu.Unlock()
		}
	}()
	return nil
}

// Addr returns the address the server listens on, with port 0 resolved, or
// nil before Start.
func (s *Server) Addr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln == nil {
		return nil
	}
	return s.ln.Addr()
}

// Shutdown stops accepting connections, waits for in-flight queries to be
// answered and idle connections to close, or for ctx to end, whichever comes
// first. A server that is shut down cannot be started again.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closed = true
	done := s.done
	s.mu.Unlock()
	for {
		// An HTTP/2 connection whose TLS handshake ends after Shutdown has
		// sent GOAWAY to the others never gets one and would hold Shutdown
		// until IdleTimeout. Each call sends GOAWAY to the newcomers.
		attempt, cancel := context.WithTimeout(ctx, shutdownRetry)
		err := s.srv.Shutdown(attempt)
		cancel()
		if err == nil {
			break
		}
		if !errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil {
			return fmt.Errorf("doh listener %q: shutting down: %w", s.cfg.Name, err)
		}
	}
	if done == nil {
		return nil
	}
	select {
	case <-done:
	case <-ctx.Done():
		return fmt.Errorf("doh listener %q: shutting down: %w", s.cfg.Name, ctx.Err())
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.serveErr != nil {
		return fmt.Errorf("doh listener %q: serving: %w", s.cfg.Name, s.serveErr)
	}
	return nil
}

// errorLogWriter turns net/http's log lines into slog records. Most are what
// clients do wrong (handshakes that fail, HTTP/2 protocol errors): debug
// level. Panics, accept errors and misuse of the ResponseWriter are ours:
// warn.
type errorLogWriter struct{ s *Server }

var warnMarkers = []string{"panic serving", "Accept error", "superfluous", "hijacked", "WriteHeader called", "invalid Content-Length"}

func (w errorLogWriter) Write(p []byte) (int, error) {
	msg := strings.TrimSuffix(string(p), "\n")
	level := slog.LevelDebug
	if strings.HasPrefix(msg, "http: TLS handshake error") {
		w.s.stats.handshakeErrors.Add(1)
	} else {
		for _, m := range warnMarkers {
			if strings.Contains(msg, m) {
				level = slog.LevelWarn
				break
			}
		}
	}
	l := w.s.cfg.ErrorLog
	if l == nil {
		l = slog.Default()
	}
	l.Log(context.Background(), level, msg, "listener", w.s.cfg.Name)
	return len(p), nil
}
