package upstream

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"xdoh/forwarder/upstream/upstreamtest"
)

func TestDo53(t *testing.T) {
	srv := upstreamtest.StartDo53Server(t)
	tests := []struct {
		name    string
		target  string
		qname   string
		answers int
	}{
		{name: "UDP", target: "udp://" + srv.Addr, qname: "a.example.", answers: 1},
		{name: "bare address", target: srv.Addr, qname: "b.example.", answers: 1},
		{name: "TCP only", target: "tcp://" + srv.Addr, qname: "c.example.", answers: 1},
		{name: "truncated over UDP, retried over TCP", target: srv.Addr, qname: "big.example.", answers: 40},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u, err := New(tt.target, Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer u.Close()
			resp, err := Exchange(context.Background(), u, makeQuery(t, tt.qname, 0xABCD))
			if err != nil {
				t.Fatal(err)
			}
			m := new(dns.Msg)
			if err := m.Unpack(resp); err != nil {
				t.Fatal(err)
			}
			if m.Id != 0xABCD || m.Truncated || len(m.Answer) != tt.answers {
				t.Errorf("ID %#x TC %v, %d answers; want 0xabcd, false, %d", m.Id, m.Truncated, len(m.Answer), tt.answers)
			}
			if tt.answers == 1 {
				checkAnswer(t, resp, tt.qname, 0xABCD)
			}
		})
	}
}

func TestDo53IgnoresMismatchedDatagrams(t *testing.T) {
	addr := upstreamtest.SpoofingUDPServer(t)
	u, err := New(addr, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	for i := range 5 {
		resp, err := Exchange(context.Background(), u, makeQuery(t, "real.example.", uint16(i)))
		if err != nil {
			t.Fatal(err)
		}
		checkAnswer(t, resp, "real.example.", uint16(i))
	}
}

func TestDo53Timeout(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0") // never answers
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	u, err := New(pc.LocalAddr().String(), Options{Timeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	start := time.Now()
	_, err = Exchange(context.Background(), u, makeQuery(t, "a.example.", 1))
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("error %v, want ErrTimeout", err)
	}
	if el := time.Since(start); el > 400*time.Millisecond {
		t.Errorf("returned after %v", el)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	u2, _ := New(pc.LocalAddr().String(), Options{Timeout: 5 * time.Second})
	start = time.Now()
	_, err = Exchange(ctx, u2, makeQuery(t, "a.example.", 1))
	if !errors.Is(err, ErrTimeout) || time.Since(start) > 300*time.Millisecond {
		t.Fatalf("error %v after %v, want ErrTimeout after about 50ms", err, time.Since(start))
	}

	ctx, cancel = context.WithCancel(context.Background())
	time.AfterFunc(30*time.Millisecond, cancel)
	_, err = Exchange(ctx, u2, makeQuery(t, "a.example.", 1))
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("error %v, want context.Canceled", err)
	}
}

func BenchmarkDo53UDPExchange(b *testing.B) {
	srv := upstreamtest.StartDo53Server(b)
	u, err := New(srv.Addr, Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer u.Close()
	q := makeQuery(b, "bench.example.", 1)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Exchange(context.Background(), u, q); err != nil {
			b.Fatal(err)
		}
	}
}

func newTestDo53(t testing.TB, target string, opts Options) *Do53 {
	t.Helper()
	u, err := New(target, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { u.Close() })
	return u.(*Do53)
}

// exchangeMany runs n concurrent exchanges with distinct names and checks
// every answer.
func exchangeMany(t *testing.T, u Upstream, n int, prefix string) {
	t.Helper()
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			name := fmt.Sprintf("%s%d.example.", prefix, i)
			id := uint16(i * 13)
			resp, err := Exchange(context.Background(), u, makeQuery(t, name, id))
			if err != nil {
				t.Error(err)
				return
			}
			checkAnswer(t, resp, name, id)
		})
	}
	wg.Wait()
}

