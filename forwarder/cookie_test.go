package forwarder

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"xdoh/forwarder/cache"
	"xdoh/forwarder/rules"
	"xdoh/forwarder/zone"
)

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestServerCookieRFC9018Vector: the server cookie of RFC 9018 appendix
// A.1, made from its client cookie, address, secret and time, is the one
// the RFC gives, and it checks as valid.
func TestServerCookieRFC9018Vector(t *testing.T) {
	var secret [16]byte
	copy(secret[:], unhex(t, "e5e973e5a6b2a43f48e7dc849e37bfcf"))
	c := NewCookies(secret, 0, false)
	const now = 1559731985
	addr := []byte{198, 51, 100, 100}
	var got [24]byte
	c.make(&got, unhex(t, "2464c4abcf10c957"), addr, now)
	if want := "2464c4abcf10c957010000005cf79f111f8130c3eee29480"; hex.EncodeToString(got[:]) != want {
		t.Fatalf("cookie %x, want %s", got, want)
	}
	if v := c.check(got[:], addr, now); v != cookieValidServer {
		t.Fatalf("verdict %d for the RFC's own cookie", v)
	}
}

// TestServerCookieChecks: a cookie is valid for its client cookie and
// address, within its hour, under this period's key or the last one.
func TestServerCookieChecks(t *testing.T) {
	const period = 24 * time.Hour
	t0 := time.Unix(1_800_000_000, 0).Truncate(period).Add(period - 10*time.Minute) // ten minutes before a rotation
	c := NewCookies([16]byte{9, 9, 9}, period, false)
	addr := []byte{192, 0, 2, 1}
	client := []byte{1, 2, 3, 4, 5, 6, 7, 8}
	var ck [24]byte
	c.make(&ck, client, addr, t0.Unix())
	other := NewCookies([16]byte{8, 8, 8}, period, false)
	flip := func(i int) []byte { b := append([]byte(nil), ck[:]...); b[i] ^= 1; return b }
	for _, tc := range []struct {
		name  string
		at    time.Time
		c     *Cookies
		opt   []byte
		addr  []byte
		wants cookieVerdict
	}{
		{"fresh", t0, c, ck[:], addr, cookieValidServer},
		{"client cookie alone", t0, c, client, addr, cookieClientOnly},
		{"none", t0, c, nil, addr, cookieNone},
		{"after the rotation (previous key)", t0.Add(20 * time.Minute), c, ck[:], addr, cookieValidServer},
		{"59 minutes old", t0.Add(59 * time.Minute), c, ck[:], addr, cookieValidServer},
		{"61 minutes old", t0.Add(61 * time.Minute), c, ck[:], addr, cookieBadServer},
		{"made 4 minutes ahead of us", t0.Add(-4 * time.Minute), c, ck[:], addr, cookieValidServer},
		{"made 6 minutes ahead of us", t0.Add(-6 * time.Minute), c, ck[:], addr, cookieBadServer},
		{"another address", t0, c, ck[:], []byte{192, 0, 2, 2}, cookieBadServer},
		{"another client cookie", t0, c, flip(0), addr, cookieBadServer},
		{"another timestamp", t0, c, flip(15), addr, cookieBadServer},
		{"another hash", t0, c, flip(23), addr, cookieBadServer},
		{"version 2", t0, c, flip(8), addr, cookieBadServer},
		{"another secret", t0, other, ck[:], addr, cookieBadServer},
		{"a server cookie of 8", t0, c, ck[:16], addr, cookieBadServer},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if v := tc.c.check(tc.opt, tc.addr, tc.at.Unix()); v != tc.wants {
				t.Errorf("verdict %d, want %d", v, tc.wants)
			}
		})
	}
	if cookieStale(ck[:], t0.Add(29*time.Minute).Unix()) || !cookieStale(ck[:], t0.Add(31*time.Minute).Unix()) {
		t.Error("a cookie is replaced when it is half an hour old (RFC 9018 4.3), not before")
	}
	// Made now but under the key of two periods ago: not valid.
	var old [24]byte
	c.make(&old, client, addr, t0.Unix())
	epoch := t0.Unix() / int64(period/time.Second)
	binary.LittleEndian.PutUint64(old[16:], cookieHash(c.derive(epoch-2), old[:8], old[8:16], addr))
	if v := c.check(old[:], addr, t0.Unix()); v != cookieBadServer {
		t.Errorf("a cookie under the key of two periods ago: verdict %d", v)
	}
	binary.LittleEndian.PutUint64(old[16:], cookieHash(c.derive(epoch-1), old[:8], old[8:16], addr))
	if v := c.check(old[:], addr, t0.Unix()); v != cookieValidServer {
		t.Errorf("a cookie under the previous key: verdict %d", v)
	}
}

