package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// TestReloadKeepsAnswering streams queries over UDP and TCP while the config
// is reloaded several times (control socket and SIGHUP): every query is
// answered, each reload takes effect, and a forbidden protocol migration is
// rejected with its reason while the running config stays.
func TestReloadKeepsAnswering(t *testing.T) {
	dir := t.TempDir()
	addr := freeAddr(t)
	sock := filepath.Join(dir, "xdoh.sock")
	cfgPath := filepath.Join(dir, "xdoh.yaml")
	_, cert, key := writePKI(t, dir)
	writeCfg := func(version int, protocols string) {
		t.Helper()
		zone := fmt.Sprintf(`$ORIGIN aws.example.internal.
$TTL 1
@ IN SOA ns1 hostmaster %d 7200 900 1209600 1
@ IN NS ns1
ns1 IN A 10.2.0.53
ipv4 IN A 10.2.1.10
v%d IN A 10.9.9.%d
`, version, version, version)
		if err := os.WriteFile(filepath.Join(dir, "aws.zone"), []byte(zone), 0o644); err != nil {
			t.Fatal(err)
		}
		listen := fmt.Sprintf("do53: [%q]", addr)
		if protocols == "[doh]" {
			listen = fmt.Sprintf("doh: {address: %q, cert: %s, key: %s}", freeAddr(t), cert, key)
		}
		text := fmt.Sprintf(`listeners:
  - name: inbound
    protocols: %s
    %s
zones: [{name: aws.example.internal, file: aws.zone}]
control: {socket: xdoh.sock}
cache: {enabled: false}
`, protocols, listen)
		if err := os.WriteFile(cfgPath, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	writeCfg(1, "[do53]")
	stderr := startXdoh(t, addr, "-c", cfgPath)

	var sent, answered, wrong atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, proto := range []string{"udp", "tcp"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := &dns.Client{Net: proto, Timeout: 2 * time.Second}
			for {
				select {
				case <-stop:
					return
				default:
				}
				m := new(dns.Msg).SetQuestion("ipv4.aws.example.internal.", dns.TypeA)
				sent.Add(1)
				r, _, err := c.Exchange(m, addr)
				if err != nil {
					continue
				}
				answered.Add(1)
				if len(r.Answer) != 1 {
					wrong.Add(1)
				}
			}
		}()
	}
	lookup := func(name string) int {
		m := new(dns.Msg).SetQuestion(name, dns.TypeA)
		r, _, err := (&dns.Client{Timeout: 2 * time.Second}).Exchange(m, addr)
		if err != nil {
			t.Fatal(err)
		}
		return len(r.Answer)
	}
	reload := func() (string, error) {
		out, err := exec.Command(xdohBin, "reload", "-s", sock).CombinedOutput()
		return string(out), err
	}
	for v := 2; v <= 4; v++ {
		time.Sleep(150 * time.Millisecond)
		writeCfg(v, "[do53]")
		if out, err := reload(); err != nil {
			t.Fatalf("reload %d: %v\n%s", v, err, out)
		}
		if n := lookup(fmt.Sprintf("v%d.aws.example.internal.", v)); n != 1 {
			t.Fatalf("after reload %d the new record is not served", v)
		}
	}
	// SIGHUP does the same.
	writeCfg(5, "[do53]")
	pid := xdohPID(t, stderr)
	if err := exec.Command("kill", "-HUP", pid).Run(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(3 * time.Second)
	for lookup("v5.aws.example.internal.") != 1 {
		if time.Now().After(deadline) {
			t.Fatal("SIGHUP reload did not take effect")
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Do53 only → DoH only is refused; the running config stays.
	writeCfg(6, "[doh]")
	out, err := reload()
	if err == nil || !strings.Contains(out, "cannot go from [do53] straight to [doh]") {
		t.Fatalf("forbidden migration: err=%v out=%q", err, out)
	}
	if lookup("v5.aws.example.internal.") != 1 || lookup("v6.aws.example.internal.") != 0 {
		t.Fatal("a rejected reload changed the running config")
	}
	time.Sleep(150 * time.Millisecond)
	close(stop)
	wg.Wait()
	if s, a := sent.Load(), answered.Load(); s != a || s < 20 || wrong.Load() != 0 {
		t.Fatalf("sent %d, answered %d, wrong %d: every query must be answered across reloads\n%s", s, a, wrong.Load(), stderr.String())
	}
	if !strings.Contains(stderr.String(), "reload rejected") {
		t.Fatalf("no log line for the rejected reload:\n%s", stderr.String())
	}
}

// xdohPID reads the pid xdoh logs at start.
func xdohPID(t *testing.T, stderr interface{ String() string }) string {
	t.Helper()
	for _, f := range strings.Fields(stderr.String()) {
		if strings.HasPrefix(f, "pid=") {
			return strings.TrimPrefix(f, "pid=")
		}
	}
	t.Fatalf("no pid= in the log:\n%s", stderr.String())
	return ""
}

// TestRejectedReloadTouchesNothing (review): a reload that fails half way
// (the second listener's new DoH address is taken) leaves every listener as
// it was: the first keeps its old Do53 address and does not gain the new one.
func TestRejectedReloadTouchesNothing(t *testing.T) {
	dir := t.TempDir()
	_, cert, key := writePKI(t, dir)
	a1, a2, d1 := freeAddr(t), freeAddr(t), freeAddr(t)
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	sock := filepath.Join(dir, "x.sock")
	cfgPath := filepath.Join(dir, "x.yaml")
	zonePath, err := filepath.Abs(filepath.Join("demo", "aws.example.internal.zone"))
	if err != nil {
		t.Fatal(err)
	}
	write := func(do53, dohAddr string) {
		text := fmt.Sprintf(`listeners:
  - {name: l1, do53: [%q]}
  - {name: l2, protocols: [do53, doh], do53: [%q], doh: {address: %q, cert: %s, key: %s}}
zones: [{name: aws.example.internal, file: %s}]
control: {socket: %s}
`, do53, freeAddrFor(t), dohAddr, cert, key, zonePath, sock)
		if err := os.WriteFile(cfgPath, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(a1, d1)
	startXdoh(t, a1, "-c", cfgPath)
	answers := func(addr string) bool {
		m := new(dns.Msg).SetQuestion("ipv4.aws.example.internal.", dns.TypeA)
		_, _, err := (&dns.Client{Timeout: 300 * time.Millisecond}).Exchange(m, addr)
		return err == nil
	}
	write(a2, busy.Addr().String())
	if out, err := exec.Command(xdohBin, "reload", "-s", sock).CombinedOutput(); err == nil {
		t.Fatalf("reload onto a taken address succeeded: %s", out)
	}
	if !answers(a1) || answers(a2) {
		t.Fatalf("after a rejected reload: old address answers=%v, new address answers=%v", answers(a1), answers(a2))
	}
	c, err := net.DialTimeout("tcp", d1, time.Second)
	if err != nil {
		t.Fatalf("DoH on its old address is gone after a rejected reload: %v", err)
	}
	c.Close()
}

var freeAddrs sync.Mutex

// freeAddrFor is freeAddr for use inside a config writer.
func freeAddrFor(t *testing.T) string {
	freeAddrs.Lock()
	defer freeAddrs.Unlock()
	return freeAddr(t)
}
