package main

// Faults under load: the xdoh binary forwards to upstreams that misbehave
// (fault fakes from forwarder/upstream/upstreamtest, or a few written
// here) while `xdoh bench` (package bench) sends a steady open-loop load
// over UDP. Every client query must get an answer (SERVFAIL is one); after
// each fault the process's goroutines, file descriptors and RSS must come
// back to near their baseline.

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/net/http2"

	"xdoh/bench"
	"xdoh/datapath/tlsconf"
	"xdoh/forwarder/upstream/upstreamtest"
)

// Fault-suite settings. The per-attempt timeout is shorter than the query
// budget so that a pair rule has time to fail over to its healthy target.
const (
	faultQueryTimeout = time.Second
	faultTryTimeout   = 300 * time.Millisecond
	// faultClientSlack is what a client waits past query_timeout before
	// it calls a query lost: scheduling on a loaded 2-CPU box.
	faultClientSlack = time.Second
)

// faultLoad returns the seconds and the rate (QPS per rule) of each case:
// XDOH_FAULT_SECONDS and XDOH_FAULT_QPS, default 1 s at 1000 QPS to the
// fault alone and 1000 QPS to the fault paired with BIND, which keeps
// the suite under a minute.
func faultLoad(t *testing.T) (time.Duration, float64) {
	secs, qps := 1.0, 1000.0
	for _, v := range []struct {
		env string
		p   *float64
	}{{"XDOH_FAULT_SECONDS", &secs}, {"XDOH_FAULT_QPS", &qps}} {
		if s := os.Getenv(v.env); s != "" {
			f, err := strconv.ParseFloat(s, 64)
			if err != nil || f <= 0 {
				t.Fatalf("%s=%q: want a positive number", v.env, s)
			}
			*v.p = f
		}
	}
	return time.Duration(secs * float64(time.Second)), qps
}

// faultCase is one misbehaving upstream.
type faultCase struct {
	name string // also the DNS label of its rules
	// start starts the fault and returns its target (URL or address).
	start func(t *testing.T, e *faultEnv) string
	// minSeconds, if set, is the least the case runs (a flap needs a
	// few periods).
	minSeconds time.Duration
	// probe is the pair rule's health probe interval ("": default).
	probe string
	// answers: the target gives usable answers at least some of the
	// time. Otherwise every answer through the fault alone must be
	// SERVFAIL, and the pair must have answered from BIND (NXDOMAIN for
	// the random names).
	answers bool
}

// faultEnv is what the cases share.
type faultEnv struct {
	bind      *upstreamtest.BIND
	otherCA   *tlsconf.PKI // trusted by no rule
	wrongName *tlsconf.PKI // trusted, but its certificate names another host
}

// dohFault starts a FakeH2 whose every request gets answer.
func dohFault(answer func(fc *upstreamtest.FakeConn, conn int, id uint32, q *dns.Msg)) func(*testing.T, *faultEnv) string {
	return func(t *testing.T, _ *faultEnv) string {
		return upstreamtest.StartFakeH2(t, nil, answer).URL()
	}
}

// dohBody starts a FakeH2 answering every request with 200 and the DNS
// message mk makes of the query.
func dohBody(mk func(q *dns.Msg) []byte) func(*testing.T, *faultEnv) string {
	return dohFault(func(fc *upstreamtest.FakeConn, _ int, id uint32, q *dns.Msg) {
		fc.RespondWith(id, 200, upstreamtest.DNSMessage, mk(q))
	})
}

// udpFault starts a Do53Fault with a closed TCP port.
func udpFault(h upstreamtest.UDPHandler) func(*testing.T, *faultEnv) string {
	return func(t *testing.T, _ *faultEnv) string {
		return upstreamtest.StartDo53Fault(t, h, nil).Target(false)
	}
}

func udpReply(mk func(q *dns.Msg) []byte) upstreamtest.UDPHandler {
	return func(q *dns.Msg, reply func([]byte)) { reply(mk(q)) }
}

// Broken answers.
func wrongID(q *dns.Msg) []byte {
	m := upstreamtest.AnswerFor(q)
	m.Id = q.Id + 1
	return upstreamtest.MustPack(m)
}

func wrongQuestion(q *dns.Msg) []byte {
	o := q.Copy()
	o.Question[0].Name = "spoofed.example."
	m := upstreamtest.AnswerFor(o)
	return upstreamtest.MustPack(m)
}

func notResponse(q *dns.Msg) []byte {
	m := upstreamtest.AnswerFor(q)
	m.Response = false
	return upstreamtest.MustPack(m)
}

