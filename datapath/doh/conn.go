package doh

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"golang.org/x/sys/unix"

	"xdoh/forwarder"
)

// Protocol numbers of this server.
const (
	maxFrame       = 16384                  // SETTINGS_MAX_FRAME_SIZE we accept (the default; not raised)
	streamWindow   = DefaultMaxBodySize + 1 // SETTINGS_INITIAL_WINDOW_SIZE we give each stream: any query fits, and one too large shows
	connWindow     = 1 << 20                // connection receive window, replenished at half
	maxWindow      = 1<<31 - 1
	frameHeaderLen = 9
	readBufSize    = 32 << 10 // holds the largest frame we accept, whole
	flushAt        = 64 << 10 // answers written before the reader idles once this much is waiting
	tableSize      = 4096     // HPACK dynamic table, both ways (the default)

	// Rapid reset (CVE-2023-44487): a stream the client resets while its
	// query is in flight keeps its slot until the query ends, so resets
	// cannot raise the work in flight past MaxConcurrentStreams; and a
	// client that resets more than resetBurst streams, refilled at
	// Config.MaxResetRate a second, is sent GOAWAY ENHANCE_YOUR_CALM.
	// resetBurst is that many seconds' worth.
	resetBurst = 10

	lingerTime   = time.Second            // after a GOAWAY for an error: time for the client to read it
	closingPoll  = 50 * time.Millisecond  // after Shutdown's GOAWAY: how often the reader looks whether all is answered
	deadlineSlop = 100 * time.Millisecond // a read deadline closer than this to the wanted one is left as it is
)

// errClosed ends the reader quietly; errDrained too, after GOAWAY, once
// everything in flight was answered.
var (
	errClosed  = errors.New("connection closed")
	errDrained = errors.New("connection drained after GOAWAY")
)

// connError ends the connection with GOAWAY and an HTTP/2 error code.
type connError struct {
	code   http2.ErrCode
	reason string
}

func (e connError) Error() string { return fmt.Sprintf("%v: %s", e.code, e.reason) }

// conn is one client connection. Its reader goroutine (serve, and everything
// in this file and request.go) owns the request side; the write side
// (write.go) is guarded by mu and shared by the reader, the writer
// goroutine and the pipeline's callbacks.
type conn struct {
	s      *Server
	raw    net.Conn // the TCP connection
	sock   *sock    // raw as TLS sees it (nil: raw is not TCP, as in tests)
	nc     net.Conn // raw with TLS (*tls.Conn), or plain in tests (Server.plain)
	client netip.AddrPort

	// Reader-owned.
	br       *bufio.Reader
	fr       *http2.Framer // reads here; its writes go through mu (write.go)
	dec      *hpack.Decoder
	streams  map[uint32]*stream // streams whose request is still arriving, or is being ignored after a reset
	maxID    uint32             // highest stream ID the client opened
	hdr      *stream            // the stream whose header block is being decoded
	hdrRaw   int                // encoded octets of that block so far
	hdrEnd   time.Time          // when that block must be complete
	recvFree int                // connection receive window left
	unacked  int                // DATA octets taken since the last connection WINDOW_UPDATE
	resets   float64            // rapid-reset tokens
	resetAt  time.Time          // when resets was last refilled
	deadline time.Time          // the read deadline set last
	closing  bool               // GOAWAY sent or received: no new streams; close when all are answered
	started  bool               // the client preface was read
	getBuf   []byte             // decoded GET queries
	req      forwarder.Request  // reused for every request

	// Write side, guarded by mu (write.go).
	mu         sync.Mutex
	out        outBuf      // frames not yet written; fr writes here
	outFull    atomic.Bool // out holds flushAt (or MaxPending/2) octets: the reader writes before it reads on
	spare      []byte      // the other buffer, while out's contents are being written
	marks      []int       // where in out each answer ends (write.go: a TLS record each)
	spareMarks []int
	writing    bool   // a goroutine is writing; it writes out again before it stops
	dead       bool   // the connection is gone; answers are dropped
	goingAway  bool   // GOAWAY sent
	ready      bool   // the server preface was written: GOAWAY may follow
	lastID     uint32 // highest stream admitted, for GOAWAY
	enc        *hpack.Encoder
	hbuf       outBuf             // header block being encoded
	open       map[uint32]*stream // admitted streams not yet retired (MaxConcurrentStreams counts these)
	blocked    []*stream          // streams with answer octets held back by flow control
	pending    int                // octets in blocked streams
	sendWindow int64              // connection send window
	peerWindow int64              // the client's SETTINGS_INITIAL_WINDOW_SIZE
	peerFrame  int                // the client's SETTINGS_MAX_FRAME_SIZE

	stop atomic.Bool   // Shutdown sent GOAWAY; the reader starts closing
	wake chan struct{} // asks the writer goroutine to write out
	quit chan struct{} // closed when the reader ends
}

