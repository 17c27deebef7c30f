// Package forwarder is the resolution pipeline every transport feeds: parse
// the query view, answer from the cache, pick the most specific rule (local
// zone, forward, system, block) and, for forwarded names, exchange the query
// with the rule's target group (forwarder/group: policy, failover, hedging,
// health) within the client's deadline. Whatever happens the client gets an answer (SERVFAIL at worst),
// except for packets that are not queries at all, which get nothing.
//
// Every datapath (UDP, TCP, DoH) calls Answer and Resolve, which never
// block: the answer comes back through a callback. ServeDNS, the blocking
// form, runs the same pipeline for tests and tools.
package forwarder

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"sync"
	"time"

	"github.com/miekg/dns"

	"xdoh/forwarder/cache"
	"xdoh/forwarder/group"
	"xdoh/forwarder/rules"
	"xdoh/internal/dnsmsg"
)

// Exchanger sends one query to one upstream target and returns its response
// with the query's ID. forwarder/upstream provides DoH and Do53 exchangers.
type Exchanger interface {
	Exchange(ctx context.Context, query []byte) ([]byte, error)
	String() string
}

// Authority answers queries for a local zone (forwarder/zone).
type Authority interface {
	Answer(req *dns.Msg) *dns.Msg
}

// Target is one upstream of a rule with its own attempt timeout.
type Target struct {
	Up      Exchanger
	Timeout time.Duration // per attempt; default Config.TargetTimeout
}

// Rule is one configured rule. Forward rules carry Targets; Zone rules an
// Authority; System rules resolve through Config.Default; Block rules answer
// NXDOMAIN.
type Rule struct {
	Name    string
	Domain  string
	Type    rules.Type
	Targets []Target
	Zone    Authority
	// Select is how the targets are chosen: policy, hedging, health.
	Select group.Config

	grp *group.Group
}

// Config assembles a Forwarder.
type Config struct {
	Rules   []Rule
	Default []Target // targets for names no forward rule covers
	// DefaultSelect is how the default targets are chosen.
	DefaultSelect group.Config
	Cache         *cache.Cache // nil disables caching
	// QueryTimeout is the whole budget for answering one client query
	// (default 4s): targets are tried in order within it.
	QueryTimeout time.Duration
	// TargetTimeout is the default per-attempt timeout (default 2s).
	TargetTimeout time.Duration
	// MaxInflight bounds queries being resolved upstream at once (default
	// 4096); past it clients get SERVFAIL and Stats.Overload counts it.
	MaxInflight int
	// Listeners carry each listener's source ACL; queries from listeners
	// not named here are not filtered.
	Listeners []Listener
	// Counters to count into (default: new ones). Pass the running
	// pipeline's on reload so counters carry on.
	Counters *Counters
	// Log receives every answered query (nil: no query log).
	Log QueryLogger
}

// Stats are cumulative pipeline counters.
type Stats struct {
	Queries, Dropped, FormErr, CacheHits, Local, Blocked, Forwarded,
	ServFail, Overload, UpstreamErrors, Truncated, Stale, Coalesced, Prefetches,
	ACLRefused, ACLDropped, Logged uint64
}

// Forwarder is the pipeline. It is safe for concurrent use.
type Forwarder struct {
	cfg      Config
	table    *rules.Table
	inflight chan struct{}
	workers  *workers
	defGroup *group.Group   // the default targets (nil: none)
	groups   []*group.Group // every group, for health checks

	seed      maphash.Seed
	flights   [flightShards]flightShard
	c         *Counters
	listeners map[string]listenerInfo
}

