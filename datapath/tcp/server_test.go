package tcp

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"xdoh/forwarder"
	"xdoh/forwarder/group"
	"xdoh/forwarder/rules"
	"xdoh/forwarder/zone"
	"xdoh/internal/submittest"
)

// freePort finds a free TCP port on host.
func freePort(t *testing.T, host string) string {
	t.Helper()
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Skipf("no %s: %v", host, err)
	}
	defer l.Close()
	return l.Addr().String()
}

// slowExchanger answers over Do53 from an in-process miekg server after a
// delay, on a goroutine of its own, so the datapath's miss path (an answer
// completed off the event loop) is exercised.
type slowExchanger struct {
	addr  string
	delay time.Duration
}

func (s *slowExchanger) String() string { return s.addr }

func (s *slowExchanger) Submit(query []byte, timeout time.Duration, done func([]byte, error)) group.Canceler {
	if timeout <= 0 {
		timeout = 2 * time.Second
	}
	return submittest.Go(query, s.delay+timeout, done, func(ctx context.Context, query []byte) ([]byte, error) {
		m := new(dns.Msg)
		if err := m.Unpack(query); err != nil {
			return nil, err
		}
		time.Sleep(s.delay)
		r, _, err := (&dns.Client{Net: "tcp"}).ExchangeContext(ctx, m, s.addr)
		if err != nil {
			return nil, err
		}
		return r.Pack()
	})
}

func startUpstream(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{Listener: l, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		r := new(dns.Msg)
		r.SetReply(q)
		r.Answer = append(r.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(172, 16, 0, 10)})
		_ = w.WriteMsg(r)
	})}
	go func() { _ = srv.ActivateAndServe() }()
	t.Cleanup(func() { _ = srv.Shutdown() })
	return l.Addr().String()
}

