package dot

import (
	"errors"
	"os"
	"time"
)

// maxSpare is the largest write buffer kept for reuse.
const maxSpare = 256 << 10

// queue appends an answer, with its length prefix, to what is to be
// written; mu held. A nil answer means the query gets none.
func (c *conn) queue(resp []byte) {
	if c.dead || len(resp) == 0 || len(resp) > 0xffff {
		return
	}
	c.s.stats.answers.Add(1)
	c.out = append(c.out, byte(len(resp)>>8), byte(len(resp)))
	c.out = append(c.out, resp...)
}

// answered is the pipeline's callback for a query resolved upstream. It
// runs on the goroutine that finished the resolution and must not block:
// it queues the answer and leaves the writing to the writer goroutine.
func (c *conn) answered(resp []byte) {
	c.mu.Lock()
	c.inflight--
	c.queue(resp)
	c.cond.Broadcast()
	wake := !c.writing && len(c.out) > 0
	c.mu.Unlock()
	if wake {
		select {
		case c.wake <- struct{}{}:
		default:
		}
	}
}

// writeLoop is the writer goroutine: it writes what callbacks queued.
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

// flush writes out everything queued so far, in one write, unless another
// goroutine is writing (that one takes what is new before it stops). A
// write that takes longer than WriteTimeout cuts the client off.
func (c *conn) flush() {
	c.mu.Lock()
	if c.writing || len(c.out) == 0 {
		c.mu.Unlock()
		return
	}
	c.writing = true
	for len(c.out) > 0 && !c.dead {
		b := c.out
		c.out, c.spare = c.spare[:0], nil
		c.mu.Unlock()
		c.raw.SetWriteDeadline(time.Now().Add(c.s.cfg.WriteTimeout))
		_, err := c.tc.Write(b)
		c.mu.Lock()
		if cap(b) <= maxSpare {
			c.spare = b[:0]
		}
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				c.s.stats.slowClients.Add(1)
			}
			c.dead = true
			c.cond.Broadcast()
			c.raw.Close() // ends the reader's read
		}
	}
	c.writing = false
	c.mu.Unlock()
}
