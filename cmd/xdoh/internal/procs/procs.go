// Package procs chooses how many Ps (GOMAXPROCS) xdoh runs goroutines on,
// and on a two-CPU machine changes it while TCP clients are connected.
//
// Why one P. On 2 CPUs shared with the upstream and the clients (the peer
// benchmark's box, a small VM), forwarding UDP queries over DoH costs
// less CPU per query with GOMAXPROCS 1 than with 2, and goes faster
// (docs/performance.md has the runs). With two Ps every hand-off between goroutines (datagram loop → DoH writer →
// DoH reader → reply sender) may wake a second thread through a futex, and
// the UDP loop's blocking recvmmsg makes the runtime's sysmon retake its P
// every 20 µs; a context switch is dear on a VM. With one P the hand-offs
// are goroutine switches on one thread, and the UDP loop parks in the
// runtime's poller (datapath/udp's WaitAdaptive: with two Ps it blocks in
// recvmmsg instead).
//
// Why two while TCP clients are connected. gnet's event loops (datapath/tcp,
// Do53 over TCP) wait in epoll_wait(2) on their own threads, holding a P.
// With one P the goroutine that reads the upstream's answer cannot run until
// sysmon takes that P back, 20 µs to 10 ms later, and lone TCP queries took
// about twice as long. So the first open TCP connection raises
// GOMAXPROCS to two at once, and it drops back to one when no TCP connection
// has been open for Hold (so that clients connecting once per query do not
// make it flap: each change stops the world for some microseconds).
//
// The policy (Auto): an explicit setting (the config's procs, or the
// GOMAXPROCS environment variable) is used as given, without a Governor.
// Otherwise, with exactly two Ps (two CPUs, or a container limited to two)
// xdoh governs between one and two; with any other number nothing changes:
// only the two-CPU case was measured. Once xdoh has set GOMAXPROCS, the Go
// runtime no longer follows a container's CPU limit changing at run time.
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
// from any goroutine and do not block: changing GOMAXPROCS stops the world,
// which waits for a garbage collection in progress to finish (tens of
// milliseconds with a large cache), so one goroutine of the Governor's own
// applies each change. Until it has run, the level is the previous one:
// with one P that is after the runtime takes the P back from the event
// loop that asked (one sysmon tick, 20 µs to 10 ms).
type Governor struct {
	low, high int
	hold      time.Duration
	set       func(int) int // runtime.GOMAXPROCS; replaced in tests

	mu      sync.Mutex
	holders int
	want    int         // the level asked for
	timer   *time.Timer // pending lowering, nil if none
	closed  bool

	kick    chan struct{} // cap 1: want changed
	quit    chan struct{}
	done    chan struct{} // the applier has ended
	cur     atomic.Int64  // the level applied
	changes atomic.Uint64
}

func newGovernor(low, high int, hold time.Duration, set func(int) int) *Governor {
	g := &Governor{low: low, high: high, hold: hold, set: set, want: low,
		kick: make(chan struct{}, 1), quit: make(chan struct{}), done: make(chan struct{})}
	g.apply(low)
	go g.run()
	return g
}

// apply sets n Ps unless they are set already; only the applier (and
// newGovernor and Close, before and after it) calls it.
func (g *Governor) apply(n int) {
	if int(g.cur.Load()) == n {
		return
	}
	g.set(n)
	g.cur.Store(int64(n))
	g.changes.Add(1)
}

// run is the applier: it sets the level last asked for, outside mu.
func (g *Governor) run() {
	defer close(g.done)
	for {
		select {
		case <-g.kick:
			g.mu.Lock()
			n := g.want
			g.mu.Unlock()
			g.apply(n)
		case <-g.quit:
			return
		}
	}
}

// ask records the level wanted and wakes the applier; the caller holds mu.
func (g *Governor) ask(n int) {
	g.want = n
	select {
	case g.kick <- struct{}{}:
	default:
	}
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
	if !g.closed && g.want != g.high {
		g.ask(g.high)
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
			g.ask(g.low)
		}
	})
	g.timer = t
}

// Procs is the current GOMAXPROCS as set by g.
func (g *Governor) Procs() int { return int(g.cur.Load()) }

// Changes counts the changes of GOMAXPROCS made by g, the first included.
func (g *Governor) Changes() uint64 { return g.changes.Load() }

// Close stops governing and leaves GOMAXPROCS at high. Later calls do
// nothing.
func (g *Governor) Close() {
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return
	}
	g.closed = true
	if g.timer != nil {
		g.timer.Stop()
		g.timer = nil
	}
	g.mu.Unlock()
	close(g.quit)
	<-g.done
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
