package group

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// errTimeout is what afake reports when an attempt's timeout ends it (as
// forwarder/upstream's ErrTimeout, it does not wrap the context's error).
var errTimeout = errors.New("waiting for response: timeout")

// behaviour is what an afake does with each query.
type behaviour struct {
	resp   string        // the response, when err is nil
	err    error         // the error to fail with
	delay  time.Duration // before answering
	never  bool          // no answer: only the attempt's timeout (or ctx) ends it
	inline bool          // Submit answers inside the call, on the caller's goroutine

	holdSubmit chan struct{} // if set, Submit returns only once it is closed
}

func good() behaviour                              { return behaviour{resp: "G"} }
func says(resp string) behaviour                   { return behaviour{resp: resp} }
func errs() behaviour                              { return behaviour{err: errDown} }
func silent() behaviour                            { return behaviour{never: true} }
func after(d time.Duration, b behaviour) behaviour { b.delay = d; return b }
func inline(b behaviour) behaviour                 { b.inline = true; return b }

func (b behaviour) result() ([]byte, error) {
	if b.err != nil {
		return nil, b.err
	}
	return []byte(b.resp), nil // done owns the response
}

// afake is a programmable Exchanger that answers from timers, without a
// goroutine per query, as forwarder/upstream's do. It keeps the timeout and the
// stack depth of each Submit.
type afake struct {
	name                string
	submits             atomic.Int64
	cancels             atomic.Int64 // Submits cancelled before they answered
	mu                  sync.Mutex
	b                   behaviour
	timeouts            []time.Duration
	trackDepth          bool // record the stack depth of each Submit in depths
	depths              []int
	badTimeout, badCopy atomic.Bool
}

var _ Exchanger = (*afake)(nil)

func newAsync(name string, b behaviour) *afake { return &afake{name: name, b: b} }

func (f *afake) String() string { return f.name }

// afakeCall is one Submit: the first of its answer and its Cancel wins.
type afakeCall struct {
	f       *afake
	settled atomic.Bool
}

func (c *afakeCall) Cancel() {
	if c.settled.CompareAndSwap(false, true) {
		c.f.cancels.Add(1)
	}
}

func (f *afake) Submit(q []byte, timeout time.Duration, done0 func([]byte, error)) Canceler {
	f.submits.Add(1)
	f.mu.Lock()
	b := f.b
	f.timeouts = append(f.timeouts, timeout)
	if f.trackDepth {
		pcs := make([]uintptr, 1024)
		f.depths = append(f.depths, runtime.Callers(0, pcs))
	}
	f.mu.Unlock()
	call := &afakeCall{f: f}
	done := func(resp []byte, err error) {
		if call.settled.CompareAndSwap(false, true) {
			done0(resp, err)
		}
	}
	if timeout <= 0 {
		f.badTimeout.Store(true) // the contract asks for an answer within timeout
		done(nil, errTimeout)
		return nil
	}
	want := string(q)
	check := func() {
		if string(q) != want {
			f.badCopy.Store(true) // the caller changed the query before done
		}
	}
	switch {
	case b.inline:
		done(b.result())
		return nil
	case b.never || b.delay >= timeout:
		time.AfterFunc(timeout, func() { check(); done(nil, errTimeout) })
	default:
		time.AfterFunc(b.delay, func() { check(); done(b.result()) })
	}
	if b.holdSubmit != nil {
		<-b.holdSubmit // Submit returns late: its attempt may be overtaken first
	}
	return call
}

func (f *afake) attemptTimeouts() []time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]time.Duration(nil), f.timeouts...)
}

func asyncMembers(timeouts []time.Duration, fs ...*afake) []Member {
	ms := make([]Member, len(fs))
	for i, f := range fs {
		ms[i] = Member{Up: f}
		if i < len(timeouts) {
			ms[i].Timeout = timeouts[i]
		}
	}
	return ms
}

// asyncCall is one ExchangeAsync: what done got, and how often it ran.
type asyncCall struct {
	calls  atomic.Int32
	landed chan struct{}
	inside bool // done ran before ExchangeAsync returned
	resp   []byte
	from   string
	err    error
	took   time.Duration
}

// startAsync calls g.ExchangeAsync with a deadline d from now.
func startAsync(g *Group, query []byte, d time.Duration) *asyncCall {
	return startAsyncWith(g, query, d, classify)
}

