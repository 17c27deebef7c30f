// Package forwarder is the resolution pipeline every transport feeds: parse
// the query view, answer from the cache, pick the most specific rule (local
// zone, forward, system, block) and, for forwarded names, exchange the query
// with the rule's target group (forwarder/group: policy, failover, hedging,
// health) within the client's deadline. Whatever happens the client gets an answer (SERVFAIL at worst),
// except for packets that are not queries at all, which get nothing.
//
// Answers carry the per-client EDNS options the pipeline makes itself
// (withOptions): NSID, a server cookie (cookie.go, RFC 7873/9018) and the
// client's subnet echoed with the answer's scope. A rule's client-subnet
// policy (ecs.go, RFC 7871) decides what subnet goes upstream, and keys the
// cache and in-flight coalescing by it.
//
// Over UDP, where the source address is not proven, two limits apply to
// what a spoofed query can draw (final): no error answer is larger than its
// query unless a valid server cookie proves the client, and with RRL
// (rrl.go) answers beyond a client prefix's rate are dropped or slipped
// (an empty TC answer), as BIND's rate-limit does.
//
// Every datapath (UDP, TCP, DoH) calls Answer and Resolve, which never
// block: the answer comes back through a callback. ServeDNS, the blocking
// form, runs the same pipeline for tests and tools.
package forwarder

import (
	"errors"
	"fmt"
	"hash/maphash"
	"net/netip"
	"strings"
	"time"

	"github.com/miekg/dns"

	"xdoh/forwarder/cache"
	"xdoh/forwarder/group"
	"xdoh/forwarder/rules"
	"xdoh/internal/dnsmsg"
)

// Authority answers queries for a local zone (forwarder/zone).
type Authority interface {
	Answer(req *dns.Msg) *dns.Msg
}

// Target is one upstream of a rule with its own attempt timeout. Up is a
// forwarder/upstream DoH or Do53 client (or a test's fault injector).
type Target struct {
	Up      group.Exchanger
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
	// ECS is the client-subnet policy of a forward rule (RFC 7871).
	ECS ECS

	grp *group.Group
}

// DefaultMaxInflight is the default bound on queries being resolved
// upstream at once. The bound is on memory (a few KiB per query in flight:
// TestInflightBoundFlood in cmd/xdoh measures it), not on time, which
// QueryTimeout bounds: it should let the forwarded rate ride out a pause of
// its upstream shorter than the query timeout rather than fail the queries
// that arrive during it. 16,384 holds 1.6 s of 10,000 forwarded queries a
// second.
const DefaultMaxInflight = 16384

// Config assembles a Forwarder.
type Config struct {
	Rules   []Rule
	Default []Target // targets for names no forward rule covers
	// DefaultSelect is how the default targets are chosen.
	DefaultSelect group.Config
	// DefaultECS is the client-subnet policy of the default targets.
	DefaultECS ECS
	Cache      *cache.Cache // nil disables caching
	// CacheGeneration is the generation this pipeline writes the cache as
	// (cache.PutAs): a reload that keeps the cache builds the next
	// pipeline with Cache.Generation()+1, and the retired pipeline's
	// answers stop landing in it once cache.Invalidate moves on.
	CacheGeneration uint64
	// QueryTimeout is the whole budget for answering one client query
	// (default 4s): targets are tried in order within it.
	QueryTimeout time.Duration
	// TargetTimeout is the default per-attempt timeout (default 2s).
	TargetTimeout time.Duration
	// MaxInflight bounds queries being resolved upstream at once (default
	// DefaultMaxInflight); past it clients get SERVFAIL and Stats.Overload
	// counts it.
	MaxInflight int
	// Listeners carry each listener's source ACL; queries from listeners
	// not named here are not filtered.
	Listeners []Listener
	// Counters to count into (default: new ones). Pass the running
	// pipeline's on reload so counters carry on.
	Counters *Counters
	// Log receives every answered query (nil: no query log).
	Log QueryLogger
	// NSID is returned to clients that ask for it (RFC 5001; nil: never),
	// so that an operator can tell which of many instances answered.
	NSID []byte
	// Cookies makes the server cookies of answers to clients that send a
	// COOKIE option (RFC 7873; nil: none are given).
	Cookies *Cookies
	// RRL limits the rate of UDP answers per client prefix (nil: off).
	// Pass the running pipeline's on reload to keep its buckets.
	RRL *RRL
}

