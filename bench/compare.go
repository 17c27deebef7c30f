package bench

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"strings"
	"unicode/utf8"
)

// Verdict is how run B did against run A.
type Verdict int

const (
	Same   Verdict = iota // no change beyond the noise
	Better                // more QPS or lower p99, and neither worse
	Worse                 // less QPS or higher p99, and neither better
	Mixed                 // one better and the other worse
)

func (v Verdict) String() string {
	switch v {
	case Same:
		return "same"
	case Better:
		return "better"
	case Worse:
		return "worse"
	case Mixed:
		return "mixed"
	}
	return fmt.Sprintf("Verdict(%d)", int(v))
}

// Noise thresholds of the verdict: relative changes within these count as
// no change.
const (
	QPSNoise = 0.05
	P99Noise = 0.10
)

// Compare prints the headline numbers of runs a and b side by side with
// B−A and the relative change, then the verdict on B, and returns it.
//
// The verdict rule: answered QPS within ±5% and p99 latency within ±10%
// of A's are noise. B is Better if QPS rose or p99 fell beyond the noise
// and neither moved the wrong way; Worse if one moved the wrong way and
// neither improved; Mixed if one improved and the other worsened; Same
// otherwise. A run without answers has no latency: it is worse than one
// with answers, and two such runs are the same. A nil report counts as a
// run without answers.
func Compare(w io.Writer, a, b *Report) Verdict {
	if a == nil {
		a = &Report{}
	}
	if b == nil {
		b = &Report{}
	}
	fmt.Fprintf(w, "A: %s\nB: %s\n\n", describe(a), describe(b))
	t := table{{"", "A", "B", "B-A", "change"}}
	row := func(name string, av, bv float64, format func(float64) string) {
		t = append(t, []string{name, format(av), format(bv), signed(bv-av, format), relative(av, bv)})
	}
	count := func(v float64) string { return fmt.Sprintf("%.0f", v) }
	fixed1 := func(v float64) string { return fmt.Sprintf("%.1f", v) }
	row("QPS (answered/s)", a.QPS, b.QPS, fixed1)
	t = append(t, []string{"answered", fmt.Sprintf("%.2f%%", answeredPct(a)), fmt.Sprintf("%.2f%%", answeredPct(b)),
		signed(answeredPct(b)-answeredPct(a), func(v float64) string { return fmt.Sprintf("%.2f pt", v) }), ""})
	row("timeouts", float64(a.Timeouts), float64(b.Timeouts), count)
	row("errors", float64(a.Errors), float64(b.Errors), count)
	for _, l := range []struct {
		name   string
		av, bv float64
	}{
		{"latency mean (ms)", a.Latency.Mean, b.Latency.Mean},
		{"latency p50 (ms)", a.Latency.P50, b.Latency.P50},
		{"latency p90 (ms)", a.Latency.P90, b.Latency.P90},
		{"latency p99 (ms)", a.Latency.P99, b.Latency.P99},
		{"latency p99.9 (ms)", a.Latency.P999, b.Latency.P999},
		{"latency max (ms)", a.Latency.Max, b.Latency.Max},
	} {
		row(l.name, l.av, l.bv, msFormat)
	}
	row("bytes sent/query", perItem(a.BytesSent, a.Sent), perItem(b.BytesSent, b.Sent), fixed1)
	row("bytes recv/answer", perItem(a.BytesRecv, a.Answered), perItem(b.BytesRecv, b.Answered), fixed1)
	t.write(w)

	v, why := verdict(a, b)
	fmt.Fprintf(w, "\nverdict: %s\n", why)
	fmt.Fprintf(w, "rule: QPS within ±%.0f%% and p99 within ±%.0f%% are noise; better: one improved, neither worse\n",
		100*QPSNoise, 100*P99Noise)
	return v
}

// table is rows of cells, the first column a name, the others numbers.
type table [][]string

// write prints t with the names left-aligned and the numbers right-aligned.
func (t table) write(w io.Writer) {
	var width []int
	for _, r := range t {
		for i, c := range r {
			if i == len(width) {
				width = append(width, 0)
			}
			width[i] = max(width[i], utf8.RuneCountInString(c))
		}
	}
	for _, r := range t {
		var b strings.Builder
		for i, c := range r {
			pad := strings.Repeat(" ", width[i]-utf8.RuneCountInString(c))
			if i == 0 {
				b.WriteString(c + pad)
			} else {
				b.WriteString("  " + pad + c)
			}
		}
		fmt.Fprintln(w, strings.TrimRight(b.String(), " "))
	}
}

