package doh

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/miekg/dns"
)

func TestMaxAge(t *testing.T) {
	rr := func(s string) dns.RR { return mustRR(t, s) }
	soa := "example.com. 900 IN SOA ns.example.com. host.example.com. 1 7200 900 1209600 60"
	tests := []struct {
		name   string
		rcode  int
		answer []dns.RR
		ns     []dns.RR
		extra  []dns.RR
		edns   bool
		want   uint32
	}{
		{name: "one answer", answer: []dns.RR{rr("example.com. 300 IN A 192.0.2.1")}, want: 300},
		{name: "minimum of the answers", answer: []dns.RR{
			rr("www.example.com. 3600 IN CNAME example.com."),
			rr("example.com. 30 IN A 192.0.2.1"),
			rr("example.com. 300 IN A 192.0.2.2"),
		}, want: 30},
		{name: "authority and additional ignored with answers", answer: []dns.RR{rr("example.com. 300 IN A 192.0.2.1")},
			ns: []dns.RR{rr("example.com. 5 IN NS ns.example.com.")}, extra: []dns.RR{rr("ns.example.com. 5 IN A 192.0.2.53")}, want: 300},
		{name: "OPT is not a TTL", answer: []dns.RR{rr("example.com. 300 IN A 192.0.2.1")}, edns: true, want: 300},
		{name: "NXDOMAIN uses the SOA minimum", rcode: dns.RcodeNameError, ns: []dns.RR{rr(soa)}, want: 60},
		{name: "NODATA uses the SOA TTL when lower", ns: []dns.RR{rr("example.com. 10 IN SOA ns.example.com. host.example.com. 1 7200 900 1209600 60")}, want: 10},
		{name: "NODATA with EDNS", ns: []dns.RR{rr(soa)}, edns: true, want: 60},
		{name: "referral", ns: []dns.RR{rr("sub.example.com. 300 IN NS ns.sub.example.com.")}, want: 0},
		{name: "SERVFAIL", rcode: dns.RcodeServerFailure, want: 0},
		{name: "REFUSED with records", rcode: dns.RcodeRefused, answer: []dns.RR{rr("example.com. 300 IN A 192.0.2.1")}, want: 0},
		{name: "TTL with the top bit set", answer: []dns.RR{rr("example.com. 300 IN A 192.0.2.1"), &dns.A{
			Hdr: dns.RR_Header{Name: "example.com.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 1 << 31}, A: []byte{192, 0, 2, 3}}}, want: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := new(dns.Msg).SetQuestion("example.com.", dns.TypeA)
			m.Response, m.Rcode = true, tt.rcode
			m.Answer, m.Ns, m.Extra = tt.answer, tt.ns, tt.extra
			m.Compress = true
			if tt.edns {
				m.SetEdns0(1232, true)
			}
			wire, err := m.Pack()
			if err != nil {
				t.Fatal(err)
			}
			if got := maxAge(wire); got != tt.want {
				t.Errorf("maxAge = %d, want %d", got, tt.want)
			}
			for cut := range len(wire) - 1 { // a truncated message never panics
				maxAge(wire[:cut])
			}
		})
	}
}

func TestClientAddr(t *testing.T) {
	tests := []struct {
		name   string
		remote string
		want   netip.AddrPort
	}{
		{name: "IPv4", remote: "127.0.0.1:5353", want: netip.MustParseAddrPort("127.0.0.1:5353")},
		{name: "IPv6", remote: "[::1]:443", want: netip.MustParseAddrPort("[::1]:443")},
		{name: "IPv4-mapped", remote: "[::ffff:10.0.0.1]:1234", want: netip.MustParseAddrPort("10.0.0.1:1234")},
		{name: "IPv6 with zone", remote: "[fe80::1%eth0]:80", want: netip.MustParseAddrPort("[fe80::1%eth0]:80")},
		{name: "garbage", remote: "pipe", want: netip.AddrPort{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := clientAddr(tt.remote); got != tt.want {
				t.Errorf("clientAddr(%q) = %v, want %v", tt.remote, got, tt.want)
			}
		})
	}
}

func TestQueryParam(t *testing.T) {
	tests := []struct {
		name, raw, want string
		wantOK          bool
	}{
		{name: "only", raw: "dns=AAAB", want: "AAAB", wantOK: true},
		{name: "after others", raw: "ct&x=1&dns=AAAB", want: "AAAB", wantOK: true},
		{name: "first wins", raw: "dns=A&dns=B", want: "A", wantOK: true},
		{name: "prefix is not the key", raw: "dnsx=AAAB", wantOK: false},
		{name: "empty", raw: "", wantOK: false},
		{name: "key without value", raw: "dns", want: "", wantOK: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := queryParam(tt.raw, "dns")
			if got != tt.want || ok != tt.wantOK {
				t.Errorf("queryParam(%q) = %q, %v; want %q, %v", tt.raw, got, ok, tt.want, tt.wantOK)
			}
		})
	}
}

// FuzzMaxAge walks arbitrary bytes as a DNS response; it must not panic and
// must agree with miekg/dns about answers it can unpack.
func FuzzMaxAge(f *testing.F) {
	m := new(dns.Msg).SetQuestion("example.com.", dns.TypeA)
	m.Response = true
	m.Answer = []dns.RR{mustRR(f, "example.com. 300 IN A 192.0.2.1")}
	m.Ns = []dns.RR{mustRR(f, "example.com. 900 IN SOA ns.example.com. host.example.com. 1 7200 900 1209600 60")}
	m.SetEdns0(1232, false)
	wire, err := m.Pack()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(wire)
	m.Answer = nil
	m.Rcode = dns.RcodeNameError
	if wire, err = m.Pack(); err != nil {
		f.Fatal(err)
	}
	f.Add(wire)
	f.Add([]byte{})
	f.Add(make([]byte, 12))
	f.Add([]byte("\x00\x00\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00\xc0\x0c\x00\x01\x00\x01"))
	f.Fuzz(func(t *testing.T, msg []byte) {
		got := maxAge(msg)
		var m dns.Msg
		if m.Unpack(msg) != nil || len(m.Answer) == 0 || (m.Rcode != dns.RcodeSuccess && m.Rcode != dns.RcodeNameError) {
			return
		}
		// miekg/dns forgives header counts larger than the message (see
		// testdata/fuzz/FuzzMaxAge/answer-count-beyond-message); maxAge
		// does not, so compare only messages that agree with their header.
		qd, an, ns, ar := binary.BigEndian.Uint16(msg[4:]), binary.BigEndian.Uint16(msg[6:]), binary.BigEndian.Uint16(msg[8:]), binary.BigEndian.Uint16(msg[10:])
		if int(qd) != len(m.Question) || int(an) != len(m.Answer) || int(ns) != len(m.Ns) || int(ar) != len(m.Extra) {
			return
		}
		want, found := uint32(0), false
		for _, rr := range m.Answer {
			if ttl := ttl(rr.Header().Ttl); rr.Header().Rrtype != dns.TypeOPT && (!found || ttl < want) {
				want, found = ttl, true
			}
		}
		if found && got != want {
			t.Fatalf("maxAge = %d, miekg/dns says the minimum answer TTL is %d", got, want)
		}
	})
}
