package upstream

// The writer goroutine of an h2Conn (see doh_conn.go): batches of requests
// and control frames, one flush each, and the keepalive PING.

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"time"

	"golang.org/x/net/http2"
)

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
	get := c.d.hdr.get
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
		// A GET sends no DATA: flow control does not apply.
		if !get && int64(len(r.query)) > c.peerInitWindow {
			c.finishLocked(r, fmt.Errorf("%w: %d bytes exceed the server's stream window of %d",
				ErrBadQuery, len(r.query), c.peerInitWindow))
			failed = append(failed, r)
			n++
			continue
		}
		if !get && int64(len(r.query)) > c.sendWindow {
			break // wait, in order, for the server's WINDOW_UPDATE
		}
		r.id, r.state = c.nextID, stSent
		c.streams[r.id] = r
		c.nextID += 2
		if c.nextID > c.d.maxStreamID {
			c.draining = true // stream IDs exhausted: the next request dials anew
			c.closing.Store(true)
		}
		if !get {
			c.sendWindow -= int64(len(r.query))
		}
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
		data := c.arena[s.off : s.off+s.n]
		if c.d.hdr.get {
			hb = c.d.hdr.appendGetPath(hb, data)
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
		if c.d.hdr.get {
			c.hdrBuf = hb
			if err := writeGetHeaders(fr, s.id, hb, maxFrame); err != nil {
				return err
			}
			continue
		}
		hb = appendContentLength(hb, s.n)
		c.hdrBuf = hb
		if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: s.id, BlockFragment: hb, EndHeaders: true}); err != nil {
			return err
		}
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

// writeGetHeaders writes a GET's header block, which ends its stream:
// one HEADERS frame, or, for a query whose URL outgrows the server's
// largest frame, HEADERS and CONTINUATION frames.
func writeGetHeaders(fr *http2.Framer, id uint32, hb []byte, maxFrame int) error {
	first := hb[:min(len(hb), maxFrame)]
	hb = hb[len(first):]
	if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: first, EndStream: true, EndHeaders: len(hb) == 0}); err != nil {
		return err
	}
	for len(hb) > 0 {
		frag := hb[:min(len(hb), maxFrame)]
		hb = hb[len(frag):]
		if err := fr.WriteContinuation(id, len(hb) == 0, frag); err != nil {
			return err
		}
	}
	return nil
}
