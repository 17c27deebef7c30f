package upstream

import (
	"sync/atomic"
	"testing"
)

// fakePoolConn is a connection for pool selection tests.
type fakePoolConn struct {
	id      int
	closing atomic.Bool
	n       atomic.Int32
}

func (c *fakePoolConn) usable() bool { return !c.closing.Load() }
func (c *fakePoolConn) load() int32  { return c.n.Load() }

func newFakePool(loads ...int32) (*connPool[fakePoolConn, *fakePoolConn], []*fakePoolConn) {
	p := &connPool[fakePoolConn, *fakePoolConn]{
		slots: make([]poolSlot[fakePoolConn], len(loads)),
		spawn: func() bool { return false }, // no dials in these tests
		done:  func() {},
	}
	conns := make([]*fakePoolConn, len(loads))
	for i, l := range loads {
		c := &fakePoolConn{id: i}
		c.n.Store(l)
		p.slots[i].conn.Store(c)
		conns[i] = c
	}
	return p, conns
}

// TestPoolPicksLeastLoaded: a query goes to the usable connection with the
// fewest queries on it, whatever the rotation; equal loads take turns.
func TestPoolPicksLeastLoaded(t *testing.T) {
	p, conns := newFakePool(40, 3, 17, 9)
	for range 8 {
		if c := p.tryGet(); c != conns[1] {
			t.Fatalf("picked conn %d, want 1 (load 3)", c.id)
		}
	}
	conns[1].closing.Store(true) // the least loaded goes away: next best
	for range 8 {
		if c := p.tryGet(); c != conns[3] {
			t.Fatalf("picked conn %d, want 3 (load 9)", c.id)
		}
	}

	p, _ = newFakePool(5, 5, 5)
	seen := map[int]int{}
	for range 30 {
		seen[p.tryGet().id]++
	}
	for i := range 3 {
		if seen[i] != 10 {
			t.Fatalf("equal loads: picks %v, want 10 each", seen)
		}
	}

	p, conns = newFakePool(1, 2)
	conns[0].closing.Store(true)
	conns[1].closing.Store(true)
	if c := p.tryGet(); c != nil {
		t.Fatalf("no usable connection: got conn %d", c.id)
	}
}
