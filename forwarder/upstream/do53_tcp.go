package upstream

// A Do53 TCP (or DoT) connection's reader and writer goroutines, and the
// writing out of queued queries that both of them do.
//
// Queries are framed into the connection's pending buffer by whoever
// submits them (register). Two goroutines write it out: the writer, woken
// by signal, which may wait for the socket; and the reader, which writes
// out, without waiting, what the callbacks of the answers it has
// delivered have queued, once the socket has no more answers to read. In
// a closed loop (a load generator, or a forwarder under load) most
// queries are submitted from those callbacks: they leave together in one
// write from the reader, with no wake-up of the writer on the way, and
// the server reads them together. While the reader delivers, signal
// leaves the writer asleep. Whoever writes sets writing; the other leaves
// the socket alone until it is cleared, so that batches go out whole and
// in order.

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"time"
)

// readTCP is the connection's only reader. Over a rawConn it writes out
// what the answers delivered since the last write have queued when the
// socket has nothing more to read (readIdle), and after maxDeliverUnwritten
// answers at the latest; over TLS it wakes the writer before each read
// that has to wait for the socket.
func (c *dnsConn) readTCP() {
	defer c.u.wg.Done()
	br := bufio.NewReaderSize(c.nc, readBufSize)
	buf := make([]byte, maxResponseSize)
	for {
		switch {
		case c.raw == nil && c.delivered > 0 && !wholeMessage(br):
			c.delivered = 0
			c.delivering.Store(false)
			c.wakeWriter()
		case c.delivered >= maxDeliverUnwritten:
			c.readIdle()
		}
		var l [2]byte
		_, err := io.ReadFull(br, l[:])
		if n := int(binary.BigEndian.Uint16(l[:])); err == nil && br.Buffered() >= n {
			_, err = io.ReadFull(br, buf[:n])
		} else if err == nil {
			// The rest of the message must follow its length now, not
			// when the server pleases: a length that lies would hold
			// the connection and every query on it for good.
			c.nc.SetReadDeadline(time.Now().Add(c.u.timeout))
			_, err = io.ReadFull(br, buf[:n])
			c.nc.SetReadDeadline(time.Time{})
		}
		if err != nil {
			c.shutdown(fmt.Errorf("%w: reading from %s over %s: %w", ErrConnClosed, c.u.dialAddr, c.u.over, err))
			return
		}
		if c.delivered == 0 {
			c.delivering.Store(true)
		}
		c.delivered++
		c.deliver(buf[:binary.BigEndian.Uint16(l[:])])
	}
}

// readIdle writes out, without waiting, what the answers delivered since
// the last time have queued (rawConn.readIdle, on the reader's goroutine:
// the socket has nothing more to read now). A write error is left to the
// writer, which meets it again and ends the connection: the reader must
// not close the socket from inside its read.
func (c *dnsConn) readIdle() {
	if c.delivered == 0 {
		return
	}
	c.delivered = 0
	c.delivering.Store(false)
	if err := c.writeOut(false); err != nil {
		c.wakeWriter()
	}
}

// wholeMessage reports whether br holds a whole length-prefixed message, so
// that reading it needs no system call.
func wholeMessage(br *bufio.Reader) bool {
	n := br.Buffered()
	if n < 2 {
		return false
	}
	l, _ := br.Peek(2)
	return n >= 2+int(binary.BigEndian.Uint16(l))
}

// writeTCP is the connection's writer: woken by signal, it writes out
// everything queued, and closes the connection after idleTimeout without
// queries.
func (c *dnsConn) writeTCP() {
	defer c.u.wg.Done()
	idle := time.NewTimer(c.u.idleTimeout)
	defer idle.Stop()
	for {
		select {
		case <-c.wake:
		case <-idle.C:
			c.mu.Lock()
			left := c.u.idleTimeout - time.Since(c.lastUsed)
			if len(c.waiters) > 0 {
				left = c.u.idleTimeout
			}
			c.mu.Unlock()
			if left <= 0 {
				c.shutdown(errIdle)
				return
			}
			idle.Reset(left)
			continue
		case <-c.quit:
			return
		}
		if err := c.writeOut(true); err != nil {
			c.shutdown(fmt.Errorf("%w: writing to %s over %s: %w", ErrConnClosed, c.u.dialAddr, c.u.over, err))
			return
		}
	}
}

// writeOut writes the queued queries unless the other goroutine is writing
// (it takes what is queued before it stops). wait: the writer, which may
// wait for the socket, under a write deadline. Otherwise (the reader) it
// writes only what the socket takes at once, over a rawConn, and leaves
// the rest to the writer; over TLS it only wakes the writer.
func (c *dnsConn) writeOut(wait bool) error {
	if !wait && c.raw == nil {
		c.wakeWriter()
		return nil
	}
	c.mu.Lock()
	if c.writing {
		c.mu.Unlock()
		return nil
	}
	c.writing = true
	var err error
	for {
		if c.outOff == len(c.out) {
			c.out, c.pending, c.outOff = c.pending, c.out[:0], 0
		}
		if len(c.out) == 0 {
			break
		}
		c.mu.Unlock()
		var n int
		if wait {
			err = c.nc.SetWriteDeadline(time.Now().Add(c.u.dialTime))
			if err == nil {
				n, err = c.nc.Write(c.out[c.outOff:])
			}
		} else {
			n, err = c.raw.writeNow(c.out[c.outOff:])
		}
		c.mu.Lock()
		c.outOff += n
		if err != nil || c.outOff < len(c.out) {
			break // the socket is full (not waiting) or failed
		}
	}
	c.writing = false
	left := len(c.out) > c.outOff || len(c.pending) > 0
	c.mu.Unlock()
	if err == nil && left {
		c.wakeWriter()
	}
	return err
}
