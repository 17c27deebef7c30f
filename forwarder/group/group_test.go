package group

import (
	"context"
	"errors"
	"fmt"
	"math"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// modes runs a test with hedging off and with a query that may be hedged
// (a hedge delay so long that it never fires: the hedge timer is armed and
// the attempts' Cancelers kept).
var modes = []struct {
	name  string
	hedge time.Duration
}{
	{"unhedged", -1},
	{"hedgeable", time.Hour},
}

func TestParsePolicy(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    Policy
		wantErr bool
	}{
		{in: "ordered", want: Ordered},
		{in: "round_robin", want: RoundRobin},
		{in: "fastest", want: Fastest},
		{in: "random", wantErr: true},
		{in: "", wantErr: true},
		{in: "Ordered", wantErr: true},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParsePolicy(tc.in)
			if (err != nil) != tc.wantErr || got != tc.want {
				t.Fatalf("ParsePolicy(%q) = %v, %v; want %v, error %v", tc.in, got, err, tc.want, tc.wantErr)
			}
			if err == nil && got.String() != tc.in {
				t.Errorf("String() = %q, want %q", got.String(), tc.in)
			}
		})
	}
}

func TestNewValidates(t *testing.T) {
	a := newFake("a", fail)
	for _, tc := range []struct {
		name string
		ms   []Member
		cfg  Config
	}{
		{name: "no members"},
		{name: "nil upstream", ms: []Member{{}}},
		{name: "negative timeout", ms: []Member{{Up: a, Timeout: -1}}},
		{name: "unknown policy", ms: members(0, a), cfg: Config{Policy: 9}},
		{name: "budget above 1", ms: members(0, a), cfg: Config{HedgeBudget: 1.5}},
		{name: "negative budget", ms: members(0, a), cfg: Config{HedgeBudget: -0.1}},
		{name: "NaN budget", ms: members(0, a), cfg: Config{HedgeBudget: math.NaN()}},
		{name: "negative FailAfter", ms: members(0, a), cfg: Config{FailAfter: -1}},
		{name: "negative ProbeInterval", ms: members(0, a), cfg: Config{ProbeInterval: -time.Second}},
		{name: "bad probe name", ms: members(0, a), cfg: Config{ProbeName: "a..b"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := New(tc.ms, tc.cfg); err == nil {
				t.Fatal("New succeeded, want an error")
			}
		})
	}
	g := mustNew(t, members(0, a), Config{})
	if g.cfg.HedgeBudget != DefaultHedgeBudget || g.cfg.FailAfter != DefaultFailAfter ||
		g.cfg.RecoverAfter != DefaultRecoverAfter || g.cfg.ProbeInterval != DefaultProbeInterval ||
		g.cfg.ProbeName != DefaultProbeName {
		t.Errorf("defaults not applied: %+v", g.cfg)
	}
}

// winners runs n queries and returns which target answered each.
func winners(t *testing.T, g *Group, n int) []string {
	t.Helper()
	var out []string
	for range n {
		_, who, err := g.Exchange(context.Background(), []byte("q"), classify)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, who)
	}
	return out
}

func TestPolicyOrder(t *testing.T) {
	var c clock
	for _, tc := range []struct {
		name   string
		policy Policy
		fakes  []*fake
		want   string
	}{
		{name: "ordered", policy: Ordered, want: "[a a a a a a]",
			fakes: []*fake{newFake("a", answer(0, "G")), newFake("b", answer(0, "G")), newFake("c", answer(0, "G"))}},
		{name: "round_robin", policy: RoundRobin, want: "[a b c a b c]",
			fakes: []*fake{newFake("a", answer(0, "G")), newFake("b", answer(0, "G")), newFake("c", answer(0, "G"))}},
		// Untried targets first (a, b, c are each measured once), then
		// the lowest EWMA: b.
		{name: "fastest", policy: Fastest, want: "[a b c b b b]",
			fakes: []*fake{newFake("a", took(&c, 30*time.Millisecond)), newFake("b", took(&c, 10*time.Millisecond)),
				newFake("c", took(&c, 20*time.Millisecond))}},
	} {
		for _, m := range modes {
			t.Run(tc.name+"/"+m.name, func(t *testing.T) {
				g := mustNew(t, members(0, tc.fakes...), Config{Policy: tc.policy, HedgeDelay: m.hedge, Now: c.Now})
				if got := fmt.Sprint(winners(t, g, 6)); got != tc.want {
					t.Errorf("winners %s, want %s", got, tc.want)
				}
			})
		}
	}
}

