package zone

import (
	"slices"
	"strings"
	"testing"

	"github.com/miekg/dns"
)

const testZoneFile = "testdata/aws.example.internal.zone"

func loadTestZone(t testing.TB) *Zone {
	t.Helper()
	z, err := Load("AWS.example.internal", testZoneFile)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	return z
}

// rrStrings renders records with tabs squeezed to single spaces.
func rrStrings(rrs []dns.RR) []string {
	var out []string
	for _, rr := range rrs {
		out = append(out, strings.Join(strings.Fields(rr.String()), " "))
	}
	return out
}

const negSOA = "aws.example.internal. 60 IN SOA ns1.aws.example.internal. hostmaster.aws.example.internal. 1 7200 900 1209600 60"

func TestAnswer(t *testing.T) {
	z := loadTestZone(t)
	if got, want := z.Origin(), "aws.example.internal."; got != want {
		t.Fatalf("Origin() = %q, want %q", got, want)
	}
	tests := []struct {
		name      string
		qname     string
		qtype     uint16
		rd        bool
		wantRcode int
		wantAA    bool
		answer    []string
		ns        []string
		extra     []string
	}{
		{
			name: "positive A", qname: "ipv4.aws.example.internal.", qtype: dns.TypeA,
			wantAA: true, answer: []string{"ipv4.aws.example.internal. 300 IN A 10.2.1.10"},
		},
		{
			name: "positive AAAA with RD", qname: "ipv6.aws.example.internal.", qtype: dns.TypeAAAA, rd: true,
			wantAA: true, answer: []string{"ipv6.aws.example.internal. 300 IN AAAA fd00:2::10"},
		},
		{
			name: "mixed case query name", qname: "IPv4.AWS.Example.INTERNAL.", qtype: dns.TypeA,
			wantAA: true, answer: []string{"ipv4.aws.example.internal. 300 IN A 10.2.1.10"},
		},
		{
			name: "apex SOA", qname: "aws.example.internal.", qtype: dns.TypeSOA,
			wantAA: true, answer: []string{"aws.example.internal. 300 IN SOA ns1.aws.example.internal. hostmaster.aws.example.internal. 1 7200 900 1209600 60"},
		},
		{
			name: "apex ANY returns every RRset", qname: "aws.example.internal.", qtype: dns.TypeANY,
			wantAA: true, answer: []string{
				"aws.example.internal. 300 IN NS ns1.aws.example.internal.",
				"aws.example.internal. 300 IN SOA ns1.aws.example.internal. hostmaster.aws.example.internal. 1 7200 900 1209600 60",
			},
		},
		{
			name: "CNAME followed", qname: "www.aws.example.internal.", qtype: dns.TypeA,
			wantAA: true, answer: []string{
				"www.aws.example.internal. 300 IN CNAME ipv4.aws.example.internal.",
				"ipv4.aws.example.internal. 300 IN A 10.2.1.10",
			},
		},
		{
			name: "CNAME chain of two", qname: "alias.aws.example.internal.", qtype: dns.TypeA,
			wantAA: true, answer: []string{
				"alias.aws.example.internal. 300 IN CNAME www.aws.example.internal.",
				"www.aws.example.internal. 300 IN CNAME ipv4.aws.example.internal.",
				"ipv4.aws.example.internal. 300 IN A 10.2.1.10",
			},
		},
		{
			name: "CNAME chain ending in NODATA", qname: "www.aws.example.internal.", qtype: dns.TypeAAAA,
			wantAA: true, answer: []string{"www.aws.example.internal. 300 IN CNAME ipv4.aws.example.internal."},
			ns: []string{negSOA},
		},
		{
			name: "CNAME query returns the CNAME only", qname: "www.aws.example.internal.", qtype: dns.TypeCNAME,
			wantAA: true, answer: []string{"www.aws.example.internal. 300 IN CNAME ipv4.aws.example.internal."},
		},
		{
			name: "CNAME out of the zone returned as is", qname: "ext.aws.example.internal.", qtype: dns.TypeA,
			wantAA: true, answer: []string{"ext.aws.example.internal. 300 IN CNAME foo.example.com."},
		},
		{
			name: "CNAME loop is bounded", qname: "loop1.aws.example.internal.", qtype: dns.TypeA,
			wantAA: true, answer: []string{
				"loop1.aws.example.internal. 300 IN CNAME loop2.aws.example.internal.",
				"loop2.aws.example.internal. 300 IN CNAME loop1.aws.example.internal.",
			},
		},
		{
			name: "dangling CNAME is NXDOMAIN", qname: "dangle.aws.example.internal.", qtype: dns.TypeA,
			wantRcode: dns.RcodeNameError, wantAA: true,
			answer: []string{"dangle.aws.example.internal. 300 IN CNAME nothere.aws.example.internal."},
			ns:     []string{negSOA},
		},
		{
			name: "CNAME into a delegation stops", qname: "tosub.aws.example.internal.", qtype: dns.TypeA,
			wantAA: true, answer: []string{"tosub.aws.example.internal. 300 IN CNAME host.sub.aws.example.internal."},
		},
		{
			name: "NXDOMAIN", qname: "nx.aws.example.internal.", qtype: dns.TypeA,
			wantRcode: dns.RcodeNameError, wantAA: true, ns: []string{negSOA},
		},
		{
			name: "NXDOMAIN below an existing name", qname: "x.ipv4.aws.example.internal.", qtype: dns.TypeA,
			wantRcode: dns.RcodeNameError, wantAA: true, ns: []string{negSOA},
		},
		{
			name: "NODATA", qname: "ipv4.aws.example.internal.", qtype: dns.TypeAAAA,
			wantAA: true, ns: []string{negSOA},
		},
		{
			name: "empty non-terminal is NODATA", qname: "b.c.aws.example.internal.", qtype: dns.TypeA,
			wantAA: true, ns: []string{negSOA},
		},
		{
			name: "upper empty non-terminal is NODATA", qname: "c.aws.example.internal.", qtype: dns.TypeA,
			wantAA: true, ns: []string{negSOA},
		},
		{
			name: "empty non-terminal ANY is NODATA", qname: "c.aws.example.internal.", qtype: dns.TypeANY,
			wantAA: true, ns: []string{negSOA},
		},
		{
			name: "leaf below empty non-terminals", qname: "a.b.c.aws.example.internal.", qtype: dns.TypeA,
			wantAA: true, answer: []string{"a.b.c.aws.example.internal. 300 IN A 10.2.3.3"},
		},
		{
			name: "NXDOMAIN beside an empty non-terminal", qname: "x.b.c.aws.example.internal.", qtype: dns.TypeA,
			wantRcode: dns.RcodeNameError, wantAA: true, ns: []string{negSOA},
		},
		{
			name: "wildcard owner rewritten", qname: "Host.wild.aws.example.internal.", qtype: dns.TypeA,
			wantAA: true, answer: []string{"Host.wild.aws.example.internal. 300 IN A 10.2.9.9"},
		},
		{
			name: "wildcard two labels deep", qname: "a.b.wild.aws.example.internal.", qtype: dns.TypeA,
			wantAA: true, answer: []string{"a.b.wild.aws.example.internal. 300 IN A 10.2.9.9"},
		},
		{
			name: "wildcard NODATA", qname: "host.wild.aws.example.internal.", qtype: dns.TypeAAAA,
			wantAA: true, ns: []string{negSOA},
		},
		{
			name: "wildcard parent is an empty non-terminal", qname: "wild.aws.example.internal.", qtype: dns.TypeA,
			wantAA: true, ns: []string{negSOA},
		},
		{
			name: "wildcard CNAME followed", qname: "x.cn.aws.example.internal.", qtype: dns.TypeAAAA,
			wantAA: true, answer: []string{
				"x.cn.aws.example.internal. 300 IN CNAME ipv6.aws.example.internal.",
				"ipv6.aws.example.internal. 300 IN AAAA fd00:2::10",
			},
		},
		{
			name: "referral at the delegation point", qname: "sub.aws.example.internal.", qtype: dns.TypeA,
			ns:    []string{"sub.aws.example.internal. 300 IN NS ns.sub.aws.example.internal."},
			extra: []string{"ns.sub.aws.example.internal. 300 IN A 10.2.5.5"},
		},
		{
			name: "referral below the delegation", qname: "host.sub.aws.example.internal.", qtype: dns.TypeAAAA,
			ns:    []string{"sub.aws.example.internal. 300 IN NS ns.sub.aws.example.internal."},
			extra: []string{"ns.sub.aws.example.internal. 300 IN A 10.2.5.5"},
		},
		{
			name: "referral for the glue name", qname: "ns.sub.aws.example.internal.", qtype: dns.TypeA,
			ns:    []string{"sub.aws.example.internal. 300 IN NS ns.sub.aws.example.internal."},
			extra: []string{"ns.sub.aws.example.internal. 300 IN A 10.2.5.5"},
		},
		{
			name: "DS at the delegation point answered by the parent", qname: "sub.aws.example.internal.", qtype: dns.TypeDS,
			wantAA: true, ns: []string{negSOA},
		},
		{
			name: "outside the zone", qname: "www.example.com.", qtype: dns.TypeA,
			wantRcode: dns.RcodeRefused,
		},
		{
			name: "parent of the zone", qname: "example.internal.", qtype: dns.TypeA,
			wantRcode: dns.RcodeRefused,
		},
		{
			name: "suffix that is not a subdomain", qname: "xaws.example.internal.", qtype: dns.TypeA,
			wantRcode: dns.RcodeRefused,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := new(dns.Msg)
			req.SetQuestion(tt.qname, tt.qtype)
			req.RecursionDesired = tt.rd
			resp := z.Answer(req)
			if resp.Id != req.Id || !resp.Response {
				t.Errorf("header: id %d response %v, want id %d response true", resp.Id, resp.Response, req.Id)
			}
			if len(resp.Question) != 1 || resp.Question[0] != req.Question[0] {
				t.Errorf("question = %v, want %v", resp.Question, req.Question)
			}
			if resp.Rcode != tt.wantRcode {
				t.Errorf("rcode = %s, want %s", dns.RcodeToString[resp.Rcode], dns.RcodeToString[tt.wantRcode])
			}
			if resp.Authoritative != tt.wantAA {
				t.Errorf("AA = %v, want %v", resp.Authoritative, tt.wantAA)
			}
			if resp.RecursionDesired != tt.rd || resp.RecursionAvailable {
				t.Errorf("RD = %v RA = %v, want RD %v and RA false", resp.RecursionDesired, resp.RecursionAvailable, tt.rd)
			}
			for _, sec := range []struct {
				name      string
				got, want []string
			}{
				{"answer", rrStrings(resp.Answer), tt.answer},
				{"authority", rrStrings(resp.Ns), tt.ns},
				{"additional", rrStrings(resp.Extra), tt.extra},
			} {
				if !slices.Equal(sec.got, sec.want) {
					t.Errorf("%s section:\n got %q\nwant %q", sec.name, sec.got, sec.want)
				}
			}
			if _, err := resp.Pack(); err != nil {
				t.Errorf("packing the response: %v", err)
			}
		})
	}
}