func startAsyncWith(g *Group, query []byte, d time.Duration, cls func([]byte) Verdict) *asyncCall {
	c := &asyncCall{landed: make(chan struct{})}
	start := time.Now()
	var returned atomic.Bool
	g.ExchangeAsync(query, start.Add(d), cls, func(resp []byte, from string, err error) {
		if c.calls.Add(1) != 1 {
			return
		}
		c.inside = !returned.Load()
		c.resp, c.from, c.err, c.took = resp, from, err, time.Since(start)
		close(c.landed)
	})
	returned.Store(true)
	return c
}

// wait waits for c's done, failing after limit.
func (c *asyncCall) wait(t *testing.T, limit time.Duration) {
	t.Helper()
	select {
	case <-c.landed:
	case <-time.After(limit):
		t.Fatalf("done not called within %v", limit)
	}
}

// TestExchangeAsyncCases runs each case through ExchangeAsync with hedging
// off and with a hedge that never fires, and checks the answer, the error
// and the health records it leaves.
func TestExchangeAsyncCases(t *testing.T) {
	for _, tc := range []struct {
		name     string
		bs       []behaviour
		timeouts []time.Duration // members'
		deadline time.Duration
		want     string // response; "" for an error
		wantFrom string
		wantErrs []error
		failures []uint64
		attempts []uint64
	}{
		{name: "first answers", bs: []behaviour{good(), good()}, want: "G", wantFrom: "a",
			failures: []uint64{0, 0}, attempts: []uint64{1, 0}},
		{name: "error then good", bs: []behaviour{errs(), good()}, want: "G", wantFrom: "b",
			failures: []uint64{1, 0}, attempts: []uint64{1, 1}},
		{name: "bad then good", bs: []behaviour{says("X"), good()}, want: "G", wantFrom: "b",
			failures: []uint64{1, 0}, attempts: []uint64{1, 1}},
		{name: "fallback then good", bs: []behaviour{says("F"), good()}, want: "G", wantFrom: "b",
			failures: []uint64{0, 0}, attempts: []uint64{1, 1}},
		{name: "fallback kept when no good", bs: []behaviour{says("F"), errs()}, want: "F", wantFrom: "a",
			failures: []uint64{0, 1}, attempts: []uint64{1, 1}},
		{name: "first fallback", bs: []behaviour{says("Fa"), says("Fb")}, want: "Fa", wantFrom: "a",
			failures: []uint64{0, 0}, attempts: []uint64{1, 1}},
		{name: "fallback beats bad", bs: []behaviour{says("X"), says("F")}, want: "F", wantFrom: "b",
			failures: []uint64{1, 0}, attempts: []uint64{1, 1}},
		{name: "all fail", bs: []behaviour{errs(), says("X")}, wantFrom: "b", wantErrs: []error{ErrNoAnswer, ErrRejected},
			failures: []uint64{1, 1}, attempts: []uint64{1, 1}},
		{name: "all errors", bs: []behaviour{errs(), errs(), errs()}, wantFrom: "c", wantErrs: []error{ErrNoAnswer, errDown},
			failures: []uint64{1, 1, 1}, attempts: []uint64{1, 1, 1}},
		{name: "delayed error then delayed good", bs: []behaviour{after(5*time.Millisecond, errs()), after(5*time.Millisecond, good())},
			want: "G", wantFrom: "b", failures: []uint64{1, 0}, attempts: []uint64{1, 1}},
		{name: "member timeout", bs: []behaviour{silent(), good()}, timeouts: []time.Duration{20 * time.Millisecond},
			want: "G", wantFrom: "b", failures: []uint64{1, 0}, attempts: []uint64{1, 1}},
		{name: "slow but within its timeout", bs: []behaviour{after(10*time.Millisecond, good()), good()},
			timeouts: []time.Duration{200 * time.Millisecond}, want: "G", wantFrom: "a", failures: []uint64{0, 0}, attempts: []uint64{1, 0}},
		// No member timeout: a has the whole budget; the caller's deadline
		// ends it, which is not a failure of a, and b is never tried.
		{name: "caller deadline", bs: []behaviour{silent(), good()}, deadline: 50 * time.Millisecond,
			wantFrom: "a", wantErrs: []error{ErrNoAnswer, context.DeadlineExceeded}, failures: []uint64{0, 0}, attempts: []uint64{1, 0}},
		{name: "fallback, then caller deadline", bs: []behaviour{says("F"), silent(), good()}, deadline: 50 * time.Millisecond,
			want: "F", wantFrom: "a", failures: []uint64{0, 0, 0}, attempts: []uint64{1, 1, 0}},
		{name: "inline error then inline good", bs: []behaviour{inline(errs()), inline(good())}, want: "G", wantFrom: "b",
			failures: []uint64{1, 0}, attempts: []uint64{1, 1}},
		{name: "inline all fail", bs: []behaviour{inline(errs()), inline(says("X")), inline(errs())}, wantFrom: "c",
			wantErrs: []error{ErrNoAnswer, errDown}, failures: []uint64{1, 1, 1}, attempts: []uint64{1, 1, 1}},
		{name: "inline fallback then timer good", bs: []behaviour{inline(says("F")), after(time.Millisecond, good())}, want: "G", wantFrom: "b",
			failures: []uint64{0, 0}, attempts: []uint64{1, 1}},
	} {
		for _, m := range modes {
			t.Run(tc.name+"/"+m.name, func(t *testing.T) {
				deadline := tc.deadline
				if deadline == 0 {
					deadline = time.Second
				}
				names := "abcdefgh"
				var af []*afake
				for i, b := range tc.bs {
					af = append(af, newAsync(names[i:i+1], b))
				}
				ag := mustNew(t, asyncMembers(tc.timeouts, af...), Config{HedgeDelay: m.hedge})
				c := startAsync(ag, []byte("q"), deadline)
				c.wait(t, deadline+time.Second)

				if string(c.resp) != tc.want || c.from != tc.wantFrom || (c.err == nil) != (tc.wantErrs == nil) {
					t.Errorf("got %q from %q, %v; want %q from %q, errors %v", c.resp, c.from, c.err, tc.want, tc.wantFrom, tc.wantErrs)
				}
				for _, e := range tc.wantErrs {
					if !errors.Is(c.err, e) {
						t.Errorf("error %v does not wrap %v", c.err, e)
					}
				}
				if limit := deadline + 100*time.Millisecond; c.took > limit {
					t.Errorf("ExchangeAsync answered after %v, beyond the deadline %v", c.took, deadline)
				}

				for i, a := range ag.States() {
					if a.Attempts != tc.attempts[i] || a.Failures != tc.failures[i] {
						t.Errorf("%s: %d attempts, %d failures; want %d, %d", a.Target, a.Attempts, a.Failures, tc.attempts[i], tc.failures[i])
					}
					if a.Hedges != 0 || !a.Up {
						t.Errorf("%s: left %+v", a.Target, a)
					}
					if af[i].badTimeout.Load() || af[i].badCopy.Load() {
						t.Errorf("%s: submitted with a timeout <= 0, or the query changed before done", a.Target)
					}
				}
				time.Sleep(10 * time.Millisecond) // room for a second call
				if n := c.calls.Load(); n != 1 {
					t.Errorf("done called %d times, want once", n)
				}
			})
		}
	}
}