func TestOrderSkipsDown(t *testing.T) {
	fs := []*fake{newFake("a", fail), newFake("b", fail), newFake("c", fail), newFake("d", fail)}
	for _, tc := range []struct {
		policy Policy
		want   []string // successive orders
	}{
		{Ordered, []string{"[0 2 1 3]", "[0 2 1 3]"}},
		{RoundRobin, []string{"[0 2 1 3]", "[2 0 1 3]", "[0 2 1 3]"}},
		{Fastest, []string{"[2 0 1 3]"}},
	} {
		t.Run(tc.policy.String(), func(t *testing.T) {
			g := mustNew(t, members(0, fs...), Config{Policy: tc.policy})
			g.targets[1].healthy.Store(false)
			g.targets[3].healthy.Store(false)
			g.targets[0].ewma.Store(int64(20 * time.Millisecond))
			g.targets[2].ewma.Store(int64(10 * time.Millisecond))
			for _, want := range tc.want {
				var buf [maxStackTargets]int
				order, nUp := g.order(buf[:0])
				if got := fmt.Sprint(order); got != want || nUp != 2 {
					t.Errorf("order %s (%d up), want %s (2 up)", got, nUp, want)
				}
			}
		})
	}
}

func TestFastestExplores(t *testing.T) {
	fs := []*fake{newFake("a", answer(0, "G")), newFake("b", answer(0, "G"))}
	g := mustNew(t, members(0, fs...), Config{Policy: Fastest, HedgeDelay: -1})
	g.targets[0].ewma.Store(int64(time.Millisecond))
	g.targets[1].ewma.Store(int64(time.Second))
	firsts := map[int]int{}
	for range 10 * exploreEvery {
		var buf [maxStackTargets]int
		order, _ := g.order(buf[:0])
		firsts[order[0]]++
	}
	if firsts[1] != 10 {
		t.Errorf("slow target first %d times in %d queries, want 10", firsts[1], 10*exploreEvery)
	}
}

func TestFailover(t *testing.T) {
	for _, tc := range []struct {
		name      string
		a         func(context.Context, []byte) ([]byte, error)
		timeout   time.Duration // members'
		ctxTO     time.Duration
		wantFrom  string
		wantErr   error
		aFailures uint64
	}{
		{name: "error", a: fail, ctxTO: time.Second, wantFrom: "b", aFailures: 1},
		{name: "bad response", a: answer(0, "X"), ctxTO: time.Second, wantFrom: "b", aFailures: 1},
		{name: "member timeout", a: hang, timeout: 20 * time.Millisecond, ctxTO: time.Second, wantFrom: "b", aFailures: 1},
		// No member timeout: a uses the whole budget; it is the caller's
		// deadline that ended it, so it is not a failure of a.
		{name: "caller deadline", a: hang, ctxTO: 50 * time.Millisecond, wantFrom: "a", wantErr: context.DeadlineExceeded},
	} {
		for _, m := range modes {
			t.Run(tc.name+"/"+m.name, func(t *testing.T) {
				a, b := newFake("a", tc.a), newFake("b", answer(0, "G"))
				g := mustNew(t, members(tc.timeout, a, b), Config{HedgeDelay: m.hedge})
				ctx, cancel := context.WithTimeout(context.Background(), tc.ctxTO)
				defer cancel()
				start := time.Now()
				resp, from, err := g.Exchange(ctx, []byte("q"), classify)
				took := time.Since(start)
				if tc.wantErr != nil {
					if !errors.Is(err, tc.wantErr) || !errors.Is(err, ErrNoAnswer) || resp != nil {
						t.Fatalf("got %q, %v; want errors %v and %v", resp, err, ErrNoAnswer, tc.wantErr)
					}
				} else if err != nil || string(resp) != "G" {
					t.Fatalf("got %q, %v; want G", resp, err)
				}
				if from != tc.wantFrom {
					t.Errorf("from %q, want %q", from, tc.wantFrom)
				}
				if limit := tc.ctxTO + 100*time.Millisecond; took > limit {
					t.Errorf("took %v, beyond the caller's deadline %v", took, tc.ctxTO)
				}
				st := g.States()
				if st[0].Failures != tc.aFailures || st[0].Attempts != 1 {
					t.Errorf("a: %+v, want 1 attempt, %d failures", st[0], tc.aFailures)
				}
			})
		}
	}
}

