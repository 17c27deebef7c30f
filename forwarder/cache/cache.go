// Package cache keeps DNS responses in wire format, keyed by the lower-cased
// question name, type, class and the EDNS bits that change an answer (OPT
// present, DO, CD; dnsmsg.AppendKey).
//
// A hit copies the stored response into a caller-owned buffer and patches it
// for the client: its ID, every TTL minus the entry's age, the question name in
// the client's letter case, and truncation to the client's size limit.
//
// # Structure
//
// The table is a power-of-two array of buckets. A bucket is one 64-octet cache
// line holding five ways: five atomic pointers to entries, five 32-bit tag
// hints and a CLOCK hand for the writers. A key's 64-bit maphash (seeded per
// cache) picks the bucket with its low bits; its high bits are the hint, so a
// reader skips the ways of other keys without touching their entries. An
// entry is immutable once published (key and response in one byte slice,
// stored/expiry/stale-until times in unix seconds, the original TTL) except
// for two small atomics: the CLOCK reference bit and the prefetch-claimed
// flag.
//
// Readers take no lock: a lookup is one bucket line, one entry and its bytes.
// Writers publish with CompareAndSwap on a way. The entry and byte counters
// are adjusted from the pointer each successful CAS replaced, so they stay
// exact however writers race.
//
// # Eviction
//
// A Put into a full bucket replaces, in this order: the same key, an empty
// way, an entry expired past its stale window, an expired entry still inside
// it, and otherwise runs CLOCK over the bucket's ways: a hit sets an entry's
// reference bit, the sweeping writer clears it and takes the first entry
// found without one. When the table holds more than Config.Entries entries or
// Config.MaxBytes octets, a global CLOCK hand sweeps all ways the same way
// (dead entries go regardless of their bit) until both bounds hold again,
// passing over the entry whose insert triggered it. New entries start with
// the bit clear, so an entry asked for once goes before one asked for again;
// popular entries set their bit again between two passes of a hand and
// survive.
//
// # Memory bound
//
// Config.MaxBytes bounds the octets of keys and responses. Each entry adds
// about 100 octets the bound does not count (the entry struct, allocator
// size-class slack of the byte slice) and the table 13 octets per way; the
// table has at least 1.25 ways per entry, for min(Entries, MaxBytes/64)
// entries, rounded up to a power of two of buckets. So the heap used is at
// most roughly MaxBytes·1.125 + Entries·(100+32) octets.
//
// # GC pressure
//
// Every entry is two heap objects: the entry struct (which holds a pointer)
// and its pointer-free byte slice. With millions of entries the collector
// marks millions of objects and scans the whole bucket array on every cycle;
// a large, stable live heap makes cycles rarer but each one costs CPU in
// proportion to the entry count. An arena (one big pointer-free slab, ways
// holding offsets instead of pointers) would make the table invisible to the
// GC, but then the cache must reclaim memory itself, and a lock-free reader
// may still be copying from a slab region a writer reuses: that needs epochs,
// hazard pointers or a copy-then-validate generation check on every hit.
// Garbage-collected pointers give safe reclamation for free, which is why
// this package uses them; an arena is the next step if GC CPU shows in
// profiles at tens of millions of entries.
//
// # False sharing
//
// The read path writes nothing shared: bucket lines change only when writers
// publish, the reference bit is written only when it is clear, and the hit,
// miss, stale and prefetch counters are striped over padded slots chosen by
// the calling goroutine's stack address, so each event loop increments its
// own line and a single hot key does not make all cores fight over one.
// Writer-side counters (entries, bytes, the global hand) sit on their own
// padded lines, away from the read-only fields every Get loads.
//
// # Races between writers
//
// Two Puts of the same key race only when two upstream answers to the same
// question arrive moments apart; either is a correct answer, so the last
// writer wins. A writer that finds another copy of its key in the bucket
// (both published into different empty ways) removes the older one. A reader
// may briefly miss an entry whose way is being rewritten (its tag hint lags
// the pointer); that costs one upstream query, never a wrong answer, because
// a hit is confirmed against the entry's full tag and key.
//
// # Reloads
//
// A configuration reload keeps the cache: Invalidate removes only the
// entries whose name the caller says changed hands (a rule or zone that
// differs), and moves the cache to a new generation. Every writer puts as
// the generation of the pipeline it belongs to (PutAs); a Put of an older
// generation is refused, and one that published just as Invalidate moved on
// withdraws its own entry, so a pipeline being retired cannot put back an
// answer of its old rules after the sweep. The read path does not look at
// generations: a hit costs what it did.
//
// # Operator's view
//
// Flush removes what the operator names (everything, a name's subtree, one
// type) with the same sweep, without a new generation; Range walks the
// entries for a dump. Both run beside readers and writers, lock-free.
package cache

