package main

// Interop tests of xdoh's inbound endpoint with real DoH clients, the seed's
// on-prem side: kdig (knot-dnsutils) and dig (bind9-dnsutils) speaking DoH
// directly, and dnsdist 1.7 as the Ubuntu host's local Do53→DoH proxy. Each
// test checks the answer and that xdoh's query log (Route 53 Resolver field
// names) records the client's transport, as the seed verifies DoH with
// Resolver query logging. The FIPS tests cover the doh-fips protocol both
// ways: refused without Go's FIPS 140-3 mode, served (and logged as DoH-FIPS)
// with it.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// interopSetup is one xdoh instance with an "inbound" listener serving Do53
// and DoH (or DoH-FIPS), the seed's private hosted zone and a query log.
type interopSetup struct {
	dir      string
	cfg      string // config file
	ca       string // CA that signed the DoH certificate (127.0.0.1, localhost)
	addr     string // Do53
	dohAddr  string // DoH
	queryLog string
}

// interopConfig writes the config; proto is "doh" or "doh-fips".
func interopConfig(t *testing.T, proto string) *interopSetup {
	t.Helper()
	dir := t.TempDir()
	ca, cert, key := writePKI(t, dir)
	zone, err := os.ReadFile(filepath.Join("demo", "aws.example.internal.zone"))
	if err != nil {
		t.Fatal(err)
	}
	zonePath := filepath.Join(dir, "aws.example.internal.zone")
	if err := os.WriteFile(zonePath, zone, 0o644); err != nil {
		t.Fatal(err)
	}
	s := &interopSetup{
		dir: dir, ca: ca, addr: freeAddr(t), dohAddr: freeAddr(t),
		cfg: filepath.Join(dir, "xdoh.yaml"), queryLog: filepath.Join(dir, "query.log"),
	}
	text := fmt.Sprintf(`listeners:
  - name: inbound
    protocols: [do53, %s]
    do53: [%q]
    doh: {address: %q, path: /dns-query, cert: %s, key: %s}
zones:
  - {name: aws.example.internal, file: %s}
querylog: {path: %s}
`, proto, s.addr, s.dohAddr, cert, key, zonePath, s.queryLog)
	if err := os.WriteFile(s.cfg, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return s
}

// interopEnv is os.Environ without GODEBUG, plus extra.
func interopEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "GODEBUG=") {
			env = append(env, kv)
		}
	}
	return append(env, extra...)
}

// interopStart is startXdoh with an explicit environment: `xdoh run -c cfg`
// in its own process group, waiting until Do53 answers, stopped at cleanup.
func interopStart(t *testing.T, s *interopSetup, env []string) *syncBuffer {
	t.Helper()
	return startXdohEnv(t, s.addr, env, "-c", s.cfg)
}

func interopNeed(t *testing.T, tool string) {
	t.Helper()
	if _, err := exec.LookPath(tool); err != nil {
		t.Skipf("%s not installed (.ci/run installs it)", tool)
	}
}

// interopRun runs a client with a timeout and returns its combined output,
// failing the test on a non-zero exit.
func interopRun(t *testing.T, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// interopDo53 sends an A query over Do53 (UDP) and checks the answer.
func interopDo53(t *testing.T, addr, name, want string) {
	t.Helper()
	m := new(dns.Msg).SetQuestion(name, dns.TypeA)
	r, _, err := (&dns.Client{Timeout: 3 * time.Second}).Exchange(m, addr)
	if err != nil {
		t.Fatalf("Do53 %s @%s: %v", name, addr, err)
	}
	if got := interopA(r); got != want {
		t.Fatalf("Do53 %s @%s: got %q, want %q\n%v", name, addr, got, want, r)
	}
}

func interopA(r *dns.Msg) string {
	if r == nil || r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
		return ""
	}
	if a, ok := r.Answer[0].(*dns.A); ok {
		return a.A.String()
	}
	return ""
}