// TestExchangeAsyncDeadline: each attempt is given min(member timeout, time
// left), and done comes by the deadline even when no target ever answers.
func TestExchangeAsyncDeadline(t *testing.T) {
	const slack = 100 * time.Millisecond
	ms := time.Millisecond
	for _, tc := range []struct {
		name     string
		timeouts []time.Duration // members'; every member is silent
		deadline time.Duration
		// per member: the timeout it was given must be in [lo, hi]; lo
		// -1: never tried
		lo, hi   []time.Duration
		failures []uint64
	}{
		{name: "member timeout below the deadline", timeouts: []time.Duration{30 * ms}, deadline: time.Second,
			lo: []time.Duration{30 * ms}, hi: []time.Duration{30 * ms}, failures: []uint64{1}},
		{name: "deadline below the member timeout", timeouts: []time.Duration{time.Second}, deadline: 40 * ms,
			lo: []time.Duration{20 * ms}, hi: []time.Duration{40 * ms}, failures: []uint64{0}},
		{name: "no member timeout", timeouts: []time.Duration{0}, deadline: 40 * ms,
			lo: []time.Duration{20 * ms}, hi: []time.Duration{40 * ms}, failures: []uint64{0}},
		// a and b time out on their own (failures); c gets what is left.
		{name: "the last gets what is left", timeouts: []time.Duration{30 * ms, 30 * ms, 0}, deadline: 100 * ms,
			lo: []time.Duration{30 * ms, 30 * ms, ms}, hi: []time.Duration{30 * ms, 30 * ms, 40 * ms}, failures: []uint64{1, 1, 0}},
		{name: "no time for the second", timeouts: []time.Duration{time.Second, time.Second}, deadline: 30 * ms,
			lo: []time.Duration{15 * ms, -1}, hi: []time.Duration{30 * ms, -1}, failures: []uint64{0, 0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var fs []*afake
			for i := range tc.timeouts {
				fs = append(fs, newAsync(fmt.Sprint("t", i), silent()))
			}
			g := mustNew(t, asyncMembers(tc.timeouts, fs...), Config{HedgeDelay: -1})
			c := startAsync(g, []byte("q"), tc.deadline)
			c.wait(t, tc.deadline+time.Second)
			if !errors.Is(c.err, ErrNoAnswer) || c.resp != nil {
				t.Fatalf("got %q, %v; want %v", c.resp, c.err, ErrNoAnswer)
			}
			ended := tc.timeouts[len(tc.timeouts)-1] == 0 || tc.deadline < tc.timeouts[len(tc.timeouts)-1]
			if ended != errors.Is(c.err, context.DeadlineExceeded) {
				t.Errorf("error %v: wrapping %v is %v, want %v", c.err, context.DeadlineExceeded, !ended, ended)
			}
			wantTook := tc.deadline
			if !ended {
				wantTook = 0
				for _, to := range tc.timeouts {
					wantTook += to
				}
			}
			if c.took < wantTook-5*ms || c.took > wantTook+slack {
				t.Errorf("done after %v, want about %v", c.took, wantTook)
			}
			for i, f := range fs {
				got := f.attemptTimeouts()
				if tc.lo[i] < 0 {
					if len(got) != 0 {
						t.Errorf("%s: tried with %v, want no attempt", f.name, got)
					}
					continue
				}
				if len(got) != 1 || got[0] < tc.lo[i] || got[0] > tc.hi[i] {
					t.Errorf("%s: attempt timeouts %v, want one in [%v, %v]", f.name, got, tc.lo[i], tc.hi[i])
				}
				if st := g.States()[i]; st.Failures != tc.failures[i] {
					t.Errorf("%s: %d failures, want %d", f.name, st.Failures, tc.failures[i])
				}
			}
		})
	}
}

