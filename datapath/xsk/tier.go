package xsk

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/maphash"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"xdoh/bpf"
	"xdoh/forwarder"
	"xdoh/internal/dnsmsg"
)

// Peeker is the forwarder's cache as the kernel tier reads it; *forwarder.
// Switch implements it. Peek returns the answer to r's question patched for
// r (ID, name case, TTLs aged now, not truncated) and the unix second at
// which it expires, counting nothing. Hot says the kernel answered r's
// question since the last tick: the cache never saw those hits, so the
// forwarder prefetches the entry when it is due.
type Peeker interface {
	Peek(r *forwarder.Request, out []byte) (resp []byte, expires int64, ok bool)
	Hot(r *forwarder.Request)
}

// KernelCacheMode says where the in-kernel answer tier runs.
type KernelCacheMode int

const (
	// KernelCacheAuto runs it on interfaces attached in native mode.
	KernelCacheAuto KernelCacheMode = iota
	KernelCacheOn
	KernelCacheOff
)

// ParseKernelCacheMode reads a config value (auto, on, off).
func ParseKernelCacheMode(s string) (KernelCacheMode, error) {
	switch s {
	case "", "auto":
		return KernelCacheAuto, nil
	case "on":
		return KernelCacheOn, nil
	case "off":
		return KernelCacheOff, nil
	}
	return 0, fmt.Errorf("%q is not one of auto, on, off", s)
}

// KernelCache configures the in-kernel answer tier.
type KernelCache struct {
	Mode KernelCacheMode
	// Entries sizes the program's answers map (default 4096).
	Entries int
	// MaxAnswer is the largest response promoted, in bytes (default 512,
	// at most bpf.AnswerMax).
	MaxAnswer int
	// Hits is how many cache hits within a second make an answer hot
	// (default 8).
	Hits int
}

// Defaults and bounds of the tier.
const (
	defaultKernelEntries = bpf.DefaultAnswerEntries
	defaultKernelAnswer  = 512
	defaultKernelHits    = 8

	// tierTick is how often hot entries are rewritten and candidates
	// promoted.
	tierTick = 250 * time.Millisecond
	// tierFresh is how long an entry answers after it was written: its
	// TTLs are those of the moment it was written, so a kernel answer's
	// TTL is at most this much (rounded to a whole second) above the one
	// the cache would give.
	tierFresh = time.Second
	// tierMinLeft: answers that expire sooner are not promoted.
	tierMinLeft = 2 * time.Second
	// tierClockSlack is taken off every expiry: bpf_ktime_get_coarse_ns
	// lags the clock by up to a tick or two, and an entry must stop
	// answering before a second has passed since its TTLs were read.
	tierClockSlack = 20 * time.Millisecond
	// tierIdle is how many ticks without a kernel hit demote an entry.
	tierIdle = 4
	// hotSlots sizes each loop's hit-count table.
	hotSlots = 4096
	// maxCandidates bounds the candidates a loop keeps between ticks.
	maxCandidates = 64
	// maxCandidateMsg: longer queries are never exact (see exact).
	maxCandidateMsg = 12 + bpf.AnswerNameMax + 4 + 11
)

// tier promotes hot cache answers into the answers map of every interface
// that runs it and keeps them fresh. The loops count cache hits per question
// (hot) and hand over questions that cross the threshold (candidates); one
// goroutine does everything else on a tick, with all map writes batched.
type tier struct {
	cfg   KernelCache
	peek  Peeker
	name  string
	progs []*bpf.Program // of the interfaces that run the tier
	seed  maphash.Seed
	epoch atomic.Uint32 // the current one-second window of the hot tables

	// mu serializes refresh, invalidate and lock (reload): map writes
	// and the promoted set change under it.
	mu       sync.Mutex
	promoted map[bpf.AnswerKey]*promotedEntry
	free     []uint32 // slots not in use
	hits     []uint64 // scratch for AnswerHits
	hits2    []uint64
	out      []byte
	put      []bpf.AnswerKey
	putV     []bpf.Answer
	del      []bpf.AnswerKey
	msgs     [][]byte
	ticks    int
	// live is the promoted keys for invalidate's lock-free check: a copy
	// made by whoever changed the set.
	live atomic.Pointer[map[bpf.AnswerKey]struct{}]
	// pendMu guards refreshing, candKeys, pending and progs' reads by
	// invalidate, which never takes mu: a Put never waits for a refresh.
	// invalidate deletes a promoted key from the maps at once and records
	// it in pending; so does it for a key this refresh may be promoting
	// (candKeys, set before its peeks). The refresh then drops pending keys
	// from its batch and its books before it writes, under pendMu. pending
	// holds at most Entries + the candidates of a tick.
	pendMu     sync.Mutex
	refreshing bool
	candKeys   map[bpf.AnswerKey]struct{}
	pending    map[bpf.AnswerKey]struct{}

	promotions, evictions, writeErrors atomic.Uint64
	entries                            atomic.Int64

	stop chan struct{}
	done chan struct{}
}