func TestFailAfterMarksDown(t *testing.T) {
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			a, b := newFake("a", fail), newFake("b", answer(0, "G"))
			g := mustNew(t, members(0, a, b), Config{FailAfter: 3, HedgeDelay: m.hedge})
			for i := range 3 {
				if !g.States()[0].Up {
					t.Fatalf("a down after %d failures, want 3", i)
				}
				winners(t, g, 1)
			}
			if g.States()[0].Up {
				t.Fatal("a still up after 3 failures")
			}
			if got := fmt.Sprint(winners(t, g, 5)); got != "[b b b b b]" || a.calls.Load() != 3 {
				t.Errorf("winners %s, a called %d times; want only b, a 3 times", got, a.calls.Load())
			}
		})
	}
}

func TestSuccessResetsStreak(t *testing.T) {
	a, b := newFake("a", fail), newFake("b", answer(0, "G"))
	g := mustNew(t, members(0, a, b), Config{FailAfter: 3, HedgeDelay: -1})
	for range 5 {
		a.set(fail)
		winners(t, g, 2)
		a.set(answer(0, "G"))
		winners(t, g, 1)
	}
	if st := g.States()[0]; !st.Up || st.Failures != 10 {
		t.Errorf("a: %+v; want up with 10 failures, never 3 in a row", st)
	}
}

func TestAllDownStillTries(t *testing.T) {
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			a, b := newFake("a", fail), newFake("b", fail)
			g := mustNew(t, members(0, a, b), Config{FailAfter: 1, HedgeDelay: m.hedge})
			if _, from, err := g.Exchange(context.Background(), []byte("q"), classify); !errors.Is(err, errDown) || from != "b" {
				t.Fatalf("got from %q, %v; want an error from b", from, err)
			}
			st := g.States()
			if st[0].Up || st[1].Up {
				t.Fatalf("want both down: %+v", st)
			}
			b.set(answer(0, "G"))
			resp, from, err := g.Exchange(context.Background(), []byte("q"), classify)
			if err != nil || from != "b" || string(resp) != "G" || a.calls.Load() != 2 {
				t.Fatalf("got %q from %q, %v, a called %d times; want G from b after trying a again", resp, from, err, a.calls.Load())
			}
			if g.States()[1].Up {
				t.Error("b up after one success, want RecoverAfter (2)")
			}
			winners(t, g, 1)
			if !g.States()[1].Up {
				t.Error("b still down after two successful last-resort attempts")
			}
		})
	}
}

