package forwarder

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"xdoh/forwarder/cache"
	"xdoh/forwarder/group"
	"xdoh/forwarder/rules"
)

var errUpTimeout = errors.New("waiting for response: timeout")

// asyncUp is a fault-injection target that can Submit, as a DoH upstream
// can. Its answers come from fn, computed when the query is submitted; then
// they are given inside Submit (inline), after delay, or when released
// (held). A silent one never answers: only the attempt's timeout ends it.
// Unlike fakeUp it spends no goroutine per query, as upstreams do not.
type asyncUp struct {
	fakeUp  // name, fn
	submits atomic.Int32
	failed  atomic.Int32 // submits that ended in an error
	silent  bool
	inline  bool
	delay   time.Duration
	held    bool

	mu      sync.Mutex
	waiting []func()
	gate    chan struct{} // closed by release
	once    sync.Once
}

var _ group.Exchanger = (*asyncUp)(nil)

func newAsyncUp(f *fakeUp) *asyncUp {
	return &asyncUp{fakeUp: fakeUp{name: f.name, fn: f.fn}, gate: make(chan struct{})}
}

func asyncA(name, ip string) *asyncUp { return newAsyncUp(answerA(name, ip)) }
func asyncFailing(name string) *asyncUp {
	return newAsyncUp(failing(name))
}
func asyncServFail(name string) *asyncUp {
	return newAsyncUp(&fakeUp{name: name, fn: func(_ context.Context, q *dns.Msg) (*dns.Msg, error) {
		return new(dns.Msg).SetRcode(q, dns.RcodeServerFailure), nil
	}})
}
func asyncSilent(name string) *asyncUp {
	u := newAsyncUp(hanging(name))
	u.silent = true
	return u
}

func (u *asyncUp) answer(query []byte) ([]byte, error) {
	q := new(dns.Msg)
	if err := q.Unpack(query); err != nil {
		return nil, err
	}
	r, err := u.fn(context.Background(), q)
	if err != nil {
		return nil, err
	}
	return r.Pack()
}

func (u *asyncUp) Submit(query []byte, timeout time.Duration, done func([]byte, error)) group.Canceler {
	u.submits.Add(1)
	var once sync.Once
	finish := func(resp []byte, err error) {
		once.Do(func() {
			if err != nil {
				u.failed.Add(1)
			}
			done(resp, err)
		})
	}
	if timeout <= 0 {
		finish(nil, fmt.Errorf("%s: no time given", u.name))
		return nil
	}
	if u.silent {
		time.AfterFunc(timeout, func() { finish(nil, errUpTimeout) })
		return nil
	}
	resp, err := u.answer(query) // query is not retained
	switch {
	case u.inline:
		finish(resp, err)
	case u.held:
		t := time.AfterFunc(timeout, func() { finish(nil, errUpTimeout) })
		u.mu.Lock()
		select {
		case <-u.gate:
			u.mu.Unlock()
			t.Stop()
			finish(resp, err)
			return nil
		default:
		}
		u.waiting = append(u.waiting, func() { t.Stop(); finish(resp, err) })
		u.mu.Unlock()
	case u.delay >= timeout:
		time.AfterFunc(timeout, func() { finish(nil, errUpTimeout) })
	default:
		time.AfterFunc(u.delay, func() { finish(resp, err) })
	}
	return nil
}

// release answers the held queries, and from now on answers at once.
func (u *asyncUp) release() {
	u.mu.Lock()
	u.once.Do(func() { close(u.gate) })
	waiting := u.waiting
	u.waiting = nil
	u.mu.Unlock()
	for _, w := range waiting {
		w()
	}
}

// asked is one query served through Answer and Resolve: its answer, given at once or to
// done.
type asked struct {
	now    []byte // the answer returned at once, if it did
	calls  atomic.Int32
	inside bool        // done ran before Resolve returned
	ch     chan []byte // done's first answer, copied
	start  time.Time
	took   time.Duration
}

// ask serves msg (copied, then overwritten after Resolve returns, as a
// datapath reuses its buffer) with Answer and Resolve.
func ask(f *Forwarder, msg []byte) *asked {
	a := &asked{ch: make(chan []byte, 1), start: time.Now()}
	m := append([]byte(nil), msg...)
	r := &Request{Msg: m, Transport: TransportUDP, Client: netip.MustParseAddrPort("127.0.0.1:1234")}
	out := make([]byte, 65536)
	var returned atomic.Bool
	resp, ok := answerOrResolve(f, r, out, func(resp []byte) {
		if a.calls.Add(1) == 1 {
			a.inside = !returned.Load()
			a.took = time.Since(a.start)
			a.ch <- append([]byte(nil), resp...)
		}
	})
	returned.Store(true)
	if ok {
		a.now = append([]byte(nil), resp...)
	}
	for i := range m {
		m[i] = 0xFF
	}
	return a
}

