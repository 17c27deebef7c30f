package xsk

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"xdoh/datapath/xsk/xsktest"
)

// TestParseAffinity: the config names and their defaults.
func TestParseAffinity(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Affinity
		err  bool
	}{
		{"", AffinityQueue, false},
		{"queue", AffinityQueue, false},
		{"off", AffinityOff, false},
		{"cpu0", 0, true},
	} {
		got, err := ParseAffinity(tc.in)
		if (err != nil) != tc.err || (err == nil && got != tc.want) {
			t.Errorf("ParseAffinity(%q) = %v, %v; want %v, error %v", tc.in, got, err, tc.want, tc.err)
		}
	}
}

// TestServerBindsLoops starts a Server on a two-queue veth with each
// affinity. With AffinityQueue the loop of queue q runs on a thread whose
// kernel affinity is exactly the q-th CPU the process may use (read back
// from /proc, not from the loop's own record), and the server still
// answers; with AffinityOff no loop is bound.
func TestServerBindsLoops(t *testing.T) {
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
	for _, aff := range []Affinity{AffinityQueue, AffinityOff} {
		t.Run(aff.String(), func(t *testing.T) {
			p := xsktest.NewPair(t, 2)
			s := startServer(t, p, Config{Name: "t", Addrs: serverAddrs(p), Interfaces: []string{p.ServerIf}, Mode: ModeGeneric, Affinity: aff}, &testHandler{listener: "t"})
			loops := s.ifaces[0].loops
			if len(loops) != 2 {
				t.Fatalf("%d loops, want 2", len(loops))
			}
			if aff == AffinityOff {
				time.Sleep(50 * time.Millisecond) // a loop binds as it starts
				for _, so := range s.Interfaces()[0].Sockets {
					if so.CPU != -1 {
						t.Errorf("queue %d bound to CPU %d with affinity off", so.Queue, so.CPU)
					}
				}
				return
			}
			for _, l := range loops {
				want := cpus[l.queue%len(cpus)]
				deadline := time.Now().Add(2 * time.Second)
				for l.tid.Load() == 0 && time.Now().Before(deadline) {
					time.Sleep(time.Millisecond)
				}
				tid := l.tid.Load()
				if tid == 0 {
					t.Fatalf("queue %d: loop not bound within 2 s", l.queue)
				}
				got, err := threadCPUs(int(tid))
				if err != nil {
					t.Fatal(err)
				}
				if got != strconv.Itoa(want) {
					t.Errorf("queue %d: thread %d may run on CPUs %q, want %d", l.queue, tid, got, want)
				}
				if c := int(l.cpu.Load()); c != want {
					t.Errorf("queue %d: reports CPU %d, want %d", l.queue, c, want)
				}
			}
			for _, so := range s.Interfaces()[0].Sockets {
				if so.CPU != cpus[so.Queue%len(cpus)] {
					t.Errorf("Interfaces: queue %d on CPU %d, want %d", so.Queue, so.CPU, cpus[so.Queue%len(cpus)])
				}
			}
			// Bound loops still answer, from either queue.
			buf := make([]byte, 4096)
			for i, network := range []string{"udp4", "udp4", "udp6", "udp6"} {
				addr := p.Server4
				if network == "udp6" {
					addr = p.Server6
				}
				conn := dialServer(t, p, network, addr)
				name := fmt.Sprintf("b%d.hit.", i)
				if _, err := conn.Write(packA(uint16(i+1), name)); err != nil {
					t.Fatal(err)
				}
				m, _, err := readReply(conn, buf, 3*time.Second)
				if err != nil {
					t.Fatalf("%s query %d: %v", network, i, err)
				}
				if err := checkAnswer(m, name, hitIP); err != nil {
					t.Error(err)
				}
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
