package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"xdoh/forwarder/upstream/upstreamtest"
)

// TestCtl runs every `xdoh ctl` command against a running xdoh whose one
// rule has two BIND targets (round robin, no hedging), each with its query
// log, which counts what reached it.
func TestCtl(t *testing.T) {
	zone := "$TTL 300\n@ IN SOA ns hostmaster 1 3600 600 86400 300\n@ IN NS ns\nns IN A 127.0.0.1\n" +
		"www IN A 192.0.2.1\nwww IN AAAA 2001:db8::1\nx.sub IN A 192.0.2.2\n"
	opts := upstreamtest.BINDOptions{QueryLog: true, Zones: map[string]string{"example.com.": zone}}
	bindA, bindB := upstreamtest.StartBIND(t, opts), upstreamtest.StartBIND(t, opts)
	dir := t.TempDir()
	addr, maddr := freeAddr(t), freeAddr(t)
	dead := closedUDPPort(t) // ICMP port unreachable: its queries fail at once
	sock := filepath.Join(dir, "x.sock")
	cfgPath := filepath.Join(dir, "x.yaml")
	writeCfg := func(pair string) {
		t.Helper()
		cfg := fmt.Sprintf(`listeners: [{name: in, do53: [%q]}]
rules:
  - {name: pair, domain: example.com, type: forward, targets: [%s], policy: round_robin, hedge: "off"}
  - {name: dead, domain: dead.example, type: forward, targets: [%q]}
metrics: {address: %q}
control: {socket: %s, mode: "0660", group: "%d"}
`, addr, pair, dead, maddr, sock, os.Getgid())
		if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	bothTargets := fmt.Sprintf("%q, %q", bindA.Do53Addr, bindB.Do53Addr)
	writeCfg(bothTargets)
	stderr := startXdoh(t, addr, "-c", cfgPath)

	ctl := func(args ...string) (string, error) {
		t.Helper()
		cmd := exec.Command(xdohBin, append([]string{"ctl", "-s", sock}, args...)...)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			return string(out), fmt.Errorf("%w: %s", err, stderr.String())
		}
		return string(out), nil
	}
	mustCtl := func(args ...string) string {
		t.Helper()
		out, err := ctl(args...)
		if err != nil {
			t.Fatalf("xdoh ctl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}
	ask := func(name string, qtype uint16) *dns.Msg {
		t.Helper()
		r, _, err := (&dns.Client{Timeout: 3 * time.Second}).Exchange(new(dns.Msg).SetQuestion(name, qtype), addr)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		return r
	}
	// upstream counts the queries for name and type that reached each BIND.
	upstream := func(name, qtype string) (a, b int) {
		t.Helper()
		name = strings.TrimSuffix(name, ".")
		for i, bind := range []*upstreamtest.BIND{bindA, bindB} {
			for _, e := range bind.QueryLog(t) {
				if strings.EqualFold(e.Name, name) && e.Type == qtype {
					if i == 0 {
						a++
					} else {
						b++
					}
				}
			}
		}
		return a, b
	}
	total := func(name, qtype string) int { a, b := upstream(name, qtype); return a + b }

	t.Run("socket", func(t *testing.T) {
		fi, err := os.Stat(sock)
		if err != nil {
			t.Fatal(err)
		}
		if m := fi.Mode().Perm(); m != 0o660 {
			t.Errorf("socket mode %o, want 660 (control.mode)", m)
		}
		if gid := fi.Sys().(*syscall.Stat_t).Gid; int(gid) != os.Getgid() {
			t.Errorf("socket group %d, want %d (control.group)", gid, os.Getgid())
		}
	})

	t.Run("cache flush", func(t *testing.T) {
		const www = "www.example.com."
		for range 3 {
			ask(www, dns.TypeA)
			ask(www, dns.TypeAAAA)
			ask("x.sub.example.com.", dns.TypeA)
		}
		if total(www, "A") != 1 || total(www, "AAAA") != 1 || total("x.sub.example.com", "A") != 1 {
			t.Fatalf("before any flush each question reached BIND once: A %d, AAAA %d, x.sub %d",
				total(www, "A"), total(www, "AAAA"), total("x.sub.example.com", "A"))
		}
		// NAME TYPE: only that type of that name.
		if out := mustCtl("cache", "flush", "www.example.com", "A"); out != "flushed 1 entries\n" {
			t.Errorf("flush www A: %q", out)
		}
		ask(www, dns.TypeA)
		ask(www, dns.TypeAAAA)
		if a, aaaa := total(www, "A"), total(www, "AAAA"); a != 2 || aaaa != 1 {
			t.Errorf("after flushing www A: upstream A %d (want 2), AAAA %d (want 1, still cached)", a, aaaa)
		}
		// NAME: the name and every name below it, every type.
		if out := mustCtl("cache", "flush", "sub.example.com"); out != "flushed 1 entries\n" {
			t.Errorf("flush sub.example.com: %q", out)
		}
		ask("x.sub.example.com.", dns.TypeA)
		ask(www, dns.TypeAAAA)
		if n, aaaa := total("x.sub.example.com", "A"), total(www, "AAAA"); n != 2 || aaaa != 1 {
			t.Errorf("after flushing sub.example.com: x.sub upstream %d (want 2), www AAAA %d (want 1)", n, aaaa)
		}
		// No argument: everything.
		if out := mustCtl("cache", "flush"); out != "flushed 3 entries\n" {
			t.Errorf("flush all: %q", out)
		}
		ask(www, dns.TypeAAAA)
		if aaaa := total(www, "AAAA"); aaaa != 2 {
			t.Errorf("after flushing everything: www AAAA upstream %d, want 2", aaaa)
		}
		for _, bad := range [][]string{{"cache", "flush", "www.example.com", "NOSUCHTYPE"}, {"cache", "flush", "a..b"}} {
			if out, err := ctl(bad...); err == nil || !strings.Contains(err.Error(), "exit status 1") {
				t.Errorf("ctl %v: %v %q, want an error", bad, err, out)
			}
		}
	})

	t.Run("cache dump", func(t *testing.T) {
		ask("www.example.com.", dns.TypeA)
		ask("x.sub.example.com.", dns.TypeA)
		out := mustCtl("cache", "dump")
		line := regexp.MustCompile(`(?m)^www\.example\.com\. A IN (\d+) NOERROR rd$`).FindStringSubmatch(out)
		if line == nil {
			t.Fatalf("dump has no line for www.example.com A:\n%s", out)
		}
		if ttl, _ := strconv.Atoi(line[1]); ttl < 290 || ttl > 300 {
			t.Errorf("www.example.com A has %d s left, want 290..300", ttl)
		}
		if !strings.Contains(out, "x.sub.example.com. A IN ") || !strings.Contains(out, "www.example.com. AAAA IN ") {
			t.Errorf("dump misses entries:\n%s", out)
		}
		sub := mustCtl("cache", "dump", "sub.example.com")
		if strings.Count(sub, "\n") != 1 || !strings.HasPrefix(sub, "x.sub.example.com. A IN ") {
			t.Errorf("dump of sub.example.com:\n%s", sub)
		}
	})

	t.Run("stats", func(t *testing.T) {
		ask("www.example.com.", dns.TypeA) // a hit
		out := mustCtl("stats")
		t.Logf("xdoh ctl stats:\n%s", out)
		field := func(re string) int {
			t.Helper()
			m := regexp.MustCompile(re).FindStringSubmatch(out)
			if m == nil {
				t.Fatalf("stats has no %s:\n%s", re, out)
			}
			n, _ := strconv.Atoi(m[1])
			return n
		}
		// The same counters as the metrics (no query between the two reads).
		if q, m := field(`(?m)^queries\s+(\d+)`), metricValue(t, maddr, "xdoh_forwarder_queries_total"); float64(q) != m || q < 10 {
			t.Errorf("stats queries %d, metrics %v", q, m)
		}
		if h, m := field(`hits (\d+)`), metricValue(t, maddr, "xdoh_cache_hits_total"); float64(h) != m || h < 5 {
			t.Errorf("stats cache hits %d, metrics %v", h, m)
		}
		if f := field(`flushed (\d+)`); f != 5 {
			t.Errorf("stats flushed %d, want 5", f)
		}
		if n, m := field(`(?m)^answers UDP\s+.*NOERROR (\d+)`), metricValue(t, maddr, `xdoh_responses_total{listener="in",rcode="NOERROR",transport="UDP"}`); float64(n) != m {
			t.Errorf("stats UDP NOERROR %d, metrics %v", n, m)
		}
		for _, want := range []string{`(?m)^uptime\s+\d+s$`, `hit ratio \d+\.\d%`, `\d+ in flight`, `(?m)^rrl\s+dropped 0, slipped 0`, `overload 0`} {
			if !regexp.MustCompile(want).MatchString(out) {
				t.Errorf("stats has no %s:\n%s", want, out)
			}
		}
	})

	// targets parses `ctl upstreams` into target → its fields.
	targets := func() map[string][]string {
		t.Helper()
		out := mustCtl("upstreams")
		t.Logf("xdoh ctl upstreams:\n%s", out)
		m := map[string][]string{}
		sc := bufio.NewScanner(strings.NewReader(out))
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) != 8 || f[0] == "TARGET" {
				continue
			}
			m[f[0]] = f
		}
		if len(m) != 3 {
			t.Fatalf("upstreams lists %d targets, want 3:\n%s", len(m), out)
		}
		return m
	}
	t.Run("upstreams", func(t *testing.T) {
		for _, tg := range []string{bindA.Do53Addr, bindB.Do53Addr} {
			f := targets()[tg]
			if f == nil || f[1] != "pair" || f[2] != "up" || f[3] != "0" || f[4] == "-" || f[6] == "0" || f[7] != "-" {
				t.Errorf("%s: %v; want rule pair, up, none in flight, an RTT, queries, no errors", tg, f)
			}
		}
		// A target that refuses: its errors by reason, as the metric counts them.
		for range 4 {
			if r := ask("x.dead.example.", dns.TypeA); r.Rcode != dns.RcodeServerFailure {
				t.Fatalf("x.dead.example: %s, want SERVFAIL", dns.RcodeToString[r.Rcode])
			}
		}
		series := fmt.Sprintf(`xdoh_upstream_errors_total{reason="other",target=%q}`, dead)
		m1 := metricValue(t, maddr, series)
		f := targets()[dead]
		m2 := metricValue(t, maddr, series) // a probe may come between the reads
		n, err := strconv.Atoi(strings.TrimPrefix(f[7], "other="))
		if f[1] != "dead" || f[2] != "down" || err != nil || n < 4 || float64(n) < m1 || float64(n) > m2 {
			t.Errorf("%s: %v, metric %v then %v; want rule dead, down, other=N with N at least 4, as the metric says", dead, f, m1, m2)
		}
	})

	n := 0
	spread := func(k int) (a, b int) { // k new names: each reaches one BIND
		t.Helper()
		for range k {
			n++
			name := fmt.Sprintf("n%d.example.com.", n)
			if r := ask(name, dns.TypeA); r.Rcode != dns.RcodeNameError {
				t.Fatalf("%s: %s, want NXDOMAIN", name, dns.RcodeToString[r.Rcode])
			}
			ua, ub := upstream(name, "A")
			a, b = a+ua, b+ub
		}
		return a, b
	}
	t.Run("drain", func(t *testing.T) {
		if a, b := spread(6); a != 3 || b != 3 {
			t.Fatalf("round robin before draining: A %d, B %d; want 3 and 3", a, b)
		}
		if out := mustCtl("upstream", "drain", bindA.Do53Addr); out != "drained "+bindA.Do53Addr+" in 1 rules\n" {
			t.Errorf("drain: %q", out)
		}
		if a, b := spread(6); a != 0 || b != 6 {
			t.Errorf("A drained: A got %d, B %d; want 0 and 6", a, b)
		}
		if f := targets()[bindA.Do53Addr]; f[2] != "drained" {
			t.Errorf("A drained: upstreams says %v", f)
		}
		// Every target drained: SERVFAIL, and the operator was warned.
		out := mustCtl("upstream", "drain", bindB.Do53Addr)
		if !strings.Contains(out, "warning: every target of rule pair is drained") {
			t.Errorf("draining the last target: %q, want a warning", out)
		}
		if r := ask("alldrained.example.com.", dns.TypeA); r.Rcode != dns.RcodeServerFailure || total("alldrained.example.com", "A") != 0 {
			t.Errorf("every target drained: %s, upstream %d; want SERVFAIL, none", dns.RcodeToString[r.Rcode], total("alldrained.example.com", "A"))
		}
		mustCtl("upstream", "undrain", bindB.Do53Addr)
		// The drain survives a reload (through both spellings).
		if out := mustCtl("reload"); out != "reloaded\n" {
			t.Errorf("ctl reload: %q", out)
		}
		if out, err := exec.Command(xdohBin, "reload", "-s", sock).CombinedOutput(); err != nil || string(out) != "reloaded\n" {
			t.Errorf("xdoh reload: %v %q", err, out)
		}
		if f := targets()[bindA.Do53Addr]; f[2] != "drained" {
			t.Errorf("after a reload A is %v, want still drained", f)
		}
		if a, b := spread(4); a != 0 || b != 4 {
			t.Errorf("A drained, after a reload: A got %d, B %d; want 0 and 4", a, b)
		}
		if out := mustCtl("upstream", "undrain", bindA.Do53Addr); out != "undrained "+bindA.Do53Addr+" in 1 rules\n" {
			t.Errorf("undrain: %q", out)
		}
		if a, b := spread(6); a != 3 || b != 3 {
			t.Errorf("undrained: A %d, B %d; want 3 and 3", a, b)
		}
		if f := targets()[bindA.Do53Addr]; f[2] != "up" {
			t.Errorf("undrained: A is %v", f)
		}
		// The socket is made at start: a reload does not change it.
		text, err := os.ReadFile(cfgPath)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(cfgPath, []byte(strings.Replace(string(text), `mode: "0660"`, `mode: "0600"`, 1)), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := ctl("reload"); err == nil || !strings.Contains(err.Error(), "control: changing it needs a restart") {
			t.Errorf("reload with a new control.mode: %v, want it refused", err)
		}
		writeCfg(bothTargets)
		if _, err := ctl("upstream", "drain", "127.0.0.1:1"); err == nil || !strings.Contains(err.Error(), "no target") {
			t.Errorf("draining an unknown target: %v", err)
		}
		// A drained target that a reload removes is forgotten: put back
		// in the config, it takes queries.
		mustCtl("upstream", "drain", bindA.Do53Addr)
		writeCfg(fmt.Sprintf("%q", bindB.Do53Addr))
		mustCtl("reload")
		writeCfg(bothTargets)
		mustCtl("reload")
		if f := targets()[bindA.Do53Addr]; f[2] != "up" {
			t.Errorf("removed while drained, then added back: A is %v, want up", f)
		}
		if a, b := spread(6); a != 3 || b != 3 {
			t.Errorf("removed while drained, then added back: A %d, B %d; want 3 and 3", a, b)
		}
		if !strings.Contains(stderr.String(), "drained target no longer in the config") {
			t.Errorf("no log line for the forgotten drain:\n%s", stderr.String())
		}
	})

	t.Run("bounds", func(t *testing.T) {
		if _, err := ctl("frobnicate"); err == nil || !strings.Contains(err.Error(), "unknown command") {
			t.Errorf("unknown command: %v", err)
		}
		// -c FILE finds the socket through the config's control.socket.
		if out, err := exec.Command(xdohBin, "ctl", "-c", cfgPath, "upstreams").Output(); err != nil || !strings.HasPrefix(string(out), "TARGET") {
			t.Errorf("xdoh ctl -c: %v %q", err, out)
		}
		raw := func(req string) string {
			t.Helper()
			c, err := net.Dial("unix", sock)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			fmt.Fprint(c, req)
			b, _ := bufio.NewReader(c).ReadString('\n')
			return b
		}
		if got := raw(strings.Repeat("x", 600) + "\n"); !strings.HasPrefix(got, "error: request longer than") {
			t.Errorf("a long request: %q", got)
		}
		// Connections past maxConns are turned away; the held ones still work.
		// The server frees an earlier connection's slot only after its
		// client has read the answer, so one of the held ones may find
		// the last slot still taken and the next one served: then all
		// are closed and tried again (a few times at most).
		var held []net.Conn
		for try := 1; ; try++ {
			for range maxConns {
				c, err := net.Dial("unix", sock)
				if err != nil {
					t.Fatal(err)
				}
				held = append(held, c)
			}
			got := raw("stats\n")
			if strings.Contains(got, "control connections are open already") {
				break
			}
			if try == 5 {
				t.Fatalf("connection %d: %q, want it turned away (%d tries)", maxConns+1, got, try)
			}
			for _, c := range held {
				c.Close()
			}
			held = held[:0]
			time.Sleep(100 * time.Millisecond)
		}
		fmt.Fprint(held[0], "upstreams\n")
		if l, _ := bufio.NewReader(held[0]).ReadString('\n'); !strings.HasPrefix(l, "TARGET") {
			t.Errorf("a held connection: %q", l)
		}
		for _, c := range held {
			c.Close()
		}
		for deadline := time.Now().Add(3 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			got := raw("stats\n")
			if strings.HasPrefix(got, "uptime") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("after the held connections closed: %q", got)
			}
		}
	})
}