// interopLogEntry is the part of a query-log line the tests look at.
type interopLogEntry struct {
	QueryName string            `json:"query_name"`
	QueryType string            `json:"query_type"`
	Rcode     string            `json:"rcode"`
	Transport string            `json:"transport"`
	SrcAddr   string            `json:"srcaddr"`
	SrcIDs    map[string]string `json:"srcids"`
	Answers   []struct {
		Rdata string `json:"Rdata"`
		Type  string `json:"Type"`
	} `json:"answers"`
	line string
}

// interopWant is what the query log must hold for one query name: n
// entries (exactly, or at least n with atLeast), all with this transport.
type interopWant struct {
	transport string
	n         int
	atLeast   bool
}

// interopLogWait polls the query log (written asynchronously) for up to 2s
// until every name in want has its n entries, then checks each name's
// entries: all of them carry the wanted transport, rcode NOERROR, the answer
// and the listener. Names are matched exactly: the log keeps the client's
// letter case, so queries from different clients use their own spelling of
// the name (kdig always sends lower case, so its queries are counted).
func interopLogWait(t *testing.T, path string, want map[string]interopWant) {
	t.Helper()
	var entries []interopLogEntry
	var raw []byte
	deadline := time.Now().Add(2 * time.Second)
	for {
		entries = entries[:0]
		var err error
		raw, err = os.ReadFile(path)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(bytes.NewReader(raw))
		sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
		for sc.Scan() {
			var e interopLogEntry
			if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
				t.Fatalf("query log line is not JSON: %v\n%s", err, sc.Text())
			}
			e.line = sc.Text()
			entries = append(entries, e)
		}
		missing := ""
		for name, w := range want {
			n := 0
			for _, e := range entries {
				if e.QueryName == name {
					n++
				}
			}
			if n < w.n {
				missing = fmt.Sprintf("%d of %d entries for %q", n, w.n, name)
			}
		}
		if missing == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("query log has %s after 2s:\n%s", missing, raw)
		}
		time.Sleep(50 * time.Millisecond)
	}
	for name, w := range want {
		n := 0
		for _, e := range entries {
			if e.QueryName != name {
				continue
			}
			n++
			if e.Transport != w.transport {
				t.Errorf("query log: %s has transport %q, want %q\n%s", name, e.Transport, w.transport, e.line)
			}
			if e.QueryType != "A" || e.Rcode != "NOERROR" || len(e.Answers) != 1 || e.Answers[0].Rdata != "10.2.1.10" {
				t.Errorf("query log: %s: want A NOERROR 10.2.1.10\n%s", name, e.line)
			}
			if e.SrcIDs["resolver_endpoint"] != "inbound" {
				t.Errorf("query log: %s: srcids.resolver_endpoint = %q, want \"inbound\"\n%s", name, e.SrcIDs["resolver_endpoint"], e.line)
			}
			if e.SrcAddr != "127.0.0.1" {
				t.Errorf("query log: %s: srcaddr = %q, want 127.0.0.1\n%s", name, e.SrcAddr, e.line)
			}
		}
		if n != w.n && !(w.atLeast && n > w.n) {
			t.Errorf("query log: %d entries for %s, want %d:\n%s", n, name, w.n, raw)
		}
	}
}

// interopKdig queries the DoH listener with kdig (POST, or GET) and checks
// the answer and that kdig spoke HTTP/2 with the wanted method.
func interopKdig(t *testing.T, s *interopSetup, name string, get bool) {
	t.Helper()
	host, port := hostPort(t, s.dohAddr)
	args := []string{"@" + host, "-p", port, "+https=/dns-query", "+tls-ca=" + s.ca, "+tls-hostname=localhost"}
	method := "POST"
	if get {
		args = append(args, "+https-get")
		method = "GET"
	}
	out := interopRun(t, "kdig", append(args, name, "A")...)
	if !strings.Contains(out, "10.2.1.10") || !strings.Contains(out, "NOERROR") {
		t.Fatalf("kdig %s: no 10.2.1.10 answer:\n%s", method, out)
	}
	// ";; HTTP session (HTTP/2-POST)-(localhost/dns-query)-(status: 200)"
	if !strings.Contains(out, "(HTTP/2-"+method+")") || !strings.Contains(out, "status: 200") {
		t.Fatalf("kdig %s: output does not show an HTTP/2 %s with status 200:\n%s", method, method, out)
	}
}