// newConn makes a connection ready to be counted; init readies it to
// serve (apart, so that a refused connection costs no buffers).
func newConn(s *Server, raw net.Conn) *conn {
	return &conn{s: s, raw: raw, client: clientAddr(raw.RemoteAddr().String())}
}

func (c *conn) init() {
	s, raw := c.s, c.raw
	*c = conn{
		s: s, raw: raw, client: c.client,
		streams: map[uint32]*stream{}, open: map[uint32]*stream{},
		recvFree: connWindow, resets: float64(resetBurst * s.cfg.MaxResetRate),
		sendWindow: 65535, peerWindow: 65535, peerFrame: 16384,
		wake: make(chan struct{}, 1), quit: make(chan struct{}),
	}
	var under net.Conn = raw
	if tc, ok := raw.(*net.TCPConn); ok {
		if sk, err := newSock(tc, c.onIdle); err == nil {
			c.sock, under = sk, sk
		}
	}
	c.nc = under
	if !s.plain {
		c.nc = tls.Server(under, s.tls)
	}
	c.br = bufio.NewReaderSize(c.nc, readBufSize)
	c.out.limit, c.out.full = min(flushAt, s.cfg.MaxPending/2), &c.outFull
	c.fr = http2.NewFramer(&c.out, c.br)
	c.fr.SetMaxReadFrameSize(maxFrame)
	c.dec = hpack.NewDecoder(tableSize, c.onField)
	c.dec.SetMaxStringLength(s.cfg.MaxHeaderBytes)
	c.enc = hpack.NewEncoder(&c.hbuf)
}

// serve is the reader goroutine: handshake, preface, then frames until the
// connection ends.
func (c *conn) serve() {
	defer c.s.wg.Done()
	defer c.close()
	c.nc.SetDeadline(time.Now().Add(c.s.cfg.ReadHeaderTimeout))
	h2 := true // plain: HTTP/2 with prior knowledge
	if tc, ok := c.nc.(*tls.Conn); ok {
		if err := tc.Handshake(); err != nil {
			c.s.stats.handshakeErrors.Add(1)
			c.s.log(slog.LevelDebug, "TLS handshake error", "client", c.client, "err", err)
			return
		}
		// With ALPN h2 the server preface goes out at once: a client that
		// waits for it (or for an ACK it can ride on, under Nagle) before
		// it sends its own preface and first request is not kept waiting.
		// Without ALPN the client might speak HTTP/1.1: its first bytes
		// decide.
		h2 = tc.ConnectionState().NegotiatedProtocol == "h2"
	}
	c.nc.SetWriteDeadline(time.Time{})
	if h2 {
		c.serverPreface()
	}
	p, err := c.br.Peek(len(http2.ClientPreface))
	if err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) && !c.stop.Load() {
			c.s.stats.timeouts.Add(1) // a slow (or no) client preface: ReadHeaderTimeout
		}
		c.s.log(slog.LevelDebug, "reading the client preface", "client", c.client, "err", err)
		return
	}
	if string(p) != http2.ClientPreface {
		if !h2 {
			c.refuseHTTP1(p)
		}
		return
	}
	c.br.Discard(len(p))
	c.started = true
	if !h2 {
		c.serverPreface()
	}

	err = c.readFrames()
	var ce connError
	switch {
	case errors.As(err, &ce):
		c.s.stats.protocolErrors.Add(1)
		c.s.log(slog.LevelDebug, "HTTP/2 connection error", "client", c.client, "err", err)
		c.goAway(ce.code, ce.reason)
		c.linger()
	case errors.Is(err, errDrained):
		c.linger() // the client reads its last answers before the close
	case errors.Is(err, errClosed), errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed):
	default:
		c.s.log(slog.LevelDebug, "reading from client", "client", c.client, "err", err)
	}
}

