// Package tcp is xdoh's Do53-over-TCP datapath on gnet/v2 event loops: every
// configured address, IPv4 and IPv6, one listener per loop with SO_REUSEPORT
// so the kernel spreads clients over the loops. Do53 over UDP is
// datapath/udp's, on the same addresses.
//
// RFC 7766. Messages are framed by a 2-byte length; many queries may be
// pipelined on one connection and are answered as they complete, out of
// order. An answer that comes back from upstream is appended to the
// connection's reply buffer by whichever goroutine completed it; the first
// one since the last flush wakes the connection's event loop, which writes
// everything buffered with one write(2). Under load that is one system call
// (and one loopback TCP segment train) per upstream read, not one per
// answer: the per-answer write was a third of the forwarder's CPU. Connections
// are capped in total (MaxTCPConns) and per client address
// (MaxTCPConnsPerClient), idle ones closed (TCPIdleTimeout, checked by the
// engine ticker), and queries in flight per connection bounded
// (MaxTCPPipeline, past it SERVFAIL). A client that does not read its
// answers is reset: once 1 MiB waits in gnet beyond the socket's own
// 512 KiB, or when it goes idle with answers unread and reads none of them
// for a second. One still reading them is not idle.
package tcp

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	gn "github.com/panjf2000/gnet/v2"
	"golang.org/x/sys/unix"

	"xdoh/datapath/internal/connset"
	"xdoh/forwarder"
	"xdoh/internal/dnsmsg"
)

// maxTCPBacklog bounds the answers buffered in gnet for a TCP client that
// does not read them; past it the connection is reset.
const maxTCPBacklog = 1 << 20

// tcpSendBuffer is SO_SNDBUF for an accepted connection (the kernel doubles
// it). It bounds the kernel memory held for a client that does not read its
// answers, which autotuning would let grow to tcp_wmem's maximum, for each of
// up to 1024 connections; 256 KiB is still hundreds of full pipelines of
// answers.
//
// The listeners set no buffer sizes. Their 4 MiB (inherited by every
// accepted connection) was for UDP bursts, which are datapath/udp's now; on
// TCP it served nothing: the send buffer is set here, and the receive buffer
// holds queries only until the loop's next read (a full pipeline is a few
// KiB), which the kernel's autotuned default does, where a fixed size would
// turn autotuning off.
const tcpSendBuffer = 256 << 10

// Handler is the part of the forwarder the datapath needs.
type Handler interface {
	Answer(r *forwarder.Request, out []byte) ([]byte, bool)
	Resolve(r *forwarder.Request, out []byte, done func(resp []byte)) ([]byte, bool)
}

// Config for one Do53 listener.
type Config struct {
	Name  string   // listener name, copied into each Request
	Addrs []string // "127.0.0.1:53", "[::1]:53": each gets a listener per loop
	// Loops is the number of event loops; default GOMAXPROCS/2, at least 1,
	// as for datapath/udp's sockets. Fewer loops batch more per epoll_wait
	// and per wake: on 2 cores one loop forwarded more TCP misses than two,
	// at the same CPU per query or less.
	Loops int

	TCPIdleTimeout time.Duration // default 10s
	MaxTCPConns    int           // default 1024
	// MaxTCPConnsPerClient bounds the connections from one client
	// address; default 64.
	MaxTCPConnsPerClient int
	MaxTCPPipeline       int // queries in flight per TCP conn, default 128

	// Busy, if set, is called with true when the event loops start to have
	// work and with false when they have none left: the server is busy
	// while at least one connection is open. (An event loop waits in
	// epoll_wait holding a P: cmd/xdoh raises GOMAXPROCS meanwhile, see
	// cmd/xdoh/internal/procs.)
	// Calls may come from several loops at once; each true is matched by
	// one false, at the latest when Stop returns.
	Busy func(busy bool)
}

// Stats are the datapath's counters.
type Stats struct {
	TCPQueries, TCPRejected, TCPIdleClosed, TCPPipelineFull, TCPBacklogClosed uint64
	TCPRejectedPerClient                                                      uint64 // connections closed at once: MaxTCPConnsPerClient from the client's address
	TCPConns                                                                  int64
}

// Server runs the gnet engine for one listener.
type Server struct {
	gn.BuiltinEventEngine
	cfg Config
	h   Handler
	eng gn.Engine

	booted chan struct{}
	done   chan error
	conns  *connset.Set[*tcpState]
	bufs   sync.Pool

	tcpQ, tcpRejected, tcpRejectedClient, tcpIdle, tcpPipe, tcpBacklog atomic.Uint64
	replyFlushes                                                       atomic.Uint64 // writes of buffered upstream answers (tests)
	holders                                                            atomic.Int64  // of Busy: the connections in conns
}

