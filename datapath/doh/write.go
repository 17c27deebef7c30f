package doh

import (
	"errors"
	"os"
	"strconv"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"golang.org/x/sys/unix"
)

// Everything here runs with conn.mu held, except flush, kick and writeLoop,
// which take it themselves.

// outBuf collects encoded frames; the Framer and the HPACK encoder write
// into it. With full set, it raises that flag once it holds limit octets.
type outBuf struct {
	b     []byte
	limit int
	full  *atomic.Bool
}

func (o *outBuf) Write(p []byte) (int, error) {
	o.b = append(o.b, p...)
	if o.full != nil && len(o.b) >= o.limit {
		o.full.Store(true)
	}
	return len(p), nil
}

// maxSpare is the largest write buffer kept for reuse.
const maxSpare = 256 << 10

// respond writes the answer to a query: 200 with the DNS message, 400 when
// the pipeline gave none, 500 when what it gave is not a DNS message.
func (c *conn) respond(st *stream, resp []byte) {
	switch {
	case st.ended || c.dead:
		return // reset by the client while it was being resolved
	case resp == nil:
		c.writeError(st, 400, "query not answered")
		return
	case len(resp) < headerLen:
		c.writeError(st, 500, "malformed response")
		return
	}
	c.s.stats.ok.Add(1)
	c.writeHeaders(st, 200, mediaType, len(resp),
		hpack.HeaderField{Name: "cache-control", Value: "max-age=" + strconv.FormatUint(uint64(maxAge(resp)), 10)})
	c.writeBody(st, resp)
	c.checkPending()
}

// writeError answers with an HTTP error status and a line of text, and
// counts it.
func (c *conn) writeError(st *stream, code int, why string) {
	if st.ended || c.dead {
		return
	}
	c.s.stats.count(code)
	body := why + "\n"
	var extra []hpack.HeaderField
	if code == 405 {
		extra = append(extra, hpack.HeaderField{Name: "allow", Value: "GET, POST"})
	}
	extra = append(extra, hpack.HeaderField{Name: "x-content-type-options", Value: "nosniff"})
	c.writeHeaders(st, code, "text/plain; charset=utf-8", len(body), extra...)
	c.writeBody(st, []byte(body))
}

// writeHeaders writes a response's HEADERS frame. The block of a DoH
// response is far below the smallest SETTINGS_MAX_FRAME_SIZE, so it never
// needs CONTINUATION.
func (c *conn) writeHeaders(st *stream, status int, ctype string, length int, extra ...hpack.HeaderField) {
	c.hbuf.b = c.hbuf.b[:0]
	c.enc.WriteField(hpack.HeaderField{Name: ":status", Value: statusText(status)})
	c.enc.WriteField(hpack.HeaderField{Name: "content-type", Value: ctype})
	c.enc.WriteField(hpack.HeaderField{Name: "content-length", Value: strconv.Itoa(length)})
	for _, f := range extra {
		c.enc.WriteField(f)
	}
	c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: st.id, BlockFragment: c.hbuf.b, EndHeaders: true, EndStream: length == 0})
}

func statusText(code int) string {
	if code == 200 {
		return "200"
	}
	return strconv.Itoa(code)
}

// writeBody sends as much of a response body as the flow-control windows
// allow and holds the rest back until the client opens them.
func (c *conn) writeBody(st *stream, body []byte) {
	n := c.sendable(st, len(body))
	c.writeData(st, body[:n], n == len(body))
	if n < len(body) {
		st.pend = append(st.pend[:0], body[n:]...)
		c.pending += len(st.pend)
		c.blocked = append(c.blocked, st)
		c.checkPending()
	}
}

// sendable is how many of n octets the windows let st send now.
func (c *conn) sendable(st *stream, n int) int {
	return int(max(0, min(int64(n), c.sendWindow, st.window)))
}

// writeData writes DATA frames of at most the client's frame size.
func (c *conn) writeData(st *stream, b []byte, end bool) {
	c.sendWindow -= int64(len(b))
	st.window -= int64(len(b))
	for len(b) > c.peerFrame {
		c.fr.WriteData(st.id, false, b[:c.peerFrame])
		b = b[c.peerFrame:]
	}
	if len(b) > 0 || end {
		c.fr.WriteData(st.id, end, b)
	}
	if end {
		c.marks = append(c.marks, len(c.out.b))
		c.endStream(st)
	}
}

// drainBlocked sends what flow control held back, in order, now that a
// window grew.
func (c *conn) drainBlocked() {
	kept := c.blocked[:0]
	for _, st := range c.blocked {
		if st.ended {
			continue
		}
		n := c.sendable(st, len(st.pend))
		if n > 0 {
			c.pending -= n
			b := st.pend[:n]
			st.pend = st.pend[n:] // before writeData: at the end, endStream drops st.pend
			c.writeData(st, b, len(st.pend) == 0)
		}
		if !st.ended {
			kept = append(kept, st)
		}
	}
	clear(c.blocked[len(kept):])
	c.blocked = kept
}

