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
	limit   int32 // full at this load; 0: never
}

func (c *fakePoolConn) usable() bool { return !c.closing.Load() }
func (c *fakePoolConn) load() int32  { return c.n.Load() }
func (c *fakePoolConn) full() bool   { return c.limit > 0 && c.n.Load() >= c.limit }

func newFakePool(loads ...int32) (*connPool[fakePoolConn, *fakePoolConn], []*fakePoolConn) {
	p := &connPool[fakePoolConn, *fakePoolConn]{
		slots: make([]poolSlot[fakePoolConn], len(loads)), keep: len(loads),
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

// TestPoolPicksExtraOnlyWhenKeptAreFull: past the kept slots, a query
// takes an extra connection only while the least loaded kept one is full
// (or none is up), and then the first extra one with room, in slot order.
func TestPoolPicksExtraOnlyWhenKeptAreFull(t *testing.T) {
	for _, tc := range []struct {
		name  string
		kept  []int32 // loads of the kept connections; -1: none in the slot
		extra []int32 // loads of the extra ones; -1: none in the slot
		limit int32
		want  int // index into kept then extra; -1: nil
	}{
		{name: "kept has room", kept: []int32{4, 3}, extra: []int32{0, 0}, limit: 4, want: 1},
		{name: "kept full: first extra", kept: []int32{4, 4}, extra: []int32{2, 0}, limit: 4, want: 2},
		{name: "kept full: first extra with room", kept: []int32{4, 4}, extra: []int32{4, 3}, limit: 4, want: 3},
		{name: "first extra slot empty", kept: []int32{4, 4}, extra: []int32{-1, 1}, limit: 4, want: 3},
		{name: "all full: least loaded kept", kept: []int32{5, 4}, extra: []int32{4, 4}, limit: 4, want: 1},
		{name: "no kept connection: extra", kept: []int32{-1, -1}, extra: []int32{1}, limit: 4, want: 2},
		{name: "nothing up", kept: []int32{-1}, extra: []int32{-1}, limit: 4, want: -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			loads := append(append([]int32{}, tc.kept...), tc.extra...)
			p := &connPool[fakePoolConn, *fakePoolConn]{
				slots: make([]poolSlot[fakePoolConn], len(loads)), keep: len(tc.kept),
				spawn: func() bool { return false }, done: func() {},
			}
			conns := make([]*fakePoolConn, len(loads))
			for i, l := range loads {
				if l < 0 {
					continue
				}
				conns[i] = &fakePoolConn{id: i, limit: tc.limit}
				conns[i].n.Store(l)
				p.slots[i].conn.Store(conns[i])
			}
			for range 4 { // whatever the rotation
				c, _ := p.pick()
				switch {
				case tc.want < 0 && c != nil:
					t.Fatalf("picked conn %d, want none", c.id)
				case tc.want >= 0 && c != conns[tc.want]:
					got := -1
					if c != nil {
						got = c.id
					}
					t.Fatalf("picked conn %d, want %d", got, tc.want)
				}
			}
		})
	}
}
