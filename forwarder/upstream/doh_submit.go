package upstream

// DoH.Submit and the life of a request: onto a connection or into the
// pool's wait queue, written inline or by the writer, expired by its timer,
// completed (and retried once) with what the reader or a failing
// connection left in it.

import (
	"fmt"
	"time"
)

// Submit sends query over DoH and does not block: done is called exactly
// once with the response (carrying the query's ID) or the error, within
// timeout (at most the upstream's own timeout; 0 or less: that one). When
// a connection with a free stream is ready, the request is queued for the
// connection's writer (or written by the caller, see writeInline), and the
// connection's reader (or the request's timer, or whoever fails the
// connection) calls done. Otherwise the request waits in the pool's wait
// queue until a dial completes or a stream frees up (see connPool). A
// request that fails because its connection broke or went away is retried
// once on another connection. done runs on one of those goroutines, or on
// the caller's when the query is refused at once; it must not block, and
// the response is its to keep. query is copied before Submit returns.
//
// This is the miss path of a busy forwarder: no goroutine, context or
// channel per query, only one timer.
//
// The result's Cancel abandons the query when its answer is no longer
// wanted (a hedge's loser): an open stream is reset with CANCEL, a queued
// or waiting request is dropped, and done is not called unless it already
// has been or is being called. The result is nil when the query was
// refused at once (done has been called); done may also have been called
// before Submit returns a result, when writing the query inline failed
// (writeInline), and Cancel then does nothing.
func (d *DoH) Submit(query []byte, timeout time.Duration, done func(resp []byte, err error)) Canceler {
	if len(query) < headerLen || len(query) > maxResponseSize {
		done(nil, fmt.Errorf("upstream %s: %w: %d bytes", d.target, ErrBadQuery, len(query)))
		return nil
	}
	if d.isDone.Load() {
		done(nil, fmt.Errorf("upstream %s: %w", d.target, ErrClosed))
		return nil
	}
	if timeout <= 0 || timeout > d.timeout {
		timeout = d.timeout
	}
	r := &request{d: d, cb: done, deadline: time.Now().Add(timeout)}
	r.query = append(make([]byte, 0, len(query)), query...)
	r.qid = [2]byte{query[0], query[1]}
	r.query[0], r.query[1] = 0, 0
	d.submit(r)
	return r
}

// Cancel abandons request r, or the request that retries it, unless it has
// completed; see Submit.
func (r *request) Cancel() {
	for ; r != nil; r = r.retry.Load() {
		if r.d.pool.remove(&r.node) {
			continue
		}
		if c := r.conn.Load(); c != nil {
			c.cancel(r)
		}
	}
}

// cancel abandons r if it is still queued or open on c: the writer drops
// it or resets its stream with CANCEL, and its callback is never called.
// Unlike a timeout, a cancel says nothing about the connection: no PING.
func (c *h2Conn) cancel(r *request) {
	c.mu.Lock()
	if r.state != stQueued && r.state != stSent {
		c.mu.Unlock()
		return
	}
	c.abandonLocked(r, false)
	c.mu.Unlock()
	r.timer.Stop()
	c.d.pool.kick() // a stream is free
}

// submit puts request r on a connection that takes it now, unless requests
// wait for one already (r must not overtake them): then, as when no
// connection takes it, r waits in the pool's queue.
func (d *DoH) submit(r *request) {
	if d.pool.nwait.Load() == 0 {
		if c := d.pool.tryGet(); c != nil && c.submit(r, true) {
			return
		}
	}
	d.pool.wait(&r.node, r, r.deadline)
}

// take hands r, waiting in the pool's queue, to c if c has a free stream
// (poolWaiter). The pool holds its lock: r is not written inline.
func (r *request) take(c *h2Conn) (bool, error) { return c.submit(r, false), nil }

// fail ends r, which never reached a connection, with err (poolWaiter).
func (r *request) fail(err error) { r.cb(nil, fmt.Errorf("upstream %s: %w", r.d.target, err)) }