// TestExchangeAsyncPastDeadline: a query whose deadline has passed already
// gets its error at once and sends nothing.
func TestExchangeAsyncPastDeadline(t *testing.T) {
	for _, tc := range []struct {
		name  string
		hedge time.Duration
	}{
		{name: "chained", hedge: -1},
		{name: "chained, hedgeable", hedge: time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := newAsync("a", good()), newAsync("b", good())
			g := mustNew(t, asyncMembers(nil, a, b), Config{HedgeDelay: tc.hedge})
			c := startAsync(g, []byte("q"), -time.Millisecond)
			c.wait(t, time.Second)
			if !errors.Is(c.err, ErrNoAnswer) || !errors.Is(c.err, context.DeadlineExceeded) {
				t.Errorf("err %v, want %v and %v", c.err, ErrNoAnswer, context.DeadlineExceeded)
			}
			time.Sleep(10 * time.Millisecond) // let a stray attempt show
			for _, s := range g.States() {
				if s.Attempts != 0 {
					t.Errorf("%s: %d attempts for a query past its deadline, want 0", s.Target, s.Attempts)
				}
			}
			if n := a.submits.Load() + b.submits.Load(); n != 0 {
				t.Errorf("%d queries sent upstream past the deadline", n)
			}
		})
	}
}

// TestExchangeAsyncInline: targets that complete inside Submit chain on the
// caller's stack: done runs before ExchangeAsync returns, without deadlock,
// and each attempt adds only a few frames.
func TestExchangeAsyncInline(t *testing.T) {
	for _, n := range []int{2, maxStackTargets, 3 * maxStackTargets} {
		t.Run(fmt.Sprint(n, " targets"), func(t *testing.T) {
			var fs []*afake
			for i := range n - 1 {
				fs = append(fs, newAsync(fmt.Sprint("e", i), inline(errs())))
			}
			fs = append(fs, newAsync("last", inline(good())))
			for _, f := range fs {
				f.trackDepth = true
			}
			g := mustNew(t, asyncMembers(nil, fs...), Config{HedgeDelay: -1})
			c := startAsync(g, []byte("q"), time.Second)
			c.wait(t, time.Second)
			if !c.inside {
				t.Error("done ran after ExchangeAsync returned, want inside it")
			}
			if c.err != nil || string(c.resp) != "G" || c.from != "last" {
				t.Fatalf("got %q from %q, %v; want G from last", c.resp, c.from, c.err)
			}
			first, last := fs[0].depths[0], fs[n-1].depths[0]
			if per := (last - first) / (n - 1); per > 8 {
				t.Errorf("stack grows by %d frames per attempt (%d → %d over %d attempts), want a few", per, first, last, n-1)
			}
			if got := c.calls.Load(); got != 1 {
				t.Errorf("done called %d times", got)
			}
		})
	}
}

