package upstream

import (
	"bytes"
	"context"
	"encoding/hex"
	"net"
	"strings"
	"sync"
	"testing"

	"github.com/miekg/dns"

	"xdoh/forwarder/upstream/upstreamtest"
)

// makeEDNSQuery is makeQuery with an OPT record (UDP size 1232, no
// options), as the forwarder sends a client's EDNS query upstream.
func makeEDNSQuery(t testing.TB, name string, id uint16) []byte {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, dns.TypeA)
	m.Id = id
	m.SetEdns0(1232, false)
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// msgCookie returns the COOKIE option data of m, if it has one.
func msgCookie(t testing.TB, m *dns.Msg) ([]byte, bool) {
	t.Helper()
	opt := m.IsEdns0()
	if opt == nil {
		return nil, false
	}
	for _, o := range opt.Option {
		if c, ok := o.(*dns.EDNS0_COOKIE); ok {
			d, err := hex.DecodeString(c.Cookie)
			if err != nil {
				t.Fatalf("COOKIE option %q: %v", c.Cookie, err)
			}
			return d, true
		}
	}
	return nil, false
}

// withCookie adds a COOKIE option with data d to m, adding an OPT if needed.
func withCookie(m *dns.Msg, d []byte) *dns.Msg {
	opt := m.IsEdns0()
	if opt == nil {
		m.SetEdns0(1232, false)
		opt = m.IsEdns0()
	}
	opt.Option = append(opt.Option, &dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: hex.EncodeToString(d)})
	return m
}

// answerWith is AnswerFor(q) with the A record's address ip and, like a
// server that does EDNS, an OPT record.
func answerWith(q *dns.Msg, ip string) *dns.Msg {
	m := upstreamtest.AnswerFor(q)
	m.Answer[0].(*dns.A).A = net.ParseIP(ip)
	m.SetEdns0(1232, false)
	return m
}

func exchangeMsg(t *testing.T, u Upstream, q []byte) *dns.Msg {
	t.Helper()
	resp, err := Exchange(context.Background(), u, q)
	if err != nil {
		t.Fatal(err)
	}
	m := new(dns.Msg)
	if err := m.Unpack(resp); err != nil {
		t.Fatal(err)
	}
	return m
}

// TestDo53CookieBIND: BIND 9.18 answers a query with our client cookie with
// a COOKIE that echoes it and adds its server cookie; the next query
// carries that server cookie, which BIND's query log shows as a valid one,
// and is answered. Over UDP and over TCP.
func TestDo53CookieBIND(t *testing.T) {
	bind := upstreamtest.StartBIND(t, upstreamtest.BINDOptions{QueryLog: true})
	for _, tt := range []struct {
		name   string
		target string
	}{
		{name: "UDP", target: bind.Do53Addr},
		{name: "TCP", target: "tcp://" + bind.Do53Addr},
	} {
		t.Run(tt.name, func(t *testing.T) {
			u := newTestDo53(t, tt.target, Options{})
			logged := len(bind.QueryLog(t))
			first := exchangeMsg(t, u, makeEDNSQuery(t, "foo.example.com.", 1))
			c1, ok := msgCookie(t, first)
			if !ok {
				t.Fatalf("BIND's first answer has no COOKIE: %v", first)
			}
			if len(c1) < 16 || len(c1) > 40 || !bytes.Equal(c1[:8], u.clientCookie[:]) {
				t.Fatalf("COOKIE %x does not echo our client cookie %x with a server cookie", c1, u.clientCookie)
			}
			if got := u.cookie.Load().data(); !bytes.Equal(got, c1) {
				t.Fatalf("cookie for the next query %x, want the answer's %x", got, c1)
			}
			second := exchangeMsg(t, u, makeEDNSQuery(t, "foo.example.com.", 2))
			if second.Rcode != dns.RcodeSuccess || len(second.Answer) != 1 {
				t.Fatalf("second answer: %v", second)
			}
			c2, ok := msgCookie(t, second)
			if !ok || !bytes.Equal(c2[:8], u.clientCookie[:]) {
				t.Fatalf("second COOKIE %x, want our client cookie %x first", c2, u.clientCookie)
			}

			// BIND 9.18 flags a query with a COOKIE but no valid server
			// cookie "K" and one with a valid server cookie "V".
			log := bind.QueryLog(t)[logged:]
			if len(log) != 2 {
				t.Fatalf("BIND logged %d queries, want 2: %v", len(log), log)
			}
			for i, want := range []string{"K", "V"} {
				e := log[i]
				t.Logf("query %d: %s", i+1, e.Line)
				f := strings.TrimPrefix(e.Flags, "+E(0)")
				if e.TCP {
					f = strings.TrimPrefix(f, "T")
				}
				if f != want || e.TCP != (tt.name == "TCP") {
					t.Errorf("query %d flags %q (TCP %v), want %q after +E(0)", i+1, e.Flags, e.TCP, want)
				}
			}
		})
	}
}

