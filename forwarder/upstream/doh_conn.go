package upstream

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// h2Conn is one HTTP/2 connection to a DoH server, with one writer and one
// reader goroutine.
type h2Conn struct {
	d     *DoH
	nc    net.Conn // the TLS connection
	sock  *rawConn // its socket, if raw: writeInline writes only when its send queue is empty
	bw    *bufio.Writer
	fr    *http2.Framer
	reqCh chan *request // requests for the writer; bounded
	wake  chan struct{} // cap 1: the writer has control frames or window to act on
	quit  chan struct{} // closed by shutdown
	// wmu is held while a batch is written and by writerExit: by the
	// writer, or by a Submit writing its request itself (writeInline).
	wmu sync.Mutex

	closing  atomic.Bool  // no new streams: draining or dead
	inflight atomic.Int32 // active, readable without the lock (connection choice)
	born     time.Time    // monotonic base of lastRead
	lastRead atomic.Int64 // when the reader last got a frame, ns since born

	mu             sync.Mutex
	dead           bool
	err            error // why the connection died
	draining       bool  // GOAWAY received or stream IDs exhausted
	streams        map[uint32]*request
	active         int // streams held by callers: queued or open; mirrored in inflight
	maxStreams     int
	waiting        int           // callers waiting for a free stream
	freeCh         chan struct{} // closed and replaced when a stream frees up
	nextID         uint32
	sendWindow     int64 // connection-level flow-control window for our DATA
	peerInitWindow int64
	peerMaxFrame   int
	tableUpdate    int64 // new, smaller HPACK table size to announce; -1 if none
	ctl            ctlFrames
	pingOut        bool    // our PING awaits its ACK
	pingData       [8]byte // its payload (random); written by the writer only
	pingSent       time.Time

	// Writer-owned.
	batch        []*request
	blocked      []*request // waiting for connection send window, in order
	sends        []sendItem
	arena        []byte // query bytes of the current batch
	ctlSpare     ctlFrames
	hdrBuf       []byte
	hdrIndexed   bool  // the first block went out: the dynamic table holds our fields
	hdrLiteral   bool  // do not use the dynamic table (server shrank it)
	pendingTable int64 // table size update to put in the next header block; -1 if none
	armPing      bool  // a PING went out with the last batch: time its ACK

	// Reader-owned.
	dec        *hpack.Decoder
	hStatus    int
	hCTOK      bool
	hCLen      int    // content-length: -1 none, badContentLength
	hEndStream bool   // END_STREAM of the HEADERS frame whose block continues
	connRecvd  uint32 // connection bytes consumed since our last WINDOW_UPDATE
}

// ctlFrames are control frames the reader (or an abandoning caller) asks the
// writer to send.
type ctlFrames struct {
	settingsAck int
	ping        bool      // send a PING of our own unless one is outstanding
	pings       [][8]byte // PING ACKs
	connWU      uint32
	streamWU    []streamWU
	rst         []streamRST
}

func (f *ctlFrames) empty() bool {
	return f.settingsAck == 0 && !f.ping && len(f.pings) == 0 && f.connWU == 0 && len(f.streamWU) == 0 && len(f.rst) == 0
}

func (f *ctlFrames) reset() {
	f.settingsAck, f.connWU, f.ping = 0, 0, false
	f.pings, f.streamWU, f.rst = f.pings[:0], f.streamWU[:0], f.rst[:0]
}

type streamWU struct{ id, incr uint32 }

type streamRST struct {
	id   uint32
	code http2.ErrCode
}

type sendItem struct {
	id     uint32
	off, n int // query bytes in arena
}

const maxQueuedPings = 16

func newH2Conn(d *DoH, nc net.Conn) *h2Conn {
	c := &h2Conn{
		d:              d,
		nc:             nc,
		bw:             bufio.NewWriterSize(nc, writeBufSize),
		reqCh:          make(chan *request, 2*maxStreamsPerConn),
		wake:           make(chan struct{}, 1),
		quit:           make(chan struct{}),
		streams:        make(map[uint32]*request, 64),
		maxStreams:     maxStreamsPerConn,
		freeCh:         make(chan struct{}),
		nextID:         1,
		sendWindow:     65535,
		peerInitWindow: 65535,
		peerMaxFrame:   16384,
		tableUpdate:    -1,
		pendingTable:   -1,
		hCLen:          -1,
		born:           time.Now(),
	}
	c.fr = http2.NewFramer(c.bw, bufio.NewReaderSize(nc, readBufSize))
	c.fr.SetMaxReadFrameSize(16384) // the default we advertise
	c.fr.SetReuseFrames()           // DATA payloads are copied out at once
	c.dec = hpack.NewDecoder(4096, c.onHeaderField)
	c.dec.SetMaxStringLength(16 << 10)
	return c
}

