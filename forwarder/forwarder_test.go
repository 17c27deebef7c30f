package forwarder

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"xdoh/forwarder/cache"
	"xdoh/forwarder/group"
	"xdoh/forwarder/rules"
	"xdoh/forwarder/zone"
	"xdoh/internal/submittest"
)

// fakeUp is a fault-injection target: it answers from a blocking function
// of a context, which each Submit runs on a goroutine with a context that
// ends at the attempt's timeout or when the attempt is cancelled.
type fakeUp struct {
	name  string
	calls atomic.Int32
	fn    func(ctx context.Context, q *dns.Msg) (*dns.Msg, error)
}

func (f *fakeUp) String() string { return f.name }

func (f *fakeUp) Submit(query []byte, timeout time.Duration, done func([]byte, error)) group.Canceler {
	f.calls.Add(1)
	return submittest.Go(query, timeout, done, func(ctx context.Context, query []byte) ([]byte, error) {
		q := new(dns.Msg)
		if err := q.Unpack(query); err != nil {
			return nil, err
		}
		r, err := f.fn(ctx, q)
		if err != nil {
			return nil, err
		}
		return r.Pack()
	})
}

// answerA answers every A query with ip, TTL 300.
func answerA(name, ip string) *fakeUp {
	return &fakeUp{name: name, fn: func(_ context.Context, q *dns.Msg) (*dns.Msg, error) {
		r := new(dns.Msg)
		r.SetReply(q)
		r.RecursionAvailable = true
		r.Answer = append(r.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 300}, A: net.ParseIP(ip)})
		return r, nil
	}}
}

func failing(name string) *fakeUp {
	return &fakeUp{name: name, fn: func(context.Context, *dns.Msg) (*dns.Msg, error) {
		return nil, errors.New("connection refused")
	}}
}

func hanging(name string) *fakeUp {
	return &fakeUp{name: name, fn: func(ctx context.Context, _ *dns.Msg) (*dns.Msg, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	}}
}

func query(t testing.TB, name string, qtype uint16, edns bool) []byte {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.Id = 0xBEEF
	if edns {
		m.SetEdns0(1232, true)
	}
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// answerOrResolve is what a datapath does with a query: Answer, then Resolve
// when it must go upstream.
func answerOrResolve(f *Forwarder, r *Request, out []byte, done func(resp []byte)) ([]byte, bool) {
	if resp, ok := f.Answer(r, out); ok {
		return resp, true
	}
	return f.Resolve(r, out, done)
}

func serve(t testing.TB, f *Forwarder, msg []byte, tr Transport) *dns.Msg {
	t.Helper()
	r := &Request{Msg: msg, Transport: tr, Client: netip.MustParseAddrPort("127.0.0.1:1234")}
	out := f.ServeDNS(context.Background(), r, make([]byte, 0, 65536))
	if out == nil {
		return nil
	}
	m := new(dns.Msg)
	if err := m.Unpack(out); err != nil {
		t.Fatalf("unpacking response: %v", err)
	}
	return m
}

const zoneText = `$ORIGIN aws.example.internal.
$TTL 300
@    IN SOA ns1 hostmaster 1 7200 900 1209600 60
@    IN NS ns1
ns1  IN A 10.2.0.53
ipv4 IN A 10.2.1.10
`

func TestRouting(t *testing.T) {
	z, err := zone.Parse("aws.example.internal.", strings.NewReader(zoneText), "test.zone")
	if err != nil {
		t.Fatal(err)
	}
	onprem, def := answerA("onprem", "172.16.0.10"), answerA("default", "192.0.2.1")
	f, err := New(Config{
		Rules: []Rule{
			{Name: "onprem", Domain: "example.com", Type: rules.Forward, Targets: []Target{{Up: onprem}}},
			{Name: "keep", Domain: "sys.example.com", Type: rules.System},
			{Name: "ads", Domain: "ads.example", Type: rules.Block},
			{Name: "zone", Domain: "aws.example.internal", Type: rules.Zone, Zone: z},
		},
		Default: []Target{{Up: def}},
	})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		q      string
		rcode  int
		answer string // expected A, "" for none
		aa     bool
	}{
		{"forward rule", "foo.example.com.", dns.RcodeSuccess, "172.16.0.10", false},
		{"system rule exempts subtree", "a.sys.example.com.", dns.RcodeSuccess, "192.0.2.1", false},
		{"default for the rest", "www.example.org.", dns.RcodeSuccess, "192.0.2.1", false},
		{"block rule", "x.ads.example.", dns.RcodeNameError, "", false},
		{"local zone", "ipv4.aws.example.internal.", dns.RcodeSuccess, "10.2.1.10", true},
		{"local zone nxdomain", "nope.aws.example.internal.", dns.RcodeNameError, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := serve(t, f, query(t, tt.q, dns.TypeA, false), TransportUDP)
			if m.Rcode != tt.rcode {
				t.Fatalf("rcode %s, want %s", dns.RcodeToString[m.Rcode], dns.RcodeToString[tt.rcode])
			}
			if m.Id != 0xBEEF {
				t.Fatalf("id %x, want beef", m.Id)
			}
			if !m.RecursionAvailable {
				t.Fatal("RA not set: xdoh is the client's recursive service")
			}
			if m.Authoritative != tt.aa {
				t.Fatalf("AA %v, want %v", m.Authoritative, tt.aa)
			}
			got := ""
			for _, rr := range m.Answer {
				if a, ok := rr.(*dns.A); ok {
					got = a.A.String()
				}
			}
			if got != tt.answer {
				t.Fatalf("answer %q, want %q", got, tt.answer)
			}
		})
	}
}

