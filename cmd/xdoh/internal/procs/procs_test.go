package procs

import (
	"sync"
	"testing"
	"time"
)

// fakeProcs records GOMAXPROCS calls instead of changing the test's runtime.
type fakeProcs struct {
	mu  sync.Mutex
	n   int
	log []int
}

func (f *fakeProcs) set(n int) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	old := f.n
	if n > 0 {
		f.n = n
		f.log = append(f.log, n)
	}
	return old
}

func (f *fakeProcs) get() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.n
}

func TestAuto(t *testing.T) {
	for _, tc := range []struct {
		name     string
		setting  int
		env      bool
		cpus     int
		governed bool
		want     int // GOMAXPROCS afterwards
	}{
		{"two CPUs: governed, starts at one", 0, false, 2, true, 1},
		{"one CPU: unchanged", 0, false, 1, false, 1},
		{"four CPUs: unchanged", 0, false, 4, false, 4},
		{"GOMAXPROCS in the environment wins", 0, true, 2, false, 2},
		{"the setting wins", 3, false, 2, false, 3},
		{"the setting wins over the environment", 1, true, 2, false, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeProcs{n: tc.cpus}
			g := auto(tc.setting, tc.env, f.set)
			if (g != nil) != tc.governed {
				t.Fatalf("governor = %v, want governed %v", g, tc.governed)
			}
			if f.get() != tc.want {
				t.Fatalf("GOMAXPROCS = %d, want %d", f.get(), tc.want)
			}
			if g != nil {
				g.Close()
				if f.get() != 2 {
					t.Fatalf("after Close GOMAXPROCS = %d, want 2", f.get())
				}
			}
		})
	}
}

func waitProcs(t *testing.T, f *fakeProcs, want int, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for f.get() != want {
		if time.Now().After(deadline) {
			t.Fatalf("GOMAXPROCS = %d after %v, want %d", f.get(), within, want)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestGovernorRaisesAndLowersAfterHold(t *testing.T) {
	f := &fakeProcs{n: 2}
	const hold = 50 * time.Millisecond
	g := newGovernor(1, 2, hold, f.set)
	defer g.Close()
	if f.get() != 1 || g.Procs() != 1 {
		t.Fatalf("start: GOMAXPROCS %d, Procs %d; want 1", f.get(), g.Procs())
	}
	g.Acquire()
	waitProcs(t, f, 2, time.Second)
	if g.Procs() != 2 {
		t.Fatalf("after Acquire: Procs %d, want 2", g.Procs())
	}
	g.Acquire()
	g.Release()
	time.Sleep(2 * hold)
	if f.get() != 2 {
		t.Fatalf("one holder left: GOMAXPROCS %d, want 2", f.get())
	}
	released := time.Now()
	g.Release()
	if f.get() != 2 {
		t.Fatal("lowered at once on the last Release; want after the hold")
	}
	waitProcs(t, f, 1, 5*time.Second)
	if d := time.Since(released); d < hold {
		t.Fatalf("lowered after %v, before the %v hold", d, hold)
	}
	if g.Changes() != 3 { // 1 at start, 2, 1
		t.Fatalf("Changes = %d, want 3 (log %v)", g.Changes(), f.log)
	}
}

// A client that connects once per query: each Acquire within the hold
// cancels the lowering, so GOMAXPROCS does not flap.
func TestGovernorDoesNotFlap(t *testing.T) {
	f := &fakeProcs{n: 2}
	g := newGovernor(1, 2, time.Second, f.set)
	for range 50 {
		g.Acquire()
		g.Release()
		time.Sleep(time.Millisecond)
	}
	waitProcs(t, f, 2, time.Second)
	waitProcs(t, f, 1, 5*time.Second)
	if got := len(f.log); got != 3 { // 1 at start, then 2 once, then 1 after the hold
		t.Fatalf("GOMAXPROCS set %d times (%v), want 3", got, f.log)
	}
	g.Close()
}

func TestGovernorConcurrent(t *testing.T) {
	f := &fakeProcs{n: 2}
	g := newGovernor(1, 2, time.Millisecond, f.set)
	var wg sync.WaitGroup
	g.Acquire() // held throughout: the others' churn must not lower it
	for range 8 {
		wg.Go(func() {
			for range 1000 {
				g.Acquire()
				g.Release()
			}
		})
	}
	wg.Wait()
	waitProcs(t, f, 2, time.Second)
	time.Sleep(20 * time.Millisecond) // many holds' worth
	if f.get() != 2 {
		t.Fatalf("GOMAXPROCS %d while still held, want 2", f.get())
	}
	g.Release()
	waitProcs(t, f, 1, 5*time.Second)
	g.Close()
}

func TestGovernorCloseStopsLowering(t *testing.T) {
	f := &fakeProcs{n: 2}
	g := newGovernor(1, 2, 10*time.Millisecond, f.set)
	g.Acquire()
	g.Release()
	g.Close()
	time.Sleep(50 * time.Millisecond)
	if f.get() != 2 {
		t.Fatalf("after Close GOMAXPROCS %d, want 2", f.get())
	}
	g.Acquire() // a late connection after Close changes nothing
	g.Release()
	time.Sleep(50 * time.Millisecond)
	if f.get() != 2 {
		t.Fatalf("after a late Acquire/Release GOMAXPROCS %d, want 2", f.get())
	}
	g.Close() // twice: nothing
}

// TestGovernorDoesNotBlockCallers: while the applier is stuck in a slow
// change (the runtime waiting for a garbage collection to end), Acquire
// and Release return at once.
func TestGovernorDoesNotBlockCallers(t *testing.T) {
	f := &fakeProcs{n: 2}
	gate := make(chan struct{})
	var once sync.Once
	slow := func(n int) int {
		if n == 2 {
			once.Do(func() { <-gate })
		}
		return f.set(n)
	}
	g := newGovernor(1, 2, time.Millisecond, slow)
	g.Acquire() // the applier now waits on gate
	done := make(chan struct{})
	go func() {
		for range 100 {
			g.Release()
			g.Acquire()
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Acquire/Release blocked behind a slow GOMAXPROCS change")
	}
	close(gate)
	waitProcs(t, f, 2, time.Second)
	g.Release()
	waitProcs(t, f, 1, 5*time.Second)
	g.Close()
}