// handshake sends the client preface, our SETTINGS and connection
// WINDOW_UPDATE, and waits for the server's SETTINGS, so that its limits are
// known before the first stream.
func (c *h2Conn) handshake(ctx context.Context) error {
	dl, _ := ctx.Deadline()
	if err := c.nc.SetDeadline(dl); err != nil {
		return err
	}
	stop := context.AfterFunc(ctx, func() { c.nc.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if _, err := c.bw.WriteString(http2.ClientPreface); err != nil {
		return fmt.Errorf("writing preface: %w", err)
	}
	if err := c.fr.WriteSettings(
		http2.Setting{ID: http2.SettingEnablePush, Val: 0},
		http2.Setting{ID: http2.SettingInitialWindowSize, Val: streamRecvWindow},
		http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: 64 << 10},
	); err != nil {
		return fmt.Errorf("writing SETTINGS: %w", err)
	}
	if err := c.fr.WriteWindowUpdate(0, connRecvWindow-65535); err != nil {
		return fmt.Errorf("writing WINDOW_UPDATE: %w", err)
	}
	// The first PING measures the round trip at once; its ACK is read by
	// the reader once the connection runs.
	c.pingData = randomPingData()
	if err := c.fr.WritePing(false, c.pingData); err != nil {
		return fmt.Errorf("writing PING: %w", err)
	}
	c.pingOut, c.pingSent = true, time.Now()
	if err := c.bw.Flush(); err != nil {
		return fmt.Errorf("writing preface: %w", err)
	}
	f, err := c.fr.ReadFrame()
	if err != nil {
		return fmt.Errorf("reading server SETTINGS: %w", err)
	}
	sf, ok := f.(*http2.SettingsFrame)
	if !ok || sf.IsAck() {
		return fmt.Errorf("expected SETTINGS from server, got %v", f.Header())
	}
	c.mu.Lock()
	err = c.applySettingsLocked(sf)
	c.mu.Unlock()
	if err != nil {
		return err
	}
	if err := c.fr.WriteSettingsAck(); err != nil {
		return fmt.Errorf("writing SETTINGS ACK: %w", err)
	}
	if err := c.bw.Flush(); err != nil {
		return fmt.Errorf("writing SETTINGS ACK: %w", err)
	}
	if !stop() {
		return ctx.Err()
	}
	return c.nc.SetDeadline(time.Time{})
}

// start launches the reader and writer; the caller accounts for them in
// d.wg under d.mu.
func (c *h2Conn) start() {
	c.d.wg.Add(2)
	go c.readLoop()
	go c.writeLoop()
}

func (c *h2Conn) signal() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

func (c *h2Conn) broadcastLocked() {
	close(c.freeCh)
	c.freeCh = make(chan struct{})
}

// releaseLocked gives back the stream slot of a request that has finished
// or been abandoned.
func (c *h2Conn) releaseLocked() {
	c.active--
	c.inflight.Add(-1)
	if c.waiting > 0 {
		c.broadcastLocked()
	}
	if c.draining && c.active == 0 {
		c.signal() // the writer closes the drained connection
	}
}

// finishLocked completes an open or queued request with err. The caller
// signals r.done after unlocking.
func (c *h2Conn) finishLocked(r *request, err error) {
	if r.state == stSent {
		delete(c.streams, r.id)
	}
	r.state, r.err = stDone, err
	c.releaseLocked()
}

// roundTrip runs one request on c: it waits for a free stream, queues the
// request for the writer and waits for the reader to complete it.
func (c *h2Conn) roundTrip(ctx context.Context, r *request) ([]byte, error) {
	c.mu.Lock()
	for {
		if c.dead {
			err := c.err
			c.mu.Unlock()
			return nil, err
		}
		if c.draining {
			c.mu.Unlock()
			return nil, errDraining
		}
		if c.active < c.maxStreams {
			break
		}
		c.waiting++
		ch := c.freeCh
		c.mu.Unlock()
		var err error
		select {
		case <-ch:
		case <-ctx.Done():
			err = ctxErr(ctx, "waiting for a free stream")
		case <-r.timer.C:
			err = fmt.Errorf("waiting for a free stream: %w", ErrTimeout)
		}
		c.mu.Lock()
		c.waiting--
		if err != nil {
			c.mu.Unlock()
			return nil, err
		}
	}
	r.state, r.resp, r.err, r.gotHeaders, r.recvd = stQueued, nil, nil, false, 0
	select {
	case c.reqCh <- r:
	default:
		r.state = stIdle
		c.mu.Unlock()
		return nil, fmt.Errorf("%w: request queue full", ErrConnClosed)
	}
	c.active++
	c.inflight.Add(1)
	c.mu.Unlock()

	select {
	case <-r.done:
		return r.resp, r.err
	case <-ctx.Done():
		return c.abandon(r, ctxErr(ctx, "waiting for response"), errors.Is(ctx.Err(), context.DeadlineExceeded))
	case <-r.timer.C:
		return c.abandon(r, fmt.Errorf("waiting for response: %w", ErrTimeout), true)
	}
}

// abandon gives up on r after its caller's deadline: a queued request is
// dropped by the writer, an open stream is reset with CANCEL. A stream that
// timed out makes the connection suspect: the writer checks it with a PING.
func (c *h2Conn) abandon(r *request, err error, timedOut bool) ([]byte, error) {
	c.mu.Lock()
	switch r.state {
	case stDone: // completed concurrently; the signal is on its way
		c.mu.Unlock()
		<-r.done
		return r.resp, r.err
	}
	c.abandonLocked(r, timedOut)
	c.mu.Unlock()
	return nil, err
}

// abandonLocked gives up on r, queued or open, with c.mu held: the writer
// drops a queued request, an open stream is reset with CANCEL, and a stream
// that timed out has the connection checked with a PING.
func (c *h2Conn) abandonLocked(r *request, timedOut bool) {
	if r.state == stSent {
		delete(c.streams, r.id)
		c.ctl.rst = append(c.ctl.rst, streamRST{r.id, http2.ErrCodeCancel})
		c.ctl.ping = c.ctl.ping || timedOut
		c.signal()
	}
	r.state = stAbandoned
	r.abandoned = true
	c.releaseLocked()
}

// shutdown closes the connection and fails every request on it with err.
// It is idempotent.
func (c *h2Conn) shutdown(err error) {
	c.mu.Lock()
	if c.dead {
		c.mu.Unlock()
		return
	}
	c.dead, c.err = true, err
	c.closing.Store(true)
	victims := make([]*request, 0, len(c.streams))
	for _, r := range c.streams {
		victims = append(victims, r)
	}
	for _, r := range victims {
		c.finishLocked(r, err)
	}
	if c.waiting > 0 {
		c.broadcastLocked()
	}
	c.mu.Unlock()
	close(c.quit)
	c.nc.Close()
	for _, r := range victims {
		c.d.complete(r)
	}
	c.drainQueue()
	c.d.removeConn(c)
}

// drainQueue fails requests left on the queue of a dead connection.
func (c *h2Conn) drainQueue() {
	for {
		select {
		case r := <-c.reqCh:
			c.failQueued(r)
		default:
			return
		}
	}
}

// failQueued fails a request the writer never sent, unless it was abandoned.
func (c *h2Conn) failQueued(r *request) {
	c.mu.Lock()
	if r.state != stQueued {
		c.mu.Unlock()
		return
	}
	err := c.err
	if err == nil {
		err = errDraining
	}
	c.finishLocked(r, err)
	c.mu.Unlock()
	c.d.complete(r)
}

// writeLoop is the connection's only writer; see the package documentation.
func (c *h2Conn) writeLoop() {
	defer c.d.wg.Done()
	keepalive := time.NewTimer(c.d.pingPoll()) // the handshake's PING is out
	defer keepalive.Stop()
	for {
		select {
		case r := <-c.reqCh:
			c.wmu.Lock()
			c.batch = append(c.batch, r)
		case <-c.wake:
			c.wmu.Lock()
		case <-keepalive.C:
			c.wmu.Lock()
			if err := c.onKeepalive(keepalive); err != nil {
				c.wmu.Unlock()
				c.shutdown(err)
				c.writerExit()
				return
			}
		case <-c.quit:
			c.writerExit()
			return
		}
	more:
		for {
			select {
			case r := <-c.reqCh:
				c.batch = append(c.batch, r)
			default:
				break more
			}
		}
		if err := c.writeBatch(); err != nil {
			c.wmu.Unlock()
			c.shutdown(err)
			c.writerExit()
			return
		}
		if c.armPing {
			c.armPing = false
			keepalive.Reset(c.d.pingPoll())
		}
		c.wmu.Unlock()
	}
}

// onKeepalive runs when the writer's timer fires: it gives up the
// connection if the outstanding PING is late, asks for a PING if nothing
// has been read for the ping interval, and re-arms the timer otherwise.
// The timer stays stopped while keepalive is off and no PING is out; a
// PING after a stream timeout re-arms it.
func (c *h2Conn) onKeepalive(t *time.Timer) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := time.Now()
	if c.pingOut {
		if left := c.pingSent.Add(c.d.pingWait).Sub(now); left > 0 {
			t.Reset(min(left, c.d.pingPoll()))
			return nil
		}
		return fmt.Errorf("%w: no PING ACK from %s within %v", ErrConnClosed, c.d.dialAddr, c.d.pingWait)
	}
	if c.d.pingEvery <= 0 {
		return nil
	}
	idle := now.Sub(c.born) - time.Duration(c.lastRead.Load())
	if idle < c.d.pingEvery {
		t.Reset(c.d.pingEvery - idle)
		return nil
	}
	c.ctl.ping = true // writeBatch sends it and re-arms the timer
	return nil
}

