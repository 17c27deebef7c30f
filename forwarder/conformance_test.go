package forwarder_test

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"xdoh/forwarder"
	"xdoh/forwarder/rules"
	"xdoh/forwarder/upstream/upstreamtest"
	"xdoh/forwarder/zone"
)

// conformanceZone is served by both BIND 9.18 and xdoh in the
// differential tests.
const conformanceZone = `$TTL 300
@    IN SOA ns1 hostmaster 1 7200 900 1209600 60
@    IN NS  ns1
ns1  IN A   10.2.0.53
ipv4 IN A   10.2.1.10
`

// header is what the differential tests compare of a response: the parts
// RFC 6891 and RFC 1035 fix for errors and EDNS. RA and AA are not
// compared: xdoh offers recursion, BIND here does not.
type header struct {
	Answered          bool
	ID                uint16
	QR                bool
	Opcode, Rcode     int // Rcode: extended, with the OPT's upper bits
	RD                bool
	QD, AN, NS        int
	OPT               bool
	Version           int    // EDNS version of the response's OPT
	DO                bool   // the DO bit
	OtherFlags        uint16 // EDNS flag bits other than DO (must be clear)
	OptionsLen        int    // octets of options in the response's OPT
	ExtraNonOPTRecord bool
}

// summarize reads a response into a header (Answered false for none).
func summarize(t *testing.T, resp []byte) header {
	t.Helper()
	if resp == nil {
		return header{}
	}
	if len(resp) < 12 {
		t.Fatalf("response of %d octets", len(resp))
	}
	var m dns.Msg
	if err := m.Unpack(resp); err != nil {
		t.Fatalf("unpacking response %x: %v", resp, err)
	}
	h := header{
		Answered: true, ID: m.Id, QR: m.Response, Opcode: m.Opcode, Rcode: m.Rcode, RD: m.RecursionDesired,
		QD: len(m.Question), AN: len(m.Answer), NS: len(m.Ns),
	}
	for _, rr := range m.Extra {
		opt, ok := rr.(*dns.OPT)
		if !ok {
			h.ExtraNonOPTRecord = true
			continue
		}
		h.OPT = true
		h.Version = int(opt.Version())
		h.DO = opt.Do()
		h.OtherFlags = uint16(opt.Hdr.Ttl) &^ 0x8000
		h.OptionsLen = int(opt.Hdr.Rdlength)
	}
	return h
}

// conformanceCase is one query, as wire bytes built from a message and
// then patched.
type conformanceCase struct {
	name  string
	query func() []byte
}

