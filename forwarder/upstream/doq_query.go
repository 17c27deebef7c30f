package upstream

// DoQ.Submit and the life of a query (doqQuery): a stream of its own,
// opened by the caller or, beyond the server's stream limit, after a wait
// in the pool's queue; answered through the connection's reader;
// retried once when its connection breaks; expired by its timer or
// cancelled, which cancels its stream.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
)

// Submit sends query on a new stream of a pooled QUIC connection and does
// not block: done is called exactly once with the response (carrying the
// query's ID) or the error, within timeout (at most the upstream's own
// timeout; 0 or less: that one). The query goes out with ID 0, its
// 2-octet length before it and the stream's FIN after it (RFC 9250 4.2);
// the caller's goroutine opens the stream and writes it, and nothing
// waits per query: the connection's reader reads the answer once the
// server has ended its side of the stream, or the query's timer, or
// whoever fails the connection, calls done. While no connection is up, or
// every one has as many streams open as its server allows, the query
// waits in the pool's queue (see connPool). A connection that breaks with
// the query on it retries it once on a fresh one. done runs on one of
// those goroutines, or on the caller's when the query is refused at once;
// it must not block, and the response is its to keep. query is copied
// before Submit returns.
//
// The result's Cancel abandons the query (a hedge's loser): its stream is
// cancelled both ways with DOQ_REQUEST_CANCELLED, or it leaves the wait
// queue, and done is not called unless it already has been or is being
// called. It is nil when done has been called before Submit returns.
func (d *DoQ) Submit(query []byte, timeout time.Duration, done func(resp []byte, err error)) Canceler {
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
	q := &doqQuery{d: d, cb: done, deadline: time.Now().Add(timeout), id: [2]byte{query[0], query[1]}}
	q.wire = binary.BigEndian.AppendUint16(make([]byte, 0, 2+len(query)), uint16(len(query)))
	q.wire = append(q.wire, 0, 0) // RFC 9250 4.2.1: ID 0
	q.wire = append(q.wire, query[2:]...)
	q.mu.Lock()
	q.timer = time.AfterFunc(timeout, q.expire)
	q.mu.Unlock()
	q.send()
	return q
}

// doqQuery is one Submit in flight. It has at most one stream at a time;
// completion is decided once, by settled.
type doqQuery struct {
	d        *DoQ
	wire     []byte  // length, then the query with ID 0
	id       [2]byte // the caller's ID
	cb       func([]byte, error)
	deadline time.Time
	retried  bool // a broken connection has been retried
	settled  atomic.Bool
	node     *waitNode[*doqConn] // its place in the pool's wait queue, once it waits

	mu    sync.Mutex
	c     *doqConn     // where its stream is
	st    *quic.Stream // its stream; guarded by mu, as are its Close and cancellation
	timer *time.Timer
}

// send starts the query on a connection, or puts it in the pool's wait
// queue behind the queries already there.
func (q *doqQuery) send() {
	p := &q.d.pool
	if p.nwait.Load() == 0 {
		if c := p.tryGet(); c != nil {
			if ok, err := q.take(c); ok {
				if err != nil {
					q.complete(nil, err)
				}
				return
			}
		}
	}
	p.wait(&q.node, q, q.deadline)
}

// take (poolWaiter) opens the query's stream on c and writes the query
// and the FIN, without blocking: QUIC flow control almost always has room
// for a query (a new stream starts with the server's whole stream window);
// when it has not, a goroutine writes it. ok false: c has no stream for it
// now, or is dead. It may run under the pool's lock: it does not call
// back, it returns the error.
func (q *doqQuery) take(c *doqConn) (bool, error) {
	if q.settled.Load() {
		return true, nil
	}
	st, _ := c.openStream(q.deadline)
	if st == nil || !c.add(q) {
		return false, nil
	}
	q.mu.Lock()
	if q.settled.Load() {
		q.mu.Unlock()
		c.remove(q)
		cancelStream(st)
		return true, nil
	}
	q.c, q.st = c, st
	st.SetReceiveFinalSizeCallback(func(size int64) { c.finish(q, st, size) })
	err := st.TryWriteAll(q.wire)
	if err == nil {
		err = st.Close() // FIN: no more queries on this stream
	}
	q.mu.Unlock()
	switch {
	case errors.Is(err, quic.ErrWouldBlock):
		q.d.wg.Add(1) // c is alive (add), so Close has not reached wg.Wait
		go q.write(c, st)
	case err != nil:
		if c.remove(q) {
			q.cancelOn(st)
			return true, fmt.Errorf("%w: writing the query: %w", ErrConnClosed, err)
		}
	}
	return true, nil
}

