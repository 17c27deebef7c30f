// Package doh is the inbound DNS-over-HTTPS datapath (RFC 8484): an HTTP/2
// server over TLS that takes DNS queries by POST (application/dns-message
// body) and GET (?dns= base64url) and hands each to the forwarder pipeline.
//
// The server is written on golang.org/x/net/http2's Framer and hpack, the
// same pieces the upstream DoH client uses, rather than on net/http: each
// connection has one reader goroutine that parses frames and runs the
// pipeline's non-blocking Answer for every complete request, and one writer
// goroutine that sends what upstream resolutions answer later (Resolve's
// callback). No goroutine per stream, and the answers a read batch produces
// leave in one write. Only HTTP/2 is spoken (ALPN "h2", RFC 8484 section
// 5.2's minimum); an HTTP/1.1 request gets a 505 and the connection is
// closed.
//
// Files by owner: server.go (listener, lifecycle, limits), conn.go (the
// reader goroutine: frames, streams, flow control in), request.go (header
// decoding and the DoH request rules), write.go (everything that writes:
// responses, flow control out, the writer goroutine), sock.go (the TCP
// socket under TLS: when the reader idles, one write per batch), tls.go
// (certificate reload; the certificates and the FIPS gate are
// datapath/tlsconf's), cachecontrol.go (max-age from the
// answer's TTLs).
//
// The package knows about HTTP/2, TLS and the DoH framing, not about DNS
// beyond the header check that keeps garbage away from the pipeline and the
// TTL walk that sets Cache-Control.
package doh

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"xdoh/datapath/internal/connset"
	"xdoh/datapath/tlsconf"
	"xdoh/forwarder"
)

// Defaults for zero Config fields.
const (
	DefaultPath                 = "/dns-query"
	DefaultMaxBodySize          = 65535
	DefaultMaxConcurrentStreams = 256
	DefaultMaxConns             = 1000
	DefaultMaxConnsPerClient    = 64
	DefaultMaxResetRate         = 100
	DefaultIdleTimeout          = 2 * time.Minute
	DefaultReadHeaderTimeout    = 10 * time.Second
	DefaultReadTimeout          = 30 * time.Second
	DefaultWriteTimeout         = 10 * time.Second
	// DefaultMaxPending bounds what one connection may have waiting to be
	// written (answers and control frames not yet taken by the kernel, and
	// answers held back by the client's flow control).
	DefaultMaxPending = 1 << 20
)

// ErrServerClosed is returned by Start on a server that was shut down.
var ErrServerClosed = errors.New("doh server closed")