// TestDo53CookieBINDRequired: BIND with require-server-cookie answers the
// first UDP query, which has no server cookie yet, with BADCOOKIE and a
// server cookie; the client asks once more with it and the caller gets
// the NOERROR answer.
func TestDo53CookieBINDRequired(t *testing.T) {
	bind := upstreamtest.StartBIND(t, upstreamtest.BINDOptions{QueryLog: true, RequireServerCookie: true})
	u := newTestDo53(t, bind.Do53Addr, Options{})
	before := bind.Stats(t)
	m := exchangeMsg(t, u, makeEDNSQuery(t, "foo.example.com.", 7))
	if m.Id != 7 || m.Rcode != dns.RcodeSuccess || len(m.Answer) != 1 {
		t.Fatalf("answer %v, want NOERROR with foo's address", m)
	}
	if a, ok := m.Answer[0].(*dns.A); !ok || !a.A.Equal(net.IPv4(172, 16, 0, 10)) {
		t.Fatalf("answer %v, want 172.16.0.10", m.Answer[0])
	}
	if c, ok := msgCookie(t, m); !ok || !bytes.Equal(c[:8], u.clientCookie[:]) {
		t.Errorf("answer's COOKIE %x, want ours %x first (the caller gets it as sent)", c, u.clientCookie)
	}
	// BIND 9.18 counts the BADCOOKIE answer under QryBADCOOKIE, not QryUDP.
	d := bind.Stats(t).Sub(before)
	if d.Requests != 2 || d.RequestsTCP != 0 || d.NSStats["QryBADCOOKIE"] != 1 ||
		d.NSStats["CookieNew"] != 1 || d.NSStats["CookieMatch"] != 1 || d.QueriesUDP != 1 {
		t.Errorf("BIND's counters %v %v; want 2 requests over UDP, one BADCOOKIE without a server cookie (CookieNew), one answered with a valid one (CookieMatch)", d, d.NSStats)
	}
	log := bind.QueryLog(t)
	if len(log) != 2 {
		t.Fatalf("BIND logged %d queries, want 2: %v", len(log), log)
	}
	for i, want := range []string{"+E(0)K", "+E(0)V"} {
		t.Logf("query %d: %s", i+1, log[i].Line)
		if log[i].Flags != want {
			t.Errorf("query %d flags %q, want %q", i+1, log[i].Flags, want)
		}
	}

	// The server cookie is learned: the next query is answered at once.
	before = bind.Stats(t)
	exchangeMsg(t, u, makeEDNSQuery(t, "foo.example.com.", 8))
	if d := bind.Stats(t).Sub(before); d.Requests != 1 || d.NSStats["CookieMatch"] != 1 {
		t.Errorf("BIND's counters %v %v; want 1 request with a valid server cookie", d, d.NSStats)
	}
}

