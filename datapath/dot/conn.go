package dot

import (
	"bufio"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"xdoh/forwarder"
)

// readBufSize holds a TLS record's worth of queries; a larger query is read
// through it.
const readBufSize = 16 << 10

// Why the reader stops without an error worth logging.
var (
	errStopped = errors.New("server shutting down")
	errIdle    = errors.New("idle")
)

// conn is one client connection. Its reader goroutine (serve, and the rest
// of this file) owns the request side; the write side (write.go) is guarded
// by mu and shared by the reader, the writer goroutine and the pipeline's
// callbacks.
type conn struct {
	s      *Server
	raw    net.Conn  // the TCP connection
	tc     *tls.Conn // raw with TLS
	client netip.AddrPort
	done   func([]byte) // answered, bound once

	// Reader-owned.
	br  *bufio.Reader
	msg []byte            // the query being read
	req forwarder.Request // reused for every query

	// Guarded by mu (write.go).
	mu       sync.Mutex
	cond     sync.Cond // inflight fell, or the connection died
	out      []byte    // answers, length-prefixed, not yet written
	spare    []byte    // the other buffer, while out's contents are being written
	writing  bool      // a goroutine is writing; it writes out again before it stops
	dead     bool      // the connection is gone; answers are dropped
	inflight int       // queries handed to Resolve and not answered yet

	stop atomic.Bool   // Shutdown: stop reading, close once all is answered
	wake chan struct{} // asks the writer goroutine to write out
	quit chan struct{} // closed when the reader ends
}

func newConn(s *Server, raw net.Conn) *conn {
	c := &conn{s: s, raw: raw, wake: make(chan struct{}, 1), quit: make(chan struct{})}
	c.cond.L = &c.mu
	c.tc = tls.Server(raw, s.tls)
	c.client = clientAddr(raw.RemoteAddr().String())
	c.done = c.answered
	return c
}

// serve is the reader goroutine: the handshake, then queries until the
// connection ends.
func (c *conn) serve() {
	defer c.s.wg.Done()
	defer c.close()
	c.br = bufio.NewReaderSize(c.tc, readBufSize) // here, not in newConn: a refused connection costs no buffer
	c.raw.SetDeadline(time.Now().Add(c.s.cfg.HandshakeTimeout))
	if err := c.tc.Handshake(); err != nil {
		switch {
		case c.stop.Load():
		case errors.Is(err, os.ErrDeadlineExceeded):
			c.s.stats.handshakeTimeouts.Add(1)
		default:
			c.s.stats.handshakeErrors.Add(1)
		}
		c.s.log(slog.LevelDebug, "TLS handshake error", "client", c.client, "err", err)
		return
	}
	c.raw.SetWriteDeadline(time.Time{})
	err := c.readQueries()
	switch {
	case errors.Is(err, errStopped):
		c.drain()
	case errors.Is(err, errShortMessage):
		c.s.stats.protocolErrors.Add(1)
		c.s.log(slog.LevelDebug, "DoT protocol error", "client", c.client, "err", err)
		c.flush()
	case errors.Is(err, errIdle):
		c.flush()
	case errors.Is(err, io.EOF):
		c.drain() // the client half-closed: it may still read its answers
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed):
	default:
		c.s.log(slog.LevelDebug, "reading from client", "client", c.client, "err", err)
	}
}

// readQueries reads and dispatches queries until the connection ends.
func (c *conn) readQueries() error {
	for {
		if err := c.waitSlot(); err != nil {
			return err
		}
		msg, err := c.readQuery()
		if err != nil {
			return err
		}
		c.s.stats.queries.Add(1)
		c.query(msg)
	}
}

// waitSlot waits while MaxPipeline queries are in flight: the client's
// further queries stay in the socket, and TCP pushes back.
func (c *conn) waitSlot() error {
	c.mu.Lock()
	if c.inflight >= c.s.cfg.MaxPipeline {
		c.s.stats.pipelineFull.Add(1)
		c.mu.Unlock()
		c.flush()
		c.mu.Lock()
		for c.inflight >= c.s.cfg.MaxPipeline && !c.dead && !c.stop.Load() {
			c.cond.Wait()
		}
	}
	dead := c.dead
	c.mu.Unlock()
	switch {
	case dead:
		return net.ErrClosed
	case c.stop.Load():
		return errStopped
	}
	return nil
}

