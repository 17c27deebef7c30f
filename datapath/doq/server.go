// Package doq is the inbound DNS-over-QUIC datapath (RFC 9250), on
// github.com/quic-go/quic-go.
//
// A client opens one bidirectional stream per query and sends the query
// with a two-octet length prefix, its DNS ID 0, and then the stream's FIN;
// the answer goes back the same way, ID 0, and the server's FIN closes the
// stream. Anything else is a connection error DOQ_PROTOCOL_ERROR (RFC 9250
// 4.3.3): a second message on a stream, a FIN inside the message, a query
// with an ID other than 0 (4.2.1), a message shorter than a DNS header, or
// a whole query with no FIN after it. 0-RTT is off, so no query can be
// replayed (4.5); unidirectional streams are not allowed (quic-go closes
// a connection that opens one).
//
// QUIC does what a TCP datapath has to do itself: streams are independent,
// so answers go out as they complete, and MAX_STREAMS (MaxStreams) bounds
// the queries a connection has open. Here each stream is read by its own
// goroutine, which runs the pipeline's Answer and, for a miss, waits for
// Resolve's callback: the goroutines are bounded by MaxConns × MaxStreams.
// A stream that does not deliver its query within StreamReadTimeout is
// reset with DOQ_REQUEST_CANCELLED; connections past MaxConns, or past
// MaxConnsPerClient from one address, are refused when their first packet
// arrives (CONNECTION_REFUSED); idle connections end after
// IdleTimeout.
//
// Files by owner: server.go (listener, lifecycle, limits), conn.go (a
// connection and its streams), stats.go. The certificate is
// datapath/tlsconf's, shared with DoH and DoT.
package doq

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"

	"xdoh/datapath/internal/connset"
	"xdoh/datapath/tlsconf"
	"xdoh/forwarder"
)

// Defaults for zero Config fields.
const (
	DefaultPort              = "853"
	DefaultMaxConns          = 1000
	DefaultMaxConnsPerClient = 64
	DefaultMaxStreams        = 100
	DefaultIdleTimeout       = 2 * time.Minute
	DefaultHandshakeTimeout  = 5 * time.Second
	DefaultStreamReadTimeout = 10 * time.Second
	DefaultWriteTimeout      = 10 * time.Second
)

// ALPN is the protocol name DoQ negotiates (RFC 9250 section 4.1.1).
const ALPN = "doq"

// Error codes of RFC 9250 section 4.3.
const (
	CodeNoError          = 0x0
	CodeInternalError    = 0x1
	CodeProtocolError    = 0x2
	CodeRequestCancelled = 0x3
	CodeExcessiveLoad    = 0x4
)

// ErrServerClosed is returned by Start on a server that was shut down.
var ErrServerClosed = errors.New("doq server closed")

// Handler is the pipeline as the DoQ server uses it (forwarder.Forwarder
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

// Config describes one DoQ listener.
type Config struct {
	Name string // listener name, copied into Request.Listener
	Addr string // UDP, "127.0.0.1:853", "[::]:853"

	// TLS, or CertFile and KeyFile (which ReloadCertificate reads again):
	// exactly one. See tlsconf.Config.
	TLS               *tls.Config
	CertFile, KeyFile string

	// MaxConns bounds connections, handshakes included; more are refused.
	// Default 1000.
	MaxConns int
	// MaxConnsPerClient bounds the connections from one client address,
	// handshakes included; more are refused. Default 64. (The address of
	// a handshake is not verified: a client that spoofs another's address
	// can hold that address's slots until HandshakeTimeout.)
	MaxConnsPerClient int
	// MaxStreams is the number of streams (queries) a connection may have
	// open at once (QUIC MAX_STREAMS). Default 100.
	MaxStreams int
	// IdleTimeout ends a connection without traffic (QUIC max_idle_timeout;
	// the smaller of the client's and this one applies). Default 2m.
	IdleTimeout time.Duration
	// HandshakeTimeout aborts a handshake when the client sends nothing for
	// this long (or takes twice as long in all). Default 5s.
	HandshakeTimeout time.Duration
	// StreamReadTimeout bounds the arrival of a stream's query and FIN.
	// Default 10s.
	StreamReadTimeout time.Duration
	// WriteTimeout bounds writing one answer. Default 10s.
	WriteTimeout time.Duration

	// ErrorLog receives client errors at debug level. Nil means
	// slog.Default().
	ErrorLog *slog.Logger
}