type promotedEntry struct {
	msg  []byte // the query that promoted it: Peek refreshes from it
	slot uint32
	hits uint64 // kernel hits at the last tick
	idle int    // ticks without a kernel hit
}

// TierStats are the tier's userspace counters.
type TierStats struct {
	Promotions  uint64 // answers put into the map
	Evictions   uint64 // answers taken out: idle, expired, replaced, or flushed
	WriteErrors uint64 // failed map batch operations
	Entries     int    // answers in the map
}

func newTier(cfg KernelCache, p Peeker, name string) *tier {
	if cfg.Entries <= 0 {
		cfg.Entries = defaultKernelEntries
	}
	if cfg.MaxAnswer <= 0 {
		cfg.MaxAnswer = defaultKernelAnswer
	}
	cfg.MaxAnswer = min(cfg.MaxAnswer, bpf.AnswerMax)
	if cfg.Hits <= 0 {
		cfg.Hits = defaultKernelHits
	}
	t := &tier{
		cfg: cfg, peek: p, name: name, seed: maphash.MakeSeed(),
		promoted: map[bpf.AnswerKey]*promotedEntry{},
		pending:  map[bpf.AnswerKey]struct{}{},
		candKeys: map[bpf.AnswerKey]struct{}{},
		out:      make([]byte, answerRoom),
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
	}
	for i := cfg.Entries - 1; i >= 0; i-- {
		t.free = append(t.free, uint32(i))
	}
	t.publish()
	return t
}

// hotTable counts one loop's cache hits per question hash in the current
// window; only the loop touches it.
type hotTable struct {
	slot [hotSlots]struct {
		h     uint64
		epoch uint32
		n     uint32
	}
	mu    sync.Mutex // guards cands, shared with the tier's goroutine
	cands [][]byte   // queries that crossed the threshold, each maxCandidateMsg long
	n     int
}

func newHotTable() *hotTable {
	h := &hotTable{cands: make([][]byte, maxCandidates)}
	for i := range h.cands {
		h.cands[i] = make([]byte, 0, maxCandidateMsg)
	}
	return h
}

// hit counts a cache hit for r (parsed by Answer) and makes r's query a
// candidate when it crosses the threshold. It allocates nothing.
func (t *tier) hit(h *hotTable, r *forwarder.Request, respLen int) {
	if respLen > t.cfg.MaxAnswer || len(r.Msg) > maxCandidateMsg || r.Q.Subnet != nil {
		return // a subnet's answer is not everyone's: the program answers everyone alike
	}
	var kb [dnsmsg.MaxKeyLen]byte
	hash := maphash.Bytes(t.seed, dnsmsg.AppendKey(kb[:0], &r.Q))
	s := &h.slot[hash%hotSlots]
	ep := t.epoch.Load()
	if s.h != hash || s.epoch != ep {
		s.h, s.epoch, s.n = hash, ep, 0
	}
	s.n++
	if s.n != uint32(t.cfg.Hits) {
		return
	}
	h.mu.Lock()
	if h.n < len(h.cands) {
		h.cands[h.n] = append(h.cands[h.n][:0], r.Msg...)
		h.n++
	}
	h.mu.Unlock()
}

// run refreshes on every tick until close.
func (t *tier) run(tables []*hotTable) {
	defer close(t.done)
	tick := time.NewTicker(tierTick)
	defer tick.Stop()
	for {
		select {
		case <-t.stop:
			return
		case <-tick.C:
			t.refresh(tables)
		}
	}
}

// close ends the refreshes and detaches the tier from its programs (which
// the server closes next): later invalidates write nothing.
func (t *tier) close() {
	close(t.stop)
	<-t.done
	t.mu.Lock()
	defer t.mu.Unlock()
	t.pendMu.Lock()
	defer t.pendMu.Unlock()
	t.progs = nil
	clear(t.promoted)
	t.publish()
}

// monoNow is CLOCK_MONOTONIC_COARSE in nanoseconds: bpf_ktime_get_coarse_ns's
// clock, which lags CLOCK_MONOTONIC by up to a tick or two (tierClockSlack).
func monoNow() uint64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC_COARSE, &ts)
	return uint64(ts.Nano())
}