// pingPoll is how often the writer looks at an outstanding PING: at its
// deadline, or sooner if the ping interval is shorter, so that the idle
// interval runs from the ACK and not from the deadline.
func (d *DoH) pingPoll() time.Duration {
	if d.pingEvery > 0 {
		return min(d.pingWait, d.pingEvery)
	}
	return d.pingWait
}

// randomPingData returns an unpredictable PING payload, so that an ACK
// cannot be forged by someone who did not see the PING.
func randomPingData() (p [8]byte) {
	binary.LittleEndian.PutUint64(p[:], rand.Uint64())
	return p
}

// writerExit fails the requests the connection will not send: in the
// batch, blocked on the send window, or still queued.
func (c *h2Conn) writerExit() {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	for _, r := range c.batch {
		c.failQueued(r)
	}
	for _, r := range c.blocked {
		c.failQueued(r)
	}
	c.batch, c.blocked = nil, nil
	c.drainQueue()
}

// writeBatch assigns stream IDs to the queued requests the send window
// allows, and writes their HEADERS and DATA plus pending control frames with
// a single flush.
func (c *h2Conn) writeBatch() error {
	c.blocked = append(c.blocked, c.batch...)
	clear(c.batch)
	c.batch = c.batch[:0]
	c.sends, c.arena = c.sends[:0], c.arena[:0]
	var failed []*request

	c.mu.Lock()
	if c.dead {
		c.mu.Unlock()
		return nil // shutdown is under way; quit is closed
	}
	c.ctl, c.ctlSpare = c.ctlSpare, c.ctl
	ctl := &c.ctlSpare
	if ctl.ping {
		if c.pingOut {
			ctl.ping = false // the one outstanding is enough
		} else {
			c.pingData = randomPingData()
			c.pingOut, c.pingSent = true, time.Now()
			c.armPing = true
		}
	}
	if c.tableUpdate >= 0 {
		c.pendingTable, c.tableUpdate = c.tableUpdate, -1
		c.hdrLiteral = true
	}
	maxFrame := c.peerMaxFrame
	n := 0
	for _, r := range c.blocked {
		if r.state != stQueued { // abandoned while queued
			n++
			continue
		}
		if c.draining {
			c.finishLocked(r, errDraining)
			failed = append(failed, r)
			n++
			continue
		}
		if int64(len(r.query)) > c.peerInitWindow {
			c.finishLocked(r, fmt.Errorf("%w: %d bytes exceed the server's stream window of %d",
				ErrBadQuery, len(r.query), c.peerInitWindow))
			failed = append(failed, r)
			n++
			continue
		}
		if int64(len(r.query)) > c.sendWindow {
			break // wait, in order, for the server's WINDOW_UPDATE
		}
		r.id, r.state = c.nextID, stSent
		c.streams[r.id] = r
		c.nextID += 2
		if c.nextID > c.d.maxStreamID {
			c.draining = true // stream IDs exhausted: the next request dials anew
			c.closing.Store(true)
		}
		c.sendWindow -= int64(len(r.query))
		c.sends = append(c.sends, sendItem{id: r.id, off: len(c.arena), n: len(r.query)})
		c.arena = append(c.arena, r.query...)
		n++
	}
	rest := copy(c.blocked, c.blocked[n:])
	clear(c.blocked[rest:])
	c.blocked = c.blocked[:rest]
	drained := c.draining && c.active == 0
	c.mu.Unlock()

	for _, r := range failed {
		c.d.complete(r)
	}
	if err := c.writeFrames(ctl, maxFrame); err != nil {
		return fmt.Errorf("%w: writing to %s: %w", ErrConnClosed, c.d.dialAddr, err)
	}
	ctl.reset()
	if drained {
		return fmt.Errorf("%w: drained", ErrConnClosed)
	}
	return nil
}

