package dnsmsg

import (
	"bytes"
	"encoding/hex"
	"testing"

	"github.com/miekg/dns"
)

func TestStripHopOptions(t *testing.T) {
	build := func(opts ...dns.EDNS0) []byte {
		m := new(dns.Msg).SetQuestion("example.com.", dns.TypeA)
		m.Response = true
		m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: "example.com.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}})
		m.SetEdns0(1232, true)
		o := m.IsEdns0()
		o.Option = append(o.Option, opts...)
		// A record after the OPT, to check the tail moves.
		m.Extra = append(m.Extra, &dns.TXT{Hdr: dns.RR_Header{Name: "t.example.com.", Rrtype: dns.TypeTXT, Class: dns.ClassINET}, Txt: []string{"tail"}})
		b, err := m.Pack()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	cookie := &dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0123456789abcdef0123456789abcdef"}
	pad := &dns.EDNS0_PADDING{Padding: make([]byte, 20)}
	ede := &dns.EDNS0_EDE{InfoCode: dns.ExtendedErrorCodeStaleAnswer, ExtraText: "stale"}
	tests := []struct {
		name     string
		in       []byte
		wantOpts []uint16
	}{
		{"cookie removed", build(cookie), nil},
		{"cookie and padding removed, EDE kept", build(cookie, ede, pad), []uint16{dns.EDNS0EDE}},
		{"no options", build(), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := StripHopOptions(append([]byte(nil), tt.in...))
			m := new(dns.Msg)
			if err := m.Unpack(out); err != nil {
				t.Fatalf("unpack: %v", err)
			}
			o := m.IsEdns0()
			if o == nil || !o.Do() || o.UDPSize() != 1232 {
				t.Fatalf("OPT lost or changed: %v", o)
			}
			var got []uint16
			for _, op := range o.Option {
				got = append(got, op.Option())
			}
			if len(got) != len(tt.wantOpts) || (len(got) > 0 && got[0] != tt.wantOpts[0]) {
				t.Fatalf("options %v, want %v", got, tt.wantOpts)
			}
			if len(m.Answer) != 1 || len(m.Extra) != 2 {
				t.Fatalf("records lost: %v", m)
			}
		})
	}
	if got := StripHopOptions([]byte{1, 2}); len(got) != 2 {
		t.Fatal("short message changed")
	}
}

// TestAppendNSID: the option goes at the end of a last OPT record, with its
// RDLEN grown, only when the room and the size limit allow.
func TestAppendNSID(t *testing.T) {
	id := []byte("edge-1")
	withOPT := func(opts ...dns.EDNS0) []byte {
		m := new(dns.Msg)
		m.SetQuestion("example.com.", dns.TypeA)
		m.Response = true
		m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: "example.com.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: []byte{192, 0, 2, 1}})
		m.SetEdns0(1232, true)
		m.IsEdns0().Option = opts
		b, err := m.Pack()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	noOPT := func() []byte {
		m := new(dns.Msg)
		m.SetQuestion("example.com.", dns.TypeA)
		m.Response = true
		b, _ := m.Pack()
		return b
	}
	roomy := func(b []byte) []byte { return append(make([]byte, 0, 1024), b...) }
	ede := &dns.EDNS0_EDE{InfoCode: 3}
	for _, tc := range []struct {
		name  string
		resp  []byte
		max   int
		added bool
	}{
		{"OPT without options", roomy(withOPT()), 512, true},
		{"OPT with an EDE option", roomy(withOPT(ede)), 512, true},
		{"no OPT", roomy(noOPT()), 512, false},
		{"no room in the buffer", withOPT(), 512, false},
		{"over the client's size", roomy(withOPT()), len(withOPT()) + 4 + len(id) - 1, false},
		{"exactly the client's size", roomy(withOPT()), len(withOPT()) + 4 + len(id), true},
		{"truncated message", roomy(withOPT()[:30]), 512, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := append([]byte(nil), tc.resp...)
			got := AppendOption(tc.resp, OptionNSID, id, tc.max)
			if !tc.added {
				if !bytes.Equal(got, before) {
					t.Fatalf("changed: %x, want %x", got, before)
				}
				return
			}
			if len(got) != len(before)+4+len(id) {
				t.Fatalf("%d octets, want %d", len(got), len(before)+4+len(id))
			}
			var m dns.Msg
			if err := m.Unpack(got); err != nil {
				t.Fatalf("unpacking: %v", err)
			}
			var nsid string
			for _, o := range m.IsEdns0().Option {
				if n, ok := o.(*dns.EDNS0_NSID); ok {
					nsid = n.Nsid
				}
			}
			if nsid != hex.EncodeToString(id) || len(m.Answer) != 1 {
				t.Errorf("NSID %q (hex), %d answers; want %x, 1", nsid, len(m.Answer), id)
			}
		})
	}
}

