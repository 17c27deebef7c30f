package main

import (
	"bufio"
	"fmt"
	"math"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// metricValue reads one series (name and labels as exposed) from xdoh's
// /metrics at maddr.
func metricValue(t *testing.T, maddr, series string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + maddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("%s: %v", series, err)
			}
			return f
		}
	}
	t.Fatalf("/metrics has no %s", series)
	return 0
}

// floodResult is what a UDP client saw of its queries.
type floodResult struct {
	answered, slipped, other, lost int
	elapsed                        time.Duration // first query sent to last sent
}

// udpFlood sends n queries for name from local to server over UDP, in
// bursts of 25, reading the replies as they come, and waits for a second
// of quiet after the last: each query is answered, slipped (empty, TC)
// or lost (dropped).
func udpFlood(t *testing.T, server, local, name string, n int) floodResult {
	t.Helper()
	c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(mustAddrPort(t, local)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	srv, err := net.ResolveUDPAddr("udp", server)
	if err != nil {
		t.Fatal(err)
	}
	seen := make([]string, n)
	got := make(chan struct{})
	go func() {
		defer close(got)
		buf := make([]byte, 4096)
		for {
			c.SetReadDeadline(time.Now().Add(time.Second))
			k, err := c.Read(buf)
			if err != nil {
				return // a second of quiet (or closed)
			}
			m := new(dns.Msg)
			if m.Unpack(buf[:k]) != nil || int(m.Id) >= n || seen[m.Id] != "" {
				continue
			}
			switch {
			case m.Truncated && len(m.Answer) == 0:
				seen[m.Id] = "slipped"
			case m.Rcode == dns.RcodeSuccess && len(m.Answer) > 0:
				seen[m.Id] = "answered"
			default:
				seen[m.Id] = "other"
			}
		}
	}()
	start := time.Now()
	var last time.Time
	for i := range n {
		q := new(dns.Msg).SetQuestion(name, dns.TypeA)
		q.Id = uint16(i)
		b, _ := q.Pack()
		if _, err := c.WriteToUDP(b, srv); err != nil {
			t.Fatal(err)
		}
		last = time.Now()
		if i%25 == 24 {
			time.Sleep(2 * time.Millisecond) // no loss in the server's socket buffer
		}
	}
	<-got
	r := floodResult{elapsed: last.Sub(start)}
	for _, s := range seen {
		switch s {
		case "answered":
			r.answered++
		case "slipped":
			r.slipped++
		case "other":
			r.other++
		default:
			r.lost++
		}
	}
	return r
}

func mustAddrPort(t *testing.T, s string) netip.AddrPort {
	t.Helper()
	a, err := net.ResolveUDPAddr("udp", s)
	if err != nil {
		t.Fatal(err)
	}
	return a.AddrPort()
}

// TestRRLEndToEnd runs the xdoh binary with rrl on (0.5 answers a second,
// a burst of 10, slip 2) and sends from real clients on loopback:
//   - a UDP client over its limit gets its burst, and past it about half
//     of its queries slipped (empty, TC) and half dropped, counted in the
//     metrics;
//   - TCP from the same prefix is not limited;
//   - dig and kdig with a server cookie of xdoh's (fetched over TCP, then
//     sent back with +cookie=) are not limited over UDP, while dig without
//     one is.
//
// Each client has its own /24 of 127/8, hence its own buckets.
func TestRRLEndToEnd(t *testing.T) {
	dir := t.TempDir()
	zoneFile, err := filepath.Abs(filepath.Join("demo", "aws.example.internal.zone"))
	if err != nil {
		t.Fatal(err)
	}
	addr, maddr := freeAddr(t), freeAddr(t)
	cfg := filepath.Join(dir, "xdoh.yaml")
	text := fmt.Sprintf(`listeners:
  - {name: edge, do53: [%q]}
zones: [{name: aws.example.internal, file: %s}]
cookies: {secret: 00112233445566778899aabbccddeeff}
rrl: {enabled: true, responses_per_second: 0.5, burst: 10, slip: 2}
metrics: {address: %q}
`, addr, zoneFile, maddr)
	if err := os.WriteFile(cfg, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	startXdoh(t, addr, "-c", cfg)
	const name = "ipv4.aws.example.internal."
	const rate, burst = 0.5, 10
	maxAnswered := func(d time.Duration) int { return burst + int(math.Ceil(rate*d.Seconds())) + 1 }
	series := func(kind, cat string) string { return fmt.Sprintf(`xdoh_rrl_%s_total{category=%q}`, kind, cat) }

	// A UDP client over its limit.
	const n = 400
	r := udpFlood(t, addr, "127.0.1.1:0", name, n)
	t.Logf("UDP flood of %d in %v: %d answered, %d slipped, %d dropped, %d other", n, r.elapsed, r.answered, r.slipped, r.lost, r.other)
	if r.answered < burst || r.answered > maxAnswered(r.elapsed) || r.other != 0 {
		t.Errorf("%d answered (%d other), want %d..%d", r.answered, r.other, burst, maxAnswered(r.elapsed))
	}
	over := n - r.answered
	if r.slipped < over/2-n/20 || r.slipped > over/2+1 {
		t.Errorf("%d slipped of %d over the limit, want about half (slip 2)", r.slipped, over)
	}
	dropped, slipped := metricValue(t, maddr, series("dropped", "responses")), metricValue(t, maddr, series("slipped", "responses"))
	if int(dropped+slipped) != over || int(slipped) < r.slipped || math.Abs(dropped-slipped) > 1 {
		t.Errorf("metrics: %v dropped, %v slipped; the client saw %d over the limit, %d slipped", dropped, slipped, over, r.slipped)
	}

	// TCP from the same prefix, still over its UDP limit: every query answered.
	tcp := &dns.Client{Net: "tcp", Timeout: 5 * time.Second, Dialer: &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 1, 1)}, Timeout: 5 * time.Second}}
	for i := range 30 {
		m, _, err := tcp.Exchange(new(dns.Msg).SetQuestion(name, dns.TypeA), addr)
		if err != nil || m.Rcode != dns.RcodeSuccess || len(m.Answer) != 1 || m.Truncated {
			t.Fatalf("TCP query %d: %v %v", i, m, err)
		}
	}
	if d, s := metricValue(t, maddr, series("dropped", "responses")), metricValue(t, maddr, series("slipped", "responses")); d != dropped || s != slipped {
		t.Errorf("TCP queries were limited: dropped %v→%v, slipped %v→%v", dropped, d, slipped, s)
	}

	// Real clients and cookies, from 127.0.2.1: use up the burst first.
	const src = "127.0.2.1"
	if r := udpFlood(t, addr, src+":0", name, 40); r.answered < burst || r.answered > maxAnswered(r.elapsed) {
		t.Fatalf("second flood: %d answered", r.answered)
	}
	host, port := hostPort(t, addr)
	run := func(tool string, args ...string) (string, error) {
		args = append([]string{"-b", src, "@" + host, "-p", port}, args...)
		out, err := exec.Command(tool, append(args, name, "A")...).CombinedOutput()
		return string(out), err
	}
	full := func(out string) bool {
		return strings.Contains(out, "status: NOERROR") && strings.Contains(out, "10.2.1.10") && !regexp.MustCompile(`flags:[^;]* tc`).MatchString(out)
	}
	if _, err := exec.LookPath("dig"); err != nil {
		t.Skip("dig not installed; .ci/run installs it")
	}
	// Without a server cookie dig is limited: of 6 queries at most what
	// the rate gives back in their time is answered in full.
	start, answered := time.Now(), 0
	for range 6 {
		if out, _ := run("dig", "+notcp", "+ignore", "+tries=1", "+timeout=1", "+nocookie"); full(out) {
			answered++
		}
	}
	if limit := maxAnswered(time.Since(start)) - burst; answered > limit {
		t.Fatalf("dig without a cookie: %d of 6 answered in full, want at most %d (over the limit)", answered, limit)
	}
	// Over TCP (never limited) dig gets xdoh's server cookie.
	out, err := run("dig", "+tcp", "+cookie")
	cm := regexp.MustCompile(`; COOKIE: ([0-9a-f]{48}) \(good\)`).FindStringSubmatch(out)
	if err != nil || cm == nil {
		t.Fatalf("dig +tcp +cookie: no good server cookie (%v)\n%s", err, out)
	}
	cookie := cm[1]
	dropped, slipped = metricValue(t, maddr, series("dropped", "responses")), metricValue(t, maddr, series("slipped", "responses"))
	exempt := metricValue(t, maddr, "xdoh_rrl_cookie_exempt_total")
	clients := [][]string{{"dig", "+notcp", "+ignore", "+tries=1", "+timeout=2", "+cookie=" + cookie}}
	if _, err := exec.LookPath("kdig"); err == nil {
		clients = append(clients, []string{"kdig", "+notcp", "+ignore", "+retry=0", "+timeout=2", "+cookie=" + cookie})
	} else {
		t.Log("kdig not installed; .ci/run installs it")
	}
	sent := 0
	for _, c := range clients {
		for i := range 20 {
			out, err := run(c[0], c[1:]...)
			if err != nil || !full(out) {
				t.Fatalf("%s with a server cookie, query %d, over the limit: not answered in full (%v)\n%s", c[0], i, err, out)
			}
			sent++
		}
	}
	if d, s := metricValue(t, maddr, series("dropped", "responses")), metricValue(t, maddr, series("slipped", "responses")); d != dropped || s != slipped {
		t.Errorf("queries with a server cookie were limited: dropped %v→%v, slipped %v→%v", dropped, d, slipped, s)
	}
	if e := metricValue(t, maddr, "xdoh_rrl_cookie_exempt_total"); e-exempt != float64(sent) {
		t.Errorf("cookie-exempt counter grew by %v, want %d", e-exempt, sent)
	}
}

