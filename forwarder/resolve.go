package forwarder

import (
	"context"
	"fmt"
	"hash/maphash"
	"sync"
	"time"

	"xdoh/forwarder/group"
	"xdoh/forwarder/rules"
	"xdoh/internal/dnsmsg"
)

// pendingRequest is the pipeline's own copy of a request being resolved,
// with room for a typical query: 152 bytes hold a 12-byte header, a name of
// up to ~100 bytes and an OPT record with a cookie or a client subnet, and
// keep the whole copy in one of the allocator's small classes (704 bytes;
// it was 1024 with room for 512). A longer query takes a second allocation.
type pendingRequest struct {
	Request
	buf [152]byte
}

// own returns the pipeline's copy of r: the datapath may reuse r and its
// buffer as soon as Resolve returns. One allocation for the request and,
// usually, its message.
func own(r *Request) *Request {
	cp := &pendingRequest{Request: *r}
	ar := &cp.Request
	if len(r.Msg) <= len(cp.buf) {
		ar.Msg = append(cp.buf[:0], r.Msg...)
	} else {
		ar.Msg = append([]byte(nil), r.Msg...)
	}
	// Re-point the query view (name, cookie, subnet) at the copy: parse
	// it again (it parsed before) and keep what the pipeline added.
	sub := r.Q.Subnet
	dnsmsg.Parse(ar.Msg, &ar.Q)
	if sub != nil {
		ar.Q.Subnet = ar.subnet[:len(sub)]
	}
	return ar
}

// Resolve resolves upstream a request that Answer could not answer. It copies
// what it needs from r (the datapath may reuse r and its buffer as soon as
// Resolve returns), resolves in the background and calls done with the
// response (nil: send nothing, as when RRL drops it; done must copy it
// before returning, and must not block), and
// returns false. done runs on the goroutine that completed the resolution
// (an upstream connection's reader, or a timer), or on the caller's when
// every target refused the query at once.
//
// It answers into out at once, and returns true, when there is nothing to
// resolve with (no rule covers the name and no default targets: REFUSED,
// as a non-recursive server would) and when the bound on queries in flight
// is reached (SERVFAIL, counted as overload).
//
// No goroutine, context or channel is spent: the target group chains the
// attempts by callback (group.ExchangeAsync), and the callback that ends
// them answers r.
func (f *Forwarder) Resolve(r *Request, out []byte, done func(resp []byte)) ([]byte, bool) {
	g := f.groupFor(r.rule)
	if g == nil {
		resp := f.final(r, dnsmsg.AppendError(out[:0], r.Msg, &r.Q, dnsmsg.RcodeRefused), out)
		f.finish(r, resp)
		return resp, true
	}
	select {
	case f.inflight <- struct{}{}:
	default:
		f.c.overload.Add(1)
		f.c.servfail.Add(1)
		resp := f.final(r, dnsmsg.AppendError(out[:0], r.Msg, &r.Q, dnsmsg.RcodeServFail), out)
		f.finish(r, resp)
		return resp, true
	}
	ar := own(r)
	f.c.forwarded.Add(1)
	f.exchange(ar, g, func(res result) {
		resp := f.final(ar, f.respond(ar, res, nil), nil)
		f.finish(ar, resp)
		done(resp)
		<-f.inflight
	})
	return nil, false
}

// ServeDNS runs the whole pipeline and waits for the answer: Answer, then
// Resolve and a channel. The response is appended to out[:0]; nil means
// "send nothing". When ctx ends first it answers SERVFAIL; the resolution
// runs on to its own end (its answer still reaches the cache). For tools
// and tests: the datapaths do not wait.
func (f *Forwarder) ServeDNS(ctx context.Context, r *Request, out []byte) []byte {
	if cap(out) < 65536 {
		out = make([]byte, 0, 65536)
	}
	if resp, ok := f.Answer(r, out[:cap(out)]); ok {
		return resp
	}
	ch := make(chan []byte, 1)
	if resp, ok := f.Resolve(r, out[:cap(out)], func(resp []byte) { ch <- append([]byte(nil), resp...) }); ok {
		return resp
	}
	select {
	case resp := <-ch:
		return append(out[:0], resp...)
	case <-ctx.Done():
		return dnsmsg.AppendError(out[:0], r.Msg, &r.Q, dnsmsg.RcodeServFail)
	}
}

