package forwarder

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"xdoh/forwarder/cache"
	"xdoh/forwarder/rules"
)

// TestSetSubnet: the subnet each policy sends upstream for a query.
func TestSetSubnet(t *testing.T) {
	v4c := []byte{0, 1, 32, 0, 10, 1, 2, 3} // a client's own /32
	v4s := []byte{0, 1, 16, 0, 10, 1}       // a client's own /16
	v6c := []byte{0, 2, 64, 0, 0x20, 1, 0xd, 0xb8, 1, 2, 3, 4}
	opt0 := []byte{0, 1, 0, 0} // opt out
	for _, tc := range []struct {
		name   string
		pol    ECS
		client string
		ecs    []byte
		noOPT  bool
		want   []byte
	}{
		{"strip", ECS{}, "10.1.2.3", v4c, false, nil},
		{"pass, none", ECS{Mode: ECSPass}, "10.1.2.3", nil, false, nil},
		{"pass, the client's", ECS{Mode: ECSPass}, "10.1.2.3", v4c, false, v4c},
		{"add, none: the address /24", ECS{Mode: ECSAdd}, "10.1.2.3", nil, false, []byte{0, 1, 24, 0, 10, 1, 2}},
		{"add, none, IPv4-mapped", ECS{Mode: ECSAdd}, "::ffff:10.1.2.3", nil, false, []byte{0, 1, 24, 0, 10, 1, 2}},
		{"add, none: the address /56", ECS{Mode: ECSAdd}, "2001:db8:1:2::5", nil, false, []byte{0, 2, 56, 0, 0x20, 1, 0xd, 0xb8, 0, 1, 0}},
		{"add /20", ECS{Mode: ECSAdd, V4: 20}, "10.1.255.3", nil, false, []byte{0, 1, 20, 0, 10, 1, 0xf0}},
		{"add, a /32 of its own: cut to /24", ECS{Mode: ECSAdd}, "192.0.2.1", v4c, false, []byte{0, 1, 24, 0, 10, 1, 2}},
		{"add, a /16 of its own: kept", ECS{Mode: ECSAdd}, "192.0.2.1", v4s, false, v4s},
		{"add, a /64 of its own: cut to /56", ECS{Mode: ECSAdd}, "192.0.2.1", v6c, false, []byte{0, 2, 56, 0, 0x20, 1, 0xd, 0xb8, 1, 2, 3}},
		{"add, /0: opted out", ECS{Mode: ECSAdd}, "10.1.2.3", opt0, false, opt0},
		{"add, no EDNS: nothing", ECS{Mode: ECSAdd}, "10.1.2.3", nil, true, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &Request{Client: netip.AddrPortFrom(netip.MustParseAddr(tc.client), 5353)}
			r.Q.HasOPT, r.Q.ECS = !tc.noOPT, tc.ecs
			tc.pol.setSubnet(r)
			if !bytes.Equal(r.Q.Subnet, tc.want) || (tc.want == nil) != (r.Q.Subnet == nil) {
				t.Errorf("subnet %v, want %v", r.Q.Subnet, tc.want)
			}
		})
	}
}

// scopingUp is an ECS-aware upstream: its answer to a query with a subnet
// is an address made of the subnet's first octets, scoped as scope says;
// without a subnet it answers 192.0.2.1 and echoes nothing. It records
// the subnets it was sent.
type scopingUp struct {
	mu    sync.Mutex
	sent  []string // "10.1.2.0/24", or "-" for none
	scope func(src uint8) uint8
	lie   bool // echo another subnet than was sent
}

