package upstream

import (
	"context"
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
// hash, so two of them may share a thread — the faster ones take more. A slot without a usable connection is dialled in the background (one
// dial at a time per slot, with the target's backoff after failures); while it
// dials, callers use another slot's connection and wait only when there is
// none. E is the connection type; C is *E with its usable check.
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
}

type poolSlot[E any] struct {
	conn atomic.Pointer[E]

	mu      sync.Mutex
	dialing chan struct{} // closed when the running dial ends; nil if none
	dialErr error         // failure of the last dial, nil after a success
}

func (p *connPool[E, C]) usable(s *poolSlot[E]) C {
	if c := C(s.conn.Load()); c != nil && c.usable() {
		return c
	}
	return nil
}

// get returns a connection that takes new queries, waiting for a dial at
// most until ctx is done or timeout fires. A dial that succeeds with a
// connection already going away (a GOAWAY or a reset right after the
// handshake) is not an answer: get looks again, and dials again.
func (p *connPool[E, C]) get(ctx context.Context, timeout <-chan time.Time) (C, error) {
	for {
		c, s := p.pick()
		if c != nil {
			return c, nil
		}
		ch, err := p.startDial(s)
		if err != nil {
			return nil, p.fail(err)
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctxErr(ctx, "waiting for "+p.what)
		case <-timeout:
			return nil, fmt.Errorf("waiting for %s: %w", p.what, ErrTimeout)
		}
		if c := p.usable(s); c != nil {
			return c, nil
		}
		s.mu.Lock()
		err = s.dialErr
		s.mu.Unlock()
		if err != nil {
			return nil, p.fail(err)
		}
	}
}

// fail is a dial's error (or the backoff after one) for the callers waiting
// for it: ErrClosed too if the owner has been closed, which aborts dials.
func (p *connPool[E, C]) fail(err error) error {
	if p.closed != nil && p.closed() && !errors.Is(err, ErrClosed) {
		return fmt.Errorf("%w (%w)", ErrClosed, err)
	}
	return err
}

// prewarm starts dialling every slot; errors are the next query's business.
func (p *connPool[E, C]) prewarm() {
	for i := range p.slots {
		_, _ = p.startDial(&p.slots[i])
	}
}

// startDial starts dialling slot s unless a dial is already running, and
// returns the channel closed when that dial ends. While backing off after a
// failed dial it returns the failure instead.
func (p *connPool[E, C]) startDial(s *poolSlot[E]) (<-chan struct{}, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dialing != nil {
		return s.dialing, nil
	}
	if p.usable(s) != nil { // a dial just finished
		ch := make(chan struct{})
		close(ch)
		return ch, nil
	}
	if err := p.backoff.check(time.Now()); err != nil {
		return nil, err
	}
	if !p.spawn() {
		return nil, ErrClosed
	}
	ch := make(chan struct{})
	s.dialing = ch
	go p.run(s, ch)
	return ch, nil
}

func (p *connPool[E, C]) run(s *poolSlot[E], ch chan struct{}) {
	defer p.done()
	c, err := p.dial()
	if err != nil {
		err = fmt.Errorf("dialing %s: %w", p.dialed, err)
	}
	p.backoff.record(err, time.Now())
	s.mu.Lock()
	s.dialErr = err
	if err == nil {
		s.conn.Store((*E)(c))
	}
	s.dialing = nil
	close(ch)
	s.mu.Unlock()
}

// tryGet returns a connection that takes new queries if one is ready now,
// nil otherwise; like get it starts dialling a slot without one.
func (p *connPool[E, C]) tryGet() C {
	c, s := p.pick()
	if c == nil {
		_, _ = p.startDial(s)
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
		_, _ = p.startDial(empty) // refill the slot; best serves meanwhile
	}
	return best, empty
}