// verdict applies Compare's rule and says why in words.
func verdict(a, b *Report) (Verdict, string) {
	switch {
	case a.Answered == 0 && b.Answered == 0:
		return Same, "same: neither run had answers"
	case b.Answered == 0:
		return Worse, "B is worse: B had no answers"
	case a.Answered == 0:
		return Better, "B is better: A had no answers"
	}
	dq, dp := change(a.QPS, b.QPS), change(a.Latency.P99, b.Latency.P99)
	q := trend(dq, QPSNoise)  // +1: more QPS, better
	p := -trend(dp, P99Noise) // +1: lower p99, better
	nums := fmt.Sprintf("QPS %s, p99 %s", pct(dq), pct(dp))
	switch {
	case q == 0 && p == 0:
		return Same, "same: " + nums + ", both within noise"
	case q >= 0 && p >= 0:
		return Better, "B is better: " + nums
	case q <= 0 && p <= 0:
		return Worse, "B is worse: " + nums
	case q > 0:
		return Mixed, fmt.Sprintf("mixed: B has QPS %s but p99 %s", pct(dq), pct(dp))
	default:
		return Mixed, fmt.Sprintf("mixed: B has p99 %s but QPS %s", pct(dp), pct(dq))
	}
}

// change is (b−a)/a; +Inf when only b is non-zero, 0 when both are zero.
func change(a, b float64) float64 {
	if a == 0 {
		if b == 0 {
			return 0
		}
		return math.Inf(1)
	}
	return (b - a) / a
}

// trend is +1 or −1 for a change beyond ±noise, 0 within.
func trend(d, noise float64) int {
	switch {
	case d > noise:
		return 1
	case d < -noise:
		return -1
	}
	return 0
}

func pct(d float64) string {
	if math.IsInf(d, 0) {
		return "up from 0"
	}
	return fmt.Sprintf("%+.1f%%", 100*d)
}

func relative(a, b float64) string {
	if a == 0 {
		if b == 0 {
			return pct(0)
		}
		return "n/a"
	}
	return pct(change(a, b))
}

// signed is format(d) with a "+" before positive values.
func signed(d float64, format func(float64) string) string {
	if d > 0 {
		return "+" + format(d)
	}
	return format(d)
}

func answeredPct(r *Report) float64 { return 100 * perItem(r.Answered, r.Sent) }

func perItem(n, of uint64) float64 {
	if of == 0 {
		return 0
	}
	return float64(n) / float64(of)
}

// describe is one line on what a run was.
func describe(r *Report) string {
	s := r.Settings
	load := fmt.Sprintf("%d outstanding", s.Outstanding)
	if s.Rate > 0 {
		load = fmt.Sprintf("rate %s q/s", siFormat(s.Rate))
	}
	return fmt.Sprintf("%s over %s, %d clients, %s, %.1f s", r.Target, r.Transport, s.Clients, load, r.Seconds)
}

// LoadReport reads a Report from the JSON file at path, as `xdoh bench
// --json` writes it. A file that is JSON but has no "qps" field or no
// positive "seconds" is not taken for a report.
func LoadReport(path string) (*Report, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("loading report: %w", err)
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(b, &fields); err != nil {
		var syn *json.SyntaxError
		if errors.As(err, &syn) {
			return nil, fmt.Errorf("loading report %s: not JSON: %w", path, err)
		}
		return nil, fmt.Errorf("loading report %s: not a bench report: %w", path, err)
	}
	for _, f := range []string{"qps", "seconds"} {
		if _, ok := fields[f]; !ok {
			return nil, fmt.Errorf("loading report %s: not a bench report: no %q field", path, f)
		}
	}
	var r Report
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("loading report %s: %w", path, err)
	}
	if !(r.Seconds > 0) {
		return nil, fmt.Errorf("loading report %s: not a bench report: seconds is %v, want > 0", path, r.Seconds)
	}
	return &r, nil
}
