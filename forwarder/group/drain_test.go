package group

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"
)

// TestDrain: a drained target gets no query, healthy or down, under every
// policy; the others take its share; undrained it is used again; with
// every target drained a query fails at once with ErrDrained and reaches
// no target.
func TestDrain(t *testing.T) {
	for _, p := range []Policy{Ordered, RoundRobin, Fastest} {
		t.Run(p.String(), func(t *testing.T) {
			a, b := newFake("a", answer(0, "G")), newFake("b", answer(0, "G"))
			g := mustNew(t, members(time.Second, a, b), Config{Policy: p, HedgeDelay: -1})
			if n := g.SetDrained("a", true); n != 1 {
				t.Fatalf("SetDrained found %d members named a, want 1", n)
			}
			if n := g.SetDrained("nonesuch", true); n != 0 {
				t.Fatalf("SetDrained found %d members named nonesuch, want 0", n)
			}
			if got := fmt.Sprint(winners(t, g, 6)); got != "[b b b b b b]" {
				t.Errorf("with a drained: winners %s, want only b", got)
			}
			if a.calls.Load() != 0 {
				t.Errorf("drained a got %d queries", a.calls.Load())
			}
			if st := g.States(); !st[0].Drained || st[1].Drained {
				t.Errorf("states %+v: want a drained, b not", st)
			}
			// Down does not make a drained target a last resort.
			b.set(fail)
			if _, _, err := g.Exchange(context.Background(), []byte("q"), classify); err == nil || a.calls.Load() != 0 {
				t.Errorf("b failing, a drained: err %v, a asked %d times; want an error and a untouched", err, a.calls.Load())
			}
			b.set(answer(0, "G"))
			g.SetDrained("b", true)
			before := b.calls.Load()
			_, _, err := g.Exchange(context.Background(), []byte("q"), classify)
			if !errors.Is(err, ErrDrained) || !errors.Is(err, ErrNoAnswer) {
				t.Errorf("every target drained: err %v, want ErrNoAnswer and ErrDrained", err)
			}
			if a.calls.Load() != 0 || b.calls.Load() != before {
				t.Errorf("every target drained, yet a query went out")
			}
			g.SetDrained("a", false)
			g.SetDrained("b", false)
			// Fastest uses b only when it explores (one query in
			// exploreEvery, counted by a sequence other orderings also
			// advance): 100 queries give it three chances, not one.
			seen := map[string]bool{}
			for _, w := range winners(t, g, 100) {
				seen[w] = true
			}
			if p != Ordered && (!seen["a"] || !seen["b"]) || p == Ordered && !seen["a"] {
				t.Errorf("undrained: winners %v; a must be used again", seen)
			}
		})
	}
}

// TestDrainSkipsProbes: a drained target that is down is not probed, so
// it stays as it was until it is undrained.
func TestDrainSkipsProbes(t *testing.T) {
	a := newFake("a", dnsReply(0))
	g := mustNew(t, members(time.Second, a), Config{ProbeAll: true})
	g.SetDrained("a", true)
	g.probeRound(context.Background())
	if a.calls.Load() != 0 {
		t.Errorf("a drained target was probed %d times", a.calls.Load())
	}
	g.SetDrained("a", false)
	g.probeRound(context.Background())
	if a.calls.Load() != 1 {
		t.Errorf("undrained: probed %d times, want 1", a.calls.Load())
	}
}

// TestInflight: a target's in-flight count follows the attempts sent to it
// and comes back to zero however each ends: answered, failed over from,
// overtaken by a hedge and cancelled, or cancelled by the caller.
func TestInflight(t *testing.T) {
	inflight := func(g *Group) []int64 {
		var out []int64
		for _, s := range g.States() {
			out = append(out, s.Inflight)
		}
		return out
	}
	waitZero := func(t *testing.T, g *Group) {
		t.Helper()
		for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(time.Millisecond) {
			if got := fmt.Sprint(inflight(g)); got == "[0 0]" {
				return
			} else if time.Now().After(deadline) {
				t.Fatalf("in flight %s after every query ended, want [0 0]", got)
			}
		}
	}
	release := make(chan struct{})
	held := func(ctx context.Context, _ []byte) ([]byte, error) {
		select {
		case <-release:
			return []byte("G"), nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}

	t.Run("answered", func(t *testing.T) {
		a, b := newFake("a", held), newFake("b", answer(0, "G"))
		g := mustNew(t, members(time.Second, a, b), Config{HedgeDelay: -1})
		done := make(chan error, 1)
		go func() { _, _, err := g.Exchange(context.Background(), []byte("q"), classify); done <- err }()
		for deadline := time.Now().Add(2 * time.Second); fmt.Sprint(inflight(g)) != "[1 0]"; time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("in flight %v while a holds the query, want [1 0]", inflight(g))
			}
		}
		close(release)
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		waitZero(t, g)
	})
	t.Run("failover", func(t *testing.T) {
		a, b := newFake("a", fail), newFake("b", answer(0, "G"))
		g := mustNew(t, members(time.Second, a, b), Config{HedgeDelay: -1})
		winners(t, g, 5)
		waitZero(t, g)
	})
	t.Run("hedge overtaken", func(t *testing.T) {
		a, b := newFake("a", hang), newFake("b", answer(0, "G"))
		g := mustNew(t, members(time.Second, a, b), Config{HedgeDelay: 5 * time.Millisecond})
		winners(t, g, 1)
		waitZero(t, g)
	})
	t.Run("caller cancels", func(t *testing.T) {
		a, b := newFake("a", hang), newFake("b", hang)
		g := mustNew(t, members(time.Second, a, b), Config{HedgeDelay: -1})
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		defer cancel()
		if _, _, err := g.Exchange(ctx, []byte("q"), classify); err == nil {
			t.Fatal("a hanging target answered")
		}
		waitZero(t, g)
	})
}
