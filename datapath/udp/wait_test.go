package udp

import (
	"runtime"
	"testing"
)

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
	for name, test := range map[string]func(*testing.T){
		"serve":               TestServe,
		"wildcard":            TestWildcard,
		"concurrent":          TestConcurrent,
		"garbage":             TestGarbage,
		"stop":                TestStop,
		"stop with miss":      TestStopWithMissInFlight,
		"start fails cleanly": TestStartFails,
	} {
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
