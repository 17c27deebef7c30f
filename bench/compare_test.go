package bench

import (
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// withQPSP99 is the synthetic run with its QPS and p99 scaled.
func withQPSP99(qps, p99 float64) *Report {
	r := syntheticReport()
	r.QPS *= qps
	r.Latency.P99 *= p99
	return r
}

func TestCompareVerdict(t *testing.T) {
	noAnswers := &Report{Target: "udp://127.0.0.1:5353", Transport: "udp", Seconds: 5, Sent: 100, Timeouts: 100}
	tests := []struct {
		name     string
		a, b     *Report
		want     Verdict
		wantLine string
	}{
		{name: "more QPS, lower p99", a: withQPSP99(1, 1), b: withQPSP99(1.123, 0.92),
			want: Better, wantLine: "verdict: B is better: QPS +12.3%, p99 -8.0%"},
		{name: "lower p99 only", a: withQPSP99(1, 1), b: withQPSP99(1.01, 0.8),
			want: Better, wantLine: "verdict: B is better: QPS +1.0%, p99 -20.0%"},
		{name: "less QPS", a: withQPSP99(1, 1), b: withQPSP99(0.9, 1),
			want: Worse, wantLine: "verdict: B is worse: QPS -10.0%, p99 +0.0%"},
		{name: "higher p99", a: withQPSP99(1, 1), b: withQPSP99(1.02, 1.3),
			want: Worse, wantLine: "B is worse: QPS +2.0%, p99 +30.0%"},
		{name: "within noise", a: withQPSP99(1, 1), b: withQPSP99(1.049, 1.099),
			want: Same, wantLine: "verdict: same: QPS +4.9%, p99 +9.9%, both within noise"},
		{name: "noise both ways", a: withQPSP99(1, 1), b: withQPSP99(0.951, 0.901),
			want: Same, wantLine: "verdict: same:"},
		{name: "more QPS, higher p99", a: withQPSP99(1, 1), b: withQPSP99(1.2, 1.3),
			want: Mixed, wantLine: "verdict: mixed: B has QPS +20.0% but p99 +30.0%"},
		{name: "lower p99, less QPS", a: withQPSP99(1, 1), b: withQPSP99(0.8, 0.5),
			want: Mixed, wantLine: "verdict: mixed: B has p99 -50.0% but QPS -20.0%"},
		{name: "B no answers", a: withQPSP99(1, 1), b: noAnswers,
			want: Worse, wantLine: "verdict: B is worse: B had no answers"},
		{name: "A no answers", a: noAnswers, b: withQPSP99(1, 1),
			want: Better, wantLine: "verdict: B is better: A had no answers"},
		{name: "neither answered", a: noAnswers, b: noAnswers,
			want: Same, wantLine: "verdict: same: neither run had answers"},
		{name: "nil B", a: withQPSP99(1, 1), b: nil,
			want: Worse, wantLine: "B had no answers"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out strings.Builder
			got := Compare(&out, tt.a, tt.b)
			if got != tt.want {
				t.Errorf("Compare = %v, want %v\n%s", got, tt.want, out.String())
			}
			if !strings.Contains(out.String(), tt.wantLine) {
				t.Errorf("output lacks %q:\n%s", tt.wantLine, out.String())
			}
			if !strings.Contains(out.String(), "rule: QPS within ±5% and p99 within ±10% are noise") {
				t.Errorf("output does not state the rule:\n%s", out.String())
			}
		})
	}
}

func TestCompareTable(t *testing.T) {
	a, b := syntheticReport(), syntheticReport()
	b.QPS, b.Latency.P50, b.Timeouts, b.Errors = a.QPS*1.5, 0.84, a.Timeouts+100, 3
	var out strings.Builder
	Compare(&out, a, b)
	lines := strings.Split(out.String(), "\n")
	find := func(prefix string) []string {
		for _, l := range lines {
			if strings.HasPrefix(l, prefix) {
				return strings.Fields(strings.TrimPrefix(l, prefix))
			}
		}
		t.Fatalf("no row %q in:\n%s", prefix, out.String())
		return nil
	}
	tests := []struct {
		row  string
		want []string // A, B, B-A, change
	}{
		{row: "latency p50 (ms)", want: []string{"0.42", "0.84", "+0.42", "+100.0%"}},
		{row: "errors", want: []string{"0", "3", "+3", "n/a"}},
		{row: "timeouts", want: []string{"23040", "23140", "+100", "+0.4%"}},
		{row: "bytes sent/query", want: []string{"45.0", "45.0", "0.0", "+0.0%"}},
		{row: "answered", want: []string{"98.41%", "98.41%", "0.00", "pt"}},
	}
	for _, tt := range tests {
		if got := find(tt.row); strings.Join(got, " ") != strings.Join(tt.want, " ") {
			t.Errorf("row %q = %q, want %q", tt.row, got, tt.want)
		}
	}
	if !strings.Contains(out.String(), "A: udp://127.0.0.1:5353 over udp, 4 clients, 200 outstanding, 30.0 s") {
		t.Errorf("no description of A:\n%s", out.String())
	}
}

