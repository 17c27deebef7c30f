package main

// End-to-end tests of the xdoh binary: built once, started as a real process,
// queried by real clients (dig, kdig, xdoh query, miekg/dns), forwarding over
// DoH to a real BIND 9.18.

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"xdoh/datapath/tlsconf"
	"xdoh/forwarder/upstream/upstreamtest"
)

var xdohBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "xdoh-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	xdohBin = filepath.Join(dir, "xdoh")
	if out, err := exec.Command("go", "build", "-o", xdohBin, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building xdoh: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// freeAddr returns 127.0.0.1:PORT free for UDP and TCP. The port is drawn
// below the kernel's ephemeral range (ip_local_port_range): a port taken
// from that range and released, as listening on port 0 gives, can be
// handed to any socket that binds port 0 or connects meanwhile (another
// test package's, running in parallel), and xdoh then failed to start
// with "address already in use".
func freeAddr(t *testing.T) string {
	t.Helper()
	lo, hi := 10000, ephemeralLow()
	for range 200 {
		a := fmt.Sprintf("127.0.0.1:%d", lo+rand.IntN(hi-lo))
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
	t.Fatal("no free port")
	return ""
}

// ephemeralLow is the first port of the kernel's ephemeral range (32768,
// Linux's default, if it cannot be read or leaves no room below it).
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 32768
	}
	var lo int
	if _, err := fmt.Sscan(string(b), &lo); err != nil || lo <= 11000 {
		return 32768
	}
	return lo
}

// syncBuffer is a bytes.Buffer safe to read while the process writes to it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startXdoh runs `xdoh run args…` in its own process group, waits until addr
// answers over UDP and xdoh says it is running, and stops it at cleanup. It
// returns the stderr buffer.
func startXdoh(t *testing.T, addr string, args ...string) *syncBuffer {
	t.Helper()
	return startXdohEnv(t, addr, nil, args...)
}

// startXdohEnv is startXdoh with the process environment env (nil: ours).
func startXdohEnv(t *testing.T, addr string, env []string, args ...string) *syncBuffer {
	t.Helper()
	cmd := exec.Command(xdohBin, append([]string{"run"}, args...)...)
	cmd.Env = env
	return startXdohCmd(t, addr, cmd)
}

// startXdohCmd is startXdoh for a prepared command (xdoh run under a
// wrapper such as taskset, say).
func startXdohCmd(t *testing.T, addr string, cmd *exec.Cmd) *syncBuffer {
	t.Helper()
	stderr := &syncBuffer{}
	cmd.Stderr = stderr
	exited, waitErr := startProc(t, cmd)
	probe := new(dns.Msg).SetQuestion("probe.invalid.", dns.TypeA)
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			t.Fatalf("xdoh exited at start: %v\n%s", waitErr(), stderr.String())
		default:
		}
		// Listeners answer a moment before the start is over (ready.go).
		if _, _, err := (&dns.Client{Timeout: 200 * time.Millisecond}).Exchange(probe, addr); err == nil &&
			strings.Contains(stderr.String(), `msg="xdoh running"`) {
			return stderr
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("xdoh did not answer on %s within 10s\n%s", addr, stderr.String())
	return nil
}

// startProc starts cmd in its own process group (killed if the test
// process dies) and stops the group at cleanup (SIGTERM, then SIGKILL
// after 5 s). exited is closed when the process has ended; waitErr is
// then what Wait returned.
func startProc(t *testing.T, cmd *exec.Cmd) (exited <-chan struct{}, waitErr func() error) {
	t.Helper()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	var err error
	go func() { err = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
	})
	return done, func() error { <-done; return err }
}

func hostPort(t *testing.T, addr string) (string, string) {
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	return h, p
}