// New validates cfg and builds the pipeline.
func New(cfg Config) (*Forwarder, error) {
	if cfg.QueryTimeout <= 0 {
		cfg.QueryTimeout = 4 * time.Second
	}
	if cfg.TargetTimeout <= 0 {
		cfg.TargetTimeout = 2 * time.Second
	}
	if cfg.MaxInflight <= 0 {
		cfg.MaxInflight = 4096
	}
	rs := make([]rules.Rule, 0, len(cfg.Rules))
	for i := range cfg.Rules {
		r := &cfg.Rules[i]
		switch r.Type {
		case rules.Forward:
			if len(r.Targets) == 0 {
				return nil, fmt.Errorf("rule %q: a forward rule needs targets", r.Name)
			}
		case rules.Zone:
			if r.Zone == nil {
				return nil, fmt.Errorf("rule %q: a zone rule needs a zone", r.Name)
			}
		case rules.System, rules.Block:
		default:
			return nil, fmt.Errorf("rule %q: unknown type %d", r.Name, r.Type)
		}
		rs = append(rs, rules.Rule{Name: r.Name, Domain: r.Domain, Type: r.Type, Value: r})
	}
	t, err := rules.New(rs)
	if err != nil {
		return nil, err
	}
	if cfg.Counters == nil {
		names := make([]string, len(cfg.Listeners))
		for i, l := range cfg.Listeners {
			names[i] = l.Name
		}
		cfg.Counters = NewCounters(names...)
	}
	f := &Forwarder{cfg: cfg, table: t, inflight: make(chan struct{}, cfg.MaxInflight), workers: newWorkers(10 * time.Second), seed: maphash.MakeSeed(),
		c: cfg.Counters, listeners: map[string]listenerInfo{}}
	for i := range cfg.Listeners {
		l := &f.cfg.Listeners[i]
		f.listeners[l.Name] = listenerInfo{acl: l, idx: f.c.index[l.Name]}
	}
	if len(f.cfg.Default) > 0 {
		if f.defGroup, err = f.newGroup("default", f.cfg.Default, f.cfg.DefaultSelect); err != nil {
			return nil, err
		}
	}
	for i := range f.cfg.Rules {
		r := &f.cfg.Rules[i]
		if r.Type == rules.Forward {
			if r.grp, err = f.newGroup("rule "+r.Name, r.Targets, r.Select); err != nil {
				return nil, err
			}
			f.groups = append(f.groups, r.grp)
		}
	}
	if f.defGroup != nil {
		f.groups = append(f.groups, f.defGroup)
	}
	for i := range f.flights {
		f.flights[i].m = make(map[string]*flight)
	}
	return f, nil
}

// Stats returns the counters.
func (f *Forwarder) Stats() Stats {
	return Stats{
		Queries: f.c.queries.Load(), Dropped: f.c.dropped.Load(), FormErr: f.c.formerr.Load(),
		CacheHits: f.c.hits.Load(), Local: f.c.local.Load(), Blocked: f.c.blocked.Load(),
		Forwarded: f.c.forwarded.Load(), ServFail: f.c.servfail.Load(), Overload: f.c.overload.Load(),
		UpstreamErrors: f.c.upErrs.Load(), Truncated: f.c.truncated.Load(),
		Stale: f.c.stale.Load(), Coalesced: f.c.coalesced.Load(), Prefetches: f.c.prefetches.Load(),
		ACLRefused: f.c.aclRefused.Load(), ACLDropped: f.c.aclDropped.Load(), Logged: f.c.logged.Load(),
	}
}

// Counters returns the counters this pipeline counts into.
func (f *Forwarder) Counters() *Counters { return f.c }

// Serve runs the pipeline without blocking: Answer, then Resolve when the
// query must go upstream. See both.
func (f *Forwarder) Serve(r *Request, out []byte, done func(resp []byte)) ([]byte, bool) {
	if resp, ok := f.Answer(r, out); ok {
		return resp, true
	}
	return f.Resolve(r, out, done)
}

// Answer runs the part of the pipeline that never blocks. When the answer is
// ready at once (cache, local zone, block, bad input) it is written into out
// (64 KiB) and returned with true; nil with true means "send nothing". False
// means the query must go upstream: call Resolve with the same request. On a
// cache hit Answer allocates nothing.
func (f *Forwarder) Answer(r *Request, out []byte) ([]byte, bool) {
	r.start = time.Now()
	r.owner, r.target, r.cacheHit = f, "", false
	resp, rule, ok := f.fast(r, out)
	r.rule = rule
	if ok {
		f.finish(r, resp)
	}
	return resp, ok
}

