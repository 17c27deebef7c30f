package bench

import (
	"bytes"
	"encoding/xml"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// syntheticReport is a 30 s closed-loop run near 48k answered/s with a
// stall at 12–14 s that times queries out, and a long latency tail.
func syntheticReport() *Report {
	r := &Report{
		Target:    "udp://127.0.0.1:5353",
		Transport: "udp",
		Started:   time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC),
		Seconds:   30,
		Settings: Settings{
			Queries: "random-sub example.com", Clients: 4, Outstanding: 200,
			Timeout: 2, Limit: 30,
		},
		Rcodes:  map[string]uint64{"NOERROR": 1_380_000, "NXDOMAIN": 52_000},
		Latency: Latency{Mean: 0.61, P50: 0.42, P90: 0.95, P99: 2.3, P999: 15.2, Max: 210},
	}
	for t := range 30 {
		sent := 48_000 + uint64(900*math.Sin(float64(t)/3))
		s := Second{T: t, Sent: sent, Answered: sent - 20, Timeouts: 20, P50: 0.42, P99: 2.3}
		if t >= 12 && t <= 14 {
			s.Timeouts = 6_000 + uint64(t-12)*1_500
			s.Answered = sent - s.Timeouts
			s.P99 = 40
		}
		r.Timeline = append(r.Timeline, s)
		r.Sent += s.Sent
		r.Answered += s.Answered
		r.Timeouts += s.Timeouts
	}
	r.QPS = float64(r.Answered) / r.Seconds
	r.BytesSent = r.Sent * 45
	r.BytesRecv = r.Answered * 61
	for _, q := range []Quantile{
		{0, 0.08}, {10, 0.21}, {25, 0.30}, {50, 0.42}, {75, 0.61}, {90, 0.95},
		{95, 1.3}, {97.5, 1.8}, {99, 2.3}, {99.5, 4.1}, {99.9, 15.2},
		{99.95, 31}, {99.99, 80}, {99.999, 160}, {100, 210},
	} {
		r.Spectrum = append(r.Spectrum, q)
	}
	return r
}

// syntheticRamp is an open-loop ramp whose server saturates near 70k/s.
func syntheticRamp() *Report {
	r := syntheticReport()
	r.Settings.Outstanding, r.Settings.Rate = 0, 100_000
	for i := 1; i <= 10; i++ {
		rate := float64(i) * 10_000
		s := Step{Rate: rate, QPS: math.Min(rate, 70_000+float64(i-7)*1_000)}
		s.Loss = 1 - s.QPS/rate
		s.Latency = Latency{P50: 0.4, P99: 1.5 + math.Pow(float64(i), 3)/40}
		s.Exceeded = i >= 8
		r.Steps = append(r.Steps, s)
	}
	return r
}

// plotDir is where the test's images go: $BENCH_PLOT_DIR to keep them for
// a look, a temporary directory otherwise.
func plotDir(t *testing.T) string {
	if d := os.Getenv("BENCH_PLOT_DIR"); d != "" {
		return d
	}
	return t.TempDir()
}

