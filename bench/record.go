package bench

import (
	"strconv"
	"sync"
	"time"

	hdr "github.com/HdrHistogram/hdrhistogram-go"
	"github.com/miekg/dns"
)

// Latencies are recorded in microseconds, from 1µs to 60s: three
// significant digits for a worker's whole run, two for a second of the
// timeline (a tenth of the memory; one per second of the run).
const (
	histMin     = 1
	histMax     = 60_000_000
	histSigFigs = 3
	secSigFigs  = 2
	// tallyMax is how many answers a goroutine collects before it takes
	// the recorder's lock.
	tallyMax = 64
	// rcodeSlots counts RCODEs 0–15 (the header's 4 bits) by value.
	rcodeSlots = 16
)

func newHist() *hdr.Histogram    { return hdr.New(histMin, histMax, histSigFigs) }
func newSecHist() *hdr.Histogram { return hdr.New(histMin, histMax, secSigFigs) }

// recorder collects one phase of a run (the whole run, or one rate of a
// ramp). Goroutines count into a tally of their own and flush it with one
// lock per batch; the live progress reads under the same lock.
type recorder struct {
	start time.Time // the phase's time 0 (monotonic)

	mu       sync.Mutex
	frozen   bool // the phase is over; late completions are not counted
	workers  []*hdr.Histogram
	c        counts
	first    int64 // ns of the first send, -1 before
	last     int64 // ns of the last answer, timeout or error
	secs     []second
	lastShow counts // at the previous progress line
	firstErr string
}

// counts are a recorder's (or tally's) counters.
type counts struct {
	sent, answered, timeouts, errors, malformed, unsent uint64
	bytesSent, bytesRecv                                uint64
	rcodes                                              [rcodeSlots]uint64
}

func (c *counts) add(o *counts) {
	c.sent += o.sent
	c.answered += o.answered
	c.timeouts += o.timeouts
	c.errors += o.errors
	c.malformed += o.malformed
	c.unsent += o.unsent
	c.bytesSent += o.bytesSent
	c.bytesRecv += o.bytesRecv
	for i, n := range o.rcodes {
		c.rcodes[i] += n
	}
}

// second is one second of the timeline.
type second struct {
	sent, answered, timeouts uint64
	hist                     *hdr.Histogram
}

func newRecorder(start time.Time) *recorder {
	return &recorder{start: start, first: -1}
}

// worker adds a histogram for one worker (a socket, a shard of slots) and
// returns a tally that records into it.
func (r *recorder) worker() *tally {
	r.mu.Lock()
	defer r.mu.Unlock()
	h := newHist()
	r.workers = append(r.workers, h)
	return &tally{r: r, hist: h}
}

// resetClock sets the phase's time 0 to now: a transport calls it once its
// sockets and slots are ready, so that an open loop's schedule does not
// start behind by the setup.
func (r *recorder) resetClock() {
	r.mu.Lock()
	r.start = time.Now()
	r.mu.Unlock()
}

// now is the time since the phase's start, in ns.
func (r *recorder) now() int64 { return int64(time.Since(r.start)) }

// sec returns the timeline entry of t (ns); r.mu held.
func (r *recorder) sec(t int64) *second {
	i := int(t / int64(time.Second))
	if i < 0 {
		i = 0
	}
	for len(r.secs) <= i {
		r.secs = append(r.secs, second{hist: newSecHist()})
	}
	return &r.secs[i]
}

// freeze ends the phase: later flushes are dropped.
func (r *recorder) freeze() {
	r.mu.Lock()
	r.frozen = true
	r.mu.Unlock()
}

// tally is one goroutine's unflushed events. Not safe for concurrent use;
// the callback path, where completions arrive on many goroutines, records
// through a tally under its own mutex.
type tally struct {
	r    *recorder
	hist *hdr.Histogram // the worker's, written under r.mu
	c    counts
	lat  [tallyMax]int64 // µs
	n    int
	// firstSend is the ns of the first send in the tally (-1: none).
	sentAny bool
	sentAt  int64
	err     string // the first error's text, until flushed
}

// sent counts n queries of size bytes in all sent at t (ns).
func (t *tally) sent(at int64, n int, bytes int) {
	if !t.sentAny {
		t.sentAny, t.sentAt = true, at
	}
	t.c.sent += uint64(n)
	t.c.bytesSent += uint64(bytes)
}

// answer counts an answer of size bytes with rcode after latency ns; it
// flushes when the tally is full.
func (t *tally) answer(latency int64, rcode int, bytes int) {
	us := max(latency/1000, histMin)
	t.lat[t.n] = min(us, histMax)
	t.n++
	t.c.answered++
	t.c.bytesRecv += uint64(bytes)
	t.c.rcodes[rcode&0xf]++
	if t.n == tallyMax {
		t.flush()
	}
}

func (t *tally) timeout() { t.c.timeouts++ }
func (t *tally) fail()    { t.c.errors++ }

// failErr counts an error and keeps its text if it is the first one.
func (t *tally) failErr(err error) {
	t.c.errors++
	if t.err == "" && err != nil {
		t.err = err.Error()
	}
}
func (t *tally) malformed() { t.c.errors++; t.c.malformed++ }

// note keeps err's text if it is the first error, without counting it:
// for an error that belongs to no one query (an ICMP error on a UDP
// socket), whose queries are counted when they time out.
func (t *tally) note(err error) {
	if t.err == "" && err != nil {
		t.err = err.Error()
	}
}
func (t *tally) unsent() { t.c.unsent++ }

// empty reports whether there is nothing to flush.
func (t *tally) empty() bool { return t.n == 0 && t.c == counts{} && t.err == "" }