// Peek answers r from the cache alone, as Answer would on a hit but without
// the ACL, counters, query log or prefetch: it is how a copy of the cache
// kept elsewhere (the XDP program's answers) reads and refreshes entries.
// It returns the answer patched for r (ID, name case, TTLs aged now, not
// truncated) and the unix second at which the entry expires.
func (f *Forwarder) Peek(r *Request, out []byte) ([]byte, int64, bool) {
	if f.cfg.Cache == nil || dnsmsg.Parse(r.Msg, &r.Q) != nil {
		return nil, 0, false
	}
	return f.cfg.Cache.Peek(&r.Q, out)
}

// Hot tells the pipeline that r's cached answer is being served elsewhere
// (by the XDP program): it prefetches the entry when it is due, as a hit in
// Answer would, and keeps it from looking idle to the cache's CLOCK.
func (f *Forwarder) Hot(r *Request) {
	if f.cfg.Cache == nil || dnsmsg.Parse(r.Msg, &r.Q) != nil {
		return
	}
	if f.cfg.Cache.ClaimPrefetch(&r.Q) {
		f.prefetch(r)
	}
}

// pendingRequest is the pipeline's own copy of a request being resolved,
// with room for a typical query: 152 bytes hold a 12-byte header, a name of
// up to ~100 bytes and an OPT record with a cookie or a client subnet, and
// keep the whole copy in the allocator's 576-byte class (it was 1024 with
// room for 512). A longer query takes a second allocation.
type pendingRequest struct {
	Request
	buf [152]byte
}

// Resolve resolves upstream a request that Answer could not answer. It copies
// what it needs from r (the datapath may reuse r and its buffer as soon as
// Resolve returns), resolves in the background and calls done with the
// response (done must copy it before returning, and must not block), and
// returns false. done runs on the goroutine that completed the resolution:
// an upstream connection's reader when every target can Submit (see
// resolveAsync), else one of a bounded pool of workers.
// When the bound on queries in flight is reached it answers SERVFAIL into out
// at once, counts it, and returns true.
func (f *Forwarder) Resolve(r *Request, out []byte, done func(resp []byte)) ([]byte, bool) {
	select {
	case f.inflight <- struct{}{}:
	default:
		f.c.overload.Add(1)
		f.c.servfail.Add(1)
		resp := dnsmsg.AppendError(out[:0], r.Msg, &r.Q, dnsmsg.RcodeServFail)
		f.finish(r, resp)
		return resp, true
	}
	// One allocation for the request and, usually, its message.
	cp := &pendingRequest{Request: *r}
	ar := &cp.Request
	if len(r.Msg) <= len(cp.buf) {
		ar.Msg = append(cp.buf[:0], r.Msg...)
	} else {
		ar.Msg = append([]byte(nil), r.Msg...)
	}
	ar.Q.Name = ar.Msg[dnsmsg.HeaderLen : dnsmsg.HeaderLen+len(r.Q.Name)] // re-point the view at the copy
	if f.resolveAsync(ar, done) {
		return nil, false
	}
	f.workers.run(func() {
		defer func() { <-f.inflight }()
		ctx, cancel := context.WithTimeout(context.Background(), f.cfg.QueryTimeout)
		resp := f.slow(ctx, ar, ar.rule, nil)
		cancel()
		f.finish(ar, resp)
		done(resp)
	})
	return nil, false
}

