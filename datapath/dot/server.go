// Package dot is the inbound DNS-over-TLS datapath (RFC 7858, with the
// profile of RFC 8310): a TLS listener whose connections carry DNS messages
// with a two-octet length prefix, as Do53 over TCP does (RFC 7766).
//
// Each connection has one reader goroutine that reads queries and runs the
// pipeline's non-blocking Answer on each, and Resolve when the answer must
// come from upstream. Answers are written as they complete, out of order
// (RFC 7766 6.2.1.1): a slow upstream answer does not hold back the cache
// hits behind it. Writes are serialised per connection and batched: what
// is ready when a write starts leaves in one TLS write, by the reader
// before it waits for input, or by the connection's writer goroutine for
// answers that come back from upstream.
//
// Everything is bounded: connections, in total (MaxConns) and per client
// address (MaxConnsPerClient; past either the next one is closed at once and
// counted), queries in flight per connection (MaxPipeline; past it
// the reader stops reading, so TCP pushes back on the client), the TLS
// handshake, a query that has started to arrive (a length prefix that lies),
// idleness, and each write.
//
// Files by owner: server.go (listener, lifecycle, limits), conn.go (the
// reader goroutine), write.go (everything that writes, and the writer
// goroutine), frame.go (the length-prefixed framing), stats.go. The
// certificate and the FIPS gate are datapath/tlsconf's, shared with DoH.
package dot

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"xdoh/datapath/internal/connset"
	"xdoh/datapath/tlsconf"
	"xdoh/forwarder"
)

// Defaults for zero Config fields.
const (
	DefaultPort              = "853"
	DefaultMaxConns          = 1000
	DefaultMaxConnsPerClient = 64
	DefaultMaxPipeline       = 128
	DefaultIdleTimeout       = 2 * time.Minute
	DefaultHandshakeTimeout  = 10 * time.Second
	DefaultReadTimeout       = 10 * time.Second
	DefaultWriteTimeout      = 10 * time.Second
)

// ALPN is the protocol name DoT offers in TLS (RFC 7858 section 3.2).
const ALPN = "dot"

// ErrServerClosed is returned by Start on a server that was shut down.
var ErrServerClosed = errors.New("dot server closed")

// Handler is the pipeline as the DoT server uses it (forwarder.Forwarder
// and forwarder.Switch implement it).
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

// Config describes one DoT listener.
type Config struct {
	Name string // listener name, copied into Request.Listener
	Addr string // "127.0.0.1:853", "[::]:853"

	// TLS, or CertFile and KeyFile (which ReloadCertificate reads again):
	// exactly one. See tlsconf.Config.
	TLS               *tls.Config
	CertFile, KeyFile string
	// FIPS makes this a DoT-FIPS listener, with DoH-FIPS's rules (see
	// datapath/tlsconf); requests carry forwarder.TransportDoTFIPS.
	FIPS bool

	// MaxConns bounds open connections; one more is closed as soon as it
	// is accepted, before its handshake. Default 1000.
	MaxConns int
	// MaxConnsPerClient bounds the open connections from one client
	// address; one more is closed as MaxConns' is. Default 64.
	MaxConnsPerClient int
	// MaxPipeline bounds the queries one connection may have waiting for
	// upstream; past it the connection is not read until one is answered.
	// Default 128.
	MaxPipeline int
	// IdleTimeout closes a connection with nothing in flight that sent
	// nothing for this long. Default 2m.
	IdleTimeout time.Duration
	// HandshakeTimeout bounds the TLS handshake. Default 10s.
	HandshakeTimeout time.Duration
	// ReadTimeout bounds the arrival of one query once its first octet
	// came. Default 10s.
	ReadTimeout time.Duration
	// WriteTimeout bounds one write; a client that takes none of its
	// answers for this long is cut off. Default 10s.
	WriteTimeout time.Duration

	// ErrorLog receives failed handshakes and client errors at debug
	// level, accept errors at warn. Nil means slog.Default().
	ErrorLog *slog.Logger
}

