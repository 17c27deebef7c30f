package cache

import (
	"sync/atomic"
	"unsafe"

	"xdoh/internal/dnsmsg"
)

// ways is the associativity: five hints, a hand and five pointers fill one
// 64-octet line.
const ways = 5

// bucket is one cache line of the table.
type bucket struct {
	// hint[i] is hintOf(slot[i].tag), 0 for an empty way. It can lag the
	// pointer while writers race (see syncHint); readers use it only to skip.
	hint [ways]atomic.Uint32
	hand atomic.Uint32                                                       // the bucket's CLOCK hand, writers only
	_    [64 - (ways+1)*4 - ways*unsafe.Sizeof(atomic.Pointer[entry]{})]byte // 32-bit platforms
	slot [ways]atomic.Pointer[entry]
}

// A bucket is exactly one 64-octet cache line.
var (
	_ [unsafe.Sizeof(bucket{}) - 64]byte
	_ [64 - unsafe.Sizeof(bucket{})]byte
)

// entry is immutable once published, except for ref and claimed.
type entry struct {
	data       []byte // key, then the response with ID 0
	tag        uint64 // maphash of the key
	seq        uint64 // insertion order, to drop older copies of a key
	stored     int64  // unix seconds
	expires    int64  // unix seconds: fresh before this
	staleUntil int64  // unix seconds: served stale before this, dead after
	orig       int64  // original TTL in seconds (0: never prefetched)
	klen       uint16
	qend       uint16        // offset after the question in the response
	ref        atomic.Uint32 // CLOCK reference bit
	claimed    atomic.Uint32 // 1 once a Get returned HitPrefetch
}

func newEntry(k, resp []byte, qend int) *entry {
	data := make([]byte, len(k)+len(resp))
	copy(data, k)
	copy(data[len(k):], resp)
	dnsmsg.SetID(data[len(k):], 0)
	return &entry{data: data, klen: uint16(len(k)), qend: uint16(qend)}
}

func (e *entry) key() []byte  { return e.data[:e.klen] }
func (e *entry) resp() []byte { return e.data[e.klen:] }
func (e *entry) size() int64  { return int64(len(e.data)) }

// touch sets the reference bit, writing the line only when it was clear.
func (e *entry) touch() {
	if e.ref.Load() == 0 {
		e.ref.Store(1)
	}
}

// patch copies the response into out for q: ID, question-name case, TTLs aged
// to now (or all set to floor when floor > 0), truncated to maxSize.
func (e *entry) patch(out []byte, q *dnsmsg.Query, now int64, floor uint32, maxSize int) []byte {
	resp := out[:len(e.data)-int(e.klen)]
	copy(resp, e.resp())
	dnsmsg.SetID(resp, q.ID)
	dnsmsg.CopyQuestionName(resp, q.Name)
	switch {
	case floor > 0:
		dnsmsg.AgeTTLs(resp, int(e.qend), ^uint32(0), floor)
	case now > e.stored:
		dnsmsg.AgeTTLs(resp, int(e.qend), uint32(min(now-e.stored, 1<<31)), 0)
	}
	return dnsmsg.Truncate(resp, maxSize)
}

func hintOf(h uint64) uint32 { return uint32(h>>32) | 1 }

// lookup returns the entry for key k with hash h, or nil.
func (c *Cache) lookup(h uint64, k []byte) *entry {
	b := &c.buckets[h&c.mask]
	hint := hintOf(h)
	for i := range ways {
		if b.hint[i].Load() != hint {
			continue
		}
		if e := b.slot[i].Load(); e != nil && e.tag == h && string(e.key()) == string(k) {
			return e
		}
	}
	return nil
}

// syncHint makes hint[i] agree with slot[i]. Every writer that changes a
// pointer calls it afterwards, and each one rechecks the pointer after
// storing a hint, so once writers are quiet every hint is right.
func (b *bucket) syncHint(i int) {
	for {
		p := b.slot[i].Load()
		var h uint32
		if p != nil {
			h = hintOf(p.tag)
		}
		b.hint[i].Store(h)
		if b.slot[i].Load() == p {
			return
		}
	}
}

// account adjusts the counters for a way that went from old to e (either
// may be nil); only the writer whose CAS made that change calls it.
func (c *Cache) account(old, e *entry) {
	var n, sz int64
	if e != nil {
		n, sz = 1, e.size()
	}
	if old != nil {
		n, sz = n-1, sz-old.size()
	}
	if n != 0 {
		c.entries.Add(n)
	}
	if sz != 0 {
		c.bytes.Add(sz)
	}
}

func sameKey(a, b *entry) bool { return a.tag == b.tag && string(a.key()) == string(b.key()) }

// putTries bounds the CAS attempts of one insert; losing more races than this
// means other writers are filling the bucket anyway.
const putTries = 8