// ServeDNS runs the whole pipeline and blocks until the answer is ready. The
// response is appended to out[:0]; nil means "send nothing".
func (f *Forwarder) ServeDNS(ctx context.Context, r *Request, out []byte) []byte {
	if cap(out) < 65536 {
		out = make([]byte, 0, 65536)
	}
	if resp, ok := f.Answer(r, out[:cap(out)]); ok {
		return resp
	}
	select {
	case f.inflight <- struct{}{}:
	default:
		f.c.overload.Add(1)
		f.c.servfail.Add(1)
		resp := dnsmsg.AppendError(out[:0], r.Msg, &r.Q, dnsmsg.RcodeServFail)
		f.finish(r, resp)
		return resp
	}
	defer func() { <-f.inflight }()
	ctx, cancel := context.WithTimeout(ctx, f.cfg.QueryTimeout)
	defer cancel()
	resp := f.slow(ctx, r, r.rule, out[:0])
	f.finish(r, resp)
	return resp
}

// fast answers what needs no upstream. It returns the rule to resolve with
// (nil: default targets) and false when the query must go upstream.
func (f *Forwarder) fast(r *Request, out []byte) ([]byte, *Rule, bool) {
	f.c.queries.Add(1)
	li := f.listeners[r.Listener] // one lookup: the ACL and the counters' slot
	r.lidx = li.idx
	if l := li.acl; l != nil && !l.allowed(r.Client.Addr()) {
		if l.Drop || dnsmsg.Parse(r.Msg, &r.Q) != nil {
			f.c.aclDropped.Add(1)
			return nil, nil, true
		}
		f.c.aclRefused.Add(1)
		return dnsmsg.AppendError(out[:0], r.Msg, &r.Q, dnsmsg.RcodeRefused), nil, true
	}
	if err := dnsmsg.Parse(r.Msg, &r.Q); err != nil {
		switch {
		case errors.Is(err, dnsmsg.ErrShort), errors.Is(err, dnsmsg.ErrNotQuery):
			f.c.dropped.Add(1)
			return nil, nil, true
		case errors.Is(err, dnsmsg.ErrOpcode):
			return dnsmsg.AppendError(out[:0], r.Msg, &r.Q, dnsmsg.RcodeNotImp), nil, true
		}
		f.c.formerr.Add(1)
		q := &r.Q
		if q.QEnd == 0 {
			q = nil
		}
		return dnsmsg.AppendError(out[:0], r.Msg, q, dnsmsg.RcodeFormErr), nil, true
	}
	maxSize := r.MaxResponseSize()
	if f.cfg.Cache != nil {
		if resp, res := f.cfg.Cache.Get(&r.Q, out, maxSize); res != cache.Miss {
			f.c.hits.Add(1)
			r.cacheHit = true
			if res == cache.HitPrefetch {
				f.prefetch(r)
			}
			return resp, nil, true
		}
	}
	rule := f.route(&r.Q)
	if rule == nil {
		return nil, nil, false
	}
	switch rule.Type {
	case rules.Zone:
		f.c.local.Add(1)
		return f.answerLocal(r, rule.Zone, out, maxSize), rule, true
	case rules.Block:
		f.c.blocked.Add(1)
		return dnsmsg.AppendError(out[:0], r.Msg, &r.Q, dnsmsg.RcodeNXDomain), rule, true
	case rules.System:
		return nil, nil, false // resolved through the default targets
	}
	return nil, rule, false
}

// route returns the most specific rule for q, nil for none.
func (f *Forwarder) route(q *dnsmsg.Query) *Rule {
	var lb [256]byte
	if m := f.table.Match(dnsmsg.AppendLower(lb[:0], q.Name)); m != nil {
		return m.Value.(*Rule)
	}
	return nil
}

// prefetch refreshes in the background a cache entry that is still being
// asked for shortly before it expires, so its clients never see the miss. It
// uses a slot of the in-flight bound only if one is free.
func (f *Forwarder) prefetch(r *Request) {
	select {
	case f.inflight <- struct{}{}:
	default:
		return
	}
	f.c.prefetches.Add(1)
	ar := *r
	ar.Msg = append([]byte(nil), r.Msg...)
	ar.Q.Name = ar.Msg[dnsmsg.HeaderLen : dnsmsg.HeaderLen+len(r.Q.Name)]
	f.workers.run(func() {
		defer func() { <-f.inflight }()
		rule := f.route(&ar.Q)
		g := f.defGroup
		switch {
		case rule == nil || rule.Type == rules.System:
		case rule.Type == rules.Forward:
			g = rule.grp
		default:
			return // local answers are not refreshed from upstream
		}
		if g == nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), f.cfg.QueryTimeout)
		defer cancel()
		f.coalesce(ctx, &ar, g) // a good answer lands in the cache
	})
}