func TestFailover(t *testing.T) {
	wrongQ := &fakeUp{name: "wrong-question", fn: func(_ context.Context, q *dns.Msg) (*dns.Msg, error) {
		r := new(dns.Msg)
		r.SetQuestion("other.example.", dns.TypeA)
		r.Response = true
		return r, nil
	}}
	servfail := &fakeUp{name: "servfail", fn: func(_ context.Context, q *dns.Msg) (*dns.Msg, error) {
		r := new(dns.Msg)
		r.SetRcode(q, dns.RcodeServerFailure)
		return r, nil
	}}
	tests := []struct {
		name    string
		targets []*fakeUp
		rcode   int
		max     time.Duration
	}{
		{"refusing then good", []*fakeUp{failing("a"), answerA("b", "192.0.2.2")}, dns.RcodeSuccess, time.Second},
		{"hanging then good", []*fakeUp{hanging("a"), answerA("b", "192.0.2.2")}, dns.RcodeSuccess, 1500 * time.Millisecond},
		{"wrong question then good", []*fakeUp{wrongQ, answerA("b", "192.0.2.2")}, dns.RcodeSuccess, time.Second},
		{"servfail then good", []*fakeUp{servfail, answerA("b", "192.0.2.2")}, dns.RcodeSuccess, time.Second},
		{"all failing", []*fakeUp{failing("a"), failing("b")}, dns.RcodeServerFailure, time.Second},
		{"all hanging: SERVFAIL within the query deadline", []*fakeUp{hanging("a"), hanging("b"), hanging("c")}, dns.RcodeServerFailure, 2 * time.Second},
		{"only servfail: passed on", []*fakeUp{servfail}, dns.RcodeServerFailure, time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var ts []Target
			for _, u := range tt.targets {
				ts = append(ts, Target{Up: u, Timeout: 300 * time.Millisecond})
			}
			f, err := New(Config{Default: ts, QueryTimeout: 800 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			m := serve(t, f, query(t, "foo.example.com.", dns.TypeA, false), TransportUDP)
			if el := time.Since(start); el > tt.max {
				t.Fatalf("answered after %v, want within %v", el, tt.max)
			}
			if m.Rcode != tt.rcode {
				t.Fatalf("rcode %s, want %s", dns.RcodeToString[m.Rcode], dns.RcodeToString[tt.rcode])
			}
		})
	}
}

func TestBadInput(t *testing.T) {
	f, err := New(Config{Default: []Target{{Up: answerA("d", "192.0.2.1")}}})
	if err != nil {
		t.Fatal(err)
	}
	good := query(t, "foo.example.com.", dns.TypeA, true)
	resp := func() []byte { b := append([]byte(nil), good...); b[2] |= 0x80; return b }()
	twoQ := func() []byte { b := append([]byte(nil), good...); b[5] = 2; return b }()
	longLabel := append(append([]byte(nil), good[:12]...), append([]byte{64}, make([]byte, 70)...)...)
	loop := append(append([]byte(nil), good[:12]...), 0xC0, 12, 0, 1, 0, 1)
	tests := []struct {
		name    string
		msg     []byte
		noReply bool
		rcode   int
	}{
		{"short header", good[:5], true, 0},
		{"response", resp, true, 0},
		{"two questions", twoQ, false, dns.RcodeFormatError},
		{"label over 63", longLabel, false, dns.RcodeFormatError},
		{"compression loop", loop, false, dns.RcodeFormatError},
		{"truncated question", good[:20], false, dns.RcodeFormatError},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &Request{Msg: tt.msg, Transport: TransportUDP}
			out := f.ServeDNS(context.Background(), r, make([]byte, 0, 65536))
			if tt.noReply {
				if out != nil {
					t.Fatalf("got a %d-byte reply, want none", len(out))
				}
				return
			}
			if len(out) > len(tt.msg) {
				t.Fatalf("reply of %d bytes to a %d-byte query: amplification", len(out), len(tt.msg))
			}
			if len(out) < 12 || int(out[3]&0xF) != tt.rcode || out[2]&0x80 == 0 {
				t.Fatalf("reply %x, want rcode %d with QR", out, tt.rcode)
			}
		})
	}
}