func TestProbesRecover(t *testing.T) {
	a, b := newFake("a", fail), newFake("b", answer(0, "G"))
	g := mustNew(t, members(time.Second, a, b), Config{FailAfter: 1, RecoverAfter: 2, HedgeDelay: -1})
	winners(t, g, 1) // a fails: down
	if g.States()[0].Up {
		t.Fatal("a up after failing")
	}
	ctx := context.Background()
	g.probeRound(ctx) // a still failing
	if g.States()[0].Up || b.calls.Load() != 1 {
		t.Fatalf("after a failed probe: %+v, b probed %d times", g.States(), b.calls.Load()-1)
	}
	a.set(dnsReply(5)) // REFUSED: still a sign of life
	g.probeRound(ctx)
	if g.States()[0].Up {
		t.Fatal("a up after one probe, want two")
	}
	a.set(func(context.Context, []byte) ([]byte, error) { return []byte("garbage garbage"), nil })
	g.probeRound(ctx) // resets the streak
	a.set(dnsReply(3))
	g.probeRound(ctx)
	if g.States()[0].Up {
		t.Fatal("a up after a failed probe in the streak")
	}
	g.probeRound(ctx)
	if !g.States()[0].Up {
		t.Fatal("a still down after two probes in a row")
	}
	if b.calls.Load() != 1 {
		t.Errorf("b (up) probed %d times without ProbeAll", b.calls.Load()-1)
	}
	if g.States()[0].EWMA == 0 {
		t.Error("probe round trips did not feed the EWMA")
	}
}

func TestProbeAllCanMarkDown(t *testing.T) {
	a := newFake("a", fail)
	g := mustNew(t, members(time.Second, a), Config{FailAfter: 2, ProbeAll: true})
	g.probeRound(context.Background())
	g.probeRound(context.Background())
	if st := g.States()[0]; st.Up || st.Attempts != 0 {
		t.Errorf("a: %+v; want down, and probes not counted as attempts", st)
	}
}