// answerLocal answers from a local zone. This is the slow path of miekg/dns
// (unpack, build, pack); the answer is then cached like any other.
func (f *Forwarder) answerLocal(r *Request, z Authority, out []byte, maxSize int) []byte {
	req := new(dns.Msg)
	if err := req.Unpack(r.Msg); err != nil {
		f.c.formerr.Add(1)
		return dnsmsg.AppendError(out[:0], r.Msg, &r.Q, dnsmsg.RcodeFormErr)
	}
	resp := z.Answer(req)
	resp.RecursionAvailable = true // xdoh is the client's resolver, not just this zone's server
	resp.Compress = true
	if opt := req.IsEdns0(); opt != nil {
		resp.SetEdns0(1232, opt.Do())
	}
	b, err := resp.PackBuffer(out)
	if err != nil {
		f.c.servfail.Add(1)
		return dnsmsg.AppendError(out[:0], r.Msg, &r.Q, dnsmsg.RcodeServFail)
	}
	if f.cfg.Cache != nil {
		// Local answers go in the same table: the next one is a hit, with no
		// unpacking and no allocation. (A zone reload must flush them.)
		if qend, err := dnsmsg.CheckResponse(b, &r.Q); err == nil {
			f.cfg.Cache.Put(&r.Q, b, qend)
		}
	}
	return f.truncate(b, maxSize)
}

func (f *Forwarder) truncate(resp []byte, maxSize int) []byte {
	if len(resp) > maxSize {
		f.c.truncated.Add(1)
		return dnsmsg.Truncate(resp, maxSize)
	}
	return resp
}

// slow resolves r upstream: the rule's targets in order (default targets when
// rule is nil), identical queries in flight sharing one exchange. When no
// target gives a usable answer, a stale cache entry (RFC 8767) is better than
// the upstream's SERVFAIL/REFUSED, which is better than our own SERVFAIL.
func (f *Forwarder) slow(ctx context.Context, r *Request, rule *Rule, out []byte) []byte {
	g := f.defGroup
	if rule != nil {
		g = rule.grp
	}
	if g == nil {
		// No rule covers the name and no default is configured: like a
		// non-recursive server, refuse.
		return dnsmsg.AppendError(out[:0], r.Msg, &r.Q, dnsmsg.RcodeRefused)
	}
	f.c.forwarded.Add(1)
	return f.respond(r, f.coalesce(ctx, r, g), out)
}

// respond turns the outcome of an upstream resolution into r's answer,
// appended to out[:0].
func (f *Forwarder) respond(r *Request, res result, out []byte) []byte {
	r.target = res.target
	if res.ok {
		return f.reply(r, res.resp, out)
	}
	if f.cfg.Cache != nil {
		buf := make([]byte, 65536)
		if resp, ok := f.cfg.Cache.GetStale(&r.Q, buf, r.MaxResponseSize()); ok {
			f.c.stale.Add(1)
			return append(out[:0], resp...)
		}
	}
	if res.resp != nil {
		return f.reply(r, res.resp, out)
	}
	f.c.servfail.Add(1)
	return dnsmsg.AppendError(out[:0], r.Msg, &r.Q, dnsmsg.RcodeServFail)
}

// result is the outcome of one upstream resolution: a usable answer (ok), or
// the best failure an upstream gave (a SERVFAIL/REFUSED response), or nil.
// resp is shared by every query coalesced onto it: read only.
type result struct {
	resp   []byte
	ok     bool
	target string // the target that gave resp
}