func TestCaseAndTruncation(t *testing.T) {
	big := &fakeUp{name: "big", fn: func(_ context.Context, q *dns.Msg) (*dns.Msg, error) {
		r := new(dns.Msg)
		r.SetReply(q)
		for i := 0; i < 60; i++ {
			r.Answer = append(r.Answer, &dns.A{Hdr: dns.RR_Header{Name: strings.ToLower(q.Question[0].Name), Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60},
				A: net.IPv4(198, 18, 0, byte(i))})
		}
		return r, nil
	}}
	f, err := New(Config{Default: []Target{{Up: big}}})
	if err != nil {
		t.Fatal(err)
	}
	q := query(t, "MiXeD.Example.COM.", dns.TypeA, false)
	udp := serve(t, f, q, TransportUDP)
	if !udp.Truncated || len(udp.Answer) != 0 {
		t.Fatalf("UDP: TC=%v answers=%d, want truncated with none", udp.Truncated, len(udp.Answer))
	}
	if udp.Question[0].Name != "MiXeD.Example.COM." {
		t.Fatalf("question %q, want the client's case", udp.Question[0].Name)
	}
	tcp := serve(t, f, q, TransportTCP)
	if tcp.Truncated || len(tcp.Answer) != 60 {
		t.Fatalf("TCP: TC=%v answers=%d, want 60 untruncated", tcp.Truncated, len(tcp.Answer))
	}
	if tcp.Question[0].Name != "MiXeD.Example.COM." {
		t.Fatalf("question %q, want the client's case", tcp.Question[0].Name)
	}
	// An EDNS client with 1232 octets gets more than 512 but still TC (60 A ≈ 1000+ octets with names).
	e := serve(t, f, query(t, "mixed.example.com.", dns.TypeA, true), TransportUDP)
	if e.Len() > 1232 {
		t.Fatalf("EDNS response of %d octets exceeds the client's 1232", e.Len())
	}
}