// TestInteropKdigDoH: kdig +https (POST) and +https-get against the inbound
// DoH listener, TLS verified against the private CA for name localhost.
func TestInteropKdigDoH(t *testing.T) {
	interopNeed(t, "kdig")
	s := interopConfig(t, "doh")
	interopStart(t, s, interopEnv())
	interopKdig(t, s, "ipv4.aws.example.internal", false)
	interopKdig(t, s, "ipv4.aws.example.internal", true)
	interopDo53(t, s.addr, "ipV4.aws.example.internal.", "10.2.1.10")
	interopLogWait(t, s.queryLog, map[string]interopWant{
		"ipv4.aws.example.internal.": {"DoH", 2, false}, // kdig sends lower case
		"ipV4.aws.example.internal.": {"UDP", 1, false},
	})
}

// TestInteropDigDoH: dig 9.18 +https (POST) and +https-get, with the
// certificate verified (+tls-ca, +tls-hostname=localhost).
func TestInteropDigDoH(t *testing.T) {
	interopNeed(t, "dig")
	s := interopConfig(t, "doh")
	interopStart(t, s, interopEnv())
	host, port := hostPort(t, s.dohAddr)
	for _, tt := range []struct{ name, method string }{
		{"IPv4.aws.example.internal", "+https=/dns-query"},
		{"iPv4.aws.example.internal", "+https-get=/dns-query"},
	} {
		out := interopRun(t, "dig", "@"+host, "-p", port, tt.method, "+tls-ca="+s.ca, "+tls-hostname=localhost",
			"+nocookie", tt.name, "A")
		if !strings.Contains(out, "status: NOERROR") || !strings.Contains(out, "10.2.1.10") {
			t.Fatalf("dig %s: no 10.2.1.10 answer:\n%s", tt.method, out)
		}
		// ";; SERVER: 127.0.0.1#PORT(127.0.0.1) (HTTPS)" or "(HTTPS-GET)"
		want := "(HTTPS)"
		if strings.HasPrefix(tt.method, "+https-get") {
			want = "(HTTPS-GET)"
		}
		if !strings.Contains(out, want) {
			t.Fatalf("dig %s: output does not show %s:\n%s", tt.method, want, out)
		}
	}
	// An untrusted CA must fail: dig really verifies with +tls-ca.
	other := t.TempDir()
	otherCA, _, _ := writePKI(t, other)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "dig", "@"+host, "-p", port, "+https", "+tls-ca="+otherCA,
		"+tls-hostname=localhost", "+tries=1", "+timeout=2", "IPV4.aws.example.internal", "A").CombinedOutput()
	if err == nil && strings.Contains(string(out), "10.2.1.10") {
		t.Fatalf("dig +https with a foreign CA got an answer; TLS was not verified:\n%s", out)
	}
	// dig 9.18 exits 0 here; it reports the failure on its output.
	if !strings.Contains(string(out), "certificate verification") {
		t.Fatalf("dig +https with a foreign CA: no certificate verification failure reported: %v\n%s", err, out)
	}
	interopDo53(t, s.addr, "ipV4.aws.example.internal.", "10.2.1.10")
	interopLogWait(t, s.queryLog, map[string]interopWant{
		"IPv4.aws.example.internal.": {"DoH", 1, false},
		"iPv4.aws.example.internal.": {"DoH", 1, false},
		"ipV4.aws.example.internal.": {"UDP", 1, false},
	})
}

