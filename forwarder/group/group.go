package group

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
)

// Exchanger sends queries to one target without blocking its caller
// (forwarder/upstream's DoH and Do53 upstreams are Exchangers). Submit
// calls done exactly once, within timeout (0: the target's own limit),
// with the response carrying the query's ID or an error, unless the query
// is cancelled. It does not retain query; done must not block and owns the
// response. The Canceler it returns (nil if done has already been called;
// non-nil does not promise it has not) abandons the query, freeing what it
// holds upstream; done is then not called unless it already has been or is
// being called. Cancel must not be called with a lock that done takes.
type Exchanger interface {
	Submit(query []byte, timeout time.Duration, done func(resp []byte, err error)) Canceler
	String() string
}

// Canceler abandons a submitted query. An alias of the interface literal,
// so that forwarder/upstream's own alias of it is the same type.
type Canceler = interface{ Cancel() }

// Verdict is the caller's judgement of one response.
type Verdict uint8

const (
	// Good: the answer to give the client.
	Good Verdict = iota
	// Fallback: a well-formed answer that says the target could not help
	// (SERVFAIL, REFUSED); used only if no target gives a Good one. The
	// target is alive, so it counts as a success for its health.
	Fallback
	// Bad: malformed or mismatched; counts as a failure of the target.
	Bad
)

func (v Verdict) String() string {
	switch v {
	case Good:
		return "good"
	case Fallback:
		return "fallback"
	case Bad:
		return "bad"
	}
	return fmt.Sprintf("verdict(%d)", uint8(v))
}

// Member is one target of a group.
type Member struct {
	Up      Exchanger
	Timeout time.Duration // per attempt; 0 = no limit but the caller's context
}

// Config configures a Group. The zero value is usable: ordered failover,
// adaptive hedging within a 10% budget, default health thresholds.
type Config struct {
	Policy Policy
	// HedgeDelay: when the chosen target has not answered after HedgeDelay,
	// the query is also sent to the next healthy target; the first Good
	// answer wins and the other attempt is cancelled. 0 = adaptive (the
	// target's p95 latency clamped to [HedgeMin, Timeout/2]); negative =
	// hedging off.
	HedgeDelay time.Duration
	// HedgeBudget is the largest fraction of queries that may be hedged
	// (default 0.1, at most 1).
	HedgeBudget float64
	// FailAfter consecutive failures (error, timeout, Bad) mark a target
	// down (default 3).
	FailAfter int
	// RecoverAfter consecutive successful probes bring it back (default 2).
	RecoverAfter int
	// ProbeName is the name of the health probe, asked as type NS
	// (default ".").
	ProbeName string
	// ProbeInterval is the time between probe rounds (default 5s).
	ProbeInterval time.Duration
	// ProbeAll probes the up targets too, not only the down ones.
	ProbeAll bool
	// Now is the clock used to measure round trips (default time.Now).
	Now func() time.Time
}

// Defaults and bounds.
const (
	DefaultHedgeBudget   = 0.1
	DefaultFailAfter     = 3
	DefaultRecoverAfter  = 2
	DefaultProbeName     = "."
	DefaultProbeInterval = 5 * time.Second
	// HedgeMin is the shortest adaptive hedge delay.
	HedgeMin = 2 * time.Millisecond
)

const (
	// hedgeUnknown is the adaptive hedge delay of a target without enough
	// samples when neither its Timeout nor the context bounds it.
	hedgeUnknown = 100 * time.Millisecond
	// hedgeBurst is the capacity of the hedge token bucket, in hedges.
	hedgeBurst = 5
	// tokenUnit is one hedge in the fixed-point token bucket.
	tokenUnit = 1 << 20
	// exploreEvery: under Fastest, one query in exploreEvery goes first to
	// another healthy target than the fastest.
	exploreEvery = 32
	// maxStackTargets is how many targets an order is computed for without
	// allocating.
	maxStackTargets = 16
)

// Errors returned by Exchange, to be tested with errors.Is.
var (
	// ErrNoAnswer: no target gave a Good or Fallback answer. It is wrapped
	// together with the last target's error and, when the context ended
	// the query, the context's error.
	ErrNoAnswer = errors.New("no target answered")
	// ErrRejected: a target's response was judged Bad.
	ErrRejected = errors.New("response rejected")
	// ErrDrained: every target of the group is drained (SetDrained), so
	// the query was not sent anywhere. It is wrapped with ErrNoAnswer.
	ErrDrained = errors.New("every target is drained")
)

// Group chooses among the targets of one rule. It is safe for concurrent use.
type Group struct {
	cfg     Config
	targets []*target
	now     func() time.Time

	seq      atomic.Uint64 // queries: round robin rotation, exploration
	tokens   atomic.Int64  // hedge budget, in tokenUnit per hedge
	tokenAdd int64         // earned per query
	probeMsg []byte        // packed probe query, ID to be set

	mu     sync.Mutex // guards the prober's lifecycle
	stop   context.CancelFunc
	done   chan struct{}
	closed bool
}