// TestExchangeAsyncPaths: the caller is not blocked, and a hedge needs a
// second target up and budget.
func TestExchangeAsyncPaths(t *testing.T) {
	ms := time.Millisecond
	for _, tc := range []struct {
		name     string
		hedge    time.Duration
		aTimeout time.Duration // a answers after 80ms; default timeout 1s
		bDown    bool
		noTokens bool
		wantFrom string
		hedges   uint64 // b's
	}{
		{name: "hedging off", hedge: -1, wantFrom: "a"},
		{name: "hedged", hedge: 5 * ms, wantFrom: "b", hedges: 1},
		// No samples: the hedge delay is half of a's timeout.
		{name: "adaptive hedge", hedge: 0, aTimeout: 60 * ms, wantFrom: "b", hedges: 1},
		{name: "hedge target down", hedge: 5 * ms, bDown: true, wantFrom: "a"},
		{name: "no hedge budget", hedge: 5 * ms, noTokens: true, wantFrom: "a"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := newAsync("a", after(80*ms, good()))
			b := newAsync("b", good())
			aTimeout := tc.aTimeout
			if aTimeout == 0 {
				aTimeout = time.Second
			}
			members := []Member{{Up: a, Timeout: aTimeout}, {Up: b, Timeout: time.Second}}
			g := mustNew(t, members, Config{HedgeDelay: tc.hedge})
			if tc.bDown {
				g.targets[1].healthy.Store(false)
			}
			if tc.noTokens {
				g.tokens.Store(0)
				g.tokenAdd = 0
			}
			start := time.Now()
			c := startAsync(g, []byte("q"), time.Second)
			if took := time.Since(start); took > 20*ms {
				t.Errorf("ExchangeAsync blocked its caller for %v", took)
			}
			c.wait(t, 2*time.Second)
			if c.err != nil || string(c.resp) != "G" || c.from != tc.wantFrom {
				t.Fatalf("got %q from %q, %v; want G from %s", c.resp, c.from, c.err, tc.wantFrom)
			}
			if h := g.States()[1].Hedges; h != tc.hedges {
				t.Errorf("b hedged to %d times, want %d", h, tc.hedges)
			}
			time.Sleep(time.Until(start.Add(100 * ms))) // a's late answer, if any, has come
			if n, want := b.submits.Load(), int64(tc.hedges); n != want {
				t.Errorf("b asked %d times, want %d", n, want)
			}
			if n := c.calls.Load(); n != 1 {
				t.Errorf("done called %d times, want once", n)
			}
		})
	}
}

// TestExchangeAsyncHedgeSettleRace: the two attempts of a hedged query
// settle at the same time, the first with a failure, the second with an
// answer, and no target is left to try. The answer must be what done gets,
// as in Exchange, where one goroutine settles the attempts in turn.
func TestExchangeAsyncHedgeSettleRace(t *testing.T) {
	for _, tc := range []struct{ name, bResp string }{{"good", "G"}, {"fallback", "F"}} {
		t.Run(tc.name, func(t *testing.T) {
			a := newAsync("a", after(30*time.Millisecond, says("X")))
			b := newAsync("b", after(10*time.Millisecond, says(tc.bResp))) // hedged at 5ms
			g := mustNew(t, asyncMembers([]time.Duration{time.Second, time.Second}, a, b), Config{HedgeDelay: 5 * time.Millisecond})
			bSettling, ready := make(chan struct{}), make(chan struct{})
			var c *asyncCall
			cls := func(resp []byte) Verdict {
				if string(resp) == "X" {
					// a's failure is settled while b's answer is being
					// settled (or after a second: no such interleaving).
					select {
					case <-bSettling:
					case <-time.After(time.Second):
					}
				} else {
					// b's answer: let a's failure settle first, up to done.
					close(bSettling)
					<-ready
					select {
					case <-c.landed:
					case <-time.After(100 * time.Millisecond):
					}
				}
				return classify(resp)
			}
			c = startAsyncWith(g, []byte("q"), time.Second, cls)
			close(ready)
			c.wait(t, 3*time.Second)
			if c.err != nil || string(c.resp) != tc.bResp || c.from != "b" {
				t.Errorf("got %q from %q, %v; want %s from b", c.resp, c.from, c.err, tc.bResp)
			}
			if st := g.States(); st[1].Hedges != 1 || st[0].Failures != 1 {
				t.Errorf("states %+v; want a hedge to b and a failure of a", st)
			}
		})
	}
}