// Handler is the pipeline as the DoH server uses it: the same two calls as
// the UDP datapath's.
type Handler interface {
	// Answer does not block. (resp, true) means reply now with resp (nil:
	// the query deserves no answer); false means call Resolve with the
	// same request.
	Answer(r *forwarder.Request, out []byte) ([]byte, bool)
	// Resolve copies r and later calls done(resp), possibly before it
	// returns, or returns (resp, true) to reply at once without calling
	// done. done must not block.
	Resolve(r *forwarder.Request, out []byte, done func(resp []byte)) ([]byte, bool)
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
	// P-384 and the ML-KEM hybrids; see datapath/tlsconf), the certificate key must be
	// an approved one, and requests carry forwarder.TransportDoHFIPS.
	FIPS bool

	MaxBodySize          int    // largest query accepted, octets; default and maximum 65535
	MaxConcurrentStreams uint32 // HTTP/2 streams per connection; default 256
	// MaxConns bounds open connections, and MaxConnsPerClient those from
	// one client address; one more is reset as soon as it is accepted,
	// before its handshake. Defaults 1000 and 64.
	MaxConns, MaxConnsPerClient int
	// MaxResetRate is the rapid-reset bound (CVE-2023-44487): a client
	// may reset, on average, this many streams a second whose queries are
	// in flight (with a burst of ten seconds' worth); past it the
	// connection gets GOAWAY ENHANCE_YOUR_CALM. Default 100.
	MaxResetRate int
	// MaxHeaderBytes bounds a request's decoded header list
	// (SETTINGS_MAX_HEADER_LIST_SIZE; larger gets 431) and, with 16 KiB
	// more, its encoded header block (larger ends the connection); default:
	// room for a GET of MaxBodySize plus 8 KiB.
	MaxHeaderBytes int
	// ReadHeaderTimeout bounds the TLS handshake and the client preface,
	// and a header block split over CONTINUATION frames; default 10s.
	ReadHeaderTimeout time.Duration
	// ReadTimeout bounds reading one request, from its HEADERS to its last
	// DATA; a stream that takes longer is reset. Default 30s.
	ReadTimeout time.Duration
	// WriteTimeout bounds one write to the client; a client that takes
	// none of its answers for this long is cut off. Default 10s.
	WriteTimeout time.Duration
	// IdleTimeout closes a connection without open streams that sent
	// nothing for this long, with GOAWAY; default 2m.
	IdleTimeout time.Duration
	// MaxPending bounds the octets one connection may have waiting to be
	// written; a client that lets more pile up (it does not read, or does
	// not open its flow-control window) is cut off. Default 1 MiB.
	MaxPending int

	// ErrorLog receives what goes wrong with connections: failed TLS
	// handshakes and client protocol errors at debug level, accept errors
	// at warn. Nil means slog.Default().
	ErrorLog *slog.Logger
}

// Server is a DoH listener. Create it with New, run it with Start and stop it
// with Shutdown.
type Server struct {
	cfg       Config
	h         Handler
	transport forwarder.Transport
	tls       *tls.Config
	bufs      sync.Pool // *[]byte of 64 KiB: room for any answer

	certs *tlsconf.Server
	stats counters
	plain bool // tests: HTTP/2 without TLS, with prior knowledge

	conns *connset.Set[*conn]

	mu       sync.Mutex
	ln       net.Listener
	closed   bool
	wg       sync.WaitGroup // the accept loop and every connection's goroutines
	serveErr error          // why accepting stopped before Shutdown, if it did
}

// New checks cfg, fills in defaults, loads the certificate and returns a
// server that is not yet listening. Errors name the offending field.
func New(cfg Config, h Handler) (*Server, error) {
	if h == nil {
		return nil, errors.New("doh: nil Handler")
	}
	if err := cfg.setDefaults(); err != nil {
		return nil, fmt.Errorf("doh listener %q: %w", cfg.Name, err)
	}
	certs, err := tlsconf.New(tlsconf.Config{TLS: cfg.TLS, CertFile: cfg.CertFile, KeyFile: cfg.KeyFile, FIPS: cfg.FIPS}, "h2")
	if err != nil {
		return nil, fmt.Errorf("doh listener %q: %w", cfg.Name, err)
	}
	s := &Server{cfg: cfg, h: h, transport: forwarder.TransportDoH, certs: certs, tls: certs.TLSConfig()}
	s.conns = connset.New[*conn](cfg.MaxConns, cfg.MaxConnsPerClient)
	if cfg.FIPS {
		s.transport = forwarder.TransportDoHFIPS
	}
	s.bufs.New = func() any { b := make([]byte, 65536); return &b }
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
	for _, n := range []struct {
		name string
		v    *int
		def  int
	}{
		{"MaxConns", &c.MaxConns, DefaultMaxConns},
		{"MaxConnsPerClient", &c.MaxConnsPerClient, DefaultMaxConnsPerClient},
		{"MaxResetRate", &c.MaxResetRate, DefaultMaxResetRate},
	} {
		switch {
		case *n.v == 0:
			*n.v = n.def
		case *n.v < 0:
			return fmt.Errorf("%s: %d is negative", n.name, *n.v)
		}
	}
	switch {
	case c.MaxHeaderBytes == 0:
		// A GET carries the whole query in the URL.
		c.MaxHeaderBytes = base64.URLEncoding.EncodedLen(c.MaxBodySize) + 8<<10
	case c.MaxHeaderBytes < 0:
		return fmt.Errorf("MaxHeaderBytes: %d is negative", c.MaxHeaderBytes)
	}
	switch {
	case c.MaxPending == 0:
		c.MaxPending = DefaultMaxPending
	case c.MaxPending < 64<<10:
		return fmt.Errorf("MaxPending: %d is below 65536 (one answer must fit)", c.MaxPending)
	}
	for _, d := range []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{
		{"ReadHeaderTimeout", &c.ReadHeaderTimeout, DefaultReadHeaderTimeout},
		{"ReadTimeout", &c.ReadTimeout, DefaultReadTimeout},
		{"WriteTimeout", &c.WriteTimeout, DefaultWriteTimeout},
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

// Start listens on Config.Addr (TCP) and serves in the background.
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
	s.wg.Add(1)
	go s.accept(ln)
	return nil
}

// accept runs the accept loop until the listener is closed. Temporary
// errors (out of file descriptors) are retried with a growing pause.
func (s *Server) accept(ln net.Listener) {
	defer s.wg.Done()
	var pause time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed {
				return
			}
			if temporary(err) {
				pause = min(max(2*pause, 5*time.Millisecond), time.Second)
				s.log(slog.LevelWarn, "accept error; retrying", "err", err, "pause", pause)
				time.Sleep(pause)
				continue
			}
			s.mu.Lock()
			s.serveErr = err
			s.mu.Unlock()
			s.log(slog.LevelWarn, "accept error; listener stopped", "err", err)
			return
		}
		pause = 0
		if !s.serveConn(nc) {
			return
		}
	}
}

