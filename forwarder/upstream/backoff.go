package upstream

import (
	"math/rand/v2"
	"sync"
	"time"
)

// Dial backoff: 50ms doubling to 2s, each delay spread by ±20%.
const (
	minDialBackoff = 50 * time.Millisecond
	maxDialBackoff = 2 * time.Second
	backoffJitter  = 0.2
)

// backoff spaces out dials to a target after failures, whichever slot they
// were for, so that a dead target is not hammered. The jitter keeps the
// many upstream objects of a fleet that lost a target at the same moment
// from redialling it in lockstep.
type backoff struct {
	rand func() float64 // uniform in [0, 1); nil: math/rand/v2

	mu       sync.Mutex
	failures int
	retryAt  time.Time
	err      error
}

// check returns the last dial error while dials are suspended.
func (b *backoff) check(now time.Time) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.failures > 0 && now.Before(b.retryAt) {
		return b.err
	}
	return nil
}

// record notes the outcome of a dial: nil resets the backoff.
func (b *backoff) record(err error, now time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if err == nil {
		b.failures, b.err = 0, nil
		return
	}
	b.failures++
	b.err = err
	b.retryAt = now.Add(b.delayLocked())
}

// delayLocked is the pause after the current number of failures.
func (b *backoff) delayLocked() time.Duration {
	d := min(minDialBackoff<<min(b.failures-1, 10), maxDialBackoff)
	r := rand.Float64
	if b.rand != nil {
		r = b.rand
	}
	return time.Duration(float64(d) * (1 - backoffJitter + 2*backoffJitter*r()))
}
