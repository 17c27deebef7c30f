package forwarder

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"xdoh/forwarder/cache"
	"xdoh/forwarder/rules"
	"xdoh/forwarder/zone"
	"xdoh/internal/dnsmsg"
)

func newRRL(t testing.TB, cfg RRLConfig) *RRL {
	t.Helper()
	l, err := NewRRL(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// TestRRLBuckets drives the limiter's buckets with a clock of its own: each
// step is an answer of a category to an address at a time (ms since the
// start), with the verdict it must get.
func TestRRLBuckets(t *testing.T) {
	type step struct {
		at   int64 // ms
		addr string
		cat  rrlCategory
		want rrlVerdict
	}
	// rep makes n steps at the same time with the same verdict.
	rep := func(n int, s step) []step {
		out := make([]step, n)
		for i := range out {
			out[i] = s
		}
		return out
	}
	cat := func(parts ...[]step) []step {
		var out []step
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}
	const a, b = "192.0.2.1", "192.0.2.200" // one /24
	for _, tc := range []struct {
		name  string
		cfg   RRLConfig
		steps []step
	}{
		{"burst then drop, slip 2", RRLConfig{ResponsesPerSecond: 10, Burst: 3}, cat(
			rep(3, step{0, a, rrlResponses, rrlPass}),
			[]step{{0, a, rrlResponses, rrlDrop}, {0, a, rrlResponses, rrlSlip}, {0, a, rrlResponses, rrlDrop}, {0, a, rrlResponses, rrlSlip}},
		)},
		{"the rate refills one answer per interval", RRLConfig{ResponsesPerSecond: 10, Burst: 2}, []step{
			{0, a, rrlResponses, rrlPass}, {0, a, rrlResponses, rrlPass}, {0, a, rrlResponses, rrlDrop},
			{99, a, rrlResponses, rrlSlip}, // 99 ms: not yet
			{100, a, rrlResponses, rrlPass}, {100, a, rrlResponses, rrlDrop},
			{1000, a, rrlResponses, rrlPass}, {1000, a, rrlResponses, rrlPass}, {1000, a, rrlResponses, rrlSlip}, // full again, no more
		}},
		{"one /24 shares a bucket, the next /24 has its own", RRLConfig{ResponsesPerSecond: 1, Burst: 1, Slip: NoSlip}, []step{
			{0, a, rrlResponses, rrlPass}, {0, b, rrlResponses, rrlDrop}, {0, "::ffff:192.0.2.9", rrlResponses, rrlDrop},
			{0, "192.0.3.1", rrlResponses, rrlPass}, {0, "192.0.3.2", rrlResponses, rrlDrop},
		}},
		{"IPv6 by /56", RRLConfig{ResponsesPerSecond: 1, Burst: 1, Slip: NoSlip}, []step{
			{0, "2001:db8:0:100::1", rrlResponses, rrlPass}, {0, "2001:db8:0:1ff:ffff::1", rrlResponses, rrlDrop},
			{0, "2001:db8:0:200::1", rrlResponses, rrlPass},
		}},
		{"prefix lengths configured: /32 and /128", RRLConfig{ResponsesPerSecond: 1, Burst: 1, Slip: NoSlip, IPv4Prefix: 32, IPv6Prefix: 128}, []step{
			{0, a, rrlResponses, rrlPass}, {0, b, rrlResponses, rrlPass}, {0, a, rrlResponses, rrlDrop},
			{0, "2001:db8::1", rrlResponses, rrlPass}, {0, "2001:db8::2", rrlResponses, rrlPass}, {0, "2001:db8::1", rrlResponses, rrlDrop},
		}},
		{"categories have buckets of their own", RRLConfig{ResponsesPerSecond: 1, Burst: 1, Slip: NoSlip}, []step{
			{0, a, rrlResponses, rrlPass}, {0, a, rrlResponses, rrlDrop},
			{0, a, rrlNXDomains, rrlPass}, {0, a, rrlNXDomains, rrlDrop},
			{0, a, rrlErrors, rrlPass}, {0, a, rrlErrors, rrlDrop},
		}},
		{"NXDOMAIN rate of its own", RRLConfig{ResponsesPerSecond: 100, NXDomainsPerSecond: 2, Burst: 1, Slip: NoSlip}, []step{
			{0, a, rrlNXDomains, rrlPass}, {10, a, rrlNXDomains, rrlDrop}, {10, a, rrlResponses, rrlPass}, {20, a, rrlResponses, rrlPass},
			{499, a, rrlNXDomains, rrlDrop}, {500, a, rrlNXDomains, rrlPass},
		}},
		{"slip 1: every one over the limit is TC", RRLConfig{ResponsesPerSecond: 1, Burst: 1, Slip: 1}, cat(
			[]step{{0, a, rrlResponses, rrlPass}}, rep(4, step{0, a, rrlResponses, rrlSlip}),
		)},
		{"slip 3", RRLConfig{ResponsesPerSecond: 1, Burst: 1, Slip: 3}, cat(
			[]step{{0, a, rrlResponses, rrlPass}},
			rep(2, step{0, a, rrlResponses, rrlDrop}), []step{{0, a, rrlResponses, rrlSlip}},
			rep(2, step{0, a, rrlResponses, rrlDrop}), []step{{0, a, rrlResponses, rrlSlip}},
		)},
		{"no slip", RRLConfig{ResponsesPerSecond: 1, Burst: 1, Slip: NoSlip}, cat(
			[]step{{0, a, rrlResponses, rrlPass}}, rep(10, step{0, a, rrlResponses, rrlDrop}),
		)},
		{"a fractional rate", RRLConfig{ResponsesPerSecond: 0.5, Burst: 1, Slip: NoSlip}, []step{
			{0, a, rrlResponses, rrlPass}, {1999, a, rrlResponses, rrlDrop}, {2000, a, rrlResponses, rrlPass},
		}},
		{"default burst is a second's worth", RRLConfig{ResponsesPerSecond: 5, Slip: NoSlip}, cat(
			rep(5, step{0, a, rrlResponses, rrlPass}), []step{{0, a, rrlResponses, rrlDrop}},
		)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := newRRL(t, tc.cfg)
			for i, s := range tc.steps {
				got, _ := l.check(netip.MustParseAddr(s.addr), s.cat, s.at*int64(time.Millisecond))
				if got != s.want {
					t.Fatalf("step %d (%+v): verdict %d, want %d", i, s, got, s.want)
				}
			}
		})
	}
}

// TestRRLTableBounded: the table never grows; a new prefix takes the
// entry of one whose buckets are full again before one that still owes,
// and taking one that owes is counted as an eviction.
func TestRRLTableBounded(t *testing.T) {
	cfg := RRLConfig{ResponsesPerSecond: 1, Burst: 1000, Slip: NoSlip, IPv4Prefix: 32, Entries: 8}
	l := newRRL(t, cfg)
	if len(l.sets) != 1 {
		t.Fatalf("%d sets for 8 entries, want 1", len(l.sets))
	}
	addr := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}) }
	const sec = int64(time.Second)
	// A heavy hitter takes its whole burst at 0 s: it owes until 1000 s.
	for range 1000 {
		if v, _ := l.check(addr(0), rrlResponses, 0); v != rrlPass {
			t.Fatal("burst not given")
		}
	}
	// 499 other prefixes pass by, one answer each, a second apart: each
	// owes one second, so it is full again when the next comes and is
	// the one replaced; none is an eviction.
	for i := 1; i < 500; i++ {
		if v, ev := l.check(addr(i), rrlResponses, int64(i)*sec); v != rrlPass || ev {
			t.Fatalf("prefix %d: verdict %d, evicted %v", i, v, ev)
		}
	}
	// At 500 s the heavy hitter is still known: 500 s of its debt are
	// repaid, so 500 more answers (a forgotten one would get 1000).
	passed := 0
	for range 2000 {
		if v, _ := l.check(addr(0), rrlResponses, 500*sec); v == rrlPass {
			passed++
		}
	}
	if passed != 500 {
		t.Fatalf("heavy hitter got %d answers at 500 s, want 500: its entry was lost", passed)
	}
	// Nine prefixes that all owe at once in a set of eight: one eviction.
	l = newRRL(t, cfg)
	evictions := 0
	for i := range 9 {
		if _, ev := l.check(addr(i), rrlResponses, 0); ev {
			evictions++
		}
	}
	if evictions != 1 {
		t.Fatalf("%d evictions for 9 prefixes that owe in 8 entries, want 1", evictions)
	}
}