func TestProbeAnswered(t *testing.T) {
	g := mustNew(t, members(0, newFake("a", fail)), Config{ProbeName: "Example.ORG"})
	q := append([]byte(nil), g.probeMsg...)
	q[0], q[1] = 0x12, 0x34
	reply := func(edit func([]byte)) []byte {
		r, err := dnsReply(2)(context.Background(), q)
		if err != nil {
			t.Fatal(err)
		}
		edit(r)
		return r
	}
	for _, tc := range []struct {
		name string
		resp []byte
		want bool
	}{
		{"reply", reply(func([]byte) {}), true},
		{"name case", reply(func(r []byte) { r[13] ^= 0x20 }), true},
		{"other ID", reply(func(r []byte) { r[1]++ }), false},
		{"not a response", reply(func(r []byte) { r[2] &^= 0x80 }), false},
		{"other name", reply(func(r []byte) { r[14]++ }), false},
		{"other type", reply(func(r []byte) { r[len(q)-3] = 1 }), false},
		{"no question", reply(func(r []byte) { r[5] = 0 }), false},
		{"short", q[:12], false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := probeAnswered(q, tc.resp); got != tc.want {
				t.Errorf("probeAnswered = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestProberStartClose(t *testing.T) {
	base := runtime.NumGoroutine()
	a, b := newFake("a", fail), newFake("b", answer(0, "G"))
	g := mustNew(t, members(time.Second, a, b), Config{FailAfter: 1, ProbeInterval: 2 * time.Millisecond, HedgeDelay: -1})
	winners(t, g, 1)
	a.set(dnsReply(0))
	g.Start()
	g.Start() // no second prober
	deadline := time.Now().Add(2 * time.Second)
	for !g.States()[0].Up {
		if time.Now().After(deadline) {
			t.Fatal("prober did not bring a back")
		}
		time.Sleep(time.Millisecond)
	}
	g.Close()
	g.Close()
	g.Start() // closed: no-op
	waitGoroutines(t, base)
}

func TestHedgeSlowPrimary(t *testing.T) {
	canceled := make(chan struct{}, 1)
	a := newFake("a", func(ctx context.Context, q []byte) ([]byte, error) {
		resp, err := answer(200*time.Millisecond, "G")(ctx, q)
		if err != nil {
			canceled <- struct{}{}
		}
		return resp, err
	})
	b := newFake("b", answer(0, "G"))
	g := mustNew(t, members(time.Second, a, b), Config{HedgeDelay: 10 * time.Millisecond})
	start := time.Now()
	resp, from, err := g.Exchange(context.Background(), []byte("q"), classify)
	took := time.Since(start)
	if err != nil || from != "b" || string(resp) != "G" {
		t.Fatalf("got %q from %q, %v; want G from b", resp, from, err)
	}
	if took >= 50*time.Millisecond {
		t.Errorf("took %v, want < 50ms", took)
	}
	st := g.States()
	if st[0].Hedges != 0 || st[1].Hedges != 1 || st[0].Failures != 0 {
		t.Errorf("states %+v; want one hedge to b, no failure of a", st)
	}
	select {
	case <-canceled:
	case <-time.After(time.Second):
		t.Error("the slow attempt was not cancelled")
	}
}

func TestHedgeBudget(t *testing.T) {
	a, b := newFake("a", answer(5*time.Millisecond, "G")), newFake("b", answer(0, "G"))
	g := mustNew(t, members(time.Second, a, b), Config{HedgeDelay: time.Millisecond, HedgeBudget: 0.1})
	const n = 100
	winners(t, g, n)
	var hedges uint64
	for _, s := range g.States() {
		hedges += s.Hedges
	}
	// One token to start with plus a tenth per query.
	if hedges > 1+n/10 || hedges < 3 {
		t.Errorf("%d hedges in %d queries, want about %d, at most %d", hedges, n, n/10, 1+n/10)
	}
}

func TestTokenBucket(t *testing.T) {
	g := mustNew(t, members(0, newFake("a", fail)), Config{HedgeBudget: 0.25})
	spent := 0
	for range 100 {
		g.earn()
		if g.spend() {
			spent++
		}
	}
	if spent != 1+25 {
		t.Errorf("spent %d hedges in 100 queries at 0.25, want 26", spent)
	}
	for range 1000 {
		g.earn()
	}
	spent = 0
	for g.spend() {
		spent++
	}
	if spent != hedgeBurst {
		t.Errorf("bucket held %d hedges after a quiet spell, want %d", spent, hedgeBurst)
	}
}

func TestAdaptiveHedgeDelay(t *testing.T) {
	a := newFake("a", fail)
	g := mustNew(t, []Member{{Up: a, Timeout: time.Second}}, Config{})
	tg := g.targets[0]
	bg := context.Background()
	feed := func(n int, d time.Duration) {
		for range n {
			tg.succeeded(d, 1, false)
		}
	}
	delay := func(g *Group, ctx context.Context, t *target) time.Duration {
		dl, ok := ctx.Deadline()
		return g.hedgeDelayUntil(dl, ok, t)
	}
	check := func(what string, ctx context.Context, lo, hi time.Duration) {
		t.Helper()
		if d := delay(g, ctx, tg); d < lo || d > hi {
			t.Errorf("%s: hedge delay %v, want in [%v, %v]", what, d, lo, hi)
		}
	}
	check("no samples: Timeout/2", bg, 500*time.Millisecond, 500*time.Millisecond)
	feed(100, 5*time.Millisecond)
	check("5ms", bg, 5*time.Millisecond, 6250*time.Microsecond)
	feed(400, 40*time.Millisecond)
	check("40ms", bg, 40*time.Millisecond, 50*time.Millisecond)
	feed(2000, 500*time.Microsecond)
	check("fast: HedgeMin", bg, HedgeMin, HedgeMin)
	feed(2000, 900*time.Millisecond)
	check("slow: Timeout/2", bg, 500*time.Millisecond, 500*time.Millisecond)
	ctx, cancel := context.WithTimeout(bg, 100*time.Millisecond)
	defer cancel()
	check("short context: half of it", ctx, 40*time.Millisecond, 50*time.Millisecond)

	g2 := mustNew(t, members(0, a), Config{})
	check2 := delay(g2, bg, g2.targets[0])
	if check2 != hedgeUnknown {
		t.Errorf("unbounded, no samples: %v, want %v", check2, hedgeUnknown)
	}
	g3 := mustNew(t, members(0, a), Config{HedgeDelay: 7 * time.Millisecond})
	if d := delay(g3, bg, g3.targets[0]); d != 7*time.Millisecond {
		t.Errorf("fixed: %v, want 7ms", d)
	}
}

// TestAdaptiveHedgeEndToEnd: a target that usually answers in 5ms but now
// takes 200ms is hedged after about 5ms; one that usually takes 100ms is
// given about 100ms.
func TestAdaptiveHedgeEndToEnd(t *testing.T) {
	for _, tc := range []struct {
		usual      time.Duration
		minT, maxT time.Duration
	}{
		{5 * time.Millisecond, 0, 50 * time.Millisecond},
		{100 * time.Millisecond, 100 * time.Millisecond, 190 * time.Millisecond},
	} {
		t.Run(tc.usual.String(), func(t *testing.T) {
			a, b := newFake("a", answer(200*time.Millisecond, "G")), newFake("b", answer(0, "G"))
			g := mustNew(t, members(time.Second, a, b), Config{})
			for range 50 {
				g.targets[0].succeeded(tc.usual, 1, false)
			}
			start := time.Now()
			_, from, err := g.Exchange(context.Background(), []byte("q"), classify)
			took := time.Since(start)
			if err != nil || from != "b" || took < tc.minT || took > tc.maxT {
				t.Errorf("answer from %q (%v) after %v, want from b after [%v, %v]", from, err, took, tc.minT, tc.maxT)
			}
		})
	}
}

func TestHistogramBuckets(t *testing.T) {
	for _, d := range []time.Duration{0, 1, 1023, 1024, 1279, 1280, 2047, 2048, time.Millisecond,
		5 * time.Millisecond, time.Second, 100 * time.Second} {
		i := bucketOf(d)
		if d >= bucketUpper(i) || (i > 0 && d < bucketUpper(i-1)) {
			t.Errorf("%v in bucket %d [%v, %v)", d, i, bucketUpper(i-1), bucketUpper(i))
		}
	}
	if i := bucketOf(time.Hour); i != histBuckets-1 {
		t.Errorf("an hour in bucket %d, want the last", i)
	}
}

func TestFallback(t *testing.T) {
	for _, tc := range []struct {
		name     string
		a, b     func(context.Context, []byte) ([]byte, error)
		want     string
		wantFrom string
	}{
		{name: "good beats fallback", a: answer(0, "F"), b: answer(0, "G"), want: "G", wantFrom: "b"},
		{name: "fallback when nothing better", a: answer(0, "F"), b: fail, want: "F", wantFrom: "a"},
		{name: "first fallback", a: answer(0, "Fa"), b: answer(0, "Fb"), want: "Fa", wantFrom: "a"},
		{name: "fallback beats bad", a: answer(0, "X"), b: answer(0, "F"), want: "F", wantFrom: "b"},
	} {
		for _, m := range modes {
			t.Run(tc.name+"/"+m.name, func(t *testing.T) {
				a, b := newFake("a", tc.a), newFake("b", tc.b)
				g := mustNew(t, members(0, a, b), Config{HedgeDelay: m.hedge})
				resp, from, err := g.Exchange(context.Background(), []byte("q"), classify)
				if err != nil || string(resp) != tc.want || from != tc.wantFrom {
					t.Errorf("got %q from %q, %v; want %q from %q", resp, from, err, tc.want, tc.wantFrom)
				}
			})
		}
	}
}

func TestNilClassify(t *testing.T) {
	g := mustNew(t, members(0, newFake("a", answer(0, "X"))), Config{})
	if resp, _, err := g.Exchange(context.Background(), []byte("q"), nil); err != nil || string(resp) != "X" {
		t.Errorf("got %q, %v; want X", resp, err)
	}
}

// A fallback that arrives first does not end a hedged query: the good
// answer from the hedge does.
func TestHedgeFallbackWaitsForGood(t *testing.T) {
	a, b := newFake("a", answer(20*time.Millisecond, "F")), newFake("b", answer(30*time.Millisecond, "G"))
	g := mustNew(t, members(time.Second, a, b), Config{HedgeDelay: 5 * time.Millisecond})
	resp, from, err := g.Exchange(context.Background(), []byte("q"), classify)
	if err != nil || string(resp) != "G" || from != "b" {
		t.Errorf("got %q from %q, %v; want G from b", resp, from, err)
	}
}

func TestCallerCancels(t *testing.T) {
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			a, b := newFake("a", hang), newFake("b", hang)
			g := mustNew(t, members(0, a, b), Config{HedgeDelay: m.hedge})
			ctx, cancel := context.WithCancel(context.Background())
			time.AfterFunc(10*time.Millisecond, cancel)
			start := time.Now()
			_, _, err := g.Exchange(ctx, []byte("q"), classify)
			if !errors.Is(err, context.Canceled) || !errors.Is(err, ErrNoAnswer) {
				t.Errorf("err %v, want %v and %v", err, ErrNoAnswer, context.Canceled)
			}
			if took := time.Since(start); took > 100*time.Millisecond {
				t.Errorf("returned %v after the cancel", took)
			}
			for _, s := range g.States() {
				if s.Failures != 0 || !s.Up {
					t.Errorf("%+v: the caller's cancel counted against the target", s)
				}
			}
			if _, _, err := g.Exchange(ctx, []byte("q"), classify); !errors.Is(err, context.Canceled) || a.calls.Load() != 1 {
				t.Errorf("with a done context: %v, a called %d times; want no attempt", err, a.calls.Load())
			}
		})
	}
}

// TestNoGoroutineLeak runs many queries of every kind at once and checks
// that no goroutine outlives them.
func TestNoGoroutineLeak(t *testing.T) {
	base := runtime.NumGoroutine()
	fakes := []*fake{
		newFake("slow", answer(30*time.Millisecond, "G")),
		newFake("fails", fail),
		newFake("hangs", hang),
		newFake("fast", answer(time.Millisecond, "G")),
		newFake("fallback", answer(0, "F")),
	}
	var wg sync.WaitGroup
	for i, p := range []Policy{Ordered, RoundRobin, Fastest} {
		for j, hd := range []time.Duration{-1, 0, 2 * time.Millisecond} {
			g := mustNew(t, members(20*time.Millisecond, fakes...), Config{Policy: p, HedgeDelay: hd, HedgeBudget: 1, FailAfter: 1000})
			for k := range 10 {
				wg.Go(func() {
					ctx, cancel := context.WithTimeout(context.Background(), time.Duration(5+(i+j+k)%4*15)*time.Millisecond)
					defer cancel()
					for range 5 {
						g.Exchange(ctx, []byte("q"), classify)
					}
				})
			}
		}
	}
	wg.Wait()
	waitGoroutines(t, base)
}

// TestConcurrent exercises everything at once for the race detector.
func TestConcurrent(t *testing.T) {
	var n atomic.Int64
	flaky := func(ctx context.Context, q []byte) ([]byte, error) {
		switch n.Add(1) % 7 {
		case 0:
			return nil, errDown
		case 1:
			return answer(3*time.Millisecond, "G")(ctx, q)
		case 2:
			return dnsReply(0)(ctx, q)
		}
		return []byte("G"), nil
	}
	fs := []*fake{newFake("a", flaky), newFake("b", flaky), newFake("c", flaky)}
	for _, p := range []Policy{Ordered, RoundRobin, Fastest} {
		t.Run(p.String(), func(t *testing.T) {
			g := mustNew(t, members(50*time.Millisecond, fs...), Config{Policy: p, FailAfter: 2, RecoverAfter: 1,
				ProbeInterval: time.Millisecond, ProbeAll: true, HedgeBudget: 0.5})
			g.Start()
			defer g.Close()
			var wg sync.WaitGroup
			for range 8 {
				wg.Go(func() {
					for range 100 {
						if _, _, err := g.Exchange(context.Background(), []byte("q"), classify); err != nil && !errors.Is(err, ErrNoAnswer) {
							t.Error(err)
						}
						g.States()
					}
				})
			}
			wg.Wait()
		})
	}
}

func waitGoroutines(t *testing.T, base int) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for runtime.NumGoroutine() > base {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			t.Fatalf("%d goroutines, want %d:\n%s", runtime.NumGoroutine(), base, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(time.Millisecond)
	}
}
