package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"xdoh/bench"
	"xdoh/datapath/xsk/xsktest"
)

// TestXDPRestart restarts an xdoh that has XDP attached (generic mode, on
// a veth in a namespace pair) while `xdoh bench` in the client namespace
// sends 1000 q/s, and counts what is lost:
//
//   - overlap: the new xdoh starts while the old one runs (its Do53
//     sockets join the old ones' SO_REUSEPORT group and steer it to
//     themselves, bpf.SteerReuseport; XDP, already held by the old one,
//     falls back to the sockets in mode auto), then the old one gets
//     SIGTERM: it detaches its program first, so packets go to the kernel
//     sockets, the new one's, and drains. Nothing may be lost.
//   - stop-start: SIGTERM, wait for the exit, start again (what a plain
//     `systemctl restart` does): port 53 has no socket between the two,
//     and what arrives then is lost. The count is logged, not asserted.
func TestXDPRestart(t *testing.T) {
	for _, mode := range []string{"overlap", "stop-start"} {
		t.Run(mode, func(t *testing.T) {
			s := newXDPSetup(t, "generic")
			oldCmd, oldExited, _ := s.start(t)
			// The second instance: same listener, XDP auto, no metrics
			// address (the first holds it).
			conf, err := os.ReadFile(s.conf)
			if err != nil {
				t.Fatal(err)
			}
			var lines []string
			for _, l := range strings.Split(string(conf), "\n") {
				if !strings.HasPrefix(l, "metrics:") {
					lines = append(lines, strings.Replace(l, "mode: generic", "mode: auto", 1))
				}
			}
			conf2 := filepath.Join(s.dir, "xdoh2.yaml")
			if err := os.WriteFile(conf2, []byte(strings.Join(lines, "\n")), 0o644); err != nil {
				t.Fatal(err)
			}
			qf := filepath.Join(s.dir, "q.txt")
			if err := os.WriteFile(qf, []byte("ipv4.aws.example.internal A\nfoo.example.com A\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			js := filepath.Join(s.dir, "run.json")
			benchCmd := xsktest.Command(s.p.ClientNS, xdohBin, "bench", "--allow-remote", "-d", qf, "-Q", "1000", "-l", "8", "-t", "2", "--json", js, s.p.Server4)
			benchOut := &syncBuffer{}
			benchCmd.Stdout, benchCmd.Stderr = benchOut, benchOut
			benchCmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
			if err := benchCmd.Start(); err != nil {
				t.Fatal(err)
			}
			benchDone := make(chan error, 1)
			go func() { benchDone <- benchCmd.Wait() }()
			t.Cleanup(func() { _ = syscall.Kill(-benchCmd.Process.Pid, syscall.SIGKILL) })

			time.Sleep(2 * time.Second)
			log2 := filepath.Join(s.dir, "xdoh-new.log")
			startNew := func() {
				startInNS(t, s.p.ServerNS, log2, xdohBin, "run", "-c", conf2)
				for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
					if b, _ := os.ReadFile(log2); strings.Contains(string(b), `msg="xdoh running"`) {
						break
					} else if time.Now().After(deadline) {
						t.Fatalf("the new xdoh did not start:\n%s", b)
					}
				}
			}
			stopOld := func() {
				_ = syscall.Kill(-oldCmd.Process.Pid, syscall.SIGTERM)
				select {
				case <-oldExited:
				case <-time.After(10 * time.Second):
					t.Fatal("the old xdoh did not exit")
				}
			}
			if mode == "overlap" {
				startNew()
				stopOld()
			} else {
				stopOld()
				startNew()
			}
			if err := <-benchDone; err != nil {
				t.Logf("bench: %v", err) // exit status 1 when queries were lost
			}
			data, err := os.ReadFile(js)
			if err != nil {
				t.Fatalf("%v\n%s", err, benchOut.String())
			}
			var rep bench.Report
			if err := json.Unmarshal(data, &rep); err != nil {
				t.Fatal(err)
			}
			lost := int64(rep.Sent) - int64(rep.Answered)
			b, _ := os.ReadFile(log2)
			t.Logf("%s restart under 1000 q/s: sent %d, answered %d, lost %d (timeouts %d, errors %d), rcodes %v; new instance xdp fallback: %v",
				mode, rep.Sent, rep.Answered, lost, rep.Timeouts, rep.Errors, rep.Rcodes, strings.Contains(string(b), "xdp unavailable"))
			// Overlap: nothing lost. Before the new instance steered the
			// group, 2 runs of 14 under the race detector lost 1 and 4:
			// datagrams the kernel still gave the old instance's sockets
			// after their last read (a socket leaves a SO_REUSEPORT group
			// only by closing). The stop-start gap loses hundreds.
			if strings.Contains(string(b), "do53 sockets not steered") {
				t.Errorf("the new instance could not steer its sockets:\n%s", b)
			}
			if mode == "overlap" && (lost != 0 || rep.Sent < 1000) {
				t.Errorf("overlapping restart lost %d of %d queries\n%s", lost, rep.Sent, b)
			}
		})
	}
}