func (c *h2Conn) writeFrames(ctl *ctlFrames, maxFrame int) error {
	if ctl.empty() && len(c.sends) == 0 {
		return nil
	}
	// The deadline covers every write of this batch, including the ones
	// bufio makes by itself when a batch outgrows its buffer.
	if err := c.nc.SetWriteDeadline(time.Now().Add(c.d.dialTime)); err != nil {
		return err
	}
	fr := c.fr
	for range ctl.settingsAck {
		if err := fr.WriteSettingsAck(); err != nil {
			return err
		}
	}
	if ctl.ping {
		if err := fr.WritePing(false, c.pingData); err != nil {
			return err
		}
	}
	for _, p := range ctl.pings {
		if err := fr.WritePing(true, p); err != nil {
			return err
		}
	}
	if ctl.connWU > 0 {
		if err := fr.WriteWindowUpdate(0, ctl.connWU); err != nil {
			return err
		}
	}
	for _, w := range ctl.streamWU {
		if err := fr.WriteWindowUpdate(w.id, w.incr); err != nil {
			return err
		}
	}
	for _, r := range ctl.rst {
		if err := fr.WriteRSTStream(r.id, r.code); err != nil {
			return err
		}
	}
	for _, s := range c.sends {
		hb := c.hdrBuf[:0]
		if c.pendingTable >= 0 {
			hb = appendHpackInt(hb, 0x20, 5, uint64(c.pendingTable))
			c.pendingTable = -1
		}
		switch {
		case c.hdrLiteral:
			hb = append(hb, c.d.hdr.literal...)
		case !c.hdrIndexed:
			hb = append(hb, c.d.hdr.first...)
			c.hdrIndexed = true
		default:
			hb = append(hb, c.d.hdr.next...)
		}
		hb = appendContentLength(hb, s.n)
		c.hdrBuf = hb
		if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: s.id, BlockFragment: hb, EndHeaders: true}); err != nil {
			return err
		}
		data := c.arena[s.off : s.off+s.n]
		for len(data) > maxFrame {
			if err := fr.WriteData(s.id, false, data[:maxFrame]); err != nil {
				return err
			}
			data = data[maxFrame:]
		}
		if err := fr.WriteData(s.id, true, data); err != nil {
			return err
		}
	}
	return c.bw.Flush()
}