// answer is a's answer, waiting for done up to limit.
func (a *asked) answer(t *testing.T, limit time.Duration) *dns.Msg {
	t.Helper()
	b := a.now
	if b == nil {
		select {
		case b = <-a.ch:
		case <-time.After(limit):
			t.Fatalf("no answer within %v", limit)
		}
	}
	m := new(dns.Msg)
	if err := m.Unpack(b); err != nil {
		t.Fatalf("unpacking the answer: %v", err)
	}
	return m
}

// idle waits until f has no query in flight.
func idle(t *testing.T, f *Forwarder) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for len(f.inflight) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d in-flight slots still held", len(f.inflight))
		}
		time.Sleep(time.Millisecond)
	}
}

func firstA(m *dns.Msg) string {
	for _, rr := range m.Answer {
		if a, ok := rr.(*dns.A); ok {
			return a.A.String()
		}
	}
	return ""
}

// TestResolve: a miss is resolved through its targets' Submit alone (no
// goroutine), and answered with the client's ID and letter case.
func TestResolve(t *testing.T) {
	inline := func(u *asyncUp) *asyncUp { u.inline = true; return u }
	delayed := func(u *asyncUp) *asyncUp { u.delay = 5 * time.Millisecond; return u }
	for _, tc := range []struct {
		name     string
		def      []*asyncUp
		rule     []*asyncUp // targets of a forward rule for example.com
		rcode    int
		answer   string
		inside   bool          // answered inside Resolve: every attempt completes inline
		atLeast  time.Duration // answered no sooner
		servfail uint64        // Stats.ServFail
	}{
		{name: "default target", def: []*asyncUp{asyncA("d", "192.0.2.1")}, answer: "192.0.2.1"},
		{name: "rule target", def: []*asyncUp{asyncA("d", "192.0.2.1")}, rule: []*asyncUp{asyncA("r", "192.0.2.2")}, answer: "192.0.2.2"},
		{name: "delayed", def: []*asyncUp{delayed(asyncA("d", "192.0.2.1"))}, answer: "192.0.2.1"},
		{name: "inline", def: []*asyncUp{inline(asyncA("d", "192.0.2.1"))}, answer: "192.0.2.1", inside: true},
		{name: "error then good", def: []*asyncUp{asyncFailing("a"), asyncA("b", "192.0.2.3")}, answer: "192.0.2.3"},
		{name: "servfail then good", def: []*asyncUp{asyncServFail("a"), asyncA("b", "192.0.2.3")}, answer: "192.0.2.3"},
		{name: "only servfail: passed on", def: []*asyncUp{asyncServFail("a")}, rcode: dns.RcodeServerFailure},
		{name: "all failing", def: []*asyncUp{asyncFailing("a"), asyncFailing("b")}, rcode: dns.RcodeServerFailure, servfail: 1},
		{name: "all failing inline", def: []*asyncUp{inline(asyncFailing("a")), inline(asyncFailing("b"))},
			rcode: dns.RcodeServerFailure, inside: true, servfail: 1},
		{name: "silent: SERVFAIL at the query timeout", def: []*asyncUp{asyncSilent("a")},
			rcode: dns.RcodeServerFailure, atLeast: 100 * time.Millisecond, servfail: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Config{QueryTimeout: 100 * time.Millisecond, TargetTimeout: time.Second}
			for _, u := range tc.def {
				cfg.Default = append(cfg.Default, Target{Up: u})
			}
			if tc.rule != nil {
				r := Rule{Name: "r", Domain: "example.com", Type: rules.Forward}
				for _, u := range tc.rule {
					r.Targets = append(r.Targets, Target{Up: u})
				}
				cfg.Rules = []Rule{r}
			}
			f, err := New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			a := ask(f, query(t, "MiXeD.Example.COM.", dns.TypeA, false))
			if a.now != nil {
				t.Fatal("a miss answered at once")
			}
			m := a.answer(t, time.Second)
			if m.Id != 0xBEEF || m.Question[0].Name != "MiXeD.Example.COM." || !m.Response || !m.RecursionAvailable {
				t.Errorf("answer %v: want ID beef, the client's case, QR and RA", m)
			}
			if m.Rcode != tc.rcode || firstA(m) != tc.answer {
				t.Errorf("rcode %s, answer %q; want %s, %q", dns.RcodeToString[m.Rcode], firstA(m), dns.RcodeToString[tc.rcode], tc.answer)
			}
			if tc.inside && !a.inside {
				t.Error("done ran after Resolve returned, want inside it: every attempt completed inline")
			}
			if a.took < tc.atLeast || a.took > tc.atLeast+200*time.Millisecond {
				t.Errorf("answered after %v, want after %v", a.took, tc.atLeast)
			}
			idle(t, f)
			for _, u := range append(tc.def, tc.rule...) {
				if n := u.calls.Load(); n != 0 {
					t.Errorf("%s: %d blocking exchanges, want Submit only", u.name, n)
				}
			}
			if tc.rule != nil && tc.def[0].submits.Load() != 0 {
				t.Error("the default target was asked for a name of the rule")
			}
			s := f.Stats()
			if s.Forwarded != 1 || s.ServFail != tc.servfail || s.Overload != 0 {
				t.Errorf("stats %+v; want 1 forwarded, %d SERVFAIL", s, tc.servfail)
			}
			stats := map[string]Upstream{}
			for _, us := range f.Counters().Upstreams() {
				stats[us.Target] = us
			}
			for _, u := range append(tc.def, tc.rule...) {
				if us := stats[u.name]; us.Attempts != uint64(u.submits.Load()) || us.Errors != uint64(u.failed.Load()) {
					t.Errorf("%s: target stats %d attempts, %d errors; want %d, %d", u.name, us.Attempts, us.Errors, u.submits.Load(), u.failed.Load())
				}
			}
			time.Sleep(5 * time.Millisecond)
			if n := a.calls.Load(); n != 1 {
				t.Errorf("done called %d times, want once", n)
			}
		})
	}
}