// TestParseOptions: Parse notes the NSID, COOKIE and CLIENT-SUBNET options
// wherever they are among the OPT's options, and rejects what their RFCs
// call malformed, leaving the EDNS state BIND 9.18 answers such a query
// with (forwarder/conformance_test.go compares): no OPT for a broken
// option list or an ECS scope, an OPT without DO for a bad cookie or ECS.
func TestParseOptions(t *testing.T) {
	q := question(exampleCom, dns.TypeA, dns.ClassINET)
	opt := func(rdata []byte) []byte {
		b := optRR(1232, 0x8000)
		b = b[:len(b)-2]
		return cat(b, u16(uint16(len(rdata))), rdata)
	}
	cookie := []byte{1, 2, 3, 4, 5, 6, 7, 8}
	ecs24 := []byte{0, 1, 24, 0, 192, 0, 2}
	for _, tc := range []struct {
		name        string
		rdata       []byte
		err         error
		nsid        bool
		cookie, ecs []byte
		opt, do     bool // EDNS state after Parse
	}{
		{"none", nil, nil, false, nil, nil, true, true},
		{"NSID", []byte{0, 3, 0, 0}, nil, true, nil, nil, true, true},
		{"cookie then NSID", cat([]byte{0, 10, 0, 8}, cookie, []byte{0, 3, 0, 0}), nil, true, cookie, nil, true, true},
		{"client cookie", cat([]byte{0, 10, 0, 8}, cookie), nil, false, cookie, nil, true, true},
		{"client and server cookie", cat([]byte{0, 10, 0, 24}, cookie, make([]byte, 16)), nil, false, cat(cookie, make([]byte, 16)), nil, true, true},
		{"cookie of 40", cat([]byte{0, 10, 0, 40}, cookie, make([]byte, 32)), nil, false, cat(cookie, make([]byte, 32)), nil, true, true},
		{"two cookies: the first counts", cat([]byte{0, 10, 0, 8}, cookie, []byte{0, 10, 0, 8}, make([]byte, 8)), nil, false, cookie, nil, true, true},
		{"cookie of 7", cat([]byte{0, 10, 0, 7}, cookie[:7]), ErrCookie, false, nil, nil, true, false},
		{"cookie of 15", cat([]byte{0, 10, 0, 15}, cookie, make([]byte, 7)), ErrCookie, false, nil, nil, true, false},
		{"cookie of 41", cat([]byte{0, 10, 0, 41}, cookie, make([]byte, 33)), ErrCookie, false, nil, nil, true, false},
		{"ECS /24", cat([]byte{0, 8, 0, 7}, ecs24), nil, false, nil, ecs24, true, true},
		{"ECS /0", []byte{0, 8, 0, 4, 0, 1, 0, 0}, nil, false, nil, []byte{0, 1, 0, 0}, true, true},
		{"ECS v6 /56", []byte{0, 8, 0, 11, 0, 2, 56, 0, 0x20, 1, 0xd, 0xb8, 0, 0, 0}, nil, false, nil, []byte{0, 2, 56, 0, 0x20, 1, 0xd, 0xb8, 0, 0, 0}, true, true},
		{"ECS /20 with bits past it", []byte{0, 8, 0, 7, 0, 1, 20, 0, 192, 0, 31}, ErrECS, false, nil, nil, true, false},
		{"ECS address too long", []byte{0, 8, 0, 8, 0, 1, 24, 0, 192, 0, 2, 0}, ErrECS, false, nil, nil, true, false},
		{"ECS family 3", []byte{0, 8, 0, 4, 0, 3, 0, 0}, ErrECS, false, nil, nil, true, false},
		{"ECS v4 /33", []byte{0, 8, 0, 9, 0, 1, 33, 0, 1, 2, 3, 4, 0}, ErrECS, false, nil, nil, true, false},
		{"ECS scope set", []byte{0, 8, 0, 7, 0, 1, 24, 24, 192, 0, 2}, ErrOPT, false, nil, nil, false, false},
		{"option longer than the RDATA", []byte{0, 10, 0, 9, 0, 3, 0, 0}, ErrOPT, false, nil, nil, false, false},
		{"good cookie, then bad ECS", cat([]byte{0, 3, 0, 0, 0, 10, 0, 8}, cookie, []byte{0, 8, 0, 4, 0, 3, 0, 0}), ErrECS, false, nil, nil, true, false},
		{"good ECS, then bad cookie", cat([]byte{0, 8, 0, 7}, ecs24, []byte{0, 10, 0, 3, 1, 2, 3}), ErrCookie, false, nil, nil, true, false},
		{"half an option header", []byte{0, 3}, ErrOPT, false, nil, nil, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var pq Query
			err := Parse(cat(hdr(1, FlagRD, 1, 0, 0, 1), q, opt(tc.rdata)), &pq)
			if err != tc.err {
				t.Fatalf("error %v, want %v", err, tc.err)
			}
			if pq.HasOPT != tc.opt || pq.DO != tc.do {
				t.Errorf("OPT %v DO %v, want %v %v", pq.HasOPT, pq.DO, tc.opt, tc.do)
			}
			if pq.NSID != tc.nsid || !bytes.Equal(pq.Cookie, tc.cookie) || !bytes.Equal(pq.ECS, tc.ecs) {
				t.Errorf("NSID %v cookie %x ECS %x, want %v %x %x", pq.NSID, pq.Cookie, pq.ECS, tc.nsid, tc.cookie, tc.ecs)
			}
		})
	}
}

