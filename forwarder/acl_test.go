package forwarder

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"testing"

	"github.com/miekg/dns"

	"xdoh/forwarder/upstream"
)

func TestSourceACL(t *testing.T) {
	f, err := New(Config{
		Default: []Target{{Up: answerA("up", "192.0.2.1")}},
		Listeners: []Listener{
			{Name: "refusing", Allow: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd00::/8")}},
			{Name: "dropping", Allow: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, Drop: true},
			{Name: "open"},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, listener, client string
		tr                     Transport
		want                   int // rcode, -1: no answer
	}{
		{"allowed v4", "refusing", "10.1.2.3:5353", TransportUDP, dns.RcodeSuccess},
		{"allowed v6", "refusing", "[fd00::1]:5353", TransportTCP, dns.RcodeSuccess},
		{"v4-mapped v6 allowed", "refusing", "[::ffff:10.9.9.9]:5353", TransportDoH, dns.RcodeSuccess},
		{"refused over UDP", "refusing", "192.0.2.9:5353", TransportUDP, dns.RcodeRefused},
		{"refused over DoH", "refusing", "192.0.2.9:443", TransportDoH, dns.RcodeRefused},
		{"dropped", "dropping", "192.0.2.9:5353", TransportTCP, -1},
		{"no ACL", "open", "192.0.2.9:5353", TransportUDP, dns.RcodeSuccess},
		{"unknown listener not filtered", "other", "192.0.2.9:5353", TransportUDP, dns.RcodeSuccess},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &Request{Msg: query(t, "foo.example.com.", dns.TypeA, false), Transport: tt.tr,
				Client: netip.MustParseAddrPort(tt.client), Listener: tt.listener}
			out := f.ServeDNS(context.Background(), r, nil)
			if tt.want < 0 {
				if out != nil {
					t.Fatalf("got a reply, want none")
				}
				return
			}
			m := new(dns.Msg)
			if err := m.Unpack(out); err != nil {
				t.Fatal(err)
			}
			if m.Rcode != tt.want {
				t.Fatalf("rcode %s, want %s", dns.RcodeToString[m.Rcode], dns.RcodeToString[tt.want])
			}
		})
	}
	if s := f.Stats(); s.ACLRefused != 2 || s.ACLDropped != 1 {
		t.Fatalf("ACL counters %+v", s)
	}
	// Per listener/transport/rcode counts include the refusals.
	var refusedDoH uint64
	for _, a := range f.Counters().Answers() {
		if a.Listener == "refusing" && a.Transport == "DoH" && a.Rcode == "REFUSED" {
			refusedDoH = a.Count
		}
	}
	if refusedDoH != 1 {
		t.Fatalf("answers by listener/transport/rcode: %+v", f.Counters().Answers())
	}
}

func TestUpstreamStats(t *testing.T) {
	bad, good := failing("bad"), answerA("good", "192.0.2.2")
	busy := &fakeUp{name: "busy", fn: func(context.Context, *dns.Msg) (*dns.Msg, error) {
		return nil, fmt.Errorf("%w: 256 queries already wait", upstream.ErrBusy)
	}}
	f, err := New(Config{Default: []Target{{Up: busy}, {Up: bad}, {Up: good}}})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		serve(t, f, query(t, "u.example.com.", dns.TypeA, false), TransportUDP)
	}
	got := map[string]Upstream{}
	for _, u := range f.Counters().Upstreams() {
		got[u.Target] = u
	}
	if b := got["bad"]; b.Attempts != 3 || b.Errors != 3 || b.Up || b.Failures[upstream.Reason(errors.New("x"))] != 3 {
		t.Fatalf("bad target: %+v", b)
	}
	if b := got["busy"]; b.Errors != 3 || upstream.Reasons[1] != upstream.ReasonBusy || b.Failures[1] != 3 || b.Failures[0] != 0 {
		t.Fatalf("busy target: %+v, want 3 failures as %s", b, upstream.ReasonBusy)
	}
	if g := got["good"]; g.Attempts != 3 || g.Errors != 0 || !g.Up || g.Latency.Buckets[len(g.Latency.Buckets)-1] != 3 {
		t.Fatalf("good target: %+v", g)
	}
}