// refresh is one tick: demote idle and stale entries, rewrite the others
// with their TTLs as of now, promote new candidates.
func (t *tier) refresh(tables []*hotTable) {
	t.ticks++
	if t.ticks%int(time.Second/tierTick) == 0 {
		t.epoch.Add(1)
	}
	t.msgs = t.msgs[:0]
	for _, h := range tables {
		h.mu.Lock()
		for _, m := range h.cands[:h.n] {
			t.msgs = append(t.msgs, append([]byte(nil), m...))
		}
		h.n = 0
		h.mu.Unlock()
	}

	t.mu.Lock()
	defer t.mu.Unlock()
	t.pendMu.Lock()
	t.refreshing = true
	clear(t.candKeys)
	for _, m := range t.msgs {
		if k, ok := candidateKey(m); ok {
			t.candKeys[k] = struct{}{}
		}
	}
	t.pendMu.Unlock()
	if err := t.readHits(); err != nil {
		t.writeErrors.Add(1)
	}
	t.put, t.putV, t.del = t.put[:0], t.putV[:0], t.del[:0]
	now, mono := time.Now(), monoNow()
	for k, e := range t.promoted {
		if h := t.hits[e.slot]; h != e.hits {
			e.hits, e.idle = h, 0
			r := forwarder.Request{Msg: e.msg, Transport: forwarder.TransportUDP, Listener: t.name}
			t.peek.Hot(&r)
		} else if e.idle++; e.idle >= tierIdle {
			t.demote(k, e)
			continue
		}
		if !t.entry(k, e.msg, e.slot, now, mono) {
			t.demote(k, e)
		}
	}
	for _, m := range t.msgs {
		t.promote(m, now, mono)
	}
	// Keys the cache stored a new answer for since the peeks above: their
	// answers in this batch may be the old ones.
	t.pendMu.Lock()
	defer t.pendMu.Unlock()
	if len(t.pending) > 0 {
		n := 0
		for i, k := range t.put {
			if _, stale := t.pending[k]; !stale {
				t.put[n], t.putV[n] = k, t.putV[i]
				n++
			}
		}
		t.put, t.putV = t.put[:n], t.putV[:n]
		for k := range t.pending {
			if e, in := t.promoted[k]; in {
				t.demote(k, e)
			}
		}
		clear(t.pending)
	}
	t.write()
	t.refreshing = false
}

// readHits sums the kernel's per-slot hit counters over the interfaces.
func (t *tier) readHits() error {
	if len(t.hits) != t.cfg.Entries {
		t.hits = make([]uint64, t.cfg.Entries)
		t.hits2 = make([]uint64, t.cfg.Entries)
	}
	clear(t.hits)
	var errs []error
	for _, p := range t.progs {
		if err := p.AnswerHits(t.hits2); err != nil {
			errs = append(errs, err)
			continue
		}
		for i, n := range t.hits2 {
			t.hits[i] += n
		}
	}
	return errors.Join(errs...)
}

// promote adds the answer to msg, when it qualifies, to this tick's batch.
func (t *tier) promote(msg []byte, now time.Time, mono uint64) {
	if len(t.free) == 0 {
		return
	}
	k, ok := candidateKey(msg)
	if !ok {
		return
	}
	if _, dup := t.promoted[k]; dup {
		return
	}
	slot := t.free[len(t.free)-1]
	if !t.entry(k, msg, slot, now, mono) {
		return
	}
	t.free = t.free[:len(t.free)-1]
	t.promoted[k] = &promotedEntry{msg: msg, slot: slot, hits: t.hits[slot]}
	t.promotions.Add(1)
}

// entry adds k's answer as of now to the batch, or says why it cannot be
// in the kernel: no longer cached, SERVFAIL, truncated, too large, or
// about to expire.
func (t *tier) entry(k bpf.AnswerKey, msg []byte, slot uint32, now time.Time, mono uint64) bool {
	r := forwarder.Request{Msg: msg, Transport: forwarder.TransportUDP, Listener: t.name}
	resp, expires, ok := t.peek.Peek(&r, t.out)
	// Larger than the asking client takes: the program would never send it.
	if !ok || len(resp) > min(t.cfg.MaxAnswer, r.Q.MaxUDPSize()) || len(resp) < dnsmsg.HeaderLen {
		return false
	}
	if dnsmsg.Rcode(resp) == dnsmsg.RcodeServFail || binary.BigEndian.Uint16(resp[2:])&dnsmsg.FlagTC != 0 {
		return false
	}
	left := time.Unix(expires, 0).Sub(now)
	if left < tierMinLeft {
		return false
	}
	a, err := bpf.NewAnswer(resp, int(k.NameLen), mono+uint64(min(left, tierFresh)-tierClockSlack), slot)
	if err != nil {
		return false
	}
	t.put = append(t.put, k)
	t.putV = append(t.putV, a)
	return true
}