// serverPreface writes and sends the server's SETTINGS and opens the
// connection's receive window.
func (c *conn) serverPreface() {
	c.mu.Lock()
	c.ready = true
	c.fr.WriteSettings(
		http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: c.s.cfg.MaxConcurrentStreams},
		http2.Setting{ID: http2.SettingInitialWindowSize, Val: streamWindow},
		http2.Setting{ID: http2.SettingMaxFrameSize, Val: maxFrame},
		http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: uint32(c.s.cfg.MaxHeaderBytes)},
	)
	c.fr.WriteWindowUpdate(0, connWindow-65535)
	c.mu.Unlock()
	c.flush()
}

// readFrames runs until the connection ends. The first frame must be
// SETTINGS (RFC 9113 3.4).
func (c *conn) readFrames() error {
	for first := true; ; first = false {
		if err := c.fill(); err != nil {
			return err
		}
		fh, err := c.fr.ReadFrameHeader()
		var f http2.Frame
		if err == nil {
			f, err = c.fr.ReadFrameForHeader(fh)
		}
		if err != nil {
			if err := c.frameError(fh.Type, err); err != nil {
				return err
			}
			continue
		}
		if sf, ok := f.(*http2.SettingsFrame); first && (!ok || sf.IsAck()) {
			return connError{http2.ErrCodeProtocol, "the first frame is not SETTINGS"}
		}
		if err := c.process(f); err != nil {
			return err
		}
		if c.outFull.Load() {
			c.flush() // a client that never lets the reader idle still gets its answers, before they pass MaxPending
		}
	}
}

// frameError handles what ReadFrame reports: a stream error resets the
// stream, a connection error ends the connection.
func (c *conn) frameError(typ http2.FrameType, err error) error {
	var se http2.StreamError
	var ce http2.ConnectionError
	switch {
	case errors.As(err, &se) && typ == http2.FrameHeaders:
		// Padding longer than the frame (RFC 9113 6.2). Its header block
		// is lost to HPACK, and the Framer already expects the block's
		// CONTINUATION, which would find no c.hdr.
		return connError{http2.ErrCodeProtocol, "malformed HEADERS frame"}
	case errors.As(err, &se):
		c.s.stats.streamErrors.Add(1)
		c.resetStream(se.StreamID, se.Code)
		return nil
	case errors.As(err, &ce):
		reason := "malformed frame"
		if d := c.fr.ErrorDetail(); d != nil {
			reason = d.Error()
		}
		return connError{http2.ErrCode(ce), reason}
	case errors.Is(err, http2.ErrFrameTooLarge):
		return connError{http2.ErrCodeFrameSize, "frame larger than SETTINGS_MAX_FRAME_SIZE"}
	}
	return err
}