func (s *scopingUp) up() *fakeUp {
	return &fakeUp{name: "ecs-aware", fn: func(_ context.Context, q *dns.Msg) (*dns.Msg, error) {
		r := new(dns.Msg)
		r.SetReply(q)
		ip := net.IPv4(192, 0, 2, 1)
		var e *dns.EDNS0_SUBNET
		if o := q.IsEdns0(); o != nil {
			for _, op := range o.Option {
				if c, ok := op.(*dns.EDNS0_SUBNET); ok {
					e = c
				}
			}
		}
		s.mu.Lock()
		if e == nil {
			s.sent = append(s.sent, "-")
		} else {
			s.sent = append(s.sent, fmt.Sprintf("%v/%d", e.Address, e.SourceNetmask))
		}
		s.mu.Unlock()
		if e != nil && e.Family == 1 && e.SourceNetmask > 0 {
			a := e.Address.To4()
			ip = net.IPv4(a[0], a[1], a[2], 77)
		}
		r.Answer = append(r.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 300}, A: ip})
		if q.IsEdns0() != nil {
			r.SetEdns0(1232, false)
			if e != nil {
				echo := *e
				echo.SourceScope = s.scope(e.SourceNetmask)
				if s.lie {
					echo.Address = net.IPv4(203, 0, 113, 0)
				}
				r.IsEdns0().Option = append(r.IsEdns0().Option, &echo)
			}
		}
		return r, nil
	}}
}

func (s *scopingUp) log() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.sent...)
}

// ecsQuery is an EDNS query for name, with the client's own subnet option
// when ecs is set ("10.9.8.0/24").
func ecsQuery(t *testing.T, name, ecs string) []byte {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, dns.TypeA)
	m.SetEdns0(1232, false)
	if ecs != "" {
		p := netip.MustParsePrefix(ecs)
		fam := uint16(1)
		if p.Addr().Is6() {
			fam = 2
		}
		m.IsEdns0().Option = append(m.IsEdns0().Option, &dns.EDNS0_SUBNET{Code: dns.EDNS0SUBNET, Family: fam, SourceNetmask: uint8(p.Bits()), Address: p.Addr().AsSlice()})
	}
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// askFrom sends msg from client through f and returns the answer's address
// and the client-subnet option it got back ("" for none: "10.9.8.0/24
// scope 24").
func askFrom(t *testing.T, f *Forwarder, client string, msg []byte) (string, string) {
	t.Helper()
	r := &Request{Msg: msg, Transport: TransportUDP, Client: netip.AddrPortFrom(netip.MustParseAddr(client), 5353)}
	out := f.ServeDNS(context.Background(), r, nil)
	m := new(dns.Msg)
	if err := m.Unpack(out); err != nil {
		t.Fatal(err)
	}
	if len(m.Answer) != 1 {
		return dns.RcodeToString[m.Rcode], ""
	}
	echo := ""
	if o := m.IsEdns0(); o != nil {
		for _, op := range o.Option {
			if e, ok := op.(*dns.EDNS0_SUBNET); ok {
				echo = fmt.Sprintf("%v/%d scope %d", e.Address, e.SourceNetmask, e.SourceScope)
			}
		}
	}
	return m.Answer[0].(*dns.A).A.String(), echo
}

