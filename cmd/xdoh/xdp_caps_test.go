package main

import (
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"xdoh/datapath/xsk/xsktest"
)

// xdpCaps is the capability set docs/bare-metal.md gives an unprivileged
// xdoh that serves Do53 on port 53 through XDP in native mode.
var xdpCaps = []string{"net_bind_service", "bpf", "perfmon", "net_admin", "net_raw", "ipc_lock"}

// TestXDPCapabilities: xdoh run as nobody with exactly the capabilities
// docs/bare-metal.md lists (and RLIMIT_MEMLOCK at 8 MiB, below one
// queue's UMEM) attaches its XDP program in native mode and answers
// through AF_XDP; without any one of them it fails to start, saying what
// it was doing.
func TestXDPCapabilities(t *testing.T) {
	xdpNeed(t, "setpriv", "prlimit")
	tests := []struct {
		name    string
		without string // the capability left out; "" for none
		fails   string // in the log when the start fails
	}{
		{"documented set", "", ""},
		{"without bpf", "bpf", "loading the XDP program"},
		{"without perfmon", "perfmon", "loading the XDP program"},
		{"without net_admin", "net_admin", "loading the XDP program"},
		{"without net_raw", "net_raw", "creating AF_XDP socket"},
		{"without ipc_lock", "ipc_lock", "registering the UMEM"},
		{"without net_bind_service", "net_bind_service", "permission denied"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := xsktest.NewPair(t, 1)
			dir := unprivilegedDir(t)
			bin := filepath.Join(dir, "xdoh")
			copyFile(t, xdohBin, bin, 0o755)
			zone, err := os.ReadFile(filepath.Join("demo", "aws.example.internal.zone"))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, "aws.zone"), zone, 0o644); err != nil {
				t.Fatal(err)
			}
			conf := filepath.Join(dir, "xdoh.yaml")
			if err := os.WriteFile(conf, []byte(fmt.Sprintf(`listeners:
  - name: edge
    do53: ["%s:53"]
    xdp: {mode: native, interfaces: [%s], kernel_cache: "off"}
zones: [{name: aws.example.internal, file: aws.zone}]
metrics: {address: "127.0.0.1:9153"}
`, p.Server4, p.ServerIf)), 0o644); err != nil {
				t.Fatal(err)
			}
			var caps []string
			for _, c := range xdpCaps {
				if c != tt.without {
					caps = append(caps, "+"+c)
				}
			}
			set := strings.Join(caps, ",")
			logFile := filepath.Join(dir, "xdoh.log")
			_, exited := startInNS(t, p.ServerNS, logFile, "prlimit", "--memlock=8388608:8388608",
				"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
				"--inh-caps=-all,"+set, "--ambient-caps=-all,"+set, "--bounding-set=-all,"+set,
				bin, "run", "-c", conf)

			if tt.fails != "" {
				select {
				case <-exited:
				case <-time.After(20 * time.Second):
					t.Fatal("xdoh still runs 20 s after its start: it should have failed")
				}
				log, _ := os.ReadFile(logFile)
				if !strings.Contains(string(log), tt.fails) {
					t.Fatalf("the log does not say %q:\n%s", tt.fails, tail(string(log), 10))
				}
				return
			}
			for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
				log, _ := os.ReadFile(logFile)
				if strings.Contains(string(log), `msg="xdoh running"`) {
					break
				}
				select {
				case <-exited:
					t.Fatalf("xdoh exited:\n%s", tail(string(log), 10))
				default:
				}
				if time.Now().After(deadline) {
					t.Fatalf("xdoh did not start within 20 s:\n%s", tail(string(log), 10))
				}
			}
			conn, err := xsktest.Dial(p.ClientNS, "udp", net.JoinHostPort(p.Server4, "53"))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			c := &dns.Conn{Conn: conn}
			m := new(dns.Msg).SetQuestion("ipv4.aws.example.internal.", dns.TypeA)
			_ = conn.SetDeadline(time.Now().Add(3 * time.Second))
			if err := c.WriteMsg(m); err != nil {
				t.Fatal(err)
			}
			r, err := c.ReadMsg()
			if err != nil || len(r.Answer) != 1 {
				t.Fatalf("answer %v, %v", r, err)
			}
			s := &xdpSetup{p: p, metrics: "127.0.0.1:9153"}
			text := s.scrape(t)
			if v := metric(text, `xdoh_xdp_mode{listener="edge",mode="native"}`); v != 1 {
				t.Fatalf("xdoh_xdp_mode native = %v, want 1:\n%s", v, grepLines(text, "xdoh_xdp"))
			}
			if v := metric(text, `xdoh_listener_datapath_events_total{event="xsk_queries",listener="edge"}`); v < 1 {
				t.Fatalf("xsk_queries = %v, want the query answered through AF_XDP:\n%s", v, grepLines(text, "xsk_"))
			}
		})
	}
}

// unprivilegedDir is a temporary directory that nobody (uid 65534) can
// read and run files in.
func unprivilegedDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for d := dir; d != filepath.Dir(d) && d != os.TempDir(); d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func copyFile(t *testing.T, from, to string, mode os.FileMode) {
	t.Helper()
	src, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
}