// prefetch refreshes in the background a cache entry that is still being
// asked for shortly before it expires, so its clients never see the miss. It
// uses a slot of the in-flight bound only if one is free.
func (f *Forwarder) prefetch(r *Request) {
	rule := f.route(&r.Q)
	if rule != nil && rule.Type != rules.Forward && rule.Type != rules.System {
		return // local answers are not refreshed from upstream
	}
	if rule != nil && rule.Type == rules.System {
		rule = nil
	}
	g := f.groupFor(rule)
	if g == nil {
		return
	}
	select {
	case f.inflight <- struct{}{}:
	default:
		return
	}
	f.c.prefetches.Add(1)
	ar := own(r)
	ar.start = time.Now()                            // its own deadline: r may not have come through Answer (Hot)
	f.exchange(ar, g, func(result) { <-f.inflight }) // a good answer lands in the cache
}

// groupFor is the target group that resolves for rule (nil: the default
// targets); nil when there is none.
func (f *Forwarder) groupFor(rule *Rule) *group.Group {
	if rule != nil {
		return rule.grp
	}
	return f.defGroup
}

// result is the outcome of one upstream resolution: a usable answer (ok), or
// the best failure an upstream gave (a SERVFAIL/REFUSED response), or nil.
// resp is shared by every query coalesced onto it: read only.
type result struct {
	resp   []byte
	ok     bool
	target string // the target that gave resp
	scope  uint8  // the client-subnet scope of resp (RFC 7871; 0: everyone)
}

// flight is one upstream resolution that identical queries wait on. Its
// waiters are guarded by the shard's mutex while the flight is in the map.
type flight struct {
	waiters []func(result)
}

const flightShards = 32

type flightShard struct {
	mu sync.Mutex
	m  map[string]*flight
}

// exchange resolves r (the pipeline's own copy) with group g and calls
// complete with the outcome, sharing one upstream exchange among identical
// queries in flight (same name ignoring case, type, class and EDNS flags):
// the first query asks the group, by r's deadline; the others wait for its
// outcome, whose deadline is no later than theirs would be. A usable answer
// is prepared for clients and cached (accept) before anyone gets it.
func (f *Forwarder) exchange(r *Request, g *group.Group, complete func(result)) {
	var kb [dnsmsg.MaxKeyLen]byte
	k := dnsmsg.AppendKey(kb[:0], &r.Q)
	sh := &f.flights[maphash.Bytes(f.seed, k)%flightShards]
	sh.mu.Lock()
	if fl := sh.m[string(k)]; fl != nil {
		fl.waiters = append(fl.waiters, complete)
		sh.mu.Unlock()
		f.c.coalesced.Add(1)
		return
	}
	key := string(k)
	fl := &flight{}
	sh.m[key] = fl
	sh.mu.Unlock()
	g.ExchangeAsync(upstreamQuery(r), r.start.Add(f.cfg.QueryTimeout), f.classifier(r),
		func(resp []byte, target string, err error) {
			res := f.accept(r, resp, target, err)
			sh.mu.Lock()
			delete(sh.m, key)
			waiters := fl.waiters
			fl.waiters = nil
			sh.mu.Unlock()
			complete(res)
			for _, w := range waiters {
				w(res)
			}
		})
}