// TestECSScopedCache: with add, each client subnet gets its own answer
// and its own cache entry; an answer scoped to 10.1.2.0/24 is never served
// to 10.9.0.0/16, while one the upstream scoped /0 is everyone's; a
// client's /0 opts out; the client gets its own subnet back with the
// upstream's scope.
func TestECSScopedCache(t *testing.T) {
	s := &scopingUp{scope: func(src uint8) uint8 { return src }}
	f, err := New(Config{
		Rules: []Rule{{Name: "geo", Domain: "geo.example", Type: rules.Forward, Targets: []Target{{Up: s.up()}}, ECS: ECS{Mode: ECSAdd}}},
		Cache: cache.New(cache.Config{}),
	})
	if err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		client, ecs string
		wantA, echo string
		sent        string // what the upstream saw, "" for nothing (a hit)
	}{
		{"10.1.2.3", "", "10.1.2.77", "", "10.1.2.0/24"},
		{"10.1.2.200", "", "10.1.2.77", "", ""},          // same /24: the cache
		{"10.9.0.1", "", "10.9.0.77", "", "10.9.0.0/24"}, // another: never 10.1.2's answer
		{"192.0.2.5", "10.1.2.0/24", "10.1.2.77", "10.1.2.0/24 scope 24", ""},
		{"192.0.2.5", "10.9.0.0/16", "10.9.0.77", "10.9.0.0/16 scope 16", "10.9.0.0/16"},
		{"10.1.2.3", "0.0.0.0/0", "192.0.2.1", "0.0.0.0/0 scope 0", "0.0.0.0/0"},
	}
	for i, st := range steps {
		before := len(s.log())
		a, echo := askFrom(t, f, st.client, ecsQuery(t, "www.geo.example.", st.ecs))
		if a != st.wantA || echo != st.echo {
			t.Errorf("step %d (%s, ECS %q): %s, echo %q; want %s, %q", i, st.client, st.ecs, a, echo, st.wantA, st.echo)
		}
		log := s.log()
		got := ""
		if len(log) > before {
			got = log[len(log)-1]
		}
		if got != st.sent {
			t.Errorf("step %d: upstream saw %q, want %q", i, got, st.sent)
		}
	}

	// An upstream that scopes its answers /0: one entry for every subnet.
	s0 := &scopingUp{scope: func(uint8) uint8 { return 0 }}
	f, err = New(Config{Default: []Target{{Up: s0.up()}}, DefaultECS: ECS{Mode: ECSAdd}, Cache: cache.New(cache.Config{})})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []string{"10.1.2.3", "10.9.0.1", "172.16.0.1"} {
		askFrom(t, f, c, ecsQuery(t, "www.example.org.", ""))
	}
	if n := len(s0.log()); n != 1 {
		t.Errorf("scope /0 answers: %d upstream queries for 3 subnets, want 1 (%v)", n, s0.log())
	}
}

// TestECSPassAndMismatch: pass forwards a client's own option and nothing
// else; an upstream that echoes another subnet than was sent has its
// answer dropped (RFC 7871 7.3); strip rules next to ECS rules send none.
func TestECSPassAndMismatch(t *testing.T) {
	s := &scopingUp{scope: func(src uint8) uint8 { return src }}
	liar := &scopingUp{scope: func(src uint8) uint8 { return src }, lie: true}
	plain := &scopingUp{scope: func(src uint8) uint8 { return src }}
	f, err := New(Config{
		Rules: []Rule{
			{Name: "pass", Domain: "pass.example", Type: rules.Forward, Targets: []Target{{Up: s.up()}}, ECS: ECS{Mode: ECSPass}},
			{Name: "liar", Domain: "liar.example", Type: rules.Forward, Targets: []Target{{Up: liar.up(), Timeout: time.Second}}, ECS: ECS{Mode: ECSAdd}},
			{Name: "strip", Domain: "strip.example", Type: rules.Forward, Targets: []Target{{Up: plain.up()}}},
		},
		Cache: cache.New(cache.Config{}),
	})
	if err != nil {
		t.Fatal(err)
	}
	if a, _ := askFrom(t, f, "10.1.2.3", ecsQuery(t, "a.pass.example.", "")); a != "192.0.2.1" {
		t.Errorf("pass without a client subnet: %s", a)
	}
	if a, echo := askFrom(t, f, "10.1.2.3", ecsQuery(t, "b.pass.example.", "10.5.0.0/16")); a != "10.5.0.77" || echo != "10.5.0.0/16 scope 16" {
		t.Errorf("pass with a client subnet: %s, echo %q", a, echo)
	}
	if got := s.log(); len(got) != 2 || got[0] != "-" || got[1] != "10.5.0.0/16" {
		t.Errorf("pass: upstream saw %v", got)
	}
	if a, _ := askFrom(t, f, "10.1.2.3", ecsQuery(t, "c.liar.example.", "")); a != "SERVFAIL" {
		t.Errorf("an answer for another subnet: %s, want SERVFAIL", a)
	}
	if a, echo := askFrom(t, f, "10.1.2.3", ecsQuery(t, "d.strip.example.", "10.5.0.0/16")); a != "192.0.2.1" || echo != "10.5.0.0/16 scope 0" {
		t.Errorf("strip: %s, echo %q", a, echo)
	}
	if got := plain.log(); len(got) != 1 || got[0] != "-" {
		t.Errorf("strip: upstream saw %v", got)
	}
}