// Stats are cumulative pipeline counters.
type Stats struct {
	Queries, Dropped, FormErr, CacheHits, Local, Blocked, Forwarded,
	ServFail, Overload, UpstreamErrors, Truncated, Stale, Coalesced, Prefetches,
	ACLRefused, ACLDropped, Logged uint64
	// Queries by what their COOKIE option held: a client cookie alone,
	// a server cookie that was not ours or had expired, a valid one.
	CookieClientOnly, CookieBad, CookieValid uint64
	// BadCookie counts BADCOOKIE answers (Cookies' require).
	BadCookie uint64
	// RRL counts what response-rate limiting did.
	RRL RRLStats
}

// RRLStats count what response-rate limiting did. Dropped and Slipped
// are by the kind of answer, indexed like RRLCategories.
type RRLStats struct {
	Dropped, Slipped [3]uint64
	// CookieExempt counts UDP answers not limited because the query had a
	// valid server cookie.
	CookieExempt uint64
	// Evictions counts prefixes forgotten, while still limited, to make
	// room for another in the full table.
	Evictions uint64
}

// RRLCategories name the kinds of answers RRL counts apart.
var RRLCategories = [3]string{"responses", "nxdomains", "errors"}

// Forwarder is the pipeline. It is safe for concurrent use.
type Forwarder struct {
	cfg      Config
	table    *rules.Table
	inflight chan struct{}
	defGroup *group.Group   // the default targets (nil: none)
	groups   []*group.Group // every group, for health checks
	gnames   []string       // groups[i]'s rule name ("default" for defGroup)

	seed      maphash.Seed
	flights   [flightShards]flightShard
	c         *Counters
	listeners map[string]listenerInfo
	ecs       bool // some rule, or the default, sends client subnets
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
		cfg.MaxInflight = DefaultMaxInflight
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
	f := &Forwarder{cfg: cfg, table: t, inflight: make(chan struct{}, cfg.MaxInflight), seed: maphash.MakeSeed(),
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
			f.gnames = append(f.gnames, r.Name)
		}
	}
	if f.defGroup != nil {
		f.groups = append(f.groups, f.defGroup)
		f.gnames = append(f.gnames, "default")
	}
	for i := range f.flights {
		f.flights[i].m = make(map[string]*flight)
	}
	f.ecs = cfg.DefaultECS.Mode != ECSStrip
	for _, r := range cfg.Rules {
		f.ecs = f.ecs || r.Type == rules.Forward && r.ECS.Mode != ECSStrip
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
		CookieClientOnly: f.c.cookies[cookieClientOnly].Load(), CookieBad: f.c.cookies[cookieBadServer].Load(),
		CookieValid: f.c.cookies[cookieValidServer].Load(), BadCookie: f.c.badCookie.Load(),
		RRL: RRLStats{
			Dropped:      [3]uint64{f.c.rrlDropped[0].Load(), f.c.rrlDropped[1].Load(), f.c.rrlDropped[2].Load()},
			Slipped:      [3]uint64{f.c.rrlSlipped[0].Load(), f.c.rrlSlipped[1].Load(), f.c.rrlSlipped[2].Load()},
			CookieExempt: f.c.rrlCookieExempt.Load(), Evictions: f.c.rrlEvictions.Load(),
		},
	}
}

// Inflight is the number of upstream resolutions under way (queries and
// prefetches; identical queries coalesced onto one count once). A
// shutdown waits for it to reach zero before it closes the upstreams.
func (f *Forwarder) Inflight() int { return len(f.inflight) }