func TestCache(t *testing.T) {
	up := answerA("up", "192.0.2.7")
	f, err := New(Config{Default: []Target{{Up: up}}, Cache: cache.New(cache.Config{})})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		m := serve(t, f, query(t, "Cached.Example.com.", dns.TypeA, false), TransportUDP)
		if len(m.Answer) != 1 || m.Question[0].Name != "Cached.Example.com." {
			t.Fatalf("round %d: %v", i, m)
		}
	}
	if n := up.calls.Load(); n != 1 {
		t.Fatalf("upstream asked %d times, want 1 (then cache hits)", n)
	}
	if s := f.Stats(); s.CacheHits != 2 {
		t.Fatalf("cache hits %d, want 2", s.CacheHits)
	}
}

func TestServeAsyncAndOverload(t *testing.T) {
	release := make(chan struct{})
	slow := &fakeUp{name: "slow", fn: func(ctx context.Context, q *dns.Msg) (*dns.Msg, error) {
		<-release
		return answerA("x", "192.0.2.9").fn(ctx, q)
	}}
	f, err := New(Config{Default: []Target{{Up: slow}}, MaxInflight: 1})
	if err != nil {
		t.Fatal(err)
	}
	var got sync.WaitGroup
	got.Add(1)
	var async []byte
	msg := query(t, "a.example.com.", dns.TypeA, false)
	r := &Request{Msg: msg, Transport: TransportUDP}
	out := make([]byte, 65536)
	if _, sync := answerOrResolve(f, r, out, func(resp []byte) { async = append([]byte(nil), resp...); got.Done() }); sync {
		t.Fatal("miss answered synchronously")
	}
	// The query buffer may be reused by the datapath at once.
	for i := range msg {
		msg[i] = 0xFF
	}
	// The bound is 1: the next miss is SERVFAIL at once, and counted.
	r2 := &Request{Msg: query(t, "b.example.com.", dns.TypeA, false), Transport: TransportUDP}
	resp, sync := answerOrResolve(f, r2, out, func([]byte) { t.Error("overloaded query went async") })
	if !sync || resp == nil || int(resp[3]&0xF) != dns.RcodeServerFailure {
		t.Fatalf("overload: sync=%v resp=%x, want SERVFAIL now", sync, resp)
	}
	if f.Stats().Overload != 1 {
		t.Fatalf("overload counter %d, want 1", f.Stats().Overload)
	}
	close(release)
	got.Wait()
	m := new(dns.Msg)
	if err := m.Unpack(async); err != nil || m.Id != 0xBEEF || len(m.Answer) != 1 || m.Question[0].Name != "a.example.com." {
		t.Fatalf("async answer %v (%v)", m, err)
	}
}

func TestNoDefaultRefuses(t *testing.T) {
	f, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	if m := serve(t, f, query(t, "example.org.", dns.TypeA, false), TransportUDP); m.Rcode != dns.RcodeRefused {
		t.Fatalf("rcode %s, want REFUSED", dns.RcodeToString[m.Rcode])
	}
}

func BenchmarkServeCacheHit(b *testing.B) {
	f, err := New(Config{Default: []Target{{Up: answerA("up", "192.0.2.7")}}, Cache: cache.New(cache.Config{})})
	if err != nil {
		b.Fatal(err)
	}
	msg := query(b, "hit.example.com.", dns.TypeA, true)
	out := make([]byte, 65536)
	r := &Request{Msg: msg, Transport: TransportUDP}
	f.ServeDNS(context.Background(), r, out[:0])
	b.ReportAllocs()
	for b.Loop() {
		*r = Request{Msg: msg, Transport: TransportUDP}
		if _, ok := answerOrResolve(f, r, out, nil); !ok {
			b.Fatal("miss")
		}
	}
}

func BenchmarkServeForward(b *testing.B) {
	f, err := New(Config{Default: []Target{{Up: answerA("up", "192.0.2.7")}}})
	if err != nil {
		b.Fatal(err)
	}
	msg := query(b, "fwd.example.com.", dns.TypeA, true)
	out := make([]byte, 0, 65536)
	b.ReportAllocs()
	for b.Loop() {
		r := &Request{Msg: msg, Transport: TransportUDP}
		if resp := f.ServeDNS(context.Background(), r, out); resp == nil {
			b.Fatal(fmt.Errorf("no answer"))
		}
	}
}

