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
			got := AppendNSID(tc.resp, id, tc.max)
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

// TestParseNSID: Parse notes an NSID option wherever it is among the
// OPT's options, and a malformed option list does not make it up.
func TestParseNSID(t *testing.T) {
	q := question(exampleCom, dns.TypeA, dns.ClassINET)
	opt := func(rdata []byte) []byte {
		b := optRR(1232, 0)
		b = b[:len(b)-2]
		return cat(b, u16(uint16(len(rdata))), rdata)
	}
	for _, tc := range []struct {
		name  string
		rdata []byte
		want  bool
	}{
		{"none", nil, false},
		{"NSID", []byte{0, 3, 0, 0}, true},
		{"cookie then NSID", cat([]byte{0, 10, 0, 8}, make([]byte, 8), []byte{0, 3, 0, 0}), true},
		{"cookie only", cat([]byte{0, 10, 0, 8}, make([]byte, 8)), false},
		{"option longer than the RDATA", []byte{0, 10, 0, 9, 0, 3, 0, 0}, false},
		{"half an option header", []byte{0, 3}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var pq Query
			if err := Parse(cat(hdr(1, FlagRD, 1, 0, 0, 1), q, opt(tc.rdata)), &pq); err != nil {
				t.Fatal(err)
			}
			if pq.NSID != tc.want {
				t.Errorf("NSID %v, want %v", pq.NSID, tc.want)
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
