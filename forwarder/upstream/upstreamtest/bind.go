package upstreamtest

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"xdoh/datapath/tlsconf"
)

// BINDOptions configures StartBIND.
type BINDOptions struct {
	// Zones maps a zone origin ("example.com.") to the text of its zone file
	// (BIND master-file format; relative names are relative to the origin).
	// Nil or empty: DefaultZones.
	Zones map[string]string
	// QueryLog enables BIND's query log (category "queries") to
	// Dir/query.log; read it with QueryLogLines or QueryLog.
	QueryLog bool
	// RequireServerCookie sets require-server-cookie: a UDP query with a
	// COOKIE option but no valid server cookie gets BADCOOKIE (RFC 7873),
	// with a fresh server cookie to retry with. Queries without COOKIE
	// are answered as usual.
	RequireServerCookie bool
	// CookieSecret, 32 hex digits, is BIND's cookie-secret (with its
	// default cookie-algorithm, siphash24: RFC 9018's server cookie).
	// Empty: BIND draws its own.
	CookieSecret string
	// CertHosts are more names for BIND's certificate, beside 127.0.0.1
	// and localhost (BootstrapHost, say).
	CertHosts []string
}

// DefaultZoneExampleCom is the zone served when BINDOptions.Zones is empty.
const DefaultZoneExampleCom = `$TTL 300
@       IN SOA  ns.example.com. hostmaster.example.com. 1 3600 600 86400 300
@       IN NS   ns.example.com.
ns      IN A    127.0.0.1
foo     IN A    172.16.0.10
foo     IN AAAA 2001:db8:5678::abc
`

// DefaultZones returns the zones used when BINDOptions.Zones is empty:
// example.com. with foo.example.com A 172.16.0.10 and AAAA 2001:db8:5678::abc.
func DefaultZones() map[string]string {
	return map[string]string{"example.com.": DefaultZoneExampleCom}
}

// BIND is a running named started by StartBIND.
type BIND struct {
	Dir      string // temp dir with named.conf, zones, ca.pem/server.pem/server.key, named.log, query.log
	DoHURL   string // "https://127.0.0.1:PORT/dns-query" (HTTP/2 only, POST and GET)
	DoTAddr  string // "127.0.0.1:PORT": DNS over TLS (RFC 7858), the same certificate as DoH
	Do53Addr string // "127.0.0.1:PORT" (UDP+TCP)
	CAFile   string // PEM of the private CA that signed BIND's cert (SAN IP:127.0.0.1, DNS:localhost, CertHosts)
	StatsURL string // "http://127.0.0.1:PORT/json/v1"
	PID      int    // named's PID (= its process group id)

	pki      *tlsconf.PKI
	queryLog bool
	logFile  string
	qlogFile string
	serverID string
	zones    []string // origins (FQDN, lower case as given)

	mu       sync.Mutex
	baseline rawStats
}

// RootCAs returns a pool that trusts only the CA in CAFile.
func (b *BIND) RootCAs() *x509.CertPool { return b.pki.Pool.Clone() }

// HTTPClient returns a new HTTP/2-only client that trusts the private CA,
// suitable for DoHURL. Each call returns a client with its own transport
// (its own connections).
func (b *BIND) HTTPClient() *http.Client {
	return newDoHClient(b.pki.Pool)
}

// LogTail returns the last n lines of named.log (for diagnostics).
func (b *BIND) LogTail(n int) string { return tailFile(b.logFile, n) }

func newDoHClient(pool *x509.CertPool) *http.Client {
	var p http.Protocols
	p.SetHTTP2(true)
	return &http.Client{
		Timeout: 5 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig:   &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
			Protocols:         &p,
			ForceAttemptHTTP2: true,
			Proxy:             nil, // never a proxy: loopback only
		},
	}
}

const (
	startAttempts = 3
	readyTimeout  = 10 * time.Second
	stopTimeout   = 5 * time.Second
)

// errPortConflict marks a start attempt that failed because a port was taken.
var errPortConflict = errors.New("port conflict")

