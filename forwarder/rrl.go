package forwarder

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net/netip"
	"sync"
	"time"
)

// RRLConfig configures response-rate limiting (RRL) of UDP answers per
// client prefix, in the manner of BIND's rate-limit: a source address can
// be spoofed over UDP, so an attacker can aim answers at a victim; RRL
// bounds what any one prefix receives. TCP, DoT, DoH and DoQ prove the
// address and are never limited; neither is a query with a valid server
// cookie (RFC 7873), nor one from an Exempt prefix.
type RRLConfig struct {
	// ResponsesPerSecond is the rate of answers (NOERROR) per prefix; it
	// must be above 0.
	ResponsesPerSecond float64
	// NXDomainsPerSecond is the rate of NXDOMAIN answers, and
	// ErrorsPerSecond of error answers (FORMERR, SERVFAIL, NOTIMP,
	// REFUSED, BADCOOKIE), each in a bucket of its own per prefix; 0
	// means ResponsesPerSecond.
	NXDomainsPerSecond, ErrorsPerSecond float64
	// Burst is how many answers of each kind a prefix may get at once
	// before the rate applies (0: one second's worth of ResponsesPerSecond).
	Burst int
	// Slip: every Slip-th answer that is over the limit is sent as an
	// empty truncated (TC) answer instead of being dropped, so that a real
	// client behind a spoofed flood retries over TCP. 1 always does; 0
	// means SlipDefault (2, BIND's); NoSlip never does.
	Slip int
	// IPv4Prefix and IPv6Prefix are the prefix lengths clients are
	// grouped by (default 24 and 56).
	IPv4Prefix, IPv6Prefix int
	// Exempt prefixes are never limited.
	Exempt []netip.Prefix
	// Entries is the number of prefixes tracked at once (default 65536);
	// the table is allocated once, at this size.
	Entries int
}

// Slip settings: SlipDefault is what RRLConfig.Slip's zero value stands
// for (BIND's default); NoSlip never slips (BIND's slip 0).
const (
	SlipDefault = 2
	NoSlip      = -1
)

// rrlCategory is the kind of answer a bucket counts.
type rrlCategory uint8

const (
	rrlResponses rrlCategory = iota // NOERROR
	rrlNXDomains                    // NXDOMAIN
	rrlErrors                       // every other RCODE
	rrlCategories
)

func (c rrlCategory) String() string {
	switch c {
	case rrlResponses:
		return "responses"
	case rrlNXDomains:
		return "nxdomains"
	}
	return "errors"
}

// rrlVerdict is what the limiter says of one answer.
type rrlVerdict uint8

const (
	rrlPass rrlVerdict = iota // send it
	rrlDrop                   // over the limit: send nothing
	rrlSlip                   // over the limit: send an empty TC answer
)

// rrlWays is the associativity of the table: a prefix lives in one of the
// rrlWays entries of the set its hash picks. One lock per set keeps UDP
// loops from waiting on each other unless they serve the same set.
const rrlWays = 8

// rrlEntry is one prefix's buckets, in the form of the generic cell rate
// algorithm: per category the theoretical arrival time (ns since the
// limiter's start) of the next answer at the steady rate. An answer at t
// is within the limit when tat-t <= (Burst-1)·interval; it then moves tat
// one interval on. One int64 per bucket, and no refill to compute.
type rrlEntry struct {
	hi, lo uint64 // the masked prefix
	tat    [rrlCategories]int64
	slips  uint32 // answers over the limit, for Slip
	used   bool
}

// debt is how far ahead of now the entry's fullest bucket is: 0 when every
// bucket is full again, so forgetting the entry loses nothing.
func (e *rrlEntry) debt(now int64) int64 {
	d := int64(0)
	for _, t := range e.tat {
		d = max(d, t-now)
	}
	return d
}

type rrlSet struct {
	mu sync.Mutex
	e  [rrlWays]rrlEntry
}

// RRL is a response-rate limiter: a fixed table of token buckets (GCRA)
// per client prefix, allocated once. A prefix not in the table takes the
// entry of its set that owes the least (one whose buckets are full again
// if there is one, losing nothing); taking one that still owes is an
// eviction, counted. Checking an answer allocates nothing and locks one
// set. It is safe for concurrent use, and outlives a reload whose rrl
// settings did not change.
type RRL struct {
	cfg      RRLConfig
	interval [rrlCategories]int64 // ns between answers at the steady rate
	tol      [rrlCategories]int64 // (burst-1) intervals
	slip     uint32
	v4mask   uint32
	v6hi     uint64
	v6lo     uint64
	exempt   []netip.Prefix
	sets     []rrlSet
	mask     uint64
	seed     [2]uint64
	base     time.Time // the zero of tat, with a monotonic reading
}

