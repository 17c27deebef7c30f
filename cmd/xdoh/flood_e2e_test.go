package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/miekg/dns"

	"xdoh/bench"
	"xdoh/forwarder/upstream/upstreamtest"
)

// TestInflightBoundFlood measures what upstream.max_inflight lets the
// xdoh binary hold: a DoH upstream that takes every query and never
// answers (a black hole at the HTTP/2 layer) and an open-loop flood of
// forwarded misses at twice the rate the bound lasts for fill it. The
// bound must be reached and never passed, the queries past it answered
// SERVFAIL at once and counted as overload, every query answered (none
// lost), and the live heap with the bound full (after a collection forced
// through --pprof) must stay within floodHeapPerQuery bytes per query in
// flight, with no goroutine per query; afterwards in-flight and
// goroutines return to where they were. It logs the heap and RSS per
// query in flight, which is what sizes the default
// (forwarder.DefaultMaxInflight).
func TestInflightBoundFlood(t *testing.T) {
	const (
		bound        = 4096
		queryTimeout = 2 * time.Second
		// Live heap per query in flight at most (bytes): the pipeline's
		// copy of the request, the target group's attempt, the DoH request
		// with its timer and the pool's wait node come to a few KiB; a
		// 64 KiB buffer per query would not fit.
		floodHeapPerQuery = 8 << 10
	)
	silent := upstreamtest.StartFakeH2(t, nil, func(*upstreamtest.FakeConn, int, uint32, *dns.Msg) {})
	dir := t.TempDir()
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, upstreamtest.PKI(t).CAPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	addr, metricsAddr, pprofAddr := freeAddr(t), freeAddr(t), freeAddr(t)
	cfg := fmt.Sprintf(`listeners:
  - name: in
    protocols: [do53]
    do53: [%q]
rules:
  - {name: hole, domain: hole.example, type: forward, ca_file: %s, targets: [%q]}
upstream: {query_timeout: %v, timeout: %v, max_inflight: %d}
metrics: {address: %q}
`, addr, caFile, silent.URL(), queryTimeout, queryTimeout, bound, metricsAddr)
	cfgPath := filepath.Join(dir, "xdoh.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(xdohBin, "run", "--pprof", pprofAddr, "-c", cfgPath)
	stderr := startXdohCmd(t, addr, cmd)
	pid := strconv.Itoa(cmd.Process.Pid)

	scrape := func() string {
		m, err := httpText("http://" + metricsAddr + "/metrics")
		if err != nil {
			t.Errorf("scraping xdoh: %v", err)
		}
		return m
	}
	// liveHeap forces a collection in xdoh (net/http/pprof does for
	// heap?gc=1) and returns the heap in use after it: what is live.
	liveHeap := func() float64 {
		if _, err := httpText("http://" + pprofAddr + "/debug/pprof/heap?gc=1"); err != nil {
			t.Errorf("forcing a collection: %v", err)
		}
		return metric(scrape(), "go_memstats_heap_inuse_bytes ")
	}
	// The baseline after a first flood of a tenth of the bound, so that
	// pools, buffers and the connections have their working size.
	src, err := bench.NewRandomSubSource("hole.example", dns.TypeA)
	if err != nil {
		t.Fatal(err)
	}
	flood := func(rate float64, d time.Duration) (*bench.Report, error) {
		return bench.Run(context.Background(), bench.Config{
			Target: addr, Source: src, Clients: 2, Rate: rate, Limit: d,
			Timeout: queryTimeout + 2*time.Second,
		})
	}
	if _, err := flood(bound/10, time.Second); err != nil {
		t.Fatal(err)
	}
	idle := func() string { // waits for in-flight 0, returns the scrape
		deadline := time.Now().Add(2*queryTimeout + 5*time.Second)
		for {
			m := scrape()
			if metric(m, "xdoh_forwarder_upstream_inflight ") == 0 {
				return m
			}
			if time.Now().After(deadline) {
				t.Fatalf("in-flight %v, not back to 0 within %v\n%s", metric(m, "xdoh_forwarder_upstream_inflight "),
					2*queryTimeout+5*time.Second, stderr.String())
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	m0 := idle()
	if l := metric(m0, "xdoh_forwarder_upstream_inflight_limit "); l != bound {
		t.Errorf("xdoh_forwarder_upstream_inflight_limit %v, want max_inflight %d", l, bound)
	}
	heap0, over0 := liveHeap(), metric(m0, "xdoh_forwarder_overload_total ")
	base, err := sampleProc(pid, metricsAddr)
	if err != nil {
		t.Fatal(err)
	}

	// The flood: the bound fills in half the query timeout and stays full
	// for the other half, when the sampler takes the live heap once.
	rate := 2 * bound / queryTimeout.Seconds()
	var (
		maxInflight float64
		full        bool // measured with the bound full
		heapFull    float64
		procFull    procSample
	)
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		tick := time.NewTicker(25 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			n := metric(scrape(), "xdoh_forwarder_upstream_inflight ")
			maxInflight = max(maxInflight, n)
			if n > bound {
				t.Errorf("in-flight %v past max_inflight %d", n, bound)
			}
			if n == bound && !full {
				full, heapFull = true, liveHeap()
				p, err := sampleProc(pid, metricsAddr)
				if err != nil {
					t.Errorf("sampling xdoh: %v", err)
					return
				}
				procFull = p
			}
		}
	}()
	rep, err := flood(rate, queryTimeout)
	close(stop)
	<-sampled
	if err != nil {
		t.Fatal(err)
	}
	m1 := idle()
	after, err := sampleProc(pid, metricsAddr)
	if err != nil {
		t.Fatal(err)
	}

	t.Logf("flood: %d q/s for %v: sent %d, answered %d (%v); in-flight at most %.0f", int(rate), queryTimeout,
		rep.Sent, rep.Answered, rep.Rcodes, maxInflight)
	if !full {
		t.Fatalf("in-flight reached %.0f: the flood should have filled max_inflight %d", maxInflight, bound)
	}
	perHeap := (heapFull - heap0) / bound
	perRSS := float64(procFull.rssKiB-base.rssKiB) * 1024 / bound
	t.Logf("%d queries in flight: live heap %.1f -> %.1f MiB (%.0f B per query), RSS %.1f -> %.1f MiB (%.0f B per query), goroutines %d -> %d",
		bound, heap0/(1<<20), heapFull/(1<<20), perHeap, float64(base.rssKiB)/1024, float64(procFull.rssKiB)/1024, perRSS,
		base.goroutines, procFull.goroutines)
	if lost := rep.Sent - rep.Answered; lost > 0 || rep.Unsent > 0 {
		t.Errorf("sent %d, answered %d: %d lost, %d unsent (first error %q)", rep.Sent, rep.Answered, lost, rep.Unsent, rep.FirstError)
	}
	if rep.Rcodes["SERVFAIL"] != rep.Answered {
		t.Errorf("answers %v through a black hole: want only SERVFAIL", rep.Rcodes)
	}
	if over := metric(m1, "xdoh_forwarder_overload_total ") - over0; over <= 0 {
		t.Errorf("overload counted %v: the queries past the bound should count", over)
	}
	if perHeap > floodHeapPerQuery {
		t.Errorf("%.0f bytes of heap per query in flight, want at most %d", perHeap, floodHeapPerQuery)
	}
	if g := procFull.goroutines - base.goroutines; g > leakGoroutines {
		t.Errorf("%d more goroutines with %d queries in flight: a goroutine per query?", g, bound)
	}
	if after.goroutines > base.goroutines+leakGoroutines {
		t.Errorf("goroutines %d after the flood, %d before", after.goroutines, base.goroutines)
	}
}