import (
	"hash/maphash"
	"sync/atomic"
	"time"

	"xdoh/internal/dnsmsg"
)

// Config bounds the cache.
type Config struct {
	// Entries is the maximum number of entries (default 100000). The table
	// capacity derives from it.
	Entries int
	// MaxBytes bounds the octets of stored responses and keys
	// (default Entries*512).
	MaxBytes int64
	MinTTL   time.Duration // answers are kept at least this long (default 0)
	MaxTTL   time.Duration // and at most this long (default 24h)
	// ServFailTTL is how long a SERVFAIL from upstream is kept (0: not
	// cached; at most 30s).
	ServFailTTL time.Duration
	// StaleWindow is how long after expiry an entry may still be served by
	// GetStale (RFC 8767; 0: off).
	StaleWindow time.Duration
	// Now is the clock (default time.Now).
	Now func() time.Time
	// OnChange, if set, is called with the key (AppendKey's form) of an
	// entry whose answer changes: before a response for it is stored and
	// again once it is, and after an eviction takes it out. A copy of the
	// cache elsewhere (the XDP program's answers) drops its entry for the
	// key then, so it never answers what the cache no longer would. It
	// must be quick for keys it does not hold: it runs on the writers'
	// goroutines.
	OnChange func(key []byte)
}

// Result says what Get found.
type Result uint8

const (
	// Miss: nothing fresh for the query.
	Miss Result = iota
	// Hit: a fresh entry was copied out.
	Hit
	// HitPrefetch is a Hit on an entry whose remaining TTL is under 10% of
	// its original TTL (of at least 10s). It is returned once per stored
	// entry, so exactly one caller refreshes it.
	HitPrefetch
)

func (r Result) String() string {
	switch r {
	case Miss:
		return "miss"
	case Hit:
		return "hit"
	case HitPrefetch:
		return "hit-prefetch"
	}
	return "invalid"
}

// Stats are cumulative counters plus the current size.
type Stats struct {
	Hits, Misses, Stale, Inserts, Evictions, Prefetches uint64
	// Invalidations counts entries removed by Invalidate; Flushed those
	// removed by Flush.
	Invalidations, Flushed uint64
	Entries                int
	Bytes                  int64
}

const (
	// maxServFailTTL caps Config.ServFailTTL.
	maxServFailTTL = 30 * time.Second
	// staleTTL is the TTL of every record of a stale answer (RFC 8767 §4).
	staleTTL = 30
	// prefetchMinTTL is the shortest original TTL that is prefetched.
	prefetchMinTTL = 10
	// minEntryBytes sizes the table for a MaxBytes far below Entries*512:
	// key, header, question and one A record of a short name.
	minEntryBytes = 64
)

// pad separates fields written by different cores.
type pad [128]byte