// readQuery reads the next query. Before it waits for the network it
// writes what is ready, so that the answers to everything the client sent
// so far leave together. Waiting for a query to start is bounded by
// IdleTimeout (renewed while queries are in flight); a query that has
// started must be complete within ReadTimeout.
func (c *conn) readQuery() ([]byte, error) {
	if c.br.Buffered() == 0 {
		c.flush()
		if err := c.waitInput(); err != nil {
			return nil, err
		}
	}
	partial := !frameBuffered(c.br)
	if partial {
		c.raw.SetReadDeadline(time.Now().Add(c.s.cfg.ReadTimeout))
	}
	msg, err := readFrame(c.br, &c.msg)
	if err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
		if c.stop.Load() {
			return nil, errStopped
		}
		c.s.stats.timeouts.Add(1)
	}
	return msg, err
}

// waitInput waits until the client sends something, for up to IdleTimeout
// at a time; it gives up only when nothing is in flight.
func (c *conn) waitInput() error {
	for {
		c.raw.SetReadDeadline(time.Now().Add(c.s.cfg.IdleTimeout))
		_, err := c.br.Peek(1)
		switch {
		case err == nil:
			return nil
		case c.stop.Load():
			return errStopped
		case !errors.Is(err, os.ErrDeadlineExceeded):
			return err
		}
		c.mu.Lock()
		busy := c.inflight > 0
		c.mu.Unlock()
		if !busy {
			c.s.stats.idleClosed.Add(1)
			return errIdle
		}
	}
}

// query runs the pipeline on one query: the answer is queued now when the
// pipeline has it (cache, local zone, errors), else when the upstream
// resolution calls back.
func (c *conn) query(msg []byte) {
	c.req = forwarder.Request{Msg: msg, Transport: c.s.transport, Client: c.client, Listener: c.s.cfg.Name}
	buf := c.s.bufs.Get().(*[]byte)
	resp, ok := c.s.h.Answer(&c.req, *buf)
	if !ok {
		c.mu.Lock()
		c.inflight++
		c.mu.Unlock()
		// done may run before Resolve returns, on this goroutine or another.
		if resp, ok = c.s.h.Resolve(&c.req, *buf, c.done); ok {
			c.mu.Lock()
			c.inflight--
			c.mu.Unlock()
		}
	}
	if ok {
		c.mu.Lock()
		c.queue(resp)
		c.mu.Unlock()
	}
	c.s.bufs.Put(buf)
}

// drain waits for the queries in flight to be answered and writes the
// answers out: on Shutdown, or after the client half-closed.
func (c *conn) drain() {
	c.mu.Lock()
	for c.inflight > 0 && !c.dead {
		c.cond.Wait()
	}
	c.mu.Unlock()
	c.flush()
}

// close ends the connection: answers still to come are dropped.
func (c *conn) close() {
	c.kill()
	close(c.quit)
	c.s.conns.Forget(c)
}

// kill marks the connection dead and closes the socket, which ends any read
// or write on it.
func (c *conn) kill() {
	c.mu.Lock()
	c.dead = true
	c.cond.Broadcast()
	c.mu.Unlock()
	c.raw.Close()
}

// shutdown makes the reader stop reading and close the connection once
// what is in flight is answered.
func (c *conn) shutdown() {
	c.stop.Store(true)
	c.mu.Lock()
	c.cond.Broadcast()
	c.mu.Unlock()
	c.raw.SetReadDeadline(time.Now()) // wakes a reader waiting for input
}

// clientAddr parses a connection's remote address; IPv4-mapped IPv6
// addresses become IPv4. An unparsable address gives the zero AddrPort.
func clientAddr(remote string) netip.AddrPort {
	ap, err := netip.ParseAddrPort(remote)
	if err != nil {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