// TestCookiesStayOnTheirHop: the client's cookie is not sent upstream and the
// upstream's server cookie does not reach the client (dig warns "Client
// COOKIE mismatch" otherwise, above all on cache hits).
func TestCookiesStayOnTheirHop(t *testing.T) {
	var upstreamSawCookie atomic.Bool
	up := &fakeUp{name: "cookie", fn: func(_ context.Context, q *dns.Msg) (*dns.Msg, error) {
		if o := q.IsEdns0(); o != nil {
			for _, op := range o.Option {
				if op.Option() == dns.EDNS0COOKIE {
					upstreamSawCookie.Store(true)
				}
			}
		}
		r := new(dns.Msg)
		r.SetReply(q)
		r.Answer = append(r.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(192, 0, 2, 3)})
		r.SetEdns0(1232, false)
		r.IsEdns0().Option = append(r.IsEdns0().Option, &dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "00112233445566778899aabbccddeeff0011223344556677"})
		return r, nil
	}}
	f, err := New(Config{Default: []Target{{Up: up}}, Cache: cache.New(cache.Config{})})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ { // miss, then hit
		m := new(dns.Msg).SetQuestion("c.example.com.", dns.TypeA)
		m.SetEdns0(1232, false)
		m.IsEdns0().Option = append(m.IsEdns0().Option, &dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "a1b2c3d4e5f60718"})
		b, _ := m.Pack()
		r := serve(t, f, b, TransportUDP)
		o := r.IsEdns0()
		if o == nil {
			t.Fatalf("round %d: OPT missing", i)
		}
		for _, op := range o.Option {
			if op.Option() == dns.EDNS0COOKIE {
				t.Fatalf("round %d: upstream cookie passed to the client", i)
			}
		}
	}
	if upstreamSawCookie.Load() {
		t.Fatal("client cookie forwarded upstream")
	}
}