// StartBIND starts named with its own config on free loopback ports, waits
// until it answers (DoH and Do53), and stops it (by process group, SIGTERM
// then SIGKILL) in t.Cleanup. It calls t.Skip only when `named` is not
// installed; any other failure is t.Fatal with named's log tail.
func StartBIND(t testing.TB, opts BINDOptions) *BIND {
	t.Helper()
	named := findNamed()
	if named == "" {
		t.Skip("upstreamtest: named (BIND 9, Debian package bind9) is not installed")
	}
	dir := t.TempDir()
	pki, err := tlsconf.NewPKI(append([]string{"127.0.0.1", "localhost"}, opts.CertHosts...)...)
	if err != nil {
		t.Fatalf("upstreamtest: %v", err)
	}
	caFile, certFile, keyFile, err := pki.WriteFiles(dir)
	if err != nil {
		t.Fatalf("upstreamtest: %v", err)
	}
	zones := opts.Zones
	if len(zones) == 0 {
		zones = DefaultZones()
	}
	zoneFiles, err := writeZones(dir, zones)
	if err != nil {
		t.Fatalf("upstreamtest: %v", err)
	}

	var lastErr error
	for attempt := 1; attempt <= startAttempts; attempt++ {
		b, proc, err := startOnce(named, dir, pki, caFile, certFile, keyFile, zoneFiles, opts)
		if err == nil {
			t.Cleanup(func() {
				if err := proc.stop(); err != nil {
					t.Errorf("upstreamtest: stopping named (pid %d): %v", proc.pid, err)
				}
			})
			return b
		}
		lastErr = err
		if !errors.Is(err, errPortConflict) {
			break
		}
		t.Logf("upstreamtest: named start attempt %d: %v; retrying with new ports", attempt, err)
	}
	t.Fatalf("upstreamtest: starting named failed: %v\n--- %s (tail) ---\n%s\n--- %s ---\n%s",
		lastErr, filepath.Join(dir, "named.log"), tailFile(filepath.Join(dir, "named.log"), 40),
		filepath.Join(dir, "named.stderr"), tailFile(filepath.Join(dir, "named.stderr"), 20))
	return nil
}

func findNamed() string {
	if p, err := exec.LookPath("named"); err == nil {
		return p
	}
	for _, p := range []string{"/usr/sbin/named", "/usr/local/sbin/named"} {
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	return ""
}

// process is a started named.
type process struct {
	pid  int
	done chan struct{} // closed when Wait returned
	err  error         // Wait's result, valid after done
	once sync.Once
	serr error
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM to named's process group, waits up to stopTimeout, then
// SIGKILLs the group. Idempotent.
func (p *process) stop() error {
	p.once.Do(func() {
		_ = syscall.Kill(-p.pid, syscall.SIGTERM)
		select {
		case <-p.done:
			return
		case <-time.After(stopTimeout):
		}
		_ = syscall.Kill(-p.pid, syscall.SIGKILL)
		select {
		case <-p.done:
			p.serr = fmt.Errorf("did not stop on SIGTERM within %v, killed", stopTimeout)
		case <-time.After(stopTimeout):
			p.serr = errors.New("did not exit even after SIGKILL")
		}
	})
	return p.serr
}

func startOnce(named, dir string, pki *tlsconf.PKI, caFile, certFile, keyFile string, zoneFiles map[string]string, opts BINDOptions) (*BIND, *process, error) {
	p, err := pickPortsFunc()
	if err != nil {
		return nil, nil, err
	}
	id := make([]byte, 8)
	_, _ = rand.Read(id)
	b := &BIND{
		Dir:      dir,
		DoHURL:   fmt.Sprintf("https://127.0.0.1:%d/dns-query", p.doh),
		DoTAddr:  net.JoinHostPort("127.0.0.1", strconv.Itoa(p.dot)),
		Do53Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(p.do53)),
		CAFile:   caFile,
		StatsURL: fmt.Sprintf("http://127.0.0.1:%d/json/v1", p.stats),
		pki:      pki,
		queryLog: opts.QueryLog,
		logFile:  filepath.Join(dir, "named.log"),
		qlogFile: filepath.Join(dir, "query.log"),
		serverID: "upstreamtest-" + hex.EncodeToString(id),
	}
	for o := range zoneFiles {
		b.zones = append(b.zones, o)
	}
	sort.Strings(b.zones)
	// Fresh logs for every attempt, so conflict detection sees only this one.
	for _, f := range []string{b.logFile, b.qlogFile, filepath.Join(dir, "named.stderr")} {
		_ = os.Remove(f)
	}
	conf := namedConf(b, dir, certFile, keyFile, p, zoneFiles, opts)
	confFile := filepath.Join(dir, "named.conf")
	if err := os.WriteFile(confFile, []byte(conf), 0o644); err != nil {
		return nil, nil, err
	}
	out, err := os.OpenFile(filepath.Join(dir, "named.stderr"), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, nil, err
	}
	defer out.Close()
	cmd := exec.Command(named, "-f", "-n", "1", "-L", b.logFile, "-c", confFile)
	cmd.Dir = dir
	cmd.Stdin = nil
	cmd.Stdout = out
	cmd.Stderr = out
	// Own process group (stopped as a group); SIGKILL if the test binary dies.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, nil, fmt.Errorf("exec %s: %w", named, err)
	}
	proc := &process{pid: cmd.Process.Pid, done: make(chan struct{})}
	go func() {
		proc.err = cmd.Wait()
		close(proc.done)
	}()
	b.PID = proc.pid

	if err := b.waitReady(proc); err != nil {
		if serr := proc.stop(); serr != nil {
			err = fmt.Errorf("%w (and stopping it: %v)", err, serr)
		}
		return nil, nil, err
	}
	return b, proc, nil
}

