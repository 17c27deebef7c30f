package main

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"xdoh/forwarder/upstream/upstreamtest"
)

// dashboardFile is the Grafana dashboard shipped for xdoh.
const dashboardFile = "../../deploy/grafana/xdoh.json"

// TestDashboardMetrics: every metric the Grafana dashboard queries exists.
// A real xdoh runs with every feature the dashboard shows that needs no
// XDP (do53, DoH, DoT and DoQ listeners, RRL, the cache, the query log,
// a Do53 upstream) and answers a query, and each metric name in each
// panel's PromQL (and in the template variables) must be a family in its
// /metrics. The XDP families (xdoh_xdp_* but xdoh_xdp_mode, and
// xdoh_xsk_*) have samples only while XDP is attached, which needs an
// interface of a test network namespace and a kernel with AF_XDP: those
// are checked against the descriptors the app's collector registers
// (Describe), the same list /metrics draws from; xdp_e2e_test.go and
// xdp_tier_e2e_test.go scrape several of them from an xdoh with XDP
// attached.
func TestDashboardMetrics(t *testing.T) {
	exprs := dashboardExprs(t)
	used := map[string][]string{} // metric → the panels that use it
	for _, e := range exprs {
		names, err := promqlMetrics(e.expr)
		if err != nil {
			t.Errorf("panel %q: %v", e.panel, err)
			continue
		}
		if len(names) == 0 {
			t.Errorf("panel %q: expression %q uses no metric", e.panel, e.expr)
		}
		for _, n := range names {
			used[n] = append(used[n], e.panel)
		}
	}

	described := map[string]bool{}
	ch := make(chan *prometheus.Desc, 256)
	go func() { newApp(slog.New(slog.DiscardHandler), nil).collector().Describe(ch); close(ch) }()
	fqName := regexp.MustCompile(`fqName: "([^"]+)"`)
	for d := range ch {
		m := fqName.FindStringSubmatch(d.String())
		if m == nil {
			t.Fatalf("no name in descriptor %s", d)
		}
		described[m[1]] = true
	}

	live := scrapeFamilies(t, startDashboardXdoh(t))
	for name, panels := range used {
		xdp := strings.HasPrefix(name, "xdoh_xsk_") || strings.HasPrefix(name, "xdoh_xdp_") && name != "xdoh_xdp_mode"
		switch {
		case xdp:
			if !described[name] {
				t.Errorf("%s (panels %q): not among the collector's descriptors", name, panels)
			}
		case !hasFamily(live, name):
			t.Errorf("%s (panels %q): not in the running xdoh's /metrics", name, panels)
		}
	}
	// What the dashboard is for: each of these must be on it.
	for _, want := range []string{
		"xdoh_responses_total", "xdoh_query_duration_seconds_bucket", "xdoh_cache_hits_total", "xdoh_cache_misses_total",
		"xdoh_upstream_duration_seconds_bucket", "xdoh_upstream_errors_total", "xdoh_upstream_up", "xdoh_forwarder_upstream_inflight",
		"xdoh_forwarder_upstream_inflight_limit",
		"xdoh_forwarder_overload_total", "xdoh_forwarder_servfail_total", "xdoh_rrl_dropped_total", "xdoh_rrl_slipped_total",
		"xdoh_listener_datapath_events_total", "xdoh_xdp_mode", "xdoh_xdp_packets_total", "xdoh_xdp_kernel_answers_total",
	} {
		if used[want] == nil {
			t.Errorf("the dashboard does not show %s", want)
		}
	}
}

type dashboardExpr struct{ panel, expr string }