func packed(t *testing.T, m *dns.Msg) []byte {
	t.Helper()
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func conformanceCases(t *testing.T) []conformanceCase {
	q := func(name string, qtype uint16, edns bool) *dns.Msg {
		m := new(dns.Msg)
		m.SetQuestion(name, qtype)
		m.Id = 0x1234
		if edns {
			m.SetEdns0(1232, true)
		}
		return m
	}
	withOPT := func(m *dns.Msg, edit func(*dns.OPT)) *dns.Msg {
		edit(m.IsEdns0())
		return m
	}
	return []conformanceCase{
		{"no EDNS", func() []byte { return packed(t, q("ipv4.aws.example.internal.", dns.TypeA, false)) }},
		{"EDNS 0", func() []byte { return packed(t, q("ipv4.aws.example.internal.", dns.TypeA, true)) }},
		{"EDNS 0 NXDOMAIN", func() []byte { return packed(t, q("nope.aws.example.internal.", dns.TypeA, true)) }},
		{"EDNS version 1", func() []byte {
			return packed(t, withOPT(q("ipv4.aws.example.internal.", dns.TypeA, true), func(o *dns.OPT) { o.SetVersion(1) }))
		}},
		{"EDNS version 255, no DO", func() []byte {
			m := q("ipv4.aws.example.internal.", dns.TypeA, false)
			m.SetEdns0(1232, false)
			return packed(t, withOPT(m, func(o *dns.OPT) { o.SetVersion(255) }))
		}},
		{"EDNS unknown option and flag", func() []byte {
			return packed(t, withOPT(q("ipv4.aws.example.internal.", dns.TypeA, true), func(o *dns.OPT) {
				o.Option = append(o.Option, &dns.EDNS0_LOCAL{Code: 65001, Data: []byte{1, 2, 3}})
				o.Hdr.Ttl |= 0x4000 // an EDNS flag bit nobody has defined
			}))
		}},
		{"two OPT records", func() []byte {
			m := q("ipv4.aws.example.internal.", dns.TypeA, true)
			m.Extra = append(m.Extra, m.Extra[0])
			return packed(t, m)
		}},
		{"OPT in the answer section", func() []byte {
			m := q("ipv4.aws.example.internal.", dns.TypeA, true)
			m.Answer, m.Extra = m.Extra, nil
			return packed(t, m)
		}},
		{"opcode 3 with a question", func() []byte {
			m := q("ipv4.aws.example.internal.", dns.TypeA, false)
			m.Opcode = 3
			return packed(t, m)
		}},
		{"opcode 3, header only", func() []byte {
			m := q("ipv4.aws.example.internal.", dns.TypeA, false)
			m.Opcode, m.Question = 3, nil
			return packed(t, m)
		}},
		{"opcode 15, header only, RD clear", func() []byte {
			m := q("ipv4.aws.example.internal.", dns.TypeA, false)
			m.Opcode, m.Question, m.RecursionDesired = 15, nil, false
			return packed(t, m)
		}},
		{"QUERY, no question", func() []byte {
			m := q("ipv4.aws.example.internal.", dns.TypeA, false)
			m.Question = nil
			return packed(t, m)
		}},
		{"QUERY, two questions", func() []byte {
			m := q("ipv4.aws.example.internal.", dns.TypeA, false)
			m.Question = append(m.Question, m.Question[0])
			return packed(t, m)
		}},
		{"QR set", func() []byte {
			m := q("ipv4.aws.example.internal.", dns.TypeA, true)
			m.Response = true
			return packed(t, m)
		}},
		{"ANY", func() []byte { return packed(t, q("ipv4.aws.example.internal.", dns.TypeANY, true)) }},
		{"AXFR", func() []byte { return packed(t, q("aws.example.internal.", dns.TypeAXFR, false)) }},
		{"IXFR", func() []byte { return packed(t, q("aws.example.internal.", dns.TypeIXFR, false)) }},
		{"RRSIG", func() []byte { return packed(t, q("ipv4.aws.example.internal.", dns.TypeRRSIG, true)) }},
		{"class CH", func() []byte {
			m := q("ipv4.aws.example.internal.", dns.TypeA, false)
			m.Question[0].Qclass = dns.ClassCHAOS
			return packed(t, m)
		}},
		{"class ANY", func() []byte {
			m := q("ipv4.aws.example.internal.", dns.TypeA, false)
			m.Question[0].Qclass = dns.ClassANY
			return packed(t, m)
		}},
		{"class 7", func() []byte {
			m := q("ipv4.aws.example.internal.", dns.TypeA, false)
			m.Question[0].Qclass = 7
			return packed(t, m)
		}},
		{"EDNS 0 over a question with upper case", func() []byte {
			return packed(t, q("IPv4.AWS.example.internal.", dns.TypeA, true))
		}},
	}
}

// bindUDP sends query to BIND over UDP and returns its response, or nil
// when none comes within wait.
func bindUDP(t *testing.T, addr string, query []byte, wait time.Duration) []byte {
	t.Helper()
	c, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(query); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(wait))
	buf := make([]byte, 65535)
	n, err := c.Read(buf)
	if err != nil {
		return nil
	}
	return buf[:n]
}

