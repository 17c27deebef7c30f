package upstream

// Do53.Submit and the life of a query (asyncQuery): registered on a UDP
// socket or TCP connection, or waiting for a TCP dial, moved to TCP on a
// truncated answer, retried once when its TCP connection breaks, expired
// by its timer.

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// Submit sends query with a random ID on the wire and does not block: done
// is called exactly once with the response (carrying the query's ID) or
// the error, within timeout (at most the upstream's own timeout; 0 or
// less: that one). Over UDP nothing waits: the query is registered on a
// pooled socket and sent from the caller's goroutine, and the socket's
// reader (or the query's timer, or whoever fails the socket) calls done. A
// truncated answer moves the query to a pooled TCP connection the same
// way; while none is open yet, the query waits in the TCP pool's wait
// queue for the dial (see connPool). A TCP connection that breaks with the
// query in flight is retried once on a fresh one. done runs on one of
// those goroutines, or on the caller's when the query is refused at once;
// it must not block, and the response is its to keep. query is copied
// before Submit returns; a query with an OPT record gets the upstream's
// COOKIE option in the copy, and a BADCOOKIE answer to it is asked once
// more with the server cookie it brought (see the package documentation).
//
// The result's Cancel abandons the query (a hedge's loser): its ID is
// withdrawn from its socket or connection, so that a late answer is
// dropped, or it leaves the wait queue, and done is not called unless it
// already has been or is being called. It is nil when done has been called
// before Submit returns.
func (u *Do53) Submit(query []byte, timeout time.Duration, done func(resp []byte, err error)) Canceler {
	if len(query) < headerLen || len(query) > maxResponseSize {
		done(nil, fmt.Errorf("upstream %s: %w: %d bytes", u.target, ErrBadQuery, len(query)))
		return nil
	}
	if u.isDone.Load() {
		done(nil, fmt.Errorf("upstream %s: %w", u.target, ErrClosed))
		return nil
	}
	if timeout <= 0 || timeout > u.timeout {
		timeout = u.timeout
	}
	a := &asyncQuery{u: u, cb: done, deadline: time.Now().Add(timeout), tcp: u.tcpOnly}
	a.w.query, a.w.cookie = u.addCookie(append(make([]byte, 0, len(query)+cookieRoom), query...))
	a.cookieOff = len(query)
	a.w.async = a
	a.mu.Lock()
	a.timer = time.AfterFunc(timeout, a.expire)
	a.mu.Unlock()
	a.send()
	return a
}

// Cancel settles the query without calling back unless it is settled
// already, and takes its waiter off the connection it waits on, or the
// query off the wait queue.
func (a *asyncQuery) Cancel() {
	if !a.settled.CompareAndSwap(false, true) {
		return
	}
	a.mu.Lock()
	a.timer.Stop()
	if c := a.c; c != nil {
		c.withdraw(&a.w)
	}
	a.mu.Unlock()
	a.u.tcp.remove(&a.node)
}

// asyncQuery is one Submit in flight. Its waiter is registered on at most
// one connection at a time; completion is decided once, by settled.
type asyncQuery struct {
	u             *Do53
	w             waiter
	cb            func([]byte, error)
	deadline      time.Time
	retried       bool // a broken TCP connection has been retried
	cookieOff     int  // where our COOKIE option starts in w.query, if w.cookie
	cookieRetried bool // a BADCOOKIE answer has been retried
	settled       atomic.Bool
	node          *waitNode[*dnsConn] // its place in the TCP pool's wait queue, once it waits

	mu    sync.Mutex
	tcp   bool     // over TCP now (TCP only, or after a truncated answer); written under mu
	c     *dnsConn // where w was last registered
	timer *time.Timer
}

