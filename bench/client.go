package bench

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"xdoh/forwarder/upstream"
)

// newTransport picks the transport for a target: the rig's own UDP
// sockets for Do53 over UDP, and xdoh's upstream clients (the ones the
// forwarder uses) for TCP, DoT, DoH POST and GET, and DoQ.
func newTransport(tr string, cfg *Config) (transport, error) {
	switch tr {
	case "udp":
		return newUDP(cfg.Target, cfg)
	case "udp-xdp":
		return newXDP(cfg)
	default:
		var method string
		if tr == "https-get" {
			method = upstream.MethodGET
		}
		u, err := upstream.New(cfg.Target, upstream.Options{
			CAFile:     cfg.CAFile,
			ServerName: cfg.ServerName,
			Timeout:    cfg.Timeout,
			Conns:      cfg.Clients,
			Method:     method,
			Prewarm:    true,
		})
		if err != nil {
			return nil, err
		}
		return &clientTransport{up: u}, nil
	}
}

// parseDo53 parses "IP[:port]" or "udp://IP[:port]".
func parseDo53(target string) (netip.AddrPort, error) {
	s := target
	if i := strings.Index(s, "://"); i >= 0 {
		s = s[i+3:]
	}
	if a, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(s, "["), "]")); err == nil {
		return netip.AddrPortFrom(a.Unmap(), 53), nil
	}
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("target %q: want IP[:port] ([v6]:port): %w", target, err)
	}
	if ap.Port() == 0 {
		return netip.AddrPort{}, fmt.Errorf("target %q: port 0", target)
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
}

// clientTransport drives an upstream.Upstream: Submit never blocks and
// calls back once per query, so a closed loop submits the next query
// from each completion and an open loop submits from one scheduler.
type clientTransport struct {
	up upstream.Upstream
}

func (t *clientTransport) Close() error { return t.up.Close() }

// clientShards spreads the slots' histograms (and tally locks) so that
// completions on many goroutines do not queue on one lock.
const clientShards = 8

// clientSlot is one query in flight; its done is bound once.
type clientSlot struct {
	run   *clientRun
	shard *clientShard
	rng   *rand.Rand
	sched int64 // ns from the phase's start
	buf   [MaxQuery]byte
	qlen  int
	done  func(resp []byte, err error)
}

type clientShard struct {
	mu      sync.Mutex
	t       *tally
	flushed int64 // ns of the last flush
}

// flushEvery bounds how stale the live progress is.
const flushEvery = 50 * time.Millisecond

// clientRun is one phase on a clientTransport.
type clientRun struct {
	t        *clientTransport
	p        *phase
	seq      atomic.Uint64
	inflight atomic.Int64
	idle     chan struct{} // signalled when inflight drops to 0 after the end
	free     chan *clientSlot
	retry    chan *clientSlot
	shards   [clientShards]clientShard
}

func (t *clientTransport) run(ctx context.Context, p *phase) error {
	r := &clientRun{t: t, p: p, idle: make(chan struct{}, 1)}
	for i := range r.shards {
		r.shards[i].t = p.rec.worker()
	}
	n := p.outstanding
	if p.open() {
		// As many as the rate keeps in flight for the timeout, with room.
		n = 4096
		if p.rate > 0 {
			n = int(min(200_000, max(256, 2*p.rate*p.cfg.Timeout.Seconds())))
		}
		if l := p.src.Len(); l > 0 {
			n = int(min(uint64(n), l))
		}
	}
	slots := make([]clientSlot, n)
	r.free = make(chan *clientSlot, n)
	r.retry = make(chan *clientSlot, n)
	for i := range slots {
		s := &slots[i]
		s.run, s.shard = r, &r.shards[i%clientShards]
		s.rng = rand.New(rand.NewPCG(rand.Uint64(), uint64(i)))
		s.done = s.complete
		r.free <- s
	}
	p.begin()
	retryDone := make(chan struct{})
	go r.retrier(retryDone)
	if p.open() {
		r.schedule()
	} else {
		for range n {
			if !r.submit(<-r.free, p.rec.now()) {
				break
			}
		}
		<-p.stop
	}
	// Wait for the queries in flight: each completes by its timeout.
	deadline := time.NewTimer(p.cfg.Timeout + time.Second)
	defer deadline.Stop()
	for r.inflight.Load() > 0 {
		select {
		case <-r.idle:
		case <-deadline.C:
			r.inflight.Store(0)
		case <-time.After(10 * time.Millisecond):
		}
	}
	close(retryDone)
	for i := range r.shards {
		sh := &r.shards[i]
		sh.mu.Lock()
		sh.t.flush()
		sh.mu.Unlock()
	}
	return nil
}