// TestNSID: with Config.NSID set, every kind of answer to a query that
// asks for it carries it (RFC 5001): local zone, cache hit, forwarded,
// error; a query that does not ask gets none, and without Config.NSID
// nobody does.
func TestNSID(t *testing.T) {
	z, err := zone.Parse("aws.example.internal.", strings.NewReader(zoneText), "test.zone")
	if err != nil {
		t.Fatal(err)
	}
	// An upstream that answers EDNS with EDNS, as real servers do (and
	// with an NSID of its own when asked, which must not reach clients).
	a := answerA("up", "192.0.2.8")
	ednsUp := &fakeUp{name: "up", fn: func(ctx context.Context, q *dns.Msg) (*dns.Msg, error) {
		r, err := a.fn(ctx, q)
		if err == nil && q.IsEdns0() != nil {
			r.SetEdns0(1232, false)
			r.IsEdns0().Option = append(r.IsEdns0().Option, &dns.EDNS0_NSID{Code: dns.EDNS0NSID, Nsid: "beef"})
		}
		return r, err
	}}
	build := func(nsid []byte) *Forwarder {
		f, err := New(Config{
			Rules: []Rule{
				{Name: "zone", Domain: "aws.example.internal", Type: rules.Zone, Zone: z},
				{Name: "ads", Domain: "ads.example", Type: rules.Block},
				{Name: "fwd", Domain: "example.com", Type: rules.Forward, Targets: []Target{{Up: ednsUp}}},
			},
			Cache: cache.New(cache.Config{}),
			NSID:  nsid,
		})
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	ask := func(name string, nsid bool) []byte {
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeA)
		m.SetEdns0(1232, false)
		if nsid {
			m.IsEdns0().Option = append(m.IsEdns0().Option, &dns.EDNS0_NSID{Code: dns.EDNS0NSID})
		}
		b, err := m.Pack()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	nsidOf := func(t *testing.T, m *dns.Msg) string {
		t.Helper()
		opt := m.IsEdns0()
		if opt == nil {
			t.Fatalf("no OPT in %v", m)
		}
		for _, o := range opt.Option {
			if n, ok := o.(*dns.EDNS0_NSID); ok {
				return n.Nsid
			}
		}
		return ""
	}
	want := hex.EncodeToString([]byte("edge-1"))
	f, plain := build([]byte("edge-1")), build(nil)
	for _, name := range []string{"ipv4.aws.example.internal.", "x.ads.example.", "www.example.com.", "www.example.com." /* now cached */, "nope.example.org." /* REFUSED */} {
		for _, tr := range []Transport{TransportUDP, TransportTCP, TransportDoH} {
			m := serve(t, f, ask(name, true), tr)
			switch got := nsidOf(t, m); {
			case m.Rcode == dns.RcodeRefused && tr == TransportUDP:
				// An error to an unproven UDP source is no larger than
				// its query: no room for the NSID.
				if got != "" {
					t.Errorf("%s over UDP: REFUSED with NSID %q, grown past the query", name, got)
				}
			case got != want:
				t.Errorf("%s over %v: NSID %q, want %q", name, tr, got, want)
			}
			if got := nsidOf(t, serve(t, f, ask(name, false), tr)); got != "" {
				t.Errorf("%s over %v, not asked: NSID %q", name, tr, got)
			}
			if got := nsidOf(t, serve(t, plain, ask(name, true), tr)); got != "" {
				t.Errorf("%s over %v, none configured: NSID %q", name, tr, got)
			}
		}
	}
}

// TestForwardedAnswerKeepsEDNS: an upstream that answers without an OPT
// record (it does not speak EDNS) still gives an EDNS client an answer with
// one (RFC 6891), from the cache too; a client without EDNS gets none.
func TestForwardedAnswerKeepsEDNS(t *testing.T) {
	f, err := New(Config{Default: []Target{{Up: answerA("old", "192.0.2.9")}}, Cache: cache.New(cache.Config{})})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		edns bool
	}{{"a.example.org.", true}, {"a.example.org.", true}, {"b.example.org.", false}} {
		m := serve(t, f, query(t, c.name, dns.TypeA, c.edns), TransportUDP)
		opt := m.IsEdns0()
		if (opt != nil) != c.edns || len(m.Answer) != 1 || (opt != nil && !opt.Do()) {
			t.Errorf("%s (EDNS %v): OPT %v, %d answers", c.name, c.edns, opt, len(m.Answer))
		}
	}
	if f.Stats().CacheHits != 1 {
		t.Errorf("%d cache hits, want 1", f.Stats().CacheHits)
	}
}

// TestNotifyAndUpdateNotImplemented: NOTIFY and UPDATE for a local zone get
// NOTIMP (xdoh is neither a secondary nor a primary that takes updates),
// with ID, opcode and RD copied.
func TestNotifyAndUpdateNotImplemented(t *testing.T) {
	z, err := zone.Parse("aws.example.internal.", strings.NewReader(zoneText), "test.zone")
	if err != nil {
		t.Fatal(err)
	}
	f, err := New(Config{Rules: []Rule{{Name: "zone", Domain: "aws.example.internal", Type: rules.Zone, Zone: z}}})
	if err != nil {
		t.Fatal(err)
	}
	for _, op := range []int{dns.OpcodeNotify, dns.OpcodeUpdate} {
		m := new(dns.Msg)
		m.SetQuestion("aws.example.internal.", dns.TypeSOA)
		m.Opcode, m.Id = op, 0x4242
		b, err := m.Pack()
		if err != nil {
			t.Fatal(err)
		}
		r := serve(t, f, b, TransportUDP)
		if r == nil || r.Rcode != dns.RcodeNotImplemented || r.Opcode != op || r.Id != 0x4242 || !r.RecursionDesired || len(r.Answer) != 0 {
			t.Errorf("opcode %s: %v, want NOTIMP with ID, opcode and RD copied", dns.OpcodeToString[op], r)
		}
	}
}

