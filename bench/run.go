package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Config is one run.
type Config struct {
	Target string // "IP[:port]", "udp://…", "tcp://…", "tls://…", "https://…", "quic://…"
	Get    bool   // DoH: GET instead of POST
	// XDP, for a Do53 UDP target, sends through AF_XDP on this interface
	// (transport "udp-xdp"): a socket on every receive queue receives,
	// the first Clients of them send.
	XDP     string
	Source  Source
	Clients int // sockets or connections (default 1)
	// Outstanding is the closed loop's queries in flight (default 100
	// when Rate is 0 and the source is not timed).
	Outstanding int
	// Rate is the open loop's queries per second. 0 with a Timed source:
	// its own timing.
	Rate    float64
	Timeout time.Duration // per query (default 5s)
	Limit   time.Duration // stop sending after this long (0: none)
	Count   uint64        // stop after this many queries (0: none)
	// Ramp, when set, runs open-loop steps of Limit each at rates From,
	// From+Step, … To, stopping after the first step beyond MaxP99 or
	// MaxLoss.
	Ramp *Ramp

	CAFile     string
	ServerName string

	// Progress, if set, gets a line a second; TTY redraws one line in
	// place.
	Progress io.Writer
	TTY      bool
}

// Ramp is --ramp FROM:TO:STEP with its limits.
type Ramp struct {
	From, To, Step float64
	MaxP99         time.Duration // default 100ms
	MaxLoss        float64       // 0–1, default 0.01
}

// Defaults.
const (
	DefaultTimeout     = 5 * time.Second
	DefaultOutstanding = 100
)

// Errors of a run, to be tested with errors.Is.
var (
	// ErrNoAnswers: the target answered none of the queries.
	ErrNoAnswers = errors.New("no answers")
	// ErrUnbounded: the run has no time limit, count or finite source.
	ErrUnbounded = errors.New("run is unbounded")
)

// Transport names the transport of a target, as Report.Transport.
func Transport(target string, get bool) (string, error) {
	scheme, _, found := strings.Cut(target, "://")
	if !found {
		return "udp", nil
	}
	switch s := strings.ToLower(scheme); s {
	case "udp", "tcp", "tls", "quic":
		return s, nil
	case "https":
		if get {
			return "https-get", nil
		}
		return "https-post", nil
	default:
		return "", fmt.Errorf("target %q: unsupported scheme %q (want udp, tcp, tls, https or quic)", target, scheme)
	}
}

// TargetHost returns the host of a target: an IP literal or a name.
func TargetHost(target string) (string, error) {
	scheme, rest, found := strings.Cut(target, "://")
	if !found {
		rest = target
	}
	if strings.EqualFold(scheme, "https") && found {
		u, err := url.Parse(target)
		if err != nil {
			return "", fmt.Errorf("target %q: %w", target, err)
		}
		if u.Hostname() == "" {
			return "", fmt.Errorf("target %q: missing host", target)
		}
		return u.Hostname(), nil
	}
	if i := strings.IndexAny(rest, "/?#"); i >= 0 {
		rest = rest[:i]
	}
	if a, err := netip.ParseAddr(strings.Trim(rest, "[]")); err == nil {
		return a.String(), nil
	}
	if ap, err := netip.ParseAddrPort(rest); err == nil {
		return ap.Addr().String(), nil
	}
	host := rest
	if i := strings.LastIndexByte(rest, ':'); i >= 0 {
		host = rest[:i]
	}
	host = strings.Trim(host, "[]")
	if host == "" {
		return "", fmt.Errorf("target %q: missing host", target)
	}
	return host, nil
}

