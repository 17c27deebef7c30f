package upstreamtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// dohQuery sends name/qtype over DoH (POST) and returns the answer and the
// local address of the connection it travelled on.
func dohQuery(t *testing.T, c *http.Client, url, name string, qtype uint16) (*dns.Msg, netip.AddrPort) {
	t.Helper()
	var mu sync.Mutex
	var local netip.AddrPort
	trace := &httptrace.ClientTrace{GotConn: func(ci httptrace.GotConnInfo) {
		mu.Lock()
		defer mu.Unlock()
		local = ci.Conn.LocalAddr().(*net.TCPAddr).AddrPort()
	}}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ctx = httptrace.WithClientTrace(ctx, trace)
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	m.RecursionDesired = false
	r, err := DoHExchange(ctx, c, url, m)
	if err != nil {
		t.Fatalf("DoH %s %s: %v", name, dns.TypeToString[qtype], err)
	}
	mu.Lock()
	defer mu.Unlock()
	if !local.IsValid() {
		t.Fatal("no connection info from httptrace")
	}
	return r, netip.AddrPortFrom(local.Addr().Unmap(), local.Port())
}

func udpQuery(t *testing.T, addr, name string, qtype uint16) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	m.RecursionDesired = false
	c := &dns.Client{Net: "udp", Timeout: 2 * time.Second}
	r, _, err := c.Exchange(m, addr)
	if err != nil {
		t.Fatalf("UDP %s %s: %v", name, dns.TypeToString[qtype], err)
	}
	return r
}

func answerStrings(r *dns.Msg) []string {
	var out []string
	for _, rr := range r.Answer {
		switch v := rr.(type) {
		case *dns.A:
			out = append(out, v.A.String())
		case *dns.AAAA:
			out = append(out, v.AAAA.String())
		case *dns.TXT:
			out = append(out, strings.Join(v.Txt, ""))
		}
	}
	return out
}

func wantAnswer(t *testing.T, what string, r *dns.Msg, want string) {
	t.Helper()
	if r.Rcode != dns.RcodeSuccess {
		t.Fatalf("%s: rcode %s", what, dns.RcodeToString[r.Rcode])
	}
	got := answerStrings(r)
	if len(got) != 1 || got[0] != want {
		t.Fatalf("%s: answer %v, want [%s]", what, got, want)
	}
}

// findEntry returns the query log entries for name/qtype.
func findEntries(entries []QueryLogEntry, name, qtype string) []QueryLogEntry {
	var out []QueryLogEntry
	for _, e := range entries {
		if e.Name == name && e.Type == qtype {
			out = append(out, e)
		}
	}
	return out
}

