package udp

import (
	"context"
	"fmt"
	"runtime"
	"testing"
	"time"
)

// servingTests are the serving and stopping tests the wait-mode tests run
// again in their mode.
func servingTests() map[string]func(*testing.T) {
	return map[string]func(*testing.T){
		"serve":               TestServe,
		"wildcard":            TestWildcard,
		"concurrent":          TestConcurrent,
		"garbage":             TestGarbage,
		"stop":                TestStop,
		"stop with miss":      TestStopWithMissInFlight,
		"start fails cleanly": TestStartFails,
	}
}

// TestPollerMode runs the serving and stopping tests again with the loops
// parked in the runtime's poller (the mode GOMAXPROCS 1 gets), and checks
// that WaitAuto picks it exactly then.
func TestPollerMode(t *testing.T) {
	saved := autoWait
	t.Cleanup(func() { autoWait = saved })

	if got, want := saved(), map[bool]Wait{true: WaitPoller, false: WaitBlocking}[runtime.GOMAXPROCS(0) == 1]; got != want {
		t.Errorf("auto wait mode with GOMAXPROCS %d: %d, want %d", runtime.GOMAXPROCS(0), got, want)
	}

	autoWait = func() Wait { return WaitPoller }
	f, _ := newForwarder(t)
	s, err := New(Config{Name: "t", Addrs: []string{"127.0.0.1:0"}}, f)
	if err != nil {
		t.Fatal(err)
	}
	if s.cfg.Wait != WaitPoller {
		t.Fatalf("wait mode %d, want the poller", s.cfg.Wait)
	}
	for name, test := range servingTests() {
		t.Run(name, test)
	}
}

// TestPollerModeOneP serves with GOMAXPROCS 1, where the blocking mode
// would leave the resolving goroutines waiting for sysmon: a burst of misses
// must all be answered.
func TestPollerModeOneP(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	if w := autoWait(); w != WaitPoller {
		t.Fatalf("auto wait mode with GOMAXPROCS 1: %d, want the poller", w)
	}
	TestServe(t)
	TestConcurrent(t)
}

// TestAdaptiveMode runs the serving and stopping tests with WaitAdaptive,
// at this machine's GOMAXPROCS and at 1: the socket is blocking and
// registered with the poller, and each wait picks its way.
func TestAdaptiveMode(t *testing.T) {
	saved := autoWait
	t.Cleanup(func() { autoWait = saved })
	autoWait = func() Wait { return WaitAdaptive }
	for _, procs := range []int{runtime.GOMAXPROCS(0), 1} {
		t.Run(fmt.Sprintf("GOMAXPROCS %d", procs), func(t *testing.T) {
			defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(procs))
			for name, test := range servingTests() {
				t.Run(name, test)
			}
		})
	}
}

// TestAdaptiveModeFollowsGOMAXPROCS changes GOMAXPROCS between 1 and 2
// while serving, as cmd/xdoh does: misses (answered by other goroutines,
// which need a P while the loop waits) are answered at every level, the
// loop has waited both ways, and Stop wakes it at either level.
func TestAdaptiveModeFollowsGOMAXPROCS(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(0))
	for _, last := range []int{1, 2} {
		t.Run(fmt.Sprintf("stopped at %d", last), func(t *testing.T) {
			f, _ := newForwarder(t)
			s, err := New(Config{Name: "t", Addrs: []string{"127.0.0.1:0"}, Wait: WaitAdaptive}, f)
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = s.Stop(context.Background()) })
			addr := s.LocalAddrs()[0]
			for i, procs := range []int{2, 1, 2, 1, last} {
				runtime.GOMAXPROCS(procs)
				time.Sleep(20 * time.Millisecond) // the loop waits at this level
				for j := range 3 {
					start := time.Now()
					r := exchange(t, addr, fmt.Sprintf("m%d-%d.example.com.", i, j))
					if len(r.Answer) != 1 {
						t.Fatalf("GOMAXPROCS %d: answer %v", procs, r.Answer)
					}
					// The miss waits on its upstream's delay; a loop stuck
					// blocking with one P would add sysmon's 10 ms and more.
					t.Logf("GOMAXPROCS %d: miss answered in %v", procs, time.Since(start))
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			start := time.Now()
			if err := s.Stop(ctx); err != nil {
				t.Fatal(err)
			}
			if el := time.Since(start); el > 200*time.Millisecond {
				t.Errorf("Stop at GOMAXPROCS %d took %v: the loop was not woken", last, el)
			}
			l := s.loops[0] // ended: Stop waited for it
			if l.parked == 0 || l.blocked == 0 {
				t.Errorf("the loop parked in the poller %d times and blocked in recvmmsg %d times; want both", l.parked, l.blocked)
			}
		})
	}
}