// pickPortsFunc is pickPorts; tests replace it to provoke port conflicts.
var pickPortsFunc = pickPorts

// ports are the loopback ports of one named.
type ports struct{ do53, doh, dot, stats int }

// pickPorts returns four distinct free loopback ports: do53 free for both
// TCP and UDP, doh, dot and stats free for TCP. All are held until all are
// chosen.
func pickPorts() (p ports, err error) {
	var closers []io.Closer
	defer func() {
		for _, c := range closers {
			c.Close()
		}
	}()
	tcpPort := func() (int, error) {
		l, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		closers = append(closers, l)
		return l.Addr().(*net.TCPAddr).Port, nil
	}
	for i := 0; i < 50 && p.do53 == 0; i++ {
		port, err := tcpPort()
		if err != nil {
			return ports{}, fmt.Errorf("picking a port: %w", err)
		}
		u, err := net.ListenPacket("udp4", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			continue // UDP side taken; keep the TCP listener so it is not picked again
		}
		closers = append(closers, u)
		p.do53 = port
	}
	if p.do53 == 0 {
		return ports{}, errors.New("no loopback port free for both TCP and UDP")
	}
	for _, port := range []*int{&p.doh, &p.dot, &p.stats} {
		if *port, err = tcpPort(); err != nil {
			return ports{}, fmt.Errorf("picking a port: %w", err)
		}
	}
	return p, nil
}

// zoneFileName maps an origin to a safe file name inside Dir.
func zoneFileName(origin string) string {
	n := strings.TrimSuffix(strings.ToLower(origin), ".")
	if n == "" {
		return "db.root"
	}
	var sb strings.Builder
	for _, r := range n {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '.', r == '-':
			sb.WriteRune(r)
		default:
			sb.WriteByte('_')
		}
	}
	return "db." + sb.String()
}

// writeZones writes the zone files and returns origin (FQDN) → file path.
func writeZones(dir string, zones map[string]string) (map[string]string, error) {
	out := make(map[string]string, len(zones))
	used := map[string]string{}
	for origin, text := range zones {
		fq := strings.ToLower(dns.Fqdn(origin))
		if _, ok := dns.IsDomainName(fq); !ok || strings.ContainsAny(fq, "\"\\ \t\n;") {
			return nil, fmt.Errorf("invalid zone origin %q", origin)
		}
		if _, dup := out[fq]; dup {
			return nil, fmt.Errorf("zone %q given twice", fq)
		}
		name := zoneFileName(fq)
		if other, clash := used[name]; clash {
			return nil, fmt.Errorf("zones %q and %q map to the same file name", other, fq)
		}
		used[name] = fq
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
			return nil, err
		}
		out[fq] = path
	}
	return out, nil
}