// insert publishes e in its bucket, then restores the global bounds.
func (c *Cache) insert(e *entry, now int64) {
	b := &c.buckets[e.tag&c.mask]
	for try := 0; ; try++ {
		if try == putTries {
			return
		}
		i, old := b.victim(e, now)
		if !b.slot[i].CompareAndSwap(old, e) {
			continue
		}
		b.syncHint(i)
		c.account(old, e)
		c.inserts.Add(1)
		if old != nil && !sameKey(old, e) {
			c.evictions.Add(1)
			c.changed(old)
		}
		break
	}
	c.dedup(b, e)
	c.shrink(e, now)
}

// dedup removes the older of e and any other copy of its key in b: two Puts
// of one key can publish into two empty ways. Whichever of them scans last
// sees both, so once writers are quiet a key is in one way at most.
func (c *Cache) dedup(b *bucket, e *entry) {
	for i := range ways {
		p := b.slot[i].Load()
		if p == nil || p == e || !sameKey(p, e) {
			continue
		}
		old := p
		if p.seq > e.seq {
			old = e // a newer copy won: withdraw ours
		}
		for j := range ways {
			if b.slot[j].Load() == old && b.slot[j].CompareAndSwap(old, nil) {
				b.syncHint(j)
				c.account(old, nil)
			}
		}
		if old == e {
			return
		}
	}
}

// withdraw takes e out of its bucket if it is still there.
func (c *Cache) withdraw(e *entry) {
	b := &c.buckets[e.tag&c.mask]
	for i := range ways {
		if b.slot[i].Load() == e && b.slot[i].CompareAndSwap(e, nil) {
			b.syncHint(i)
			c.account(e, nil)
			c.changed(e)
			return
		}
	}
}

// victim picks the way for e and the pointer it holds: the same key, an
// empty way, a dead entry, an expired one, else CLOCK over the ways.
func (b *bucket) victim(e *entry, now int64) (int, *entry) {
	empty, dead, expired := -1, -1, -1
	var deadP, expiredP *entry
	for i := range ways {
		p := b.slot[i].Load()
		switch {
		case p == nil:
			if empty < 0 {
				empty = i
			}
		case sameKey(p, e):
			return i, p
		case now >= p.staleUntil:
			if dead < 0 {
				dead, deadP = i, p
			}
		case now >= p.expires:
			if expired < 0 {
				expired, expiredP = i, p
			}
		}
	}
	switch {
	case empty >= 0:
		return empty, nil
	case dead >= 0:
		return dead, deadP
	case expired >= 0:
		return expired, expiredP
	}
	start := b.hand.Load()
	for n := range uint32(2 * ways) {
		i := int((start + n) % ways)
		p := b.slot[i].Load()
		if p == nil {
			return i, nil
		}
		if p.ref.Load() != 0 {
			p.ref.Store(0)
			continue
		}
		b.hand.Store(start + n + 1)
		return i, p
	}
	// Hits set the bits again as fast as we clear them: take the next way.
	i := int(start % ways)
	b.hand.Store(start + 1)
	return i, b.slot[i].Load()
}

// changed reports an evicted entry to Config.OnChange.
func (c *Cache) changed(e *entry) {
	if c.onChange != nil {
		c.onChange(e.key())
	}
}

// shrink sweeps the global CLOCK hand until the entry and byte bounds hold
// (or two full turns found nothing to evict, hits racing the hand). It passes
// over e, the entry just inserted.
func (c *Cache) shrink(e *entry, now int64) {
	for steps := uint64(0); steps < 2*c.slots+ways; steps++ {
		if c.entries.Load() <= c.maxEntries && c.bytes.Load() <= c.maxBytes {
			return
		}
		n := (c.hand.Add(1) - 1) % c.slots
		b := &c.buckets[n/ways]
		i := int(n % ways)
		p := b.slot[i].Load()
		if p == nil || p == e {
			continue
		}
		if now < p.staleUntil && p.ref.Load() != 0 {
			p.ref.Store(0)
			continue
		}
		if b.slot[i].CompareAndSwap(p, nil) {
			b.syncHint(i)
			c.account(p, nil)
			c.evictions.Add(1)
			c.changed(p)
		}
	}
}

// stripes is the number of slots each read-side counter is split over.
const (
	stripeBits = 5
	stripes    = 1 << stripeBits
)

// stripe is one padded set of read-side counters.
type stripe struct {
	hits, misses, stale, prefetches atomic.Uint64
	_                               [128 - 32]byte
}

// stripe returns the counters of the calling goroutine. Goroutine stacks are
// disjoint, so the address of a local variable tells goroutines (and so, in
// practice, the event loops pinned to cores) apart at no cost; stack growth
// or deeper call sites at worst move a goroutine to another stripe.
func (c *Cache) stripe() *stripe {
	var x byte
	a := uint64(uintptr(unsafe.Pointer(&x))) >> 11
	return &c.ctr[(a*0x9E3779B97F4A7C15)>>(64-stripeBits)]
}