// Server is a DoT listener. Create it with New, run it with Start and stop
// it with Shutdown.
type Server struct {
	cfg       Config
	h         Handler
	transport forwarder.Transport
	certs     *tlsconf.Server
	tls       *tls.Config
	bufs      sync.Pool // *[]byte of 64 KiB: room for any answer
	stats     counters

	conns *connset.Set[*conn]

	mu       sync.Mutex
	ln       net.Listener
	closed   bool
	wg       sync.WaitGroup // the accept loop and every connection's goroutines
	serveErr error
}

// New checks cfg, fills in defaults, loads the certificate and returns a
// server that is not yet listening. Errors name the offending field.
func New(cfg Config, h Handler) (*Server, error) {
	if h == nil {
		return nil, errors.New("dot: nil Handler")
	}
	if err := cfg.setDefaults(); err != nil {
		return nil, fmt.Errorf("dot listener %q: %w", cfg.Name, err)
	}
	certs, err := tlsconf.New(tlsconf.Config{TLS: cfg.TLS, CertFile: cfg.CertFile, KeyFile: cfg.KeyFile, FIPS: cfg.FIPS}, ALPN)
	if err != nil {
		return nil, fmt.Errorf("dot listener %q: %w", cfg.Name, err)
	}
	s := &Server{cfg: cfg, h: h, transport: forwarder.TransportDoT, certs: certs, tls: certs.TLSConfig(),
		conns: connset.New[*conn](cfg.MaxConns, cfg.MaxConnsPerClient)}
	if cfg.FIPS {
		s.transport = forwarder.TransportDoTFIPS
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
	for _, n := range []struct {
		name string
		v    *int
		def  int
	}{{"MaxConns", &c.MaxConns, DefaultMaxConns}, {"MaxConnsPerClient", &c.MaxConnsPerClient, DefaultMaxConnsPerClient}, {"MaxPipeline", &c.MaxPipeline, DefaultMaxPipeline}} {
		switch {
		case *n.v == 0:
			*n.v = n.def
		case *n.v < 0:
			return fmt.Errorf("%s: %d is negative", n.name, *n.v)
		}
	}
	for _, d := range []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{
		{"IdleTimeout", &c.IdleTimeout, DefaultIdleTimeout},
		{"HandshakeTimeout", &c.HandshakeTimeout, DefaultHandshakeTimeout},
		{"ReadTimeout", &c.ReadTimeout, DefaultReadTimeout},
		{"WriteTimeout", &c.WriteTimeout, DefaultWriteTimeout},
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

// ReloadCertificate reads CertFile and KeyFile again and serves the new
// certificate on handshakes from now on; established connections keep
// theirs. On error the old certificate stays.
func (s *Server) ReloadCertificate() error {
	if err := s.certs.Reload(); err != nil {
		return fmt.Errorf("dot listener %q: reloading certificate: %w", s.cfg.Name, err)
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
		return fmt.Errorf("dot listener %q: already started", s.cfg.Name)
	}
	ln, err := net.Listen("tcp", s.cfg.Addr)
	if err != nil {
		return fmt.Errorf("dot listener %q: listening on %s: %w", s.cfg.Name, s.cfg.Addr, err)
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
			var t interface{ Temporary() bool }
			if errors.As(err, &t) && t.Temporary() {
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

// serveConn starts serving one client connection, or closes it when
// MaxConns are open, or MaxConnsPerClient from its address; false means
// the server is shut down.
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
	s.wg.Add(2)
	go c.serve()
	go c.writeLoop()
	return true
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

// Shutdown stops accepting connections; each connection stops reading and
// closes once its queries in flight are answered. Shutdown waits for that
// or for ctx to end, whichever comes first; then it closes what is left. A
// server that is shut down cannot be started again.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closed = true
	ln := s.ln
	s.mu.Unlock()
	if ln != nil {
		ln.Close()
	}
	err := s.conns.Shutdown(ctx, (*conn).shutdown, (*conn).kill)
	s.wg.Wait() // the accept loop, and writer goroutines ending with their connections
	if err != nil {
		return fmt.Errorf("dot listener %q: shutting down: %w", s.cfg.Name, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.serveErr != nil {
		return fmt.Errorf("dot listener %q: serving: %w", s.cfg.Name, s.serveErr)
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

// FIPS reports whether this is a DoT-FIPS listener.
func (s *Server) FIPS() bool { return s.cfg.FIPS }