// Server is a DoQ listener. Create it with New, run it with Start and stop
// it with Shutdown.
type Server struct {
	cfg   Config
	h     Handler
	certs *tlsconf.Server
	stats counters
	jobs  sync.Pool                // *job
	conns *connset.Set[*connState] // from the first packet on: handshakes count

	mu       sync.Mutex
	udp      *net.UDPConn
	tr       *quic.Transport
	ln       *quic.Listener
	closed   bool
	wg       sync.WaitGroup // the accept loop and every connection's goroutines
	serveErr error
}

// New checks cfg, fills in defaults, loads the certificate and returns a
// server that is not yet listening. Errors name the offending field.
func New(cfg Config, h Handler) (*Server, error) {
	if h == nil {
		return nil, errors.New("doq: nil Handler")
	}
	if err := cfg.setDefaults(); err != nil {
		return nil, fmt.Errorf("doq listener %q: %w", cfg.Name, err)
	}
	certs, err := tlsconf.New(tlsconf.Config{TLS: cfg.TLS, CertFile: cfg.CertFile, KeyFile: cfg.KeyFile}, ALPN)
	if err != nil {
		return nil, fmt.Errorf("doq listener %q: %w", cfg.Name, err)
	}
	s := &Server{cfg: cfg, h: h, certs: certs, conns: connset.New[*connState](cfg.MaxConns, cfg.MaxConnsPerClient)}
	s.jobs.New = func() any { return newJob() }
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
	}{{"MaxConns", &c.MaxConns, DefaultMaxConns}, {"MaxConnsPerClient", &c.MaxConnsPerClient, DefaultMaxConnsPerClient}, {"MaxStreams", &c.MaxStreams, DefaultMaxStreams}} {
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
		{"StreamReadTimeout", &c.StreamReadTimeout, DefaultStreamReadTimeout},
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
		return fmt.Errorf("doq listener %q: reloading certificate: %w", s.cfg.Name, err)
	}
	return nil
}

// Start listens on Config.Addr (UDP) and serves in the background.
func (s *Server) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.closed:
		return ErrServerClosed
	case s.ln != nil:
		return fmt.Errorf("doq listener %q: already started", s.cfg.Name)
	}
	ua, err := net.ResolveUDPAddr("udp", s.cfg.Addr)
	if err != nil {
		return fmt.Errorf("doq listener %q: address %s: %w", s.cfg.Name, s.cfg.Addr, err)
	}
	udp, err := net.ListenUDP("udp", ua)
	if err != nil {
		return fmt.Errorf("doq listener %q: listening on %s: %w", s.cfg.Name, s.cfg.Addr, err)
	}
	tr := &quic.Transport{Conn: udp, ConnContext: s.admit}
	ln, err := tr.Listen(s.certs.TLSConfig(), &quic.Config{
		HandshakeIdleTimeout:  s.cfg.HandshakeTimeout,
		MaxIdleTimeout:        s.cfg.IdleTimeout,
		MaxIncomingStreams:    int64(s.cfg.MaxStreams),
		MaxIncomingUniStreams: -1, // RFC 9250 4.2: queries go on bidirectional streams only
		Allow0RTT:             false,
	})
	if err != nil {
		tr.Close()
		udp.Close()
		return fmt.Errorf("doq listener %q: listening on %s: %w", s.cfg.Name, s.cfg.Addr, err)
	}
	s.udp, s.tr, s.ln = udp, tr, ln
	s.wg.Add(1)
	go s.accept(ln)
	return nil
}

// connState follows one connection from its first packet: admit counts it
// against the limits and, when its context ends, tells a failed handshake
// from a connection that was served.
type connState struct {
	accepted atomic.Bool

	mu      sync.Mutex
	conn    *conn // once accepted
	dropped bool  // Shutdown came first: never to be served
}

