package forwarder_test

import (
	"context"
	"encoding/binary"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"xdoh/forwarder"
	"xdoh/forwarder/cache"
	"xdoh/forwarder/group"
	"xdoh/forwarder/rules"
	"xdoh/forwarder/zone"
	"xdoh/internal/submittest"
)

// bulkyError is an upstream whose every answer is SERVFAIL with a long
// Extended DNS Error text: an error much larger than the query.
type bulkyError struct{}

func (bulkyError) String() string { return "bulky-error" }
func (bulkyError) Submit(q []byte, timeout time.Duration, done func([]byte, error)) group.Canceler {
	return submittest.Go(q, timeout, done, func(_ context.Context, q []byte) ([]byte, error) {
		m := new(dns.Msg)
		if err := m.Unpack(q); err != nil {
			return nil, err
		}
		r := new(dns.Msg)
		r.SetRcode(m, dns.RcodeServerFailure)
		r.SetEdns0(1232, false)
		r.IsEdns0().Option = append(r.IsEdns0().Option, &dns.EDNS0_EDE{InfoCode: dns.ExtendedErrorCodeNetworkError, ExtraText: strings.Repeat("upstream unreachable ", 20)})
		return r.Pack()
	})
}

// sizeQueries are the queries of the size sweep: the differential tests'
// edge cases, queries as small as they get with every option xdoh answers
// with (NSID, cookie, client subnet), and deterministic mutations of them.
func sizeQueries(t *testing.T) [][]byte {
	var qs [][]byte
	for _, c := range conformanceCases(t) {
		qs = append(qs, c.query())
	}
	mk := func(name string, qtype, class uint16, opts ...dns.EDNS0) []byte {
		m := new(dns.Msg)
		m.SetQuestion(name, qtype)
		m.Question[0].Qclass = class
		if opts != nil {
			m.SetEdns0(1232, false)
			m.IsEdns0().Option = opts
		}
		return packed(t, m)
	}
	nsid := func() dns.EDNS0 { return &dns.EDNS0_NSID{Code: dns.EDNS0NSID} }
	ck := func() dns.EDNS0 { return &dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708"} }
	ecs := func() dns.EDNS0 {
		return &dns.EDNS0_SUBNET{Code: dns.EDNS0SUBNET, Family: 1, SourceNetmask: 24, Address: netip.MustParseAddr("192.0.2.0").AsSlice()}
	}
	for _, name := range []string{".", "a.", "x.ads.example.", "nope.example.org.", "f.fail.example.", "ipv4.aws.example.internal."} {
		for _, class := range []uint16{dns.ClassINET, dns.ClassCHAOS, 7, dns.ClassANY} {
			for _, qt := range []uint16{dns.TypeA, dns.TypeAXFR, dns.TypeIXFR} {
				qs = append(qs, mk(name, qt, class), mk(name, qt, class, nsid()), mk(name, qt, class, ck()),
					mk(name, qt, class, nsid(), ck()), mk(name, qt, class, nsid(), ck(), ecs()))
			}
		}
	}
	rng := rand.New(rand.NewPCG(19, 3))
	base := len(qs)
	for range 3000 {
		q := append([]byte(nil), qs[rng.IntN(base)]...)
		switch rng.IntN(4) {
		case 0: // flip a byte, the QR bit spared (a response gets nothing anyway)
			i := rng.IntN(len(q))
			q[i] ^= byte(1 + rng.IntN(255))
			q[2] &^= 0x80
		case 1: // cut it short
			q = q[:rng.IntN(len(q)+1)]
		case 2: // junk after it
			for range 1 + rng.IntN(12) {
				q = append(q, byte(rng.IntN(256)))
			}
		case 3: // another opcode or header count
			if len(q) >= 12 {
				q[2] = q[2]&0x87 | byte(rng.IntN(16))<<3
				binary.BigEndian.PutUint16(q[4+2*rng.IntN(4):], uint16(rng.IntN(3)))
			}
		}
		qs = append(qs, q)
	}
	return qs
}

// extRcode is the response's RCODE with the OPT's upper bits (BADVERS,
// BADCOOKIE), or just the header's when it does not unpack.
func extRcode(resp []byte) int {
	m := new(dns.Msg)
	if m.Unpack(resp) == nil {
		return m.Rcode
	}
	return int(resp[3] & 0xF)
}

// TestErrorRepliesNoLargerThanQuery sweeps malformed and edge queries over
// UDP from a source no cookie proves, through pipelines with every option
// that grows an answer (a long NSID, cookies, cookies required), an
// upstream with bulky errors and RRL that slips every limited answer: no
// error answer, and no slipped TC answer, is larger than its query.
func TestErrorRepliesNoLargerThanQuery(t *testing.T) {
	z, err := zone.Parse("aws.example.internal.", strings.NewReader(conformanceZone), "size.zone")
	if err != nil {
		t.Fatal(err)
	}
	build := func(require bool, rrl *forwarder.RRL) *forwarder.Forwarder {
		f, err := forwarder.New(forwarder.Config{
			Rules: []forwarder.Rule{
				{Name: "z", Domain: "aws.example.internal", Type: rules.Zone, Zone: z},
				{Name: "ads", Domain: "ads.example", Type: rules.Block},
				{Name: "fail", Domain: "fail.example", Type: rules.Forward, Targets: []forwarder.Target{{Up: bulkyError{}}}},
			},
			Listeners: []forwarder.Listener{{Name: "acl", Allow: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}},
			Cache:     cache.New(cache.Config{}),
			NSID:      []byte("edge-instance-with-a-long-name.site-7.example"),
			Cookies:   forwarder.NewCookies([16]byte{1, 9}, 0, require),
			RRL:       rrl,
		})
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	slipAll, err := forwarder.NewRRL(forwarder.RRLConfig{ResponsesPerSecond: 1e-3, Burst: 1, Slip: 1, IPv4Prefix: 32})
	if err != nil {
		t.Fatal(err)
	}
	pipes := []struct {
		name string
		f    *forwarder.Forwarder
		slip bool
	}{
		{"cookies", build(false, nil), false},
		{"cookies required", build(true, nil), false},
		{"RRL slipping", build(false, slipAll), true},
	}
	queries := sizeQueries(t)
	errs, slips, real := 0, 0, 0
	for _, p := range pipes {
		for i, q := range queries {
			for j, l := range []string{"open", "acl"} {
				// Each query from its own client (RRL: /32), but the first
				// of each is over the limit already.
				client := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 1, byte(i >> 8), byte(i)}), uint16(5300+j))
				r := &forwarder.Request{Msg: append([]byte(nil), q...), Transport: forwarder.TransportUDP, Client: client, Listener: l}
				resp := p.f.ServeDNS(context.Background(), r, nil)
				if len(resp) < 12 {
					continue
				}
				rc := extRcode(resp)
				tc := resp[2]&0x02 != 0
				switch {
				case rc != dns.RcodeSuccess && rc != dns.RcodeNameError:
					errs++
				case p.slip && tc:
					slips++
				default:
					real++
					continue
				}
				if len(resp) > len(q) {
					t.Errorf("%s, listener %s: %s answer of %d octets to a query of %d\nquery %x\nanswer %x",
						p.name, l, dns.RcodeToString[rc], len(resp), len(q), q, resp)
				}
			}
		}
	}
	t.Logf("%d queries × %d pipelines × 2 listeners: %d errors, %d slips, %d real answers", len(queries), len(pipes), errs, slips, real)
	if errs < 1000 || slips < 100 || real < 10 {
		t.Fatalf("the sweep hit too few cases: %d errors, %d slips, %d real answers", errs, slips, real)
	}
}

