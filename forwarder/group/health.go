package group

import (
	"math/bits"
	"sync"
	"sync/atomic"
	"time"
)

// target is one member with its health.
type target struct {
	up      Exchanger
	name    string
	timeout time.Duration

	// Read without locking by selection and hedging.
	healthy atomic.Bool
	drained atomic.Bool  // taken out of rotation by the operator (Group.SetDrained)
	ewma    atomic.Int64 // ns; 0 = never answered
	p95     atomic.Int64 // ns; 0 = not enough samples

	attempts, failures, hedges atomic.Uint64
	// inflight counts the attempts started and not yet settled or
	// abandoned; each chain slot moves it once each way (aslot.live).
	inflight atomic.Int64

	mu    sync.Mutex // guards what follows; written only with it held: healthy, ewma, p95
	fails int        // consecutive failures
	oks   int        // consecutive successes while down
	hist  histogram
}

// succeeded records an answer after rtt. Probe round trips feed the EWMA
// but not the hedge histogram: a probe's name is always cached upstream and
// would make the target look faster than queries find it.
func (t *target) succeeded(rtt time.Duration, recoverAfter int, probe bool) {
	rtt = max(rtt, 1) // EWMA 0 means "never answered"
	t.mu.Lock()
	t.fails = 0
	if old := t.ewma.Load(); old == 0 {
		t.ewma.Store(int64(rtt))
	} else {
		t.ewma.Store(old + (int64(rtt)-old)/5)
	}
	if !probe {
		if p, ok := t.hist.add(rtt); ok {
			t.p95.Store(int64(p))
		}
	}
	if !t.healthy.Load() {
		t.oks++
		if t.oks >= recoverAfter {
			t.oks = 0
			t.healthy.Store(true)
		}
	}
	t.mu.Unlock()
}

// failed records a failure; failAfter in a row mark the target down.
func (t *target) failed(failAfter int) {
	t.mu.Lock()
	t.oks = 0
	t.fails++
	if t.fails >= failAfter && t.healthy.Load() {
		t.healthy.Store(false)
	}
	t.mu.Unlock()
}

// overtaken records that t had not answered after elapsed when another
// target's answer won.
func (t *target) overtaken(elapsed time.Duration) {
	t.mu.Lock()
	if old := t.ewma.Load(); old != 0 && int64(elapsed) > old {
		t.ewma.Store(old + (int64(elapsed)-old)/5)
	}
	t.mu.Unlock()
}

// Latency histogram: bucket 0 holds everything under 1µs, then histSub
// buckets per octave up to 2^histTopShift ns (~137s); the last bucket also
// holds everything slower.
const (
	histLowShift   = 10
	histTopShift   = 37
	histSub        = 4
	histBuckets    = (histTopShift-histLowShift)*histSub + 1
	histMinSamples = 16  // fewer samples: no p95
	histHalveAt    = 512 // halve the counts when they sum to this: a window of the last 256..512 samples
	histEvery      = 4   // recompute the p95 every histEvery samples
)

type histogram struct {
	n     [histBuckets]uint32
	total uint32
	since uint32 // samples since the p95 was computed
}

func bucketOf(d time.Duration) int {
	ns := uint64(max(d, 0))
	if ns < 1<<histLowShift {
		return 0
	}
	e := bits.Len64(ns) - 1 // 2^e <= ns < 2^(e+1)
	sub := int(ns>>(e-2)) & (histSub - 1)
	return min((e-histLowShift)*histSub+sub+1, histBuckets-1)
}

// bucketUpper is the (exclusive) upper bound of bucket i.
func bucketUpper(i int) time.Duration {
	if i == 0 {
		return 1 << histLowShift
	}
	i--
	e, sub := i/histSub+histLowShift, i%histSub
	return time.Duration(uint64(histSub+sub+1) << (e - 2))
}

// add counts d and returns the p95 when it was recomputed.
func (h *histogram) add(d time.Duration) (time.Duration, bool) {
	h.n[bucketOf(d)]++
	h.total++
	h.since++
	if h.total >= histHalveAt {
		h.total = 0
		for i := range h.n {
			h.n[i] /= 2
			h.total += h.n[i]
		}
	}
	if h.total < histMinSamples || (h.since < histEvery && h.total > histMinSamples) {
		return 0, false
	}
	h.since = 0
	return h.quantile(0.95), true
}

// quantile returns the upper bound of the bucket holding quantile q.
func (h *histogram) quantile(q float64) time.Duration {
	need := uint32(q*float64(h.total) + 0.999999)
	var sum uint32
	for i, n := range h.n {
		sum += n
		if sum >= need {
			return bucketUpper(i)
		}
	}
	return bucketUpper(histBuckets - 1)
}