// MaxInflight is the bound on Inflight (Config.MaxInflight, or its
// default).
func (f *Forwarder) MaxInflight() int { return cap(f.inflight) }

// Counters returns the counters this pipeline counts into.
func (f *Forwarder) Counters() *Counters { return f.c }

// Answer runs the part of the pipeline that never blocks. When the answer is
// ready at once (cache, local zone, block, bad input) it is written into out
// (64 KiB) and returned with true; nil with true means "send nothing". False
// means the query must go upstream: call Resolve with the same request. On a
// cache hit Answer allocates nothing.
func (f *Forwarder) Answer(r *Request, out []byte) ([]byte, bool) {
	r.start = r.Received
	if r.start.IsZero() {
		r.start = time.Now()
	}
	r.owner, r.target, r.cacheHit, r.cookie, r.ecsScope, r.badCookie = f, "", false, cookieNone, 0, false
	resp, rule, ok := f.fast(r, out)
	r.rule = rule
	if ok {
		resp = f.final(r, resp, out)
		f.finish(r, resp)
	}
	return resp, ok
}

// final turns the pipeline's answer to r into what is sent: the per-client
// EDNS options (withOptions), then, over UDP, the two limits on what a
// spoofed source address can draw.
//
// Size: an answer to a UDP query without a valid server cookie is no
// larger than the query unless it is a real answer (NOERROR, NXDOMAIN),
// so that errors cannot amplify. Options go in only within that size, and
// an upstream's error answer larger than the query is answered with a bare
// one of the same RCODE. A BADCOOKIE answer needs its cookie: it goes
// without the question when that makes it fit, and as an empty TC answer
// (the client retries over TCP, which needs no cookie) when nothing does.
//
// Rate: with RRL, answers beyond the client prefix's rate are dropped, or
// slipped as an empty TC answer (rrlAnswer).
//
// out is where resp was built (nil: resp is the pipeline's own).
func (f *Forwarder) final(r *Request, resp, out []byte) []byte {
	if len(resp) < dnsmsg.HeaderLen {
		return resp
	}
	limit := r.MaxResponseSize()
	spoofable := r.Transport == TransportUDP && r.cookie != cookieValidServer
	if rc := dnsmsg.Rcode(resp); spoofable && rc != dnsmsg.RcodeSuccess && rc != dnsmsg.RcodeNXDomain {
		limit = min(limit, len(r.Msg))
		if len(resp) > len(r.Msg) {
			resp = dnsmsg.AppendError(reuse(resp, out), r.Msg, r.question(), rc)
		}
	}
	if r.badCookie {
		resp = f.badCookieAnswer(r, resp, out, limit)
	} else {
		resp = f.withOptions(r, resp, out, limit)
	}
	if f.cfg.RRL != nil && r.Transport == TransportUDP {
		resp = f.rrlAnswer(r, resp, out)
	}
	return resp
}

// reuse is where to build a replacement for resp: out when resp was built
// there, else resp's own array.
func reuse(resp, out []byte) []byte {
	if out != nil {
		return out[:0]
	}
	return resp[:0]
}

// question is r's parsed question for AppendError: nil when only the header
// parsed.
func (r *Request) question() *dnsmsg.Query {
	if r.Q.QEnd == 0 {
		return nil
	}
	return &r.Q
}