// TestResolveQuerySizes: the pipeline's copy of a query holds up to 152
// bytes in place and takes a buffer of its own beyond; both resolve, with
// the client's name, case and ID, however the datapath reuses its buffer.
func TestResolveQuerySizes(t *testing.T) {
	for _, size := range []int{152, 153, 282} { // 282: the longest name there is
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			// A name under example.com of exactly the right length: labels
			// of at most 63 bytes, upper and lower case mixed.
			name := "MiXeD.Example.COM."
			for n := size - 12 - 4 - 19 - 11; n > 0; { // header, type and class, the base name, OPT
				l := min(n-1, 63)
				if l <= 0 {
					t.Fatalf("cannot pad to %d bytes", size)
				}
				name = strings.Repeat("Ab", 32)[:l] + "." + name
				n -= l + 1
			}
			msg := query(t, name, dns.TypeA, true) // EDNS: the answer repeats the long name
			if len(msg) != size {
				t.Fatalf("query of %d bytes, want %d", len(msg), size)
			}
			f, err := New(Config{QueryTimeout: time.Second, Default: []Target{{Up: asyncA("d", "192.0.2.9")}}})
			if err != nil {
				t.Fatal(err)
			}
			a := ask(f, msg)
			m := a.answer(t, time.Second)
			if m.Id != 0xBEEF || len(m.Question) != 1 || m.Question[0].Name != name || firstA(m) != "192.0.2.9" {
				t.Errorf("answer %v: want ID beef, %s as asked, 192.0.2.9", m, name)
			}
		})
	}
}

// TestResolveCoalesces: identical queries in flight share one Submit,
// and each gets the answer with its own ID and letter case.
func TestResolveCoalesces(t *testing.T) {
	up := asyncA("up", "192.0.2.5")
	up.held = true
	f, err := New(Config{Default: []Target{{Up: up}}})
	if err != nil {
		t.Fatal(err)
	}
	const n = 50
	names := []string{"Same.Example.COM.", "same.example.com."}
	asks := make([]*asked, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			m := new(dns.Msg).SetQuestion(names[i%2], dns.TypeA)
			m.Id = uint16(1000 + i)
			b, err := m.Pack()
			if err != nil {
				t.Error(err)
				return
			}
			asks[i] = ask(f, b)
		})
	}
	wg.Wait()
	if c := up.submits.Load(); c != 1 {
		t.Fatalf("%d submits for %d identical queries, want 1", c, n)
	}
	if s := f.Stats(); s.Coalesced != n-1 {
		t.Fatalf("coalesced %d, want %d", s.Coalesced, n-1)
	}
	up.release()
	for i, a := range asks {
		m := a.answer(t, time.Second)
		if m.Id != uint16(1000+i) || m.Question[0].Name != names[i%2] || firstA(m) != "192.0.2.5" {
			t.Errorf("query %d: answer %v", i, m)
		}
	}
	idle(t, f)
	if c := up.submits.Load() + up.calls.Load(); c != 1 {
		t.Errorf("upstream asked %d times in all, want 1", c)
	}
}

