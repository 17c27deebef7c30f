package upstream

import (
	"context"
	"errors"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"xdoh/forwarder/upstream/upstreamtest"
)

// Regression (review): a server that accepted the connection and SETTINGS
// but then answered neither streams nor PINGs kept the connection forever;
// every query on it timed out. After a stream times out, a PING without ACK
// must replace the connection, and queries then succeed on a new one.
func TestDoHPingAfterStreamTimeoutReplacesConnection(t *testing.T) {
	f := upstreamtest.StartFakeH2(t, nil, func(fc *upstreamtest.FakeConn, conn int, id uint32, q *dns.Msg) {
		if conn > 1 {
			fc.Respond(id, q)
		}
	})
	// The first connection answers the PING of its handshake, then goes
	// silent: the idle keepalive (off here) would not notice it.
	f.SetAckPing(func(conn, n int) bool { return conn > 1 || n == 1 })
	u := newTestDoH(t, f.URL(), Options{Conns: 1, Timeout: 300 * time.Millisecond, PingTimeout: 50 * time.Millisecond,
		PingInterval: -1, Prewarm: true})
	waitFor(t, "handshake PING answered", func() bool { return u.RTT() > 0 })

	_, err := Exchange(context.Background(), u, makeQuery(t, "stuck.example.", 1))
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("error %v, want ErrTimeout", err)
	}
	// At once, while the PING is out: this query goes to the silent
	// connection, fails with it and is retried on a new one.
	start := time.Now()
	resp, err := Exchange(context.Background(), u, makeQuery(t, "next.example.", 2))
	if err != nil {
		t.Fatalf("query after the timeout: %v", err)
	}
	checkAnswer(t, resp, "next.example.", 2)
	if el := time.Since(start); el > 250*time.Millisecond {
		t.Errorf("took %v: want the PING timeout (50ms) plus a redial", el)
	}
	if n := f.NConn.Load(); n != 2 {
		t.Errorf("%d connections, want 2: the silent one must be replaced", n)
	}
	if p := f.Pings.Load(); p < 3 {
		t.Errorf("server saw %d PINGs, want at least 3 (two handshakes, one after the timeout)", p)
	}
	for i := range 5 {
		if _, err := Exchange(context.Background(), u, makeQuery(t, "later.example.", uint16(i))); err != nil {
			t.Fatal(err)
		}
	}
	if n := f.NConn.Load(); n != 2 {
		t.Errorf("%d connections after more queries, want 2", n)
	}
}

func TestDoHPingTimeout(t *testing.T) {
	tests := []struct {
		name     string
		interval time.Duration
		ack      func(conn, n int) bool
	}{
		// The handshake's PING is never answered.
		{name: "no ACK ever", interval: -1, ack: func(conn, n int) bool { return conn > 1 }},
		// Idle keepalive: the first PING after the handshake is not answered.
		{name: "idle PING unanswered", interval: 50 * time.Millisecond, ack: func(conn, n int) bool { return conn > 1 || n == 1 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := upstreamtest.StartFakeH2(t, nil, func(fc *upstreamtest.FakeConn, conn int, id uint32, q *dns.Msg) { fc.Respond(id, q) })
			f.SetAckPing(tt.ack)
			u := newTestDoH(t, f.URL(), Options{Conns: 1, PingInterval: tt.interval, PingTimeout: 50 * time.Millisecond})
			if _, err := Exchange(context.Background(), u, makeQuery(t, "a.example.", 1)); err != nil {
				t.Fatal(err)
			}
			first := u.pool.slots[0].conn.Load()
			waitFor(t, "connection given up", first.closing.Load)
			first.mu.Lock()
			err := first.err
			first.mu.Unlock()
			if !errors.Is(err, ErrConnClosed) {
				t.Errorf("connection died with %v, want ErrConnClosed", err)
			}
			resp, err := Exchange(context.Background(), u, makeQuery(t, "b.example.", 2))
			if err != nil {
				t.Fatal(err)
			}
			checkAnswer(t, resp, "b.example.", 2)
			if n := f.NConn.Load(); n != 2 {
				t.Errorf("%d connections, want 2", n)
			}
		})
	}
}

func TestDoHIdlePingMeasuresRTT(t *testing.T) {
	f := upstreamtest.StartFakeH2(t, nil, func(fc *upstreamtest.FakeConn, conn int, id uint32, q *dns.Msg) { fc.Respond(id, q) })
	u := newTestDoH(t, f.URL(), Options{Conns: 1, PingInterval: 20 * time.Millisecond})
	if rtt := u.RTT(); rtt != 0 {
		t.Errorf("RTT %v before any connection, want 0", rtt)
	}
	if _, err := Exchange(context.Background(), u, makeQuery(t, "a.example.", 1)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "idle PINGs", func() bool { return f.Pings.Load() >= 4 })
	if rtt := u.RTT(); rtt <= 0 || rtt > time.Second {
		t.Errorf("RTT %v, want a small positive duration", rtt)
	}
	if n := f.NConn.Load(); n != 1 {
		t.Errorf("%d connections, want 1: answered PINGs keep it", n)
	}
}