// fill makes sure a whole frame is buffered, so that ReadFrame never waits
// in the middle of one and a read deadline can never split a frame.
func (c *conn) fill() error {
	for {
		need := frameHeaderLen
		if n := c.br.Buffered(); n >= frameHeaderLen {
			h, _ := c.br.Peek(frameHeaderLen)
			length := int(h[0])<<16 | int(h[1])<<8 | int(h[2])
			if length > maxFrame || n >= frameHeaderLen+length {
				return nil // whole, or too large: ReadFrame reads only the header and says so
			}
			need += length
		}
		if c.sock == nil && c.br.Buffered() < need {
			c.onIdle() // no sock to say when the input runs dry (tests: net.Pipe): before any read
		}
		_, err := c.br.Peek(need)
		if err == nil {
			continue
		}
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			return err
		}
		c.closing = c.closing || c.stop.Load()
		now := time.Now()
		if err := c.timedOut(now); err != nil {
			return err
		}
		c.armDeadline(now) // a passed deadline fails every read until it is moved
	}
}

// onIdle runs when the reader has taken in everything the client sent and
// is about to wait for more (see sock). It writes out what the frames read
// so far produced, acknowledges at once what it read when it has nothing
// to write, and sets the read deadline the connection's state calls for.
func (c *conn) onIdle() {
	if !c.started {
		return // handshake and preface: ReadHeaderTimeout holds
	}
	if !c.flush() && c.sock != nil && c.sock.fresh {
		c.ackNow()
	}
	if c.sock != nil {
		c.sock.fresh = false
	}
	c.armDeadline(time.Now())
}

// armDeadline sets the read deadline the connection's state calls for
// (readDeadline), unless the one set is still ahead and within
// deadlineSlop of it.
func (c *conn) armDeadline(now time.Time) {
	d := c.readDeadline(now)
	if delta := d.Sub(c.deadline); !c.deadline.After(now) || delta > deadlineSlop || delta < -deadlineSlop || !d.After(now) {
		c.nc.SetReadDeadline(d)
		c.deadline = d
		if !c.closing && c.stop.Load() {
			c.nc.SetReadDeadline(now) // Shutdown's deadline may have come just before ours
		}
	}
}

// ackNow acknowledges at once what the kernel has received. Left to
// itself the kernel delays the acknowledgement (up to 40 ms) in the hope
// that an answer will carry it; but when the reader waits with nothing to
// write, the client may be waiting for that acknowledgement: with Nagle's
// algorithm on (dnsperf, nghttp2-based clients) a POST's DATA, or a
// request behind a WINDOW_UPDATE or SETTINGS ACK, is held until everything
// sent before it is acknowledged.
func (c *conn) ackNow() {
	c.sock.rc.Control(setQuickAck)
}

// quickAckOnce is TCP_QUICKACK's value that sends the acknowledgement the
// kernel is holding back and leaves the socket delaying the next ones: an
// even value puts it back in "pingpong" mode after the ACK (Linux
// __tcp_sock_set_quickack), where 1 would ACK each following segment at
// once too. Those extra bare ACKs made a client that keeps Nagle on (dnsdist
// 1.7's DoH backend) send more and smaller segments (see
// docs/performance.md).
var quickAckOnce int32 = 2

// setQuickAck sets TCP_QUICKACK, as a raw system call (see sock).
func setQuickAck(fd uintptr) {
	unix.RawSyscall6(unix.SYS_SETSOCKOPT, fd, unix.IPPROTO_TCP, unix.TCP_QUICKACK, uintptr(unsafe.Pointer(&quickAckOnce)), 4, 0)
}

// readDeadline is the next moment the reader must look up from the
// network: a header block or a request body overdue, the idle timeout, or,
// while closing, soon.
func (c *conn) readDeadline(now time.Time) time.Time {
	switch {
	case c.closing:
		return now.Add(closingPoll)
	case c.stop.Load():
		return now // Shutdown sent GOAWAY: look up at once
	}
	if c.hdr != nil {
		return c.hdrEnd
	}
	d := now.Add(c.s.cfg.IdleTimeout)
	for _, st := range c.streams {
		if end := st.start.Add(c.s.cfg.ReadTimeout); end.Before(d) {
			d = end
		}
	}
	return d
}

