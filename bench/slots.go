package bench

import (
	"encoding/binary"
	"math/rand/v2"
	"runtime"
	"sync/atomic"
	"time"
)

// udpSlot is one query in flight: its ID is its index.
type udpSlot struct {
	busy  atomic.Bool
	sched atomic.Int64  // ns from the phase's start: the scheduled (open loop) or actual send time
	qhash atomic.Uint64 // of the question, to match the answer's
}

// slotTable is one socket's queries of a phase, for the transports that
// own their sockets (UDP, AF_XDP): the query's ID is its slot's index, so
// an answer is matched without a map and nothing is allocated per query.
// The sender takes queries from the phase's source into free slots
// (takeFree, takeDue); the receiver matches answers (match) and times
// queries out (scan). Sender and receiver may be one goroutine (AF_XDP)
// or two (UDP sockets).
type slotTable struct {
	p      *phase
	slots  []udpSlot
	free   chan uint16
	stride uint64 // this table's queries are seq, seq+stride, …

	inflight   atomic.Int64
	senderDone atomic.Bool
	lastSend   atomic.Int64 // ns of the sender's last send

	// sender-owned
	st  *tally
	rng *rand.Rand
	seq uint64
	// next writes query seq into batch position j with ID id, scheduled
	// at at, and returns it; ok false when the source has no more.
	next func(j int, id uint16, seq uint64, at int64) (q []byte, ok bool)
	ids  [udpBatch]uint16

	rt *tally // receiver-owned: the same histogram, under the recorder's lock
}

// slotTableSize is the number of IDs socket i of n gets: closed loop, its
// share of the queries in flight; open loop, as many as the rate keeps in
// flight for the timeout, with room; at most the 65536 IDs, and no more
// than a finite source has queries.
func slotTableSize(p *phase, i, n int) int {
	size := 65536
	if !p.open() {
		size = p.outstanding / n
		if i < p.outstanding%n {
			size++
		}
	} else if p.rate > 0 {
		size = int(min(65536, max(256, 2*p.rate/float64(n)*p.cfg.Timeout.Seconds())))
	}
	if l := p.src.Len(); l > 0 {
		size = int(min(uint64(size), l/uint64(n)+1))
	}
	return size
}

// init sets t up as socket i of n with size IDs.
func (t *slotTable) init(p *phase, size, i, n int) {
	t.p = p
	t.slots = make([]udpSlot, size)
	t.free = make(chan uint16, max(size, 1))
	t.seq, t.stride = uint64(i), uint64(n)
	t.st = p.rec.worker()
	t.rt = &tally{r: p.rec, hist: t.st.hist}
	t.rng = rand.New(rand.NewPCG(rand.Uint64(), uint64(i)))
	for id := range size {
		t.free <- uint16(id)
	}
}

// put records query q, now in batch position j with ID id, as in flight
// since at.
func (t *slotTable) put(j int, id uint16, q []byte, at int64) {
	binary.BigEndian.PutUint16(q, id)
	sl := &t.slots[id]
	sl.sched.Store(at)
	sl.qhash.Store(questionHash(q))
	sl.busy.Store(true)
	t.ids[j] = id
	t.inflight.Add(1)
}

// fillOne takes query t.seq into position j with ID id at at; false (and
// the ID back) when the source has no more.
func (t *slotTable) fillOne(j int, id uint16, at int64) bool {
	q, ok := t.next(j, id, t.seq, at)
	if !ok {
		t.free <- id
		return false
	}
	t.put(j, id, q, at)
	t.seq += t.stride
	return true
}