// serveConn starts serving one client connection, or resets it when
// MaxConns are open, or MaxConnsPerClient from its address; false means
// the server is shut down (nc is closed).
func (s *Server) serveConn(nc net.Conn) bool {
	c := newConn(s, nc)
	switch err := s.conns.Admit(c, c.client.Addr(), nc); {
	case errors.Is(err, connset.ErrClosed):
		return false
	case errors.Is(err, connset.ErrPerClient):
		s.stats.refusedPerClient.Add(1)
		return true
	case err != nil:
		s.stats.refused.Add(1)
		return true
	}
	s.stats.conns.Add(1)
	c.init()
	s.wg.Add(2)
	go c.serve()
	go c.writeLoop()
	return true
}

// temporary reports whether accept should retry after err, after a pause
// (EMFILE, ENFILE, ECONNABORTED and the like).
func temporary(err error) bool {
	var t interface{ Temporary() bool }
	return errors.As(err, &t) && t.Temporary()
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

// Shutdown stops accepting connections and sends every connection GOAWAY;
// each closes once its in-flight queries are answered. Shutdown waits for
// that or for ctx to end, whichever comes first; then it closes what is
// left. A server that is shut down cannot be started again.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closed = true
	ln := s.ln
	s.mu.Unlock()
	if ln != nil {
		ln.Close()
	}
	err := s.conns.Shutdown(ctx, (*conn).shutdown, func(c *conn) { c.raw.Close() })
	s.wg.Wait() // the accept loop, and writer goroutines ending with their connections
	if err != nil {
		return fmt.Errorf("doh listener %q: shutting down: %w", s.cfg.Name, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.serveErr != nil {
		return fmt.Errorf("doh listener %q: serving: %w", s.cfg.Name, s.serveErr)
	}
	return nil
}

// log writes one record to Config.ErrorLog with the listener's name.
func (s *Server) log(level slog.Level, msg string, args ...any) {
	l := s.cfg.ErrorLog
	if l == nil {
		l = slog.Default()
	}
	if !l.Enabled(context.Background(), level) {
		return
	}
	l.Log(context.Background(), level, msg, append(args, "listener", s.cfg.Name)...)
}