// TestResolveOwnsOptions: a datapath reuses its buffer as soon as Resolve
// returns; the answer that comes later still carries the client's cookie
// and subnet, read from the pipeline's own copy.
func TestResolveOwnsOptions(t *testing.T) {
	slow := &fakeUp{name: "slow", fn: func(ctx context.Context, q *dns.Msg) (*dns.Msg, error) {
		time.Sleep(20 * time.Millisecond)
		return answerA("x", "192.0.2.3").fn(ctx, q)
	}}
	ck := NewCookies([16]byte{3}, 0, false)
	f, err := New(Config{Default: []Target{{Up: slow}}, Cookies: ck})
	if err != nil {
		t.Fatal(err)
	}
	msg := ecsQuery(t, "own.example.org.", "10.5.0.0/16")
	m := new(dns.Msg)
	if err := m.Unpack(msg); err != nil {
		t.Fatal(err)
	}
	m.IsEdns0().Option = append(m.IsEdns0().Option, &dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708"})
	msg, _ = m.Pack()
	got := make(chan []byte, 1)
	r := &Request{Msg: msg, Transport: TransportUDP, Client: netip.MustParseAddrPort("127.0.0.1:5353")}
	if _, ok := answerOrResolve(f, r, make([]byte, 65536), func(resp []byte) { got <- append([]byte(nil), resp...) }); ok {
		t.Fatal("answered at once")
	}
	for i := range msg {
		msg[i] = 0xAA // the datapath's next packet
	}
	resp := new(dns.Msg)
	if err := resp.Unpack(<-got); err != nil {
		t.Fatal(err)
	}
	var cookie, subnet string
	for _, op := range resp.IsEdns0().Option {
		switch o := op.(type) {
		case *dns.EDNS0_COOKIE:
			cookie = o.Cookie[:16]
		case *dns.EDNS0_SUBNET:
			subnet = fmt.Sprintf("%v/%d", o.Address, o.SourceNetmask)
		}
	}
	if cookie != "0102030405060708" || subnet != "10.5.0.0/16" {
		t.Errorf("client cookie %q, subnet %q: not the query's", cookie, subnet)
	}
}

// BenchmarkServeCacheHitECS: a cache hit under an ecs: add rule, the
// client's subnet in the key (routing comes first).
func BenchmarkServeCacheHitECS(b *testing.B) {
	s := &scopingUp{scope: func(src uint8) uint8 { return src }}
	f, err := New(Config{
		Rules: []Rule{{Name: "geo", Domain: "geo.example", Type: rules.Forward, Targets: []Target{{Up: s.up()}}, ECS: ECS{Mode: ECSAdd}}},
		Cache: cache.New(cache.Config{}),
	})
	if err != nil {
		b.Fatal(err)
	}
	m := new(dns.Msg)
	m.SetQuestion("hit.geo.example.", dns.TypeA)
	m.SetEdns0(1232, false)
	msg, _ := m.Pack()
	out := make([]byte, 65536)
	cl := netip.MustParseAddrPort("10.1.2.3:53000")
	r := &Request{Msg: msg, Transport: TransportUDP, Client: cl}
	f.ServeDNS(context.Background(), r, out[:0])
	b.ReportAllocs()
	for b.Loop() {
		*r = Request{Msg: msg, Transport: TransportUDP, Client: cl}
		if _, ok := answerOrResolve(f, r, out, nil); !ok || !r.CacheHit() {
			b.Fatal("miss")
		}
	}
}