// endStream marks st finished on our side (END_STREAM or RST_STREAM sent,
// or RST_STREAM received) and retires it once its query has ended too.
func (c *conn) endStream(st *stream) {
	if !st.ended {
		st.ended = true
		c.pending -= len(st.pend)
		st.pend = nil
	}
	c.retire(st)
}

// retire frees st's concurrency slot once nothing more will be written on
// it and its query has ended: a stream reset while its query is in flight
// keeps the slot, so resets cannot raise the work in flight.
func (c *conn) retire(st *stream) {
	if st.ended && !st.resolving && st.admitted {
		st.admitted = false
		delete(c.open, st.id)
	}
}

// answered is the pipeline's callback for a query resolved upstream. It
// runs on the goroutine that finished the resolution and must not block:
// it encodes the answer and leaves the writing to the writer goroutine.
func (st *stream) answered(resp []byte) {
	c := st.c
	c.mu.Lock()
	st.resolving = false
	c.respond(st, resp)
	c.retire(st)
	wake := c.idleWriter()
	c.mu.Unlock()
	if wake {
		c.wakeWriter()
	}
}

// checkPending cuts off a client that lets more than MaxPending octets pile
// up: it does not read its answers, or does not open its windows.
func (c *conn) checkPending() error {
	if c.dead || len(c.out.b)+c.pending <= c.s.cfg.MaxPending {
		return nil
	}
	c.s.stats.slowClients.Add(1)
	c.dead = true
	c.hangUp() // wakes the reader and any write in progress
	return errClosed
}

// writeGoAway writes GOAWAY with the last stream admitted.
func (c *conn) writeGoAway(code http2.ErrCode, reason string) {
	if c.goingAway || c.dead {
		return
	}
	c.goingAway = true
	var debug []byte
	if code != http2.ErrCodeNo {
		debug = []byte(reason)
	}
	c.fr.WriteGoAway(c.lastID, code, debug)
}

// goAway writes GOAWAY (for the reader).
func (c *conn) goAway(code http2.ErrCode, reason string) {
	c.mu.Lock()
	c.writeGoAway(code, reason)
	c.mu.Unlock()
}

// kick asks the writer goroutine to write out, unless a write is under way
// (that one writes what is new before it stops).
func (c *conn) kick() {
	c.mu.Lock()
	wake := c.idleWriter()
	c.mu.Unlock()
	if wake {
		c.wakeWriter()
	}
}

// idleWriter reports whether there is something to write and nobody
// writing it.
func (c *conn) idleWriter() bool { return !c.writing && len(c.out.b) > 0 }

func (c *conn) wakeWriter() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// writeLoop is the writer goroutine: it writes what callbacks encoded.
func (c *conn) writeLoop() {
	defer c.s.wg.Done()
	for {
		select {
		case <-c.wake:
			c.flush()
		case <-c.quit:
			return
		}
	}
}

// flush writes out everything encoded so far, unless another goroutine is
// writing (it takes what is new before it stops), and reports whether it
// wrote. The reader calls it before it waits for the network, the writer
// goroutine when kicked. A write that takes longer than WriteTimeout cuts
// the client off.
func (c *conn) flush() bool {
	c.mu.Lock()
	if c.writing || len(c.out.b) == 0 {
		c.mu.Unlock()
		return false
	}
	c.writing = true
	for len(c.out.b) > 0 && !c.dead {
		b, marks := c.out.b, c.marks
		c.out.b, c.spare = c.spare[:0], nil
		c.outFull.Store(false)
		c.marks, c.spareMarks = c.spareMarks[:0], nil
		c.mu.Unlock()
		err := c.write(b, marks)
		c.mu.Lock()
		if cap(b) <= maxSpare {
			c.spare = b[:0]
		}
		c.spareMarks = marks[:0]
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				c.s.stats.slowClients.Add(1)
			}
			c.dead = true
			c.hangUp()
		}
	}
	c.writing = false
	c.mu.Unlock()
	return true
}

// hangUp ends the connection after a failed write, or on a client cut
// off with mu held. The reader may be flushing from inside a read on the
// socket (onIdle runs in sock.read), and Close waits for the reads on a
// socket to end: forever, then, or until mu is free. shutdown(2) instead
// wakes every read and write with EOF or EPIPE, and the reader closes the
// socket on its way out.
func (c *conn) hangUp() {
	if c.sock == nil {
		c.raw.Close()
		return
	}
	c.sock.rc.Control(func(fd uintptr) { unix.Shutdown(int(fd), unix.SHUT_RDWR) })
}

// write sends b in one write, in one TLS record for each answer (marks are
// where answers end) and one for what follows the last. Some clients
// (dnsperf 2.10) take one answer from each record they read and lose the
// rest; a record per answer costs 22 octets and no extra system call.
func (c *conn) write(b []byte, marks []int) error {
	c.nc.SetWriteDeadline(time.Now().Add(c.s.cfg.WriteTimeout))
	if c.sock == nil {
		_, err := c.nc.Write(b)
		return err
	}
	c.sock.cork()
	var err error
	start := 0
	for _, m := range append(marks, len(b)) {
		if m > start && err == nil {
			_, err = c.nc.Write(b[start:m])
		}
		start = m
	}
	if uerr := c.sock.uncork(); err == nil {
		err = uerr
	}
	return err
}