// submit sends the next query on slot s, scheduled at sched; false once
// the phase has no more queries (the slot is then free).
func (r *clientRun) submit(s *clientSlot, sched int64) bool {
	p := r.p
	seq := r.seq.Add(1) - 1
	if !p.more(seq) {
		r.free <- s
		if p.timed != nil || p.count > 0 || p.src.Len() > 0 {
			p.end() // the count or the source ends the phase
		}
		return false
	}
	q, ok := p.src.Next(seq, s.rng, s.buf[:])
	if !ok {
		r.free <- s
		p.end()
		return false
	}
	binary.BigEndian.PutUint16(q, uint16(seq))
	s.qlen = len(q)
	s.sched = sched
	r.inflight.Add(1)
	s.shard.mu.Lock()
	s.shard.t.sent(p.rec.now(), 1, len(q))
	s.shard.mu.Unlock()
	r.t.up.Submit(q, p.cfg.Timeout, s.done)
	return true
}

// complete is a slot's Submit callback.
func (s *clientSlot) complete(resp []byte, err error) {
	r := s.run
	p := r.p
	now := p.rec.now()
	sh := s.shard
	sh.mu.Lock()
	switch {
	case err == nil && len(resp) >= 12:
		sh.t.answer(now-s.sched, int(resp[3]&0xf), len(resp))
	case errors.Is(err, upstream.ErrTimeout):
		sh.t.timeout()
	case errors.Is(err, upstream.ErrBadResponse):
		sh.t.malformed()
		if sh.t.err == "" {
			sh.t.err = err.Error()
		}
	default:
		if err == nil {
			err = fmt.Errorf("%w: %d octets", upstream.ErrBadResponse, len(resp))
		}
		sh.t.failErr(err)
	}
	if now-sh.flushed > int64(flushEvery) {
		sh.t.flush()
		sh.flushed = now
	}
	sh.mu.Unlock()
	r.inflight.Add(-1)
	switch {
	case p.open():
		r.free <- s
	case p.stopped.Load():
		r.free <- s
	case err != nil:
		// A failure can come back at once (a dead target): resubmit
		// from the retrier, which paces, not from this stack.
		r.retry <- s
	default:
		r.submit(s, now)
	}
	if p.stopped.Load() && r.inflight.Load() == 0 {
		select {
		case r.idle <- struct{}{}:
		default:
		}
	}
}

// retrier resubmits the slots whose query failed, a millisecond apart.
func (r *clientRun) retrier(done <-chan struct{}) {
	for {
		select {
		case s := <-r.retry:
			if r.p.stopped.Load() {
				r.free <- s
				continue
			}
			time.Sleep(time.Millisecond)
			r.submit(s, r.p.rec.now())
		case <-done:
			return
		}
	}
}

// countMissed counts as unsent the queries from seq on whose scheduled
// time fell within the phase's time limit: the scheduler, late (a busy
// machine), had not reached them when the phase ended. Without this the
// rig would hide its own lag, as a closed loop does.
func (r *clientRun) countMissed(seq uint64) {
	p := r.p
	if p.limit <= 0 || p.timed != nil {
		return
	}
	var n uint64
	for s := seq; p.sched(s) < int64(p.limit) && (p.count == 0 || s < p.count) && (p.src.Len() == 0 || s < p.src.Len()); s++ {
		n++
	}
	sh := &r.shards[0]
	sh.mu.Lock()
	sh.t.c.unsent += n
	sh.mu.Unlock()
}

// schedule is the open loop: it submits each query at its time, with
// latency measured from that time; a query for which no slot is free is
// counted unsent.
func (r *clientRun) schedule() {
	p := r.p
	sh := &r.shards[0]
	for {
		seq := r.seq.Load()
		if !p.more(seq) {
			r.countMissed(seq)
			p.end()
			return
		}
		at := p.sched(seq)
		now := p.rec.now()
		if at > now {
			select {
			case <-p.stop:
				r.countMissed(r.seq.Load())
				return
			case <-time.After(time.Duration(min(at-now, int64(10*time.Millisecond)))):
			}
			continue
		}
		select {
		case s := <-r.free:
			r.submit(s, at)
		default:
			r.seq.Add(1)
			sh.mu.Lock()
			sh.t.unsent()
			sh.mu.Unlock()
		}
	}
}
