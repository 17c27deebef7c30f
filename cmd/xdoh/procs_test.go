package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"

	"xdoh/cmd/xdoh/internal/procs"
)

// TestProcsGovernedOnTwoCPUs runs xdoh on two CPUs (taskset) with the
// automatic procs setting and reads its GOMAXPROCS from /metrics: 1 while
// no TCP client is connected, 2 soon after one connects, 1 again Hold after
// it left; queries are answered at every step. On a machine with one CPU
// it checks that xdoh leaves GOMAXPROCS alone instead.
func TestProcsGovernedOnTwoCPUs(t *testing.T) {
	if _, err := exec.LookPath("taskset"); err != nil {
		t.Skip("taskset (util-linux) not installed")
	}
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		t.Fatal(err)
	}
	var cpus []int
	for i := 0; i < 1024 && len(cpus) < 2; i++ {
		if set.IsSet(i) {
			cpus = append(cpus, i)
		}
	}
	list := fmt.Sprint(cpus[0])
	if len(cpus) == 2 {
		list += fmt.Sprintf(",%d", cpus[1])
	}
	addr, maddr := freeAddr(t), freeAddr(t)
	cmd := exec.Command("taskset", "-c", list, xdohBin, "run", "--demo", "--listen", addr, "--metrics", maddr)
	for _, kv := range os.Environ() { // GOMAXPROCS set would turn the automatic setting off
		if !strings.HasPrefix(kv, "GOMAXPROCS=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	startXdohCmd(t, addr, cmd)

	metric := func(name string) int {
		t.Helper()
		resp, err := http.Get("http://" + maddr + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		m := regexp.MustCompile(`(?m)^` + name + ` (\d+)$`).FindSubmatch(b)
		if m == nil {
			t.Fatalf("/metrics has no %s", name)
		}
		v, _ := strconv.Atoi(string(m[1]))
		return v
	}
	waitProcs := func(want int, within time.Duration) {
		t.Helper()
		deadline := time.Now().Add(within)
		for metric("xdoh_gomaxprocs") != want {
			if time.Now().After(deadline) {
				t.Fatalf("xdoh_gomaxprocs %d after %v, want %d", metric("xdoh_gomaxprocs"), within, want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	query := func(network string) {
		t.Helper()
		m := new(dns.Msg).SetQuestion("foo.example.com.", dns.TypeA)
		r, _, err := (&dns.Client{Net: network, Timeout: 2 * time.Second}).Exchange(m, addr)
		if err != nil || r.Rcode != dns.RcodeSuccess || len(r.Answer) == 0 {
			t.Fatalf("%s query: %v %v", network, r, err)
		}
	}

	waitProcs(1, 5*time.Second)
	query("udp")
	if len(cpus) < 2 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		query("tcp")
		time.Sleep(100 * time.Millisecond)
		if p, n := metric("xdoh_gomaxprocs"), metric("xdoh_gomaxprocs_changes_total"); p != 1 || n != 0 {
			t.Fatalf("one CPU: xdoh_gomaxprocs %d, %d changes; want 1 and none", p, n)
		}
		return
	}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	waitProcs(2, 2*time.Second)
	query("tcp")
	query("udp")
	c.Close()
	closed := time.Now()
	waitProcs(1, procs.Hold+5*time.Second)
	if d := time.Since(closed); d < procs.Hold {
		t.Fatalf("lowered %v after the last TCP client left, before the %v hold", d, procs.Hold)
	}
	query("udp")
	if n := metric("xdoh_gomaxprocs_changes_total"); n < 3 {
		t.Fatalf("xdoh_gomaxprocs_changes_total %d, want at least 3 (1, 2, 1)", n)
	}
}

// TestReloadRejectsProcsChange: procs is read at start; a reload that
// changes it is refused with the field's name, and xdoh keeps answering.
func TestReloadRejectsProcsChange(t *testing.T) {
	dir := t.TempDir()
	addr := freeAddr(t)
	sock := filepath.Join(dir, "x.sock")
	cfgPath := filepath.Join(dir, "x.yaml")
	zonePath, err := filepath.Abs(filepath.Join("demo", "aws.example.internal.zone"))
	if err != nil {
		t.Fatal(err)
	}
	write := func(n int) {
		text := fmt.Sprintf("procs: %d\nlisteners: [{name: l, do53: [%q]}]\nzones: [{name: aws.example.internal, file: %s}]\ncontrol: {socket: %s}\n",
			n, addr, zonePath, sock)
		if err := os.WriteFile(cfgPath, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(0)
	startXdoh(t, addr, "-c", cfgPath)
	write(1)
	out, err := exec.Command(xdohBin, "reload", "-s", sock).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "procs: changing it needs a restart") {
		t.Fatalf("reload changing procs: err %v, output %q; want it refused naming procs", err, out)
	}
	m := new(dns.Msg).SetQuestion("ipv4.aws.example.internal.", dns.TypeA)
	if _, _, err := (&dns.Client{Timeout: time.Second}).Exchange(m, addr); err != nil {
		t.Fatalf("not answering after the refused reload: %v", err)
	}
}
