package forwarder

import (
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"xdoh/forwarder/querylog"
	"xdoh/forwarder/upstream"
)

// QueryLogger receives one entry per answered query (forwarder/querylog).
// Log must not block and must copy what it keeps.
type QueryLogger interface {
	Log(e *querylog.Entry)
}

// listenerInfo is what the pipeline looks up once per query by listener
// name: the ACL and the listener's slot in Counters.
type listenerInfo struct {
	acl *Listener
	idx int
}

// Listener is the pipeline's view of an inbound listener: its name and its
// source ACL (the security-group analog), enforced here for every transport.
type Listener struct {
	Name  string
	Allow []netip.Prefix // empty: everyone
	Drop  bool           // refused clients get no answer instead of REFUSED
}

func (l *Listener) allowed(a netip.Addr) bool {
	if len(l.Allow) == 0 {
		return true
	}
	a = a.Unmap()
	for _, p := range l.Allow {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// Transports and RCODE slots counted per listener. Slot 16 of the RCODEs is
// "no answer sent".
const (
	nTransports = int(TransportDoQ) + 1
	nRcodes     = 17
	rcodeNone   = 16
)

// LatencyBuckets are the upper bounds of the latency histogram.
var LatencyBuckets = []time.Duration{
	50 * time.Microsecond, 100 * time.Microsecond, 250 * time.Microsecond, 500 * time.Microsecond,
	time.Millisecond, 2500 * time.Microsecond, 5 * time.Millisecond, 10 * time.Millisecond,
	25 * time.Millisecond, 50 * time.Millisecond, 100 * time.Millisecond, 250 * time.Millisecond,
	500 * time.Millisecond, time.Second, 2500 * time.Millisecond, 5 * time.Second,
}

type histogram struct {
	buckets [17]atomic.Uint64 // len(LatencyBuckets) + the +Inf bucket
	sumNs   atomic.Uint64
}

// Counters outlive a Forwarder: a reload builds a new pipeline on the same
// Counters, so exported counters never go backwards.
type Counters struct {
	queries, dropped, formerr, hits, local, blocked, forwarded,
	servfail, overload, upErrs, truncated, stale, coalesced, prefetches,
	aclRefused, aclDropped, logged atomic.Uint64
	cookies   [4]atomic.Uint64 // queries by cookieVerdict
	badCookie atomic.Uint64    // BADCOOKIE answers (Cookies require)
	// Response-rate limiting: answers dropped and slipped by rrlCategory,
	// answers exempt by a valid cookie, live entries evicted.
	rrlDropped, rrlSlipped        [rrlCategories]atomic.Uint64
	rrlCookieExempt, rrlEvictions atomic.Uint64

	upMu      sync.Mutex
	upstreams map[string]*TargetStats // by target as configured

	listeners []string                              // index → name; 0 is "" (unknown)
	index     map[string]int                        // name → index
	answers   [][nTransports][nRcodes]atomic.Uint64 // [listener][transport][rcode]
	latency   [nTransports]histogram
}

// NewCounters makes counters for the named listeners.
func NewCounters(listeners ...string) *Counters {
	c := &Counters{listeners: append([]string{""}, listeners...), index: map[string]int{}}
	for i, n := range c.listeners {
		c.index[n] = i
	}
	c.answers = make([][nTransports][nRcodes]atomic.Uint64, len(c.listeners))
	return c
}

// TargetStats counts one upstream target's exchanges.
type TargetStats struct {
	attempts, errors atomic.Uint64
	reasons          [len(upstream.Reasons)]atomic.Uint64 // errors by upstream.Reason
	up               atomic.Bool                          // the last exchange gave a usable answer
	latency          histogram
}

// target returns the stats of the named target, created on first use; a
// reload keeps them.
func (c *Counters) target(name string) *TargetStats {
	c.upMu.Lock()
	defer c.upMu.Unlock()
	if c.upstreams == nil {
		c.upstreams = map[string]*TargetStats{}
	}
	ts := c.upstreams[name]
	if ts == nil {
		ts = &TargetStats{}
		ts.up.Store(true)
		c.upstreams[name] = ts
	}
	return ts
}

func (ts *TargetStats) record(err error, lat time.Duration) {
	ok := err == nil
	ts.attempts.Add(1)
	if !ok {
		ts.errors.Add(1)
		ts.reasons[upstream.Reason(err)].Add(1)
	}
	ts.up.Store(ok)
	ts.latency.observe(lat)
}

// Upstream is the exported view of one target's stats.
type Upstream struct {
	Target           string
	Attempts, Errors uint64
	// Failures are Errors by kind, indexed like upstream.Reasons.
	Failures [len(upstream.Reasons)]uint64
	Up       bool
	Latency  Latency
}

// Upstreams returns every target's stats.
func (c *Counters) Upstreams() []Upstream {
	c.upMu.Lock()
	defer c.upMu.Unlock()
	var out []Upstream
	for name, ts := range c.upstreams {
		u := Upstream{Target: name, Attempts: ts.attempts.Load(), Errors: ts.errors.Load(), Up: ts.up.Load(), Latency: ts.latency.snapshot()}
		for i := range ts.reasons {
			u.Failures[i] = ts.reasons[i].Load()
		}
		out = append(out, u)
	}
	return out
}

func (h *histogram) observe(lat time.Duration) {
	i := 0
	for i < len(LatencyBuckets) && lat > LatencyBuckets[i] {
		i++
	}
	h.buckets[i].Add(1)
	h.sumNs.Add(uint64(lat))
}

func (h *histogram) snapshot() Latency {
	l := Latency{Sum: time.Duration(h.sumNs.Load())}
	var cum uint64
	for i := range h.buckets {
		cum += h.buckets[i].Load()
		l.Buckets = append(l.Buckets, cum)
	}
	return l
}

// record counts one finished query by listener, transport and rcode, and its
// latency by transport.
func (c *Counters) record(r *Request, resp []byte, lat time.Duration) {
	rc := rcodeNone
	if len(resp) >= 4 {
		rc = int(resp[3] & 0xF)
	}
	t := int(r.Transport)
	if t >= nTransports {
		t = 0
	}
	c.answers[r.lidx][t][rc].Add(1) // 0: a listener the pipeline was not told about
	c.latency[t].observe(lat)
}

// AnswerCount is one (listener, transport, rcode) series.
type AnswerCount struct {
	Listener, Transport, Rcode string
	Count                      uint64
}

// Answers returns the non-zero answer counters. Rcode is the RCODE's name or
// "none" when no answer was sent.
func (c *Counters) Answers() []AnswerCount {
	var out []AnswerCount
	for li := range c.answers {
		for t := range c.answers[li] {
			for rc := range c.answers[li][t] {
				n := c.answers[li][t][rc].Load()
				if n == 0 {
					continue
				}
				out = append(out, AnswerCount{Listener: c.listeners[li], Transport: Transport(t).String(), Rcode: rcodeName(rc), Count: n})
			}
		}
	}
	return out
}

// Latency is a cumulative histogram for one transport.
type Latency struct {
	Transport string
	Buckets   []uint64 // cumulative counts per LatencyBuckets bound, then +Inf
	Sum       time.Duration
}

// Latencies returns the latency histograms of the transports seen.
func (c *Counters) Latencies() []Latency {
	var out []Latency
	for t := 1; t < nTransports; t++ {
		l := c.latency[t].snapshot()
		l.Transport = Transport(t).String()
		out = append(out, l)
	}
	return out
}

func rcodeName(rc int) string {
	switch rc {
	case 0:
		return "NOERROR"
	case 1:
		return "FORMERR"
	case 2:
		return "SERVFAIL"
	case 3:
		return "NXDOMAIN"
	case 4:
		return "NOTIMP"
	case 5:
		return "REFUSED"
	case rcodeNone:
		return "none"
	}
	return "RCODE" + string(rune('0'+rc/10)) + string(rune('0'+rc%10))
}

// finish accounts for a query whose response (nil: none) is final: counters,
// latency, query log.
func (f *Forwarder) finish(r *Request, resp []byte) {
	lat := time.Since(r.start)
	f.c.record(r, resp, lat)
	if f.cfg.Log == nil {
		return
	}
	ruleName := ""
	if r.rule != nil {
		ruleName = r.rule.Name
	}
	// The entry lives in the request (no allocation per query); the logger
	// copies what it keeps.
	r.logEntry = querylog.Entry{
		Time: r.start, Query: r.Msg, Response: resp, Client: r.Client,
		Transport: r.Transport.String(), Listener: r.Listener,
		Rule: ruleName, Target: r.target, UpstreamTransport: upstreamTransport(r.target),
		CacheHit: r.cacheHit, Latency: lat,
	}
	f.cfg.Log.Log(&r.logEntry)
	f.c.logged.Add(1)
}

// upstreamTransport names the protocol of an upstream target as the query
// log's upstream_transport field does, with the names of Transport.
func upstreamTransport(target string) string {
	scheme, _, found := strings.Cut(target, "://")
	switch {
	case target == "":
		return ""
	case !found, scheme == "udp":
		return "UDP"
	case scheme == "https":
		return "DoH"
	case scheme == "tls":
		return "DoT"
	case scheme == "quic":
		return "DoQ"
	case scheme == "tcp":
		return "TCP"
	}
	return scheme
}