// TestForwardToBINDOverDoH is the seed's outbound path: client Do53 (UDP and
// TCP) → xdoh → DoH → BIND 9.18, proven on BIND's side by its counters: the
// queries arrive on a TCP-based transport and never over UDP (xdoh knows only
// BIND's DoH URL), and BIND's query log shows them.
func TestForwardToBINDOverDoH(t *testing.T) {
	bind := upstreamtest.StartBIND(t, upstreamtest.BINDOptions{QueryLog: true})
	for _, cache := range []bool{false, true} {
		t.Run(fmt.Sprintf("cache=%v", cache), func(t *testing.T) {
			addr := freeAddr(t)
			args := []string{"--listen", addr, "--upstream", bind.DoHURL, "--ca-file", bind.CAFile}
			if !cache {
				args = append(args, "--no-cache")
			}
			startXdoh(t, addr, args...)
			before := bind.Stats(t)
			tests := []struct {
				proto, name string
				qtype       uint16
				want        string
			}{
				{"udp", "foo.example.com.", dns.TypeA, "172.16.0.10"},
				{"tcp", "foo.example.com.", dns.TypeA, "172.16.0.10"},
				{"udp", "FOO.Example.COM.", dns.TypeAAAA, "2001:db8:5678::abc"},
				{"tcp", "foo.example.com.", dns.TypeAAAA, "2001:db8:5678::abc"},
			}
			for _, tt := range tests {
				m := new(dns.Msg).SetQuestion(tt.name, tt.qtype)
				r, _, err := (&dns.Client{Net: tt.proto, Timeout: 3 * time.Second}).Exchange(m, addr)
				if err != nil {
					t.Fatalf("%s %s: %v", tt.proto, tt.name, err)
				}
				if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 || r.Question[0].Name != tt.name {
					t.Fatalf("%s %s: %v", tt.proto, tt.name, r)
				}
				var got string
				switch rr := r.Answer[0].(type) {
				case *dns.A:
					got = rr.A.String()
				case *dns.AAAA:
					got = rr.AAAA.String()
				}
				if got != tt.want {
					t.Fatalf("%s %s: got %s, want %s", tt.proto, tt.name, got, tt.want)
				}
			}
			d := bind.Stats(t).Sub(before)
			if d.QueriesUDP != 0 {
				t.Fatalf("BIND saw %d UDP queries; everything should arrive over DoH: %v", d.QueriesUDP, d)
			}
			want := uint64(len(tests))
			if cache {
				want = 2 // one A, one AAAA; the rest are cache hits
			}
			if d.QueriesTCP < want {
				t.Fatalf("BIND saw %d TCP-based (DoH) queries, want ≥ %d: %v", d.QueriesTCP, want, d)
			}
			if cache && d.QueriesTCP > want+1 {
				t.Fatalf("BIND saw %d queries with the cache on, want %d: %v", d.QueriesTCP, want, d)
			}
		})
	}
	// BIND 9.18 logs DoH like TCP ("T" flag); its only TCP-based port that
	// xdoh knows is the TLS+HTTP/2 one, so every xdoh query must carry "T".
	var sawDoH bool
	for _, e := range bind.QueryLog(t) {
		if strings.EqualFold(e.Name, "foo.example.com") {
			if !e.TCP {
				t.Fatalf("BIND got a non-TCP (so non-DoH) query: %s", e.Line)
			}
			sawDoH = true
		}
	}
	if !sawDoH {
		t.Fatalf("BIND's query log has no foo.example.com query:\n%s", strings.Join(bind.QueryLogLines(t), "\n"))
	}
}

// TestRealClients queries xdoh with dig and kdig (Debian bind9-dnsutils and
// knot-dnsutils) over UDP and TCP.
func TestRealClients(t *testing.T) {
	bind := upstreamtest.StartBIND(t, upstreamtest.BINDOptions{})
	addr := freeAddr(t)
	startXdoh(t, addr, "--listen", addr, "--upstream", bind.DoHURL, "--ca-file", bind.CAFile)
	host, port := hostPort(t, addr)
	for _, tool := range []string{"dig", "kdig"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Logf("%s not installed; .ci/run installs it", tool)
			continue
		}
		for _, tcp := range []string{"+notcp", "+tcp"} {
			out, err := exec.Command(tool, "@"+host, "-p", port, tcp, "+short", "foo.example.com", "AAAA").CombinedOutput()
			if err != nil {
				t.Fatalf("%s %s: %v\n%s", tool, tcp, err, out)
			}
			if strings.TrimSpace(string(out)) != "2001:db8:5678::abc" {
				t.Fatalf("%s %s: %q", tool, tcp, out)
			}
		}
	}
}