// IsLoopback reports whether a target's host is on loopback: an address
// in 127.0.0.0/8 or ::1, or the name localhost. Any other name counts as
// remote (resolving it would be traffic of its own).
func IsLoopback(target string) bool {
	host, err := TargetHost(target)
	if err != nil {
		return false
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.Unmap().IsLoopback()
}

// phase is one stretch of a run at one setting: the whole run, or one step
// of a ramp.
type phase struct {
	cfg         *Config
	src         Source
	rate        float64 // 0: closed loop or the source's timing
	timed       Timed   // non-nil: send at its offsets (open loop without a rate)
	outstanding int     // closed loop
	limit       time.Duration
	count       uint64 // 0: none (the source's Len applies too)
	rec         *recorder
	stop        chan struct{} // closed at the limit or on cancel
	stopped     atomic.Bool
	started     chan struct{} // closed by begin: time 0, the limit runs from here
	beginOnce   sync.Once
}

// begin is the phase's time 0: a transport calls it once its sockets and
// connections are ready, so that neither an open loop's schedule nor the
// time limit counts the setup.
func (p *phase) begin() {
	p.beginOnce.Do(func() {
		p.rec.resetClock()
		close(p.started)
	})
}

// open reports whether the phase is an open loop.
func (p *phase) open() bool { return p.rate > 0 || p.timed != nil }

// sched is query seq's scheduled send time, ns from the phase's start.
func (p *phase) sched(seq uint64) int64 {
	if p.rate > 0 {
		return int64(float64(seq) * 1e9 / p.rate)
	}
	return int64(p.timed.Offset(seq))
}

// more reports whether query seq is to be sent at all (count, source).
func (p *phase) more(seq uint64) bool {
	if p.count > 0 && seq >= p.count {
		return false
	}
	if n := p.src.Len(); n > 0 && seq >= n {
		return false
	}
	return !p.stopped.Load()
}

// end stops the senders.
func (p *phase) end() {
	if p.stopped.CompareAndSwap(false, true) {
		close(p.stop)
	}
}

// transport runs phases over one kind of connection.
type transport interface {
	// run sends the phase's queries and returns when every query has
	// been answered, has timed out or failed; everything is flushed into
	// p.rec by then.
	run(ctx context.Context, p *phase) error
	Close() error
}

// Run makes one run (or ramp) and returns its report. It fails with
// ErrNoAnswers wrapped if nothing was answered; the report is returned
// with it.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if cfg.Source == nil {
		return nil, errors.New("no query source")
	}
	tr, err := Transport(cfg.Target, cfg.Get)
	if err != nil {
		return nil, err
	}
	if cfg.XDP != "" {
		if tr != "udp" {
			return nil, fmt.Errorf("--xdp is for UDP targets, not %s", tr)
		}
		tr = "udp-xdp"
	}
	if cfg.Clients <= 0 {
		cfg.Clients = 1
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	timed, _ := cfg.Source.(Timed)
	if cfg.Rate > 0 || cfg.Ramp != nil {
		timed = nil
	}
	if cfg.Outstanding <= 0 && cfg.Rate == 0 && timed == nil {
		cfg.Outstanding = DefaultOutstanding
	}
	if cfg.Limit <= 0 && cfg.Count == 0 && cfg.Source.Len() == 0 {
		return nil, ErrUnbounded
	}
	if cfg.Ramp != nil {
		if err := cfg.Ramp.check(); err != nil {
			return nil, err
		}
		if cfg.Limit <= 0 {
			return nil, errors.New("--ramp needs -l, the length of each step")
		}
	}
	rep := &Report{
		Target:    cfg.Target,
		Transport: tr,
		Started:   time.Now(),
		Settings: Settings{
			Queries:     cfg.Source.String(),
			Clients:     cfg.Clients,
			Outstanding: cfg.Outstanding,
			Rate:        cfg.Rate,
			Timeout:     cfg.Timeout.Seconds(),
			Limit:       cfg.Limit.Seconds(),
			Count:       cfg.Count,
		},
	}
	if cfg.Rate > 0 || timed != nil || cfg.Ramp != nil {
		rep.Settings.Outstanding = 0
	}
	t, err := newTransport(tr, &cfg)
	if err != nil {
		return nil, err
	}
	defer t.Close()
	if x, ok := t.(interface{ sockets() int }); ok {
		rep.Settings.Clients = x.sockets()
	}

	var total *result
	rates := []float64{cfg.Rate}
	if cfg.Ramp != nil {
		rates = cfg.Ramp.rates()
	}
	for _, rate := range rates {
		p := &phase{
			cfg:         &cfg,
			src:         cfg.Source,
			rate:        rate,
			timed:       timed,
			outstanding: cfg.Outstanding,
			limit:       cfg.Limit,
			count:       cfg.Count,
			stop:        make(chan struct{}),
		}
		if p.open() {
			p.outstanding = 0
		}
		res, err := runPhase(ctx, t, p)
		if err != nil {
			return nil, err
		}
		if total == nil {
			total = res
		} else {
			total.merge(res)
		}
		if cfg.Ramp != nil {
			st := cfg.Ramp.step(rate, res)
			rep.Steps = append(rep.Steps, st)
			if st.Exceeded {
				break
			}
		}
		if ctx.Err() != nil {
			break
		}
	}
	total.fill(rep)
	if rep.Answered == 0 {
		return rep, noAnswers(cfg.Target, rep)
	}
	return rep, nil
}