// TestRRLValidation: NewRRL refuses what it cannot limit with.
func TestRRLValidation(t *testing.T) {
	for _, cfg := range []RRLConfig{
		{},
		{ResponsesPerSecond: -1},
		{ResponsesPerSecond: 1, IPv4Prefix: 33},
		{ResponsesPerSecond: 1, IPv6Prefix: 129},
		{ResponsesPerSecond: 1, Burst: -1},
		{ResponsesPerSecond: 1, NXDomainsPerSecond: -2},
	} {
		if _, err := NewRRL(cfg); err == nil {
			t.Errorf("%+v: no error", cfg)
		}
	}
}

// rrlPipeline is a pipeline with a local zone (hits after the first
// query), a block rule (NXDOMAIN), cookies and RRL.
func rrlPipeline(t testing.TB, cfg RRLConfig) (*Forwarder, *Cookies) {
	t.Helper()
	z, err := zone.Parse("aws.example.internal.", strings.NewReader(zoneText), "test.zone")
	if err != nil {
		t.Fatal(err)
	}
	ck := NewCookies([16]byte{4, 2}, 0, false)
	f, err := New(Config{
		Rules: []Rule{
			{Name: "zone", Domain: "aws.example.internal", Type: rules.Zone, Zone: z},
			{Name: "ads", Domain: "ads.example", Type: rules.Block},
			{Name: "fwd", Domain: "example.com", Type: rules.Forward, Targets: []Target{{Up: answerA("up", "192.0.2.8")}}},
		},
		Cache:   cache.New(cache.Config{}),
		Cookies: ck,
		RRL:     newRRL(t, cfg),
	})
	if err != nil {
		t.Fatal(err)
	}
	return f, ck
}

