package main

import (
	"context"
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
)

// TestConnLimitsPerClient: the binary with max_conns_per_client 1 on Do53
// TCP and DoT. While one raw connection from 127.0.0.1 holds each slot,
// kdig +tcp and kdig +tls from 127.0.0.1 are turned away, the same from
// 127.0.0.2 get answers, and /metrics counts each refusal.
func TestConnLimitsPerClient(t *testing.T) {
	if _, err := exec.LookPath("kdig"); err != nil {
		t.Skip("kdig not installed; .ci/run installs it")
	}
	dir := t.TempDir()
	ca, cert, key := writePKI(t, dir)
	addr, dotAddr, maddr := freeAddr(t), freeAddr(t), freeAddr(t)
	zone, err := filepath.Abs(filepath.Join("demo", "aws.example.internal.zone"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "xdoh.yaml")
	text := fmt.Sprintf(`listeners:
  - name: edge
    protocols: [do53, dot]
    do53: [%q]
    tcp: {max_conns_per_client: 1}
    dot: {address: %q, cert: %s, key: %s, max_conns_per_client: 1}
zones: [{name: aws.example.internal, file: %s}]
metrics: {address: %q}
`, addr, dotAddr, cert, key, zone, maddr)
	if err := os.WriteFile(cfg, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	startXdoh(t, addr, "-c", cfg)

	events := func() (tcp, dot float64) {
		resp, err := http.Get("http://" + maddr + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		get := func(event string) float64 {
			re := regexp.MustCompile(`xdoh_listener_datapath_events_total\{event="` + event + `",listener="edge"\} (\S+)`)
			m := re.FindSubmatch(b)
			if m == nil {
				t.Fatalf("/metrics has no %s", event)
			}
			v, _ := strconv.ParseFloat(string(m[1]), 64)
			return v
		}
		return get("tcp_rejected_per_client"), get("dot_refused_per_client")
	}
	// Hold the one slot each: a raw TCP connection (Do53) and one that
	// has not even started its TLS handshake (DoT).
	for _, a := range []string{addr, dotAddr} {
		c, err := net.Dial("tcp", a)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	host, port := hostPort(t, addr)
	_, dotPort := hostPort(t, dotAddr)
	kdig := func(from string, args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		args = append([]string{"@" + host, "-b", from, "+timeout=3", "+retry=0"}, args...)
		out, err := exec.CommandContext(ctx, "kdig", append(args, "ipv4.aws.example.internal", "A")...).CombinedOutput()
		return string(out), err
	}
	tlsArgs := []string{"-p", dotPort, "+tls", "+tls-ca=" + ca, "+tls-hostname=localhost"}
	// The held connections may not have been accepted yet: count on the
	// refusal, not on the first try.
	for end := time.Now().Add(15 * time.Second); ; {
		out, _ := kdig("127.0.0.1", "-p", port, "+tcp")
		if tcp, _ := events(); tcp >= 1 {
			if strings.Contains(out, "10.2.1.10") {
				t.Logf("kdig +tcp answered before the refusal: %s", out)
			}
			break
		}
		if time.Now().After(end) {
			t.Fatalf("no tcp_rejected_per_client after kdig +tcp from 127.0.0.1:\n%s", out)
		}
	}
	for end := time.Now().Add(15 * time.Second); ; {
		out, _ := kdig("127.0.0.1", tlsArgs...)
		if _, dot := events(); dot >= 1 {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("no dot_refused_per_client after kdig +tls from 127.0.0.1:\n%s", out)
		}
	}
	for _, args := range [][]string{{"-p", port, "+tcp"}, tlsArgs} {
		if out, err := kdig("127.0.0.2", args...); err != nil || !strings.Contains(out, "10.2.1.10") {
			t.Fatalf("kdig %v from 127.0.0.2: %v\n%s", args, err, out)
		}
	}
}