// flight is one upstream resolution that identical queries wait on:
// blocked ones on done, asynchronous ones in waiters. Both are guarded by
// the shard's mutex while the flight is in the map; done is made by the
// first blocked waiter (most flights have none) and res is set before it is
// closed.
type flight struct {
	done    chan struct{}
	res     result
	waiters []func(result)
}

const flightShards = 32

type flightShard struct {
	mu sync.Mutex
	m  map[string]*flight
}

// coalesce shares one upstream exchange among identical queries in flight
// (same name ignoring case, type, class and EDNS flags). The first query
// resolves; the others wait for it or for their own deadline.
func (f *Forwarder) coalesce(ctx context.Context, r *Request, g *group.Group) result {
	var joined *flight
	var done <-chan struct{}
	sh, key, fl := f.board(r, func(fl *flight) {
		if fl.done == nil {
			fl.done = make(chan struct{}) // the first blocked waiter makes it
		}
		joined, done = fl, fl.done
	})
	if fl == nil {
		select {
		case <-done:
			return joined.res
		case <-ctx.Done():
			return result{}
		}
	}

	// The exchange is shared: it must not end because the leader's client
	// went away (a DoH request context is cancelled when its stream is),
	// only at the query timeout. Waiters keep their own deadlines.
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(f.cfg.QueryTimeout)
	}
	lctx, cancel := context.WithDeadline(context.WithoutCancel(ctx), deadline)
	res := f.exchange(lctx, r, g)
	cancel()
	sh.land(key, fl, res)
	return res
}

// board finds the flight of r's question. If there is one, it calls join
// with it while the shard is locked, counts r as coalesced and returns a nil
// flight; otherwise it starts a flight that r leads and returns it with its
// shard and key, for land.
func (f *Forwarder) board(r *Request, join func(*flight)) (*flightShard, string, *flight) {
	var kb [dnsmsg.MaxKeyLen]byte
	k := dnsmsg.AppendKey(kb[:0], &r.Q)
	sh := &f.flights[maphash.Bytes(f.seed, k)%flightShards]
	sh.mu.Lock()
	if fl := sh.m[string(k)]; fl != nil {
		join(fl)
		sh.mu.Unlock()
		f.c.coalesced.Add(1)
		return nil, "", nil
	}
	key := string(k)
	fl := &flight{}
	sh.m[key] = fl
	sh.mu.Unlock()
	return sh, key, fl
}

// land ends flight fl (key in sh) with res and hands res to its waiters.
func (sh *flightShard) land(key string, fl *flight, res result) {
	sh.mu.Lock()
	delete(sh.m, key)
	fl.res = res
	waiters := fl.waiters
	fl.waiters = nil
	if fl.done != nil {
		close(fl.done)
	}
	sh.mu.Unlock()
	for _, w := range waiters {
		w(res)
	}
}

// exchange asks the group for an answer (its policy picks the targets,
// fails over and hedges within ctx). A usable answer (checked against the
// question by the classifier) is stripped of hop-by-hop EDNS options, marked
// RA and cached; a
// SERVFAIL/REFUSED is passed on only when no target did better.
func (f *Forwarder) exchange(ctx context.Context, r *Request, g *group.Group) result {
	resp, target, err := g.Exchange(ctx, upstreamQuery(r), f.classifier(r))
	return f.accept(r, resp, target, err)
}

// upstreamQuery is the query to send upstream for r: the client's EDNS
// options (its cookie above all) are for us, not for the upstream.
func upstreamQuery(r *Request) []byte {
	if r.Q.HasOPT && r.Q.OPTEnd-r.Q.OPTOff > 11 {
		return dnsmsg.StripHopOptions(append([]byte(nil), r.Msg...))
	}
	return r.Msg
}