func truncatedEmpty(q *dns.Msg) []byte {
	m := new(dns.Msg)
	m.SetReply(q)
	m.Truncated = true
	return upstreamtest.MustPack(m)
}

// answer64K is a valid answer as close to 65535 octets as TXT records of
// 255-octet strings get it (their number computed, not searched for: the
// fake must keep up with the load).
func answer64K(q *dns.Msg) []byte {
	m := upstreamtest.AnswerFor(q)
	m.Compress = false
	name := q.Question[0].Name
	rr := &dns.TXT{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 60}, Txt: []string{strings.Repeat("x", 255)}}
	rrLen := len(name) + 1 + 10 + 256 // owner, type..rdlength, one string
	for range (65535 - m.Len()) / rrLen {
		m.Answer = append(m.Answer, rr)
	}
	return upstreamtest.MustPack(m)
}

// do5364K starts a Do53 server that truncates every UDP answer and
// answers over TCP with a 64 KiB message.
func do5364K(t *testing.T, _ *faultEnv) string {
	addr := freeAddr(t)
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	h := dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		if _, udp := w.RemoteAddr().(*net.UDPAddr); udp {
			w.Write(truncatedEmpty(q))
			return
		}
		w.Write(answer64K(q))
	})
	for _, s := range []*dns.Server{{PacketConn: pc, Handler: h}, {Listener: ln, Handler: h}} {
		go s.ActivateAndServe()
		t.Cleanup(func() { s.Shutdown() })
	}
	return addr
}

// flapper is a TCP proxy in front of a healthy server that is up for a
// period, then down (listener closed, every connection reset) for a
// period, and so on.
type flapper struct {
	addr, backend string
	period        time.Duration
	mu            sync.Mutex
	conns         map[net.Conn]bool
	flips         atomic.Int32
}

func startFlapper(t *testing.T, backend string, period time.Duration) *flapper {
	f := &flapper{addr: freeAddr(t), backend: backend, period: period, conns: map[net.Conn]bool{}}
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			ln, err := net.Listen("tcp", f.addr)
			if err == nil {
				go f.accept(ln)
			}
			select {
			case <-stop:
				if ln != nil {
					ln.Close()
				}
				f.dropAll()
				return
			case <-time.After(f.period):
			}
			if ln != nil {
				ln.Close()
			}
			f.dropAll()
			f.flips.Add(1)
			select {
			case <-stop:
				return
			case <-time.After(f.period):
			}
			f.flips.Add(1)
		}
	}()
	t.Cleanup(func() { close(stop); <-done })
	return f
}

func (f *flapper) accept(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		b, err := net.Dial("tcp", f.backend)
		if err != nil {
			c.Close()
			continue
		}
		f.mu.Lock()
		f.conns[c], f.conns[b] = true, true
		f.mu.Unlock()
		pipe := func(dst, src net.Conn) {
			buf := make([]byte, 32<<10)
			for {
				n, err := src.Read(buf)
				if n > 0 {
					if _, werr := dst.Write(buf[:n]); werr != nil {
						break
					}
				}
				if err != nil {
					break
				}
			}
			dst.Close()
			src.Close()
		}
		go pipe(b, c)
		go pipe(c, b)
	}
}

// dropAll resets every proxied connection.
func (f *flapper) dropAll() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for c := range f.conns {
		if tc, ok := c.(*net.TCPConn); ok {
			tc.SetLinger(0)
		}
		c.Close()
	}
	clear(f.conns)
}