// readLoop is the connection's only reader.
func (c *h2Conn) readLoop() {
	defer c.d.wg.Done()
	for {
		f, err := c.fr.ReadFrame()
		if err == nil {
			c.lastRead.Store(int64(time.Since(c.born)))
			err = c.handleFrame(f)
		}
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				c.failStream(se.StreamID, fmt.Errorf("%w: %v", ErrBadResponse, se), se.Code)
				continue
			}
			c.mu.Lock()
			dead := c.dead
			c.mu.Unlock()
			if !dead {
				err = fmt.Errorf("%w: reading from %s: %w", ErrConnClosed, c.d.dialAddr, err)
			}
			c.shutdown(err)
			return
		}
	}
}

// failStream fails the open stream id, resetting it with code unless the
// server already ended it (code 0 with end).
func (c *h2Conn) failStream(id uint32, err error, code http2.ErrCode) {
	c.mu.Lock()
	r := c.streams[id]
	if r == nil {
		c.mu.Unlock()
		return
	}
	c.finishLocked(r, err)
	if code != http2.ErrCodeNo {
		c.ctl.rst = append(c.ctl.rst, streamRST{id, code})
		c.signal()
	}
	c.mu.Unlock()
	c.d.complete(r)
}

func (c *h2Conn) handleFrame(f http2.Frame) error {
	switch f := f.(type) {
	case *http2.DataFrame:
		return c.onData(f)
	case *http2.HeadersFrame:
		c.hStatus, c.hCTOK, c.hCLen = 0, false, -1
		if _, err := c.dec.Write(f.HeaderBlockFragment()); err != nil {
			return http2.ConnectionError(http2.ErrCodeCompression)
		}
		if f.HeadersEnded() {
			return c.endHeaders(f.StreamID, f.StreamEnded())
		}
		c.hEndStream = f.StreamEnded()
	case *http2.ContinuationFrame:
		if _, err := c.dec.Write(f.HeaderBlockFragment()); err != nil {
			return http2.ConnectionError(http2.ErrCodeCompression)
		}
		if f.HeadersEnded() {
			return c.endHeaders(f.StreamID, c.hEndStream)
		}
	case *http2.SettingsFrame:
		if f.IsAck() {
			return nil
		}
		c.mu.Lock()
		err := c.applySettingsLocked(f)
		c.ctl.settingsAck++
		c.mu.Unlock()
		c.signal()
		return err
	case *http2.PingFrame:
		if f.IsAck() {
			c.mu.Lock()
			ours := c.pingOut && f.Data == c.pingData
			var rtt time.Duration
			if ours {
				c.pingOut = false
				rtt = time.Since(c.pingSent)
			}
			c.mu.Unlock()
			if ours {
				c.d.recordRTT(rtt)
			}
			return nil
		}
		c.mu.Lock()
		if len(c.ctl.pings) < maxQueuedPings {
			c.ctl.pings = append(c.ctl.pings, f.Data)
		}
		c.mu.Unlock()
		c.signal()
	case *http2.GoAwayFrame:
		c.onGoAway(f)
	case *http2.RSTStreamFrame:
		err := fmt.Errorf("%w: %v", ErrStreamReset, f.ErrCode)
		if f.ErrCode == http2.ErrCodeRefusedStream {
			err = ErrRefused
		}
		c.failStream(f.StreamID, err, http2.ErrCodeNo)
	case *http2.WindowUpdateFrame:
		if f.StreamID != 0 {
			return nil // we never send DATA after a stream's first flush
		}
		c.mu.Lock()
		c.sendWindow += int64(f.Increment)
		overflow := c.sendWindow > 1<<31-1
		c.mu.Unlock()
		if overflow {
			return http2.ConnectionError(http2.ErrCodeFlowControl)
		}
		c.signal()
	case *http2.PushPromiseFrame:
		return http2.ConnectionError(http2.ErrCodeProtocol) // push is disabled
	}
	return nil
}