// write writes the query and the FIN on st when the stream's flow-control
// window had no room for it at once; the query's deadline bounds it.
func (q *doqQuery) write(c *doqConn, st *quic.Stream) {
	defer q.d.wg.Done()
	st.SetWriteDeadline(q.deadline)
	_, err := st.Write(q.wire)
	q.mu.Lock()
	if err == nil && q.st == st && !q.settled.Load() {
		err = st.Close()
	}
	q.mu.Unlock()
	if err != nil && c.remove(q) {
		q.cancelOn(st)
		q.complete(nil, fmt.Errorf("%w: writing the query: %w", ErrConnClosed, err))
	}
}

// fail ends the query with err (poolWaiter).
func (q *doqQuery) fail(err error) { q.complete(nil, err) }

// connFailed runs on the goroutine that shut the query's connection down
// with err: once, a retryable error sends the query again.
func (q *doqQuery) connFailed(err error) {
	if !q.retried && Retryable(err) && !q.settled.Load() {
		q.retried = true
		q.mu.Lock()
		q.c, q.st = nil, nil
		q.mu.Unlock()
		q.send()
		return
	}
	q.complete(nil, err)
}

// Cancel settles the query without calling back unless it is settled
// already, and cancels its stream or takes it off the wait queue.
func (q *doqQuery) Cancel() {
	if !q.settled.CompareAndSwap(false, true) {
		return
	}
	q.abandon()
}

// expire settles the query at its deadline unless it is settled already,
// and cancels its stream or takes it off the wait queue.
func (q *doqQuery) expire() {
	if !q.settled.CompareAndSwap(false, true) {
		return
	}
	q.abandon()
	q.cb(nil, fmt.Errorf("upstream %s: waiting for response over QUIC: %w", q.d.target, ErrTimeout))
}

// abandon undoes what a settled query holds: its stream, cancelled with
// DOQ_REQUEST_CANCELLED (RFC 9250 4.5), or its place in the wait queue.
func (q *doqQuery) abandon() {
	q.mu.Lock()
	q.timer.Stop()
	c, st := q.c, q.st
	if st != nil {
		cancelStream(st)
	}
	q.mu.Unlock()
	if c != nil && c.remove(q) {
		q.d.pool.kick()
	}
	q.d.pool.remove(&q.node)
}

// cancelOn cancels st if it is still the query's stream.
func (q *doqQuery) cancelOn(st *quic.Stream) {
	q.mu.Lock()
	if q.st == st {
		cancelStream(st)
	}
	q.mu.Unlock()
}

// cancelStream stops both directions of a query's stream: STOP_SENDING
// and RESET_STREAM with DOQ_REQUEST_CANCELLED.
func cancelStream(st *quic.Stream) {
	st.CancelRead(doqRequestCancelled)
	st.CancelWrite(doqRequestCancelled)
}

// complete settles the query with resp or err unless it is settled
// already.
func (q *doqQuery) complete(resp []byte, err error) {
	if !q.settled.CompareAndSwap(false, true) {
		return
	}
	q.mu.Lock()
	q.timer.Stop()
	q.mu.Unlock()
	if err != nil {
		q.cb(nil, fmt.Errorf("upstream %s: %w", q.d.target, err))
		return
	}
	resp[0], resp[1] = q.id[0], q.id[1]
	q.cb(resp, nil)
}