// TestResolveOverload: with every slot held by a query waiting on a
// silent target, the next query gets SERVFAIL at once; the waiting ones get
// SERVFAIL at the query timeout, and their slots come back.
func TestResolveOverload(t *testing.T) {
	const timeout = 150 * time.Millisecond
	up := asyncSilent("silent")
	f, err := New(Config{Default: []Target{{Up: up, Timeout: time.Second}}, MaxInflight: 4, QueryTimeout: timeout})
	if err != nil {
		t.Fatal(err)
	}
	var asks []*asked
	for i := range 4 {
		asks = append(asks, ask(f, query(t, fmt.Sprintf("n%d.example.com.", i), dns.TypeA, false)))
	}
	over := ask(f, query(t, "over.example.com.", dns.TypeA, false))
	if over.now == nil {
		t.Fatal("the query past the bound was not answered at once")
	}
	if m := over.answer(t, 0); m.Rcode != dns.RcodeServerFailure || m.Id != 0xBEEF {
		t.Errorf("past the bound: %v, want SERVFAIL", m)
	}
	if s := f.Stats(); s.Overload != 1 || s.ServFail != 1 {
		t.Errorf("overload %d, SERVFAIL %d; want 1, 1", s.Overload, s.ServFail)
	}
	for i, a := range asks {
		if a.now != nil {
			t.Fatalf("query %d answered at once", i)
		}
		m := a.answer(t, timeout+time.Second)
		if m.Rcode != dns.RcodeServerFailure {
			t.Errorf("query %d: %v, want SERVFAIL", i, m)
		}
		if a.took < timeout-5*time.Millisecond || a.took > timeout+200*time.Millisecond {
			t.Errorf("query %d answered after %v, want at the query timeout %v", i, a.took, timeout)
		}
	}
	idle(t, f)
	if s := f.Stats(); s.ServFail != 5 || s.Overload != 1 {
		t.Errorf("SERVFAIL %d, overload %d; want 5, 1", s.ServFail, s.Overload)
	}
	if again := ask(f, query(t, "again.example.com.", dns.TypeA, false)); again.now != nil {
		t.Error("overloaded after the slots came back")
	}
	if n := up.submits.Load(); n != 5 {
		t.Errorf("%d submits, want 5", n)
	}
}

// TestResolveServeStale: when the targets fail, a stale cache entry is
// the answer, as on the blocking path.
func TestResolveServeStale(t *testing.T) {
	for _, tc := range []struct {
		name   string
		fail   func(context.Context, *dns.Msg) (*dns.Msg, error)
		beyond int // rcode beyond the stale window
	}{
		{name: "error", fail: func(context.Context, *dns.Msg) (*dns.Msg, error) { return nil, errors.New("connection refused") },
			beyond: dns.RcodeServerFailure},
		{name: "servfail", fail: func(_ context.Context, q *dns.Msg) (*dns.Msg, error) {
			return new(dns.Msg).SetRcode(q, dns.RcodeServerFailure), nil
		}, beyond: dns.RcodeServerFailure},
		{name: "refused", fail: func(_ context.Context, q *dns.Msg) (*dns.Msg, error) {
			return new(dns.Msg).SetRcode(q, dns.RcodeRefused), nil
		}, beyond: dns.RcodeRefused},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clk := newClock()
			sw := newSwitchable(60, 0)
			up := newAsyncUp(&sw.fakeUp)
			up.fn = func(ctx context.Context, q *dns.Msg) (*dns.Msg, error) {
				if sw.down.Load() {
					return tc.fail(ctx, q)
				}
				return sw.fn(ctx, q)
			}
			f, err := New(Config{
				Default:      []Target{{Up: up, Timeout: 100 * time.Millisecond}},
				Cache:        cache.New(cache.Config{StaleWindow: time.Hour, Now: clk.now}),
				QueryTimeout: 500 * time.Millisecond,
			})
			if err != nil {
				t.Fatal(err)
			}
			q := query(t, "stale.example.com.", dns.TypeA, false)
			if m := ask(f, q).answer(t, time.Second); len(m.Answer) != 1 {
				t.Fatalf("first answer: %v", m)
			}
			sw.down.Store(true)
			clk.add(2 * time.Minute) // expired, within the stale window
			m := ask(f, q).answer(t, time.Second)
			if m.Rcode != dns.RcodeSuccess || len(m.Answer) != 1 || m.Answer[0].Header().Ttl != 30 || m.Id != 0xBEEF {
				t.Fatalf("want the stale answer with TTL 30, got %v", m)
			}
			if s := f.Stats(); s.Stale != 1 {
				t.Fatalf("stale counter %d, want 1", s.Stale)
			}
			clk.add(2 * time.Hour) // beyond the window
			if m := ask(f, q).answer(t, time.Second); m.Rcode != tc.beyond {
				t.Fatalf("beyond the stale window: %v, want %s", m, dns.RcodeToString[tc.beyond])
			}
			if n := up.calls.Load(); n != 0 {
				t.Errorf("%d blocking exchanges, want Submit only", n)
			}
			idle(t, f)
		})
	}
}

