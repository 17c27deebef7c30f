package xsk

import (
	"fmt"
	"runtime"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// Following the softirq (AffinityAuto). A queue's RX ring is filled by the
// XDP program in the softirq of whichever CPU received the packet: on a NIC
// the CPU of the queue's interrupt, on a veth the sender's. A loop on
// another CPU pulls every descriptor and frame across, and its kick (which
// in copy mode runs the device's transmit path) wakes that CPU again. The
// program counts its redirects per queue and CPU (bpf's queue_cpus); the
// follower reads them every followEvery (one system call per queue) and
// tells each loop where to run: on one CPU while that CPU delivers nearly
// all of the queue's packets, anywhere when senders spread over CPUs; too
// few packets to tell change nothing (an idle queue keeps its binding).
// The loop moves itself (rebind) when it next looks for packets.

var (
	followEvery = 250 * time.Millisecond // how often the counts are read
	followMin   = uint64(250)            // packets in an interval below which nothing changes (1000/s)
)

const (
	followBind = 90 // percent of an interval's packets from one CPU that bind a loop to it
	followKeep = 75 // percent the bound CPU must keep for the loop to stay
)

// follower is the goroutine that reads the program's per-CPU redirect
// counts and sets each loop's want.
type follower struct {
	s       *Server
	allowed unix.CPUSet // the CPUs xdoh may use, read at Start
	quit    chan struct{}
	done    sync.WaitGroup
}

// startFollow starts the follower; Stop ends it.
func (s *Server) startFollow() error {
	f := &follower{s: s, quit: make(chan struct{})}
	if err := unix.SchedGetaffinity(0, &f.allowed); err != nil {
		return fmt.Errorf("reading the CPUs xdoh may use: %w", err)
	}
	ncpu, err := ebpf.PossibleCPU()
	if err != nil {
		return fmt.Errorf("counting the possible CPUs: %w", err)
	}
	for _, ifc := range s.ifaces {
		for _, l := range ifc.loops {
			l.prevCPUs = make([]uint64, ncpu)
		}
	}
	s.follow = f
	f.done.Add(1)
	go f.run(ncpu)
	return nil
}

func (f *follower) run(ncpu int) {
	defer f.done.Done()
	t := time.NewTicker(followEvery)
	defer t.Stop()
	now := make([]uint64, ncpu)
	delta := make([]uint64, ncpu)
	for {
		select {
		case <-f.quit:
			return
		case <-t.C:
		}
		for _, ifc := range f.s.ifaces { // fixed once Start returned
			for _, l := range ifc.loops {
				if err := ifc.prog.QueueCPUs(l.queue, now); err != nil {
					continue // the next tick tries again
				}
				for c := range now {
					delta[c] = now[c] - l.prevCPUs[c]
				}
				copy(l.prevCPUs, now)
				if l.bindFailed.Load() {
					continue
				}
				l.want.Store(int32(followCPU(int(l.want.Load()), delta, &f.allowed)))
			}
		}
	}
}

// close ends the follower and waits for it. Loops keep their binding
// until they end.
func (f *follower) close() {
	close(f.quit)
	f.done.Wait()
}

// followCPU is where a loop should run after an interval in which CPU c
// delivered delta[c] of its queue's packets, given where the follower
// wanted it so far (cur, -1: anywhere): the CPU with at least followBind
// percent, if xdoh may use it; cur while it keeps followKeep percent;
// otherwise anywhere. Fewer than followMin packets change nothing.
func followCPU(cur int, delta []uint64, allowed *unix.CPUSet) int {
	var total, top uint64
	best := -1
	for c, n := range delta {
		total += n
		if n > top {
			top, best = n, c
		}
	}
	switch {
	case total < followMin:
		return cur
	case cur >= 0 && cur < len(delta) && delta[cur]*100 >= total*followKeep:
		return cur
	case top*100 >= total*followBind && allowed.IsSet(best):
		return best
	}
	return -1
}

// rebind moves the loop's goroutine to where the follower wants it (want):
// onto an OS thread of its own bound to that CPU, or back to Go's
// scheduler. A bound thread stays locked to the goroutine, so no other
// goroutine runs with its affinity; unbinding restores the thread's
// affinity and policy before it goes back to the pool. A failure (a CPU
// taken away since Start) is logged once and ends the following for this
// loop.
//
// A bound thread runs SCHED_BATCH (best effort): woken by the softirq that
// fills its ring, it does not preempt the task running on its CPU (on a
// veth the sender; ksoftirqd under load) but waits for that task's slice
// to end or for it to block, so packets gather into larger batches, like
// a NIC's interrupt moderation. An idle CPU runs it at once.
func (l *loop) rebind(want int32) {
	var set unix.CPUSet
	if want >= 0 {
		set.Set(int(want))
	} else {
		set = l.srv.follow.allowed // only the follower asks for a move
	}
	if l.bound < 0 {
		runtime.LockOSThread()
	}
	if err := unix.SchedSetaffinity(0, &set); err != nil {
		if l.bound < 0 {
			runtime.UnlockOSThread()
		}
		l.bindFailed.Store(true)
		l.want.Store(l.bound)
		l.srv.log().Warn("xdp: loop not moved to its queue's CPU; it stays where it is", "listener", l.name, "queue", l.queue, "cpu", want, "err", err)
		return
	}
	wasBound := l.bound >= 0
	l.bound = want
	l.cpu.Store(want)
	if want < 0 {
		if l.policy != nil {
			_ = unix.SchedSetAttr(0, l.policy, 0)
			l.policy = nil
		}
		l.tid.Store(0)
		runtime.UnlockOSThread()
		return
	}
	if !wasBound {
		if a, err := unix.SchedGetAttr(0, 0); err == nil && a.Policy == 0 { // SCHED_OTHER
			batch := *a
			batch.Policy = unix.SCHED_BATCH
			if unix.SchedSetAttr(0, &batch, 0) == nil {
				l.policy = a
			}
		}
	}
	l.tid.Store(int32(unix.Gettid()))
}