// TestExchangeAsyncHedgeTimerRearm: when the first attempt fails, the next
// target gets a full hedge delay of its own, as in Exchange; a hedge timer
// that fired for the failed attempt must not hedge the next one at once.
// The clock stalls while the failover is being launched, until the first
// attempt's hedge timer has fired.
func TestExchangeAsyncHedgeTimerRearm(t *testing.T) {
	const delay = 10 * time.Millisecond
	for _, async := range []bool{false, true} {
		t.Run(map[bool]string{false: "Exchange", true: "ExchangeAsync"}[async], func(t *testing.T) {
			var stall atomic.Bool
			now := func() time.Time {
				if stall.CompareAndSwap(true, false) {
					time.Sleep(3 * delay) // the hedge timer armed for a fires meanwhile
				}
				return time.Now()
			}
			cls := func(resp []byte) Verdict {
				if string(resp) == "X" {
					stall.Store(true) // the next reading of the clock is the failover's
				}
				return classify(resp)
			}
			a := newAsync("a", after(time.Millisecond, says("X")))
			b := newAsync("b", after(delay/2, good())) // answers within its hedge delay
			c := newAsync("c", good())
			g := mustNew(t, asyncMembers([]time.Duration{time.Second, time.Second, time.Second}, a, b, c),
				Config{HedgeDelay: delay, Now: now})
			var resp []byte
			var from string
			var err error
			if async {
				q := startAsyncWith(g, []byte("q"), time.Second, cls)
				q.wait(t, 2*time.Second)
				resp, from, err = q.resp, q.from, q.err
			} else {
				resp, from, err = g.Exchange(context.Background(), []byte("q"), cls)
			}
			if err != nil || string(resp) != "G" || from != "b" {
				t.Errorf("got %q from %q, %v; want G from b", resp, from, err)
			}
			if n := c.submits.Load(); n != 0 {
				t.Errorf("c asked %d times: b was hedged before its hedge delay", n)
			}
		})
	}
}

// TestExchangeAsyncHedgeFallbackWaitsForGood: a Fallback that arrives
// first does not end a hedged query; the Good answer of the hedge does.
func TestExchangeAsyncHedgeFallbackWaitsForGood(t *testing.T) {
	a, b := newAsync("a", after(20*time.Millisecond, says("F"))), newAsync("b", after(30*time.Millisecond, good()))
	g := mustNew(t, asyncMembers([]time.Duration{time.Second, time.Second}, a, b), Config{HedgeDelay: 5 * time.Millisecond})
	c := startAsync(g, []byte("q"), time.Second)
	c.wait(t, 2*time.Second)
	if c.err != nil || string(c.resp) != "G" || c.from != "b" {
		t.Errorf("got %q from %q, %v; want G from b", c.resp, c.from, c.err)
	}
}

// TestExchangeAsyncHedgeBudget: hedges through the async path spend the
// same budget as Exchange's.
func TestExchangeAsyncHedgeBudget(t *testing.T) {
	a, b := newAsync("a", after(5*time.Millisecond, good())), newAsync("b", good())
	g := mustNew(t, asyncMembers([]time.Duration{time.Second, time.Second}, a, b), Config{HedgeDelay: time.Millisecond, HedgeBudget: 0.1})
	const n = 100
	for range n {
		c := startAsync(g, []byte("q"), time.Second)
		c.wait(t, time.Second)
		if c.err != nil {
			t.Fatal(c.err)
		}
	}
	var hedges uint64
	for _, s := range g.States() {
		hedges += s.Hedges
	}
	if hedges > 1+n/10 || hedges < 3 {
		t.Errorf("%d hedges in %d queries, want about %d, at most %d", hedges, n, n/10, 1+n/10)
	}
}

// TestExchangeAsyncNoGoroutinePerQuery: queries waiting on their targets
// hold no goroutine, hedged or not.
func TestExchangeAsyncNoGoroutinePerQuery(t *testing.T) {
	const n = 200
	for _, tc := range []struct {
		name  string
		hedge time.Duration
	}{
		{name: "chained", hedge: -1},
		{name: "hedged", hedge: 5 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := newAsync("a", silent()), newAsync("b", silent())
			g := mustNew(t, asyncMembers(nil, a, b), Config{HedgeDelay: tc.hedge, HedgeBudget: 1})
			base := runtime.NumGoroutine()
			calls := make([]*asyncCall, n)
			for i := range calls {
				calls[i] = startAsync(g, []byte("q"), 400*time.Millisecond)
			}
			time.Sleep(20 * time.Millisecond) // the hedges have gone out
			if got := goroutinesAbove(base, 10, 150*time.Millisecond); got > 10 {
				t.Errorf("%d more goroutines with %d queries waiting, want at most 10", got, n)
			}
			for _, c := range calls {
				select {
				case <-c.landed:
					t.Fatal("a query ended before the goroutines were counted")
				default:
				}
			}
			if tc.hedge > 0 {
				// The budget (a burst of hedgeBurst) was earned before
				// any hedge timer fired.
				if h := g.States()[1].Hedges; h < hedgeBurst {
					t.Errorf("%d of %d queries hedged, want at least %d", h, n, hedgeBurst)
				}
			}
			for _, c := range calls {
				c.wait(t, 2*time.Second)
				if !errors.Is(c.err, context.DeadlineExceeded) {
					t.Errorf("err %v, want %v", c.err, context.DeadlineExceeded)
				}
			}
			waitGoroutines(t, base)
		})
	}
}