// timedOut runs when a read deadline passed: it resets overdue requests and
// ends a connection that is idle, stalled in a header block, or closing
// with nothing left to answer.
func (c *conn) timedOut(now time.Time) error {
	if c.closing {
		// Done when every stream is answered and every answer written (the
		// writer goroutine may still be writing the last one).
		c.flush()
		c.mu.Lock()
		done := len(c.open) == 0 && !c.writing && len(c.out.b) == 0
		c.mu.Unlock()
		if done {
			return errDrained
		}
		return nil
	}
	if c.hdr != nil && !now.Before(c.hdrEnd) {
		c.s.stats.timeouts.Add(1)
		return connError{http2.ErrCodeProtocol, "header block not completed in time"}
	}
	overdue := false
	for id, st := range c.streams {
		if !now.Before(st.start.Add(c.s.cfg.ReadTimeout)) {
			overdue = true
			delete(c.streams, id)
			if !st.ignore { // an ignored stream was answered or reset already
				c.s.stats.timeouts.Add(1)
				c.resetStream(id, http2.ErrCodeCancel)
			}
		}
	}
	if overdue || len(c.streams) > 0 {
		return nil
	}
	c.mu.Lock()
	idle := len(c.open) == 0
	c.mu.Unlock()
	if c.sock != nil && c.sock.fresh {
		idle = false // a client that kept the reader busy (it never idled to move the deadline)
	}
	if idle {
		c.goAway(http2.ErrCodeNo, "idle")
		c.s.stats.idleClosed.Add(1)
		c.linger()
		return errClosed
	}
	return nil
}

// process handles one frame.
func (c *conn) process(f http2.Frame) error {
	switch f := f.(type) {
	case *http2.HeadersFrame:
		return c.onHeaders(f)
	case *http2.ContinuationFrame:
		return c.headerFragment(f.HeaderBlockFragment(), f.HeadersEnded())
	case *http2.DataFrame:
		return c.onData(f)
	case *http2.SettingsFrame:
		return c.onSettings(f)
	case *http2.WindowUpdateFrame:
		return c.onWindowUpdate(f)
	case *http2.PingFrame:
		if !f.IsAck() {
			c.mu.Lock()
			c.fr.WritePing(true, f.Data)
			err := c.checkPending()
			c.mu.Unlock()
			return err
		}
	case *http2.RSTStreamFrame:
		return c.onReset(f)
	case *http2.PriorityFrame:
		if f.StreamDep == f.StreamID {
			c.s.stats.streamErrors.Add(1)
			c.resetStream(f.StreamID, http2.ErrCodeProtocol)
		}
	case *http2.GoAwayFrame:
		c.closing = true // the client opens no more streams; answer the rest, then close
	case *http2.PushPromiseFrame:
		return connError{http2.ErrCodeProtocol, "PUSH_PROMISE from a client"}
	}
	// Other frame types are ignored (RFC 9113 5.5).
	return nil
}

// onHeaders starts a request's header block, or its trailers.
func (c *conn) onHeaders(f *http2.HeadersFrame) error {
	id := f.StreamID
	if id%2 == 0 {
		return connError{http2.ErrCodeProtocol, "client stream ID is even"}
	}
	var st *stream
	switch {
	case id <= c.maxID:
		st = c.streams[id]
		if st == nil {
			return connError{http2.ErrCodeStreamClosed, "HEADERS on a closed stream"}
		}
		// Trailers: they must end the stream. Their fields are checked
		// and dropped.
		st.trailers = true
		if !f.StreamEnded() {
			st.malformed = true
		}
	default:
		c.maxID = id
		st = c.newStream(id)
		st.endStream = f.StreamEnded()
		c.admit(st)
	}
	st.endStream = f.StreamEnded()
	if f.HasPriority() && f.Priority.StreamDep == id {
		st.refuse = http2.ErrCodeProtocol
	}
	c.hdr, c.hdrRaw, c.hdrEnd = st, 0, time.Now().Add(c.s.cfg.ReadHeaderTimeout)
	return c.headerFragment(f.HeaderBlockFragment(), f.HeadersEnded())
}