// drain is Shutdown's: a served connection closes once its streams are
// answered; one not accepted yet never will be (the listener is closed),
// and the transport's close ends it.
func (s *Server) drain(st *connState) {
	st.mu.Lock()
	c := st.conn
	st.dropped = c == nil
	st.mu.Unlock()
	if c != nil {
		c.stop()
	} else {
		s.conns.Forget(st)
	}
}

// kill is Shutdown's when its context ends.
func kill(st *connState) {
	st.mu.Lock()
	c := st.conn
	st.mu.Unlock()
	if c != nil {
		c.qc.CloseWithError(CodeNoError, "server shutting down")
	}
}

type stateKey struct{}

// admit is the transport's ConnContext: it runs when a client's first
// packet arrives, before the handshake.
func (s *Server) admit(ctx context.Context, ci *quic.ClientInfo) (context.Context, error) {
	var client netip.Addr
	if ua, ok := ci.RemoteAddr.(*net.UDPAddr); ok {
		client = ua.AddrPort().Addr()
	}
	st := &connState{}
	if err := s.conns.Add(st, client); err != nil {
		switch {
		case errors.Is(err, connset.ErrPerClient):
			s.stats.refusedPerClient.Add(1)
		case errors.Is(err, connset.ErrTotal):
			s.stats.refused.Add(1)
		}
		return nil, err
	}
	ctx = context.WithValue(ctx, stateKey{}, st)
	context.AfterFunc(ctx, func() {
		s.conns.Forget(st)
		cause := context.Cause(ctx)
		var hto *quic.HandshakeTimeoutError
		var ito *quic.IdleTimeoutError
		switch {
		case !st.accepted.Load() && (errors.As(cause, &hto) || errors.As(cause, &ito)):
			// A handshake the client stopped answering ends on the
			// handshake's idle timeout; one that takes too long in all,
			// on its overall timeout.
			s.stats.handshakeTimeouts.Add(1)
		case !st.accepted.Load():
			s.stats.handshakeErrors.Add(1)
		case errors.As(cause, &ito):
			s.stats.idleClosed.Add(1)
		}
	})
	return ctx, nil
}

// accept takes handshaken connections until the listener is closed.
func (s *Server) accept(ln *quic.Listener) {
	defer s.wg.Done()
	for {
		qc, err := ln.Accept(context.Background())
		if err != nil {
			s.mu.Lock()
			if !s.closed {
				s.serveErr = err
				s.log(slog.LevelWarn, "accept error; listener stopped", "err", err)
			}
			s.mu.Unlock()
			return
		}
		st, ok := qc.Context().Value(stateKey{}).(*connState)
		if !ok {
			qc.CloseWithError(CodeInternalError, "")
			continue
		}
		st.accepted.Store(true)
		s.stats.conns.Add(1)
		c := newConn(s, qc)
		st.mu.Lock()
		if st.dropped {
			st.mu.Unlock()
			qc.CloseWithError(CodeNoError, "")
			continue
		}
		st.conn = c
		s.wg.Add(1)
		st.mu.Unlock()
		go c.serve()
	}
}

// Addr returns the UDP address the server listens on, with port 0
// resolved, or nil before Start.
func (s *Server) Addr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.udp == nil {
		return nil
	}
	return s.udp.LocalAddr()
}

// Shutdown stops accepting connections and streams; each connection is
// closed (DOQ_NO_ERROR) once its streams are answered. Shutdown waits for
// that or for ctx to end, whichever comes first; then it closes what is
// left. A server that is shut down cannot be started again.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closed = true
	ln, tr, udp := s.ln, s.tr, s.udp
	s.mu.Unlock()
	if ln != nil {
		ln.Close() // waits for the handshakes in flight
	}
	err := s.conns.Shutdown(ctx, s.drain, kill)
	s.wg.Wait() // the accept loop, and connections' goroutines ending
	if err != nil {
		err = fmt.Errorf("doq listener %q: shutting down: %w", s.cfg.Name, err)
	}
	if tr != nil {
		tr.Close()
		udp.Close()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err == nil && s.serveErr != nil {
		err = fmt.Errorf("doq listener %q: serving: %w", s.cfg.Name, s.serveErr)
	}
	return err
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