func namedConf(b *BIND, dir, certFile, keyFile string, p ports, zoneFiles map[string]string, opts BINDOptions) string {
	q := strconv.Quote
	var c strings.Builder
	fmt.Fprintf(&c, `// generated by xdoh/forwarder/upstream/upstreamtest
tls upstreamtest-tls {
	cert-file %s;
	key-file %s;
};
http upstreamtest-doh {
	endpoints { "/dns-query"; };
};
options {
	directory %s;
	pid-file none;
	session-keyfile %s;
	managed-keys-directory %s;
	server-id %s;
	listen-on port %d { 127.0.0.1; };
	listen-on port %d tls upstreamtest-tls http upstreamtest-doh { 127.0.0.1; };
	listen-on port %d tls upstreamtest-tls { 127.0.0.1; };
	listen-on-v6 { none; };
	automatic-interface-scan no;
	recursion no;
	allow-query { 127.0.0.0/8; };
	dnssec-validation no;
	notify no;
	querylog %s;
	require-server-cookie %s;%s
};
controls { };
statistics-channels {
	inet 127.0.0.1 port %d allow { 127.0.0.1; };
};
logging {
	channel upstreamtest_main {
		file %s;
		severity info;
		print-time yes;
		print-category yes;
		print-severity yes;
	};
	category default { upstreamtest_main; };
	category lame-servers { null; };
`, q(certFile), q(keyFile), q(dir), q(filepath.Join(dir, "session.key")), q(dir), q(b.serverID),
		p.do53, p.doh, p.dot, yesNo(opts.QueryLog), yesNo(opts.RequireServerCookie), cookieSecret(opts.CookieSecret), p.stats, q(b.logFile))
	if opts.QueryLog {
		fmt.Fprintf(&c, `	channel upstreamtest_queries {
		file %s;
		severity info;
		print-time yes;
	};
	category queries { upstreamtest_queries; };
`, q(b.qlogFile))
	}
	c.WriteString("};\n")
	origins := make([]string, 0, len(zoneFiles))
	for o := range zoneFiles {
		origins = append(origins, o)
	}
	sort.Strings(origins)
	for _, o := range origins {
		name := strings.TrimSuffix(o, ".")
		if name == "" {
			name = "."
		}
		fmt.Fprintf(&c, "zone %s { type primary; file %s; };\n", q(name), q(zoneFiles[o]))
	}
	return c.String()
}

func yesNo(v bool) string {
	if v {
		return "yes"
	}
	return "no"
}

// conflictMarkers are named.log messages that mean a listening port was taken
// (named keeps running without that listener instead of exiting).
var conflictMarkers = []string{
	"address in use",
	"interface ignored",
	"couldn't allocate statistics channel",
}

func (b *BIND) logConflict() string {
	data, _ := os.ReadFile(b.logFile)
	for _, line := range strings.Split(string(data), "\n") {
		for _, m := range conflictMarkers {
			if strings.Contains(line, m) {
				return line
			}
		}
	}
	return ""
}

func (b *BIND) logHas(s string) bool {
	data, _ := os.ReadFile(b.logFile)
	return bytes.Contains(data, []byte(s))
}