// cookieQuery is an EDNS query for name carrying the COOKIE option data.
func cookieQuery(t testing.TB, name string, cookie []byte) []byte {
	m := new(dns.Msg)
	m.SetQuestion(name, dns.TypeA)
	m.SetEdns0(1232, false)
	if cookie != nil {
		m.IsEdns0().Option = append(m.IsEdns0().Option, &dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: hex.EncodeToString(cookie)})
	}
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func cookieOf(m *dns.Msg) []byte {
	if o := m.IsEdns0(); o != nil {
		for _, op := range o.Option {
			if c, ok := op.(*dns.EDNS0_COOKIE); ok {
				b, _ := hex.DecodeString(c.Cookie)
				return b
			}
		}
	}
	return nil
}

// TestCookiesInAnswers: every kind of answer to a client cookie carries
// a server cookie for that client cookie and address, made by xdoh (an
// upstream's cookie never reaches the client): local zone, block,
// forwarded, cache hit, REFUSED; sent back, it counts as valid. With
// require, a UDP query without a valid server cookie gets BADCOOKIE and
// a cookie to retry with, and TCP needs none.
func TestCookiesInAnswers(t *testing.T) {
	z, err := zone.Parse("aws.example.internal.", strings.NewReader(zoneText), "test.zone")
	if err != nil {
		t.Fatal(err)
	}
	up := answerA("up", "192.0.2.8")
	cookieUp := &fakeUp{name: "up", fn: func(ctx context.Context, q *dns.Msg) (*dns.Msg, error) {
		r, err := up.fn(ctx, q)
		if err == nil && q.IsEdns0() != nil {
			r.SetEdns0(1232, false)
			r.IsEdns0().Option = append(r.IsEdns0().Option, &dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708ffffffffffffffffffffffffffffffff"})
		}
		return r, err
	}}
	build := func(require bool) (*Forwarder, *Cookies) {
		ck := NewCookies([16]byte{7}, 24*time.Hour, require)
		f, err := New(Config{
			Rules: []Rule{
				{Name: "zone", Domain: "aws.example.internal", Type: rules.Zone, Zone: z},
				{Name: "ads", Domain: "ads.example", Type: rules.Block},
				{Name: "fwd", Domain: "example.com", Type: rules.Forward, Targets: []Target{{Up: cookieUp}}},
			},
			Cache:   cache.New(cache.Config{}),
			Cookies: ck,
		})
		if err != nil {
			t.Fatal(err)
		}
		return f, ck
	}
	client := []byte{1, 2, 3, 4, 5, 6, 7, 8}
	addr := []byte{127, 0, 0, 1}
	f, ck := build(false)
	for _, name := range []string{"ipv4.aws.example.internal.", "x.ads.example.", "www.example.com.", "www.example.com." /* cached */, "nope.example.org." /* REFUSED */} {
		for _, tr := range []Transport{TransportUDP, TransportTCP, TransportDoH} {
			q := cookieQuery(t, name, client)
			m := serve(t, f, q, tr)
			got := cookieOf(m)
			if m.Rcode == dns.RcodeRefused && tr == TransportUDP {
				// An error to an unproven UDP source is no larger than its
				// query: no room for the server cookie.
				if got != nil {
					t.Fatalf("%s over UDP: REFUSED with a cookie %x, grown past the query", name, got)
				}
				continue
			}
			if len(got) != 24 || string(got[:8]) != string(client) || ck.check(got, addr, time.Now().Unix()) != cookieValidServer {
				t.Fatalf("%s over %v: cookie %x is not a valid one of ours", name, tr, got)
			}
			m = serve(t, f, cookieQuery(t, name, got), tr)
			if again := cookieOf(m); ck.check(again, addr, time.Now().Unix()) != cookieValidServer {
				t.Fatalf("%s over %v, second query: cookie %x", name, tr, again)
			}
			if m := serve(t, f, cookieQuery(t, name, nil), tr); cookieOf(m) != nil {
				t.Fatalf("%s over %v: a cookie for a query without one", name, tr)
			}
		}
	}
	if s := f.Stats(); s.CookieClientOnly != 15 || s.CookieValid != 14 || s.CookieBad != 0 {
		t.Errorf("cookie counters %d client-only, %d valid, %d bad; want 15, 14, 0", s.CookieClientOnly, s.CookieValid, s.CookieBad)
	}

	f, _ = build(true)
	m := serve(t, f, cookieQuery(t, "www.example.com.", client), TransportUDP)
	fresh := cookieOf(m)
	if m.Rcode != dns.RcodeBadCookie || len(m.Answer) != 0 || len(fresh) != 24 {
		t.Fatalf("require, client cookie over UDP: rcode %d, %d answers, cookie %x; want BADCOOKIE and a cookie", m.Rcode, len(m.Answer), fresh)
	}
	if m := serve(t, f, cookieQuery(t, "www.example.com.", append(client, make([]byte, 16)...)), TransportUDP); m.Rcode != dns.RcodeBadCookie {
		t.Fatalf("require, a forged server cookie over UDP: rcode %d", m.Rcode)
	}
	if m := serve(t, f, cookieQuery(t, "www.example.com.", fresh), TransportUDP); m.Rcode != dns.RcodeSuccess || len(m.Answer) != 1 {
		t.Fatalf("require, valid cookie: rcode %d, %d answers", m.Rcode, len(m.Answer))
	}
	for _, tr := range []Transport{TransportTCP, TransportDoH} {
		if m := serve(t, f, cookieQuery(t, "www.example.com.", client), tr); m.Rcode != dns.RcodeSuccess || len(m.Answer) != 1 {
			t.Fatalf("require, client cookie over %v: rcode %d", tr, m.Rcode)
		}
	}
	if m := serve(t, f, cookieQuery(t, "www.example.com.", nil), TransportUDP); m.Rcode != dns.RcodeSuccess {
		t.Fatalf("require, no cookie at all: rcode %d (RFC 7873 5.2.1: answered as before cookies)", m.Rcode)
	}
	if s := f.Stats(); s.BadCookie != 2 {
		t.Errorf("%d BADCOOKIE answers counted, want 2", s.BadCookie)
	}
}

// TestValidCookieFlag: the request says whether its server cookie was
// valid, for a rate limit to exempt it.
func TestValidCookieFlag(t *testing.T) {
	ck := NewCookies([16]byte{5}, 0, false)
	f, err := New(Config{Rules: []Rule{{Name: "ads", Domain: "ads.example", Type: rules.Block}}, Cookies: ck})
	if err != nil {
		t.Fatal(err)
	}
	client := []byte{1, 2, 3, 4, 5, 6, 7, 8}
	var c [24]byte
	ck.make(&c, client, []byte{127, 0, 0, 1}, time.Now().Unix())
	for _, tc := range []struct {
		cookie []byte
		want   bool
	}{{nil, false}, {client, false}, {c[:], true}} {
		r := &Request{Msg: cookieQuery(t, "x.ads.example.", tc.cookie), Transport: TransportUDP, Client: netip.MustParseAddrPort("127.0.0.1:53000")}
		if _, ok := f.Answer(r, make([]byte, 0, 65536)[:65536]); !ok {
			t.Fatal("not answered at once")
		}
		if r.ValidCookie() != tc.want {
			t.Errorf("cookie %x: ValidCookie %v", tc.cookie, r.ValidCookie())
		}
	}
}

func BenchmarkServeCacheHitCookie(b *testing.B) {
	ck := NewCookies([16]byte{5}, 24*time.Hour, false)
	f, err := New(Config{Default: []Target{{Up: answerA("up", "192.0.2.7")}}, Cache: cache.New(cache.Config{}), Cookies: ck})
	if err != nil {
		b.Fatal(err)
	}
	client := []byte{1, 2, 3, 4, 5, 6, 7, 8}
	var c [24]byte
	ck.make(&c, client, []byte{127, 0, 0, 1}, time.Now().Unix())
	msg := cookieQuery(b, "hit.example.com.", c[:])
	out := make([]byte, 65536)
	cl := netip.MustParseAddrPort("127.0.0.1:53000")
	r := &Request{Msg: msg, Transport: TransportUDP, Client: cl}
	f.ServeDNS(context.Background(), r, out[:0])
	b.ReportAllocs()
	for b.Loop() {
		*r = Request{Msg: msg, Transport: TransportUDP, Client: cl}
		resp, ok := answerOrResolve(f, r, out, nil)
		if !ok || len(resp) < 24 || !r.ValidCookie() {
			b.Fatal("miss, or no valid cookie")
		}
	}
}