func TestAnswerMalformedRequests(t *testing.T) {
	z := loadTestZone(t)
	tests := []struct {
		name      string
		req       *dns.Msg
		wantRcode int
	}{
		{
			name:      "no question",
			req:       &dns.Msg{MsgHdr: dns.MsgHdr{Id: 7}},
			wantRcode: dns.RcodeFormatError,
		},
		{
			name: "opcode NOTIFY",
			req: &dns.Msg{MsgHdr: dns.MsgHdr{Id: 7, Opcode: dns.OpcodeNotify},
				Question: []dns.Question{{Name: "aws.example.internal.", Qtype: dns.TypeSOA, Qclass: dns.ClassINET}}},
			wantRcode: dns.RcodeNotImplemented,
		},
		{
			name: "class CHAOS",
			req: &dns.Msg{MsgHdr: dns.MsgHdr{Id: 7},
				Question: []dns.Question{{Name: "ipv4.aws.example.internal.", Qtype: dns.TypeA, Qclass: dns.ClassCHAOS}}},
			wantRcode: dns.RcodeRefused,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := z.Answer(tt.req)
			if resp.Rcode != tt.wantRcode {
				t.Errorf("rcode = %s, want %s", dns.RcodeToString[resp.Rcode], dns.RcodeToString[tt.wantRcode])
			}
			if resp.Authoritative || len(resp.Answer)+len(resp.Ns)+len(resp.Extra) != 0 {
				t.Errorf("unexpected AA or records: %v", resp)
			}
		})
	}
}