// TestANYMinimal: ANY to a local zone gets one RRset (RFC 8482), not every
// record of the name, over every transport.
func TestANYMinimal(t *testing.T) {
	const text = zoneText + "multi IN A 10.2.1.20\nmulti IN A 10.2.1.21\nmulti IN AAAA 2001:db8::20\nmulti IN TXT \"a\"\nmulti IN MX 10 ns1\n"
	z, err := zone.Parse("aws.example.internal.", strings.NewReader(text), "test.zone")
	if err != nil {
		t.Fatal(err)
	}
	f, err := New(Config{Rules: []Rule{{Name: "zone", Domain: "aws.example.internal", Type: rules.Zone, Zone: z}}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tr := range []Transport{TransportUDP, TransportTCP, TransportDoH} {
		m := serve(t, f, query(t, "multi.aws.example.internal.", dns.TypeANY, true), tr)
		if m == nil || m.Rcode != dns.RcodeSuccess || len(m.Answer) == 0 {
			t.Fatalf("%v: %v", tr, m)
		}
		types := map[uint16]int{}
		for _, rr := range m.Answer {
			types[rr.Header().Rrtype]++
		}
		if len(types) != 1 {
			t.Errorf("%v: ANY answered with %d RRsets (%v), want 1", tr, len(types), types)
		}
	}
	if m := serve(t, f, query(t, "multi.aws.example.internal.", dns.TypeA, true), TransportUDP); len(m.Answer) != 2 {
		t.Errorf("A: %d records, want both", len(m.Answer))
	}
}

// TestClientSubnetStripped: a client's EDNS Client Subnet option (RFC 7871)
// never reaches the upstream (privacy: the default policy, "strip"), and
// an upstream's scoped ECS option never reaches a client, from the cache
// neither: the client gets its own subnet back with scope 0.
func TestClientSubnetStripped(t *testing.T) {
	var sawECS atomic.Bool
	up := &fakeUp{name: "ecs", fn: func(_ context.Context, q *dns.Msg) (*dns.Msg, error) {
		if o := q.IsEdns0(); o != nil {
			for _, op := range o.Option {
				if op.Option() == dns.EDNS0SUBNET {
					sawECS.Store(true)
				}
			}
		}
		r := new(dns.Msg)
		r.SetReply(q)
		r.Answer = append(r.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(192, 0, 2, 4)})
		r.SetEdns0(1232, false)
		r.IsEdns0().Option = append(r.IsEdns0().Option, &dns.EDNS0_SUBNET{Code: dns.EDNS0SUBNET, Family: 1, SourceNetmask: 24, SourceScope: 24, Address: net.IPv4(10, 1, 2, 0)})
		return r, nil
	}}
	f, err := New(Config{Default: []Target{{Up: up}}, Cache: cache.New(cache.Config{})})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 2 { // miss, then hit
		m := new(dns.Msg).SetQuestion("e.example.com.", dns.TypeA)
		m.SetEdns0(1232, false)
		m.IsEdns0().Option = append(m.IsEdns0().Option, &dns.EDNS0_SUBNET{Code: dns.EDNS0SUBNET, Family: 1, SourceNetmask: 24, Address: net.IPv4(10, 9, 8, 0)})
		b, _ := m.Pack()
		r := serve(t, f, b, TransportUDP)
		if len(r.Answer) != 1 {
			t.Fatalf("round %d: %v", i, r)
		}
		for _, op := range r.IsEdns0().Option {
			// The client gets its own subnet back, scope 0: the answer is
			// not specific to it (RFC 7871 7.2.1).
			if e, ok := op.(*dns.EDNS0_SUBNET); ok && (e.SourceScope != 0 || !e.Address.Equal(net.IPv4(10, 9, 8, 0)) || e.SourceNetmask != 24) {
				t.Errorf("round %d: the client got ECS %v, not its own with scope 0", i, e)
			}
		}
	}
	if sawECS.Load() {
		t.Error("the client's subnet was forwarded upstream")
	}
}
