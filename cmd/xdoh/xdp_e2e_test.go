package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"xdoh/datapath/xsk/xsktest"
)

// xdpSetup is xdoh serving a listener through XDP/AF_XDP in the server
// namespace of a veth pair, with BIND 9.18 on that namespace's loopback as
// the upstream for example.com.
type xdpSetup struct {
	p       *xsktest.Pair
	dir     string
	conf    string
	metrics string // 127.0.0.1:PORT inside the server namespace
}

func xdpNeed(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s (.ci/run installs it)", tool)
		}
	}
}

// newXDPSetup makes the namespaces, starts the upstream and writes a config
// whose listener uses XDP in mode on the server's veth.
func newXDPSetup(t *testing.T, mode string) *xdpSetup {
	t.Helper()
	xdpNeed(t, "named", "kdig")
	p := xsktest.NewPair(t, 2)
	s := &xdpSetup{p: p, dir: t.TempDir(), metrics: "127.0.0.1:9153"}
	for _, z := range []string{"aws.example.internal.zone", "example.com.zone"} {
		b, err := os.ReadFile(filepath.Join("demo", z))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(s.dir, z), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	named := fmt.Sprintf(`options {
	directory %q;
	listen-on port 5301 { 127.0.0.1; };
	listen-on-v6 { none; };
	recursion no;
	pid-file none;
};
zone "example.com" { type primary; file "example.com.zone"; };
`, s.dir)
	if err := os.WriteFile(filepath.Join(s.dir, "named.conf"), []byte(named), 0o644); err != nil {
		t.Fatal(err)
	}
	startInNS(t, p.ServerNS, filepath.Join(s.dir, "named.log"), "named", "-g", "-n", "1", "-c", filepath.Join(s.dir, "named.conf"))
	waitAnswer(t, p.ServerNS, "127.0.0.1", "5301", "foo.example.com", "A", "172.16.0.10")

	s.conf = filepath.Join(s.dir, "xdoh.yaml")
	cfg := fmt.Sprintf(`listeners:
  - name: edge
    protocols: [do53]
    do53: ["%s:53", "[%s]:53"]
    xdp: {mode: %s, interfaces: [%s]}
zones:
  - {name: aws.example.internal, file: aws.example.internal.zone}
rules:
  - {name: onprem, domain: example.com, type: forward, targets: ["udp://127.0.0.1:5301"]}
metrics: {address: "%s"}
`, p.Server4, p.Server6, mode, p.ServerIf, s.metrics)
	if err := os.WriteFile(s.conf, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return s
}

// startInNS runs name args… inside ns in its own process group, output to
// logFile, and stops it (SIGTERM, then SIGKILL) at cleanup. It returns the
// command and a channel closed when it has exited.
func startInNS(t *testing.T, ns, logFile, name string, args ...string) (*exec.Cmd, <-chan struct{}) {
	t.Helper()
	out, err := os.Create(logFile)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { out.Close() }) // after startProc's cleanup has stopped the process
	cmd := xsktest.Command(ns, name, args...)
	cmd.Stdout, cmd.Stderr = out, out
	exited, _ := startProc(t, cmd)
	return cmd, exited
}

// kdigIn runs kdig in ns and returns its +short output.
func kdigIn(ns string, args ...string) (string, error) {
	out, err := xsktest.Command(ns, "kdig", append([]string{"+short", "+timeout=1", "+retry=2"}, args...)...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// waitAnswer waits until kdig in ns gets want for name/qtype from addr:port.
func waitAnswer(t *testing.T, ns, addr, port, name, qtype, want string) {
	t.Helper()
	var got string
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		got, _ = kdigIn(ns, "@"+addr, "-p", port, name, qtype)
		if got == want {
			return
		}
	}
	t.Fatalf("no answer %q for %s %s from %s:%s in %s within 10s (last: %q)", want, name, qtype, addr, port, ns, got)
}

// start runs xdoh in the server namespace and waits until it answers from
// its local zone.
func (s *xdpSetup) start(t *testing.T) (*exec.Cmd, <-chan struct{}, string) {
	t.Helper()
	logFile := filepath.Join(s.dir, fmt.Sprintf("xdoh-%d.log", time.Now().UnixNano()))
	cmd, exited := startInNS(t, s.p.ServerNS, logFile, xdohBin, "run", "-c", s.conf)
	waitAnswer(t, s.p.ClientNS, s.p.Server4, "53", "ipv4.aws.example.internal", "A", "10.2.1.10")
	// The kernel sockets answer before the XDP program is attached: the
	// start is over when xdoh says so.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if log, _ := os.ReadFile(logFile); strings.Contains(string(log), `msg="xdoh running"`) {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("xdoh did not finish starting within 10 s:\n%s", log)
		}
	}
	return cmd, exited, logFile
}