func TestDoHNoIdlePingWhileBusy(t *testing.T) {
	f := upstreamtest.StartFakeH2(t, nil, func(fc *upstreamtest.FakeConn, conn int, id uint32, q *dns.Msg) { fc.Respond(id, q) })
	u := newTestDoH(t, f.URL(), Options{Conns: 1, PingInterval: 200 * time.Millisecond})
	deadline := time.Now().Add(500 * time.Millisecond)
	for i := 0; time.Now().Before(deadline); i++ {
		if _, err := Exchange(context.Background(), u, makeQuery(t, "busy.example.", uint16(i))); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if p := f.Pings.Load(); p != 1 {
		t.Errorf("server saw %d PINGs on a busy connection, want 1 (the handshake's)", p)
	}
}

func TestRecordRTT(t *testing.T) {
	var d DoH
	for _, tt := range []struct {
		sample, want time.Duration
	}{
		{sample: 100 * time.Millisecond, want: 100 * time.Millisecond}, // first sample taken as is
		{sample: 200 * time.Millisecond, want: 125 * time.Millisecond},
		{sample: 125 * time.Millisecond, want: 125 * time.Millisecond},
		{sample: 0, want: 125*time.Millisecond - 125*time.Millisecond/4},
	} {
		d.recordRTT(tt.sample)
		if got := d.RTT(); got != tt.want {
			t.Errorf("after %v: RTT %v, want %v", tt.sample, got, tt.want)
		}
	}
}

func TestDoHPrewarm(t *testing.T) {
	f := upstreamtest.StartFakeH2(t, nil, func(fc *upstreamtest.FakeConn, conn int, id uint32, q *dns.Msg) { fc.Respond(id, q) })
	start := time.Now()
	u := newTestDoH(t, f.URL(), Options{Conns: 3, Prewarm: true})
	if el := time.Since(start); el > 50*time.Millisecond {
		t.Errorf("New took %v: prewarming must not block", el)
	}
	waitFor(t, "3 connections before the first exchange", func() bool { return f.NConn.Load() == 3 })
	waitFor(t, "connections in their slots", func() bool {
		for i := range u.pool.slots {
			if u.pool.slots[i].conn.Load() == nil {
				return false
			}
		}
		return true
	})
	var wg sync.WaitGroup
	for i := range 30 {
		wg.Go(func() {
			if _, err := Exchange(context.Background(), u, makeQuery(t, "p.example.", uint16(i))); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if n := f.NConn.Load(); n != 3 {
		t.Errorf("%d connections, want 3", n)
	}
}

func TestPrewarmCloseCancelsDials(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0") // accepts, never speaks TLS
	if err != nil {
		t.Fatal(err)
	}
	var held sync.WaitGroup
	var mu sync.Mutex
	var accepted []net.Conn
	held.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			accepted = append(accepted, c)
			mu.Unlock()
		}
	})
	defer func() {
		ln.Close()
		held.Wait()
		for _, c := range accepted {
			c.Close()
		}
	}()
	before := runtime.NumGoroutine()
	for _, target := range []string{"https://" + ln.Addr().String() + "/dns-query", "tcp://" + ln.Addr().String()} {
		u, err := New(target, Options{RootCAs: upstreamtest.PKI(t).Pool, Conns: 2, Prewarm: true, Timeout: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		if target[0] == 'h' {
			waitFor(t, "dials under way", func() bool {
				mu.Lock()
				defer mu.Unlock()
				return len(accepted) >= 2
			})
		}
		start := time.Now()
		u.Close()
		if el := time.Since(start); el > time.Second {
			t.Errorf("%s: Close took %v, want it to cancel the dials", target, el)
		}
	}
	waitGoroutines(t, before)
}

func TestBackoffJitter(t *testing.T) {
	now := time.Unix(1000, 0)
	bases := []time.Duration{50, 100, 200, 400, 800, 1600, 2000, 2000}
	for _, tt := range []struct {
		name   string
		r      float64
		factor float64
	}{
		{name: "lowest", r: 0, factor: 0.8},
		{name: "middle", r: 0.5, factor: 1},
		{name: "highest", r: 0.999999, factor: 1.2},
	} {
		t.Run(tt.name, func(t *testing.T) {
			b := backoff{rand: func() float64 { return tt.r }}
			for i, base := range bases {
				b.record(errors.New("refused"), now)
				got := b.retryAt.Sub(now)
				want := time.Duration(float64(base*time.Millisecond) * tt.factor)
				if d := got - want; d < -time.Microsecond || d > time.Microsecond {
					t.Errorf("failure %d: delay %v, want %v", i+1, got, want)
				}
			}
			b.record(nil, now)
			if err := b.check(now); err != nil {
				t.Errorf("after a success: %v", err)
			}
		})
	}
	// The real source stays within ±20% and is not constant.
	b := backoff{}
	seen := map[time.Duration]bool{}
	for range 200 {
		b.failures = 0
		b.record(errors.New("refused"), now)
		d := b.retryAt.Sub(now)
		if d < 40*time.Millisecond || d > 60*time.Millisecond {
			t.Fatalf("first delay %v outside 50ms ±20%%", d)
		}
		seen[d] = true
	}
	if len(seen) < 10 {
		t.Errorf("only %d distinct delays in 200 draws", len(seen))
	}
}