// outcome classifies a response: answered, slipped (TC, empty) or dropped.
func outcome(t testing.TB, query, resp []byte) string {
	t.Helper()
	if resp == nil {
		return "dropped"
	}
	m := new(dns.Msg)
	if err := m.Unpack(resp); err != nil {
		t.Fatalf("unpacking: %v", err)
	}
	if m.Truncated {
		if len(m.Answer)+len(m.Ns) != 0 || len(resp) > len(query) {
			t.Fatalf("slipped answer with records or larger (%d) than the query (%d): %v", len(resp), len(query), m)
		}
		return "slipped"
	}
	return "answered"
}

// TestRRLPipeline: over UDP a client gets its burst and then, within one
// second, drops and slips (slip 2: every other one); hits, NXDOMAINs and
// misses alike. TCP and DoH are never limited, nor are queries with a
// valid server cookie, nor exempt prefixes; the counters say so.
func TestRRLPipeline(t *testing.T) {
	// 1 per second with a burst of 10: in a run far shorter than a
	// minute, at most 10 + the seconds elapsed + 1 answers.
	cfg := RRLConfig{ResponsesPerSecond: 1, Burst: 10, Exempt: []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}}
	f, ck := rrlPipeline(t, cfg)
	const n = 200
	ask := func(msg []byte, tr Transport, client string) map[string]int {
		counts := map[string]int{}
		cl := netip.MustParseAddrPort(client)
		for range n {
			r := &Request{Msg: msg, Transport: tr, Client: cl}
			counts[outcome(t, msg, f.ServeDNS(context.Background(), r, nil))]++
		}
		return counts
	}
	start := time.Now()
	within := func(name string, c map[string]int) {
		t.Helper()
		maxAnswered := 10 + int(time.Since(start)/time.Second) + 1
		if c["answered"] < 10 || c["answered"] > maxAnswered {
			t.Errorf("%s: %d answered, want 10..%d (%v)", name, c["answered"], maxAnswered, c)
		}
		over := n - c["answered"]
		if d, s := c["dropped"], c["slipped"]; d+s != over || s < over/2-1 || s > over/2+1 {
			t.Errorf("%s: %d dropped and %d slipped of %d over the limit, want half each (slip 2)", name, d, s, over)
		}
	}
	hit := query(t, "ipv4.aws.example.internal.", dns.TypeA, true)
	within("zone hits from 192.0.2.1", ask(hit, TransportUDP, "192.0.2.1:5300"))
	within("NXDOMAIN from 192.0.2.77 (own bucket of the same /24)", ask(query(t, "x.ads.example.", dns.TypeA, false), TransportUDP, "192.0.2.77:5300"))
	within("misses from [2001:db8::1]", ask(query(t, "www.example.com.", dns.TypeA, true), TransportUDP, "[2001:db8::1]:5300"))
	if c := ask(hit, TransportUDP, "192.0.2.9:5301"); c["answered"] != 0 {
		t.Errorf("another client of the same /24, same bucket: %v", c)
	}
	for _, tr := range []Transport{TransportTCP, TransportDoH, TransportDoT, TransportDoQ} {
		if c := ask(hit, tr, "192.0.2.1:5300"); c["answered"] != n {
			t.Errorf("%v is exempt: %v", tr, c)
		}
	}
	if c := ask(hit, TransportUDP, "198.51.100.7:5300"); c["answered"] != n {
		t.Errorf("exempt prefix: %v", c)
	}
	var sc [24]byte
	ck.make(&sc, []byte{1, 2, 3, 4, 5, 6, 7, 8}, []byte{192, 0, 2, 1}, time.Now().Unix())
	if c := ask(cookieQuery(t, "ipv4.aws.example.internal.", sc[:]), TransportUDP, "192.0.2.1:5300"); c["answered"] != n {
		t.Errorf("a valid server cookie is exempt: %v", c)
	}
	// A client cookie alone proves nothing.
	if c := ask(cookieQuery(t, "ipv4.aws.example.internal.", sc[:8]), TransportUDP, "192.0.2.1:5300"); c["answered"] > 2 {
		t.Errorf("a client cookie alone is not exempt: %v", c)
	}
	s := f.Stats().RRL
	if s.CookieExempt != n {
		t.Errorf("cookie-exempt counter %d, want %d", s.CookieExempt, n)
	}
	if s.Dropped[rrlNXDomains] == 0 || s.Slipped[rrlNXDomains] == 0 || s.Dropped[rrlResponses] == 0 || s.Slipped[rrlResponses] == 0 {
		t.Errorf("counters %+v: want drops and slips of responses and NXDOMAINs", s)
	}
}