func startServer(t *testing.T, cfg Config) *Server {
	t.Helper()
	z, err := zone.Parse("aws.example.internal.", strings.NewReader(`$ORIGIN aws.example.internal.
@ 300 IN SOA ns1 hostmaster 1 7200 900 1209600 60
@ 300 IN NS ns1
ns1 300 IN A 10.2.0.53
ipv4 300 IN A 10.2.1.10
`), "t.zone")
	if err != nil {
		t.Fatal(err)
	}
	f, err := forwarder.New(forwarder.Config{
		Rules:   []forwarder.Rule{{Name: "z", Domain: "aws.example.internal", Type: rules.Zone, Zone: z}},
		Default: []forwarder.Target{{Up: &slowExchanger{addr: startUpstream(t), delay: 20 * time.Millisecond}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	s := start(t, cfg, f)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		_ = s.Stop(ctx)
	})
	return s
}

// start starts a server on cfg.Addrs (from freePort). Another test process
// may take such a port between freePort and the bind: then it picks new
// ports on the same hosts and tries again. Use s.Addrs() for where it
// listens.
func start(t *testing.T, cfg Config, h Handler) *Server {
	t.Helper()
	for try := 1; ; try++ {
		s, err := New(cfg, h)
		if err != nil {
			t.Fatal(err)
		}
		err = s.Start()
		if err == nil {
			return s
		}
		if try == 10 || !errors.Is(err, syscall.EADDRINUSE) {
			t.Fatal(err)
		}
		addrs := make([]string, len(cfg.Addrs))
		for i, a := range cfg.Addrs {
			host, _, _ := net.SplitHostPort(a)
			addrs[i] = freePort(t, host)
		}
		cfg.Addrs = addrs
	}
}

// TestTCPAnswers: an answer made at once and one from upstream, over IPv4
// and IPv6.
func TestTCPAnswers(t *testing.T) {
	addrs := []string{freePort(t, "127.0.0.1")}
	if l, err := net.Listen("tcp", "[::1]:0"); err == nil {
		l.Close()
		addrs = append(addrs, freePort(t, "::1"))
	}
	addrs = startServer(t, Config{Name: "t", Addrs: addrs}).Addrs()
	tests := []struct{ name, qname, want string }{
		{"local zone, answered in the event loop", "ipv4.aws.example.internal.", "10.2.1.10"},
		{"forwarded, answered from the miss goroutine", "foo.example.com.", "172.16.0.10"},
	}
	for _, addr := range addrs {
		for _, tt := range tests {
			t.Run(fmt.Sprintf("%s/%s", addr, tt.name), func(t *testing.T) {
				m := new(dns.Msg)
				m.SetQuestion(tt.qname, dns.TypeA)
				c := &dns.Client{Net: "tcp", Timeout: 3 * time.Second}
				r, _, err := c.Exchange(m, addr)
				if err != nil {
					t.Fatal(err)
				}
				if len(r.Answer) != 1 || r.Answer[0].(*dns.A).A.String() != tt.want {
					t.Fatalf("answer %v, want %s", r.Answer, tt.want)
				}
			})
		}
	}
}

// TestTCPPipelining sends many queries on one connection before reading and
// expects every one answered (in any order), matched by ID.
func TestTCPPipelining(t *testing.T) {
	addr := startServer(t, Config{Name: "t", Addrs: []string{freePort(t, "127.0.0.1")}}).Addrs()[0]
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const n = 50
	var buf []byte
	for i := 0; i < n; i++ {
		m := new(dns.Msg)
		name := "foo.example.com."
		if i%2 == 0 {
			name = "ipv4.aws.example.internal."
		}
		m.SetQuestion(name, dns.TypeA)
		m.Id = uint16(i + 1)
		b, _ := m.Pack()
		buf = binary.BigEndian.AppendUint16(buf, uint16(len(b)))
		buf = append(buf, b...)
	}
	if _, err := c.Write(buf); err != nil { // all queries in one segment
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	seen := map[uint16]bool{}
	outOfOrder := false
	for len(seen) < n {
		var l [2]byte
		if _, err := io.ReadFull(c, l[:]); err != nil {
			t.Fatalf("after %d answers: %v", len(seen), err)
		}
		b := make([]byte, binary.BigEndian.Uint16(l[:]))
		if _, err := io.ReadFull(c, b); err != nil {
			t.Fatal(err)
		}
		r := new(dns.Msg)
		if err := r.Unpack(b); err != nil {
			t.Fatal(err)
		}
		if int(r.Id) != len(seen)+1 {
			outOfOrder = true
		}
		seen[r.Id] = true
		if len(r.Answer) != 1 {
			t.Fatalf("id %d: %v", r.Id, r)
		}
	}
	if !outOfOrder {
		t.Log("answers came in order (local answers are fast, forwarded ones slow: expected out of order)")
	}
}

func TestTCPLimits(t *testing.T) {
	s := startServer(t, Config{Name: "t", Addrs: []string{freePort(t, "127.0.0.1")}, MaxTCPConns: 2, TCPIdleTimeout: time.Second})
	addr := s.Addrs()[0]
	var conns []net.Conn
	opened := time.Now()
	for i := 0; i < 3; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns = append(conns, c)
	}
	// One connection is over the cap and closed by the server at once. With
	// SO_REUSEPORT each event loop accepts on its own socket, so which of the
	// three is accepted last is up to the kernel.
	closed := make(chan int, 3)
	for i, c := range conns {
		go func() {
			_ = c.SetReadDeadline(time.Now().Add(700 * time.Millisecond))
			if _, err := c.Read(make([]byte, 1)); err == io.EOF {
				closed <- i
			} else {
				closed <- -1
			}
		}()
	}
	var rejected []int
	for range conns {
		if i := <-closed; i >= 0 {
			rejected = append(rejected, i)
		}
	}
	if len(rejected) != 1 {
		t.Fatalf("connections closed at once: %v, want exactly one over the cap of 2", rejected)
	}
	if rejected[0] == 0 {
		conns[0] = conns[1]
	}
	// The others go idle and are closed after ~1s.
	_ = conns[0].SetReadDeadline(time.Now().Add(4 * time.Second))
	if _, err := conns[0].Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("idle conn read: %v, want EOF", err)
	}
	if el := time.Since(opened); el < 900*time.Millisecond {
		t.Fatalf("idle conn closed after %v, before the idle timeout", el)
	}
	st := s.Stats()
	if st.TCPRejected != 1 || st.TCPIdleClosed < 1 {
		t.Fatalf("stats %+v", st)
	}
}

// TestTCPGarbage: a frame too short for a DNS header closes the connection
// (RFC 7766 allows it); a message that is not a query gets no answer; one
// whose header is usable but whose question is not gets a FORMERR no larger
// than it; and the connection serves the query after them.
func TestTCPGarbage(t *testing.T) {
	addr := startServer(t, Config{Name: "t", Addrs: []string{freePort(t, "127.0.0.1")}}).Addrs()[0]
	frame := func(msgs ...[]byte) []byte {
		var b []byte
		for _, m := range msgs {
			b = binary.BigEndian.AppendUint16(b, uint16(len(m)))
			b = append(b, m...)
		}
		return b
	}
	dial := func(t *testing.T, b []byte) net.Conn {
		t.Helper()
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		_ = c.SetDeadline(time.Now().Add(3 * time.Second))
		if _, err := c.Write(b); err != nil {
			t.Fatal(err)
		}
		return c
	}
	t.Run("shorter than a header", func(t *testing.T) {
		c := dial(t, frame([]byte{1, 2, 3}))
		if n, err := c.Read(make([]byte, 512)); err != io.EOF {
			t.Fatalf("read %d bytes, %v; want EOF", n, err)
		}
	})
	t.Run("not a query, bad question, query", func(t *testing.T) {
		good := new(dns.Msg).SetQuestion("ipv4.aws.example.internal.", dns.TypeA)
		good.Id = 2
		gb, _ := good.Pack()
		response := append([]byte{0, 1, 0x80}, make([]byte, 20)...)                // QR set
		loop := append([]byte{0, 1}, append(gb[2:12:12], 0xC0, 12, 0, 1, 0, 1)...) // ID 1, name points at itself
		c := dial(t, frame(response, loop, gb))
		read := func() []byte {
			t.Helper()
			var l [2]byte
			if _, err := io.ReadFull(c, l[:]); err != nil {
				t.Fatal(err)
			}
			b := make([]byte, binary.BigEndian.Uint16(l[:]))
			if _, err := io.ReadFull(c, b); err != nil {
				t.Fatal(err)
			}
			return b
		}
		if b := read(); len(b) > len(loop) || binary.BigEndian.Uint16(b) != 1 || b[3]&0xF != dns.RcodeFormatError {
			t.Fatalf("first answer %x, want a FORMERR for ID 1 of at most %d octets", b, len(loop))
		}
		r := new(dns.Msg)
		if err := r.Unpack(read()); err != nil || r.Id != 2 || len(r.Answer) != 1 {
			t.Fatalf("second answer %v (%v), want the answer to ID 2", r, err)
		}
	})
}

// TestTCPConnsPerClient: past MaxTCPConnsPerClient from one address a
// connection is closed at once and counted apart from MaxTCPConns; another
// address is still served, and closed connections free their client's
// slots.
func TestTCPConnsPerClient(t *testing.T) {
	s := startServer(t, Config{Name: "t", Addrs: []string{freePort(t, "127.0.0.1")}, MaxTCPConnsPerClient: 2})
	addr := s.Addrs()[0]
	var conns []net.Conn
	for range 3 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns = append(conns, c)
	}
	waitStats := func(what string, ok func(Stats) bool) {
		t.Helper()
		for end := time.Now().Add(10 * time.Second); !ok(s.Stats()); time.Sleep(5 * time.Millisecond) {
			if time.Now().After(end) {
				t.Fatalf("timed out waiting for %s: %+v", what, s.Stats())
			}
		}
	}
	waitStats("one rejected per client, two open", func(st Stats) bool { return st.TCPRejectedPerClient == 1 && st.TCPConns == 2 })
	exchangeFrom := func(from string) {
		t.Helper()
		m := new(dns.Msg)
		m.SetQuestion("ipv4.aws.example.internal.", dns.TypeA)
		c := &dns.Client{Net: "tcp", Timeout: 5 * time.Second, Dialer: &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}}
		if _, _, err := c.Exchange(m, addr); err != nil {
			t.Fatalf("from %s: %v", from, err)
		}
	}
	exchangeFrom("127.0.0.2")
	for _, c := range conns {
		c.Close()
	}
	waitStats("no connection open", func(st Stats) bool { return st.TCPConns == 0 })
	exchangeFrom("127.0.0.1")
	if st := s.Stats(); st.TCPRejected != 0 || st.TCPRejectedPerClient != 1 {
		t.Errorf("stats %+v, want 0 rejected in total and 1 per client", st)
	}
}