// TestInteropDnsdist is the seed's Ubuntu host: dnsdist 1.7 listens for
// classic DNS on loopback and forwards over DoH to the inbound endpoint,
// verifying its certificate. A Do53 client asks dnsdist; xdoh's query log
// must show the query arriving over DoH.
func TestInteropDnsdist(t *testing.T) {
	interopNeed(t, "dnsdist")
	s := interopConfig(t, "doh")
	interopStart(t, s, interopEnv())
	proxy := freeAddr(t)
	conf := filepath.Join(s.dir, "dnsdist.conf")
	text := fmt.Sprintf(`setLocal('%s')
setSecurityPollSuffix('')
setOutgoingDoHWorkerThreads(1)
newServer({
  address='%s', tls='openssl', subjectName='localhost',
  dohPath='/dns-query', caStore='%s', validateCertificates=true,
  checkName='ipv4.aws.example.internal.', checkType='A', mustResolve=true
})
`, proxy, s.dohAddr, s.ca)
	if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "dnsdist", "--check-config", "-C", conf).CombinedOutput(); err != nil {
		t.Fatalf("dnsdist --check-config: %v\n%s\n%s", err, out, text)
	}

	out := &syncBuffer{}
	cmd := exec.Command("dnsdist", "--supervised", "--disable-syslog", "-C", conf)
	cmd.Stdout, cmd.Stderr = out, out
	exited, waitErr := startProc(t, cmd)

	// Wait until dnsdist answers through xdoh, with the name its health
	// check uses (so not counted below).
	name := "ipv4.aws.example.internal."
	var r *dns.Msg
	deadline := time.Now().Add(6 * time.Second)
	for {
		select {
		case <-exited:
			t.Fatalf("dnsdist exited: %v\n%s", waitErr(), out.String())
		default:
		}
		var err error
		r, _, err = (&dns.Client{Timeout: 500 * time.Millisecond}).Exchange(new(dns.Msg).SetQuestion(name, dns.TypeA), proxy)
		if err == nil && interopA(r) == "10.2.1.10" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("dnsdist on %s did not answer %s with 10.2.1.10 within 6s: %v %v\n%s", proxy, name, r, err, out.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	// dnsdist passes the client's spelling through, so these are its queries.
	interopDo53(t, proxy, "IPv4.AWS.example.internal.", "10.2.1.10")
	interopDo53(t, proxy, "iPv4.aws.example.internal.", "10.2.1.10")
	interopDo53(t, s.addr, "ipV4.aws.example.internal.", "10.2.1.10")
	interopLogWait(t, s.queryLog, map[string]interopWant{
		"IPv4.AWS.example.internal.": {"DoH", 1, false},
		"iPv4.aws.example.internal.": {"DoH", 1, false},
		"ipV4.aws.example.internal.": {"UDP", 1, false},
	})
	// Every query dnsdist sent, health checks included, came over DoH.
	interopLogWait(t, s.queryLog, map[string]interopWant{name: {"DoH", 1, true}})
}

// TestFIPSRefusedWithoutGODEBUG: a doh-fips listener in a process not in
// FIPS 140-3 mode is a configuration error, for `xdoh run` and `xdoh check`.
func TestFIPSRefusedWithoutGODEBUG(t *testing.T) {
	s := interopConfig(t, "doh-fips")
	for _, args := range [][]string{{"run", "-c", s.cfg}, {"check", "-c", s.cfg}} {
		ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
		cmd := exec.CommandContext(ctx, xdohBin, args...)
		cmd.Env = interopEnv()
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
		out, err := cmd.CombinedOutput()
		timedOut := ctx.Err() == context.DeadlineExceeded
		cancel()
		if timedOut {
			t.Fatalf("xdoh %s did not exit within 8s (it should refuse to start):\n%s", args[0], out)
		}
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			t.Fatalf("xdoh %s without GODEBUG: want a non-zero exit, got %v\n%s", args[0], err, out)
		}
		if !strings.Contains(string(out), "GODEBUG=fips140=on") {
			t.Errorf("xdoh %s: exit %d, the message does not mention GODEBUG=fips140=on:\n%s", args[0], ee.ExitCode(), out)
		}
		if args[0] == "check" && ee.ExitCode() != 2 {
			t.Errorf("xdoh check: exit %d, want 2\n%s", ee.ExitCode(), out)
		}
		t.Logf("xdoh %s: exit %d: %s", args[0], ee.ExitCode(), strings.TrimSpace(string(out)))
	}
	// Nothing may be left listening.
	if c, err := net.DialTimeout("tcp", s.dohAddr, 200*time.Millisecond); err == nil {
		c.Close()
		t.Errorf("something listens on the DoH address %s after the refused start", s.dohAddr)
	}
}