// TestDo53CookieFaults answers each query over UDP with a bad datagram
// first, then the real answer: the bad one must be dropped (the query
// keeps waiting) or taken, as the case says.
func TestDo53CookieFaults(t *testing.T) {
	server := []byte("server-cookie-16")
	tests := []struct {
		name  string
		first func(q *dns.Msg, client []byte) *dns.Msg // answer sent first, address 10.9.9.9
		taken bool                                     // the first answer is the one the caller gets
	}{
		{name: "wrong client cookie", first: func(q *dns.Msg, client []byte) *dns.Msg {
			bad := bytes.Clone(client)
			bad[0] ^= 0xFF
			return withCookie(answerWith(q, "10.9.9.9"), append(bad, server...))
		}},
		{name: "client cookie without server cookie", first: func(q *dns.Msg, client []byte) *dns.Msg {
			return withCookie(answerWith(q, "10.9.9.9"), client)
		}},
		{name: "server cookie too short", first: func(q *dns.Msg, client []byte) *dns.Msg {
			return withCookie(answerWith(q, "10.9.9.9"), append(bytes.Clone(client), server[:7]...))
		}},
		{name: "server cookie too long", first: func(q *dns.Msg, client []byte) *dns.Msg {
			return withCookie(answerWith(q, "10.9.9.9"), append(bytes.Clone(client), bytes.Repeat(server, 3)...))
		}},
		{name: "no COOKIE", taken: true, first: func(q *dns.Msg, _ []byte) *dns.Msg {
			return answerWith(q, "10.9.9.9")
		}},
		{name: "no OPT", taken: true, first: func(q *dns.Msg, _ []byte) *dns.Msg {
			m := answerWith(q, "10.9.9.9")
			m.Extra = nil
			return m
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := upstreamtest.StartDo53Fault(t, func(q *dns.Msg, reply func([]byte)) {
				sent, ok := msgCookie(t, q)
				if !ok || len(sent) < 8 {
					t.Errorf("query without our COOKIE: %v", q)
					return
				}
				reply(upstreamtest.MustPack(tt.first(q, sent[:8])))
				reply(upstreamtest.MustPack(withCookie(answerWith(q, "10.1.1.1"), append(bytes.Clone(sent[:8]), server...))))
			}, nil)
			u := newTestDo53(t, f.Addr, Options{})
			m := exchangeMsg(t, u, makeEDNSQuery(t, "cookie.example.", 3))
			want := "10.1.1.1"
			if tt.taken {
				want = "10.9.9.9"
			}
			if len(m.Answer) != 1 || m.Answer[0].(*dns.A).A.String() != want {
				t.Fatalf("answer %v, want %s", m.Answer, want)
			}
			if got := u.cookie.Load().data(); !tt.taken && !bytes.Equal(got[8:], server) {
				t.Errorf("learned cookie %x, want our client cookie and %x", got, server)
			}
		})
	}
}

// TestDo53CookieBadCookieTwice: an upstream that answers every query with
// BADCOOKIE gets the query twice, the second time with the server cookie
// of the first BADCOOKIE, and the second BADCOOKIE is the answer.
func TestDo53CookieBadCookieTwice(t *testing.T) {
	var mu sync.Mutex
	var sent [][]byte
	f := upstreamtest.StartDo53Fault(t, func(q *dns.Msg, reply func([]byte)) {
		c, _ := msgCookie(t, q)
		mu.Lock()
		sent = append(sent, c)
		n := len(sent)
		mu.Unlock()
		if len(c) < 8 {
			return
		}
		m := new(dns.Msg)
		m.SetReply(q)
		m.SetEdns0(1232, false)
		m.Rcode = dns.RcodeBadCookie
		reply(upstreamtest.MustPack(withCookie(m, append(bytes.Clone(c[:8]), bytes.Repeat([]byte{byte(n)}, 16)...))))
	}, nil)
	u := newTestDo53(t, f.Addr, Options{})
	m := exchangeMsg(t, u, makeEDNSQuery(t, "bad.example.", 4))
	if m.Rcode != dns.RcodeBadCookie {
		t.Fatalf("RCODE %s, want BADCOOKIE", dns.RcodeToString[m.Rcode])
	}
	mu.Lock()
	defer mu.Unlock()
	if len(sent) != 2 {
		t.Fatalf("server got %d queries, want 2", len(sent))
	}
	if want := append(u.clientCookie[:], bytes.Repeat([]byte{1}, 16)...); !bytes.Equal(sent[0], u.clientCookie[:]) || !bytes.Equal(sent[1], want) {
		t.Errorf("cookies sent %x, %x; want %x, %x", sent[0], sent[1], u.clientCookie, want)
	}
}

