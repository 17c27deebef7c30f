package forwarder

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/miekg/dns"

	"xdoh/forwarder/rules"
	"xdoh/forwarder/zone"
)

// Regression (review): local answers are packed with name compression.
func TestLocalAnswersCompressed(t *testing.T) {
	var zf strings.Builder
	zf.WriteString("$ORIGIN aws.example.internal.\n@ 300 IN SOA ns1 hostmaster 1 7200 900 1209600 60\n@ 300 IN NS ns1\nns1 300 IN A 10.2.0.53\n")
	for i := range 25 {
		fmt.Fprintf(&zf, "service-frontend.prod 60 IN A 10.2.1.%d\n", i+1)
	}
	z, err := zone.Parse("aws.example.internal.", strings.NewReader(zf.String()), "t.zone")
	if err != nil {
		t.Fatal(err)
	}
	f, _ := New(Config{Rules: []Rule{{Name: "z", Domain: "aws.example.internal", Type: rules.Zone, Zone: z}}})
	m := new(dns.Msg)
	m.SetQuestion("service-frontend.prod.aws.example.internal.", dns.TypeA)
	b, _ := m.Pack()
	out := f.ServeDNS(context.Background(), &Request{Msg: b, Transport: TransportUDP}, nil)
	r := new(dns.Msg)
	if err := r.Unpack(out); err != nil {
		t.Fatal(err)
	}
	full := new(dns.Msg)
	full.SetReply(m)
	full.Answer = z.Answer(m).Answer
	full.Compress = true
	cb, _ := full.Pack()
	t.Logf("UDP no-EDNS client: TC=%v answers=%d; the same answer compressed is %d bytes", r.Truncated, len(r.Answer), len(cb))
	if r.Truncated && len(cb) <= 512 {
		t.Error("local answer truncated only because it was packed without name compression")
	}
}