// TestRRLAllocs: with RRL on, a cache hit allocates nothing, whether it is
// answered, dropped or slipped.
func TestRRLAllocs(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  RRLConfig
		want string
	}{
		{"answered", RRLConfig{ResponsesPerSecond: 1e9, Burst: 1 << 30}, "answered"},
		{"dropped", RRLConfig{ResponsesPerSecond: 1e-3, Burst: 1, Slip: NoSlip}, "dropped"},
		{"slipped", RRLConfig{ResponsesPerSecond: 1e-3, Burst: 1, Slip: 1}, "slipped"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, _ := rrlPipeline(t, tc.cfg)
			msg := query(t, "ipv4.aws.example.internal.", dns.TypeA, true)
			out := make([]byte, 65536)
			cl := netip.MustParseAddrPort("192.0.2.1:5300")
			r := &Request{Msg: msg, Transport: TransportUDP, Client: cl}
			f.ServeDNS(context.Background(), r, nil) // the zone answer, now cached
			var resp []byte
			allocs := testing.AllocsPerRun(1000, func() {
				*r = Request{Msg: msg, Transport: TransportUDP, Client: cl}
				var ok bool
				if resp, ok = f.Answer(r, out); !ok {
					t.Fatal("not answered at once")
				}
			})
			if got := outcome(t, msg, resp); got != tc.want {
				t.Fatalf("outcome %s, want %s", got, tc.want)
			}
			if allocs != 0 {
				t.Fatalf("%.1f allocations per query, want 0", allocs)
			}
		})
	}
}