// takeFree (closed loop) fills up to room batch positions with the next
// queries, one per free ID. With wait it waits for the first free ID;
// without, it returns 0 when none is free. -1: the phase is over.
func (t *slotTable) takeFree(room int, wait bool) int {
	p := t.p
	if !p.more(t.seq) {
		return -1
	}
	var id uint16
	if wait {
		select {
		case id = <-t.free:
		case <-p.stop:
			return -1
		}
	} else {
		select {
		case id = <-t.free:
		default:
			return 0
		}
	}
	n := 0
	now := p.rec.now()
	for {
		if !p.more(t.seq) {
			t.free <- id
			return orEnd(n)
		}
		if !t.fillOne(n, id, now) {
			return orEnd(n)
		}
		n++
		if n == room {
			return n
		}
		select {
		case id = <-t.free:
		default:
			return n
		}
	}
}

// takeDue (open loop) fills up to room positions with the queries whose
// time has come. With wait it waits until the next one is due; without,
// it returns 0 when none is (nextDue says when one will be). -1: the
// phase is over.
func (t *slotTable) takeDue(room int, wait bool) int {
	p := t.p
	for {
		if !p.more(t.seq) {
			return -1
		}
		now := p.rec.now()
		n := 0
		for n < room && p.more(t.seq) {
			at := p.sched(t.seq)
			if at > now {
				break
			}
			var id uint16
			select {
			case id = <-t.free:
			default:
				// Every ID is in flight: the rig cannot offer this
				// query. Count it rather than send it late.
				t.st.unsent()
				t.seq += t.stride
				continue
			}
			if !t.fillOne(n, id, at) {
				return orEnd(n)
			}
			n++
		}
		if n > 0 {
			return n
		}
		if !wait {
			return 0
		}
		if !p.more(t.seq) {
			return -1
		}
		d := time.Duration(p.sched(t.seq) - now)
		t.st.flush()
		select {
		case <-p.stop:
			return -1
		default:
		}
		if d > 50*time.Microsecond {
			time.Sleep(min(d, 10*time.Millisecond))
		} else {
			runtime.Gosched()
		}
	}
}

// nextDue is when (ns from the phase's start) the open loop's next query
// is due; false if there is none.
func (t *slotTable) nextDue() (int64, bool) {
	if !t.p.more(t.seq) {
		return 0, false
	}
	return t.p.sched(t.seq), true
}

// orEnd is n, or -1 (the phase is over) when nothing was taken.
func orEnd(n int) int {
	if n == 0 {
		return -1
	}
	return n
}

// release frees a slot; false if it was free already (the receiver or
// the timeout scan got it).
func (t *slotTable) release(id uint16) bool {
	if !t.slots[id].busy.CompareAndSwap(true, false) {
		return false
	}
	t.inflight.Add(-1)
	t.free <- id
	return true
}

// match matches the DNS message b, received at now, to its query; rt
// counts it (the receiver's tally, which may be another table's).
func (t *slotTable) match(b []byte, now int64, rt *tally) {
	if len(b) < 12 || b[2]&0x80 == 0 {
		rt.malformed()
		return
	}
	id := binary.BigEndian.Uint16(b)
	if int(id) >= len(t.slots) {
		rt.malformed()
		return
	}
	sl := &t.slots[id]
	if !sl.busy.Load() {
		rt.malformed() // late (timed out) or never asked
		return
	}
	qd := binary.BigEndian.Uint16(b[4:])
	rcode := int(b[3] & 0xf)
	if qd != 1 && !(qd == 0 && rcode != 0) || qd == 1 && questionHash(b) != sl.qhash.Load() {
		rt.malformed()
		return
	}
	sched := sl.sched.Load()
	if !t.release(id) {
		rt.malformed()
		return
	}
	rt.answer(now-sched, rcode, len(b))
}

// scan times out the queries sent before now-timeout.
func (t *slotTable) scan(now, timeout int64) {
	if t.inflight.Load() == 0 {
		return
	}
	for id := range t.slots {
		sl := &t.slots[id]
		if sl.busy.Load() && now-sl.sched.Load() >= timeout {
			if t.release(uint16(id)) {
				t.rt.timeout()
			}
		}
	}
}

// senderFinished marks the sender done at its last send.
func (t *slotTable) senderFinished() {
	t.st.flush()
	t.lastSend.Store(t.p.rec.now())
	t.senderDone.Store(true)
}
