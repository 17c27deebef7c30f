// Package cache keeps DNS responses in wire format, keyed by the lower-cased
// question name, type, class and the EDNS bits that change an answer (OPT
// present, DO, CD).
//
// A hit copies the stored response into a caller-owned buffer and patches it
// for the client: its ID, every TTL minus the entry's age, the question name in
// the client's letter case, and truncation to the client's size limit. Stored
// entries are immutable, so readers never copy under a lock for longer than a
// pointer load.
//
// This is the foundation version: a table of shards, each a map from a 64-bit
// key hash to an immutable entry under a RWMutex, bounded by entries and
// evicting a random entry of a full shard. The lock-free table with CLOCK
// eviction, serve-stale and prefetch replaces the storage behind the same API.
package cache

import (
	"encoding/binary"
	"hash/maphash"
	"sync"
	"sync/atomic"
	"time"

	"xdoh/forwarder/dnsmsg"
)

const shards = 64

// Config bounds the cache.
type Config struct {
	Entries int           // maximum entries (default 100000)
	MinTTL  time.Duration // answers are kept at least this long (default 0)
	MaxTTL  time.Duration // and at most this long (default 24h)
	// ServFailTTL is how long a SERVFAIL from upstream is kept (0: not cached).
	ServFailTTL time.Duration
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Stats are cumulative counters.
type Stats struct {
	Hits, Misses, Inserts, Evictions uint64
	Entries                          int
}

type entry struct {
	key     []byte // lower-case wire name + type + class + flags
	resp    []byte // as received, ID 0
	qend    int
	stored  int64 // unix seconds
	expires int64 // unix seconds
}

type shard struct {
	mu sync.RWMutex
	m  map[uint64]*entry
	_  [40]byte // keep shards on separate cache lines
}

// Cache is safe for concurrent use.
type Cache struct {
	cfg     Config
	nsh     uint64 // shards in use: min(shards, Entries)
	perSh   int    // every shard in use holds perSh entries,
	extra   uint64 // the first extra shards one more (they sum to Entries)
	seed    maphash.Seed
	shards  [shards]shard
	hits    atomic.Uint64
	misses  atomic.Uint64
	inserts atomic.Uint64
	evicts  atomic.Uint64
}

// New makes a cache; zero fields of cfg take their defaults.
func New(cfg Config) *Cache {
	if cfg.Entries <= 0 {
		cfg.Entries = 100000
	}
	if cfg.MaxTTL <= 0 {
		cfg.MaxTTL = 24 * time.Hour
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	nsh := min(cfg.Entries, shards)
	c := &Cache{
		cfg:   cfg,
		seed:  maphash.MakeSeed(),
		nsh:   uint64(nsh),
		perSh: cfg.Entries / nsh,
		extra: uint64(cfg.Entries % nsh),
	}
	for i := range c.shards {
		c.shards[i].m = make(map[uint64]*entry)
	}
	return c
}

// maxKey is the longest key: a 255-octet name + type + class + flags.
const maxKey = 255 + 5

// key writes the cache key of q into buf and returns it.
func key(buf *[maxKey]byte, q *dnsmsg.Query) []byte {
	k := dnsmsg.AppendLower(buf[:0], q.Name)
	var flags byte
	if q.HasOPT {
		flags |= 1
	}
	if q.DO {
		flags |= 2
	}
	if q.CD() {
		flags |= 4
	}
	return append(k, byte(q.Type>>8), byte(q.Type), byte(q.Class>>8), byte(q.Class), flags)
}

// Get answers q from the cache into out (which must have room for a 64 KiB
// message) patched for the client: ID, TTLs, question-name case, truncated to
// maxSize. It returns the response and true on a hit.
func (c *Cache) Get(q *dnsmsg.Query, out []byte, maxSize int) ([]byte, bool) {
	var kb [maxKey]byte
	k := key(&kb, q)
	h := maphash.Bytes(c.seed, k)
	sh := &c.shards[h%c.nsh]
	sh.mu.RLock()
	e := sh.m[h]
	sh.mu.RUnlock()
	now := c.cfg.Now().Unix()
	if e == nil || now >= e.expires || string(e.key) != string(k) {
		c.misses.Add(1)
		return nil, false
	}
	c.hits.Add(1)
	resp := out[:len(e.resp)]
	copy(resp, e.resp)
	dnsmsg.SetID(resp, q.ID)
	dnsmsg.CopyQuestionName(resp, q.Name)
	if age := now - e.stored; age > 0 {
		dnsmsg.AgeTTLs(resp, e.qend, uint32(age), 0)
	}
	return dnsmsg.Truncate(resp, maxSize), true
}

// Put stores resp, the upstream's answer to q. resp must already have been
// checked against q (dnsmsg.CheckResponse); qend is the offset after its
// question. Truncated responses and most errors are not stored.
func (c *Cache) Put(q *dnsmsg.Query, resp []byte, qend int) {
	if len(resp) < dnsmsg.HeaderLen || resp[2]&(dnsmsg.FlagTC>>8) != 0 {
		return
	}
	var ttl time.Duration
	switch dnsmsg.Rcode(resp) {
	case dnsmsg.RcodeSuccess, dnsmsg.RcodeNXDomain:
		min, ok := dnsmsg.MinTTL(resp, qend)
		if !ok {
			// NOERROR/NXDOMAIN without any record has no TTL to go by
			// (RFC 2308 §5: without an SOA a negative answer is not cached).
			return
		}
		ttl = time.Duration(min) * time.Second
		if ttl < c.cfg.MinTTL {
			ttl = c.cfg.MinTTL
		}
		if ttl > c.cfg.MaxTTL {
			ttl = c.cfg.MaxTTL
		}
	case dnsmsg.RcodeServFail:
		ttl = c.cfg.ServFailTTL
	default:
		return
	}
	if ttl <= 0 {
		return
	}
	var kb [maxKey]byte
	k := key(&kb, q)
	now := c.cfg.Now().Unix()
	e := &entry{
		key:     append([]byte(nil), k...),
		resp:    append([]byte(nil), resp...),
		qend:    qend,
		stored:  now,
		expires: now + int64((ttl+time.Second-1)/time.Second), // a partial second counts
	}
	binary.BigEndian.PutUint16(e.resp, 0)
	h := maphash.Bytes(c.seed, k)
	i := h % c.nsh
	limit := c.perSh
	if i < c.extra {
		limit++
	}
	sh := &c.shards[i]
	sh.mu.Lock()
	if _, exists := sh.m[h]; !exists && len(sh.m) >= limit {
		for victim := range sh.m { // map order is random: a random eviction
			delete(sh.m, victim)
			c.evicts.Add(1)
			break
		}
	}
	sh.m[h] = e
	sh.mu.Unlock()
	c.inserts.Add(1)
}

// Stats returns the counters.
func (c *Cache) Stats() Stats {
	s := Stats{Hits: c.hits.Load(), Misses: c.misses.Load(), Inserts: c.inserts.Load(), Evictions: c.evicts.Load()}
	for i := range c.shards {
		c.shards[i].mu.RLock()
		s.Entries += len(c.shards[i].m)
		c.shards[i].mu.RUnlock()
	}
	return s
}
