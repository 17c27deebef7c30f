package dnsmsg

import (
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
