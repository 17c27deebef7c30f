package upstream

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// connPool is a fixed number of connection slots shared by DoH and Do53 over
// TCP. A query goes to the usable connection with the fewest queries on it
// (ties rotate): when connections end up on server threads of unequal speed
// — BIND 9.18 spreads connections over per-thread listening sockets by a
// hash, so two of them may share a thread — the faster ones take more. A
// slot without a usable connection is dialled in the background (one dial
// at a time per slot, with the target's backoff after failures); while it
// dials, queries use another slot's connection.
//
// A query that no connection can take now (none is up yet, or, for DoH,
// every one has all the streams it may have; a full Do53 connection fails
// it with ErrBusy, as a full UDP socket does) waits in the pool's wait
// queue, a FIFO under its own timer. The queue is the pool's and not a
// connection's because a waiting query is bound to no connection: it goes
// to whichever first has room — a dial that completes on any slot, a
// stream freed on any connection — and a connection that dies strands
// nothing. While any query waits, a new one joins the back of the line
// instead of overtaking it. The owner drains the queue (kick) whenever a
// stream frees up or a connection goes away, and a dial drains it when it
// ends: a successful one hands the waiters to its connection in order, a
// failed one fails them with its error unless another dial may still take
// them. Waiting costs no goroutine, only a node and a timer.
//
// At most maxWait (Options.MaxWait) queries wait. The bound is on memory,
// not on time: each waiting query has its own deadline, and a target
// that stalls for a moment (a busy server, a garbage-collection pause)
// while queries keep coming should hold them until it answers again or
// their deadlines pass, rather than fail them at once. Sized by the
// connections' streams alone (a few hundred), the queue overflowed within
// a tenth of a second of a stall at a few thousand queries per second;
// the forwarder's own in-flight bound (upstream.max_inflight) is the
// natural size, and xdoh passes it. A full queue fails the query at once
// with ErrBusy, and the caller fails over.
//
// E is the connection type; C is *E with its usable check.
type connPool[E any, C interface {
	*E
	usable() bool
	load() int32 // queries on the connection now
}] struct {
	slots   []poolSlot[E]
	next    atomic.Uint32
	backoff backoff
	what    string // "connection to host:port", for errors while waiting
	dialed  string // "host:port" or "host:port over TCP", for dial errors
	maxWait int    // bound of the wait queue

	// spawn accounts for a dial goroutine in the owner's lifecycle (false:
	// the owner is closed); done ends that accounting; closed reports
	// whether the owner has been closed (a dial it aborted is ErrClosed to
	// the callers waiting for it).
	spawn  func() bool
	done   func()
	closed func() bool
	// dial connects and, unless the owner closed meanwhile, registers and
	// starts the connection. Its errors are wrapped by the pool.
	dial func() (C, error)

	dials      atomic.Int32 // dials running
	nwait      atomic.Int32 // requests in the wait queue, readable without wmu
	wmu        sync.Mutex   // guards the wait queue; taken before a slot's or a connection's mutex
	head, tail *waitNode[C]
}

type poolSlot[E any] struct {
	conn atomic.Pointer[E]

	mu      sync.Mutex
	dialing bool // a dial for the slot runs
}

// waitNode is a request's place in its pool's wait queue, allocated when
// it starts to wait (the request points to it: nothing on the fast path).
// Its fields are guarded by the pool's wmu; whoever takes a queued node
// off the queue decides what becomes of its request.
type waitNode[C any] struct {
	prev, next *waitNode[C]
	queued     bool
	req        poolWaiter[C]
	timer      *time.Timer // bounds the wait
	err        error       // why it failed, once taken off to fail
}

// poolWaiter is a request that can wait in a connPool.
type poolWaiter[C any] interface {
	// take starts the request on connection c, with the pool's wmu held,
	// so it must not call back. ok false: c cannot take it now, and the
	// request stays first in line. Else err, if not nil, fails it.
	take(c C) (ok bool, err error)
	// fail ends the request with err; it is called without the pool's lock.
	fail(err error)
}