// badCookieAnswer is the BADCOOKIE answer to r with a fresh server cookie
// (RFC 7873 5.2.3) within limit octets: whole, with the NSID and client
// subnet that fit; else without the question and the other options; else,
// as an empty TC answer, none at all.
func (f *Forwarder) badCookieAnswer(r *Request, resp, out []byte, limit int) []byte {
	resp = f.withOptions(r, resp, out, limit)
	if _, ok := dnsmsg.FindOption(resp, dnsmsg.OptionCookie); ok {
		return resp
	}
	q := r.Q
	q.QEnd = dnsmsg.HeaderLen // AppendError copies no question then
	resp = dnsmsg.AppendError(reuse(resp, out), r.Msg, &q, dnsmsg.RcodeBadCookie)
	resp[5] = 0 // QDCOUNT (AppendError counted the empty question)
	save := r.Q
	r.Q.NSID, r.Q.ECS = false, nil
	resp = f.withOptions(r, resp, out, limit)
	r.Q = save
	if _, ok := dnsmsg.FindOption(resp, dnsmsg.OptionCookie); ok {
		return resp
	}
	return truncatedAnswer(reuse(resp, out), r)
}

// truncatedAnswer appends to dst an empty answer to r with TC set: no
// larger than the query (AppendError), it sends the client to TCP.
func truncatedAnswer(dst []byte, r *Request) []byte {
	start := len(dst)
	dst = dnsmsg.AppendError(dst, r.Msg, r.question(), dnsmsg.RcodeSuccess)
	dst[start+2] |= dnsmsg.FlagTC >> 8
	return dst
}

// rrlAnswer applies response-rate limiting to resp, r's answer over UDP:
// resp itself, nil (drop) or an empty TC answer (slip). A valid server
// cookie or an exempt prefix skips the limit.
func (f *Forwarder) rrlAnswer(r *Request, resp, out []byte) []byte {
	l := f.cfg.RRL
	if r.cookie == cookieValidServer {
		f.c.rrlCookieExempt.Add(1)
		return resp
	}
	a := r.Client.Addr()
	if l.exempted(a) {
		return resp
	}
	c := rrlCategoryOf(dnsmsg.Rcode(resp))
	v, evicted := l.check(a, c, l.now(r.start))
	if evicted {
		f.c.rrlEvictions.Add(1)
	}
	switch v {
	case rrlDrop:
		f.c.rrlDropped[c].Add(1)
		return nil
	case rrlSlip:
		f.c.rrlSlipped[c].Add(1)
		return truncatedAnswer(reuse(resp, out), r)
	}
	return resp
}

// withOptions adds to resp the EDNS options that are per client and per
// answer, in BIND's order: the configured NSID when r asked for it (RFC
// 5001), a server cookie when r sent a client cookie (RFC 7873), and r's
// client subnet back with the scope of the answer (RFC 7871 7.2.1; 0 when
// it is not specific to a subnet). They go within the room out gives (resp is
// built at the start of out; with out nil, a copy with room is made) and
// max octets; without room the answer goes without them.
// An error answer to an EDNS version xdoh does not speak gets none.
func (f *Forwarder) withOptions(r *Request, resp, out []byte, max int) []byte {
	nsid := len(f.cfg.NSID) > 0 && r.Q.NSID
	cookie := f.cfg.Cookies != nil && r.Q.Cookie != nil
	if !nsid && !cookie && r.Q.ECS == nil || len(resp) == 0 || r.Q.Version != 0 {
		return resp
	}
	if out == nil {
		resp = append(make([]byte, 0, len(resp)+4+len(f.cfg.NSID)+4+24+4+20), resp...)
	} else {
		resp = resp[:len(resp):min(cap(resp), len(out))]
	}
	if nsid {
		resp = dnsmsg.AppendOption(resp, dnsmsg.OptionNSID, f.cfg.NSID, max)
	}
	if cookie {
		if r.cookie == cookieValidServer && !cookieStale(r.Q.Cookie, r.start.Unix()) {
			resp = dnsmsg.AppendOption(resp, dnsmsg.OptionCookie, r.Q.Cookie, max) // still fresh: its own back
		} else {
			var c [24]byte
			var a [16]byte
			f.cfg.Cookies.make(&c, r.Q.Cookie[:8], clientAddr(&a, r.Client.Addr()), r.start.Unix())
			resp = dnsmsg.AppendOption(resp, dnsmsg.OptionCookie, c[:], max)
		}
	}
	if r.Q.ECS != nil {
		var e [4 + 16]byte
		n := copy(e[:], r.Q.ECS)
		e[3] = r.ecsScope
		resp = dnsmsg.AppendOption(resp, dnsmsg.OptionECS, e[:n], max)
	}
	return resp
}

