package bpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync/atomic"

	"github.com/cilium/ebpf"
)

// Limits of the in-kernel answer tier (xdp.c).
const (
	// AnswerNameMax is the longest question name (wire form) answered in
	// the kernel.
	AnswerNameMax = len(xdpAnswer{}.Name)
	// AnswerMax is the largest response an answers entry holds.
	AnswerMax = len(xdpAnswer{}.Data)
	// DefaultAnswerEntries sizes the answers map when Options.AnswerEntries
	// is 0; MaxAnswerEntries bounds it (an entry takes about 1.4 KiB, the
	// map is preallocated).
	DefaultAnswerEntries = 4096
	MaxAnswerEntries     = 65536
	// lruHeadroom is added to the answers map per possible CPU (the LRU's
	// per-CPU free-node target).
	lruHeadroom = 128
)

// Key flag bits: the cache's (dnsmsg.AppendKey).
const (
	KeyOPT = 1 << iota // the query has an OPT record
	KeyDO              // DNSSEC OK
	KeyCD              // checking disabled
	KeyRD              // recursion desired
)

// AnswerKey is a question as the cache keys it. The map is keyed on its
// hashed form (mapKey); the entry holds the name, which PutAnswers copies
// from the key.
type AnswerKey struct {
	Qtype, Qclass uint16
	Flags         uint8 // Key*
	NameLen       uint8
	Name          [AnswerNameMax]byte // lower-cased wire name, zero after NameLen
}

// nameSeed seeds the program's name hash: one per process, so every
// program the process loads takes the same keys.
var nameSeed = rand.Uint64()

// answerGen numbers the entries written (struct answer's gen).
var answerGen atomic.Uint64

// nameMul is NAME_MUL in xdp.c.
const nameMul = 0x9e3779b97f4a7c15

// mapKey is the key as the program builds it: the name hashed eight bytes
// (little-endian) at a time, as name_hash does.
func (k *AnswerKey) mapKey() xdpAnswerKey {
	h := nameSeed
	for at := 0; at < int(k.NameLen); at += 8 {
		h = (h ^ binary.LittleEndian.Uint64(k.Name[at:])) * nameMul
	}
	return xdpAnswerKey{Hash: h ^ h>>32, Qtype: hton16(k.Qtype), Qclass: hton16(k.Qclass), Flags: k.Flags, NameLen: k.NameLen}
}

// NewAnswerKey makes the key of a question: name in wire form (any letter
// case), type, class and Key* flags. It is false for a name longer than
// AnswerNameMax or one that is not an uncompressed wire name.
func NewAnswerKey(name []byte, qtype, qclass uint16, flags uint8) (AnswerKey, bool) {
	k := AnswerKey{Qtype: qtype, Qclass: qclass, Flags: flags}
	if len(name) == 0 || len(name) > AnswerNameMax {
		return k, false
	}
	label, root := 0, false
	for i, c := range name {
		if i == label {
			if c > 63 || (c == 0) != (i == len(name)-1) {
				return k, false
			}
			label, root = i+1+int(c), c == 0
		} else if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		k.Name[i] = c
	}
	if !root {
		return k, false // a label runs past the end, or no root label
	}
	k.NameLen = uint8(len(name))
	return k, true
}

// Answer is an answers map value. PutAnswers fills its Name, Gen and GenEnd.
type Answer = xdpAnswer

// NewAnswer makes the value for resp, a response to a question whose name
// is nameLen bytes: it answers until the monotonic clock (CLOCK_MONOTONIC_COARSE,
// bpf_ktime_get_coarse_ns) reads expires and counts its hits in slot. The program
// copies the query's ID and question name (the client's letter case) over
// resp's; everything else goes out as it is here.
func NewAnswer(resp []byte, nameLen int, expires uint64, slot uint32) (Answer, error) {
	var a Answer
	if len(resp) > AnswerMax {
		return a, fmt.Errorf("a %d-byte response does not fit an answers entry (%d)", len(resp), AnswerMax)
	}
	if nameLen <= 0 || 12+nameLen+4 > len(resp) {
		return a, fmt.Errorf("a %d-byte response cannot hold a %d-byte question name", len(resp), nameLen)
	}
	a.Expires, a.Slot, a.Len = expires, slot, uint16(len(resp))
	copy(a.Data[:], resp)
	// Words in memory order, as the program adds them: the header past
	// the ID, then what follows the name, each byte at its offset's parity.
	var sum uint32
	for i := 2; i < len(resp); i++ {
		if i >= 12 && i < 12+nameLen {
			continue
		}
		if i&1 == 0 {
			sum += uint32(resp[i])
		} else {
			sum += uint32(resp[i]) << 8
		}
	}
	a.Csum = sum
	return a, nil
}

// AnswerEvent is what the tier did with a query of a listener that has it.
type AnswerEvent uint32

