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
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"xdoh/forwarder"
)

// Defaults for zero Config fields.
const (
	DefaultPath                 = "/dns-query"
	DefaultMaxBodySize          = 65535
	DefaultMaxConcurrentStreams = 256
	DefaultIdleTimeout          = 2 * time.Minute

	readHeaderTimeout = 10 * time.Second
	shutdownRetry     = 2 * time.Second
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
	// KeyFile name a PEM certificate chain and key. Exactly one of the two
	// must be given. TLS 1.2 is the minimum version either way.
	TLS               *tls.Config
	CertFile, KeyFile string

	MaxBodySize          int           // largest query accepted, octets; default and maximum 65535
	MaxConcurrentStreams uint32        // HTTP/2 streams per connection; default 256
	IdleTimeout          time.Duration // idle keep-alive connections are closed after it; default 2m
}

// Server is a DoH listener. Create it with New, run it with Start and stop it
// with Shutdown; or use it as a plain http.Handler.
type Server struct {
	cfg  Config
	h    Handler
	srv  *http.Server
	pool sync.Pool // *exchange

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
	tlsConf, err := cfg.tlsConfig()
	if err != nil {
		return nil, fmt.Errorf("doh listener %q: %w", cfg.Name, err)
	}
	s := &Server{cfg: cfg, h: h}
	s.pool.New = func() any { return newExchange() }

	var protocols http.Protocols
	protocols.SetHTTP1(true)
	protocols.SetHTTP2(true)
	s.srv = &http.Server{
		Handler:           s,
		TLSConfig:         tlsConf,
		Protocols:         &protocols,
		ReadHeaderTimeout: readHeaderTimeout,
		IdleTimeout:       cfg.IdleTimeout,
		// A GET carries the whole query in the URL.
		MaxHeaderBytes: base64.URLEncoding.EncodedLen(cfg.MaxBodySize) + 8<<10,
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
	case c.IdleTimeout == 0:
		c.IdleTimeout = DefaultIdleTimeout
	case c.IdleTimeout < 0:
		return fmt.Errorf("IdleTimeout: %v is negative", c.IdleTimeout)
	}
	return nil
}

// tlsConfig builds the server's TLS configuration from TLS or the files.
func (c *Config) tlsConfig() (*tls.Config, error) {
	files := c.CertFile != "" || c.KeyFile != ""
	switch {
	case c.TLS != nil && files:
		return nil, errors.New("TLS and CertFile/KeyFile: only one may be set")
	case c.TLS == nil && !files:
		return nil, errors.New("TLS or CertFile/KeyFile: no certificate configured")
	case files && c.CertFile == "":
		return nil, errors.New("CertFile: empty while KeyFile is set")
	case files && c.KeyFile == "":
		return nil, errors.New("KeyFile: empty while CertFile is set")
	}
	var conf *tls.Config
	if c.TLS != nil {
		conf = c.TLS.Clone()
		if len(conf.Certificates) == 0 && conf.GetCertificate == nil && conf.GetConfigForClient == nil {
			return nil, errors.New("TLS: no certificate (Certificates, GetCertificate or GetConfigForClient)")
		}
	} else {
		cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("CertFile/KeyFile: loading key pair: %w", err)
		}
		conf = &tls.Config{Certificates: []tls.Certificate{cert}}
	}
	if conf.MinVersion < tls.VersionTLS12 {
		conf.MinVersion = tls.VersionTLS12
	}
	return conf, nil
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