// demote takes k out of the promoted set; write deletes it from the maps.
func (t *tier) demote(k bpf.AnswerKey, e *promotedEntry) {
	delete(t.promoted, k)
	t.free = append(t.free, e.slot)
	t.del = append(t.del, k)
	t.evictions.Add(1)
}

// write applies the tick's batch to every program: deletions first.
func (t *tier) write() {
	for _, p := range t.progs {
		if err := p.DeleteAnswers(t.del); err != nil {
			t.writeErrors.Add(1)
		}
		if err := p.PutAnswers(t.put, t.putV); err != nil {
			t.writeErrors.Add(1)
		}
	}
	t.entries.Store(int64(len(t.promoted)))
	t.publish()
}

// publish makes the promoted keys visible to invalidate. mu held.
func (t *tier) publish() {
	live := make(map[bpf.AnswerKey]struct{}, len(t.promoted))
	for k := range t.promoted {
		live[k] = struct{}{}
	}
	t.live.Store(&live)
}

// invalidate removes the entry of a cache key (dnsmsg.AppendKey's form)
// from the maps, if it is there: the cache is about to store, or has just
// stored, another answer for it.
func (t *tier) invalidate(key []byte) {
	if len(key) < 6 {
		return
	}
	n := len(key) - 5
	k, ok := bpf.NewAnswerKey(key[:n], binary.BigEndian.Uint16(key[n:]), binary.BigEndian.Uint16(key[n+2:]), key[n+4])
	if !ok {
		return
	}
	t.pendMu.Lock()
	defer t.pendMu.Unlock()
	_, live := (*t.live.Load())[k]
	_, cand := t.candKeys[k]
	switch {
	case live:
		// Out of the kernel now; out of the books at the next write.
		for _, p := range t.progs {
			if err := p.DeleteAnswers([]bpf.AnswerKey{k}); err != nil {
				t.writeErrors.Add(1)
			}
		}
		t.pending[k] = struct{}{}
	case t.refreshing && cand:
		t.pending[k] = struct{}{} // its peek may have read the old answer
	}
}

// lock empties the maps and holds the tier until the returned unlock: a
// reload swaps the pipeline in between, so no answer of the old one is
// promoted after the flush.
func (t *tier) lock() (unlock func()) {
	t.mu.Lock()
	t.del, t.put, t.putV = t.del[:0], t.put[:0], t.putV[:0]
	for k, e := range t.promoted {
		t.demote(k, e)
	}
	t.write()
	return t.mu.Unlock
}

// stats reads the counters.
func (t *tier) stats() TierStats {
	return TierStats{
		Promotions: t.promotions.Load(), Evictions: t.evictions.Load(),
		WriteErrors: t.writeErrors.Load(), Entries: int(t.entries.Load()),
	}
}

// candidateKey is the key of a candidate query, false for one that is not
// exact or not parseable.
func candidateKey(msg []byte) (bpf.AnswerKey, bool) {
	var q dnsmsg.Query
	if !parseExact(msg, &q) {
		return bpf.AnswerKey{}, false
	}
	return bpf.NewAnswerKey(q.Name, q.Type, q.Class, keyFlags(&q))
}

// keyFlags are q's bpf.Key* flags (dnsmsg.AppendKey's).
func keyFlags(q *dnsmsg.Query) uint8 {
	var f uint8
	if q.HasOPT {
		f |= bpf.KeyOPT
	}
	if q.DO {
		f |= bpf.KeyDO
	}
	if q.CD() {
		f |= bpf.KeyCD
	}
	if q.RD() {
		f |= bpf.KeyRD
	}
	return f
}

// exact says whether the XDP program would answer msg from its map (the
// rules of answer() in xdp.c): promoting any other query's answer would
// fill the map with entries nothing hits.
func exact(msg []byte) bool {
	var q dnsmsg.Query
	return parseExact(msg, &q)
}

// parseExact is exact, parsing msg into q.
func parseExact(msg []byte, q *dnsmsg.Query) bool {
	if dnsmsg.Parse(msg, q) != nil || len(q.Name) > bpf.AnswerNameMax {
		return false
	}
	if msg[2]&0xfa != 0 || binary.BigEndian.Uint16(msg[10:]) > 1 {
		return false
	}
	if !q.HasOPT {
		return len(msg) == q.QEnd
	}
	// An empty OPT of version 0 right after the question, and nothing more.
	return q.OPTOff == q.QEnd && q.OPTEnd == q.QEnd+11 && len(msg) == q.OPTEnd &&
		msg[q.OPTOff+6] == 0 && msg[q.OPTOff+9] == 0 && msg[q.OPTOff+10] == 0
}
