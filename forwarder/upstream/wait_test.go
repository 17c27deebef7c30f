package upstream

import (
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/net/http2"

	"xdoh/forwarder/upstream/upstreamtest"
)

// Tests of the pools' wait queue (pool.go): queries that no connection can
// take wait in a bounded FIFO, without a goroutine each, until a dial
// completes or a stream frees up.

func (p *connPool[E, C]) waiting() int { return int(p.nwait.Load()) }

// holdDials makes the pool's dials wait until release is called (at the
// latest when the test ends, before the upstream is closed), and then fail
// with err if it is not nil.
func (p *connPool[E, C]) holdDials(t testing.TB, err error) (release func()) {
	gate := make(chan struct{})
	var once sync.Once
	release = func() { once.Do(func() { close(gate) }) }
	t.Cleanup(release)
	dial := p.dial
	p.dial = func() (C, error) {
		<-gate
		if err != nil {
			return nil, err
		}
		return dial()
	}
	return release
}

// waitPool is what the tests see of a connPool, whatever its connections.
type waitPool interface {
	waiting() int
	holdDials(t testing.TB, err error) (release func())
}

// waitTarget is an upstream with one connection (DoH, or Do53 TCP), the
// pool its queries wait in, and the names of the queries its server got
// over that connection, in order.
type waitTarget struct {
	u       Upstream
	pool    waitPool
	ordered bool // the queries reach the pool in the order submitted
	seen    func() []string
}

// waitTargets are the ways of reaching a pool: DoH, Do53 over TCP, and
// Do53 over UDP whose answers are truncated ("tc" names), so that the
// queries come to the TCP pool from the UDP socket's reader.
var waitTargets = []struct {
	name  string
	start func(t *testing.T, opts Options) waitTarget
}{
	{name: "DoH", start: func(t *testing.T, opts Options) waitTarget {
		var names recorder
		f := upstreamtest.StartFakeH2(t, nil, func(fc *upstreamtest.FakeConn, _ int, id uint32, q *dns.Msg) {
			names.add(q.Question[0].Name)
			fc.Respond(id, q)
		})
		u := newTestDoH(t, f.URL(), opts)
		return waitTarget{u: u, pool: &u.pool, ordered: true, seen: names.get}
	}},
	{name: "Do53 TCP", start: func(t *testing.T, opts Options) waitTarget {
		var names recorder
		f := upstreamtest.StartDo53Fault(t, nil, func(_ *upstreamtest.Do53Fault, _ int, q *dns.Msg) upstreamtest.TCPAction {
			names.add(q.Question[0].Name)
			return upstreamtest.TCPAnswer
		})
		u := newTestDo53(t, f.Target(true), opts)
		return waitTarget{u: u, pool: &u.tcp, ordered: true, seen: names.get}
	}},
	{name: "Do53 UDP truncated", start: func(t *testing.T, opts Options) waitTarget {
		var names recorder
		f := upstreamtest.StartDo53Fault(t, upstreamtest.UDPTruncate, func(_ *upstreamtest.Do53Fault, _ int, q *dns.Msg) upstreamtest.TCPAction {
			names.add(q.Question[0].Name)
			return upstreamtest.TCPAnswer
		})
		u := newTestDo53(t, f.Target(false), opts)
		return waitTarget{u: u, pool: &u.tcp, seen: names.get}
	}},
}

type recorder struct {
	mu    sync.Mutex
	names []string
}

func (r *recorder) add(name string) {
	r.mu.Lock()
	r.names = append(r.names, name)
	r.mu.Unlock()
}

func (r *recorder) get() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.names)
}

// tcNames names query i so that upstreamtest.UDPTruncate truncates it.
func tcNames(i int) string { return fmt.Sprintf("tc%d.example.", i) }

// Queries submitted while the only connection dials all wait, at no
// goroutine each, and are answered once it is up, in the order they came.
func TestSubmitWaitsForDial(t *testing.T) {
	const n = 200
	for _, tt := range waitTargets {
		t.Run(tt.name, func(t *testing.T) {
			w := tt.start(t, Options{Conns: 1, Timeout: 10 * time.Second})
			release := w.pool.holdDials(t, nil)
			b := newAsyncBurst(t, w.u, n, tcNames)
			b.submit(0, 0)
			waitFor(t, "the first query waiting", func() bool { return w.pool.waiting() == 1 })
			before := runtime.NumGoroutine()
			for i := 1; i < n; i++ {
				b.submit(i, 0)
			}
			waitFor(t, "every query waiting", func() bool { return w.pool.waiting() == n })
			if d := runtime.NumGoroutine() - before; d > 5 {
				t.Errorf("%d more goroutines with %d queries waiting, want none per query", d, n)
			}
			release()
			b.wait(t, 10*time.Second)
			b.check(t, 10*time.Second, always(answered))
			b.checkOnce(t)
			if q := w.pool.waiting(); q != 0 {
				t.Errorf("%d queries still waiting", q)
			}
			seen := w.seen()
			if len(seen) != n {
				t.Fatalf("server got %d queries, want %d", len(seen), n)
			}
			if w.ordered { // else they came in the order of the UDP answers
				for i, name := range seen {
					if name != tcNames(i) {
						t.Fatalf("query %d at the server is %s, want %s: waiting queries go in order", i, name, tcNames(i))
					}
				}
			}
		})
	}
}