// TestAnswerDoesNotShareRecords checks that callers may modify responses
// without changing the zone.
func TestAnswerDoesNotShareRecords(t *testing.T) {
	z := loadTestZone(t)
	req := new(dns.Msg).SetQuestion("ipv4.aws.example.internal.", dns.TypeA)
	z.Answer(req).Answer[0].Header().Ttl = 1
	if got := z.Answer(req).Answer[0].Header().Ttl; got != 300 {
		t.Fatalf("TTL after modifying an earlier answer = %d, want 300", got)
	}
}

func TestAnswerConcurrent(t *testing.T) {
	z := loadTestZone(t)
	names := []string{"www", "alias", "nx", "x.wild", "sub", "c", "loop1"}
	for i := range 8 {
		t.Run("", func(t *testing.T) {
			t.Parallel()
			for j := range 200 {
				req := new(dns.Msg).SetQuestion(names[(i+j)%len(names)]+".aws.example.internal.", dns.TypeA)
				if resp := z.Answer(req); resp.Rcode == dns.RcodeRefused {
					t.Errorf("%s: REFUSED", req.Question[0].Name)
				}
			}
		})
	}
}

func BenchmarkAnswer(b *testing.B) {
	z := loadTestZone(b)
	req := new(dns.Msg).SetQuestion("alias.aws.example.internal.", dns.TypeA)
	b.ReportAllocs()
	for b.Loop() {
		z.Answer(req)
	}
}