func (p *connPool[E, C]) usable(s *poolSlot[E]) C {
	if c := C(s.conn.Load()); c != nil && c.usable() {
		return c
	}
	return nil
}

// fail is a dial's error (or the backoff after one) for the requests
// waiting for it: ErrClosed too if the owner has been closed, which aborts
// dials.
func (p *connPool[E, C]) fail(err error) error {
	if p.closed != nil && p.closed() && !errors.Is(err, ErrClosed) {
		return fmt.Errorf("%w (%w)", ErrClosed, err)
	}
	return err
}

// prewarm starts dialling every slot; errors are the next query's business.
func (p *connPool[E, C]) prewarm() {
	for i := range p.slots {
		_ = p.startDial(&p.slots[i])
	}
}

// startDial starts dialling slot s unless a dial runs for it or it has a
// usable connection. While backing off after a failed dial it returns the
// failure instead.
func (p *connPool[E, C]) startDial(s *poolSlot[E]) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dialing || p.usable(s) != nil {
		return nil
	}
	if err := p.backoff.check(time.Now()); err != nil {
		return err
	}
	if !p.spawn() {
		return ErrClosed
	}
	s.dialing = true
	p.dials.Add(1)
	go p.run(s)
	return nil
}

// run dials for slot s and then gives the waiting requests to the new
// connection, or fails them with the dial's error (see drainLocked).
func (p *connPool[E, C]) run(s *poolSlot[E]) {
	defer p.done()
	c, err := p.dial()
	if err != nil {
		err = fmt.Errorf("dialing %s: %w", p.dialed, err)
	}
	p.backoff.record(err, time.Now())
	s.mu.Lock()
	if err == nil {
		s.conn.Store((*E)(c))
	}
	s.dialing = false
	p.dials.Add(-1)
	s.mu.Unlock()
	p.kick()
}

// tryGet returns a connection that takes new queries if one is ready now,
// nil otherwise; it starts dialling a slot without one.
func (p *connPool[E, C]) tryGet() C {
	c, s := p.pick()
	if c == nil {
		_ = p.startDial(s)
	}
	return c
}

// pick returns the usable connection with the fewest queries on it,
// starting from the next slot in rotation so that ties take turns, and the
// first slot it found without a usable connection (nil if none). Without a
// usable connection it returns nil and the rotation's slot.
func (p *connPool[E, C]) pick() (C, *poolSlot[E]) {
	n := uint32(len(p.slots))
	i := p.next.Add(1) % n
	var best C
	var bestLoad int32
	var empty *poolSlot[E]
	for j := range n {
		s := &p.slots[(i+j)%n]
		c := p.usable(s)
		if c == nil {
			if empty == nil {
				empty = s
			}
			continue
		}
		if l := c.load(); best == nil || l < bestLoad {
			best, bestLoad = c, l
		}
	}
	if best != nil && empty != nil {
		_ = p.startDial(empty) // refill the slot; best serves meanwhile
	}
	return best, empty
}

// wait puts request w at the back of the wait queue until deadline, with
// *node pointing to its place there, and hands out what the connections can
// take now. w fails at once if the owner is closed, the deadline has
// passed, or the queue is full (ErrBusy).
func (p *connPool[E, C]) wait(node **waitNode[C], w poolWaiter[C], deadline time.Time) {
	p.wmu.Lock()
	var err error
	left := time.Until(deadline)
	switch {
	case p.closed != nil && p.closed():
		err = ErrClosed
	case left <= 0:
		err = p.timeoutErr()
	case int(p.nwait.Load()) >= p.maxWait:
		err = fmt.Errorf("%w: %d queries already wait for %s", ErrBusy, p.maxWait, p.what)
	}
	if err != nil {
		p.wmu.Unlock()
		w.fail(err)
		return
	}
	n := &waitNode[C]{req: w, queued: true, prev: p.tail}
	n.timer = time.AfterFunc(left, func() { p.expire(n) })
	*node = n
	if p.tail != nil {
		p.tail.next = n
	} else {
		p.head = n
	}
	p.tail = n
	p.nwait.Add(1)
	failed := p.drainLocked()
	p.wmu.Unlock()
	failNodes(failed)
}