type tcpState struct {
	c          gn.Conn
	lastActive atomic.Int64 // unix nanoseconds
	inflight   atomic.Int32
	idle       atomic.Bool // the ticker found the connection idle and woke its loop to close it
	unread     int         // loop only: answers unread at the last idle check, -1 none
	client     netip.AddrPort

	mu      sync.Mutex
	replies []byte // framed answers from upstream, waiting for the loop
	nReply  int32  // answers in replies
	woken   bool   // a Wake is queued for replies
	spare   []byte // loop only: the buffer written by the previous flush
}

// maxKeptReplyBuf is the largest reply buffer a connection keeps for reuse.
const maxKeptReplyBuf = 64 << 10

// New checks cfg and prepares a server; Start runs it.
func New(cfg Config, h Handler) (*Server, error) {
	if len(cfg.Addrs) == 0 {
		return nil, errors.New("do53: no addresses")
	}
	for i, a := range cfg.Addrs {
		if _, err := netip.ParseAddrPort(a); err != nil {
			return nil, fmt.Errorf("do53[%d]: %q is not an IP:port address: %w", i, a, err)
		}
	}
	if cfg.Loops <= 0 {
		cfg.Loops = max(1, runtime.GOMAXPROCS(0)/2)
	}
	if cfg.TCPIdleTimeout <= 0 {
		cfg.TCPIdleTimeout = 10 * time.Second
	}
	if cfg.MaxTCPConns <= 0 {
		cfg.MaxTCPConns = 1024
	}
	if cfg.MaxTCPConnsPerClient <= 0 {
		cfg.MaxTCPConnsPerClient = 64
	}
	if cfg.MaxTCPPipeline <= 0 {
		cfg.MaxTCPPipeline = 128
	}
	s := &Server{cfg: cfg, h: h, booted: make(chan struct{}), done: make(chan error, 1),
		conns: connset.New[*tcpState](cfg.MaxTCPConns, cfg.MaxTCPConnsPerClient)}
	s.bufs.New = func() any { b := make([]byte, 65536+2); return &b }
	return s, nil
}

// Start binds every address and serves in the background. It returns once
// the engine is up, or the bind error.
func (s *Server) Start() error {
	addrs := make([]string, len(s.cfg.Addrs))
	for i, a := range s.cfg.Addrs {
		addrs[i] = "tcp://" + a
	}
	go func() {
		s.done <- gn.Rotate(s, addrs,
			gn.WithNumEventLoop(s.cfg.Loops),
			gn.WithReusePort(true),
			gn.WithTicker(true),
			gn.WithTCPNoDelay(gn.TCPNoDelay),
			gn.WithLogger(gnetLogger{slog.Default()}),
		)
	}()
	select {
	case <-s.booted:
		return nil
	case err := <-s.done:
		if err == nil {
			err = errors.New("engine stopped during start")
		}
		return fmt.Errorf("starting do53 listener %q on %v: %w", s.cfg.Name, s.cfg.Addrs, err)
	}
}

// Stop shuts the engine down.
func (s *Server) Stop(ctx context.Context) error {
	select {
	case <-s.booted:
	default:
		return nil // never started
	}
	defer s.releaseBusy()
	if err := s.eng.Stop(ctx); err != nil {
		return fmt.Errorf("stopping do53 listener %q: %w", s.cfg.Name, err)
	}
	select {
	case <-s.done:
	case <-ctx.Done():
	}
	return nil
}

// releaseBusy ends every hold on Busy when Stop returns, whether the engine
// stopped or not (a timeout, an engine that had died): the connections'
// that gnet did not close with OnClose (it does when its loops end; one
// closed later finds itself gone from conns).
func (s *Server) releaseBusy() {
	for _, st := range s.conns.Snapshot() {
		if s.conns.Forget(st) {
			s.idle()
		}
	}
}

// Name is the listener's name.
func (s *Server) Name() string { return s.cfg.Name }

// Addrs are the configured addresses.
func (s *Server) Addrs() []string { return s.cfg.Addrs }

// Stats returns the counters.
func (s *Server) Stats() Stats {
	return Stats{
		TCPQueries: s.tcpQ.Load(), TCPRejected: s.tcpRejected.Load(), TCPIdleClosed: s.tcpIdle.Load(), TCPPipelineFull: s.tcpPipe.Load(),
		TCPConns: int64(s.conns.Len()), TCPBacklogClosed: s.tcpBacklog.Load(), TCPRejectedPerClient: s.tcpRejectedClient.Load(),
	}
}