// send registers the query on a socket or connection and sends it. Only
// one goroutine runs send or landed for a query at a time: the submitter,
// then the reader or shutdown that took the waiter off its connection (so
// they read tcp without the lock). Registering (which sets the waiter's
// wire ID) and recording the connection happen under mu, as does expire's
// withdrawal, so that expire always withdraws from where the waiter is.
func (a *asyncQuery) send() {
	u := a.u
	if !a.tcp {
		a.mu.Lock()
		c, err := u.registerUDP(&a.w, a.w.query)
		late := err == nil && a.registeredLocked(c)
		a.mu.Unlock()
		switch {
		case err != nil:
			a.complete(nil, err)
		case late:
		default:
			if err := u.sendUDP(c, &a.w, a.w.query); err != nil {
				c.failSend(err) // an ICMP error: completes this query and the socket's others
				if c.withdraw(&a.w) {
					a.complete(nil, fmt.Errorf("sending over UDP: %w", err))
				}
			}
		}
		return
	}
	var c *dnsConn
	if u.tcp.nwait.Load() == 0 { // else queue behind the queries waiting
		c = u.tcp.tryGet()
	}
	if c == nil {
		a.waitTCP()
		return
	}
	switch ok, err := a.take(c); {
	case !ok:
		a.waitTCP() // c died since tryGet looked
	case err != nil:
		a.complete(nil, err)
	}
}

// take registers the query on TCP connection c and has it sent (also as a
// poolWaiter, under the pool's lock); false: c is dead. A query settled
// meanwhile is done with.
func (a *asyncQuery) take(c *dnsConn) (bool, error) {
	if a.settled.Load() {
		return true, nil
	}
	a.mu.Lock()
	err := c.register(&a.w, a.w.query)
	late := err == nil && a.registeredLocked(c)
	a.mu.Unlock()
	switch {
	case errors.Is(err, ErrBusy):
		return true, err
	case err != nil:
		return false, nil
	case !late:
		c.signal()
	}
	return true, nil
}

// fail ends the query with err (poolWaiter).
func (a *asyncQuery) fail(err error) { a.complete(nil, err) }

// registeredLocked records that the waiter is on c. If the query's timer
// has already settled it, it takes the waiter back off and reports true.
func (a *asyncQuery) registeredLocked(c *dnsConn) (late bool) {
	a.c = c
	if a.settled.Load() {
		c.withdraw(&a.w)
		return true
	}
	return false
}

// waitTCP puts the query in the TCP pool's wait queue, where the next
// connection to come up takes it.
func (a *asyncQuery) waitTCP() {
	a.mu.Lock()
	a.c = nil // nothing of ours is registered anywhere
	a.mu.Unlock()
	a.u.tcp.wait(&a.node, a, a.deadline)
}

// landed runs on the goroutine that took the waiter off its connection,
// with the answer or the connection's error in it.
func (a *asyncQuery) landed() {
	w := &a.w
	if w.err != nil {
		if a.tcp && !a.retried && Retryable(w.err) && !a.settled.Load() {
			a.retried = true
			w.err = nil
			a.send()
			return
		}
		a.complete(nil, w.err)
		return
	}
	if w.badCookie && !a.cookieRetried && !a.settled.Load() {
		// RFC 7873 5.3: once more with the server cookie just learned.
		a.cookieRetried = true
		w.resp, w.badCookie = nil, false
		w.query = a.u.renewCookie(w.query, a.cookieOff)
		a.send()
		return
	}
	if !a.tcp && w.resp[2]&0x02 != 0 && !a.settled.Load() { // TC: again over TCP
		w.resp = nil
		a.mu.Lock()
		a.tcp = true
		a.mu.Unlock()
		a.send()
		return
	}
	a.complete(w.resp, nil)
}

// expire settles the query at its deadline unless it is settled already,
// and takes its waiter off the connection it waits on.
func (a *asyncQuery) expire() {
	if !a.settled.CompareAndSwap(false, true) {
		return
	}
	a.mu.Lock()
	c, tcp := a.c, a.tcp
	if c != nil {
		c.withdraw(&a.w)
	}
	a.mu.Unlock()
	a.u.tcp.remove(&a.node)
	over := "UDP"
	if tcp {
		over = a.u.over
	}
	a.cb(nil, fmt.Errorf("upstream %s: waiting for response over %s: %w", a.u.target, over, ErrTimeout))
}

// complete settles the query with resp or err unless it is settled already.
func (a *asyncQuery) complete(resp []byte, err error) {
	if !a.settled.CompareAndSwap(false, true) {
		return
	}
	a.mu.Lock()
	a.timer.Stop()
	a.mu.Unlock()
	if err != nil {
		a.cb(nil, fmt.Errorf("upstream %s: %w", a.u.target, err))
		return
	}
	resp[0], resp[1] = a.w.query[0], a.w.query[1]
	a.cb(resp, nil)
}