// BenchmarkRRLCheck is the limiter alone: one bucket check, from one
// client and from many (different sets, as a flood from many prefixes).
func BenchmarkRRLCheck(b *testing.B) {
	for _, clients := range []int{1, 4096} {
		b.Run(fmt.Sprintf("clients=%d", clients), func(b *testing.B) {
			l := newRRL(b, RRLConfig{ResponsesPerSecond: 1000})
			addrs := make([]netip.Addr, clients)
			for i := range addrs {
				addrs[i] = netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 1})
			}
			now := int64(0)
			i := 0
			b.ReportAllocs()
			for b.Loop() {
				now += 1000
				l.check(addrs[i%clients], rrlResponses, now)
				i++
			}
		})
	}
}

// BenchmarkRRLCheckParallel: every P checks its own client's bucket at once.
func BenchmarkRRLCheckParallel(b *testing.B) {
	l := newRRL(b, RRLConfig{ResponsesPerSecond: 1000})
	b.ReportAllocs()
	var next atomic.Int32
	b.RunParallel(func(pb *testing.PB) {
		a := netip.AddrFrom4([4]byte{10, 0, byte(next.Add(1)), 1})
		now := int64(0)
		for pb.Next() {
			now += 1000
			l.check(a, rrlResponses, now)
		}
	})
}

// BenchmarkServeCacheHitRRL is BenchmarkServeCacheHit with RRL on and the
// client within its limit: the cost of the limiter on the hot path.
func BenchmarkServeCacheHitRRL(b *testing.B) {
	for _, on := range []bool{false, true} {
		b.Run(fmt.Sprintf("rrl=%v", on), func(b *testing.B) {
			cfg := Config{Default: []Target{{Up: answerA("up", "192.0.2.7")}}, Cache: cache.New(cache.Config{})}
			if on {
				cfg.RRL = newRRL(b, RRLConfig{ResponsesPerSecond: 1e9, Burst: 1 << 30})
			}
			f, err := New(cfg)
			if err != nil {
				b.Fatal(err)
			}
			msg := query(b, "hit.example.com.", dns.TypeA, true)
			out := make([]byte, 65536)
			cl := netip.MustParseAddrPort("192.0.2.1:5300")
			r := &Request{Msg: msg, Transport: TransportUDP, Client: cl}
			f.ServeDNS(context.Background(), r, out[:0])
			b.ReportAllocs()
			for b.Loop() {
				*r = Request{Msg: msg, Transport: TransportUDP, Client: cl}
				if resp, ok := f.Answer(r, out); !ok || len(resp) < dnsmsg.HeaderLen || resp[2]&(dnsmsg.FlagTC>>8) != 0 {
					b.Fatal("not a hit")
				}
			}
		})
	}
}

// TestRRLLimitsBadCookie: BADCOOKIE answers (cookies required) are errors
// to RRL like any other: past the burst they are dropped or slipped.
func TestRRLLimitsBadCookie(t *testing.T) {
	f, err := New(Config{
		Cookies: NewCookies([16]byte{6}, 0, true),
		RRL:     newRRL(t, RRLConfig{ResponsesPerSecond: 1e-3, Burst: 2, Slip: NoSlip}),
	})
	if err != nil {
		t.Fatal(err)
	}
	msg := cookieQuery(t, "foo.example.com.", []byte{1, 2, 3, 4, 5, 6, 7, 8})
	cl := netip.MustParseAddrPort("192.0.2.1:5300")
	var got []int
	for range 5 {
		resp := f.ServeDNS(context.Background(), &Request{Msg: msg, Transport: TransportUDP, Client: cl}, nil)
		got = append(got, len(resp))
	}
	if got[0] == 0 || got[1] == 0 || got[2] != 0 || got[4] != 0 {
		t.Fatalf("answer sizes %v: want 2 BADCOOKIE answers, then none", got)
	}
	if s := f.Stats(); s.BadCookie != 5 || s.RRL.Dropped[rrlErrors] != 3 {
		t.Fatalf("BADCOOKIE %d, dropped errors %d; want 5 and 3", s.BadCookie, s.RRL.Dropped[rrlErrors])
	}
}