// badContentLength is hCLen for a content-length that is not one number.
const badContentLength = -2

// onHeaderField collects the response header fields we care about.
func (c *h2Conn) onHeaderField(hf hpack.HeaderField) {
	switch hf.Name {
	case ":status":
		c.hStatus, _ = strconv.Atoi(hf.Value)
	case "content-type":
		mt, _, _ := strings.Cut(hf.Value, ";")
		c.hCTOK = strings.EqualFold(strings.TrimSpace(mt), "application/dns-message")
	case "content-length":
		// 1*DIGIT (RFC 9110 8.6); anything else, or a second value that
		// differs, makes the response malformed (badContentLength).
		n, err := strconv.ParseUint(hf.Value, 10, 64)
		if errors.Is(err, strconv.ErrRange) {
			n, err = math.MaxInt32, nil // too large, whatever it is
		}
		v := int(min(n, math.MaxInt32))
		switch {
		case err != nil:
			c.hCLen = badContentLength
		case c.hCLen == -1:
			c.hCLen = v
		case c.hCLen != v:
			c.hCLen = badContentLength
		}
	}
}

// endHeaders acts on a complete header block of stream id.
func (c *h2Conn) endHeaders(id uint32, endStream bool) error {
	if err := c.dec.Close(); err != nil {
		return http2.ConnectionError(http2.ErrCodeCompression)
	}
	c.mu.Lock()
	r := c.streams[id]
	if r == nil {
		c.mu.Unlock()
		return nil
	}
	var err error
	code := http2.ErrCodeCancel // reset with this if err ends the stream early
	switch {
	case r.gotHeaders: // trailers
	case c.hStatus >= 100 && c.hStatus < 200 && !endStream: // informational
		c.mu.Unlock()
		return nil
	case c.hStatus != 200:
		err = fmt.Errorf("%w: HTTP status %d", ErrBadResponse, c.hStatus)
	case !c.hCTOK:
		err = fmt.Errorf("%w: content-type is not application/dns-message", ErrBadResponse)
	case c.hCLen == badContentLength:
		err = fmt.Errorf("%w: content-length is not one number", ErrBadResponse)
		code = http2.ErrCodeProtocol // malformed (RFC 9113 8.1.1)
	case c.hCLen > maxResponseSize:
		err = fmt.Errorf("%w: content-length %d exceeds %d", ErrBadResponse, c.hCLen, maxResponseSize)
	default:
		r.gotHeaders, r.clen = true, c.hCLen
		if c.hCLen > 0 {
			r.resp = make([]byte, 0, c.hCLen)
		}
	}
	if err == nil && !endStream {
		c.mu.Unlock()
		return nil
	}
	if err == nil {
		err = bodyErr(r)
	}
	c.finishLocked(r, err)
	if err != nil && !endStream {
		c.ctl.rst = append(c.ctl.rst, streamRST{id, code})
		c.signal()
	}
	c.mu.Unlock()
	c.d.complete(r)
	return nil
}