// TestUntrustedCA: without --ca-file the system roots do not trust BIND's
// private CA, so xdoh refuses the connection and answers SERVFAIL — never
// silence, never an unverified answer.
func TestUntrustedCA(t *testing.T) {
	bind := upstreamtest.StartBIND(t, upstreamtest.BINDOptions{})
	addr := freeAddr(t)
	startXdoh(t, addr, "--listen", addr, "--upstream", bind.DoHURL)
	m := new(dns.Msg).SetQuestion("foo.example.com.", dns.TypeA)
	r, _, err := (&dns.Client{Timeout: 6 * time.Second}).Exchange(m, addr)
	if err != nil {
		t.Fatal(err)
	}
	if r.Rcode != dns.RcodeServerFailure || len(r.Answer) != 0 {
		t.Fatalf("got %v, want SERVFAIL", r)
	}
}

// TestDemo is `make run`: the seed's topology in one process.
func TestDemo(t *testing.T) {
	addr := freeAddr(t)
	startXdoh(t, addr, "--demo", "--listen", addr)
	host, port := hostPort(t, addr)
	tests := []struct{ name, qtype, want string }{
		{"ipv4.aws.example.internal", "A", "10.2.1.10"},
		{"foo.example.com", "A", "172.16.0.10"},
		{"foo.example.com", "AAAA", "2001:db8:5678::abc"},
	}
	for _, tt := range tests {
		var out bytes.Buffer
		if err := cmdQuery([]string{"@" + addr, tt.name, tt.qtype}, &out); err != nil {
			t.Fatalf("xdoh query %s: %v\n%s", tt.name, err, out.String())
		}
		if !strings.Contains(out.String(), tt.want) || !strings.Contains(out.String(), ";; TRANSPORT: UDP") {
			t.Fatalf("xdoh query %s %s:\n%s", tt.name, tt.qtype, out.String())
		}
	}
	// The local zone answers authoritatively.
	m := new(dns.Msg).SetQuestion("ipv4.aws.example.internal.", dns.TypeA)
	r, _, err := (&dns.Client{Net: "tcp"}).Exchange(m, net.JoinHostPort(host, port))
	if err != nil || !r.Authoritative {
		t.Fatalf("local zone over TCP: %v %v", r, err)
	}
}