// faultCases are the faults, DoH first, then Do53.
func faultCases() []faultCase {
	return []faultCase{
		{name: "doh-healthy", answers: true, start: func(t *testing.T, e *faultEnv) string { return e.bind.DoHURL }},
		{name: "doh-refused", start: func(t *testing.T, _ *faultEnv) string {
			return "https://" + upstreamtest.ClosedPort(t) + "/dns-query"
		}},
		{name: "doh-blackhole", start: func(t *testing.T, _ *faultEnv) string { return upstreamtest.StartTCPSink(t, false).URL() }},
		{name: "doh-reset-at-accept", start: func(t *testing.T, _ *faultEnv) string { return upstreamtest.StartTCPSink(t, true).URL() }},
		{name: "doh-untrusted-ca", start: func(t *testing.T, e *faultEnv) string {
			return upstreamtest.StartFakeH2Cert(t, e.otherCA.Cert, nil, func(fc *upstreamtest.FakeConn, _ int, id uint32, q *dns.Msg) { fc.Respond(id, q) }).URL()
		}},
		{name: "doh-wrong-name", start: func(t *testing.T, e *faultEnv) string {
			return upstreamtest.StartFakeH2Cert(t, e.wrongName.Cert, nil, func(fc *upstreamtest.FakeConn, _ int, id uint32, q *dns.Msg) { fc.Respond(id, q) }).URL()
		}},
		{name: "doh-slow", start: dohFault(func(fc *upstreamtest.FakeConn, _ int, id uint32, q *dns.Msg) {
			time.AfterFunc(faultTryTimeout+200*time.Millisecond, func() { fc.Respond(id, q) })
		})},
		{name: "doh-silent-conn", start: func(t *testing.T, _ *faultEnv) string {
			f := upstreamtest.StartFakeH2(t, nil, func(*upstreamtest.FakeConn, int, uint32, *dns.Msg) {})
			f.SetAckPing(func(int, int) bool { return false })
			return f.URL()
		}},
		{name: "doh-goaway-every-20", answers: true, start: dohFault(func(fc *upstreamtest.FakeConn, _ int, id uint32, q *dns.Msg) {
			if id%40 == 39 { // client streams are odd: every 20th
				fc.GoAway(id, http2.ErrCodeNo)
			}
			fc.Respond(id, q)
		})},
		{name: "doh-rst-stream", start: dohFault(func(fc *upstreamtest.FakeConn, _ int, id uint32, _ *dns.Msg) {
			fc.RST(id, http2.ErrCodeInternal)
		})},
		{name: "doh-conn-reset-every-50", answers: true, start: dohFault(func(fc *upstreamtest.FakeConn, _ int, id uint32, q *dns.Msg) {
			if id%100 == 99 {
				fc.ResetTCP()
				return
			}
			fc.Respond(id, q)
		})},
		{name: "doh-http-500", start: dohFault(func(fc *upstreamtest.FakeConn, _ int, id uint32, _ *dns.Msg) {
			fc.RespondWith(id, 500, "text/plain", []byte("boom"))
		})},
		{name: "doh-non-dns-body", start: dohFault(func(fc *upstreamtest.FakeConn, _ int, id uint32, _ *dns.Msg) {
			fc.RespondWith(id, 200, upstreamtest.DNSMessage, []byte("this is not a DNS message at all"))
		})},
		{name: "doh-wrong-id", answers: true, start: dohBody(wrongID)},
		{name: "doh-wrong-question", start: dohBody(wrongQuestion)},
		{name: "doh-qr-clear", start: dohBody(notResponse)},
		{name: "doh-truncated", answers: true, start: dohBody(truncatedEmpty)},
		{name: "doh-64k-answer", answers: true, start: dohBody(answer64K)},
		{name: "doh-flap-2s", answers: true, minSeconds: 6 * time.Second, probe: "500ms", start: func(t *testing.T, e *faultEnv) string {
			backend := strings.TrimSuffix(strings.TrimPrefix(e.bind.DoHURL, "https://"), "/dns-query")
			return "https://" + startFlapper(t, backend, 2*time.Second).addr + "/dns-query"
		}},

		{name: "do53-refused", start: func(t *testing.T, _ *faultEnv) string { return upstreamtest.ClosedUDPPort(t) }},
		{name: "do53-blackhole", start: udpFault(upstreamtest.UDPIgnore)},
		{name: "do53-slow", start: udpFault(func(q *dns.Msg, reply func([]byte)) {
			time.AfterFunc(faultTryTimeout+200*time.Millisecond, func() { reply(upstreamtest.MustPack(upstreamtest.AnswerFor(q))) })
		})},
		{name: "do53-wrong-id", start: udpFault(udpReply(wrongID))},
		{name: "do53-wrong-question", start: udpFault(udpReply(wrongQuestion))},
		{name: "do53-qr-clear", start: udpFault(udpReply(notResponse))},
		{name: "do53-tc-then-tcp-reset", start: func(t *testing.T, _ *faultEnv) string {
			return upstreamtest.StartDo53Fault(t, udpReply(truncatedEmpty), func(f *upstreamtest.Do53Fault, conn int, _ *dns.Msg) upstreamtest.TCPAction {
				return upstreamtest.TCPReset(f, conn)
			}).Target(false)
		}},
		{name: "do53-64k-over-tcp", answers: true, start: do5364K},
	}
}

// procSample is what the leak check watches.
type procSample struct {
	goroutines int
	fds        int
	rssKiB     int64
}

func (s procSample) String() string {
	return fmt.Sprintf("goroutines %d, fds %d, RSS %.1f MiB", s.goroutines, s.fds, float64(s.rssKiB)/1024)
}