func TestDo53UDPPoolConcurrent(t *testing.T) {
	srv := upstreamtest.StartDo53Server(t)
	u := newTestDo53(t, srv.Addr, Options{Conns: 2, Timeout: 10 * time.Second})
	const n = 500
	exchangeMany(t, u, n, "u")
	if got := srv.Queries.Load(); got != n {
		t.Errorf("server saw %d queries, want %d", got, n)
	}
	if got := srv.Clients("udp"); got != 2 {
		t.Errorf("server saw %d UDP client sockets, want 2", got)
	}
}

func TestDo53UDPIgnoresSpoofedConcurrent(t *testing.T) {
	addr := upstreamtest.SpoofingUDPServer(t)
	u := newTestDo53(t, addr, Options{Conns: 1, Timeout: 10 * time.Second})
	// Concurrent queries on one socket: a datagram with a neighbour's ID
	// (the server's "ID+1") must still be rejected by its question.
	exchangeMany(t, u, 100, "s")
}

func TestDo53UDPBusy(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0") // never answers
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	u := newTestDo53(t, pc.LocalAddr().String(), Options{Conns: 1, Timeout: 300 * time.Millisecond})
	u.maxInflight = 2
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() { Exchange(context.Background(), u, makeQuery(t, "a.example.", 1)) })
	}
	waitFor(t, "two queries in flight", func() bool {
		c := u.udp[0].Load()
		if c == nil {
			return false
		}
		c.mu.Lock()
		defer c.mu.Unlock()
		return len(c.waiters) == 2
	})
	if _, err := Exchange(context.Background(), u, makeQuery(t, "b.example.", 2)); !errors.Is(err, ErrBusy) {
		t.Errorf("third query: %v, want ErrBusy", err)
	}
	wg.Wait()
}

func TestDo53UDPSocketRetires(t *testing.T) {
	srv := upstreamtest.StartDo53Server(t)
	u := newTestDo53(t, srv.Addr, Options{Conns: 1, Timeout: 200 * time.Millisecond})
	u.udpMaxUses = 10
	first := u.udpConnForTest(t)
	for i := range 25 {
		resp, err := Exchange(context.Background(), u, makeQuery(t, "r.example.", uint16(i)))
		if err != nil {
			t.Fatal(err)
		}
		checkAnswer(t, resp, "r.example.", uint16(i))
	}
	if got := srv.Clients("udp"); got != 3 {
		t.Errorf("server saw %d UDP client sockets, want 3 (10 queries each)", got)
	}
	waitFor(t, "retired socket closed", func() bool {
		first.mu.Lock()
		defer first.mu.Unlock()
		return first.dead
	})
}