// respond turns the outcome of an upstream resolution into r's answer,
// appended to out[:0]. When no target gave a usable answer, a stale cache
// entry (RFC 8767) is better than the upstream's SERVFAIL/REFUSED, which is
// better than our own SERVFAIL.
func (f *Forwarder) respond(r *Request, res result, out []byte) []byte {
	r.target = res.target
	if res.ok {
		r.ecsScope = res.scope
		return f.reply(r, res.resp, out)
	}
	if f.cfg.Cache != nil {
		buf := make([]byte, 65536)
		if resp, ok := f.cfg.Cache.GetStale(&r.Q, buf, r.MaxResponseSize()); ok {
			if r.Q.Subnet != nil {
				r.ecsScope = r.Q.Subnet[2]
			}
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

// upstreamQuery is the query to send upstream for r: the client's EDNS
// options (its cookie above all) are for us, not for the upstream; the
// client subnet its rule sends, if any, is added.
func upstreamQuery(r *Request) []byte {
	switch {
	case r.Q.Subnet != nil:
		q := dnsmsg.StripHopOptions(append(make([]byte, 0, len(r.Msg)+4+len(r.Q.Subnet)), r.Msg...))
		return dnsmsg.AppendOption(q, dnsmsg.OptionECS, r.Q.Subnet, 65535)
	case r.Q.HasOPT && r.Q.OPTEnd-r.Q.OPTOff > 11:
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
		if r.Q.Subnet != nil {
			if _, ok := answerScope(resp, r.Q.Subnet); !ok {
				f.c.upErrs.Add(1) // a subnet that is not the one asked for (RFC 7871 7.3)
				return group.Bad
			}
		}
		if rc := dnsmsg.Rcode(resp); rc == dnsmsg.RcodeServFail || rc == dnsmsg.RcodeRefused {
			f.c.upErrs.Add(1) // this target cannot help; another may
			return group.Fallback
		}
		return group.Good
	}
}

// accept turns what the group returned for r into a result: a usable
// answer is stripped of hop-by-hop EDNS options, marked RA and cached. The
// group returns only responses its classifier (classifier, above) passed,
// so resp has already been checked against r's question: one question, r's
// name (uncompressed, same length) and type and class, records that walk
// to the end.
func (f *Forwarder) accept(r *Request, resp []byte, target string, err error) result {
	if err != nil || resp == nil {
		return result{}
	}
	qend := dnsmsg.HeaderLen + len(r.Q.Name) + 4
	scope := 0
	key := r.Q // the cache key: for r's subnet, or for everyone when the upstream scoped it /0
	if r.Q.Subnet != nil {
		scope, _ = answerScope(resp, r.Q.Subnet) // the classifier checked it
		if scope == 0 {
			key.Subnet = nil
		}
	}
	// The upstream's cookie (and padding) would reach the client as a
	// cookie mismatch, from the cache even more so: drop them, and the
	// subnet, which the client gets back as its own.
	resp = dnsmsg.StripHopOptions(resp)
	if r.Q.HasOPT {
		resp = dnsmsg.EnsureOPT(resp, r.Q.DO) // an upstream without EDNS left it out
	}
	resp[3] |= byte(dnsmsg.FlagRA) // recursion is what xdoh offers its clients
	if rc := dnsmsg.Rcode(resp); rc == dnsmsg.RcodeServFail || rc == dnsmsg.RcodeRefused {
		return result{resp: resp, target: target}
	}
	if f.cfg.Cache != nil {
		f.cfg.Cache.PutAs(f.cfg.CacheGeneration, &key, resp, qend)
	}
	return result{resp: resp, ok: true, target: target, scope: uint8(scope)}
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
		members[i] = group.Member{Up: &counting{Exchanger: t.Up, stats: f.c.target(t.Up.String())}, Timeout: to}
	}
	g, err := group.New(members, sel)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return g, nil
}

// counting records each exchange with a target in its stats.
type counting struct {
	group.Exchanger
	stats *TargetStats
}

func (c *counting) Submit(q []byte, timeout time.Duration, done func([]byte, error)) group.Canceler {
	start := time.Now()
	return c.Exchanger.Submit(q, timeout, func(resp []byte, err error) {
		c.stats.record(err, time.Since(start))
		done(resp, err)
	})
}