// OnBoot implements gn.EventHandler.
func (s *Server) OnBoot(eng gn.Engine) gn.Action {
	s.eng = eng
	close(s.booted)
	return gn.None
}

// OnOpen admits a TCP connection unless a cap is reached: in total, or
// for its client's address.
func (s *Server) OnOpen(c gn.Conn) ([]byte, gn.Action) {
	st := &tcpState{c: c, unread: -1}
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		st.client = a.AddrPort()
	}
	if err := s.conns.Add(st, st.client.Addr()); err != nil {
		if errors.Is(err, connset.ErrPerClient) {
			s.tcpRejectedClient.Add(1)
		} else {
			s.tcpRejected.Add(1)
		}
		return nil, gn.Close
	}
	_ = c.SetWriteBuffer(tcpSendBuffer) // best effort: the autotuned default works, only larger
	st.lastActive.Store(time.Now().UnixNano())
	c.SetContext(st)
	s.busy()
	return nil, gn.None
}

// OnClose forgets a TCP connection.
func (s *Server) OnClose(c gn.Conn, _ error) gn.Action {
	if st, ok := c.Context().(*tcpState); ok && s.conns.Forget(st) {
		s.idle()
	}
	return gn.None
}

// busy and idle count the holders of Busy: the open connections.
func (s *Server) busy() {
	if s.holders.Add(1) == 1 && s.cfg.Busy != nil {
		s.cfg.Busy(true)
	}
}

func (s *Server) idle() {
	if s.holders.Add(-1) == 0 && s.cfg.Busy != nil {
		s.cfg.Busy(false)
	}
}

// OnTick finds idle TCP connections and wakes their loops to close them
// (closeIfIdle): the close may have to reset the connection, which is done
// on its fd, which only its loop may touch.
func (s *Server) OnTick() (time.Duration, gn.Action) {
	deadline := time.Now().Add(-s.cfg.TCPIdleTimeout).UnixNano()
	s.conns.Range(func(st *tcpState) bool {
		if st.inflight.Load() == 0 && st.lastActive.Load() < deadline && st.idle.CompareAndSwap(false, true) {
			// An error means the loop is gone (engine stopped): so is c.
			_ = st.c.Wake(nil)
		}
		return true
	})
	return time.Second, gn.None
}

// closeIfIdle runs on the loop after OnTick flagged c: it closes c if c is
// still idle. A client still reading answers is not idle; one that has left
// answers unread since the previous check (a second ago) is reset: a FIN
// would queue behind them and never arrive, leaving the client waiting and
// the kernel holding the buffers. Loop only.
func (s *Server) closeIfIdle(c gn.Conn, st *tcpState) bool {
	st.idle.Store(false)
	now := time.Now()
	if st.inflight.Load() != 0 || st.lastActive.Load() >= now.Add(-s.cfg.TCPIdleTimeout).UnixNano() || frameBuffered(c) {
		st.unread = -1
		return false // a query came in since the tick
	}
	if n := unread(c); n > 0 {
		if st.unread < 0 || n < st.unread {
			// First look, or the client has read some since: check
			// again at the next tick (lastActive still says idle), or,
			// if it is reading, give it another idle timeout.
			if st.unread >= 0 {
				st.lastActive.Store(now.UnixNano())
			}
			st.unread = n
			return false
		}
		reset(c)
	}
	s.tcpIdle.Add(1)
	return true
}

// frameBuffered reports whether a whole message waits in c's inbound
// buffer: a query that arrived with the read that runs this check. A
// partial one does not keep the connection from the idle timeout.
func frameBuffered(c gn.Conn) bool {
	hdr, err := c.Peek(2)
	return err == nil && len(hdr) == 2 && c.InboundBuffered() >= 2+int(binary.BigEndian.Uint16(hdr))
}

// unread is how many bytes of answers wait in gnet's buffer and in the
// socket's send queue (SIOCOUTQ: not yet sent or not yet acknowledged).
// Loop only.
func unread(c gn.Conn) int {
	n := c.OutboundBuffered()
	if q, err := unix.IoctlGetInt(c.Fd(), unix.SIOCOUTQ); err == nil {
		n += q
	}
	return n
}