// submit takes request r if c has a free stream and room on its queue, and
// arms r's timer; false: c cannot take it now. On a connection with
// nothing in flight r is written by the caller (writeInline) if inline
// allows it, else queued for the writer.
func (c *h2Conn) submit(r *request, inline bool) bool {
	left := time.Until(r.deadline)
	c.mu.Lock()
	if c.dead || c.draining || c.active >= c.maxStreams || left <= 0 {
		c.mu.Unlock()
		return false
	}
	r.state, r.resp, r.err, r.gotHeaders, r.recvd = stQueued, nil, nil, false, 0
	r.conn.Store(c)
	r.timer = time.AfterFunc(left, func() { c.expire(r) })
	inline = inline && c.active == 0 && len(c.reqCh) == 0 && c.sock != nil
	if !inline {
		select {
		case c.reqCh <- r:
		default:
			r.timer.Stop()
			r.state = stIdle
			c.mu.Unlock()
			return false
		}
	}
	c.active++
	c.inflight.Add(1)
	c.mu.Unlock()
	if inline {
		c.writeInline(r)
	}
	return true
}

// writeInline writes request r from the submitting goroutine when the
// writer is idle, instead of waking it: a lone query (nothing else in
// flight on the connection) then costs one goroutine hand-off less. On 2
// shared cores, lone UDP queries forwarded to BIND were faster in 11 of 16
// alternating pairs of runs, by 10-20% (0.20 against 0.25 ms in the first
// ten), with about 0.4 fewer context switches per query. Under load
// requests are in flight and the writer batches them as before. If the
// writer is busy, r is queued for it.
//
// The caller is a datapath loop, which must not stall: r is written inline
// only when the socket's send queue is empty, so that the write cannot
// block (a peer that stopped reading leaves r to the writer), and a
// connection that fails the write is shut down, which may wait for a TLS
// close, on a goroutine of its own.
func (c *h2Conn) writeInline(r *request) {
	if !c.wmu.TryLock() { // the writer is at work: it takes r with its next batch
		c.queueForWriter(r)
		return
	}
	if !c.sock.sendQueueEmpty() {
		c.wmu.Unlock()
		c.queueForWriter(r)
		return
	}
	c.batch = append(c.batch, r)
	err := c.writeBatch()
	if c.armPing {
		c.signal() // the writer times the PING; it clears armPing
	}
	if err != nil {
		// The writer, alive since the connection was not dead when
		// writeBatch began, fails what r left behind once quit closes.
		go c.shutdown(err)
	}
	c.mu.Lock()
	dead := c.dead
	c.mu.Unlock()
	c.wmu.Unlock()
	if dead {
		c.writerExit() // the writer may have exited before r was added
	}
}

// queueForWriter hands r, taken by submit but not written inline, to the
// writer; if the connection has died meanwhile, r fails (and is retried).
func (c *h2Conn) queueForWriter(r *request) {
	c.mu.Lock()
	queued := false
	if !c.dead { // else writerExit has drained, or will drain, the queue
		select {
		case c.reqCh <- r: // room: every queued request holds one of at most maxStreams
			queued = true
		default:
		}
	}
	c.mu.Unlock()
	if !queued {
		c.failQueued(r)
	}
}

// expire ends request r at its deadline unless it has finished: a queued
// request is dropped by the writer, an open stream is reset, and the
// connection is checked with a PING (see abandonLocked).
func (c *h2Conn) expire(r *request) {
	c.mu.Lock()
	if r.state != stQueued && r.state != stSent { // finished or already expired
		c.mu.Unlock()
		return
	}
	c.abandonLocked(r, true)
	c.mu.Unlock()
	c.d.pool.kick() // a stream is free
	r.cb(nil, fmt.Errorf("upstream %s: waiting for response: %w", c.d.target, ErrTimeout))
}

// complete hands a finished request (state stDone, set under its
// connection's lock) to its caller: the callback gets the response, or the
// request is retried once on another connection when its connection broke
// or went away. The request's stream is free: waiting requests may take it.
func (d *DoH) complete(r *request) {
	d.pool.kick()
	r.timer.Stop()
	resp, err := r.resp, r.err
	if err != nil && !r.retried && Retryable(err) && time.Until(r.deadline) > 0 {
		// A fresh request: the old one may still be seen by its timer.
		nr := &request{d: d, cb: r.cb, deadline: r.deadline, query: r.query, qid: r.qid, retried: true}
		r.retry.Store(nr)
		d.submit(nr)
		return
	}
	if err == nil {
		q := r.query
		q[0], q[1] = r.qid[0], r.qid[1] // checkResponse compares the opcode and question only
		if err = checkResponse(q, resp); err == nil {
			resp[0], resp[1] = r.qid[0], r.qid[1]
		}
	}
	if err != nil {
		r.cb(nil, fmt.Errorf("upstream %s: %w", d.target, err))
		return
	}
	r.cb(resp, nil)
}