// dashboardExprs reads every PromQL expression of the dashboard: panel
// targets (rows' nested panels too) and query template variables.
func dashboardExprs(t *testing.T) []dashboardExpr {
	t.Helper()
	b, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	type target struct {
		Expr string `json:"expr"`
	}
	type panel struct {
		Title   string   `json:"title"`
		Type    string   `json:"type"`
		Targets []target `json:"targets"`
		Panels  []panel  `json:"panels"`
	}
	var d struct {
		Panels     []panel `json:"panels"`
		Templating struct {
			List []struct {
				Name  string          `json:"name"`
				Type  string          `json:"type"`
				Query json.RawMessage `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	var out []dashboardExpr
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			if p.Type != "row" && len(p.Targets) == 0 {
				t.Errorf("panel %q has no query", p.Title)
			}
			for _, tg := range p.Targets {
				out = append(out, dashboardExpr{p.Title, tg.Expr})
			}
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	labelValues := regexp.MustCompile(`^label_values\((.+),\s*\w+\)$`)
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		var q struct {
			Query string `json:"query"`
		}
		if err := json.Unmarshal(v.Query, &q); err != nil {
			t.Fatalf("template variable %s: %v", v.Name, err)
		}
		m := labelValues.FindStringSubmatch(q.Query)
		if m == nil {
			t.Fatalf("template variable %s: %q is not label_values(metric, label)", v.Name, q.Query)
		}
		out = append(out, dashboardExpr{"variable " + v.Name, m[1]})
	}
	if len(out) < 20 {
		t.Fatalf("only %d expressions in %s", len(out), dashboardFile)
	}
	return out
}

// promqlMetrics returns the metric names a PromQL expression selects: its
// identifiers that are not functions or aggregations (followed by "("),
// keywords and aggregation operators, or label names (in by, without, on, ignoring, group_left and
// group_right lists, and in {…} matchers, which are skipped with string
// literals and […] ranges).
func promqlMetrics(expr string) ([]string, error) {
	var names []string
	isIdent := func(c byte, first bool) bool {
		return c == '_' || c == ':' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || !first && '0' <= c && c <= '9'
	}
	// skip returns the index just past the bracket that closes the one at i,
	// ignoring brackets inside string literals.
	skip := func(i int, open, close byte) (int, error) {
		depth := 0
		for j := i; j < len(expr); j++ {
			switch c := expr[j]; c {
			case '"', '\'', '`':
				k := j + 1
				for ; k < len(expr) && expr[k] != c; k++ {
					if expr[k] == '\\' && c != '`' {
						k++
					}
				}
				j = k
			case open:
				depth++
			case close:
				if depth--; depth == 0 {
					return j + 1, nil
				}
			}
		}
		return 0, fmt.Errorf("unbalanced %c in %q", open, expr)
	}
	var err error
	for i := 0; i < len(expr); {
		c := expr[i]
		switch {
		case c == '{':
			if i, err = skip(i, '{', '}'); err != nil {
				return nil, err
			}
		case c == '[':
			if i, err = skip(i, '[', ']'); err != nil {
				return nil, err
			}
		case c == '"' || c == '\'' || c == '`':
			return nil, fmt.Errorf("string literal outside a matcher in %q", expr)
		case '0' <= c && c <= '9' || c == '.':
			for i++; i < len(expr) && (isIdent(expr[i], false) || expr[i] == '.'); i++ { // 1e9, 0.99
			}
		case isIdent(c, true):
			j := i + 1
			for j < len(expr) && isIdent(expr[j], false) {
				j++
			}
			word := expr[i:j]
			k := j
			for k < len(expr) && expr[k] == ' ' {
				k++
			}
			switch {
			case slices.Contains([]string{"by", "without", "on", "ignoring", "group_left", "group_right"}, word):
				if k < len(expr) && expr[k] == '(' {
					if k, err = skip(k, '(', ')'); err != nil {
						return nil, err
					}
				}
				j = k
			case slices.Contains([]string{"bool", "and", "or", "unless", "offset", // keywords and aggregations, with or without a by clause first
				"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk", "quantile", "limitk", "limit_ratio"}, word):
			case k < len(expr) && expr[k] == '(': // a function or aggregation
			default:
				names = append(names, word)
			}
			i = j
		default:
			i++
		}
	}
	return names, nil
}