// TestResolveNoGoroutinePerQuery: queries waiting on targets that can
// Submit hold no goroutine, hedged or not; with a target that cannot, each
// holds a worker blocked in Exchange.
func TestResolveNoGoroutinePerQuery(t *testing.T) {
	const n = 200
	for _, tc := range []struct {
		name     string
		targets  int
		sel      group.Config
		blocking bool // the targets cannot Submit
	}{
		{name: "one target", targets: 1},
		{name: "two targets, adaptive hedging", targets: 2},
		{name: "two targets, hedged", targets: 2, sel: group.Config{HedgeDelay: 5 * time.Millisecond, HedgeBudget: 1}},
		{name: "blocking target", targets: 1, blocking: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var ups []*asyncUp
			cfg := Config{MaxInflight: 2 * n, DefaultSelect: tc.sel}
			for i := range tc.targets {
				u := asyncA(fmt.Sprint("up", i), "192.0.2.8")
				u.held = true
				ups = append(ups, u)
				if tc.blocking {
					cfg.Default = append(cfg.Default, Target{Up: &u.fakeUp})
					u.fakeUp.fn = func(ctx context.Context, q *dns.Msg) (*dns.Msg, error) {
						select {
						case <-u.gate:
						case <-ctx.Done():
							return nil, ctx.Err()
						}
						return answerA("", "192.0.2.8").fn(ctx, q)
					}
				} else {
					cfg.Default = append(cfg.Default, Target{Up: u})
				}
			}
			f, err := New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			base := runtime.NumGoroutine()
			asks := make([]*asked, n)
			for i := range asks {
				asks[i] = ask(f, query(t, fmt.Sprintf("g%d.example.com.", i), dns.TypeA, false))
			}
			time.Sleep(20 * time.Millisecond) // hedges, if any, have gone out
			if tc.blocking {
				// The control: each query holds a worker, blocked in the
				// target's Exchange. (Counting goroutines would not tell:
				// idle workers of earlier tests may exit meanwhile.)
				deadline := time.Now().Add(2 * time.Second)
				for ups[0].calls.Load() < n && time.Now().Before(deadline) {
					time.Sleep(time.Millisecond)
				}
				if c := ups[0].calls.Load(); c != n {
					t.Errorf("%d exchanges blocked, want %d", c, n)
				}
			} else if got := goroutinesAbove(base, 10, 500*time.Millisecond); got > 10 {
				t.Errorf("%d more goroutines with %d queries waiting, want at most 10", got, n)
			}
			for i, a := range asks {
				if a.calls.Load() != 0 {
					t.Fatalf("query %d answered before its target released it", i)
				}
			}
			if tc.sel.HedgeDelay > 0 {
				if st := f.Health(); st[1].Hedges == 0 {
					t.Errorf("no query hedged: %+v", st)
				}
			}
			for _, u := range ups {
				u.release()
			}
			for i, a := range asks {
				if m := a.answer(t, 2*time.Second); firstA(m) != "192.0.2.8" {
					t.Errorf("query %d: %v", i, m)
				}
			}
			idle(t, f)
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