// scrape reads xdoh's metrics from inside the server namespace.
func (s *xdpSetup) scrape(t *testing.T) string {
	t.Helper()
	c := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return xsktest.Dial(s.p.ServerNS, network, addr)
		},
	}}
	resp, err := c.Get("http://" + s.metrics + "/metrics")
	if err != nil {
		t.Fatalf("scraping metrics: %v", err)
	}
	defer resp.Body.Close()
	var b strings.Builder
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		b.WriteString(sc.Text())
		b.WriteByte('\n')
	}
	return b.String()
}

// metric returns the value of the sample whose line starts with prefix
// (name and labels), or -1.
func metric(text, prefix string) float64 {
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(line, prefix) {
			f := strings.Fields(line)
			v, err := strconv.ParseFloat(f[len(f)-1], 64)
			if err == nil {
				return v
			}
		}
	}
	return -1
}

// TestXDPEndToEnd: kdig and dnsperf in the client namespace get local-zone
// and forwarded answers over IPv4 and IPv6 through AF_XDP, in native and
// generic mode, while TCP on the same addresses goes through the kernel.
// The metrics prove the path: the XDP program redirected the queries, the
// AF_XDP loops answered them, and the kernel UDP sockets saw none.
func TestXDPEndToEnd(t *testing.T) {
	for _, mode := range []string{"native", "generic"} {
		t.Run(mode, func(t *testing.T) {
			s := newXDPSetup(t, mode)
			_, _, logFile := s.start(t)
			m0 := s.scrape(t)
			if v := metric(m0, `xdoh_xdp_mode{listener="edge",mode="`+mode+`"}`); v != 1 {
				log, _ := os.ReadFile(logFile)
				t.Fatalf("xdoh_xdp_mode for %s = %v\n%s\n%s", mode, v, grepLines(m0, "xdoh_xdp_mode"), log)
			}
			tests := []struct{ server, name, qtype, want string }{
				{s.p.Server4, "ipv4.aws.example.internal", "A", "10.2.1.10"},
				{s.p.Server6, "ipv4.aws.example.internal", "A", "10.2.1.10"},
				{s.p.Server4, "ipv6.aws.example.internal", "AAAA", "fd00:2::10"},
				{s.p.Server6, "ipv6.aws.example.internal", "AAAA", "fd00:2::10"},
				{s.p.Server4, "foo.example.com", "A", "172.16.0.10"},
				{s.p.Server6, "foo.example.com", "AAAA", "2001:db8:5678::abc"},
				{s.p.Server6, "FOO.example.com", "A", "172.16.0.10"}, // a cache hit
			}
			for _, tt := range tests {
				got, err := kdigIn(s.p.ClientNS, "@"+tt.server, tt.name, tt.qtype)
				if err != nil || got != tt.want {
					t.Errorf("kdig @%s %s %s: %q (%v), want %q", tt.server, tt.name, tt.qtype, got, err, tt.want)
				}
				got, err = kdigIn(s.p.ClientNS, "+tcp", "@"+tt.server, tt.name, tt.qtype)
				if err != nil || got != tt.want {
					t.Errorf("kdig +tcp @%s %s %s: %q (%v), want %q", tt.server, tt.name, tt.qtype, got, err, tt.want)
				}
			}
			m1 := s.scrape(t)
			udpQueries := len(tests)
			for _, e := range []string{"xsk_queries", "xsk_replies"} {
				d := metric(m1, `xdoh_listener_datapath_events_total{event="`+e+`",listener="edge"}`) -
					metric(m0, `xdoh_listener_datapath_events_total{event="`+e+`",listener="edge"}`)
				if d < float64(udpQueries) {
					t.Errorf("%s went up by %v, want ≥ %d (the UDP queries)\n%s", e, d, udpQueries, grepLines(m1, "xsk_"))
				}
			}
			// (The readiness probe may have reached them before XDP attached.)
			udp := `xdoh_listener_datapath_events_total{event="udp_queries",listener="edge"}`
			if d := metric(m1, udp) - metric(m0, udp); d > 0 {
				t.Errorf("the kernel UDP sockets saw %v queries; XDP should have taken them all", d)
			}
			if v := metric(m1, `xdoh_xdp_packets_total{interface="`+s.p.ServerIf+`",listener="edge",verdict="redirect"}`); v < float64(udpQueries) {
				t.Errorf("XDP redirected %v packets, want ≥ %d\n%s", v, udpQueries, grepLines(m1, "xdoh_xdp_packets_total"))
			}
			if v := metric(m1, `xdoh_listener_datapath_events_total{event="tcp_queries",listener="edge"}`); v < float64(len(tests)) {
				t.Errorf("TCP queries through the kernel: %v, want ≥ %d", v, len(tests))
			}
			// Each queue's loop CPU: -1 (not bound) or a CPU xdoh may use.
			cpus := grepLines(m1, `xdoh_xsk_loop_cpu{interface="`+s.p.ServerIf+`",listener="edge",`)
			if cpus == "" {
				t.Fatalf("no xdoh_xsk_loop_cpu samples\n%s", grepLines(m1, "xdoh_xsk"))
			}
			var allowed unix.CPUSet
			if err := unix.SchedGetaffinity(0, &allowed); err != nil {
				t.Fatal(err)
			}
			for _, line := range strings.Split(cpus, "\n") {
				f := strings.Fields(line)
				if v, err := strconv.Atoi(f[len(f)-1]); err != nil || v < -1 || v >= 0 && !allowed.IsSet(v) {
					t.Errorf("xdoh_xsk_loop_cpu: %q", line)
				}
			}

			if _, err := exec.LookPath("dnsperf"); err != nil {
				t.Skip("needs dnsperf (.ci/run installs it)")
			}
			qf := filepath.Join(s.dir, "queries.txt")
			if err := os.WriteFile(qf, []byte("ipv4.aws.example.internal A\nfoo.example.com A\nipv6.aws.example.internal AAAA\nfoo.example.com AAAA\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			for _, server := range []string{s.p.Server4, s.p.Server6} {
				out, err := xsktest.Command(s.p.ClientNS, "dnsperf", "-s", server, "-d", qf, "-n", "500", "-c", "2", "-q", "20", "-t", "2", "-l", "10").CombinedOutput()
				if err != nil {
					t.Fatalf("dnsperf -s %s: %v\n%s", server, err, out)
				}
				if !regexp.MustCompile(`Queries completed:\s+2000 `).Match(out) || !regexp.MustCompile(`NOERROR 2000 `).Match(out) {
					m := s.scrape(t)
					log, _ := os.ReadFile(logFile)
					t.Errorf("dnsperf -s %s: want 2000 queries completed, all NOERROR\n%s\n%s\n%s\nxdoh's log:\n%s", server, out,
						grepLines(m, "xsk_"), grepLines(m, "xdoh_xdp_packets_total"), tail(string(log), 30))
				}
			}
		})
	}
}

func tail(text string, n int) string {
	lines := strings.Split(strings.TrimRight(text, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

func grepLines(text, sub string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, sub) && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// xdpAttached reports whether an XDP program is attached to dev in ns.
func xdpAttached(t *testing.T, ns, dev string) bool {
	t.Helper()
	out, err := exec.Command("ip", "-n", ns, "-d", "link", "show", "dev", dev).CombinedOutput()
	if err != nil {
		t.Fatalf("ip link show: %v\n%s", err, out)
	}
	return strings.Contains(string(out), "prog/xdp")
}

// TestXDPKill9LeavesNothingAttached: the program is held by a bpf_link
// owned by the process, so SIGKILL detaches it and port 53 reaches the
// kernel again instead of a black hole.
func TestXDPKill9LeavesNothingAttached(t *testing.T) {
	s := newXDPSetup(t, "native")
	cmd, exited, _ := s.start(t)
	if !xdpAttached(t, s.p.ServerNS, s.p.ServerIf) {
		t.Fatal("no XDP program attached while xdoh runs")
	}
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
		t.Fatal("xdoh did not die on SIGKILL")
	}
	deadline := time.Now().Add(5 * time.Second)
	for xdpAttached(t, s.p.ServerNS, s.p.ServerIf) {
		if time.Now().After(deadline) {
			t.Fatal("an XDP program is still attached 5 s after kill -9")
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Port 53 is the kernel's again: a plain socket in the server
	// namespace receives a query sent from the client namespace.
	var pc net.PacketConn
	if err := xsktest.In(s.p.ServerNS, func() (err error) {
		pc, err = net.ListenPacket("udp", net.JoinHostPort(s.p.Server4, "53"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	got := make(chan error, 1)
	go func() {
		_ = pc.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, _, err := pc.ReadFrom(make([]byte, 512))
		got <- err
	}()
	_, _ = kdigIn(s.p.ClientNS, "@"+s.p.Server4, "ipv4.aws.example.internal", "A")
	if err := <-got; err != nil {
		t.Fatalf("after kill -9 a kernel socket on port 53 got nothing: %v", err)
	}
}

// TestXDPAlreadyAttached: a second xdoh on the same interface gets a clear
// error in native mode; in auto mode it logs why and serves through the
// kernel sockets.
func TestXDPAlreadyAttached(t *testing.T) {
	s := newXDPSetup(t, "native")
	s.start(t)
	second := func(mode string) (string, <-chan struct{}) {
		conf := filepath.Join(s.dir, "second-"+mode+".yaml")
		b, _ := os.ReadFile(s.conf)
		text := strings.Replace(string(b), "mode: native", "mode: "+mode, 1)
		text = strings.Replace(text, `address: "127.0.0.1:9153"`, `address: "127.0.0.1:9154"`, 1)
		if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		logFile := filepath.Join(s.dir, "second-"+mode+".log")
		_, exited := startInNS(t, s.p.ServerNS, logFile, xdohBin, "run", "-c", conf)
		return logFile, exited
	}
	logFile, exited := second("native")
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		t.Fatal("a second xdoh in native mode did not exit")
	}
	if b, _ := os.ReadFile(logFile); !strings.Contains(string(b), "already has an XDP program") {
		t.Fatalf("second xdoh's error does not say the interface is taken:\n%s", b)
	}
	logFile, exited = second("auto")
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		b, _ := os.ReadFile(logFile)
		if strings.Contains(string(b), "xdp unavailable") && strings.Contains(string(b), "already has an XDP program") {
			break
		}
		select {
		case <-exited:
			t.Fatalf("a second xdoh in auto mode exited:\n%s", b)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("a second xdoh in auto mode did not log its fallback:\n%s", b)
		}
	}
}