// reset makes the close that follows abortive: an RST, and the socket's
// buffers freed at once (SO_LINGER 0). Loop only.
func reset(c gn.Conn) {
	_ = unix.SetsockoptLinger(c.Fd(), unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
}

// queueReply buffers a framed answer for c and wakes its loop if this is the
// first since the last flush. Any goroutine.
func (s *Server) queueReply(c gn.Conn, st *tcpState, resp []byte) {
	st.mu.Lock()
	st.replies = binary.BigEndian.AppendUint16(st.replies, uint16(len(resp)))
	st.replies = append(st.replies, resp...)
	st.nReply++
	wake := !st.woken
	st.woken = true
	st.mu.Unlock()
	if wake {
		// An error means the loop is gone (engine stopped): so is c.
		_ = c.Wake(nil)
	}
}

// flushReplies writes every buffered answer with one write. Loop only: the
// loop owns spare, the buffer it gives the completers while it writes.
func (s *Server) flushReplies(c gn.Conn, st *tcpState) {
	st.mu.Lock()
	n := st.nReply
	if n == 0 {
		st.mu.Unlock()
		return
	}
	out := st.replies
	st.replies, st.spare = st.spare[:0], nil
	st.nReply, st.woken = 0, false
	st.mu.Unlock()
	s.replyFlushes.Add(1) // before the write: a test counts on seeing it once the answers arrive
	_, _ = c.Write(out)   // written, or copied into gnet's outbound buffer
	// Activity once per flush, not per answer: the idle check looks at it
	// only when nothing is in flight, which is after a flush.
	st.lastActive.Store(time.Now().UnixNano())
	st.inflight.Add(-n)
	if cap(out) <= maxKeptReplyBuf {
		st.spare = out[:0]
	}
}

// OnTraffic reads the queries that arrived on a connection and answers
// those it can at once.
func (s *Server) OnTraffic(c gn.Conn) gn.Action {
	st, ok := c.Context().(*tcpState)
	if !ok {
		return gn.Close // refused by OnOpen
	}
	if st.idle.Load() && s.closeIfIdle(c, st) {
		return gn.Close
	}
	s.flushReplies(c, st)
	for {
		if c.OutboundBuffered() > maxTCPBacklog {
			// The client sends queries but does not read the answers:
			// buffering them would grow without bound. Reset, so that
			// the kernel drops what it holds too.
			s.tcpBacklog.Add(1)
			reset(c)
			return gn.Close
		}
		hdr, err := c.Peek(2)
		if err != nil || len(hdr) < 2 {
			return gn.None // wait for more bytes
		}
		n := int(binary.BigEndian.Uint16(hdr))
		if n < dnsmsg.HeaderLen {
			return gn.Close // not DNS; RFC 7766 lets us close
		}
		if c.InboundBuffered() < 2+n {
			return gn.None
		}
		frame, err := c.Next(2 + n)
		if err != nil {
			return gn.Close
		}
		// Only whole messages count as activity: a byte now and then does
		// not keep a connection from the idle timeout.
		st.lastActive.Store(time.Now().UnixNano())
		s.tcpQ.Add(1)
		s.serveTCP(c, st, frame[2:])
	}
}

func (s *Server) serveTCP(c gn.Conn, st *tcpState, msg []byte) {
	bp := s.bufs.Get().(*[]byte)
	defer s.bufs.Put(bp)
	out := *bp
	r := forwarder.Request{Msg: msg, Transport: forwarder.TransportTCP, Client: st.client, Listener: s.cfg.Name}
	if st.inflight.Load() >= int32(s.cfg.MaxTCPPipeline) {
		s.tcpPipe.Add(1)
		if dnsmsg.Parse(msg, &r.Q) == nil {
			writeFramed(c, out, dnsmsg.AppendError(out[2:2], msg, &r.Q, dnsmsg.RcodeServFail))
		}
		return
	}
	st.inflight.Add(1)
	resp, ok := s.h.Answer(&r, out[2:])
	if ok {
		st.inflight.Add(-1)
		if resp != nil {
			writeFramed(c, out, resp)
		}
		return
	}
	resp, ok = s.h.Resolve(&r, out[2:], func(resp []byte) { s.queueReply(c, st, resp) })
	if !ok {
		return
	}
	st.inflight.Add(-1)
	if resp != nil {
		writeFramed(c, out, resp)
	}
}

// writeFramed writes resp with its length prefix, using out (at least 2+64 KiB,
// which resp usually already occupies from offset 2) as the frame buffer.
func writeFramed(c gn.Conn, out, resp []byte) {
	n := copy(out[2:], resp)
	binary.BigEndian.PutUint16(out, uint16(n))
	_, _ = c.Write(out[:2+n])
}