func sampleProc(pid, metricsAddr string) (procSample, error) {
	var s procSample
	ents, err := os.ReadDir("/proc/" + pid + "/fd")
	if err != nil {
		return s, err
	}
	s.fds = len(ents)
	status, err := os.ReadFile("/proc/" + pid + "/status")
	if err != nil {
		return s, err
	}
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			s.rssKiB, _ = strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		}
	}
	text, err := httpText("http://" + metricsAddr + "/metrics")
	if err != nil {
		return s, err
	}
	if s.goroutines = int(metric(text, "go_goroutines ")); s.goroutines < 0 {
		return s, fmt.Errorf("no go_goroutines in xdoh's /metrics")
	}
	return s, nil
}

// httpText returns the body of a GET of url (xdoh's /metrics or pprof),
// without calling into testing: samplers run on goroutines of their own.
func httpText(url string) (string, error) {
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// Leak tolerance: after a fault, within leakWait, the process must be
// back to its baseline plus this much. Goroutines and descriptors get
// room for health probes of down targets and connections being redialled
// in the background (every fault target stays configured). RSS gets room
// for the heap's working set under the heaviest fault (64 KiB answers at
// the full rate: tens of MiB in flight), which the Go runtime returns to
// the OS only slowly; it is the coarse check, goroutines and descriptors
// the fine ones.
const (
	leakGoroutines = 40
	leakFDs        = 24
	leakRSSKiB     = 64 << 10
	leakWait       = 20 * time.Second
)

func (s procSample) within(base procSample) bool {
	return s.goroutines <= base.goroutines+leakGoroutines && s.fds <= base.fds+leakFDs && s.rssKiB <= base.rssKiB+leakRSSKiB
}

// faultRow is one line of the table.
type faultRow struct {
	name, rule string
	rep        *bench.Report
	lost       uint64
	after      procSample
}

// TestFaultsUnderLoad runs every fault of faultCases against the xdoh
// binary under load, each behind two rules: the fault alone, and the
// fault first with a real BIND 9.18 (DoH) second. It fails if any client
// query is lost (no answer within query_timeout plus slack) or if the
// process does not return to its baseline after a fault.
//
// XDOH_FAULT_SECONDS and XDOH_FAULT_QPS make the runs longer or heavier
// (bench/faults.sh); -run 'TestFaultsUnderLoad/NAME' picks cases.
func TestFaultsUnderLoad(t *testing.T) {
	dur, qps := faultLoad(t)
	e := &faultEnv{bind: upstreamtest.StartBIND(t, upstreamtest.BINDOptions{})}
	var err error
	if e.otherCA, err = tlsconf.NewPKI("127.0.0.1", "localhost"); err != nil {
		t.Fatal(err)
	}
	if e.wrongName, err = tlsconf.NewPKI("wrong.example"); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	bindCA, err := os.ReadFile(e.bind.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	bundle := filepath.Join(dir, "cas.pem")
	pem := append(append(append([]byte{}, upstreamtest.PKI(t).CAPEM...), bindCA...), e.wrongName.CAPEM...)
	if err := os.WriteFile(bundle, pem, 0o644); err != nil {
		t.Fatal(err)
	}

	cases := faultCases()
	addr, metricsAddr := freeAddr(t), freeAddr(t)
	var cfg strings.Builder
	fmt.Fprintf(&cfg, "listeners:\n  - name: in\n    protocols: [do53]\n    do53: [%q]\n", addr)
	cfg.WriteString("rules:\n")
	rule := func(name, domain, probe string, targets ...string) {
		fmt.Fprintf(&cfg, "  - {name: %s, domain: %s, type: forward, ca_file: %s, timeout: %v, targets: [", name, domain, bundle, faultTryTimeout)
		for i, tg := range targets {
			if i > 0 {
				cfg.WriteString(", ")
			}
			fmt.Fprintf(&cfg, "%q", tg)
		}
		cfg.WriteString("]")
		if probe != "" {
			fmt.Fprintf(&cfg, ", health: {probe_interval: %s}", probe)
		}
		cfg.WriteString("}\n")
	}
	rule("warm", "warm.example.com", "", e.bind.DoHURL)
	for _, c := range cases {
		target := c.start(t, e)
		rule(c.name+"-alone", c.name+".alone.example.com", c.probe, target)
		rule(c.name+"-pair", c.name+".pair.example.com", c.probe, target, e.bind.DoHURL)
	}
	fmt.Fprintf(&cfg, "cache: {entries: 2048}\n")
	fmt.Fprintf(&cfg, "upstream: {query_timeout: %v, timeout: %v, conns: 2}\n", faultQueryTimeout, faultTryTimeout)
	fmt.Fprintf(&cfg, "metrics: {address: %q}\n", metricsAddr)
	cfgPath := filepath.Join(dir, "xdoh.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(xdohBin, "run", "-c", cfgPath)
	stderr := startXdohCmd(t, addr, cmd)
	pid := strconv.Itoa(cmd.Process.Pid)

	load := func(domain string, d time.Duration) (*bench.Report, error) {
		src, err := bench.NewRandomSubSource(domain, dns.TypeA)
		if err != nil {
			return nil, err
		}
		return bench.Run(context.Background(), bench.Config{
			Target:  addr,
			Source:  src,
			Clients: 2,
			Rate:    qps,
			Limit:   d,
			Timeout: faultQueryTimeout + faultClientSlack,
		})
	}
	// The baseline is taken after a healthy warm-up at the same load, so
	// that buffers, pools and the heap have their working size.
	if rep, err := load("warm.example.com", max(dur, time.Second)); err != nil || rep.Answered != rep.Sent {
		t.Fatalf("warm-up against BIND: %v (%+v)\n%s", err, rep, stderr.String())
	}
	time.Sleep(500 * time.Millisecond)
	base, err := sampleProc(pid, metricsAddr)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("baseline after warm-up: %v", base)

	var rows []faultRow
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := max(dur, c.minSeconds)
			var wg sync.WaitGroup
			reps := make([]*bench.Report, 2)
			errs := make([]error, 2)
			for i, kind := range []string{"alone", "pair"} {
				wg.Go(func() { reps[i], errs[i] = load(c.name+"."+kind+".example.com", d) })
			}
			wg.Wait()
			var after procSample
			deadline := time.Now().Add(leakWait)
			for {
				after, err = sampleProc(pid, metricsAddr)
				if err != nil {
					t.Fatalf("sampling xdoh: %v", err)
				}
				if after.within(base) || time.Now().After(deadline) {
					break
				}
				time.Sleep(250 * time.Millisecond)
			}
			for i, kind := range []string{"alone", "pair"} {
				rep := reps[i]
				if rep == nil {
					t.Errorf("%s: %v", kind, errs[i])
					continue
				}
				lost := rep.Sent - rep.Answered
				rows = append(rows, faultRow{name: c.name, rule: kind, rep: rep, lost: lost, after: after})
				if lost > 0 || rep.Unsent > 0 {
					t.Errorf("%s: sent %d, answered %d: %d lost (%d timeouts, %d errors, %d unsent; first error %q)",
						kind, rep.Sent, rep.Answered, lost, rep.Timeouts, rep.Errors, rep.Unsent, rep.FirstError)
				}
			}
			if a, p := reps[0], reps[1]; !c.answers && a != nil && p != nil {
				if a.Rcodes["SERVFAIL"] != a.Answered {
					t.Errorf("alone: answers %v through a target that never answers usably: want only SERVFAIL", a.Rcodes)
				}
				if p.Rcodes["NXDOMAIN"] == 0 {
					t.Errorf("pair: answers %v, none from BIND (NXDOMAIN): no failover to the healthy target", p.Rcodes)
				}
			}
			if !after.within(base) {
				t.Errorf("not back to baseline within %v: %v, baseline %v (tolerance +%d goroutines, +%d fds, +%d MiB)",
					leakWait, after, base, leakGoroutines, leakFDs, leakRSSKiB>>10)
			}
		})
	}
	var tb strings.Builder
	fmt.Fprintf(&tb, "\nfaults under load: %v per case at %.0f QPS per rule, query_timeout %v, per-attempt timeout %v, client timeout %v\n",
		dur, qps, faultQueryTimeout, faultTryTimeout, faultQueryTimeout+faultClientSlack)
	fmt.Fprintf(&tb, "%-26s %-5s %7s %8s %8s %5s %8s %8s  %s\n", "case", "rule", "sent", "answered", "SERVFAIL", "lost", "p99 ms", "max ms", "after (baseline: "+base.String()+")")
	for _, r := range rows {
		fmt.Fprintf(&tb, "%-26s %-5s %7d %8d %8d %5d %8.1f %8.1f  %v\n", r.name, r.rule, r.rep.Sent, r.rep.Answered,
			r.rep.Rcodes["SERVFAIL"], r.lost, r.rep.Latency.P99, r.rep.Latency.Max, r.after)
	}
	t.Log(tb.String())
}
