package forwarder_test

import (
	"context"
	"net/netip"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"xdoh/forwarder"
	"xdoh/forwarder/rules"
	"xdoh/forwarder/upstream/upstreamtest"
	"xdoh/forwarder/zone"
)

// richZone has what a zone answer can run into: a CNAME chain in the zone
// and one leaving it, wildcards, an empty non-terminal, a delegation with
// glue, an MX; and an SOA minimum (60) below the TTLs, for negative answers.
const richZone = `$TTL 300
@        IN SOA ns1 hostmaster 7 7200 900 1209600 60
@        IN NS  ns1
ns1      IN A   10.2.0.53
www      IN A   10.2.1.10
www      IN AAAA 2001:db8::10
alias    IN CNAME www
chain    IN CNAME alias
out      IN CNAME www.example.net.
*.wild   IN A   10.2.9.9
*.wild   IN TXT "wild"
a.b.ent  IN A   10.2.3.3
sub      IN NS  ns.sub
ns.sub   IN A   10.2.4.4
mx       IN MX  10 www
`

// canon is a response in a form that compares across servers: RCODE, AA,
// and each section's records sorted, lower case, TTLs included (so negative
// answers' SOA TTL is compared).
func canon(m *dns.Msg) string {
	if m == nil {
		return "<none>"
	}
	sec := func(rrs []dns.RR) string {
		var s []string
		for _, rr := range rrs {
			if rr.Header().Rrtype == dns.TypeOPT {
				continue
			}
			s = append(s, strings.ToLower(rr.String()))
		}
		sort.Strings(s)
		return strings.Join(s, " | ")
	}
	head := dns.RcodeToString[m.Rcode] + " aa=" + map[bool]string{true: "1", false: "0"}[m.Authoritative] + "\nAN: " + sec(m.Answer)
	if m.Rcode == dns.RcodeSuccess && len(m.Answer) > 0 {
		// xdoh answers minimally (BIND's minimal-responses yes): the
		// zone's NS and their addresses are not repeated with answers.
		return head
	}
	return head + "\nNS: " + sec(m.Ns) + "\nAR: " + sec(m.Extra)
}

// TestZoneAnswersAgainstBIND: xdoh's answers from a local zone match BIND
// 9.18's from the same zone file, record for record (over TCP, so that no
// answer is truncated on either side).
func TestZoneAnswersAgainstBIND(t *testing.T) {
	bind := upstreamtest.StartBIND(t, upstreamtest.BINDOptions{Zones: map[string]string{"aws.example.internal.": richZone}})
	z, err := zone.Parse("aws.example.internal.", strings.NewReader(richZone), "rich.zone")
	if err != nil {
		t.Fatal(err)
	}
	f, err := forwarder.New(forwarder.Config{Rules: []forwarder.Rule{{Name: "z", Domain: "aws.example.internal", Type: rules.Zone, Zone: z}}})
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []struct {
		name  string
		qtype uint16
	}{
		{"www.aws.example.internal.", dns.TypeA},
		{"WwW.AWS.example.internal.", dns.TypeAAAA},
		{"www.aws.example.internal.", dns.TypeMX},
		{"nope.aws.example.internal.", dns.TypeA},
		{"alias.aws.example.internal.", dns.TypeA},
		{"chain.aws.example.internal.", dns.TypeA},
		{"alias.aws.example.internal.", dns.TypeCNAME},
		{"out.aws.example.internal.", dns.TypeA},
		{"x.wild.aws.example.internal.", dns.TypeA},
		{"x.wild.aws.example.internal.", dns.TypeTXT},
		{"x.wild.aws.example.internal.", dns.TypeAAAA},
		{"b.ent.aws.example.internal.", dns.TypeA},
		{"ent.aws.example.internal.", dns.TypeA},
		{"sub.aws.example.internal.", dns.TypeA},
		{"host.sub.aws.example.internal.", dns.TypeA},
		{"mx.aws.example.internal.", dns.TypeMX},
		{"aws.example.internal.", dns.TypeSOA},
		{"aws.example.internal.", dns.TypeNS},
	} {
		m := new(dns.Msg)
		m.SetQuestion(q.name, q.qtype)
		m.RecursionDesired = false
		b, _ := m.Pack()
		x := f.ServeDNS(context.Background(), &forwarder.Request{Msg: b, Transport: forwarder.TransportTCP, Client: netip.MustParseAddrPort("127.0.0.1:1")}, nil)
		var xm dns.Msg
		if err := xm.Unpack(x); err != nil {
			t.Fatal(err)
		}
		bm, _, err := (&dns.Client{Net: "tcp", Timeout: 2 * time.Second}).Exchange(m, bind.Do53Addr)
		if err != nil {
			t.Fatal(err)
		}
		if cx, cb := canon(&xm), canon(bm); cx != cb {
			t.Errorf("%s %s\nxdoh: %s\nBIND: %s", q.name, dns.TypeToString[q.qtype], cx, cb)
		}
	}
}
