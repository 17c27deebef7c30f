package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"

	"xdoh/cmd/xdoh/internal/config"
	"xdoh/forwarder"
)

// TestMetricNames lints every name xdoh exports (Prometheus conventions).
func TestMetricNames(t *testing.T) {
	dir := t.TempDir()
	ca, cert, key := writePKI(t, dir)
	_ = ca
	cfg, err := config.Parse([]byte(fmt.Sprintf(`listeners:
  - {name: edge, protocols: [do53, doh, dot, doq], do53: ["127.0.0.1:0"], doh: {address: "127.0.0.1:0", cert: %[1]s, key: %[2]s},
     dot: {address: "127.0.0.1:0", cert: %[1]s, key: %[2]s}, doq: {address: "127.0.0.1:0", cert: %[1]s, key: %[2]s}}
zones: [{name: aws.example.internal, file: %[3]s}]
default: {targets: ["127.0.0.1:9"]}
`, cert, key, filepath.Join("demo", "aws.example.internal.zone"))), ".")
	if err != nil {
		t.Fatal(err)
	}
	a := newApp(slog.New(slog.DiscardHandler), nil)
	if err := a.start(cfg); err != nil {
		t.Fatal(err)
	}
	defer a.stop()
	// One query through the pipeline, so the per-answer families have samples.
	q := new(dns.Msg).SetQuestion("ipv4.aws.example.internal.", dns.TypeA)
	b, _ := q.Pack()
	if resp := a.sw.Load().ServeDNS(context.Background(), &forwarder.Request{Msg: b, Transport: forwarder.TransportUDP, Listener: "edge"}, nil); resp == nil {
		t.Fatal("no answer")
	}
	reg, err := a.collector().Registry()
	if err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var ours int
	for _, mf := range mfs {
		if strings.HasPrefix(mf.GetName(), "xdoh_") {
			ours++
		}
	}
	if ours < 25 {
		t.Fatalf("only %d xdoh_ metrics gathered", ours)
	}
	problems, err := promlint.NewWithMetricFamilies(mfs).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("%s: %s", p.Metric, p.Text)
	}
}

// TestMetricsEndpoint scrapes a running xdoh: cache hits move, /readyz is 200.
func TestMetricsEndpoint(t *testing.T) {
	addr, maddr := freeAddr(t), freeAddr(t)
	startXdoh(t, addr, "--demo", "--listen", addr, "--metrics", maddr)
	for i := 0; i < 3; i++ {
		m := new(dns.Msg).SetQuestion("ipv4.aws.example.internal.", dns.TypeA)
		if _, _, err := (&dns.Client{Timeout: 2 * time.Second}).Exchange(m, addr); err != nil {
			t.Fatal(err)
		}
	}
	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + maddr + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := get("/readyz"); code != 200 {
		t.Fatalf("/readyz %d", code)
	}
	if code, body := get("/healthz"); code != 200 || body != "ok\n" {
		t.Fatalf("/healthz %d %q", code, body)
	}
	code, body := get("/metrics")
	if code != 200 {
		t.Fatalf("/metrics %d", code)
	}
	for _, want := range []string{"xdoh_cache_hits_total 2", "xdoh_forwarder_local_answers_total 1", `xdoh_listener_datapath_events_total{event="udp_queries",listener="cli"}`, `xdoh_responses_total{listener="cli",rcode="NOERROR",transport="UDP"}`, `xdoh_query_duration_seconds_bucket{transport="UDP",le="0.001"}`} {
		if !strings.Contains(body, want) {
			t.Fatalf("/metrics lacks %q", want)
		}
	}
}