// TestExchangeAsyncHealth: failures through the async path mark a target
// down after FailAfter, as through Exchange, and the chain then tries it
// last.
func TestExchangeAsyncHealth(t *testing.T) {
	a, b := newAsync("a", errs()), newAsync("b", good())
	g := mustNew(t, asyncMembers(nil, a, b), Config{FailAfter: 3, HedgeDelay: -1})
	for i := range 3 {
		if !g.States()[0].Up {
			t.Fatalf("a down after %d failures, want 3", i)
		}
		c := startAsync(g, []byte("q"), time.Second)
		c.wait(t, time.Second)
	}
	if g.States()[0].Up {
		t.Fatal("a still up after 3 failures")
	}
	for range 5 {
		c := startAsync(g, []byte("q"), time.Second)
		c.wait(t, time.Second)
		if c.from != "b" || c.err != nil {
			t.Fatalf("from %q, %v; want b", c.from, c.err)
		}
	}
	if n := a.submits.Load(); n != 3 {
		t.Errorf("a (down) submitted %d times, want 3", n)
	}
}

// TestExchangeAsyncConcurrent: many queries of every kind at once; each
// done runs exactly once, and no goroutine outlives them.
func TestExchangeAsyncConcurrent(t *testing.T) {
	base := runtime.NumGoroutine()
	ms := time.Millisecond
	fs := []*afake{
		newAsync("good", after(ms, good())),
		newAsync("fails", after(ms, errs())),
		newAsync("silent", silent()),
		newAsync("inline", inline(good())),
		newAsync("inline-fails", inline(errs())),
		newAsync("fallback", says("F")),
		newAsync("racy", after(19*ms, good())), // answers about when its timeout ends
	}
	var wg sync.WaitGroup
	var calls []*asyncCall
	var groups []*Group
	var mu sync.Mutex
	for i, p := range []Policy{Ordered, RoundRobin, Fastest} {
		for j, hd := range []time.Duration{-1, 0, 2 * ms} {
			g := mustNew(t, timed(20*ms, fs...), Config{Policy: p, HedgeDelay: hd, HedgeBudget: 0.5, FailAfter: 1000})
			groups = append(groups, g)
			for k := range 20 {
				wg.Go(func() {
					c := startAsync(g, []byte("q"), time.Duration(5+(i+j+k)%4*15)*ms)
					c.wait(t, 2*time.Second)
					mu.Lock()
					calls = append(calls, c)
					mu.Unlock()
				})
			}
		}
	}
	wg.Wait()
	time.Sleep(30 * ms) // any late timer has fired
	for _, c := range calls {
		if n := c.calls.Load(); n != 1 {
			t.Errorf("done called %d times", n)
		}
		if c.err != nil && !errors.Is(c.err, ErrNoAnswer) {
			t.Errorf("error %v does not wrap %v", c.err, ErrNoAnswer)
		}
	}
	// Answered, failed, overtaken or timed out: every attempt has left
	// its target's in-flight count (the silent target's at its timeout).
	for _, g := range groups {
		for _, st := range g.States() {
			if st.Inflight != 0 {
				t.Errorf("%s: %d attempts in flight after every query ended", st.Target, st.Inflight)
			}
		}
	}
	waitGoroutines(t, base)
}

// timed makes members of fs, each with timeout.
func timed(timeout time.Duration, fs ...*afake) []Member {
	ms := make([]Member, len(fs))
	for i, f := range fs {
		ms[i] = Member{Up: f, Timeout: timeout}
	}
	return ms
}

// instant answers inside Submit with a fixed response, recording nothing:
// for measuring the chain alone.
type instant struct{ resp []byte }

func (f instant) String() string                                   { return "instant" }
func (f instant) Exchange(context.Context, []byte) ([]byte, error) { return f.resp, nil }
func (f instant) Submit(_ []byte, _ time.Duration, done func([]byte, error)) Canceler {
	done(f.resp, nil)
	return nil
}

