package xsk

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"xdoh/datapath/xsk/xsktest"
)

// TestParseAffinity: the config names and their default.
func TestParseAffinity(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Affinity
		err  bool
	}{
		{"", AffinityAuto, false},
		{"auto", AffinityAuto, false},
		{"off", AffinityOff, false},
		{"queue", 0, true},
	} {
		got, err := ParseAffinity(tc.in)
		if (err != nil) != tc.err || (err == nil && got != tc.want) {
			t.Errorf("ParseAffinity(%q) = %v, %v; want %v, error %v", tc.in, got, err, tc.want, tc.err)
		}
	}
}

// TestFollowCPU: the follower's decision from one interval's per-CPU
// counts.
func TestFollowCPU(t *testing.T) {
	var all, notTwo unix.CPUSet
	for c := range 4 {
		all.Set(c)
		if c != 2 {
			notTwo.Set(c)
		}
	}
	for _, tc := range []struct {
		name    string
		cur     int
		delta   []uint64
		allowed *unix.CPUSet
		want    int
	}{
		{"one CPU binds", -1, []uint64{0, 5000, 0, 0}, &all, 1},
		{"90% binds", -1, []uint64{500, 4500, 0, 0}, &all, 1},
		{"89% does not", -1, []uint64{551, 4449, 0, 0}, &all, -1},
		{"spread stays unbound", -1, []uint64{2500, 2500, 0, 0}, &all, -1},
		{"too few packets change nothing (unbound)", -1, []uint64{0, 249, 0, 0}, &all, -1},
		{"too few packets change nothing (bound)", 3, []uint64{249, 0, 0, 0}, &all, 3},
		{"75% keeps the bound CPU", 1, []uint64{1250, 3750, 0, 0}, &all, 1},
		{"below 75% unbinds", 1, []uint64{1300, 3700, 0, 0}, &all, -1},
		{"another CPU with 90% moves it", 1, []uint64{0, 100, 0, 4900}, &all, 3},
		{"a CPU xdoh may not use", -1, []uint64{0, 0, 5000, 0}, &notTwo, -1},
		{"bound to a CPU that stopped, spread", 0, []uint64{0, 3000, 3000, 0}, &all, -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := followCPU(tc.cur, tc.delta, tc.allowed); got != tc.want {
				t.Errorf("followCPU(%d, %v) = %d, want %d", tc.cur, tc.delta, got, tc.want)
			}
		})
	}
}