// NewRRL builds a limiter with its table.
func NewRRL(cfg RRLConfig) (*RRL, error) {
	if !(cfg.ResponsesPerSecond > 0) || math.IsInf(cfg.ResponsesPerSecond, 0) {
		return nil, errors.New("rrl: responses per second must be above 0")
	}
	if cfg.NXDomainsPerSecond < 0 || cfg.ErrorsPerSecond < 0 || cfg.Burst < 0 || cfg.Slip < NoSlip || cfg.Entries < 0 {
		return nil, errors.New("rrl: negative setting")
	}
	if cfg.IPv4Prefix == 0 {
		cfg.IPv4Prefix = 24
	}
	if cfg.IPv6Prefix == 0 {
		cfg.IPv6Prefix = 56
	}
	if cfg.IPv4Prefix < 1 || cfg.IPv4Prefix > 32 || cfg.IPv6Prefix < 1 || cfg.IPv6Prefix > 128 {
		return nil, fmt.Errorf("rrl: prefix lengths /%d and /%d: want 1..32 and 1..128", cfg.IPv4Prefix, cfg.IPv6Prefix)
	}
	if cfg.Burst == 0 {
		cfg.Burst = int(math.Ceil(cfg.ResponsesPerSecond))
	}
	if cfg.Slip == 0 {
		cfg.Slip = SlipDefault
	}
	if cfg.Entries == 0 {
		cfg.Entries = 65536
	}
	l := &RRL{cfg: cfg, base: time.Now(), exempt: cfg.Exempt}
	for c, rate := range [rrlCategories]float64{cfg.ResponsesPerSecond, cfg.NXDomainsPerSecond, cfg.ErrorsPerSecond} {
		if rate == 0 {
			rate = cfg.ResponsesPerSecond
		}
		l.interval[c] = max(1, int64(float64(time.Second)/rate))
		l.tol[c] = int64(cfg.Burst-1) * l.interval[c]
	}
	if cfg.Slip > 0 {
		l.slip = uint32(cfg.Slip)
	}
	l.v4mask = ^uint32(0) << (32 - cfg.IPv4Prefix)
	if p := cfg.IPv6Prefix; p <= 64 {
		l.v6hi = ^uint64(0) << (64 - p)
	} else {
		l.v6hi, l.v6lo = ^uint64(0), ^uint64(0)<<(128-p)
	}
	n := 1
	for n*rrlWays < cfg.Entries {
		n <<= 1
	}
	l.sets = make([]rrlSet, n)
	l.mask = uint64(n - 1)
	l.seed = [2]uint64{rand.Uint64(), rand.Uint64()}
	return l, nil
}

// Config returns the settings in force, defaults filled in.
func (l *RRL) Config() RRLConfig { return l.cfg }

// now is t as ns since the limiter's start.
func (l *RRL) now(t time.Time) int64 { return int64(t.Sub(l.base)) }

// key is a's prefix: IPv4 (IPv4-mapped included) in its IPv4-mapped form,
// so that the two families never share an entry.
func (l *RRL) key(a netip.Addr) (hi, lo uint64) {
	a = a.Unmap()
	if a.Is4() {
		v := a.As4()
		return 0, 0xFFFF<<32 | uint64(binary.BigEndian.Uint32(v[:])&l.v4mask)
	}
	v := a.As16()
	return binary.BigEndian.Uint64(v[:8]) & l.v6hi, binary.BigEndian.Uint64(v[8:]) & l.v6lo
}

// exempted says whether a is in an exempt prefix.
func (l *RRL) exempted(a netip.Addr) bool {
	if len(l.exempt) == 0 {
		return false
	}
	a = a.Unmap()
	for _, p := range l.exempt {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// check counts an answer of category c to client a at now (ns since the
// limiter's start) and says whether it goes out; evicted reports that the
// prefix took the entry of another prefix that was still being limited.
func (l *RRL) check(a netip.Addr, c rrlCategory, now int64) (v rrlVerdict, evicted bool) {
	hi, lo := l.key(a)
	h := (hi ^ l.seed[0]) * 0x9E3779B97F4A7C15
	h = (h ^ lo ^ l.seed[1]) * 0xFF51AFD7ED558CCD
	h ^= h >> 33
	s := &l.sets[h&l.mask]
	s.mu.Lock()
	e := s.find(hi, lo, now, &evicted)
	tat := max(e.tat[c], now)
	if tat-now > l.tol[c] {
		e.slips++
		slip := l.slip > 0 && e.slips%l.slip == 0
		s.mu.Unlock()
		if slip {
			return rrlSlip, evicted
		}
		return rrlDrop, evicted
	}
	e.tat[c] = tat + l.interval[c]
	s.mu.Unlock()
	return rrlPass, evicted
}

// find returns the entry of the prefix, taking the one that owes least
// when the prefix has none. mu held.
func (s *rrlSet) find(hi, lo uint64, now int64, evicted *bool) *rrlEntry {
	victim := -1
	var least int64
	for i := range s.e {
		e := &s.e[i]
		if !e.used {
			if victim < 0 || least > 0 {
				victim, least = i, 0
			}
			continue
		}
		if e.hi == hi && e.lo == lo {
			return e
		}
		if d := e.debt(now); victim < 0 || d < least {
			victim, least = i, d
		}
	}
	*evicted = least > 0
	s.e[victim] = rrlEntry{hi: hi, lo: lo, used: true}
	return &s.e[victim]
}

// rrlCategoryOf is the bucket an answer with the header RCODE rc counts in.
func rrlCategoryOf(rc int) rrlCategory {
	switch rc {
	case 0:
		return rrlResponses
	case 3:
		return rrlNXDomains
	}
	return rrlErrors
}