// BenchmarkExchangeAsync: the chained path with targets that answer inside
// Submit: the cost of the chain itself.
func BenchmarkExchangeAsync(b *testing.B) {
	up := instant{resp: []byte("G")}
	for _, hd := range []time.Duration{-1, time.Hour} {
		g := mustNew(b, []Member{{Up: up, Timeout: time.Second}, {Up: up, Timeout: time.Second}}, Config{HedgeDelay: hd})
		b.Run(map[bool]string{true: "hedging off", false: "hedgeable"}[hd < 0], func(b *testing.B) {
			query := []byte("query")
			done := func([]byte, string, error) {}
			deadline := time.Now().Add(time.Hour)
			b.ReportAllocs()
			for b.Loop() {
				g.ExchangeAsync(query, deadline, classify, done)
			}
		})
	}
}

// goroutinesAbove returns how many goroutines there are more than base,
// waiting up to within for the number to come down to most (timer
// callbacks run on short-lived goroutines of their own).
func goroutinesAbove(base, most int, within time.Duration) int {
	deadline := time.Now().Add(within)
	for {
		n := runtime.NumGoroutine() - base
		if n <= most || time.Now().After(deadline) {
			return n
		}
		time.Sleep(time.Millisecond)
	}
}

// TestExchangeAsyncHedgeCancelsLoser: when one attempt of a hedged query
// answers Good, the other is cancelled (its upstream stream reset), not left
// to run to its timeout; an attempt that fails or answers first is not.
func TestExchangeAsyncHedgeCancelsLoser(t *testing.T) {
	for _, tc := range []struct {
		name       string
		a, b       behaviour
		from       string
		aCancelled int64
		bCancelled int64
	}{
		{name: "hedge wins", a: silent(), b: good(), from: "b", aCancelled: 1},
		{name: "first wins", a: after(100*time.Millisecond, good()), b: silent(), from: "a", bCancelled: 1},
		{name: "first fails, hedge wins", a: after(20*time.Millisecond, errs()), b: after(40*time.Millisecond, good()), from: "b"},
		{name: "no hedge", a: inline(good()), b: silent(), from: "a"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := newAsync("a", tc.a), newAsync("b", tc.b)
			g := mustNew(t, asyncMembers([]time.Duration{time.Second, time.Second}, a, b), Config{HedgeDelay: 5 * time.Millisecond, HedgeBudget: 1})
			c := startAsync(g, []byte("q"), 2*time.Second)
			c.wait(t, 3*time.Second)
			if c.err != nil || string(c.resp) != "G" || c.from != tc.from {
				t.Fatalf("got %q from %q, %v; want G from %s", c.resp, c.from, c.err, tc.from)
			}
			waitCancels(t, a, tc.aCancelled, b, tc.bCancelled)
			if c.calls.Load() != 1 {
				t.Errorf("done ran %d times", c.calls.Load())
			}
		})
	}
}

// TestExchangeAsyncHedgeCancelsLoserInsideSubmit: the first attempt is
// overtaken while its Submit has not returned yet (no Canceler to call):
// it is cancelled as soon as Submit hands its Canceler back.
func TestExchangeAsyncHedgeCancelsLoserInsideSubmit(t *testing.T) {
	hold := make(chan struct{})
	a, b := newAsync("a", behaviour{never: true, holdSubmit: hold}), newAsync("b", good())
	g := mustNew(t, asyncMembers([]time.Duration{time.Second, time.Second}, a, b), Config{HedgeDelay: 5 * time.Millisecond, HedgeBudget: 1})
	won := make(chan string, 2)
	returned := make(chan struct{})
	go func() {
		g.ExchangeAsync([]byte("q"), time.Now().Add(2*time.Second), classify, func(resp []byte, from string, err error) {
			won <- fmt.Sprintf("%s from %s, %v", resp, from, err)
		})
		close(returned)
	}()
	select {
	case got := <-won:
		if got != "G from b, <nil>" {
			t.Fatalf("got %s; want G from b", got)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("the hedge did not answer while the first Submit was held")
	}
	if a.cancels.Load() != 0 {
		t.Fatal("a cancelled before its Submit returned a Canceler")
	}
	close(hold)
	<-returned
	waitCancels(t, a, 1, b, 0)
	select {
	case got := <-won:
		t.Errorf("done ran twice: %s", got)
	default:
	}
}

// waitCancels waits until a and b have had the given numbers of
// cancellations, and a little longer in case more come.
func waitCancels(t *testing.T, a *afake, wa int64, b *afake, wb int64) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for (a.cancels.Load() != wa || b.cancels.Load() != wb) && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(20 * time.Millisecond)
	if a.cancels.Load() != wa || b.cancels.Load() != wb {
		t.Errorf("cancelled: a %d, b %d; want %d, %d", a.cancels.Load(), b.cancels.Load(), wa, wb)
	}
}
