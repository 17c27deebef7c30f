// Package procs chooses how many Ps (GOMAXPROCS) xdoh runs goroutines on,
// and on a two-CPU machine changes it while TCP clients are connected.
//
// Why one P. On 2 CPUs shared with the upstream and the clients (the peer
// benchmark's box, a small VM), forwarding UDP queries over DoH cost about
// half the CPU per query with GOMAXPROCS 1 as with 2: 14-21 µs against
// 26-36 µs, at 24-35k against 18-20k QPS (to BIND 9.18, saturated). With
// two Ps every hand-off between goroutines (datagram loop → DoH writer →
// DoH reader → reply sender) may wake a second thread through a futex, and
// the UDP loop's blocking recvmmsg makes the runtime's sysmon retake its P
// every 20 µs; a context switch is dear on a VM. With one P the hand-offs
// are goroutine switches on one thread, and the UDP loop parks in the
// runtime's poller (datapath/udp's WaitPoller).
//
// Why two while TCP clients are connected. gnet's event loops (datapath/gnet,
// Do53 over TCP) wait in epoll_wait(2) on their own threads, holding a P.
// With one P the goroutine that reads the upstream's answer cannot run until
// sysmon takes that P back, 20 µs to 10 ms later: lone TCP queries took
// 0.39-0.41 ms instead of 0.16-0.26. So the first open TCP connection raises
// GOMAXPROCS to two at once, and it drops back to one when no TCP connection
// has been open for Hold (so that clients connecting once per query do not
// make it flap: each change stops the world for some microseconds).
//
// The policy (Auto): an explicit setting (the config's procs, or the
// GOMAXPROCS environment variable) is used as given, without a Governor.
// Otherwise, with exactly two Ps (two CPUs, or a container limited to two)
// xdoh governs between one and two; with any other number nothing changes:
// only the two-CPU case was measured.
package procs

import (
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// Hold is how long GOMAXPROCS stays raised after the last TCP connection
// closed.
const Hold = 5 * time.Second

// Governor raises GOMAXPROCS from low to high while anything holds it
// (Acquire) and lowers it Hold after the last Release. Its methods are safe
// from any goroutine and do not block beyond the runtime's stop-the-world.
type Governor struct {
	low, high int
	hold      time.Duration
	set       func(int) int // runtime.GOMAXPROCS; replaced in tests

	mu      sync.Mutex
	holders int
	timer   *time.Timer // pending lowering, nil if none
	closed  bool

	cur     atomic.Int64
	changes atomic.Uint64
}

// NewGovernor starts at low.
func NewGovernor(low, high int, hold time.Duration) *Governor {
	return newGovernor(low, high, hold, runtime.GOMAXPROCS)
}

func newGovernor(low, high int, hold time.Duration, set func(int) int) *Governor {
	g := &Governor{low: low, high: high, hold: hold, set: set}
	g.apply(low)
	return g
}

// apply sets n Ps; the caller holds mu (or owns g).
func (g *Governor) apply(n int) {
	if int(g.cur.Load()) == n {
		return
	}
	g.set(n)
	g.cur.Store(int64(n))
	g.changes.Add(1)
}

// Acquire raises GOMAXPROCS to high until the matching Release.
func (g *Governor) Acquire() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.holders++
	if g.timer != nil {
		g.timer.Stop()
		g.timer = nil
	}
	if !g.closed {
		g.apply(g.high)
	}
}

// Release ends one Acquire; after the last, GOMAXPROCS returns to low once
// Hold has passed without another Acquire.
func (g *Governor) Release() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.holders--
	if g.holders > 0 || g.closed || g.timer != nil {
		return
	}
	var t *time.Timer
	t = time.AfterFunc(g.hold, func() {
		g.mu.Lock()
		defer g.mu.Unlock()
		if g.timer != t { // stopped too late: an Acquire came in between
			return
		}
		g.timer = nil
		if g.holders <= 0 && !g.closed {
			g.apply(g.low)
		}
	})
	g.timer = t
}

// Procs is the current GOMAXPROCS as set by g.
func (g *Governor) Procs() int { return int(g.cur.Load()) }

// Changes counts the changes of GOMAXPROCS made by g, the first included.
func (g *Governor) Changes() uint64 { return g.changes.Load() }

// Close stops governing and leaves GOMAXPROCS at high.
func (g *Governor) Close() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.timer != nil {
		g.timer.Stop()
		g.timer = nil
	}
	g.closed = true
	g.apply(g.high)
}

// Auto applies the policy (see the package documentation) for the config's
// procs setting (0: auto) and returns the Governor, or nil when GOMAXPROCS
// is fixed. It reads the GOMAXPROCS environment variable.
func Auto(setting int) *Governor {
	return auto(setting, os.Getenv("GOMAXPROCS") != "", runtime.GOMAXPROCS)
}

func auto(setting int, env bool, set func(int) int) *Governor {
	switch {
	case setting > 0:
		set(setting)
		return nil
	case env:
		return nil
	case set(0) == 2:
		return newGovernor(1, 2, Hold, set)
	}
	return nil
}