func (p *connPool[E, C]) timeoutErr() error {
	return fmt.Errorf("waiting for %s: %w", p.what, ErrTimeout)
}

// unlinkLocked takes queued node n off the queue and stops its timer.
func (p *connPool[E, C]) unlinkLocked(n *waitNode[C]) {
	if n.prev != nil {
		n.prev.next = n.next
	} else {
		p.head = n.next
	}
	if n.next != nil {
		n.next.prev = n.prev
	} else {
		p.tail = n.prev
	}
	n.prev, n.next, n.queued = nil, nil, false
	n.timer.Stop() // if it fires anyway, expire finds n no longer queued
	p.nwait.Add(-1)
}

// kick hands waiting requests to the connections if any wait: the owner
// calls it when a stream frees up or a connection changes.
func (p *connPool[E, C]) kick() {
	if p.nwait.Load() == 0 {
		return
	}
	p.wmu.Lock()
	failed := p.drainLocked()
	p.wmu.Unlock()
	failNodes(failed)
}

// drainLocked hands the waiting requests, oldest first, to the connections
// that take them. Without a usable connection it makes sure a slot dials;
// when none is dialling and none may (backoff after a failed dial, or
// closed), no connection can come, and every waiting request fails with
// the last dial's error. (A request whose connection refuses it for being
// past its deadline stays first in line until its timer takes it off.) The
// caller fails the returned requests once it has released wmu.
func (p *connPool[E, C]) drainLocked() (failed []*waitNode[C]) {
	for n := p.head; n != nil; n = p.head {
		c, s := p.pick()
		if c == nil {
			if err := p.startDial(s); err != nil && p.dials.Load() == 0 {
				failed = p.takeAllLocked(failed, p.fail(err))
			}
			return failed
		}
		ok, err := n.req.take(c)
		if !ok {
			return failed
		}
		p.unlinkLocked(n)
		if err != nil {
			n.err = err
			failed = append(failed, n)
		}
	}
	return failed
}

// takeAllLocked empties the queue onto failed, to fail with err.
func (p *connPool[E, C]) takeAllLocked(failed []*waitNode[C], err error) []*waitNode[C] {
	for n := p.head; n != nil; n = p.head {
		p.unlinkLocked(n)
		n.err = err
		failed = append(failed, n)
	}
	return failed
}

// failNodes fails the requests of nodes taken off the queue.
func failNodes[C any](failed []*waitNode[C]) {
	for _, n := range failed {
		n.req.fail(n.err)
	}
}

// expire fails node n's request at its deadline if it is still waiting.
func (p *connPool[E, C]) expire(n *waitNode[C]) {
	p.wmu.Lock()
	queued := n.queued
	if queued {
		p.unlinkLocked(n)
	}
	p.wmu.Unlock()
	if queued {
		n.req.fail(p.timeoutErr())
		p.kick() // n may have been first in line, past its deadline
	}
}

// remove takes the request whose place wait recorded in *node off the
// queue without failing it (Cancel, or a request that ended otherwise):
// true if it was waiting.
func (p *connPool[E, C]) remove(node **waitNode[C]) bool {
	if p.nwait.Load() == 0 {
		return false
	}
	p.wmu.Lock()
	defer p.wmu.Unlock()
	n := *node
	if n == nil || !n.queued {
		return false
	}
	p.unlinkLocked(n)
	return true
}

// failAll fails every waiting request with err (Close).
func (p *connPool[E, C]) failAll(err error) {
	p.wmu.Lock()
	failed := p.takeAllLocked(nil, err)
	p.wmu.Unlock()
	failNodes(failed)
}