// bindTCP sends query to BIND over TCP (RFC 7766 framing) and returns its
// response, or nil when none comes within wait (BIND may close instead).
func bindTCP(t *testing.T, addr string, query []byte, wait time.Duration) []byte {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(query))), query...)); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(wait))
	var n [2]byte
	if _, err := io.ReadFull(c, n[:]); err != nil {
		return nil
	}
	buf := make([]byte, binary.BigEndian.Uint16(n[:]))
	if _, err := io.ReadFull(c, buf); err != nil {
		return nil
	}
	return buf
}

// TestConformanceAgainstBIND sends each query to BIND 9.18 and to xdoh's
// pipeline serving the same zone, and compares what RFC 1035 and RFC 6891
// fix: answered or not, ID, QR, opcode, (extended) RCODE, RD, section
// counts, and the OPT record (present, version 0, DO, no unknown flags or
// options echoed). Both must also never answer with more octets than the
// query had, for errors.
func TestConformanceAgainstBIND(t *testing.T) {
	bind := upstreamtest.StartBIND(t, upstreamtest.BINDOptions{Zones: map[string]string{"aws.example.internal.": conformanceZone}})
	z, err := zone.Parse("aws.example.internal.", strings.NewReader(conformanceZone), "conformance.zone")
	if err != nil {
		t.Fatal(err)
	}
	f, err := forwarder.New(forwarder.Config{Rules: []forwarder.Rule{
		{Name: "z", Domain: "aws.example.internal", Type: rules.Zone, Zone: z},
	}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range conformanceCases(t) {
		for _, tr := range []forwarder.Transport{forwarder.TransportUDP, forwarder.TransportTCP} {
			t.Run(tc.name+"/"+tr.String(), func(t *testing.T) {
				query := tc.query()
				wait := 2 * time.Second
				xq := append([]byte(nil), query...)
				x := f.ServeDNS(context.Background(), &forwarder.Request{Msg: xq, Transport: tr,
					Client: netip.MustParseAddrPort("127.0.0.1:5353")}, nil)
				if x == nil {
					wait = 300 * time.Millisecond // xdoh sends nothing: BIND must not either
				}
				var b []byte
				if tr == forwarder.TransportTCP {
					b = bindTCP(t, bind.Do53Addr, query, wait)
				} else {
					b = bindUDP(t, bind.Do53Addr, query, wait)
				}
				xh, bh := summarize(t, x), summarize(t, b)
				if xh.Rcode == dns.RcodeNotImplemented && bh.Rcode == dns.RcodeNotImplemented {
					// RFC 1035 4.1.1: RD is copied into the response. BIND
					// 9.18 clears it in NOTIMP; xdoh copies it.
					if xh.RD != (query[2]&1 != 0) {
						t.Errorf("NOTIMP: RD %v, the query's %v", xh.RD, query[2]&1 != 0)
					}
					bh.RD = xh.RD
				}
				if tc.name == "AXFR" && tr == forwarder.TransportTCP {
					// xdoh serves no zone transfers: REFUSED, where this BIND
					// (allow-transfer not set) sends the zone.
					if xh.Rcode != dns.RcodeRefused || xh.AN != 0 {
						t.Errorf("AXFR over TCP: %+v, want REFUSED and no records", xh)
					}
					return
				}
				if xh != bh {
					t.Errorf("query %x\nxdoh: %+v\nBIND: %+v", query, xh, bh)
				}
				if xh.Answered && xh.Rcode != dns.RcodeSuccess && xh.Rcode != dns.RcodeNameError && len(x) > len(query) {
					t.Errorf("xdoh's error response (%d octets) is larger than the query (%d)", len(x), len(query))
				}
				if xh.Answered && binary.BigEndian.Uint16(x) != binary.BigEndian.Uint16(query) {
					t.Errorf("xdoh's response ID %04x, query's %04x", binary.BigEndian.Uint16(x), binary.BigEndian.Uint16(query))
				}
			})
		}
	}
}