// Cache is safe for concurrent use.
type Cache struct {
	// Read-only after New; every Get loads these.
	buckets    []bucket
	mask       uint64 // len(buckets)-1
	slots      uint64 // len(buckets)*ways
	seed       maphash.Seed
	now        func() time.Time
	minTTL     time.Duration
	maxTTL     time.Duration
	servFail   time.Duration
	stale      int64 // StaleWindow in seconds, rounded up
	onChange   func(key []byte)
	maxEntries int64
	maxBytes   int64

	_ pad
	// Written by Put.
	entries   atomic.Int64
	bytes     atomic.Int64
	hand      atomic.Uint64 // global CLOCK hand, a way index modulo slots
	seq       atomic.Uint64 // orders entries of one key
	inserts   atomic.Uint64
	evictions atomic.Uint64
	invalid   atomic.Uint64
	flushed   atomic.Uint64
	// gen is the oldest generation whose Puts are accepted (Invalidate).
	gen atomic.Uint64
	_   pad

	// Written by Get and GetStale.
	ctr [stripes]stripe
}

// New makes a cache; zero fields of cfg take their defaults.
func New(cfg Config) *Cache {
	if cfg.Entries <= 0 {
		cfg.Entries = 100000
	}
	if cfg.MaxBytes <= 0 {
		cfg.MaxBytes = int64(cfg.Entries) * 512
	}
	if cfg.MaxTTL <= 0 {
		cfg.MaxTTL = 24 * time.Hour
	}
	if cfg.ServFailTTL > maxServFailTTL {
		cfg.ServFailTTL = maxServFailTTL
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	// At least 1.25 ways per entry, so buckets rarely fill before the
	// entry bound is reached. A response with its key is rarely under
	// minEntryBytes, so a tight MaxBytes needs fewer ways, and the global
	// hand then does not crawl over empty ones.
	n := min(int64(cfg.Entries), (cfg.MaxBytes+minEntryBytes-1)/minEntryBytes)
	nb := uint64(1)
	for nb*ways*4 < uint64(n)*5 {
		nb <<= 1
	}
	return &Cache{
		buckets:    make([]bucket, nb),
		mask:       nb - 1,
		slots:      nb * ways,
		seed:       maphash.MakeSeed(),
		now:        cfg.Now,
		minTTL:     cfg.MinTTL,
		maxTTL:     cfg.MaxTTL,
		servFail:   cfg.ServFailTTL,
		stale:      ceilSeconds(cfg.StaleWindow),
		onChange:   cfg.OnChange,
		maxEntries: int64(cfg.Entries),
		maxBytes:   cfg.MaxBytes,
	}
}

// ceilSeconds returns d in whole seconds, a partial second counting as one.
func ceilSeconds(d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	return int64((d + time.Second - 1) / time.Second)
}

// hash returns the key of q (written into kb) and its hash.
func (c *Cache) hash(kb *[dnsmsg.MaxKeyLen]byte, q *dnsmsg.Query) ([]byte, uint64) {
	k := dnsmsg.AppendKey(kb[:0], q)
	return k, maphash.Bytes(c.seed, k)
}

// Get answers q from the cache into out (which must have room for a 64 KiB
// message) patched for the client: ID, TTLs, question-name case, truncated to
// maxSize. Only fresh entries answer; see GetStale for the others.
func (c *Cache) Get(q *dnsmsg.Query, out []byte, maxSize int) ([]byte, Result) {
	var kb [dnsmsg.MaxKeyLen]byte
	k, h := c.hash(&kb, q)
	e := c.lookup(h, k)
	now := c.now().Unix()
	ctr := c.stripe()
	if e == nil || now >= e.expires || cap(out) < len(e.data)-int(e.klen) {
		ctr.misses.Add(1)
		return nil, Miss
	}
	e.touch()
	ctr.hits.Add(1)
	res := Hit
	if e.orig >= prefetchMinTTL && (e.expires-now)*10 < e.orig &&
		e.claimed.Load() == 0 && e.claimed.CompareAndSwap(0, 1) {
		ctr.prefetches.Add(1)
		res = HitPrefetch
	}
	return e.patch(out, q, now, 0, maxSize), res
}

// ClaimPrefetch is the prefetch half of a hit, for an entry a copy of the
// cache elsewhere answers (the XDP program's) so that Get never sees its
// hits: true, once per stored entry, when q's fresh entry is in its
// prefetch window (as for HitPrefetch); the caller then refreshes it. It
// also sets the entry's CLOCK bit: it is being asked for.
func (c *Cache) ClaimPrefetch(q *dnsmsg.Query) bool {
	var kb [dnsmsg.MaxKeyLen]byte
	k, h := c.hash(&kb, q)
	e := c.lookup(h, k)
	now := c.now().Unix()
	if e == nil || now >= e.expires {
		return false
	}
	e.touch()
	if e.orig >= prefetchMinTTL && (e.expires-now)*10 < e.orig &&
		e.claimed.Load() == 0 && e.claimed.CompareAndSwap(0, 1) {
		c.stripe().prefetches.Add(1)
		return true
	}
	return false
}

// Peek is Get for a copy of the cache kept elsewhere: the fresh answer to q
// (patched likewise, never truncated) and the unix second at which it
// expires. It counts nothing and leaves the entry's CLOCK bit and prefetch
// claim alone, so it changes no eviction or refresh decision.
func (c *Cache) Peek(q *dnsmsg.Query, out []byte) ([]byte, int64, bool) {
	var kb [dnsmsg.MaxKeyLen]byte
	k, h := c.hash(&kb, q)
	e := c.lookup(h, k)
	now := c.now().Unix()
	if e == nil || now >= e.expires || cap(out) < len(e.data)-int(e.klen) {
		return nil, 0, false
	}
	return e.patch(out, q, now, 0, len(e.data)), e.expires, true
}

// GetStale answers q from an entry that expired less than StaleWindow ago
// (RFC 8767), with every TTL set to 30 seconds; the caller uses it when
// upstream failed. Such answers are counted in Stats.Stale. An entry that is
// fresh again (another caller refreshed it meanwhile) is returned as by Get.
// SERVFAIL entries are never served stale.
func (c *Cache) GetStale(q *dnsmsg.Query, out []byte, maxSize int) ([]byte, bool) {
	if c.stale == 0 {
		return nil, false
	}
	var kb [dnsmsg.MaxKeyLen]byte
	k, h := c.hash(&kb, q)
	e := c.lookup(h, k)
	now := c.now().Unix()
	if e == nil || now >= e.staleUntil || cap(out) < len(e.data)-int(e.klen) {
		return nil, false
	}
	e.touch()
	ctr := c.stripe()
	if now < e.expires {
		ctr.hits.Add(1)
		return e.patch(out, q, now, 0, maxSize), true
	}
	ctr.stale.Add(1)
	return e.patch(out, q, now, staleTTL, maxSize), true
}

// Put stores resp, the upstream's answer to q; qend is the offset after its
// question. resp is copied. Responses that must not be cached are ignored:
// see cacheTTL. It puts as the current generation.
func (c *Cache) Put(q *dnsmsg.Query, resp []byte, qend int) {
	c.PutAs(c.gen.Load(), q, resp, qend)
}

// PutAs is Put on behalf of a writer of generation gen: once Invalidate has
// moved the cache past gen, the response is not stored.
func (c *Cache) PutAs(gen uint64, q *dnsmsg.Query, resp []byte, qend int) {
	if gen < c.gen.Load() {
		return
	}
	ttl, ok := c.cacheTTL(q, resp, qend)
	if !ok {
		return
	}
	var kb [dnsmsg.MaxKeyLen]byte
	k, h := c.hash(&kb, q)
	if int64(len(k)+len(resp)) > c.maxBytes {
		return
	}
	if c.onChange != nil {
		c.onChange(k)
		defer c.onChange(k)
	}
	now := c.now().Unix()
	e := newEntry(k, resp, qend)
	dnsmsg.CapTTLs(e.resp(), qend, uint32(c.maxTTL/time.Second))
	e.tag = h
	e.seq = c.seq.Add(1)
	e.stored = now
	e.orig = ceilSeconds(ttl)
	e.expires = now + e.orig
	e.staleUntil = e.expires
	if dnsmsg.Rcode(resp) != dnsmsg.RcodeServFail {
		e.staleUntil += c.stale
	} else {
		e.orig = 0 // not prefetched
	}
	c.insert(e, now)
	if gen < c.gen.Load() {
		// Invalidate moved on while we published: its sweep may have
		// passed our way already, so withdraw what we put.
		c.withdraw(e)
	}
}

// Generation is the cache's current generation: a pipeline built to
// replace the running one writes as Generation()+1 and passes that to
// Invalidate when it takes over.
func (c *Cache) Generation() uint64 { return c.gen.Load() }

// Invalidate moves the cache to generation gen (Puts of older generations
// are refused from now on) and then removes every entry for whose key
// (dnsmsg.AppendKey's form) drop returns true, reporting each to OnChange.
// drop nil removes nothing. It returns how many entries it removed. It
// walks the whole table on the caller's goroutine; readers and writers go
// on meanwhile.
func (c *Cache) Invalidate(gen uint64, drop func(key []byte) bool) int {
	for {
		cur := c.gen.Load()
		if gen <= cur || c.gen.CompareAndSwap(cur, gen) {
			break
		}
	}
	if drop == nil {
		return 0
	}
	return c.sweep(drop, &c.invalid)
}

// Flush removes every entry for whose key (dnsmsg.AppendKey's form) drop
// returns true, every entry when drop is nil, reporting each to OnChange;
// it returns how many it removed (Stats.Flushed). It is the operator's
// flush: the generation stays, so an answer already on its way from
// upstream when Flush runs may be stored just after it, as it would be
// had its query come a moment later. It walks the whole table on the
// caller's goroutine; readers and writers go on meanwhile.
func (c *Cache) Flush(drop func(key []byte) bool) int {
	if drop == nil {
		drop = func([]byte) bool { return true }
	}
	return c.sweep(drop, &c.flushed)
}

// sweep removes the entries drop selects, counting them in ctr.
func (c *Cache) sweep(drop func(key []byte) bool, ctr *atomic.Uint64) int {
	n := 0
	for bi := range c.buckets {
		b := &c.buckets[bi]
		for i := range ways {
			p := b.slot[i].Load()
			if p == nil || !drop(p.key()) {
				continue
			}
			if b.slot[i].CompareAndSwap(p, nil) {
				b.syncHint(i)
				c.account(p, nil)
				ctr.Add(1)
				c.changed(p)
				n++
			}
		}
	}
	return n
}

// Entry is one stored answer as Range shows it.
type Entry struct {
	// Key is the entry's key (dnsmsg.AppendKey's form: name, type,
	// class, flags, client subnet); it is valid only during the call.
	Key   []byte
	Rcode int
	// TTL is the seconds until the entry expires; 0 or less: expired,
	// answered only stale (Config.StaleWindow).
	TTL int64
}

// Range calls fn for every entry that can still answer (fresh, or expired
// within the stale window), in table order, until fn returns false. It
// takes no lock: entries stored or removed meanwhile may or may not be
// seen. It counts nothing and changes no entry.
func (c *Cache) Range(fn func(Entry) bool) {
	now := c.now().Unix()
	for bi := range c.buckets {
		b := &c.buckets[bi]
		for i := range ways {
			p := b.slot[i].Load()
			if p == nil || now >= p.staleUntil {
				continue
			}
			if !fn(Entry{Key: p.key(), Rcode: dnsmsg.Rcode(p.resp()), TTL: p.expires - now}) {
				return
			}
		}
	}
}

// Stats returns the counters.
func (c *Cache) Stats() Stats {
	s := Stats{
		Inserts:       c.inserts.Load(),
		Evictions:     c.evictions.Load(),
		Invalidations: c.invalid.Load(),
		Flushed:       c.flushed.Load(),
		Entries:       int(c.entries.Load()),
		Bytes:         c.bytes.Load(),
	}
	for i := range c.ctr {
		t := &c.ctr[i]
		s.Hits += t.hits.Load()
		s.Misses += t.misses.Load()
		s.Stale += t.stale.Load()
		s.Prefetches += t.prefetches.Load()
	}
	return s
}