// Beyond maxWait waiting queries, Submit fails with ErrBusy at once; the
// waiting ones are not disturbed.
func TestSubmitWaitQueueFull(t *testing.T) {
	for _, tt := range waitTargets {
		t.Run(tt.name, func(t *testing.T) {
			w := tt.start(t, Options{Conns: 1, Timeout: 10 * time.Second, MaxWait: 3})
			release := w.pool.holdDials(t, nil)
			b := newAsyncBurst(t, w.u, 4, tcNames)
			for i := range 3 {
				b.submit(i, 0)
			}
			waitFor(t, "three queries waiting", func() bool { return w.pool.waiting() == 3 })
			b.submit(3, 0)
			waitFor(t, "the fourth query failed", func() bool { return b.calls[3].calls.Load() == 1 })
			if w.pool.waiting() != 3 {
				t.Errorf("%d queries waiting, want 3", w.pool.waiting())
			}
			release()
			b.wait(t, 5*time.Second)
			b.check(t, 10*time.Second, func(name string) expect {
				if name == tcNames(3) {
					return expect{is: ErrBusy}
				}
				return answered
			})
			if took := b.calls[3].took; took > time.Second {
				t.Errorf("ErrBusy after %v, want at once", took)
			}
			if got := len(w.seen()); got != 3 {
				t.Errorf("server got %d queries, want 3", got)
			}
		})
	}
}

// A DoH target that takes nothing for a moment while queries keep coming
// (here its connection's dial is held) holds them all, many more than its
// connection has streams, and answers them when it comes back: by default
// the wait queue is bounded by DefaultMaxWait, not by the connections'
// streams, so that a stall of a tenth of a second at a few thousand
// queries per second is not a burst of ErrBusy. (Do53 differs: a full UDP
// socket or TCP connection, 1024 queries, fails the next one with ErrBusy.)
func TestDoHSubmitWaitOutlastsStall(t *testing.T) {
	const n = 1500 // several times one connection's streams (maxStreamsPerConn)
	w := waitTargets[0].start(t, Options{Conns: 1, Timeout: 10 * time.Second})
	release := w.pool.holdDials(t, nil)
	b := newAsyncBurst(t, w.u, n, tcNames)
	for i := range n {
		b.submit(i, 0)
	}
	waitFor(t, "every query waiting", func() bool { return w.pool.waiting() == n })
	release()
	b.wait(t, 10*time.Second)
	b.check(t, 10*time.Second, func(string) expect { return answered })
}

// A waiting query leaves the queue at its timeout (ErrTimeout) or on
// Cancel (no callback), and is never sent.
func TestSubmitWaitingTimeoutAndCancel(t *testing.T) {
	const short = 150 * time.Millisecond
	for _, tt := range waitTargets {
		t.Run(tt.name, func(t *testing.T) {
			w := tt.start(t, Options{Conns: 1, Timeout: 10 * time.Second})
			release := w.pool.holdDials(t, nil)
			b := newAsyncBurst(t, w.u, 2, func(i int) string { return tcNames(2 * i) })
			b.submit(0, short)
			var cancelled atomic.Int32
			h := w.u.Submit(makeQuery(t, tcNames(1), 1), 0, func([]byte, error) { cancelled.Add(1) })
			b.submit(1, 0)
			waitFor(t, "three queries waiting", func() bool { return w.pool.waiting() == 3 })
			h.Cancel()
			if q := w.pool.waiting(); q != 2 {
				t.Errorf("%d queries waiting after Cancel, want 2", q)
			}
			waitFor(t, "the short query's callback", func() bool { return b.calls[0].calls.Load() == 1 })
			if q := w.pool.waiting(); q != 1 {
				t.Errorf("%d queries waiting after a timeout, want 1", q)
			}
			release()
			b.wait(t, 5*time.Second)
			time.Sleep(50 * time.Millisecond)
			if n := cancelled.Load(); n != 0 {
				t.Errorf("the cancelled query's callback called %d times", n)
			}
			if p := b.calls[0].problem(expect{is: ErrTimeout}, short, w.u.String()); p != "" {
				t.Errorf("the query that timed out: %s", p)
			}
			if p := b.calls[1].problem(answered, 10*time.Second, w.u.String()); p != "" {
				t.Errorf("the query that waited on: %s", p)
			}
			if seen := w.seen(); !slices.Equal(seen, []string{tcNames(2)}) {
				t.Errorf("server got %v, want only %s", seen, tcNames(2))
			}
			b.checkOnce(t)
		})
	}
}