func TestWritePlot(t *testing.T) {
	dir := plotDir(t)
	empty := &Report{Target: "udp://127.0.0.1:5353", Transport: "udp", Seconds: 5,
		Settings: Settings{Clients: 1, Outstanding: 10}}
	odd := syntheticReport()
	odd.Spectrum = []Quantile{{50, 0}, {99, math.NaN()}, {100, 3}} // nothing plottable
	odd.Timeline = odd.Timeline[:1]
	flat := syntheticReport()
	flat.Spectrum = []Quantile{{0, 1}, {50, 1.1}, {90, 1.3}, {99, 2}}

	hostile := syntheticRamp()
	hostile.Steps = []Step{{}, {Rate: math.NaN(), QPS: math.Inf(1), Exceeded: true}, {Rate: 1, Latency: Latency{P99: math.NaN()}}}
	hostile.Timeline = []Second{{T: 1e9, Sent: math.MaxUint64}, {T: 1e9 + 1}}
	hostile.Spectrum = []Quantile{{0, 1e-300}, {99.99999999, 1e300}}

	tests := []struct {
		name    string
		file    string
		r       *Report
		wantErr string
	}{
		{name: "png", file: "run.png", r: syntheticReport()},
		{name: "svg", file: "run.svg", r: syntheticReport()},
		{name: "ramp png", file: "ramp.png", r: syntheticRamp()},
		{name: "ramp svg", file: "ramp.SVG", r: syntheticRamp()},
		{name: "no answers", file: "empty.png", r: empty},
		{name: "nothing plottable", file: "odd.png", r: odd},
		{name: "narrow spectrum", file: "flat.png", r: flat},
		{name: "hostile numbers", file: "hostile.png", r: hostile},
		{name: "unknown extension", file: "run.pdf", r: syntheticReport(), wantErr: "run.pdf"},
		{name: "no extension", file: "run", r: syntheticReport(), wantErr: "want .svg or .png"},
		{name: "nil report", file: "nil.png", wantErr: "no report"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, tt.file)
			err := WritePlot(path, tt.r)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("WritePlot(%s) = %v, want an error containing %q", tt.file, err, tt.wantErr)
				}
				if _, err := os.Stat(path); err == nil {
					t.Errorf("WritePlot(%s) failed but left a file", tt.file)
				}
				return
			}
			if err != nil {
				t.Fatalf("WritePlot(%s): %v", tt.file, err)
			}
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if len(b) < 20_000 {
				t.Errorf("%s is %d bytes, want a real image", tt.file, len(b))
			}
			if strings.EqualFold(filepath.Ext(path), ".png") {
				cfg, err := png.DecodeConfig(bytes.NewReader(b))
				if err != nil {
					t.Fatalf("%s is not a PNG: %v", tt.file, err)
				}
				if cfg.Width < 1000 || cfg.Height < 1400 {
					t.Errorf("%s is %dx%d, want about 20x28 cm at 150 dpi", tt.file, cfg.Width, cfg.Height)
				}
				return
			}
			checkSVG(t, b, tt.r.Target)
		})
	}
}

// checkSVG fails unless b is well-formed XML with an <svg> root that
// shows want.
func checkSVG(t *testing.T, b []byte, want string) {
	t.Helper()
	d := xml.NewDecoder(bytes.NewReader(b))
	var root string
	for {
		tok, err := d.Token()
		if err != nil {
			if err.Error() != "EOF" {
				t.Fatalf("not well-formed SVG: %v", err)
			}
			break
		}
		if se, ok := tok.(xml.StartElement); ok && root == "" {
			root = se.Name.Local
		}
	}
	if root != "svg" {
		t.Fatalf("root element is %q, want svg", root)
	}
	if !bytes.Contains(b, []byte(want)) {
		t.Errorf("SVG does not show %q", want)
	}
}

func TestPercentileTicks(t *testing.T) {
	var labels []string
	for _, tk := range (percentileTicks{}).Ticks(1, 1e5) {
		if tk.Label != "" {
			labels = append(labels, tk.Label)
		}
	}
	got := strings.Join(labels, " ")
	if want := "50% 90% 99% 99.9% 99.99% 99.999%"; got != want {
		t.Errorf("labels = %q, want %q", got, want)
	}
}

func TestFormats(t *testing.T) {
	tests := []struct {
		v      float64
		si, ms string
	}{
		{v: 0, si: "0", ms: "0"},
		{v: 0.05, si: "0.05", ms: "0.05"},
		{v: 0.42, si: "0.42", ms: "0.42"},
		{v: 2.346, si: "2.346", ms: "2.35"},
		{v: 950, si: "950", ms: "950"},
		{v: 60000.00000000001, si: "60k", ms: "60000"},
		{v: 12_500, si: "12.5k", ms: "12500"},
		{v: 1_234_567, si: "1.235M", ms: "1234567"},
	}
	for _, tt := range tests {
		if got := siFormat(tt.v); got != tt.si {
			t.Errorf("siFormat(%v) = %q, want %q", tt.v, got, tt.si)
		}
		if got := msFormat(tt.v); got != tt.ms {
			t.Errorf("msFormat(%v) = %q, want %q", tt.v, got, tt.ms)
		}
	}
}