// TestBadCookieFitsTheQuery: with cookies required, a UDP query with a
// client cookie gets BADCOOKIE and a server cookie within the query's
// size: with its question when that fits, without it when only that
// fits, and as an empty TC answer (off to TCP) when nothing does.
func TestBadCookieFitsTheQuery(t *testing.T) {
	f, err := forwarder.New(forwarder.Config{Cookies: forwarder.NewCookies([16]byte{3}, 0, true), NSID: []byte("edge-7")})
	if err != nil {
		t.Fatal(err)
	}
	ask := func(name string, nsid bool, ck string) (*dns.Msg, int, int) {
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeA)
		m.SetEdns0(1232, false)
		if nsid {
			m.IsEdns0().Option = append(m.IsEdns0().Option, &dns.EDNS0_NSID{Code: dns.EDNS0NSID})
		}
		m.IsEdns0().Option = append(m.IsEdns0().Option, &dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: ck})
		q := packed(t, m)
		resp := f.ServeDNS(context.Background(), &forwarder.Request{Msg: q, Transport: forwarder.TransportUDP,
			Client: netip.MustParseAddrPort("127.0.0.1:5300")}, nil)
		a := new(dns.Msg)
		if err := a.Unpack(resp); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		return a, len(q), len(resp)
	}
	cookie := func(m *dns.Msg) string {
		if o := m.IsEdns0(); o != nil {
			for _, op := range o.Option {
				if c, ok := op.(*dns.EDNS0_COOKIE); ok {
					return c.Cookie
				}
			}
		}
		return ""
	}
	const client = "0102030405060708"
	stale := client + "01000000" + "00000001" + "0011223344556677" // a server cookie from 1970
	for _, tc := range []struct {
		name, cookie        string
		nsid                bool
		question, tc, hasCk bool
	}{
		// A stale server cookie makes room for a fresh one: the whole answer.
		{"foo.example.com.", stale, false, true, false, true},
		// A client cookie alone: the server cookie is 16 octets more than
		// the query has. foo.example.com with NSID asked: 60 octets; 76
		// with the question, 55 without it.
		{"foo.example.com.", client, true, false, false, true},
		// The root: 40 octets; 51 even without the question: TC.
		{".", client, false, true, true, false},
	} {
		m, ql, rl := ask(tc.name, tc.nsid, tc.cookie)
		if rl > ql {
			t.Errorf("%s: %d-octet answer to a %d-octet query", tc.name, rl, ql)
		}
		if got := len(m.Question) == 1; got != tc.question || m.Truncated != tc.tc || (cookie(m) != "") != tc.hasCk {
			t.Errorf("%s: question %v, TC %v, cookie %q; want question %v, TC %v, cookie %v\n%v", tc.name, got, m.Truncated, cookie(m), tc.question, tc.tc, tc.hasCk, m)
		}
		if tc.hasCk && (m.Rcode != dns.RcodeBadCookie || len(cookie(m)) != 48) {
			t.Errorf("%s: rcode %s, cookie %q; want BADCOOKIE and a 24-octet cookie", tc.name, dns.RcodeToString[m.Rcode], cookie(m))
		}
		if tc.tc && (m.Rcode != dns.RcodeSuccess || len(m.Answer) != 0) {
			t.Errorf("%s: TC answer %v, want empty", tc.name, m)
		}
	}
}