func (c *h2Conn) onData(f *http2.DataFrame) error {
	var wakeWriter bool
	c.mu.Lock()
	// Connection flow control counts every DATA byte, padding included,
	// whether or not its stream is still wanted.
	n := f.Header().Length
	c.connRecvd += n
	if c.connRecvd >= connRecvWindow/2 {
		c.ctl.connWU += c.connRecvd
		c.connRecvd = 0
		wakeWriter = true
	}
	r := c.streams[f.StreamID]
	if r == nil {
		c.mu.Unlock()
		if wakeWriter {
			c.signal()
		}
		return nil
	}
	var err error
	code := http2.ErrCodeCancel // reset with this if err ends the stream early
	data := f.Data()
	switch {
	case !r.gotHeaders:
		err = fmt.Errorf("%w: DATA before response headers", ErrBadResponse)
		code = http2.ErrCodeProtocol // malformed (RFC 9113 8.1.1)
	case len(r.resp)+len(data) > maxResponseSize:
		err = fmt.Errorf("%w: body exceeds %d bytes", ErrBadResponse, maxResponseSize)
	case r.clen >= 0 && len(r.resp)+len(data) > r.clen:
		err = fmt.Errorf("%w: body exceeds its content-length of %d", ErrBadResponse, r.clen)
		code = http2.ErrCodeProtocol
	default:
		if r.resp == nil {
			r.resp = make([]byte, 0, max(len(data), 512))
		}
		r.resp = append(r.resp, data...)
	}
	end := f.StreamEnded()
	if err == nil && end {
		err = bodyErr(r)
	}
	if err == nil && !end {
		r.recvd += n
		if r.recvd >= streamRecvWindow/2 {
			c.ctl.streamWU = append(c.ctl.streamWU, streamWU{r.id, r.recvd})
			r.recvd = 0
			wakeWriter = true
		}
		c.mu.Unlock()
		if wakeWriter {
			c.signal()
		}
		return nil
	}
	c.finishLocked(r, err)
	if err != nil && !end {
		c.ctl.rst = append(c.ctl.rst, streamRST{r.id, code})
		wakeWriter = true
	}
	c.mu.Unlock()
	if wakeWriter {
		c.signal()
	}
	c.d.complete(r)
	return nil
}

// bodyErr checks a response body at the end of its stream: not empty, and
// as long as its content-length said (RFC 9113 8.1.1: else malformed).
func bodyErr(r *request) error {
	switch {
	case len(r.resp) == 0:
		return fmt.Errorf("%w: empty body", ErrBadResponse)
	case r.clen >= 0 && len(r.resp) != r.clen:
		return fmt.Errorf("%w: body of %d bytes, content-length %d", ErrBadResponse, len(r.resp), r.clen)
	}
	return nil
}

// onGoAway marks the connection draining and fails the streams the server
// will not process; their callers retry them on a new connection.
func (c *h2Conn) onGoAway(f *http2.GoAwayFrame) {
	err := fmt.Errorf("%w (last stream %d, %v)", ErrGoAway, f.LastStreamID, f.ErrCode)
	var victims []*request
	c.mu.Lock()
	c.draining = true
	c.closing.Store(true)
	for id, r := range c.streams {
		if id > f.LastStreamID {
			victims = append(victims, r)
		}
	}
	for _, r := range victims {
		c.finishLocked(r, err)
	}
	if c.waiting > 0 {
		c.broadcastLocked()
	}
	c.mu.Unlock()
	c.signal() // fail queued requests; close if nothing is left
	for _, r := range victims {
		c.d.complete(r)
	}
}