// TestFIPSDoHWithGODEBUG: with GODEBUG=fips140=on the doh-fips listener
// serves kdig, the query log says DoH-FIPS, and TLS outside the FIPS policy
// (ChaCha20 on TLS 1.2, TLS 1.1) is refused.
func TestFIPSDoHWithGODEBUG(t *testing.T) {
	s := interopConfig(t, "doh-fips")
	env := interopEnv("GODEBUG=fips140=on")
	check := exec.Command(xdohBin, "check", "-c", s.cfg)
	check.Env = env
	out, err := check.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "FIPS 140-3 mode: on") {
		t.Fatalf("xdoh check with GODEBUG=fips140=on: %v\n%s", err, out)
	}
	interopStart(t, s, env)

	// Go's own client (not in FIPS mode here) offering only what the
	// listener must refuse.
	pool := x509.NewCertPool()
	pem, err := os.ReadFile(s.ca)
	if err != nil {
		t.Fatal(err)
	}
	pool.AppendCertsFromPEM(pem)
	for _, tt := range []struct {
		name string
		conf *tls.Config
	}{
		{"TLS 1.2 ChaCha20", &tls.Config{MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{
			tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256}}},
		{"TLS 1.1", &tls.Config{MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11}},
		{"X25519 only", &tls.Config{CurvePreferences: []tls.CurveID{tls.X25519}}},
	} {
		tt.conf.RootCAs, tt.conf.ServerName, tt.conf.NextProtos = pool, "localhost", []string{"h2"}
		d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: 2 * time.Second}, Config: tt.conf}
		c, err := d.Dial("tcp", s.dohAddr)
		if err == nil {
			st := c.(*tls.Conn).ConnectionState()
			c.Close()
			t.Errorf("%s: handshake succeeded (version %x, suite %s, curve %v); a DoH-FIPS listener must refuse it",
				tt.name, st.Version, tls.CipherSuiteName(st.CipherSuite), st.CurveID)
		}
	}
	// The same client with defaults negotiates (sanity check of the above).
	d := &tls.Dialer{NetDialer: &net.Dialer{Timeout: 2 * time.Second},
		Config: &tls.Config{RootCAs: pool, ServerName: "localhost", NextProtos: []string{"h2"}}}
	c, err := d.Dial("tcp", s.dohAddr)
	if err != nil {
		t.Fatalf("default TLS client against the DoH-FIPS listener: %v", err)
	}
	c.Close()

	interopDo53(t, s.addr, "ipV4.aws.example.internal.", "10.2.1.10")
	if _, err := exec.LookPath("kdig"); err != nil {
		t.Log("kdig not installed (.ci/run installs it); DoH-FIPS checked with Do53 only")
		interopLogWait(t, s.queryLog, map[string]interopWant{"ipV4.aws.example.internal.": {"UDP", 1, false}})
		return
	}
	interopKdig(t, s, "ipv4.aws.example.internal", false)
	interopKdig(t, s, "ipv4.aws.example.internal", true)
	interopLogWait(t, s.queryLog, map[string]interopWant{
		"ipv4.aws.example.internal.": {"DoH-FIPS", 2, false},
		"ipV4.aws.example.internal.": {"UDP", 1, false},
	})
}