// The events, in the order of enum answer_event in xdp.c.
const (
	AnswerHit          = AnswerEvent(xdpAnswerEventANSWER_HIT)            // answered with XDP_TX
	AnswerMissAbsent   = AnswerEvent(xdpAnswerEventANSWER_MISS_ABSENT)    // no entry for the question
	AnswerMissExpired  = AnswerEvent(xdpAnswerEventANSWER_MISS_EXPIRED)   // the entry's time is up
	AnswerMissTooLarge = AnswerEvent(xdpAnswerEventANSWER_MISS_TOO_LARGE) // larger than the client's UDP size
	AnswerMissNotExact = AnswerEvent(xdpAnswerEventANSWER_MISS_NOT_EXACT) // a query the tier does not answer
	AnswerMissNoRoom   = AnswerEvent(xdpAnswerEventANSWER_MISS_NO_ROOM)   // the frame could not grow
	AnswerTorn         = AnswerEvent(xdpAnswerEventANSWER_TORN)           // the entry changed under the copy: dropped
	NumAnswerEvents    = AnswerEvent(xdpAnswerEventANSWER_EVENT_MAX)
)

var answerEventNames = [NumAnswerEvents]string{
	AnswerHit:          "hit",
	AnswerMissAbsent:   "miss_absent",
	AnswerMissExpired:  "miss_expired",
	AnswerMissTooLarge: "miss_too_large",
	AnswerMissNotExact: "miss_not_exact",
	AnswerMissNoRoom:   "miss_no_room",
	AnswerTorn:         "torn",
}

// String is the event's name, usable as a Prometheus label value.
func (e AnswerEvent) String() string {
	if e < NumAnswerEvents {
		return answerEventNames[e]
	}
	return fmt.Sprintf("answer_event(%d)", uint32(e))
}

// AnswerCounters are queries per AnswerEvent since Load, summed over CPUs.
type AnswerCounters [NumAnswerEvents]uint64

// AnswerCounters reads the tier's per-CPU counters.
func (p *Program) AnswerCounters() (AnswerCounters, error) {
	var c AnswerCounters
	if err := sumPerCPU(p.objs.AnswerCounters, c[:], nil, nil); err != nil {
		return c, fmt.Errorf("reading the answer counters: %w", err)
	}
	return c, nil
}

// AnswerEntries is the size of the answers map and of its hit counters:
// slots run from 0 to AnswerEntries-1.
func (p *Program) AnswerEntries() int { return p.answers }

// PutAnswers adds or replaces entries in one batch.
func (p *Program) PutAnswers(keys []AnswerKey, vals []Answer) error {
	if len(keys) == 0 {
		return nil
	}
	if len(keys) != len(vals) {
		return fmt.Errorf("putting answers: %d keys and %d values", len(keys), len(vals))
	}
	mk := make([]xdpAnswerKey, len(keys))
	for i := range vals {
		if vals[i].Slot >= uint32(p.answers) {
			return fmt.Errorf("putting answers: slot %d is past the map's %d", vals[i].Slot, p.answers)
		}
		mk[i] = keys[i].mapKey()
		vals[i].Name = keys[i].Name
		vals[i].Gen = answerGen.Add(1)
		vals[i].GenEnd = vals[i].Gen
	}
	if _, err := p.objs.Answers.BatchUpdate(mk, vals, nil); err != nil {
		return fmt.Errorf("putting %d answers: %w", len(keys), err)
	}
	return nil
}

// DeleteAnswers removes entries in batches. Keys that are not in the map
// (never put, or evicted by the map's LRU) are skipped.
func (p *Program) DeleteAnswers(keys []AnswerKey) error {
	mk := make([]xdpAnswerKey, len(keys))
	for i := range keys {
		mk[i] = keys[i].mapKey()
	}
	return p.deleteKeys(mk)
}

func (p *Program) deleteKeys(keys []xdpAnswerKey) error {
	for len(keys) > 0 {
		n, err := p.objs.Answers.BatchDelete(keys, nil)
		switch {
		case err == nil:
			return nil
		case errors.Is(err, ebpf.ErrKeyNotExist):
			keys = keys[n+1:] // the batch stopped at a missing key
		default:
			return fmt.Errorf("deleting %d answers: %w", len(keys), err)
		}
	}
	return nil
}

// ClearAnswers removes every entry.
func (p *Program) ClearAnswers() error {
	var keys []xdpAnswerKey
	var k xdpAnswerKey
	it := p.objs.Answers.Iterate()
	var v Answer
	for it.Next(&k, &v) {
		keys = append(keys, k)
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("listing the answers: %w", err)
	}
	return p.deleteKeys(keys)
}

// AnswerHits reads the per-slot hit counters, summed over the CPUs, into
// hits (AnswerEntries long) in one batch.
func (p *Program) AnswerHits(hits []uint64) error {
	p.hitMu.Lock()
	defer p.hitMu.Unlock()
	if len(hits) != p.answers {
		return fmt.Errorf("reading the answer hits: %d slots for a map of %d", len(hits), p.answers)
	}
	if len(p.hitKeys) != p.answers {
		ncpu, err := ebpf.PossibleCPU()
		if err != nil {
			return fmt.Errorf("reading the answer hits: %w", err)
		}
		p.hitKeys, p.hitVals = make([]uint32, p.answers), make([]uint64, p.answers*ncpu)
	}
	if err := sumPerCPU(p.objs.AnswerHits, hits, p.hitKeys, p.hitVals); err != nil {
		return fmt.Errorf("reading the answer hits: %w", err)
	}
	return nil
}
