package forwarder

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/miekg/dns"

	"xdoh/forwarder/cache"
	"xdoh/forwarder/rules"
	"xdoh/forwarder/zone"
	"xdoh/internal/dnsmsg"
)

// FuzzAnswer: any bytes as a query through a pipeline with every option
// xdoh answers (NSID, cookies, a client-subnet rule, a zone, a block, the
// cache) never panic, and a FORMERR, the answer to a malformed option, is
// never larger than the query; nor is a UDP answer larger than the client
// takes.
func FuzzAnswer(f *testing.F) {
	z, err := zone.Parse("aws.example.internal.", strings.NewReader(zoneText), "fuzz.zone")
	if err != nil {
		f.Fatal(err)
	}
	fw, err := New(Config{
		Rules: []Rule{
			{Name: "zone", Domain: "aws.example.internal", Type: rules.Zone, Zone: z},
			{Name: "ads", Domain: "ads.example", Type: rules.Block},
			{Name: "geo", Domain: "geo.example", Type: rules.Forward, Targets: []Target{{Up: answerA("up", "192.0.2.1")}}, ECS: ECS{Mode: ECSAdd}},
		},
		Cache:   cache.New(cache.Config{}),
		NSID:    []byte("fuzz-instance"),
		Cookies: NewCookies([16]byte{1}, 0, true),
	})
	if err != nil {
		f.Fatal(err)
	}
	seed := func(name string, opts ...dns.EDNS0) {
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeA)
		m.SetEdns0(1232, true)
		m.IsEdns0().Option = opts
		b, err := m.Pack()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	seed("ipv4.aws.example.internal.", &dns.EDNS0_NSID{Code: dns.EDNS0NSID}, &dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708"})
	seed("x.ads.example.", &dns.EDNS0_SUBNET{Code: dns.EDNS0SUBNET, Family: 1, SourceNetmask: 24, Address: []byte{10, 1, 2, 0}})
	seed("www.geo.example.", &dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708010000005cf79f111f8130c3eee29480"},
		&dns.EDNS0_SUBNET{Code: dns.EDNS0SUBNET, Family: 2, SourceNetmask: 56, Address: netip.MustParseAddr("2001:db8::").AsSlice()})
	out := make([]byte, 65536)
	f.Fuzz(func(t *testing.T, msg []byte) {
		for _, tr := range []Transport{TransportUDP, TransportTCP} {
			r := &Request{Msg: append([]byte(nil), msg...), Transport: tr, Client: netip.MustParseAddrPort("10.1.2.3:5353")}
			resp, ok := fw.Answer(r, out)
			if !ok || resp == nil {
				continue
			}
			if len(resp) < 12 {
				t.Fatalf("a %d-octet answer", len(resp))
			}
			// A FORMERR is no larger than its query, but for the options
			// RFCs make a well-formed query's answer carry: a server cookie
			// for a client cookie (RFC 7873) and the NSID asked for.
			grow := 0
			var q dnsmsg.Query
			if dnsmsg.Parse(msg, &q) == nil {
				if q.Cookie != nil {
					grow += 24 - min(len(q.Cookie), 24)
				}
				if q.NSID {
					grow += len("fuzz-instance")
				}
			}
			if resp[3]&0xF == dns.RcodeFormatError && len(resp) > len(msg)+grow {
				t.Fatalf("FORMERR of %d octets to a %d-octet query %x", len(resp), len(msg), msg)
			}
			if tr == TransportUDP && len(resp) > r.MaxResponseSize() {
				t.Fatalf("a %d-octet UDP answer, the client takes %d", len(resp), r.MaxResponseSize())
			}
		}
	})
}