func TestCheck(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tests := []struct {
		name     string
		config   string
		code     int
		contains []string
	}{
		{"bad target and type", `listeners: [{name: a, do53: ["127.0.0.1:5300"]}]
rules:
  - {name: r0, domain: example.com, type: forward, targets: ["https://127.0.0.1:8443/dns-query"]}
  - {name: r1, domain: example.net, type: forward, targets: ["ftp://x"]}
  - {name: r2, domain: example.org, type: forwrd}
`, 2, []string{"rules[1].targets[0]", "rules[2].type"}},
		{"unknown key", `listeners: [{name: a, do53: ["127.0.0.1:5300"], colour: blue}]`, 2, []string{"colour"}},
		{"bad zone file", `listeners: [{name: a, do53: ["127.0.0.1:5300"]}]
zones: [{name: bad.example, file: ` + write("bad.zone", "this is not a zone\n") + `}]
`, 2, []string{"zones[0]"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cmd := exec.Command(xdohBin, "check", "-c", write("c.yaml", tt.config))
			out, err := cmd.CombinedOutput()
			code := 0
			if ee, ok := err.(*exec.ExitError); ok {
				code = ee.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			if code != tt.code {
				t.Fatalf("exit %d, want %d\n%s", code, tt.code, out)
			}
			for _, c := range tt.contains {
				if !strings.Contains(string(out), c) {
					t.Fatalf("output lacks %q:\n%s", c, out)
				}
			}
		})
	}
}

// TestFlagsOverFile: a file may leave out what the flags give (here the
// listener); the flags are layered over it before validation.
func TestFlagsOverFile(t *testing.T) {
	dir := t.TempDir()
	zone, err := os.ReadFile(filepath.Join("demo", "aws.example.internal.zone"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "aws.zone"), zone, 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "xdoh.yaml")
	if err := os.WriteFile(cfg, []byte("zones: [{name: aws.example.internal, file: aws.zone}]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	startXdoh(t, addr, "-c", cfg, "--listen", addr, "--no-cache")
	m := new(dns.Msg).SetQuestion("ipv4.aws.example.internal.", dns.TypeA)
	r, _, err := (&dns.Client{Timeout: 3 * time.Second}).Exchange(m, addr)
	if err != nil || len(r.Answer) != 1 {
		t.Fatalf("%v %v", r, err)
	}
	// Without --listen the same file is rejected, naming the field.
	out, err := exec.Command(xdohBin, "run", "-c", cfg).CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 || !strings.Contains(string(out), "listeners") {
		t.Fatalf("run without listeners: %v\n%s", err, out)
	}
}

// TestDoHListenerAndQuery: a listener serving Do53 and DoH from one config,
// queried with kdig +https and with `xdoh query --doh`, the answer coming from
// BIND over DoH.
func TestDoHListenerAndQuery(t *testing.T) {
	bind := upstreamtest.StartBIND(t, upstreamtest.BINDOptions{})
	dir := t.TempDir()
	pkiCA, cert, key := writePKI(t, dir)
	addr, dohAddr := freeAddr(t), freeAddr(t)
	cfg := filepath.Join(dir, "xdoh.yaml")
	text := fmt.Sprintf(`listeners:
  - name: inbound
    protocols: [do53, doh]
    do53: [%q]
    doh: {address: %q, path: /dns-query, cert: %s, key: %s}
rules:
  - {name: onprem, domain: example.com, type: forward, targets: [%q], ca_file: %s}
`, addr, dohAddr, cert, key, bind.DoHURL, bind.CAFile)
	if err := os.WriteFile(cfg, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	startXdoh(t, addr, "-c", cfg)
	url := "https://" + dohAddr + "/dns-query"

	var out bytes.Buffer
	if err := cmdQuery([]string{"foo.example.com", "AAAA", "--doh", url, "--ca-file", pkiCA}, &out); err != nil {
		t.Fatalf("xdoh query --doh: %v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "2001:db8:5678::abc") || !strings.Contains(out.String(), ";; TRANSPORT: DoH "+url) {
		t.Fatalf("xdoh query --doh:\n%s", out.String())
	}
	if _, err := exec.LookPath("kdig"); err != nil {
		t.Log("kdig not installed; .ci/run installs it")
		return
	}
	host, port := hostPort(t, dohAddr)
	kout, err := exec.Command("kdig", "@"+host, "-p", port, "+https=/dns-query", "+tls-ca="+pkiCA,
		"+tls-hostname=localhost", "foo.example.com", "A").CombinedOutput()
	if err != nil {
		t.Fatalf("kdig: %v\n%s", err, kout)
	}
	if !strings.Contains(string(kout), "172.16.0.10") || !strings.Contains(string(kout), "HTTP/2") {
		t.Fatalf("kdig +https:\n%s", kout)
	}
}

func writePKI(t *testing.T, dir string) (ca, cert, key string) {
	t.Helper()
	p, err := tlsconf.NewPKI("127.0.0.1", "localhost")
	if err != nil {
		t.Fatal(err)
	}
	ca, cert, key, err = p.WriteFiles(dir)
	if err != nil {
		t.Fatal(err)
	}
	return ca, cert, key
}