// checkZonesLoaded fails if a configured zone was not loaded (BIND keeps
// running without it and answers SERVFAIL/REFUSED).
func (b *BIND) checkZonesLoaded() error {
	data, _ := os.ReadFile(b.logFile)
	var bad []string
	for _, o := range b.zones {
		name := strings.TrimSuffix(o, ".")
		if name == "" {
			name = "."
		}
		if !bytes.Contains(data, []byte("zone "+name+"/IN: loaded serial")) {
			bad = append(bad, o)
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("zone(s) %s not loaded (see named.log for the zone file error)", strings.Join(bad, ", "))
	}
	return nil
}

func (b *BIND) waitReady(proc *process) error {
	client := newDoHClient(b.pki.Pool)
	defer client.Transport.(*http.Transport).CloseIdleConnections()
	statsClient := newStatsClient()
	deadline := time.Now().Add(readyTimeout)
	var udpOK, dohOK, statsOK bool
	var lastErr error
	for {
		if proc.exited() {
			if line := b.logConflict(); line != "" {
				return fmt.Errorf("%w: named exited: %s", errPortConflict, line)
			}
			return fmt.Errorf("named exited during startup: %v", proc.err)
		}
		if line := b.logConflict(); line != "" {
			return fmt.Errorf("%w: %s", errPortConflict, line)
		}
		if !udpOK {
			udpOK, lastErr = b.probeUDP()
		}
		if udpOK && !dohOK {
			dohOK, lastErr = b.probeDoH(client)
		}
		if udpOK && dohOK && !statsOK {
			var raw rawStats
			if raw, lastErr = fetchStats(statsClient, b.StatsURL); lastErr == nil {
				statsOK = true
				b.baseline = raw
			}
		}
		if udpOK && dohOK && statsOK && b.logHas("all zones loaded") {
			// A conflict on one of the listeners is logged before "running";
			// check once more now that named answered.
			if line := b.logConflict(); line != "" {
				return fmt.Errorf("%w: %s", errPortConflict, line)
			}
			return b.checkZonesLoaded()
		}
		if errors.Is(lastErr, errPortConflict) {
			return lastErr
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("named not ready within %v (udp=%v doh=%v stats=%v): %v%s",
				readyTimeout, udpOK, dohOK, statsOK, lastErr, appArmorHint(b.logFile))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// probeMsg is the readiness query: BIND answers "id.server CH TXT" with the
// configured server-id, which identifies this very named.
func probeMsg() *dns.Msg {
	m := new(dns.Msg)
	m.SetQuestion("id.server.", dns.TypeTXT)
	m.Question[0].Qclass = dns.ClassCHAOS
	m.RecursionDesired = false
	return m
}

func (b *BIND) checkProbeAnswer(r *dns.Msg, via string) (bool, error) {
	if r.Rcode != dns.RcodeSuccess {
		return false, fmt.Errorf("%s probe: rcode %s", via, dns.RcodeToString[r.Rcode])
	}
	for _, rr := range r.Answer {
		if txt, ok := rr.(*dns.TXT); ok && len(txt.Txt) == 1 {
			if txt.Txt[0] == b.serverID {
				return true, nil
			}
			return false, fmt.Errorf("%w: %s probe answered by another server (server-id %q)", errPortConflict, via, txt.Txt[0])
		}
	}
	return false, fmt.Errorf("%s probe: no server-id in answer", via)
}

func (b *BIND) probeUDP() (bool, error) {
	c := &dns.Client{Net: "udp", Timeout: 300 * time.Millisecond}
	r, _, err := c.Exchange(probeMsg(), b.Do53Addr)
	if err != nil {
		return false, fmt.Errorf("udp probe: %w", err)
	}
	return b.checkProbeAnswer(r, "udp")
}

func (b *BIND) probeDoH(client *http.Client) (bool, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	r, err := DoHExchange(ctx, client, b.DoHURL, probeMsg())
	if err != nil {
		return false, fmt.Errorf("doh probe: %w", err)
	}
	return b.checkProbeAnswer(r, "doh")
}

// DoHExchange sends m as an RFC 8484 POST (application/dns-message) to url
// and returns the parsed response. The message ID is sent as 0, as RFC 8484
// recommends, and restored in the response.
func DoHExchange(ctx context.Context, client *http.Client, url string, m *dns.Msg) (*dns.Msg, error) {
	q := m.Copy()
	q.Id = 0
	wire, err := q.Pack()
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(wire))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/dns-message")
	req.Header.Set("Accept", "application/dns-message")
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 65536))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("HTTP %s (%s): %q", resp.Status, resp.Proto, body)
	}
	r := new(dns.Msg)
	if err := r.Unpack(body); err != nil {
		return nil, fmt.Errorf("unpacking DoH response: %w", err)
	}
	r.Id = m.Id
	return r, nil
}

func appArmorHint(logFile string) string {
	data, _ := os.ReadFile(logFile)
	if !bytes.Contains(bytes.ToLower(data), []byte("permission denied")) {
		return ""
	}
	if en, _ := os.ReadFile("/sys/module/apparmor/parameters/enabled"); strings.HasPrefix(string(en), "Y") {
		return " (AppArmor is enabled: the usr.sbin.named profile may forbid named to read the test directory; " +
			"put the profile in complain mode, e.g. aa-complain /usr/sbin/named)"
	}
	return ""
}

func tailFile(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(%v)", err)
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	// Drop the version banner (build flags, library versions); it only
	// hides the useful lines.
	kept := lines[:0]
	for _, l := range lines {
		if !strings.Contains(l, "built with") && !strings.Contains(l, "compiled with") && !strings.Contains(l, "linked to") {
			kept = append(kept, l)
		}
	}
	if len(kept) > n {
		kept = kept[len(kept)-n:]
	}
	return strings.Join(kept, "\n")
}

// cookieSecret is the cookie-secret statement for secret ("" for none).
func cookieSecret(secret string) string {
	if secret == "" {
		return ""
	}
	return fmt.Sprintf("\n\tcookie-secret %q;", secret)
}