// Close fails the waiting queries with ErrClosed at once, without waiting
// for the dial.
func TestSubmitCloseFailsWaiting(t *testing.T) {
	const n = 10
	for _, tt := range waitTargets {
		t.Run(tt.name, func(t *testing.T) {
			w := tt.start(t, Options{Conns: 1, Timeout: 10 * time.Second})
			release := w.pool.holdDials(t, nil)
			b := newAsyncBurst(t, w.u, n, tcNames)
			for i := range n {
				b.submit(i, 0)
			}
			waitFor(t, "queries waiting", func() bool { return w.pool.waiting() == n })
			closed := make(chan struct{})
			go func() {
				w.u.Close() // waits for the held dial
				close(closed)
			}()
			b.wait(t, 2*time.Second)
			b.check(t, 10*time.Second, always(expect{is: ErrClosed}))
			if s := slowest(b); s > time.Second {
				t.Errorf("slowest callback after %v, want them at Close", s)
			}
			release()
			<-closed
			if got := len(w.seen()); got != 0 {
				t.Errorf("server got %d queries, want none", got)
			}
		})
	}
}

// A dial that fails fails the queries waiting for it with its error, at
// once; during the backoff that follows, a query fails at once too.
func TestSubmitDialErrorFailsWaiting(t *testing.T) {
	const n = 10
	boom := errors.New("dial boom")
	for _, tt := range waitTargets {
		t.Run(tt.name, func(t *testing.T) {
			w := tt.start(t, Options{Conns: 1, Timeout: 10 * time.Second})
			release := w.pool.holdDials(t, boom)
			b := newAsyncBurst(t, w.u, n+1, tcNames)
			for i := range n {
				b.submit(i, 0)
			}
			waitFor(t, "queries waiting", func() bool { return w.pool.waiting() == n })
			release()
			waitFor(t, "the waiting queries' callbacks", func() bool {
				for i := range n {
					if b.calls[i].calls.Load() == 0 {
						return false
					}
				}
				return true
			})
			b.submit(n, 0) // backing off: fails without a dial
			b.wait(t, 2*time.Second)
			b.check(t, 10*time.Second, always(expect{is: boom, text: "dialing"}))
			if s := slowest(b); s > time.Second {
				t.Errorf("slowest callback after %v, want them at the dial's failure", s)
			}
		})
	}
}

func slowest(b *asyncBurst) time.Duration {
	var s time.Duration
	for i := range b.calls {
		s = max(s, b.calls[i].took)
	}
	return s
}

// DoH queries beyond the server's MAX_CONCURRENT_STREAMS wait in the
// queue, at no goroutine each, and take the streams that free up in the
// order they came.
func TestDoHSubmitWaitsForStream(t *testing.T) {
	type held struct {
		fc *upstreamtest.FakeConn
		id uint32
		q  *dns.Msg
	}
	var mu sync.Mutex
	var reqs []held
	var names []string
	f := upstreamtest.StartFakeH2(t, []http2.Setting{{ID: http2.SettingMaxConcurrentStreams, Val: 2}},
		func(fc *upstreamtest.FakeConn, _ int, id uint32, q *dns.Msg) {
			mu.Lock()
			reqs = append(reqs, held{fc, id, q})
			names = append(names, q.Question[0].Name)
			mu.Unlock()
		})
	u := newTestDoH(t, f.URL(), Options{Conns: 1, Timeout: 10 * time.Second})
	warmUp(t, u)
	const n = 100
	b := newAsyncBurst(t, u, n, numberedNames("s"))
	before := runtime.NumGoroutine()
	for i := range n {
		b.submit(i, 0)
	}
	if q := u.pool.waiting(); q != n-2 {
		t.Errorf("%d queries waiting, want %d", q, n-2)
	}
	if d := runtime.NumGoroutine() - before; d > 5 {
		t.Errorf("%d more goroutines with %d queries waiting, want none per query", d, n)
	}
	var nAnswered atomic.Int32
	for nAnswered.Load() < n {
		waitFor(t, "requests at the server", func() bool {
			mu.Lock()
			defer mu.Unlock()
			return len(reqs) > 0
		})
		mu.Lock()
		for _, r := range reqs {
			r.fc.Respond(r.id, r.q)
			nAnswered.Add(1)
		}
		reqs = reqs[:0]
		mu.Unlock()
	}
	b.wait(t, 5*time.Second)
	b.check(t, u.timeout, always(answered))
	b.checkOnce(t)
	for i, name := range names {
		if want := numberedNames("s")(i); name != want {
			t.Fatalf("query %d at the server is %s, want %s: waiting queries go in order", i, name, want)
		}
	}
}
