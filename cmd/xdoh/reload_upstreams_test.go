package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"xdoh/forwarder/upstream/upstreamtest"
)

// TestReloadKeepsUpstreamConnections: a reload that leaves an upstream's
// settings alone keeps its client and connections (BIND accepts no new
// TCP connection across several reloads, though queries go on over DoH);
// a reload that changes them dials new ones.
func TestReloadKeepsUpstreamConnections(t *testing.T) {
	bind := upstreamtest.StartBIND(t, upstreamtest.BINDOptions{})
	dir := t.TempDir()
	addr := freeAddr(t)
	sock := filepath.Join(dir, "x.sock")
	cfgPath := filepath.Join(dir, "x.yaml")
	write := func(method string) {
		t.Helper()
		text := fmt.Sprintf(`listeners: [{name: in, do53: [%q]}]
default: {targets: [%q], ca_file: %s, method: %s}
upstream: {conns: 2}
control: {socket: %s}
`, addr, bind.DoHURL, bind.CAFile, method, sock)
		if err := os.WriteFile(cfgPath, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	reload := func() {
		t.Helper()
		if out, err := exec.Command(xdohBin, "reload", "-s", sock).CombinedOutput(); err != nil {
			t.Fatalf("reload: %v\n%s", err, out)
		}
	}
	n := 0
	ask := func() { // a new name each time: it reaches BIND
		t.Helper()
		n++
		m := new(dns.Msg).SetQuestion(fmt.Sprintf("n%d.example.com.", n), dns.TypeA)
		r, _, err := (&dns.Client{Timeout: 3 * time.Second}).Exchange(m, addr)
		if err != nil || r.Rcode != dns.RcodeNameError {
			t.Fatalf("query %d: %v %v", n, err, r)
		}
	}
	// accepts is BIND's accepted TCP connections, less the statistics
	// channel's own (each Stats call is one), once it has stopped growing.
	calls := uint64(0)
	accepts := func() uint64 {
		t.Helper()
		var last uint64
		for i := 0; ; i++ {
			calls++
			got := bind.Stats(t).TCPAccepts - calls
			if i > 0 && got == last {
				return got
			}
			last = got
			time.Sleep(300 * time.Millisecond)
		}
	}

	write("post")
	stderr := startXdoh(t, addr, "-c", cfgPath)
	ask()
	before := accepts()
	if before == 0 {
		t.Fatalf("BIND accepted no connection from xdoh")
	}
	for range 3 {
		reload()
		for range 5 {
			ask()
		}
	}
	if got := accepts(); got != before {
		t.Errorf("unchanged reloads: BIND accepted %d connections, want %d (the running ones kept)", got, before)
	}
	if !strings.Contains(stderr.String(), "kept=1 dialled=0") {
		t.Errorf("no log of the kept upstream:\n%s", stderr.String())
	}

	// The method changes: a new client, new connections.
	write("get")
	reload()
	for range 5 {
		ask()
	}
	if got := accepts(); got <= before {
		t.Errorf("changed upstream: BIND accepted %d connections, want more than %d", got, before)
	}
	if !strings.Contains(stderr.String(), "kept=0 dialled=1") {
		t.Errorf("no log of the dialled upstream:\n%s", stderr.String())
	}
}