// State is a snapshot of one target.
type State struct {
	Target   string
	Up       bool
	Drained  bool          // taken out of rotation (SetDrained)
	EWMA     time.Duration // 0 until the first answer
	P95      time.Duration // recent p95 of query round trips; 0 until 16 answers
	Inflight int64         // attempts sent to it and not yet answered or abandoned
	Attempts uint64        // query attempts sent to it, hedges included; probes not
	Failures uint64        // attempts that failed: error, timeout, Bad response
	Hedges   uint64        // hedged attempts sent to it
}

// New validates cfg, fills in its defaults and builds a group of members,
// all of them up.
func New(members []Member, cfg Config) (*Group, error) {
	if len(members) == 0 {
		return nil, errors.New("building group: no members")
	}
	switch cfg.Policy {
	case Ordered, RoundRobin, Fastest:
	default:
		return nil, fmt.Errorf("building group: unknown policy %d", cfg.Policy)
	}
	if cfg.HedgeBudget == 0 {
		cfg.HedgeBudget = DefaultHedgeBudget
	}
	if !(cfg.HedgeBudget > 0 && cfg.HedgeBudget <= 1) { // catches NaN
		return nil, fmt.Errorf("building group: HedgeBudget %v is not in (0, 1]", cfg.HedgeBudget)
	}
	if cfg.FailAfter < 0 || cfg.RecoverAfter < 0 {
		return nil, fmt.Errorf("building group: negative FailAfter %d or RecoverAfter %d", cfg.FailAfter, cfg.RecoverAfter)
	}
	if cfg.FailAfter == 0 {
		cfg.FailAfter = DefaultFailAfter
	}
	if cfg.RecoverAfter == 0 {
		cfg.RecoverAfter = DefaultRecoverAfter
	}
	if cfg.ProbeInterval < 0 {
		return nil, fmt.Errorf("building group: negative ProbeInterval %v", cfg.ProbeInterval)
	}
	if cfg.ProbeInterval == 0 {
		cfg.ProbeInterval = DefaultProbeInterval
	}
	if cfg.ProbeName == "" {
		cfg.ProbeName = DefaultProbeName
	}
	if _, ok := dns.IsDomainName(cfg.ProbeName); !ok {
		return nil, fmt.Errorf("building group: ProbeName %q is not a domain name", cfg.ProbeName)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	probe := new(dns.Msg)
	probe.SetQuestion(dns.Fqdn(cfg.ProbeName), dns.TypeNS)
	probeMsg, err := probe.Pack()
	if err != nil {
		return nil, fmt.Errorf("building group: packing probe for %q: %w", cfg.ProbeName, err)
	}
	g := &Group{cfg: cfg, now: cfg.Now, probeMsg: probeMsg,
		tokenAdd: int64(cfg.HedgeBudget * tokenUnit)}
	g.tokens.Store(tokenUnit)
	for i, m := range members {
		if m.Up == nil {
			return nil, fmt.Errorf("building group: members[%d]: no upstream", i)
		}
		if m.Timeout < 0 {
			return nil, fmt.Errorf("building group: members[%d] (%s): negative timeout %v", i, m.Up, m.Timeout)
		}
		t := &target{up: m.Up, name: m.Up.String(), timeout: m.Timeout}
		t.healthy.Store(true)
		g.targets = append(g.targets, t)
	}
	return g, nil
}

// States returns a snapshot of the targets, in configured order.
func (g *Group) States() []State {
	out := make([]State, len(g.targets))
	for i, t := range g.targets {
		out[i] = State{
			Target: t.name, Up: t.healthy.Load(), Drained: t.drained.Load(),
			EWMA: time.Duration(t.ewma.Load()), P95: time.Duration(t.p95.Load()), Inflight: t.inflight.Load(),
			Attempts: t.attempts.Load(), Failures: t.failures.Load(), Hedges: t.hedges.Load(),
		}
	}
	return out
}

// SetDrained takes every member named target (its String) out of rotation
// (on) or puts it back, and returns how many it found. A drained target
// gets no new query, no hedge and no probe, whether it is up or down;
// attempts already sent to it run to their end. Its health stays as it
// was. When every target is drained, a query fails at once with
// ErrDrained: draining is the operator's word, and a drained target is not
// a last resort the way a down one is.
func (g *Group) SetDrained(target string, on bool) int {
	n := 0
	for _, t := range g.targets {
		if t.name == target {
			t.drained.Store(on)
			n++
		}
	}
	return n
}

// Exchange is ExchangeAsync for a caller that waits: it returns what
// ExchangeAsync would pass to done, or, when ctx ends first, abandons the
// query (its attempts are cancelled and count for nothing) and returns an
// error wrapping ErrNoAnswer and ctx's error. The query's deadline is ctx's
// (none: each attempt is bounded by its member's timeout alone).
// classify may run on another goroutine, but never after Exchange has
// returned.
func (g *Group) Exchange(ctx context.Context, query []byte, classify func([]byte) Verdict) (resp []byte, target string, err error) {
	if err := ctx.Err(); err != nil {
		return nil, "", fmt.Errorf("%w: %w", ErrNoAnswer, err)
	}
	type settled struct { // what done was given
		resp   []byte
		target string
		err    error
	}
	ch := make(chan settled, 1)
	deadline, _ := ctx.Deadline()
	c := g.start(query, deadline, classify, true, func(resp []byte, target string, err error) {
		ch <- settled{resp, target, err}
	})
	select {
	case o := <-ch:
		return o.resp, o.target, o.err
	case <-ctx.Done():
		if !c.Cancel() { // done has been called: its outcome stands
			o := <-ch
			return o.resp, o.target, o.err
		}
		return nil, c.tried(), fmt.Errorf("%w: %w", ErrNoAnswer, ctx.Err())
	}
}

func allGood([]byte) Verdict { return Good }

// settle judges one finished attempt and records it in its target's health.
// It returns Bad with the error for a failure.
func (g *Group) settle(gaveUp bool, t *target, resp []byte, err error, rtt time.Duration, classify func([]byte) Verdict) (Verdict, error) {
	if err == nil {
		v := classify(resp)
		if v == Good || v == Fallback {
			t.succeeded(rtt, g.cfg.RecoverAfter, false)
			return v, nil
		}
		err = ErrRejected
	} else if gaveUp {
		return Bad, err // the caller gave up: nothing learnt about the target
	}
	t.failures.Add(1)
	t.failed(g.cfg.FailAfter)
	return Bad, err
}

// outcome collects what a query's failed attempts left.
type outcome struct {
	fallback        []byte
	fallbackFrom    string
	lastErr         error
	lastFrom, tried string
}

func (o *outcome) add(t *target, v Verdict, resp []byte, err error) {
	switch {
	case v == Fallback && o.fallback == nil:
		o.fallback, o.fallbackFrom = resp, t.name
	case v == Bad:
		o.lastErr, o.lastFrom = err, t.name
	}
}

// result is the query's outcome after its last attempt; cerr is why the
// caller's context ended, nil if it has not.
func (o *outcome) result(cerr error) ([]byte, string, error) {
	if o.fallback != nil {
		return o.fallback, o.fallbackFrom, nil
	}
	switch {
	case o.tried == "" && cerr == nil: // no target to try
		return nil, "", fmt.Errorf("%w: %w", ErrNoAnswer, ErrDrained)
	case o.lastErr == nil:
		return nil, o.tried, fmt.Errorf("%w: %w", ErrNoAnswer, cerr)
	case cerr != nil && !errors.Is(o.lastErr, cerr):
		return nil, o.tried, fmt.Errorf("%w: %w (last error from %s: %w)", ErrNoAnswer, cerr, o.lastFrom, o.lastErr)
	}
	return nil, o.tried, fmt.Errorf("%w: %s: %w", ErrNoAnswer, o.lastFrom, o.lastErr)
}

// earn adds one query's share to the hedge budget.
func (g *Group) earn() {
	const capacity = hedgeBurst * tokenUnit
	for {
		old := g.tokens.Load()
		if old >= capacity {
			return // no write: a saturated bucket costs no cache-line traffic
		}
		if g.tokens.CompareAndSwap(old, min(old+g.tokenAdd, capacity)) {
			return
		}
	}
}

// spend takes one hedge from the budget if there is one.
func (g *Group) spend() bool {
	for {
		old := g.tokens.Load()
		if old < tokenUnit {
			return false
		}
		if g.tokens.CompareAndSwap(old, old-tokenUnit) {
			return true
		}
	}
}

// hedgeDelayUntil is how long a query ending at dl (if ok) waits for t
// before hedging.
func (g *Group) hedgeDelayUntil(dl time.Time, ok bool, t *target) time.Duration {
	if g.cfg.HedgeDelay > 0 {
		return g.cfg.HedgeDelay
	}
	hi := t.timeout
	if ok {
		if left := time.Until(dl); hi <= 0 || left < hi {
			hi = left
		}
	}
	hi /= 2
	d := time.Duration(t.p95.Load())
	if d == 0 { // not enough samples yet
		d = hi
		if d <= 0 {
			d = hedgeUnknown
		}
	}
	if hi > 0 && d > hi {
		d = hi
	}
	return max(d, HedgeMin)
}

// Start starts the prober goroutine. It does nothing if the prober runs
// already or the group is closed.
func (g *Group) Start() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.done != nil || g.closed {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	g.stop, g.done = cancel, make(chan struct{})
	go g.prober(ctx, g.done)
}

// Close stops the prober and waits for it to end. Exchange keeps working
// (with passive health only).
func (g *Group) Close() {
	g.mu.Lock()
	g.closed = true
	stop, done := g.stop, g.done
	g.mu.Unlock()
	if stop != nil {
		stop()
		<-done
	}
}

func (g *Group) prober(ctx context.Context, done chan<- struct{}) {
	defer close(done)
	tick := time.NewTicker(g.cfg.ProbeInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			g.probeRound(ctx)
		}
	}
}