// TestDo53CookieNeedsOPT: a query without OPT goes out without OPT, so
// without a cookie; one that carries a COOKIE of its own keeps it.
func TestDo53CookieNeedsOPT(t *testing.T) {
	var mu sync.Mutex
	var got []*dns.Msg
	f := upstreamtest.StartDo53Fault(t, func(q *dns.Msg, reply func([]byte)) {
		mu.Lock()
		got = append(got, q)
		mu.Unlock()
		upstreamtest.UDPAnswer(q, reply)
	}, nil)
	u := newTestDo53(t, f.Addr, Options{})
	checkAnswer(t, exchangeMsgBytes(t, u, makeQuery(t, "plain.example.", 5)), "plain.example.", 5)

	own := []byte("theirs!!")
	m := new(dns.Msg)
	m.SetQuestion("own.example.", dns.TypeA)
	m.Id = 6
	q, err := withCookie(m, own).Pack()
	if err != nil {
		t.Fatal(err)
	}
	checkAnswer(t, exchangeMsgBytes(t, u, q), "own.example.", 6)

	mu.Lock()
	defer mu.Unlock()
	if len(got) != 2 {
		t.Fatalf("server got %d queries, want 2", len(got))
	}
	if got[0].IsEdns0() != nil || len(got[0].Extra) != 0 {
		t.Errorf("query without OPT went out with additional records %v", got[0].Extra)
	}
	if c, ok := msgCookie(t, got[1]); !ok || !bytes.Equal(c, own) || len(got[1].IsEdns0().Option) != 1 {
		t.Errorf("query with its own COOKIE went out with options %v, want only its own", got[1].IsEdns0().Option)
	}
}

// TestDo53CookieNoAllocs: adding the cookie to a query and checking and
// learning an answer's (the server cookie unchanged) allocate nothing.
func TestDo53CookieNoAllocs(t *testing.T) {
	u := newTestDo53(t, "127.0.0.1:53", Options{}) // no query is sent
	query := makeEDNSQuery(t, "foo.example.", 1)
	qm := new(dns.Msg)
	if err := qm.Unpack(query); err != nil {
		t.Fatal(err)
	}
	cookie := append(u.clientCookie[:], []byte("server-cookie-16")...)
	resp := upstreamtest.MustPack(withCookie(answerWith(qm, "10.1.1.1"), cookie))
	u.learnCookie(cookie)
	buf := make([]byte, 0, len(query)+cookieRoom)
	if n := testing.AllocsPerRun(100, func() {
		q, ok := u.addCookie(append(buf[:0], query...))
		d, has := responseCookie(resp)
		if !ok || !has || !u.cookieValid(d) || len(q) != len(query)+4+len(cookie) {
			t.Fatal("cookie not added or not valid")
		}
		u.learnCookie(d)
	}); n != 0 {
		t.Errorf("%v allocations per query, want 0", n)
	}
}

func exchangeMsgBytes(t *testing.T, u Upstream, q []byte) []byte {
	t.Helper()
	resp, err := Exchange(context.Background(), u, q)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// BenchmarkDo53UDPExchangeEDNS is BenchmarkDo53UDPExchange with an EDNS
// query: the cookie is added to it (the miekg/dns server answers without
// OPT). Allocations include the in-process server's.
func BenchmarkDo53UDPExchangeEDNS(b *testing.B) {
	srv := upstreamtest.StartDo53Server(b)
	u := newTestDo53(b, srv.Addr, Options{})
	q := makeEDNSQuery(b, "bench.example.", 1)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Exchange(context.Background(), u, q); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDo53BINDExchangeEDNS exchanges EDNS queries with BIND over UDP,
// which answers with a COOKIE: the whole cookie path, and allocations are
// the client's alone.
func BenchmarkDo53BINDExchangeEDNS(b *testing.B) {
	bind := upstreamtest.StartBIND(b, upstreamtest.BINDOptions{})
	u := newTestDo53(b, bind.Do53Addr, Options{})
	q := makeEDNSQuery(b, "foo.example.com.", 1)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Exchange(context.Background(), u, q); err != nil {
			b.Fatal(err)
		}
	}
}
