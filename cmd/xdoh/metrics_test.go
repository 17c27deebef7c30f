package main

import (
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"

	"xdoh/cmd/xdoh/internal/config"
)

// TestMetricNames lints every name xdoh exports (Prometheus conventions).
func TestMetricNames(t *testing.T) {
	cfg, err := config.Parse([]byte(`listeners: [{name: edge, do53: ["127.0.0.1:5300"]}]
default: {targets: ["127.0.0.1:5301"]}
`), ".")
	if err != nil {
		t.Fatal(err)
	}
	a, err := build(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer a.closeUpstreams()
	// The datapaths are built (not started): their counters read zero.
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
	code, body := get("/metrics")
	if code != 200 {
		t.Fatalf("/metrics %d", code)
	}
	for _, want := range []string{"xdoh_cache_hits_total 2", "xdoh_forwarder_local_answers_total 1", `xdoh_udp_queries_total{listener="cli"}`} {
		if !strings.Contains(body, want) {
			t.Fatalf("/metrics lacks %q", want)
		}
	}
}
