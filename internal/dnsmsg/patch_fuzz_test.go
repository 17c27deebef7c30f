package dnsmsg

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/miekg/dns"
)

// FuzzPatch: the in-place edits a cached or forwarded answer goes through
// (AgeTTLs and CapTTLs on a cache hit, StripHopOptions and EnsureOPT on a
// forwarded answer) take any bytes without a panic. The TTL edits change
// nothing but the TTL field of each record outside the OPT, to
// min(max, max(floor, ttl-age)). On a message miekg/dns reads, only
// Extended DNS Error options survive the strip, and EnsureOPT adds an OPT
// exactly when there was none.
func FuzzPatch(f *testing.F) {
	query := newQuery("www.example.com.", dns.TypeA)
	query.SetEdns0(4096, true)
	for _, n := range []int{0, 3, 20} {
		m := bigResponse(f, query, n)
		m.Compress = n == 20
		o := m.IsEdns0()
		o.Option = append(o.Option,
			&dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708010000005cf79f111f8130c3eee29480"},
			&dns.EDNS0_EDE{InfoCode: dns.ExtendedErrorCodeStaleAnswer, ExtraText: "stale"},
			&dns.EDNS0_PADDING{Padding: make([]byte, 12)})
		f.Add(pack(f, m), uint32(30), uint32(5), uint32(3600))
	}
	plain := bigResponse(f, newQuery("example.org.", dns.TypeAAAA), 2)
	f.Add(pack(f, plain), uint32(1<<31), uint32(0), uint32(60))
	f.Add([]byte{1, 2, 3}, uint32(1), uint32(1), uint32(1))
	f.Fuzz(func(t *testing.T, msg []byte, age, floor, max uint32) {
		var before dns.Msg
		// miekg/dns stops at the end of the message whatever the counts say;
		// only a message that holds what its header counts is compared.
		readable := before.Unpack(msg) == nil && countsHeld(msg, &before)
		qend := -1 // the edits' callers hold a message with its question read
		if len(msg) >= HeaderLen {
			qend = HeaderLen
			if msg[4] != 0 || msg[5] != 0 {
				qend = questionLen(msg)
			}
		}

		// TTLs: in place, nothing but TTL fields.
		if qend > 0 {
			aged := append([]byte(nil), msg...)
			AgeTTLs(aged, qend, age, floor)
			CapTTLs(aged, qend, max)
			if len(aged) != len(msg) {
				t.Fatalf("length %d → %d", len(msg), len(aged))
			}
			// Only the TTL fields of the records the edits walk change,
			// each to what the edits promise. (miekg/dns is no judge here:
			// a name may point forward into a TTL and read differently.)
			want := append([]byte(nil), msg...)
			_, an, ns, ar := Counts(msg)
			for i, off := 0, qend; i < an+ns+ar; i++ {
				rr, err := ReadRR(msg, off)
				if err != nil {
					break
				}
				if rr.Type != TypeOPT {
					ttl := rr.TTL
					if ttl > age {
						ttl -= age
					} else {
						ttl = 0
					}
					binary.BigEndian.PutUint32(want[rr.TTLOff:], min(ttlMax(ttl, floor), max))
				}
				off = rr.End
			}
			if !bytes.Equal(aged, want) {
				t.Fatalf("TTL edits:\n got % x\nwant % x", aged, want)
			}
		}

		// Hop-by-hop options out.
		stripped := StripHopOptions(append([]byte(nil), msg...))
		if len(stripped) > len(msg) {
			t.Fatalf("strip grew %d → %d", len(msg), len(stripped))
		}
		if readable {
			var after dns.Msg
			if err := after.Unpack(stripped); err != nil {
				t.Fatalf("readable before the strip, not after: %v", err)
			}
			if o := after.IsEdns0(); o != nil {
				for _, opt := range o.Option {
					if opt.Option() != dns.EDNS0EDE {
						t.Fatalf("option %d kept", opt.Option())
					}
				}
			}
			if len(after.Answer) != len(before.Answer) || len(after.Ns) != len(before.Ns) {
				t.Fatal("strip changed the answer or authority sections")
			}
		}

		// An OPT when there was none.
		in := append(make([]byte, 0, len(msg)+16), msg...)
		ensured := EnsureOPT(in, true)
		switch {
		case len(ensured) == len(msg):
			if !bytes.Equal(ensured, msg) {
				t.Fatal("changed without adding an OPT")
			}
			if readable && before.IsEdns0() == nil && len(msg) > HeaderLen {
				if _, found, end, ok := findOPT(msg); ok && !found && end == len(msg) {
					t.Fatal("no OPT added to a message without one")
				}
			}
		case len(ensured) == len(msg)+11:
			if readable {
				if before.IsEdns0() != nil {
					t.Fatal("a second OPT added")
				}
				var after dns.Msg
				if err := after.Unpack(ensured); err != nil || after.IsEdns0() == nil || !after.IsEdns0().Do() {
					t.Fatalf("added OPT unreadable or without DO: %v", err)
				}
			}
		default:
			t.Fatalf("EnsureOPT %d → %d octets", len(msg), len(ensured))
		}
	})
}

func countsHeld(msg []byte, m *dns.Msg) bool {
	qd, an, ns, ar := Counts(msg)
	return len(m.Question) == qd && len(m.Answer) == an && len(m.Ns) == ns && len(m.Extra) == ar // OPT is in Extra
}

func ttlMax(a, b uint32) uint32 {
	if a > b {
		return a
	}
	return b
}