// waitQueryLog polls the query log until want entries for name/qtype exist.
func waitQueryLog(t *testing.T, b *BIND, name, qtype string, want int) []QueryLogEntry {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for {
		got := findEntries(b.QueryLog(t), name, qtype)
		if len(got) >= want || time.Now().After(deadline) {
			if len(got) != want {
				t.Fatalf("query log: %d entries for %s %s, want %d\n%s", len(got), name, qtype, want,
					strings.Join(b.QueryLogLines(t), "\n"))
			}
			return got
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestBINDDefaultZoneDoHAndUDP(t *testing.T) {
	t.Parallel()
	start := time.Now()
	b := StartBIND(t, BINDOptions{QueryLog: true})
	t.Logf("named pid %d ready in %v: DoH %s, Do53 %s, stats %s", b.PID, time.Since(start).Round(time.Millisecond), b.DoHURL, b.Do53Addr, b.StatsURL)

	if s := b.Stats(t); s.QueriesUDP != 0 || s.QueriesTCP != 0 || s.Requests != 0 {
		t.Fatalf("stats right after StartBIND should be zero (probes excluded): %v", s)
	}
	if l := b.QueryLogLines(t); len(l) != 0 {
		t.Fatalf("query log right after StartBIND should be empty (probes excluded): %q", l)
	}

	// --- DoH: A and AAAA over one HTTP/2 connection.
	before := b.Stats(t)
	client := b.HTTPClient()
	defer client.Transport.(*http.Transport).CloseIdleConnections()
	rA, connA := dohQuery(t, client, b.DoHURL, "foo.example.com", dns.TypeA)
	wantAnswer(t, "DoH A", rA, "172.16.0.10")
	rAAAA, connAAAA := dohQuery(t, client, b.DoHURL, "foo.example.com", dns.TypeAAAA)
	wantAnswer(t, "DoH AAAA", rAAAA, "2001:db8:5678::abc")
	if connA != connAAAA {
		t.Logf("note: A and AAAA used different connections (%v, %v)", connA, connAAAA)
	}
	d := b.Stats(t).Sub(before)
	t.Logf("stats delta after 2 DoH queries: %v", d)
	if d.QueriesTCP != 2 || d.RequestsTCP != 2 || d.QueriesUDP != 0 {
		t.Fatalf("after 2 DoH queries want QryTCP=2 ReqTCP=2 QryUDP=0, got %v", d)
	}
	// The query log marks both as TCP-based ("T") and names the client port
	// of our HTTP/2 connection to the DoH port: proof they came over DoH.
	eA := waitQueryLog(t, b, "foo.example.com", "A", 1)[0]
	eAAAA := waitQueryLog(t, b, "foo.example.com", "AAAA", 1)[0]
	for _, c := range []struct {
		e    QueryLogEntry
		conn netip.AddrPort
	}{{eA, connA}, {eAAAA, connAAAA}} {
		if !c.e.TCP || c.e.Client != c.conn || c.e.Class != "IN" {
			t.Fatalf("query log entry %q: want TCP flag and client %v", c.e.Line, c.conn)
		}
		t.Logf("DoH query log line: %s", c.e.Line)
	}

	// --- UDP.
	before = b.Stats(t)
	wantAnswer(t, "UDP A", udpQuery(t, b.Do53Addr, "foo.example.com", dns.TypeA), "172.16.0.10")
	d = b.Stats(t).Sub(before)
	t.Logf("stats delta after 1 UDP query: %v", d)
	if d.QueriesUDP != 1 || d.QueriesTCP != 0 || d.RequestsTCP != 0 {
		t.Fatalf("after 1 UDP query want QryUDP=1 QryTCP=0 ReqTCP=0, got %v", d)
	}
	udpEntries := waitQueryLog(t, b, "foo.example.com", "A", 2)
	if e := udpEntries[1]; e.TCP {
		t.Fatalf("UDP query logged with TCP flag: %q", e.Line)
	} else {
		t.Logf("UDP query log line: %s", e.Line)
	}

	// --- Do53 over TCP: counted exactly like DoH (BIND 9.18 cannot tell them apart).
	before = b.Stats(t)
	m := new(dns.Msg)
	m.SetQuestion("foo.example.com.", dns.TypeAAAA)
	tc := &dns.Client{Net: "tcp", Timeout: 2 * time.Second}
	r, _, err := tc.Exchange(m, b.Do53Addr)
	if err != nil {
		t.Fatalf("TCP AAAA: %v", err)
	}
	wantAnswer(t, "TCP AAAA", r, "2001:db8:5678::abc")
	d = b.Stats(t).Sub(before)
	if d.QueriesTCP != 1 || d.QueriesUDP != 0 {
		t.Fatalf("after 1 Do53/TCP query want QryTCP=1 QryUDP=0, got %v", d)
	}
	if e := waitQueryLog(t, b, "foo.example.com", "AAAA", 2)[1]; !e.TCP {
		t.Fatalf("Do53/TCP query logged without TCP flag: %q", e.Line)
	} else {
		t.Logf("Do53/TCP query log line: %s", e.Line)
	}
}

func TestBINDKdigDoH(t *testing.T) {
	kdig, err := exec.LookPath("kdig")
	if err != nil {
		t.Skip("kdig not installed")
	}
	b := StartBIND(t, BINDOptions{QueryLog: true})
	run := func(args ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, kdig, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("kdig %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	host, port, _ := net.SplitHostPort(strings.TrimSuffix(strings.TrimPrefix(b.DoHURL, "https://"), "/dns-query"))

	before := b.Stats(t)
	out := run("@"+host, "-p", port, "+https=/dns-query", "+tls-ca="+b.CAFile, "+tls-hostname=localhost",
		"+timeout=3", "+retry=0", "foo.example.com", "A")
	if !strings.Contains(out, "172.16.0.10") || !strings.Contains(out, "HTTP/2") {
		t.Fatalf("kdig +https output lacks the answer or HTTP/2:\n%s", out)
	}
	d := b.Stats(t).Sub(before)
	t.Logf("stats delta after kdig +https: %v", d)
	if d.QueriesTCP != 1 || d.QueriesUDP != 0 {
		t.Fatalf("after kdig +https want QryTCP=1 QryUDP=0, got %v", d)
	}
	if e := waitQueryLog(t, b, "foo.example.com", "A", 1)[0]; !e.TCP {
		t.Fatalf("kdig DoH query logged without TCP flag: %q", e.Line)
	} else {
		t.Logf("kdig DoH query log line: %s", e.Line)
	}

	host, port, _ = net.SplitHostPort(b.Do53Addr)
	before = b.Stats(t)
	out = run("@"+host, "-p", port, "+timeout=3", "+retry=0", "+short", "foo.example.com", "AAAA")
	if strings.TrimSpace(out) != "2001:db8:5678::abc" {
		t.Fatalf("kdig UDP: %q", out)
	}
	d = b.Stats(t).Sub(before)
	if d.QueriesUDP != 1 || d.QueriesTCP != 0 {
		t.Fatalf("after kdig UDP want QryUDP=1 QryTCP=0, got %v", d)
	}
}

func TestBINDCustomZone(t *testing.T) {
	t.Parallel()
	b := StartBIND(t, BINDOptions{Zones: map[string]string{
		"corp.internal": `$TTL 60
@    IN SOA ns.corp.internal. admin.corp.internal. 7 3600 600 86400 60
@    IN NS  ns
ns   IN A   127.0.0.1
www  IN A   10.1.2.3
txt  IN TXT "hello from bind"
`,
	}})
	client := b.HTTPClient()
	defer client.Transport.(*http.Transport).CloseIdleConnections()
	r, _ := dohQuery(t, client, b.DoHURL, "www.corp.internal", dns.TypeA)
	wantAnswer(t, "DoH www.corp.internal A", r, "10.1.2.3")
	r, _ = dohQuery(t, client, b.DoHURL, "txt.corp.internal", dns.TypeTXT)
	wantAnswer(t, "DoH txt.corp.internal TXT", r, "hello from bind")
	wantAnswer(t, "UDP www.corp.internal A", udpQuery(t, b.Do53Addr, "www.corp.internal", dns.TypeA), "10.1.2.3")
	if r := udpQuery(t, b.Do53Addr, "nope.corp.internal", dns.TypeA); r.Rcode != dns.RcodeNameError || !r.Authoritative {
		t.Fatalf("nope.corp.internal: want authoritative NXDOMAIN, got %s aa=%v", dns.RcodeToString[r.Rcode], r.Authoritative)
	}
	// The default zone is not served when Zones is given.
	if r := udpQuery(t, b.Do53Addr, "foo.example.com", dns.TypeA); r.Rcode != dns.RcodeRefused {
		t.Fatalf("foo.example.com with custom zones: want REFUSED, got %s", dns.RcodeToString[r.Rcode])
	}
}

func TestBINDStopsOnCleanup(t *testing.T) {
	var pid int
	var dir string
	t.Run("run", func(t *testing.T) {
		b := StartBIND(t, BINDOptions{})
		pid, dir = b.PID, b.Dir
	})
	if pid == 0 {
		t.Skip("subtest skipped")
	}
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Fatalf("named pid %d still exists after cleanup (kill 0: %v)", pid, err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("temp dir %s not removed: %v", dir, err)
	}
}

// fakeTB records Fatal/Skip instead of ending the real test.
type fakeTB struct {
	testing.TB
	mu       sync.Mutex
	fatal    string
	cleanups []func()
}

func (f *fakeTB) Helper() {}
func (f *fakeTB) Cleanup(fn func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cleanups = append(f.cleanups, fn)
}
func (f *fakeTB) Fatalf(format string, args ...any) {
	f.mu.Lock()
	f.fatal = fmt.Sprintf(format, args...)
	f.mu.Unlock()
	runtime.Goexit()
}
func (f *fakeTB) Fatal(args ...any) { f.Fatalf("%s", fmt.Sprint(args...)) }
func (f *fakeTB) Skip(args ...any)  { f.Fatalf("skip: %s", fmt.Sprint(args...)) }

// run calls fn in its own goroutine (Fatalf ends it with Goexit), then runs
// the recorded cleanups.
func (f *fakeTB) run(fn func(tb testing.TB)) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn(f)
	}()
	<-done
	f.mu.Lock()
	cl := f.cleanups
	f.mu.Unlock()
	for i := len(cl) - 1; i >= 0; i-- {
		cl[i]()
	}
}

func TestBINDBrokenZoneIsFatal(t *testing.T) {
	if findNamed() == "" {
		t.Skip("named not installed")
	}
	f := &fakeTB{TB: t}
	var b *BIND
	f.run(func(tb testing.TB) {
		b = StartBIND(tb, BINDOptions{Zones: map[string]string{"broken.test.": "this is not a zone file\n"}})
	})
	if b != nil || f.fatal == "" {
		t.Fatalf("StartBIND with a broken zone did not fail (b=%v)", b)
	}
	if !strings.Contains(f.fatal, "broken.test. not loaded") || !strings.Contains(f.fatal, "named.log") {
		t.Fatalf("fatal message lacks the zone or the log tail:\n%s", f.fatal)
	}
	t.Logf("StartBIND failed as expected:\n%s", f.fatal)
}

func TestBINDRetriesOnPortConflict(t *testing.T) {
	if findNamed() == "" {
		t.Skip("named not installed")
	}
	// Hold a TCP port and hand it out as the DoH port on the first attempt:
	// named logs "address in use" and keeps running; StartBIND must notice,
	// stop it and retry with fresh ports.
	busy, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	busyPort := busy.Addr().(*net.TCPAddr).Port
	var calls int
	orig := pickPortsFunc
	pickPortsFunc = func() (ports, error) {
		calls++
		p, err := orig()
		if calls == 1 {
			p.doh = busyPort
		}
		return p, err
	}
	defer func() { pickPortsFunc = orig }()

	b := StartBIND(t, BINDOptions{})
	// At least one retry; another can happen when a port picked for the
	// second attempt is taken meanwhile by a test running in parallel.
	if calls < 2 {
		t.Fatalf("pickPorts called %d times, want a retry after the conflict", calls)
	}
	if strings.HasSuffix(b.DoHURL, fmt.Sprintf(":%d/dns-query", busyPort)) {
		t.Fatalf("DoH URL %s uses the busy port", b.DoHURL)
	}
	client := b.HTTPClient()
	defer client.Transport.(*http.Transport).CloseIdleConnections()
	r, _ := dohQuery(t, client, b.DoHURL, "foo.example.com", dns.TypeA)
	wantAnswer(t, "DoH A after retry", r, "172.16.0.10")
}

func TestParseQueryLogLine(t *testing.T) {
	for _, c := range []struct {
		line   string
		client string
		name   string
		class  string
		qtype  string
		tcp    bool
	}{
		{"26-Nov-2026 21:47:13.078 client @0x7f0e604eec98 127.0.0.1#39581 (foo.example.com): query: foo.example.com IN A +E(0)T (127.0.0.1)",
			"127.0.0.1:39581", "foo.example.com", "IN", "A", true},
		{"26-Nov-2026 21:47:13.682 client @0x7f0e604ed098 127.0.0.1#60417 (foo.example.com): query: foo.example.com IN AAAA + (127.0.0.1)",
			"127.0.0.1:60417", "foo.example.com", "IN", "AAAA", false},
		{"26-Nov-2026 21:47:39.394 client @0x7f0e604f0898 127.0.0.1#34795 (foo.example.com): query: foo.example.com IN A +T (127.0.0.1)",
			"127.0.0.1:34795", "foo.example.com", "IN", "A", true},
		{"01-Jan-2026 00:00:00.000 client @0x1 ::1#53000 (x.test): query: x.test IN TXT -E(0)DC (::1)",
			"[::1]:53000", "x.test", "IN", "TXT", false},
	} {
		e, ok := ParseQueryLogLine(c.line)
		if !ok {
			t.Fatalf("not parsed: %q", c.line)
		}
		if e.Client.String() != c.client || e.Name != c.name || e.Class != c.class || e.Type != c.qtype || e.TCP != c.tcp {
			t.Fatalf("%q parsed as %+v", c.line, e)
		}
	}
	if _, ok := ParseQueryLogLine("26-Nov-2026 21:47:04.914 general: notice: running"); ok {
		t.Fatal("non-query line parsed")
	}
}