// TestServerFollowsSender runs a Server (generic mode, two-queue veth) and
// sends to it from a client thread bound to one CPU: on a veth the
// program runs in the sender's softirq, so the loop of the queue the
// packets arrive on must move to a thread bound to that CPU, as the
// kernel reports (/proc, not the loop's own record), and keep answering.
// Sending then from two CPUs in turn must unbind it, and with
// AffinityOff nothing is ever bound.
func TestServerFollowsSender(t *testing.T) {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		t.Fatal(err)
	}
	var cpus []int
	for c := 0; len(cpus) < set.Count(); c++ {
		if set.IsSet(c) {
			cpus = append(cpus, c)
		}
	}
	if len(cpus) < 2 {
		t.Skip("skipping: needs two CPUs to move a loop between")
	}
	every, min := followEvery, followMin
	followEvery, followMin = 50*time.Millisecond, 20
	t.Cleanup(func() { followEvery, followMin = every, min })

	for _, aff := range []Affinity{AffinityAuto, AffinityOff} {
		t.Run(aff.String(), func(t *testing.T) {
			p := xsktest.NewPair(t, 2)
			s := startServer(t, p, Config{Name: "t", Addrs: serverAddrs(p), Interfaces: []string{p.ServerIf}, Mode: ModeGeneric, Affinity: aff}, &testHandler{listener: "t"})
			conn := dialServer(t, p, "udp4", p.Server4)
			buf := make([]byte, 4096)
			id := uint16(0)
			// send sends n queries from a thread bound to the CPUs in turn
			// and reads every answer.
			send := func(n int, on ...int) {
				runtime.LockOSThread()
				defer runtime.UnlockOSThread()
				defer func() { _ = unix.SchedSetaffinity(0, &set) }()
				for i := range n {
					var one unix.CPUSet
					one.Set(on[i%len(on)])
					if err := unix.SchedSetaffinity(0, &one); err != nil {
						t.Fatal(err)
					}
					id++
					name := fmt.Sprintf("f%d.hit.", id)
					if _, err := conn.Write(packA(id, name)); err != nil {
						t.Fatal(err)
					}
					m, _, err := readReply(conn, buf, 3*time.Second)
					if err != nil {
						t.Fatalf("query %d: %v", id, err)
					}
					if err := checkAnswer(m, name, hitIP); err != nil {
						t.Fatal(err)
					}
				}
			}
			// bound returns the loop that received the queries and the
			// CPUs its thread may run on ("" while unbound).
			bound := func() (*loop, string) {
				var busy *loop
				for _, l := range s.ifaces[0].loops {
					if busy == nil || l.queries.Load() > busy.queries.Load() {
						busy = l
					}
				}
				tid := busy.tid.Load()
				if tid == 0 {
					return busy, ""
				}
				got, err := threadCPUs(int(tid))
				if err != nil {
					t.Fatal(err)
				}
				return busy, got
			}
			cpu := cpus[len(cpus)-1]
			wait := 5 * time.Second
			if aff == AffinityOff {
				wait = time.Second // twenty intervals
			}
			deadline := time.Now().Add(wait)
			var l *loop
			var on string
			for time.Now().Before(deadline) {
				send(100, cpu)
				if l, on = bound(); on != "" {
					break
				}
			}
			if aff == AffinityOff {
				if on != "" || l.cpu.Load() != -1 {
					t.Fatalf("affinity off: queue %d bound (thread on CPUs %q, reports %d)", l.queue, on, l.cpu.Load())
				}
				return
			}
			if on != strconv.Itoa(cpu) {
				t.Fatalf("queue %d's loop: thread on CPUs %q after 5 s of queries from CPU %d, want %d", l.queue, on, cpu, cpu)
			}
			for _, so := range s.Interfaces()[0].Sockets {
				if so.Queue == l.queue && so.CPU != cpu {
					t.Errorf("Interfaces: queue %d on CPU %d, want %d", so.Queue, so.CPU, cpu)
				}
			}
			tid := int(l.tid.Load())
			if a, err := unix.SchedGetAttr(tid, 0); err != nil || a.Policy != unix.SCHED_BATCH {
				t.Errorf("bound thread %d: policy %+v (%v), want SCHED_BATCH", tid, a, err)
			}
			// From two CPUs in turn: about half each, below followKeep.
			deadline = time.Now().Add(5 * time.Second)
			for time.Now().Before(deadline) {
				send(100, cpus[0], cpu)
				if _, on = bound(); on == "" {
					break
				}
			}
			if on != "" || l.cpu.Load() != -1 {
				t.Fatalf("queue %d still bound (thread on CPUs %q, reports %d) after 5 s of queries from CPUs %d and %d", l.queue, on, l.cpu.Load(), cpus[0], cpu)
			}
			// The thread went back to the pool as it came (if it still exists).
			if a, err := unix.SchedGetAttr(tid, 0); err == nil && a.Policy != 0 {
				t.Errorf("unbound thread %d: policy %d, want SCHED_OTHER", tid, a.Policy)
			}
			if got, err := threadCPUs(tid); err == nil && got == strconv.Itoa(cpu) {
				t.Errorf("unbound thread %d still on CPU %s only", tid, got)
			}
		})
	}
}

// threadCPUs reads thread tid's Cpus_allowed_list from /proc.
func threadCPUs(tid int) (string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/self/task/%d/status", tid))
	if err != nil {
		return "", fmt.Errorf("reading thread %d's status: %w", tid, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "Cpus_allowed_list:"); ok {
			return strings.TrimSpace(v), nil
		}
	}
	return "", fmt.Errorf("thread %d: no Cpus_allowed_list", tid)
}