// clientAddr writes a's address octets (4 for IPv4, IPv4-mapped included)
// into b and returns them: the client address of a server cookie.
func clientAddr(b *[16]byte, a netip.Addr) []byte {
	a = a.Unmap()
	if a.Is4() {
		v := a.As4()
		return append(b[:0], v[:]...)
	}
	*b = a.As16()
	return b[:]
}

// checkCookie judges r's COOKIE option and counts it. With Cookies'
// require, a UDP query with a client cookie but without a valid server
// cookie is answered BADCOOKIE and a fresh cookie (RFC 7873 5.2.3), into
// out; the client retries with it. Over TCP and DoH the connection has
// already shown the address is the client's.
func (f *Forwarder) checkCookie(r *Request, out []byte) ([]byte, bool) {
	c := f.cfg.Cookies
	if c == nil || r.Q.Cookie == nil {
		return nil, false
	}
	var a [16]byte
	v := c.check(r.Q.Cookie, clientAddr(&a, r.Client.Addr()), r.start.Unix())
	r.cookie = v
	f.c.cookies[v].Add(1)
	if !c.require || v == cookieValidServer || r.Transport != TransportUDP {
		return nil, false
	}
	f.c.badCookie.Add(1)
	r.badCookie = true
	return dnsmsg.AppendError(out[:0], r.Msg, &r.Q, dnsmsg.RcodeBadCookie), true
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
	if r.Q.HasOPT && r.Q.Version != 0 {
		// RFC 6891 6.1.3: only EDNS version 0 is implemented.
		return dnsmsg.AppendError(out[:0], r.Msg, &r.Q, dnsmsg.RcodeBadVers), nil, true
	}
	if resp, ok := f.checkCookie(r, out); ok {
		return resp, nil, true
	}
	if rc := metaRcode(r); rc >= 0 {
		if rc == dnsmsg.RcodeFormErr {
			f.c.formerr.Add(1)
		}
		return dnsmsg.AppendError(out[:0], r.Msg, &r.Q, rc), nil, true
	}
	maxSize := r.MaxResponseSize()
	var rule *Rule
	if f.ecs {
		// The subnet a rule sends is part of the cache key: route first.
		rule = f.route(&r.Q)
		f.ecsFor(rule).setSubnet(r)
	}
	if f.cfg.Cache != nil {
		if resp, res := f.cacheGet(r, out, maxSize); res != cache.Miss {
			f.c.hits.Add(1)
			r.cacheHit = true
			if res == cache.HitPrefetch {
				f.prefetch(r)
			}
			return resp, nil, true
		}
	}
	if !f.ecs {
		rule = f.route(&r.Q)
	}
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

// cacheGet looks r up in the cache: the entry for its subnet, if it has
// one, else the entry for everyone (an answer the upstream scoped to /0).
func (f *Forwarder) cacheGet(r *Request, out []byte, maxSize int) ([]byte, cache.Result) {
	resp, res := f.cfg.Cache.Get(&r.Q, out, maxSize)
	if sub := r.Q.Subnet; sub != nil {
		if res != cache.Miss {
			r.ecsScope = sub[2] // at most this specific: the subnet it was asked for
			return resp, res
		}
		r.Q.Subnet = nil
		resp, res = f.cfg.Cache.Get(&r.Q, out, maxSize)
		r.Q.Subnet = sub
	}
	return resp, res
}

// ecsFor is the client-subnet policy for names routed to rule (nil: the
// default targets). Only upstreams get subnets: local zones and blocks
// answer everyone alike.
func (f *Forwarder) ecsFor(rule *Rule) ECS {
	switch {
	case rule == nil || rule.Type == rules.System:
		return f.cfg.DefaultECS
	case rule.Type == rules.Forward:
		return rule.ECS
	}
	return ECS{}
}

// metaRcode is the error answer to a question no rule answers, as BIND 9.18
// gives it (forwarder/conformance_test.go compares), or -1 for a question
// to route: zone transfers are not served (AXFR and IXFR over UDP and IXFR
// everywhere are FORMERR, AXFR over a stream REFUSED), QCLASS ANY with a
// plain type is FORMERR, and a class other than IN, CH and HS NOTIMP.
func metaRcode(r *Request) int {
	switch {
	case r.Q.Type == dnsmsg.TypeAXFR && r.Transport != TransportUDP:
		return dnsmsg.RcodeRefused
	case r.Q.Type == dnsmsg.TypeAXFR, r.Q.Type == dnsmsg.TypeIXFR, r.Q.Class == dnsmsg.ClassANY:
		return dnsmsg.RcodeFormErr
	case r.Q.Class != dnsmsg.ClassINET && r.Q.Class != dnsmsg.ClassCHAOS && r.Q.Class != dnsmsg.ClassHESIOD:
		return dnsmsg.RcodeNotImp
	}
	return -1
}

// route returns the most specific rule for q, nil for none.
func (f *Forwarder) route(q *dnsmsg.Query) *Rule {
	var lb [256]byte
	if m := f.table.Match(dnsmsg.AppendLower(lb[:0], q.Name)); m != nil {
		return m.Value.(*Rule)
	}
	return nil
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
	if r.Q.Type == dns.TypeANY {
		resp.Answer = firstRRset(resp.Answer)
	}
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
			f.cfg.Cache.PutAs(f.cfg.CacheGeneration, &r.Q, b, qend)
		}
	}
	return f.truncate(b, maxSize)
}