func (u *Do53) udpConnForTest(t *testing.T) *dnsConn {
	t.Helper()
	c, err := u.udpConn(0)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestDo53TCPPipelining(t *testing.T) {
	srv := upstreamtest.StartDo53Server(t)
	u := newTestDo53(t, "tcp://"+srv.Addr, Options{Conns: 2, Timeout: 10 * time.Second})
	const n = 200
	exchangeMany(t, u, n, "t")
	if got := srv.Queries.Load(); got != n {
		t.Errorf("server saw %d queries, want %d", got, n)
	}
	if got := srv.Clients("tcp"); got > 2 {
		t.Errorf("server saw %d TCP connections for %d queries, want at most 2", got, n)
	}
}

func TestDo53TCPServerClosesMidFlight(t *testing.T) {
	var seen atomic.Int32
	srv := upstreamtest.StartTCPDNSServer(t, func(conn int, q *dns.Msg) upstreamtest.TCPAction {
		if conn > 1 {
			return upstreamtest.TCPAnswer
		}
		if seen.Add(1) < 20 {
			return upstreamtest.TCPIgnore // in flight on the first connection
		}
		return upstreamtest.TCPClose
	})
	u := newTestDo53(t, "tcp://"+srv.Addr(), Options{Conns: 1, Timeout: 10 * time.Second})
	start := time.Now()
	exchangeMany(t, u, 20, "m")
	if el := time.Since(start); el > 2*time.Second {
		t.Errorf("took %v: queries on a closed connection must fail at once and be retried", el)
	}
	if n := srv.NConn.Load(); n != 2 {
		t.Errorf("%d connections, want 2", n)
	}
}

func TestDo53TCPClosedEveryTimeFailsFast(t *testing.T) {
	srv := upstreamtest.StartTCPDNSServer(t, func(int, *dns.Msg) upstreamtest.TCPAction { return upstreamtest.TCPClose })
	u := newTestDo53(t, "tcp://"+srv.Addr(), Options{Conns: 1, Timeout: 10 * time.Second})
	for round := 1; round <= 2; round++ {
		start := time.Now()
		_, err := Exchange(context.Background(), u, makeQuery(t, "x.example.", 1))
		if !errors.Is(err, ErrConnClosed) || !Retryable(err) {
			t.Fatalf("error %v, want a retryable ErrConnClosed", err)
		}
		if el := time.Since(start); el > time.Second {
			t.Errorf("failed after %v, want at once", el)
		}
		if n := srv.NConn.Load(); n != int32(2*round) {
			t.Errorf("round %d: %d connections, want %d (one retry per query, redial after)", round, n, 2*round)
		}
	}
}

func TestDo53TCPIdleClose(t *testing.T) {
	srv := upstreamtest.StartTCPDNSServer(t, func(int, *dns.Msg) upstreamtest.TCPAction { return upstreamtest.TCPAnswer })
	u := newTestDo53(t, "tcp://"+srv.Addr(), Options{Conns: 1})
	u.idleTimeout = 100 * time.Millisecond
	if _, err := Exchange(context.Background(), u, makeQuery(t, "a.example.", 1)); err != nil {
		t.Fatal(err)
	}
	c := u.tcp.slots[0].conn.Load()
	waitFor(t, "idle connection closed", c.closing.Load)
	if _, err := Exchange(context.Background(), u, makeQuery(t, "b.example.", 2)); err != nil {
		t.Fatal(err)
	}
	if n := srv.NConn.Load(); n != 2 {
		t.Errorf("%d connections, want 2", n)
	}
}

func TestDo53Prewarm(t *testing.T) {
	srv := upstreamtest.StartTCPDNSServer(t, func(int, *dns.Msg) upstreamtest.TCPAction { return upstreamtest.TCPAnswer })
	u := newTestDo53(t, "tcp://"+srv.Addr(), Options{Conns: 3, Prewarm: true})
	waitFor(t, "3 connections before the first exchange", func() bool { return srv.NConn.Load() == 3 })
	waitFor(t, "connections in their slots", func() bool {
		for i := range u.tcp.slots {
			if u.tcp.slots[i].conn.Load() == nil {
				return false
			}
		}
		return true
	})
	exchangeMany(t, u, 30, "p")
	if n := srv.NConn.Load(); n != 3 {
		t.Errorf("%d connections, want 3", n)
	}
}

func BenchmarkDo53UDPExchangeParallel(b *testing.B) {
	srv := upstreamtest.StartDo53Server(b)
	u, err := New(srv.Addr, Options{Timeout: 10 * time.Second})
	if err != nil {
		b.Fatal(err)
	}
	defer u.Close()
	q := makeQuery(b, "bench.example.", 1)
	b.ReportAllocs()
	b.SetParallelism(16)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := Exchange(context.Background(), u, q); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func BenchmarkDo53TCPExchange(b *testing.B) {
	srv := upstreamtest.StartDo53Server(b)
	u, err := New("tcp://"+srv.Addr, Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer u.Close()
	q := makeQuery(b, "bench.example.", 1)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Exchange(context.Background(), u, q); err != nil {
			b.Fatal(err)
		}
	}
}