func TestVerdictString(t *testing.T) {
	for v, want := range map[Verdict]string{Same: "same", Better: "better", Worse: "worse", Mixed: "mixed", 9: "Verdict(9)"} {
		if got := v.String(); got != want {
			t.Errorf("Verdict(%d).String() = %q, want %q", int(v), got, want)
		}
	}
}

func TestLoadReport(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good, err := json.Marshal(syntheticRamp())
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		path    string
		wantErr string
		wantIs  error
	}{
		{name: "report", path: write("good.json", string(good))},
		{name: "missing file", path: filepath.Join(dir, "nope.json"), wantErr: "nope.json", wantIs: fs.ErrNotExist},
		{name: "not JSON", path: write("text.json", "qps: 5\n"), wantErr: "text.json: not JSON"},
		{name: "truncated", path: write("cut.json", string(good[:len(good)/2])), wantErr: "cut.json: not JSON"},
		{name: "array", path: write("array.json", "[1,2]"), wantErr: "array.json: not a bench report"},
		{name: "no qps", path: write("noqps.json", `{"target":"x","seconds":3}`), wantErr: `no "qps" field`},
		{name: "no seconds", path: write("nosec.json", `{"qps":3}`), wantErr: `no "seconds" field`},
		{name: "zero seconds", path: write("zero.json", `{"qps":3,"seconds":0}`), wantErr: "seconds is 0, want > 0"},
		{name: "wrong type", path: write("type.json", `{"qps":"fast","seconds":3}`), wantErr: "type.json"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := LoadReport(tt.path)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("LoadReport: %v", err)
				}
				if r.Target != "udp://127.0.0.1:5353" || len(r.Steps) != 10 || len(r.Spectrum) == 0 || r.QPS == 0 {
					t.Errorf("LoadReport lost fields: %+v", r)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("LoadReport = %v, want an error containing %q", err, tt.wantErr)
			}
			if tt.wantIs != nil && !errors.Is(err, tt.wantIs) {
				t.Errorf("LoadReport = %v, want errors.Is %v", err, tt.wantIs)
			}
		})
	}
}

func ExampleCompare() {
	a := &Report{
		Target: "udp://127.0.0.1:5353", Transport: "udp", Seconds: 10,
		Settings: Settings{Clients: 4, Outstanding: 200},
		Sent:     500_000, Answered: 499_000, Timeouts: 1_000, QPS: 49_900,
		BytesSent: 500_000 * 45, BytesRecv: 499_000 * 61,
		Latency: Latency{Mean: 0.6, P50: 0.42, P90: 0.95, P99: 2.5, P999: 15, Max: 210},
	}
	b := *a
	b.Transport, b.Target = "udp-xdp", "udp://127.0.0.1:5353"
	b.Answered, b.Timeouts, b.QPS, b.BytesRecv = 499_900, 100, 56_000, 499_900*61
	b.Latency = Latency{Mean: 0.5, P50: 0.38, P90: 0.8, P99: 2.3, P999: 9, Max: 120}
	Compare(os.Stdout, a, &b)
	// Output:
	// A: udp://127.0.0.1:5353 over udp, 4 clients, 200 outstanding, 10.0 s
	// B: udp://127.0.0.1:5353 over udp-xdp, 4 clients, 200 outstanding, 10.0 s
	//
	//                           A        B       B-A  change
	// QPS (answered/s)    49900.0  56000.0   +6100.0  +12.2%
	// answered             99.80%   99.98%  +0.18 pt
	// timeouts               1000      100      -900  -90.0%
	// errors                    0        0         0   +0.0%
	// latency mean (ms)       0.6      0.5      -0.1  -16.7%
	// latency p50 (ms)       0.42     0.38     -0.04   -9.5%
	// latency p90 (ms)       0.95      0.8     -0.15  -15.8%
	// latency p99 (ms)        2.5      2.3      -0.2   -8.0%
	// latency p99.9 (ms)       15        9        -6  -40.0%
	// latency max (ms)        210      120       -90  -42.9%
	// bytes sent/query       45.0     45.0       0.0   +0.0%
	// bytes recv/answer      61.0     61.0       0.0   +0.0%
	//
	// verdict: B is better: QPS +12.2%, p99 -8.0%
	// rule: QPS within ±5% and p99 within ±10% are noise; better: one improved, neither worse
}
