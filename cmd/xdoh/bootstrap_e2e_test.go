package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"xdoh/forwarder/upstream/upstreamtest"
)

// TestBootstrapToBIND: xdoh forwards to BIND 9.18 over DoH and DoT at
// https://dns.test:PORT/dns-query and tls://dns.test:PORT, a name no
// resolver knows, dialled at their bootstrap addresses and verified
// against BIND's certificate for dns.test. xdoh also listens on
// 127.53.x.y:53, which the resolv.conf given with -resolv-conf names as
// the system's nameserver: the same config without bootstrap is refused by
// a reload (the running config stays), by `xdoh check` and by `xdoh run`,
// naming the field.
func TestBootstrapToBIND(t *testing.T) {
	bind := upstreamtest.StartBIND(t, upstreamtest.BINDOptions{CertHosts: []string{upstreamtest.BootstrapHost}})
	dir := t.TempDir()
	addr, port53 := freeAddr(t), freePort53(t)
	self, _, _ := net.SplitHostPort(port53)
	resolv := filepath.Join(dir, "resolv.conf")
	if err := os.WriteFile(resolv, []byte("search example.internal\nnameserver "+self+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, dohPort, _ := net.SplitHostPort(strings.TrimPrefix(strings.TrimSuffix(bind.DoHURL, "/dns-query"), "https://"))
	_, dotPort, _ := net.SplitHostPort(bind.DoTAddr)
	dohURL := fmt.Sprintf("https://%s:%s/dns-query", upstreamtest.BootstrapHost, dohPort)
	dotURL := fmt.Sprintf("tls://%s:%s", upstreamtest.BootstrapHost, dotPort)
	cfgPath := filepath.Join(dir, "xdoh.yaml")
	writeCfg := func(ruleBootstrap, defaultBootstrap string) {
		t.Helper()
		text := fmt.Sprintf(`listeners: [{name: in, do53: [%q, %q]}]
rules:
  - {name: dot, domain: foo.example.com, type: forward, targets: [%q], ca_file: %s%s}
default:
  targets: [%q]
  ca_file: %s
%s
cache: {enabled: false}
control: {socket: xdoh.sock}
`, addr, port53, dotURL, bind.CAFile, ruleBootstrap, dohURL, bind.CAFile, defaultBootstrap)
		if err := os.WriteFile(cfgPath, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	writeCfg(", bootstrap: [127.0.0.2, 127.0.0.1]", "  bootstrap: [127.0.0.1]")
	stderr := startXdoh(t, addr, "-c", cfgPath, "-resolv-conf", resolv)

	wantA := func(name, want string) {
		t.Helper()
		r, _, err := (&dns.Client{Timeout: 5 * time.Second}).Exchange(new(dns.Msg).SetQuestion(name, dns.TypeA), addr)
		if err != nil || r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 || r.Answer[0].(*dns.A).A.String() != want {
			t.Fatalf("%s A: %v %v, want %s\n%s\n--- named.log ---\n%s", name, r, err, want, stderr.String(), bind.LogTail(20))
		}
	}
	before := bind.Stats(t)
	for range 3 {
		wantA("foo.example.com.", "172.16.0.10") // rule: DoT
		wantA("ns.example.com.", "127.0.0.1")    // default: DoH
	}
	if d := bind.Stats(t).Sub(before); d.QueriesTCP != 6 || d.QueriesUDP != 0 {
		t.Errorf("BIND counted %d queries over DoH and DoT and %d over UDP, want 6 and 0", d.QueriesTCP, d.QueriesUDP)
	}

	// Without bootstrap the default target would resolve through xdoh.
	writeCfg(", bootstrap: [127.0.0.1]", "")
	out, err := exec.Command(xdohBin, "reload", "-s", filepath.Join(dir, "xdoh.sock")).CombinedOutput()
	wantMsg := fmt.Sprintf("default.targets[0]: %q is named by host, which the system resolver would resolve through xdoh itself (nameserver %s of %s is listeners[0].do53[1] %q): set default.bootstrap", dohURL, self, resolv, port53)
	if err == nil || !strings.Contains(string(out), wantMsg) {
		t.Fatalf("reload without bootstrap: %v\n%s\nwant %q", err, out, wantMsg)
	}
	wantA("foo.example.com.", "172.16.0.10") // the running config stays

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err = exec.CommandContext(ctx, xdohBin, "check", "-c", cfgPath, "-resolv-conf", resolv).CombinedOutput()
	if err == nil || !strings.Contains(string(out), wantMsg) {
		t.Errorf("xdoh check without bootstrap: %v\n%s", err, out)
	}
	out, err = exec.CommandContext(ctx, xdohBin, "run", "-c", cfgPath, "-resolv-conf", resolv).CombinedOutput()
	if err == nil || ctx.Err() != nil || !strings.Contains(string(out), wantMsg) {
		t.Errorf("xdoh run without bootstrap: %v\n%s", err, out)
	}
	// A resolv.conf naming another resolver makes the same config fine.
	other := filepath.Join(dir, "resolv.other")
	if err := os.WriteFile(other, []byte("nameserver 127.0.0.1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.CommandContext(ctx, xdohBin, "check", "-c", cfgPath, "-resolv-conf", other).CombinedOutput(); err != nil {
		t.Errorf("xdoh check with another resolver: %v\n%s", err, out)
	}
}

// freePort53 returns 127.53.X.Y:53, X and Y random, free for UDP and TCP:
// an address of xdoh's own for the system resolver to name (port 53 needs
// root, which the tests have, as CI does).
func freePort53(t *testing.T) string {
	t.Helper()
	var b [2]byte
	for range 20 {
		rand.Read(b[:])
		a := fmt.Sprintf("127.53.%d.%d:53", b[0], b[1]|1)
		l, err := net.Listen("tcp", a)
		if err != nil {
			continue
		}
		u, err := net.ListenPacket("udp", a)
		l.Close()
		if err == nil {
			u.Close()
			return a
		}
	}
	t.Fatal("no free 127.53.x.y:53")
	return ""
}