// applySettingsLocked applies the server's SETTINGS.
func (c *h2Conn) applySettingsLocked(f *http2.SettingsFrame) error {
	oldMax := c.maxStreams
	err := f.ForeachSetting(func(s http2.Setting) error {
		if err := s.Valid(); err != nil {
			return err
		}
		switch s.ID {
		case http2.SettingMaxConcurrentStreams:
			c.maxStreams = int(min(s.Val, maxStreamsPerConn))
		case http2.SettingInitialWindowSize:
			c.peerInitWindow = int64(s.Val)
		case http2.SettingMaxFrameSize:
			c.peerMaxFrame = int(s.Val)
		case http2.SettingHeaderTableSize:
			if s.Val < c.d.hdr.tableSize {
				c.tableUpdate = int64(s.Val)
			}
		}
		return nil
	})
	if c.maxStreams > oldMax && c.waiting > 0 {
		c.broadcastLocked()
	}
	return err
}

// headerBlocks are the HPACK request header blocks of one target, without
// content-length, which is appended per request.
type headerBlocks struct {
	first     []byte // inserts :authority, :path, content-type, accept into the dynamic table
	next      []byte // refers to those four entries by index
	literal   []byte // uses no dynamic table
	tableSize uint32 // dynamic table size that first needs
}

const dnsMessage = "application/dns-message"

// HPACK static table indices (RFC 7541, appendix A).
const (
	hpackAuthority     = 1
	hpackMethodPOST    = 3
	hpackPathSlash     = 4
	hpackSchemeHTTPS   = 7
	hpackAccept        = 19
	hpackContentLength = 28
	hpackContentType   = 31
)

func newHeaderBlocks(authority, path string) (headerBlocks, error) {
	var h headerBlocks
	fields := []struct {
		idx   uint64
		name  string
		value string
	}{
		{hpackAuthority, ":authority", authority},
		{hpackPathSlash, ":path", path},
		{hpackContentType, "content-type", dnsMessage},
		{hpackAccept, "accept", dnsMessage},
	}
	pseudo := []byte{0x80 | hpackMethodPOST, 0x80 | hpackSchemeHTTPS}
	h.first = append(h.first, pseudo...)
	h.literal = append(h.literal, pseudo...)
	h.next = append(h.next, pseudo...)
	for i, f := range fields {
		h.first = appendHpackString(appendHpackInt(h.first, 0x40, 6, f.idx), f.value)     // incremental indexing
		h.literal = appendHpackString(appendHpackInt(h.literal, 0x00, 4, f.idx), f.value) // without indexing
		h.tableSize += uint32(len(f.name) + len(f.value) + 32)
		// After the four insertions the last one is dynamic index 62.
		h.next = appendHpackInt(h.next, 0x80, 7, uint64(62+len(fields)-1-i))
	}
	if len(h.literal)+16 > maxHeaderBlock {
		return headerBlocks{}, fmt.Errorf("URL too long for one HEADERS frame (%d bytes)", len(h.literal))
	}
	if h.tableSize > 4096 {
		h.first = h.literal // would not fit the default table: never index
		h.next = h.literal
	}
	return h, nil
}

// appendHpackInt appends v as an HPACK integer with an n-bit prefix, the
// remaining high bits of the first byte taken from first (RFC 7541, 5.1).
func appendHpackInt(dst []byte, first byte, n uint, v uint64) []byte {
	limit := uint64(1)<<n - 1
	if v < limit {
		return append(dst, first|byte(v))
	}
	dst = append(dst, first|byte(limit))
	v -= limit
	for v >= 128 {
		dst = append(dst, byte(v&0x7f)|0x80)
		v >>= 7
	}
	return append(dst, byte(v))
}

// appendHpackString appends s as a raw (not Huffman-coded) HPACK string.
func appendHpackString(dst []byte, s string) []byte {
	return append(appendHpackInt(dst, 0, 7, uint64(len(s))), s...)
}

// appendContentLength appends content-length: n as a literal without
// indexing, so that the dynamic table keeps only the constant fields.
func appendContentLength(dst []byte, n int) []byte {
	var digits [20]byte
	d := strconv.AppendInt(digits[:0], int64(n), 10)
	dst = appendHpackInt(dst, 0x00, 4, hpackContentLength)
	dst = appendHpackInt(dst, 0, 7, uint64(len(d)))
	return append(dst, d...)
}