// classifier judges upstream responses to r for the group.
func (f *Forwarder) classifier(r *Request) func([]byte) group.Verdict {
	return func(resp []byte) group.Verdict {
		if _, err := dnsmsg.CheckResponse(resp, &r.Q); err != nil {
			f.c.upErrs.Add(1) // a broken or mismatched answer: a failure of that target
			return group.Bad
		}
		if rc := dnsmsg.Rcode(resp); rc == dnsmsg.RcodeServFail || rc == dnsmsg.RcodeRefused {
			f.c.upErrs.Add(1) // this target cannot help; another may
			return group.Fallback
		}
		return group.Good
	}
}

// accept turns what the group returned for r into a result: a usable
// answer is prepared for clients and cached. The group returns only
// responses its classifier (classifier, above) passed, so resp has already
// been checked against r's question: one question, r's name (uncompressed,
// same length) and type and class, records that walk to the end.
func (f *Forwarder) accept(r *Request, resp []byte, target string, err error) result {
	if err != nil || resp == nil {
		return result{}
	}
	qend := dnsmsg.HeaderLen + len(r.Q.Name) + 4
	// The upstream's cookie (and padding) would reach the client as a
	// cookie mismatch, from the cache even more so: drop them.
	resp = dnsmsg.StripHopOptions(resp)
	resp[3] |= byte(dnsmsg.FlagRA) // recursion is what xdoh offers its clients
	if rc := dnsmsg.Rcode(resp); rc == dnsmsg.RcodeServFail || rc == dnsmsg.RcodeRefused {
		return result{resp: resp, target: target}
	}
	if f.cfg.Cache != nil {
		f.cfg.Cache.Put(&r.Q, resp, qend)
	}
	return result{resp: resp, ok: true, target: target}
}

// newGroup builds the target group of a rule (or the default), each target
// wrapped to count its exchanges.
func (f *Forwarder) newGroup(name string, targets []Target, sel group.Config) (*group.Group, error) {
	members := make([]group.Member, len(targets))
	for i, t := range targets {
		to := t.Timeout
		if to <= 0 {
			to = f.cfg.TargetTimeout
		}
		ce := &countingExchanger{Exchanger: t.Up, stats: f.c.target(t.Up.String())}
		var up group.Exchanger = ce
		if a, ok := t.Up.(group.AsyncExchanger); ok {
			up = &countingAsync{countingExchanger: ce, async: a}
		}
		members[i] = group.Member{Up: up, Timeout: to}
	}
	g, err := group.New(members, sel)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return g, nil
}

// countingExchanger records each exchange with a target in its stats.
type countingExchanger struct {
	Exchanger
	stats *TargetStats
}

func (c *countingExchanger) Exchange(ctx context.Context, q []byte) ([]byte, error) {
	start := time.Now()
	resp, err := c.Exchanger.Exchange(ctx, q)
	c.stats.record(err == nil, time.Since(start))
	return resp, err
}

// countingAsync is a countingExchanger for a target that can Submit.
type countingAsync struct {
	*countingExchanger
	async group.AsyncExchanger
}

func (c *countingAsync) Submit(q []byte, timeout time.Duration, done func([]byte, error)) group.Canceler {
	start := time.Now()
	return c.async.Submit(q, timeout, func(resp []byte, err error) {
		c.stats.record(err == nil, time.Since(start))
		done(resp, err)
	})
}

// StartHealthChecks starts the active probes of every target group.
func (f *Forwarder) StartHealthChecks() {
	for _, g := range f.groups {
		g.Start()
	}
}

// Close stops the health checks. Upstreams belong to the caller.
func (f *Forwarder) Close() {
	for _, g := range f.groups {
		g.Close()
	}
}

// Health returns the state of every target of every group.
func (f *Forwarder) Health() []group.State {
	var out []group.State
	for _, g := range f.groups {
		out = append(out, g.States()...)
	}
	return out
}

// reply copies an upstream response into out for the client: its ID, its
// letter case in the question, its size limit.
func (f *Forwarder) reply(r *Request, resp, out []byte) []byte {
	out = append(out[:0], resp...)
	dnsmsg.SetID(out, r.Q.ID)
	dnsmsg.CopyQuestionName(out, r.Q.Name)
	return f.truncate(out, r.MaxResponseSize())
}
