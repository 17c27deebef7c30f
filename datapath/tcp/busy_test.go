package tcp

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"
)

// busyLog records Busy calls.
type busyLog struct {
	mu    sync.Mutex
	calls []bool
	level int // trues minus falses
}

func (b *busyLog) busy(v bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.calls = append(b.calls, v)
	if v {
		b.level++
	} else {
		b.level--
	}
}

func (b *busyLog) state() (int, []bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.level, append([]bool(nil), b.calls...)
}

func (b *busyLog) waitLevel(t *testing.T, want int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		level, calls := b.state()
		if level == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("Busy level %d (calls %v), want %d", level, calls, want)
		}
		time.Sleep(time.Millisecond)
	}
}

// stopIdle stops s and wants every Busy hold ended.
func (b *busyLog) stopIdle(t *testing.T, s *Server, what string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := s.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if level, calls := b.state(); level != 0 {
		t.Fatalf("%s: level %d (calls %v), want 0", what, level, calls)
	}
}

// TestBusyTCP: the first connection reports busy, the last one's close
// reports idle (with two loops, which SO_REUSEPORT may give a share of the
// connections each); connections still open at Stop are reported idle by the
// time Stop returns.
func TestBusyTCP(t *testing.T) {
	var b busyLog
	s := startServer(t, Config{Name: "t", Addrs: []string{freePort(t, "127.0.0.1")}, Loops: 2, Busy: b.busy})
	addr := s.Addrs()[0]
	if level, calls := b.state(); level != 0 || len(calls) != 0 {
		t.Fatalf("before any connection: level %d, calls %v", level, calls)
	}

	dial := func() net.Conn {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	for round := range 3 {
		conns := make([]net.Conn, 20)
		var wg sync.WaitGroup
		for i := range conns {
			wg.Go(func() { conns[i] = dial() })
		}
		wg.Wait()
		b.waitLevel(t, 1)
		waitConns(t, s, 20)
		if level, _ := b.state(); level != 1 {
			t.Fatalf("round %d: level %d with 20 connections open, want 1", round, level)
		}
		for _, c := range conns {
			c.Close()
		}
		b.waitLevel(t, 0)
	}
	if _, calls := b.state(); len(calls) < 6 {
		t.Fatalf("calls %v: want at least one busy and one idle per round", calls)
	}

	c := dial()
	defer c.Close()
	b.waitLevel(t, 1)
	b.stopIdle(t, s, "after Stop with a connection open")
}

// TestBusyReleasedByFailedStop: a Stop that gives up (its context already
// done) still ends every hold on Busy before it returns.
func TestBusyReleasedByFailedStop(t *testing.T) {
	var b busyLog
	s := startServer(t, Config{Name: "t", Addrs: []string{freePort(t, "127.0.0.1")}, Busy: b.busy})
	c, err := net.Dial("tcp", s.Addrs()[0])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	waitConns(t, s, 1)
	b.waitLevel(t, 1)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err = s.Stop(ctx)
	if level, calls := b.state(); level != 0 {
		t.Fatalf("after Stop (err %v): level %d (calls %v), want 0", err, level, calls)
	}
}

// waitConns waits until s has n TCP connections open.
func waitConns(t *testing.T, s *Server, n int64) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); s.Stats().TCPConns != n; {
		if time.Now().After(deadline) {
			t.Fatalf("%d TCP connections open, want %d", s.Stats().TCPConns, n)
		}
		time.Sleep(time.Millisecond)
	}
}