// firstRRset is RFC 8482's minimal answer to ANY: the first RRset of the
// full answer (records of the first record's owner and type), not every
// record the name has, which made ANY the amplifier of choice.
func firstRRset(rrs []dns.RR) []dns.RR {
	if len(rrs) < 2 {
		return rrs
	}
	h := rrs[0].Header()
	out := rrs[:1]
	for _, rr := range rrs[1:] {
		if rh := rr.Header(); rh.Rrtype == h.Rrtype && strings.EqualFold(rh.Name, h.Name) {
			out = append(out, rr)
		}
	}
	return out
}

func (f *Forwarder) truncate(resp []byte, maxSize int) []byte {
	if len(resp) > maxSize {
		f.c.truncated.Add(1)
		return dnsmsg.Truncate(resp, maxSize)
	}
	return resp
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

// TargetState is one target of one rule's group.
type TargetState struct {
	Rule string // the forward rule's name, or "default" for the default targets
	group.State
}

// Health returns the state of every target of every group: the forward
// rules' in configured order, then the default targets'.
func (f *Forwarder) Health() []TargetState {
	var out []TargetState
	for i, g := range f.groups {
		for _, st := range g.States() {
			out = append(out, TargetState{Rule: f.gnames[i], State: st})
		}
	}
	return out
}

// SetDrained takes target (as configured) out of rotation in every group
// that has it, or puts it back (group.Group.SetDrained), and returns in
// how many groups it found it.
func (f *Forwarder) SetDrained(target string, on bool) int {
	n := 0
	for _, g := range f.groups {
		if g.SetDrained(target, on) > 0 {
			n++
		}
	}
	return n
}

// reply copies an upstream response into out for the client: its ID, its
// letter case in the question, its size limit.
func (f *Forwarder) reply(r *Request, resp, out []byte) []byte {
	out = append(out[:0], resp...)
	dnsmsg.SetID(out, r.Q.ID)
	dnsmsg.CopyQuestionName(out, r.Q.Name)
	return f.truncate(out, r.MaxResponseSize())
}