// noAnswers explains a run without answers.
func noAnswers(target string, rep *Report) error {
	switch {
	case rep.Sent == 0:
		return fmt.Errorf("%w from %s: no query could be sent (%d errors)", ErrNoAnswers, target, rep.Errors)
	case rep.Malformed > 0:
		return fmt.Errorf("%w from %s: %d replies were not answers to our queries (not DNS, wrong ID or question); %d of %d queries timed out",
			ErrNoAnswers, target, rep.Malformed, rep.Timeouts, rep.Sent)
	default:
		return fmt.Errorf("%w from %s: %d of %d queries timed out, %d failed (%s)",
			ErrNoAnswers, target, rep.Timeouts, rep.Sent, rep.Errors, firstErrorOr(rep, "unreachable?"))
	}
}

func firstErrorOr(rep *Report, s string) string {
	if rep.FirstError != "" {
		return rep.FirstError
	}
	return s
}

// runPhase runs p on t with the live progress and the time limit.
func runPhase(ctx context.Context, t transport, p *phase) (*result, error) {
	p.rec = newRecorder(time.Now())
	p.started = make(chan struct{})
	done := make(chan struct{})
	go func() {
		var limit <-chan time.Time
		if p.limit > 0 {
			select { // the limit runs from the end of the setup
			case <-p.started:
			case <-ctx.Done():
			case <-done:
			}
			tm := time.NewTimer(p.limit)
			defer tm.Stop()
			limit = tm.C
		}
		select {
		case <-limit:
		case <-ctx.Done():
		case <-done:
		}
		p.end()
	}()
	progressDone := make(chan struct{})
	if w := p.cfg.Progress; w != nil {
		go func() {
			defer close(progressDone)
			showProgress(w, p.cfg.TTY, p, done)
		}()
	} else {
		close(progressDone)
	}
	err := t.run(ctx, p)
	close(done)
	<-progressDone
	p.rec.freeze()
	if err != nil {
		return nil, err
	}
	return p.rec.result(), nil
}

func (r *Ramp) check() error {
	switch {
	case !(r.From > 0) || !(r.To >= r.From) || !(r.Step > 0) || math.IsInf(r.To, 0):
		return fmt.Errorf("ramp %v:%v:%v: want 0 < FROM ≤ TO and STEP > 0", r.From, r.To, r.Step)
	case (r.To-r.From)/r.Step > 1000:
		return fmt.Errorf("ramp %v:%v:%v: more than 1000 steps", r.From, r.To, r.Step)
	}
	if r.MaxP99 <= 0 {
		r.MaxP99 = 100 * time.Millisecond
	}
	if r.MaxLoss <= 0 {
		r.MaxLoss = 0.01
	}
	return nil
}

func (r *Ramp) rates() []float64 {
	var rs []float64
	for i := 0; ; i++ {
		v := r.From + float64(i)*r.Step
		if v > r.To*(1+1e-9) {
			break
		}
		rs = append(rs, v)
	}
	return rs
}

// step summarizes one rate of a ramp.
func (r *Ramp) step(rate float64, res *result) Step {
	st := Step{Rate: rate, Latency: latencyOf(res.hist)}
	if res.seconds > 0 {
		st.QPS = float64(res.c.answered) / res.seconds
	}
	if offered := res.c.sent + res.c.unsent; offered > 0 {
		st.Loss = float64(offered-res.c.answered) / float64(offered)
	}
	st.Exceeded = st.Latency.P99 > float64(r.MaxP99)/1e6 || st.Loss > r.MaxLoss
	return st
}

// showProgress writes a line a second until done.
func showProgress(w io.Writer, tty bool, p *phase, done <-chan struct{}) {
	tk := time.NewTicker(time.Second)
	defer tk.Stop()
	last := time.Now()
	for {
		select {
		case <-done:
			if tty {
				fmt.Fprint(w, "\r\033[K")
			}
			return
		case now := <-tk.C:
			pr := p.rec.show(now.Sub(last))
			last = now
			line := fmt.Sprintf("%4.0fs %9.0f q/s  sent %d  answered %d  timeouts %d  errors %d",
				pr.elapsed.Seconds(), pr.qps, pr.sent, pr.answered, pr.timeouts, pr.errors)
			if p.rate > 0 {
				line = fmt.Sprintf("[%g q/s] ", p.rate) + line
			}
			if pr.haveLatency {
				line += fmt.Sprintf("  p50 %s  p99 %s", fmtDur(pr.p50), fmtDur(pr.p99))
			}
			if tty {
				fmt.Fprint(w, "\r\033[K"+line)
			} else {
				fmt.Fprintln(w, line)
			}
		}
	}
}

func fmtDur(d time.Duration) string {
	return fmt.Sprintf("%.3fms", float64(d)/1e6)
}