// TestEnsureOPT: a response without an OPT record gets a minimal one, DO as
// asked; one with an OPT, or one that does not parse, is left alone.
func TestEnsureOPT(t *testing.T) {
	build := func(edns bool) []byte {
		m := new(dns.Msg)
		m.SetQuestion("example.com.", dns.TypeA)
		m.Response = true
		m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: "example.com.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: []byte{192, 0, 2, 1}})
		if edns {
			m.SetEdns0(4096, false)
		}
		b, err := m.Pack()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for _, do := range []bool{false, true} {
		got := EnsureOPT(build(false), do)
		var m dns.Msg
		if err := m.Unpack(got); err != nil {
			t.Fatal(err)
		}
		opt := m.IsEdns0()
		if opt == nil || opt.Do() != do || opt.Version() != 0 || len(opt.Option) != 0 || len(m.Answer) != 1 {
			t.Errorf("DO %v: OPT %v, %d answers", do, opt, len(m.Answer))
		}
	}
	with := build(true)
	if got := EnsureOPT(append([]byte(nil), with...), true); !bytes.Equal(got, with) {
		t.Error("a response with an OPT was changed")
	}
	broken := build(false)[:20]
	if got := EnsureOPT(append([]byte(nil), broken...), true); !bytes.Equal(got, broken) {
		t.Error("a response that does not parse was changed")
	}
}