// startDashboardXdoh runs xdoh with every non-XDP feature the dashboard
// shows, answers a few queries through it and returns its metrics address.
func startDashboardXdoh(t *testing.T) string {
	t.Helper()
	up := upstreamtest.StartDo53Server(t)
	dir := t.TempDir()
	_, cert, key := writePKI(t, dir)
	as := distinctAddrs(t, 5)
	addr, maddr := as[0], as[1]
	cfg := filepath.Join(dir, "xdoh.yaml")
	text := fmt.Sprintf(`listeners:
  - name: edge
    protocols: [do53, doh, dot, doq]
    do53: [%[1]q]
    doh: {address: %[2]q, cert: %[3]s, key: %[4]s}
    dot: {address: %[5]q, cert: %[3]s, key: %[4]s}
    doq: {address: %[6]q, cert: %[3]s, key: %[4]s}
default: {targets: [%[7]q]}
rrl: {enabled: true, responses_per_second: 1000}
querylog: {path: %[8]s}
metrics: {address: %[9]q}
`, addr, as[2], cert, key, as[3], as[4], up.Addr, filepath.Join(dir, "query.log"), maddr)
	if err := os.WriteFile(cfg, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	startXdoh(t, addr, "-c", cfg)
	for i := range 3 {
		q := new(dns.Msg).SetQuestion(fmt.Sprintf("dash%d.example.", i%2), dns.TypeA)
		if _, _, err := (&dns.Client{Timeout: 2 * time.Second}).Exchange(q, addr); err != nil {
			t.Fatal(err)
		}
	}
	return maddr
}

// distinctAddrs returns n addresses of freeAddr, no two the same.
func distinctAddrs(t *testing.T, n int) []string {
	t.Helper()
	var as []string
	for len(as) < n {
		if a := freeAddr(t); !slices.Contains(as, a) {
			as = append(as, a)
		}
	}
	return as
}

// scrapeFamilies reads /metrics and returns each family's type by name.
func scrapeFamilies(t *testing.T, maddr string) map[string]string {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + maddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		t.Fatal(err)
	}
	fams := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) == 4 && f[0] == "#" && f[1] == "TYPE" {
			fams[f[2]] = f[3]
		}
	}
	if len(fams) < 40 {
		t.Fatalf("only %d families in /metrics:\n%s", len(fams), b)
	}
	return fams
}

// hasFamily reports whether name is a family of fams, or a histogram's or
// summary's _bucket, _sum or _count series.
func hasFamily(fams map[string]string, name string) bool {
	if typ, ok := fams[name]; ok {
		return typ != "histogram" && typ != "summary" || !strings.HasSuffix(name, "_bucket")
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		base, ok := strings.CutSuffix(name, suffix)
		if !ok {
			continue
		}
		switch fams[base] {
		case "histogram":
			return true
		case "summary":
			return suffix != "_bucket"
		}
	}
	return false
}

// TestPromQLMetrics pins the extraction the dashboard test relies on.
func TestPromQLMetrics(t *testing.T) {
	for expr, want := range map[string][]string{
		`histogram_quantile(0.99, sum by (le, transport) (rate(xdoh_query_duration_seconds_bucket{instance=~"$instance"}[$__rate_interval])))`: {"xdoh_query_duration_seconds_bucket"},
		`sum(rate(a_total{x="}{by"}[5m])) / (sum(rate(b_total[1m])) + sum without (job) (c))`:                                                  {"a_total", "b_total", "c"},
		`process_resident_memory_bytes{instance=~"$instance"} / 1e9`:                                                                           {"process_resident_memory_bytes"},
		`max by (listener, mode) (xdoh_xdp_mode) == 1 and on (listener) group_left (mode) up offset 5m`:                                        {"xdoh_xdp_mode", "up"},
		`sum(x) by (instance) > bool 0`: {"x"},
	} {
		got, err := promqlMetrics(expr)
		if err != nil || !slices.Equal(got, want) {
			t.Errorf("promqlMetrics(%q) = %q, %v; want %q", expr, got, err, want)
		}
	}
	if _, err := promqlMetrics(`sum(rate(x{a="b"[5m]))`); err == nil {
		t.Error("an unbalanced matcher was accepted")
	}
	fams := map[string]string{"h_seconds": "histogram", "s": "summary", "c_total": "counter"}
	for name, want := range map[string]bool{"h_seconds_bucket": true, "h_seconds_sum": true, "h_seconds_count": true, "h_seconds": true,
		"s_count": true, "s_bucket": false, "c_total": true, "c_total_count": false, "missing": false} {
		if got := hasFamily(fams, name); got != want {
			t.Errorf("hasFamily(%q) = %v, want %v", name, got, want)
		}
	}
}
