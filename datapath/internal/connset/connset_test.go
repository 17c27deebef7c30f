package connset

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"testing"
	"time"
)

type fakeConn struct {
	id              int
	drained, killed bool
}

var (
	a = netip.MustParseAddr("192.0.2.1")
	b = netip.MustParseAddr("2001:db8::1")
)

func TestLimits(t *testing.T) {
	tests := []struct {
		name             string
		total, perClient int
		adds             []netip.Addr
		want             []error
	}{
		{"total", 2, 0, []netip.Addr{a, b, a}, []error{nil, nil, ErrTotal}},
		{"per client", 10, 2, []netip.Addr{a, a, a, b}, []error{nil, nil, ErrPerClient, nil}},
		{"mapped counts as IPv4", 10, 1, []netip.Addr{a, netip.AddrFrom16(a.As16())}, []error{nil, ErrPerClient}},
		{"invalid address: total only", 2, 1, []netip.Addr{{}, {}, {}}, []error{nil, nil, ErrTotal}},
		{"no limits", 0, 0, []netip.Addr{a, a, a, a}, []error{nil, nil, nil, nil}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := New[*fakeConn](tt.total, tt.perClient)
			for i, addr := range tt.adds {
				if err := s.Add(&fakeConn{id: i}, addr); !errors.Is(err, tt.want[i]) {
					t.Errorf("add %d from %v: %v, want %v", i, addr, err, tt.want[i])
				}
			}
		})
	}
}

// TestForgetFreesSlots: a forgotten connection's slots (total and its
// client's) go to the next one; forgetting twice changes nothing.
func TestForgetFreesSlots(t *testing.T) {
	s := New[*fakeConn](2, 1)
	c1, c2 := &fakeConn{}, &fakeConn{}
	if err := s.Add(c1, a); err != nil {
		t.Fatal(err)
	}
	if err := s.Add(c2, a); !errors.Is(err, ErrPerClient) {
		t.Fatalf("second from a: %v", err)
	}
	if !s.Forget(c1) || s.Forget(c1) {
		t.Fatal("Forget reports wrong presence")
	}
	if s.Len() != 0 || s.Clients() != 0 {
		t.Fatalf("len %d clients %d after forget", s.Len(), s.Clients())
	}
	if err := s.Add(c2, a); err != nil {
		t.Fatalf("after forget: %v", err)
	}
	if err := s.Add(&fakeConn{}, b); err != nil {
		t.Fatal(err)
	}
	if err := s.Add(&fakeConn{}, netip.MustParseAddr("192.0.2.9")); !errors.Is(err, ErrTotal) {
		t.Fatalf("third: %v", err)
	}
}

// TestShutdownDrains: connections that end when asked end Shutdown
// without kill, and the set takes no more.
func TestShutdownDrains(t *testing.T) {
	s := New[*fakeConn](0, 0)
	conns := []*fakeConn{{id: 1}, {id: 2}, {id: 3}}
	for _, c := range conns {
		s.Add(c, a)
	}
	var wg sync.WaitGroup
	drain := func(c *fakeConn) {
		c.drained = true
		wg.Add(1)
		go func() { defer wg.Done(); s.Forget(c) }() // ends a little later
	}
	kill := func(c *fakeConn) { c.killed = true }
	if err := s.Shutdown(context.Background(), drain, kill); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	for _, c := range conns {
		if !c.drained || c.killed {
			t.Errorf("conn %d: drained %v killed %v", c.id, c.drained, c.killed)
		}
	}
	if err := s.Add(&fakeConn{}, a); !errors.Is(err, ErrClosed) {
		t.Errorf("add after Shutdown: %v", err)
	}
}

// TestShutdownKills: a connection that ignores drain is killed when the
// context ends, and Shutdown returns once it is forgotten.
func TestShutdownKills(t *testing.T) {
	s := New[*fakeConn](0, 0)
	good, stuck := &fakeConn{id: 1}, &fakeConn{id: 2}
	s.Add(good, a)
	s.Add(stuck, b)
	drain := func(c *fakeConn) {
		c.drained = true
		if c == good {
			s.Forget(c)
		}
	}
	kill := func(c *fakeConn) {
		c.killed = true
		go s.Forget(c)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := s.Shutdown(ctx, drain, kill); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown: %v, want the deadline", err)
	}
	if good.killed || !stuck.killed || s.Len() != 0 {
		t.Errorf("good killed %v, stuck killed %v, %d left", good.killed, stuck.killed, s.Len())
	}
}

// TestShutdownEmpty returns at once.
func TestShutdownEmpty(t *testing.T) {
	s := New[*fakeConn](1, 1)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.Shutdown(ctx, func(*fakeConn) { t.Error("drain") }, func(*fakeConn) { t.Error("kill") }); err != nil {
		t.Fatal(err)
	}
}

func BenchmarkAddForget(b *testing.B) {
	s := New[*fakeConn](1000, 64)
	c := &fakeConn{}
	b.ReportAllocs()
	for b.Loop() {
		s.Add(c, a)
		s.Forget(c)
	}
}