// flush moves the tally into the recorder.
func (t *tally) flush() {
	if t.empty() {
		return
	}
	r := t.r
	r.mu.Lock()
	if !r.frozen {
		now := r.now()
		s := r.sec(now)
		for _, us := range t.lat[:t.n] {
			_ = t.hist.RecordValue(us) // in range by construction
			_ = s.hist.RecordValue(us)
		}
		s.sent += t.c.sent
		s.answered += t.c.answered
		s.timeouts += t.c.timeouts
		r.c.add(&t.c)
		if r.firstErr == "" {
			r.firstErr = t.err
		}
		if t.sentAny && (r.first < 0 || t.sentAt < r.first) {
			r.first = t.sentAt
		}
		if t.n > 0 || t.c.timeouts > 0 || t.c.errors > 0 {
			r.last = max(r.last, now)
		}
	}
	r.mu.Unlock()
	t.n = 0
	t.c = counts{}
	t.sentAny = false
	t.err = ""
}

// progress is what the live line shows: the totals and the last full
// second.
type progress struct {
	elapsed          time.Duration
	qps              float64 // answers per second since the previous line
	sent, answered   uint64
	timeouts, errors uint64
	p50, p99         time.Duration // of the last full second
	haveLatency      bool
}

// show returns the progress since the previous call, over the interval
// dt.
func (r *recorder) show(dt time.Duration) progress {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.now()
	p := progress{
		elapsed:  time.Duration(now),
		sent:     r.c.sent,
		answered: r.c.answered,
		timeouts: r.c.timeouts,
		errors:   r.c.errors,
		qps:      float64(r.c.answered-r.lastShow.answered) / dt.Seconds(),
	}
	r.lastShow = r.c
	if i := int(now/int64(time.Second)) - 1; i >= 0 && i < len(r.secs) && r.secs[i].hist.TotalCount() > 0 {
		h := r.secs[i].hist
		p.p50 = time.Duration(h.ValueAtQuantile(50)) * time.Microsecond
		p.p99 = time.Duration(h.ValueAtQuantile(99)) * time.Microsecond
		p.haveLatency = true
	}
	return p
}

// spectrumPercentiles are Report.Spectrum's.
var spectrumPercentiles = []float64{0, 50, 75, 90, 95, 99, 99.9, 99.99, 100}

func ms(us int64) float64 { return float64(us) / 1000 }

func latencyOf(h *hdr.Histogram) Latency {
	if h.TotalCount() == 0 {
		return Latency{}
	}
	return Latency{
		Mean: h.Mean() / 1000,
		P50:  ms(h.ValueAtQuantile(50)),
		P90:  ms(h.ValueAtQuantile(90)),
		P99:  ms(h.ValueAtQuantile(99)),
		P999: ms(h.ValueAtQuantile(99.9)),
		Max:  ms(h.Max()),
	}
}

// result is a finished phase: its merged histogram and counters.
type result struct {
	hist     *hdr.Histogram
	c        counts
	seconds  float64
	secs     []second
	firstErr string
}

// result merges the workers' histograms; call after the phase's
// goroutines have flushed.
func (r *recorder) result() *result {
	r.mu.Lock()
	defer r.mu.Unlock()
	res := &result{hist: newHist(), c: r.c, secs: r.secs, firstErr: r.firstErr}
	for _, h := range r.workers {
		res.hist.Merge(h)
	}
	if r.first >= 0 && r.last > r.first {
		res.seconds = float64(r.last-r.first) / 1e9
	}
	return res
}

// merge adds a later phase's result after res.
func (res *result) merge(o *result) {
	res.hist.Merge(o.hist)
	res.c.add(&o.c)
	res.seconds += o.seconds
	res.secs = append(res.secs, o.secs...)
	if res.firstErr == "" {
		res.firstErr = o.firstErr
	}
}

// fill sets the report's counters, latency, spectrum and timeline.
func (res *result) fill(rep *Report) {
	c := &res.c
	rep.Seconds = res.seconds
	rep.Sent, rep.Answered, rep.Timeouts, rep.Errors = c.sent, c.answered, c.timeouts, c.errors
	rep.Malformed, rep.Unsent = c.malformed, c.unsent
	rep.BytesSent, rep.BytesRecv = c.bytesSent, c.bytesRecv
	rep.FirstError = res.firstErr
	if res.seconds > 0 {
		rep.QPS = float64(c.answered) / res.seconds
	}
	rep.Rcodes = map[string]uint64{}
	for rc, n := range c.rcodes {
		if n == 0 {
			continue
		}
		name, ok := dns.RcodeToString[rc]
		if !ok {
			name = "RCODE" + strconv.Itoa(rc)
		}
		rep.Rcodes[name] = n
	}
	rep.Latency = latencyOf(res.hist)
	rep.Spectrum = rep.Spectrum[:0]
	for _, p := range spectrumPercentiles {
		v := 0.0
		if res.hist.TotalCount() > 0 {
			v = ms(res.hist.ValueAtQuantile(p))
		}
		rep.Spectrum = append(rep.Spectrum, Quantile{Percentile: p, Ms: v})
	}
	rep.Timeline = rep.Timeline[:0]
	for i, s := range res.secs {
		e := Second{T: i, Sent: s.sent, Answered: s.answered, Timeouts: s.timeouts}
		if s.hist.TotalCount() > 0 {
			e.P50, e.P99 = ms(s.hist.ValueAtQuantile(50)), ms(s.hist.ValueAtQuantile(99))
		}
		rep.Timeline = append(rep.Timeline, e)
	}
}