// TestRRLReload: SIGHUP turns rrl on and off; a reload that leaves the
// rrl section as it was keeps the buckets (a limited prefix gets no fresh
// burst), one that changes it starts a new table.
func TestRRLReload(t *testing.T) {
	dir := t.TempDir()
	zoneFile, err := filepath.Abs(filepath.Join("demo", "aws.example.internal.zone"))
	if err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	cfg := filepath.Join(dir, "xdoh.yaml")
	write := func(nsid, rrl string) {
		t.Helper()
		text := fmt.Sprintf("nsid: %s\nlisteners:\n  - {name: edge, do53: [%q]}\nzones: [{name: aws.example.internal, file: %s}]\n%s", nsid, addr, zoneFile, rrl)
		if err := os.WriteFile(cfg, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("a", "")
	stderr := startXdoh(t, addr, "-c", cfg)
	pid := xdohPID(t, stderr)
	reloads := 0
	hup := func() {
		t.Helper()
		reloads++
		if err := exec.Command("kill", "-HUP", pid).Run(); err != nil {
			t.Fatal(err)
		}
		for deadline := time.Now().Add(10 * time.Second); strings.Count(stderr.String(), `msg=reloaded`) < reloads; time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("reload %d not applied\n%s", reloads, stderr.String())
			}
		}
	}
	const name = "ipv4.aws.example.internal."
	const src = "127.0.5.1:0"
	refill := func(r floodResult) int { return int(math.Ceil(0.5*r.elapsed.Seconds())) + 1 }
	if r := udpFlood(t, addr, src, name, 40); r.answered != 40 {
		t.Fatalf("rrl off: %+v, want all 40 answered", r)
	}
	const on = "rrl: {enabled: true, responses_per_second: 0.5, burst: 10, slip: 0}\n"
	write("a", on)
	hup()
	start := time.Now()
	if r := udpFlood(t, addr, src, name, 40); r.answered < 10 || r.answered > 10+refill(r) || r.slipped != 0 {
		t.Fatalf("rrl on by reload: %+v, want 10 (+ refill) answered, none slipped (slip 0)", r)
	}
	write("b", on) // the rrl section as it was
	hup()
	if r, limit := udpFlood(t, addr, src, name, 40), int(math.Ceil(0.5*time.Since(start).Seconds()))+1; r.answered > limit {
		t.Fatalf("reload with the same rrl: %d answered, want at most %d: the buckets were lost", r.answered, limit)
	}
	write("b", "rrl: {enabled: true, responses_per_second: 0.5, burst: 20, slip: 0}\n")
	hup()
	if r := udpFlood(t, addr, src, name, 40); r.answered < 20 || r.answered > 20+refill(r) {
		t.Fatalf("reload with a new burst: %+v, want a fresh burst of 20", r)
	}
	write("b", "")
	hup()
	if r := udpFlood(t, addr, src, name, 40); r.answered != 40 {
		t.Fatalf("rrl off by reload: %+v, want all 40 answered", r)
	}
}