// admit takes a new stream in, or marks it refused: past
// MaxConcurrentStreams, or after GOAWAY. Its header block is decoded either
// way, to keep the HPACK table in step, and a refused stream's DATA is
// dropped quietly until it ends.
func (c *conn) admit(st *stream) {
	if !st.endStream {
		c.streams[st.id] = st
	}
	if c.closing || c.stop.Load() {
		st.ignore = true // RFC 9113 6.8: streams after GOAWAY's last ID are ignored
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if uint32(len(c.open)) >= c.s.cfg.MaxConcurrentStreams {
		st.refuse = http2.ErrCodeRefusedStream
		c.s.stats.refusedStreams.Add(1)
		return
	}
	st.window = c.peerWindow
	st.admitted = true
	c.open[st.id] = st
	c.lastID = st.id
}

// headerFragment decodes one piece of a header block; at its end the
// request's headers are complete.
func (c *conn) headerFragment(b []byte, end bool) error {
	c.hdrRaw += frameHeaderLen + len(b) // frame headers count: a flood of empty CONTINUATION frames is no free ride
	if c.hdrRaw > c.s.cfg.MaxHeaderBytes+16<<10 {
		c.s.stats.headerFloods.Add(1)
		return connError{http2.ErrCodeEnhanceYourCalm, "header block too large"}
	}
	if _, err := c.dec.Write(b); err != nil {
		return connError{http2.ErrCodeCompression, err.Error()}
	}
	if !end {
		return nil
	}
	if err := c.dec.Close(); err != nil {
		return connError{http2.ErrCodeCompression, err.Error()}
	}
	st := c.hdr
	c.hdr = nil
	c.headersDone(st)
	return nil
}

// onField is the HPACK decoder's callback for one header field of c.hdr.
func (c *conn) onField(f hpack.HeaderField) {
	c.hdr.field(f, c.s.cfg.MaxHeaderBytes)
}

// headersDone acts on a complete header block.
func (c *conn) headersDone(st *stream) {
	switch {
	case st.ignore:
		if st.endStream {
			delete(c.streams, st.id)
		}
	case st.refuse != 0:
		if st.admitted {
			c.s.stats.streamErrors.Add(1)
		}
		c.resetStream(st.id, st.refuse)
	case st.malformed, !st.trailers && !st.complete():
		c.s.stats.streamErrors.Add(1)
		c.resetStream(st.id, http2.ErrCodeProtocol)
	case st.tooLarge:
		c.fail(st, 431, "request header fields too large")
	case st.trailers || st.endStream:
		c.endRequest(st)
	case st.clen > int64(c.s.cfg.MaxBodySize):
		c.fail(st, 413, "query too large")
	}
}

// onData takes a piece of a request body.
func (c *conn) onData(f *http2.DataFrame) error {
	n := int(f.Length) // padding included: it counts against flow control
	if c.recvFree -= n; c.recvFree < 0 {
		return connError{http2.ErrCodeFlowControl, "DATA beyond the connection window"}
	}
	if c.unacked += n; c.unacked >= connWindow/2 {
		c.mu.Lock()
		c.fr.WriteWindowUpdate(0, uint32(c.unacked))
		c.mu.Unlock()
		c.recvFree += c.unacked
		c.unacked = 0
	}
	id := f.StreamID
	st := c.streams[id]
	if st == nil {
		if id > c.maxID {
			return connError{http2.ErrCodeProtocol, "DATA on an idle stream"}
		}
		c.s.stats.streamErrors.Add(1)
		c.resetStream(id, http2.ErrCodeStreamClosed)
		return nil
	}
	if st.ignore {
		if f.StreamEnded() {
			delete(c.streams, id)
		}
		return nil
	}
	st.endStream = f.StreamEnded() // the request ends here, whatever becomes of it: nothing to ignore after
	data := f.Data()
	st.recv += n
	switch {
	case st.recv > streamWindow:
		c.s.stats.streamErrors.Add(1)
		c.resetStream(id, http2.ErrCodeFlowControl)
		return nil
	case st.clen >= 0 && int64(len(st.body)+len(data)) > st.clen:
		c.s.stats.streamErrors.Add(1)
		c.resetStream(id, http2.ErrCodeProtocol) // RFC 9113 8.1.1: malformed
		return nil
	case len(st.body)+len(data) > c.s.cfg.MaxBodySize:
		c.fail(st, 413, "query too large")
		return nil
	}
	st.body = append(st.body, data...)
	if f.StreamEnded() {
		if st.clen >= 0 && int64(len(st.body)) != st.clen {
			c.s.stats.streamErrors.Add(1)
			c.resetStream(id, http2.ErrCodeProtocol)
			return nil
		}
		c.endRequest(st)
	}
	return nil
}

// onReset ends a stream the client reset.
func (c *conn) onReset(f *http2.RSTStreamFrame) error {
	id := f.StreamID
	if id > c.maxID {
		return connError{http2.ErrCodeProtocol, "RST_STREAM on an idle stream"}
	}
	delete(c.streams, id)
	c.mu.Lock()
	st := c.open[id]
	costly := st != nil && !st.ended
	if st != nil {
		c.endStream(st)
	}
	c.mu.Unlock()
	if !costly {
		return nil
	}
	now := time.Now()
	rate := float64(c.s.cfg.MaxResetRate)
	c.resets = min(resetBurst*rate, c.resets+now.Sub(c.resetAt).Seconds()*rate)
	c.resetAt = now
	if c.resets--; c.resets < 0 {
		c.s.stats.resetFloods.Add(1)
		return connError{http2.ErrCodeEnhanceYourCalm, "too many streams reset"}
	}
	return nil
}

// endRequest runs the pipeline on a complete request: the answer is written
// now when the pipeline has it (cache, local zone, errors), else when the
// upstream resolution calls back.
func (c *conn) endRequest(st *stream) {
	delete(c.streams, st.id)
	msg, code, why := c.s.parse(st, &c.getBuf)
	if code != 0 {
		c.fail(st, code, why)
		return
	}
	c.req = forwarder.Request{Msg: msg, Transport: c.s.transport, Client: c.client, Listener: c.s.cfg.Name}
	buf := c.s.bufs.Get().(*[]byte)
	resp, ok := c.s.h.Answer(&c.req, *buf)
	if !ok {
		c.mu.Lock()
		st.resolving = true
		c.mu.Unlock()
		// done may run before Resolve returns, on this goroutine or another.
		resp, ok = c.s.h.Resolve(&c.req, *buf, st.answered)
	}
	if ok {
		c.mu.Lock()
		st.resolving = false
		c.respond(st, resp)
		c.mu.Unlock()
	}
	c.s.bufs.Put(buf)
}

// fail answers a request with an HTTP error. A stream whose request is not
// complete is then reset with NO_ERROR (RFC 9113 8.1) and the rest of its
// body ignored.
func (c *conn) fail(st *stream, code int, why string) {
	c.mu.Lock()
	c.writeError(st, code, why)
	if !st.endStream && !st.trailers {
		c.fr.WriteRSTStream(st.id, http2.ErrCodeNo)
		c.endStream(st)
	}
	c.mu.Unlock()
	if st.endStream {
		delete(c.streams, st.id)
	} else {
		st.ignore, st.body = true, nil // kept until ReadTimeout: not its body too
	}
}

// resetStream sends RST_STREAM and forgets the stream.
func (c *conn) resetStream(id uint32, code http2.ErrCode) {
	if st := c.streams[id]; st != nil && st.endStream {
		delete(c.streams, id)
	} else if st != nil {
		st.ignore, st.body = true, nil // its remaining DATA is dropped until it ends or times out
	}
	c.mu.Lock()
	c.fr.WriteRSTStream(id, code)
	if st := c.open[id]; st != nil {
		c.endStream(st)
	}
	c.mu.Unlock()
}

// refuseHTTP1 answers an HTTP/1.x request with 505 and closes; anything
// else that is not the HTTP/2 preface is just closed (RFC 9113 3.4).
func (c *conn) refuseHTTP1(p []byte) {
	const body = "this DoH server speaks HTTP/2 only\n"
	method, _, ok := strings.Cut(string(p), " ")
	if !ok || !slices.Contains(http1Methods, method) {
		c.s.log(slog.LevelDebug, "not an HTTP/2 client preface", "client", c.client)
		return
	}
	c.s.stats.http1.Add(1)
	c.nc.SetWriteDeadline(time.Now().Add(c.s.cfg.WriteTimeout))
	fmt.Fprintf(c.nc, "HTTP/1.1 505 HTTP Version Not Supported\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
}

var http1Methods = []string{"GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "CONNECT"}

// linger half-closes after a final GOAWAY and reads what the client still
// sends for a moment, so that the GOAWAY is not lost to a reset.
func (c *conn) linger() {
	c.flush()
	if tc, ok := c.raw.(*net.TCPConn); ok {
		tc.CloseWrite()
	}
	c.raw.SetReadDeadline(time.Now().Add(lingerTime))
	io.Copy(io.Discard, c.raw)
}

// close ends the connection: answers still to come are dropped.
func (c *conn) close() {
	c.mu.Lock()
	c.dead = true
	c.mu.Unlock()
	c.raw.Close()
	close(c.quit)
	c.s.conns.Forget(c)
}

// shutdown sends GOAWAY: the client opens no more streams, the ones it has
// are answered, then the reader closes the connection.
func (c *conn) shutdown() {
	c.mu.Lock()
	if !c.ready || c.dead {
		c.mu.Unlock()
		c.raw.Close()
		return
	}
	c.writeGoAway(http2.ErrCodeNo, "")
	c.mu.Unlock()
	c.kick()
	c.stop.Store(true)
	c.raw.SetReadDeadline(time.Now()) // the reader looks up and starts closing (see readDeadline)
}

// onSettings applies the client's settings and acknowledges them.
func (c *conn) onSettings(f *http2.SettingsFrame) error {
	if f.IsAck() {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	err := f.ForeachSetting(func(s http2.Setting) error {
		if err := s.Valid(); err != nil {
			var ce http2.ConnectionError
			errors.As(err, &ce)
			return connError{http2.ErrCode(ce), "invalid " + s.String()}
		}
		switch s.ID {
		case http2.SettingInitialWindowSize:
			// RFC 9113 6.9.2: the change applies to every open stream.
			delta := int64(s.Val) - c.peerWindow
			c.peerWindow = int64(s.Val)
			for _, st := range c.open {
				if st.window += delta; st.window > maxWindow {
					return connError{http2.ErrCodeFlowControl, "SETTINGS_INITIAL_WINDOW_SIZE overflows a stream window"}
				}
			}
		case http2.SettingMaxFrameSize:
			c.peerFrame = int(s.Val)
		case http2.SettingHeaderTableSize:
			c.enc.SetMaxDynamicTableSize(min(s.Val, tableSize))
		}
		return nil
	})
	if err != nil {
		return err
	}
	c.fr.WriteSettingsAck()
	c.drainBlocked()
	return c.checkPending()
}

// onWindowUpdate opens a send window.
func (c *conn) onWindowUpdate(f *http2.WindowUpdateFrame) error {
	id, inc := f.StreamID, int64(f.Increment)
	if id > c.maxID {
		return connError{http2.ErrCodeProtocol, "WINDOW_UPDATE on an idle stream"}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if id == 0 {
		if c.sendWindow += inc; c.sendWindow > maxWindow {
			return connError{http2.ErrCodeFlowControl, "connection window over 2^31-1"}
		}
	} else if st := c.open[id]; st != nil && !st.ended {
		if st.window += inc; st.window > maxWindow {
			c.s.stats.streamErrors.Add(1)
			c.fr.WriteRSTStream(id, http2.ErrCodeFlowControl)
			c.endStream(st)
		}
	}
	c.drainBlocked()
	return nil
}
