package bench

import (
	"fmt"
	"io"
	"sort"
)

// WriteText writes the report as dnsperf's summary does, with the latency
// percentiles after it.
func (r *Report) WriteText(w io.Writer) error {
	ew := &errWriter{w: w}
	pct := func(n uint64) float64 {
		if r.Sent == 0 {
			return 0
		}
		return 100 * float64(n) / float64(r.Sent)
	}
	ew.printf("Statistics:\n\n")
	ew.printf("  Target:               %s (%s)\n", r.Target, r.Transport)
	ew.printf("  Queries:              %s\n", r.Settings.Queries)
	switch {
	case r.Settings.Rate > 0:
		ew.printf("  Mode:                 open loop, %g q/s offered, %d clients\n", r.Settings.Rate, r.Settings.Clients)
	case r.Settings.Outstanding > 0:
		ew.printf("  Mode:                 closed loop, %d outstanding, %d clients\n", r.Settings.Outstanding, r.Settings.Clients)
	default:
		ew.printf("  Mode:                 open loop, the source's timing, %d clients\n", r.Settings.Clients)
	}
	ew.printf("  Queries sent:         %d\n", r.Sent)
	ew.printf("  Queries completed:    %d (%.2f%%)\n", r.Answered, pct(r.Answered))
	ew.printf("  Queries lost:         %d (%.2f%%)\n", r.Timeouts, pct(r.Timeouts))
	if r.Unsent > 0 {
		ew.printf("  Queries not sent:     %d (the rig could not keep up)\n", r.Unsent)
	}
	if r.Errors > 0 {
		ew.printf("  Errors:               %d (%d malformed answers)\n", r.Errors, r.Malformed)
		if r.FirstError != "" {
			ew.printf("  First error:          %s\n", r.FirstError)
		}
	}
	ew.printf("\n")
	names := make([]string, 0, len(r.Rcodes))
	for n := range r.Rcodes {
		names = append(names, n)
	}
	sort.Slice(names, func(i, j int) bool { return r.Rcodes[names[i]] > r.Rcodes[names[j]] })
	for i, n := range names {
		label := "  Response codes:       "
		if i > 0 {
			label = "                        "
		}
		ew.printf("%s%s %d (%.2f%%)\n", label, n, r.Rcodes[n], 100*float64(r.Rcodes[n])/float64(max(r.Answered, 1)))
	}
	if r.Sent > 0 && r.Answered > 0 {
		ew.printf("  Average packet size:  request %d, response %d\n", r.BytesSent/r.Sent, r.BytesRecv/r.Answered)
	}
	ew.printf("  Run time (s):         %f\n", r.Seconds)
	ew.printf("  Queries per second:   %f\n", r.QPS)
	ew.printf("\n")
	l := r.Latency
	ew.printf("  Average Latency (s):  %f (max %f)\n", l.Mean/1000, l.Max/1000)
	ew.printf("  Latency (ms):         p50 %.3f  p90 %.3f  p99 %.3f  p99.9 %.3f  max %.3f\n", l.P50, l.P90, l.P99, l.P999, l.Max)
	ew.printf("  Spectrum (ms):       ")
	for _, q := range r.Spectrum {
		ew.printf(" p%g=%.3f", q.Percentile, q.Ms)
	}
	ew.printf("\n")
	if len(r.Steps) > 0 {
		ew.printf("\nRamp:\n  %10s %10s %8s %10s %10s\n", "rate", "q/s", "loss%", "p50 ms", "p99 ms")
		for _, s := range r.Steps {
			mark := ""
			if s.Exceeded {
				mark = "  exceeded"
			}
			ew.printf("  %10g %10.0f %8.2f %10.3f %10.3f%s\n", s.Rate, s.QPS, 100*s.Loss, s.Latency.P50, s.Latency.P99, mark)
		}
	}
	return ew.err
}

type errWriter struct {
	w   io.Writer
	err error
}

func (e *errWriter) printf(format string, a ...any) {
	if e.err == nil {
		_, e.err = fmt.Fprintf(e.w, format, a...)
	}
}
