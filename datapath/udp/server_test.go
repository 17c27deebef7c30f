package udp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"

	"xdoh/forwarder"
	"xdoh/forwarder/cache"
	"xdoh/forwarder/group"
	"xdoh/forwarder/rules"
	"xdoh/forwarder/zone"
)

var _ Handler = (*forwarder.Forwarder)(nil)

// slowUpstream answers every A query with 172.16.0.10 after a delay, so that
// misses are resolved on the asynchronous path, and counts its calls.
type slowUpstream struct {
	delay time.Duration
	calls atomic.Int64
}

func (u *slowUpstream) String() string { return "slow" }

func (u *slowUpstream) Submit(q []byte, timeout time.Duration, done func([]byte, error)) group.Canceler {
	u.calls.Add(1)
	m := new(dns.Msg)
	if err := m.Unpack(q); err != nil {
		done(nil, err)
		return nil
	}
	r := new(dns.Msg)
	r.SetReply(m)
	r.Answer = append(r.Answer, &dns.A{
		Hdr: dns.RR_Header{Name: m.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60},
		A:   net.IPv4(172, 16, 0, 10),
	})
	resp, err := r.Pack()
	if timeout > 0 && timeout < u.delay {
		time.AfterFunc(timeout, func() { done(nil, errors.New("slow: timed out")) })
		return nil
	}
	time.AfterFunc(u.delay, func() { done(resp, err) })
	return nil
}

const testZone = `$ORIGIN aws.example.internal.
@ 300 IN SOA ns1 hostmaster 1 7200 900 1209600 60
@ 300 IN NS ns1
ns1 300 IN A 10.2.0.53
ipv4 300 IN A 10.2.1.10
`

// newForwarder is the real pipeline: a cache, a local zone, and a slow
// default upstream.
func newForwarder(t testing.TB) (*forwarder.Forwarder, *slowUpstream) {
	t.Helper()
	z, err := zone.Parse("aws.example.internal.", strings.NewReader(testZone), "t.zone")
	if err != nil {
		t.Fatal(err)
	}
	up := &slowUpstream{delay: 20 * time.Millisecond}
	f, err := forwarder.New(forwarder.Config{
		Rules:   []forwarder.Rule{{Name: "z", Domain: "aws.example.internal", Type: rules.Zone, Zone: z}},
		Default: []forwarder.Target{{Up: up}},
		Cache:   cache.New(cache.Config{}),
	})
	if err != nil {
		t.Fatal(err)
	}
	return f, up
}

func startServer(t testing.TB, cfg Config, h Handler) *Server {
	t.Helper()
	s, err := New(cfg, h)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		if err := s.Stop(ctx); err != nil {
			t.Error(err)
		}
	})
	return s
}

// loopbackAddrs is 127.0.0.1:0, and [::1]:0 where the host has IPv6.
func loopbackAddrs() []string {
	addrs := []string{"127.0.0.1:0"}
	if c, err := net.ListenPacket("udp6", "[::1]:0"); err == nil {
		c.Close()
		addrs = append(addrs, "[::1]:0")
	}
	return addrs
}

// settled waits until every query received has been replied to or dropped
// and returns the stats; for tests whose every query deserves a reply. (A
// reply is counted just after it is sent, so a client can be faster.)
func settled(t testing.TB, s *Server) Stats {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for {
		st := s.Stats()
		if st.Replies+st.ReplyDrops+st.Truncated >= st.Queries || time.Now().After(deadline) {
			return st
		}
		time.Sleep(time.Millisecond)
	}
}

func exchange(t *testing.T, addr netip.AddrPort, qname string) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(qname, dns.TypeA)
	c := &dns.Client{Net: "udp", Timeout: 3 * time.Second}
	r, _, err := c.Exchange(m, addr.String())
	if err != nil {
		t.Fatalf("%s %s: %v", addr, qname, err)
	}
	if r.Id != m.Id {
		t.Fatalf("id %d, want %d", r.Id, m.Id)
	}
	return r
}

func TestNew(t *testing.T) {
	f, _ := newForwarder(t)
	tests := []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{name: "ok", cfg: Config{Addrs: []string{"127.0.0.1:53", "[::1]:53"}}},
		{name: "no addresses", cfg: Config{}, wantErr: "no addresses"},
		{name: "not ip:port", cfg: Config{Addrs: []string{"127.0.0.1:53", "localhost:53"}}, wantErr: "do53[1]"},
		{name: "no port", cfg: Config{Addrs: []string{"127.0.0.1"}}, wantErr: "do53[0]"},
		{name: "batch over the kernel limit", cfg: Config{Addrs: []string{"127.0.0.1:53"}, Batch: 2000}, wantErr: "batch"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := New(tt.cfg, f)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				if s.cfg.Sockets != max(1, runtime.GOMAXPROCS(0)/2) || s.cfg.Batch != defaultBatch {
					t.Fatalf("defaults: %+v", s.cfg)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestServe(t *testing.T) {
	f, up := newForwarder(t)
	s := startServer(t, Config{Name: "t", Addrs: loopbackAddrs(), Sockets: 2}, f)
	tests := []struct{ name, qname, want string }{
		{"local zone", "ipv4.aws.example.internal.", "10.2.1.10"},
		{"miss, answered by the resolving goroutine", "foo.example.com.", "172.16.0.10"},
		{"hit, answered in the loop", "foo.example.com.", "172.16.0.10"},
	}
	for _, addr := range s.LocalAddrs() {
		if addr.Port() == 0 {
			t.Fatalf("LocalAddrs %v: port 0", s.LocalAddrs())
		}
		for _, tt := range tests {
			t.Run(fmt.Sprintf("%s/%s", addr, tt.name), func(t *testing.T) {
				r := exchange(t, addr, tt.qname)
				if len(r.Answer) != 1 || r.Answer[0].(*dns.A).A.String() != tt.want {
					t.Fatalf("answer %v, want %s", r.Answer, tt.want)
				}
			})
		}
	}
	if n := up.calls.Load(); n != 1 {
		t.Errorf("upstream called %d times, want 1 (then cache hits)", n)
	}
	fs, st := f.Stats(), settled(t, s)
	if want := uint64(3 * len(s.LocalAddrs())); st.Queries != want || st.Replies != want || st.ReplyDrops != 0 {
		t.Errorf("stats %+v, want %d queries and replies", st, want)
	}
	if fs.CacheHits < uint64(2*len(s.LocalAddrs())-1) {
		t.Errorf("forwarder stats %+v: too few cache hits", fs)
	}
}

// TestWildcard binds the wildcard addresses and queries 127.0.0.2 (and ::1):
// replies, from the loop and from the resolving goroutine, must come from
// the address queried, which a connected client socket checks (without
// IP_PKTINFO the reply would leave from 127.0.0.1).
func TestWildcard(t *testing.T) {
	f, _ := newForwarder(t)
	addrs := []string{"0.0.0.0:0"}
	if len(loopbackAddrs()) == 2 {
		addrs = append(addrs, "[::]:0")
	}
	s := startServer(t, Config{Name: "t", Addrs: addrs, Sockets: 2}, f)
	dsts := []netip.Addr{netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.1")}
	if len(addrs) == 2 {
		dsts = append(dsts, netip.MustParseAddr("::1"))
	}
	for _, dst := range dsts {
		port := s.LocalAddrs()[0].Port()
		if dst.Is6() {
			port = s.LocalAddrs()[1].Port()
		}
		for _, qname := range []string{"wild.example.com.", "wild.example.com.", "ipv4.aws.example.internal."} {
			r := exchange(t, netip.AddrPortFrom(dst, port), qname) // miss, hit, local
			if len(r.Answer) != 1 {
				t.Fatalf("%s %s: %v", dst, qname, r)
			}
		}
	}
	if st := settled(t, s); st.Replies != uint64(3*len(dsts)) || st.ReplyDrops != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// TestConcurrent fires 500 queries (hits, misses, local answers) from several
// client sockets at once and expects every one answered, matched by ID.
func TestConcurrent(t *testing.T) {
	f, _ := newForwarder(t)
	s := startServer(t, Config{Name: "t", Addrs: []string{"127.0.0.1:0"}, Sockets: 3, Batch: 8}, f)
	addr := net.UDPAddrFromAddrPort(s.LocalAddrs()[0])
	const clients, perClient = 5, 100
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := net.DialUDP("udp", nil, addr)
			if err != nil {
				errs <- err
				return
			}
			defer conn.Close()
			want := map[uint16]string{}
			for i := range perClient {
				m := new(dns.Msg)
				switch i % 3 {
				case 0:
					m.SetQuestion("hit.example.com.", dns.TypeA)
				case 1:
					m.SetQuestion(fmt.Sprintf("miss-%d-%d.example.com.", c, i), dns.TypeA)
				default:
					m.SetQuestion("ipv4.aws.example.internal.", dns.TypeA)
				}
				m.Id = uint16(c*1000 + i)
				want[m.Id] = m.Question[0].Name
				b, _ := m.Pack()
				if _, err := conn.Write(b); err != nil {
					errs <- err
					return
				}
			}
			_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			buf := make([]byte, 4096)
			for len(want) > 0 {
				n, err := conn.Read(buf)
				if err != nil {
					errs <- fmt.Errorf("client %d, %d unanswered: %w", c, len(want), err)
					return
				}
				r := new(dns.Msg)
				if err := r.Unpack(buf[:n]); err != nil {
					errs <- err
					return
				}
				q, ok := want[r.Id]
				if !ok || r.Question[0].Name != q || r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
					errs <- fmt.Errorf("client %d: unexpected reply %v", c, r)
					return
				}
				delete(want, r.Id)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if st := settled(t, s); st.Queries != clients*perClient || st.Replies != clients*perClient {
		t.Errorf("stats %+v, want %d queries and replies", st, clients*perClient)
	}
}

func TestOversize(t *testing.T) {
	f, _ := newForwarder(t)
	s := startServer(t, Config{Name: "t", Addrs: []string{"127.0.0.1:0"}, Sockets: 1}, f)
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(s.LocalAddrs()[0]))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	q, _ := new(dns.Msg).SetQuestion("ipv4.aws.example.internal.", dns.TypeA).Pack()
	big := append(append([]byte(nil), q...), make([]byte, 5000)...) // a valid query padded past 4096
	for _, b := range [][]byte{big, q} {
		if _, err := c.Write(b); err != nil {
			t.Fatal(err)
		}
	}
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 65536)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	r := new(dns.Msg)
	if err := r.Unpack(buf[:n]); err != nil || len(r.Answer) != 1 {
		t.Fatalf("reply %v %v, want the answer to the small query", r, err)
	}
	_ = c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if n, err := c.Read(buf); err == nil {
		t.Fatalf("a second reply (%d octets): the oversize datagram was answered", n)
	}
	if st := settled(t, s); st.Truncated != 1 || st.Queries != 2 || st.Replies != 1 {
		t.Fatalf("stats %+v, want 1 truncated of 2 queries, 1 reply", st)
	}
}

func TestGarbage(t *testing.T) {
	f, _ := newForwarder(t)
	s := startServer(t, Config{Name: "t", Addrs: []string{"127.0.0.1:0"}, Sockets: 1}, f)
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(s.LocalAddrs()[0]))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	gb, _ := new(dns.Msg).SetQuestion("ipv4.aws.example.internal.", dns.TypeA).Pack()
	for _, g := range [][]byte{
		{},        // empty
		{1, 2, 3}, // short
		append([]byte{0, 1, 0x80}, make([]byte, 20)...), // a response
		append(gb[:12:12], 0xC0, 12, 0, 1, 0, 1),        // compressed question name: FORMERR
	} {
		if _, err := c.Write(g); err != nil {
			t.Fatal(err)
		}
	}
	// Only the last (header usable) deserves an answer: a FORMERR no larger than it.
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	b := make([]byte, 1500)
	n, err := c.Read(b)
	if err != nil {
		t.Fatal(err)
	}
	if n > 18 || b[3]&0xF != dns.RcodeFormatError {
		t.Fatalf("reply %x, want a FORMERR of at most 18 octets", b[:n])
	}
	if _, err := c.Write(gb); err != nil {
		t.Fatal(err)
	}
	if n, err = c.Read(b); err != nil || n <= 12 {
		t.Fatalf("after garbage: %d %v", n, err)
	}
}

// serverGoroutines counts the goroutines Start made: per socket its loop and
// its outbox's sender, and the one waiting for the loops.
func serverGoroutines() int {
	buf := make([]byte, 1<<20)
	return strings.Count(string(buf[:runtime.Stack(buf, true)]), "created by xdoh/datapath/udp.(*Server).Start")
}

// TestSteer: Start hands Config.Steer the sockets of each address, once
// the loops run, with the address they are bound to.
func TestSteer(t *testing.T) {
	f, _ := newForwarder(t)
	type call struct {
		addr netip.AddrPort
		fds  []int
	}
	var calls []call
	s, err := New(Config{Name: "t", Addrs: loopbackAddrs(), Sockets: 3, Steer: func(addr netip.AddrPort, fds []int) {
		calls = append(calls, call{addr, append([]int(nil), fds...)})
	}}, f)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Stop(context.Background()) })
	locals := s.LocalAddrs()
	if len(calls) != len(locals) {
		t.Fatalf("Steer called %d times, want once per address (%d)", len(calls), len(locals))
	}
	for i, c := range calls {
		if c.addr != locals[i] || len(c.fds) != 3 {
			t.Errorf("call %d: %v with %d sockets, want %v with 3", i, c.addr, len(c.fds), locals[i])
		}
		for j, fd := range c.fds {
			if so := s.socks[3*i+j]; so.fd != fd || so.local != locals[i] {
				t.Errorf("call %d socket %d: fd %d, want %d bound to %v", i, j, fd, so.fd, locals[i])
			}
		}
	}
	exchange(t, locals[0], "ipv4.aws.example.internal.") // the loops run
}

// TestReceiveBuffer: each socket's receive buffer is rcvBuf (doubled by
// the kernel) when the process may force it (CAP_NET_ADMIN, probed on a
// scratch socket), else what net.core.rmem_max allows.
func TestReceiveBuffer(t *testing.T) {
	f, _ := newForwarder(t)
	s := startServer(t, Config{Name: "t", Addrs: loopbackAddrs(), Sockets: 2}, f)
	want := 2 * rcvBuf
	probe, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	forced := unix.SetsockoptInt(probe, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, rcvBuf) == nil
	_ = unix.Close(probe)
	if !forced {
		b, err := os.ReadFile("/proc/sys/net/core/rmem_max")
		if err != nil {
			t.Fatal(err)
		}
		m, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil {
			t.Fatal(err)
		}
		want = 2 * min(rcvBuf, m)
	}
	for _, so := range s.socks {
		got, err := unix.GetsockoptInt(so.fd, unix.SOL_SOCKET, unix.SO_RCVBUF)
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Errorf("socket %v: SO_RCVBUF %d, want %d (SO_RCVBUFFORCE permitted: %v)", so.local, got, want, forced)
		}
	}
}

// TestStop checks that Stop wakes loops blocked in recvmmsg at once (by
// shutdown(SHUT_RD)), that the loops are gone and their sockets closed.
func TestStop(t *testing.T) {
	f, _ := newForwarder(t)
	s, err := New(Config{Name: "t", Addrs: loopbackAddrs(), Sockets: 3}, f)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Stop(context.Background()) })
	// A server stopped by the test before may still be winding down its
	// goroutines (Stop returns once the loops are done): let them go.
	want := 2*3*len(s.LocalAddrs()) + 1
	got := serverGoroutines()
	for end := time.Now().Add(2 * time.Second); got != want && time.Now().Before(end); got = serverGoroutines() {
		time.Sleep(10 * time.Millisecond)
	}
	if got != want {
		t.Fatalf("%d server goroutines, want %d", got, want)
	}
	exchange(t, s.LocalAddrs()[0], "ipv4.aws.example.internal.")
	time.Sleep(50 * time.Millisecond) // let every loop block in recvmmsg
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	start := time.Now()
	if err := s.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	el := time.Since(start)
	t.Logf("Stop took %v", el)
	if el > 200*time.Millisecond {
		t.Errorf("Stop took %v: the loops were not woken", el)
	}
	// Stop returns once the goroutine waiting for the loops has closed its
	// channel; that goroutine may still be on its way out.
	for deadline := time.Now().Add(500 * time.Millisecond); serverGoroutines() != 0; {
		if time.Now().After(deadline) {
			t.Fatalf("%d server goroutines left", serverGoroutines())
		}
		time.Sleep(time.Millisecond)
	}
	for _, so := range s.socks {
		if !so.closed {
			t.Fatalf("socket %d of %s not closed", so.fd, so.local)
		}
	}
	// The port is free again for a socket without SO_REUSEPORT.
	c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(s.LocalAddrs()[0]))
	if err != nil {
		t.Fatalf("port still bound after Stop: %v", err)
	}
	c.Close()
	if err := s.Stop(ctx); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
}

// TestStopWithMissInFlight stops the server while a miss is being resolved:
// its reply, when it comes, is dropped and counted, not sent on a closed (or
// reused) descriptor.
func TestStopWithMissInFlight(t *testing.T) {
	for _, tt := range []struct {
		name    string
		grace   time.Duration // Stop's context
		replied bool
	}{
		{"stop waits for the miss: the client gets its answer", 2 * time.Second, true},
		{"stop's deadline passes first: the late reply is dropped, not sent on a closed socket", 50 * time.Millisecond, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f, up := newForwarder(t)
			up.delay = 200 * time.Millisecond
			s, err := New(Config{Name: "t", Addrs: []string{"127.0.0.1:0"}, Sockets: 1}, f)
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Start(); err != nil {
				t.Fatal(err)
			}
			c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(s.LocalAddrs()[0]))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			q, _ := new(dns.Msg).SetQuestion("late.example.com.", dns.TypeA).Pack()
			if _, err := c.Write(q); err != nil {
				t.Fatal(err)
			}
			for s.Stats().Queries == 0 {
				time.Sleep(time.Millisecond)
			}
			ctx, cancel := context.WithTimeout(context.Background(), tt.grace)
			defer cancel()
			if err := s.Stop(ctx); err != nil {
				t.Fatal(err)
			}
			if tt.replied {
				_ = c.SetReadDeadline(time.Now().Add(time.Second))
				b := make([]byte, 512)
				if n, err := c.Read(b); err != nil || n < 12 {
					t.Fatalf("no reply after a graceful Stop: %v", err)
				}
				if st := s.Stats(); st.Replies != 1 {
					t.Fatalf("stats %+v", st)
				}
				return
			}
			for deadline := time.Now().Add(2 * time.Second); s.Stats().ReplyDrops == 0; {
				if time.Now().After(deadline) {
					t.Fatalf("stats %+v: the late reply was not dropped", s.Stats())
				}
				time.Sleep(5 * time.Millisecond)
			}
			if st := s.Stats(); st.Replies != 0 {
				t.Fatalf("stats %+v: a reply went out after the sockets closed", st)
			}
		})
	}
}

// TestStartFails binds a port another socket holds without SO_REUSEPORT:
// Start fails, names the address, and releases what it had opened.
func TestStartFails(t *testing.T) {
	f, _ := newForwarder(t)
	held, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	free, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	freeAddr := free.LocalAddr().String()
	free.Close()
	s, err := New(Config{Name: "t", Addrs: []string{freeAddr, held.LocalAddr().String()}, Sockets: 2}, f)
	if err != nil {
		t.Fatal(err)
	}
	err = s.Start()
	if err == nil || !strings.Contains(err.Error(), "do53[1]") {
		t.Fatalf("Start: %v, want an error naming do53[1]", err)
	}
	if s.LocalAddrs() != nil || len(s.loops) != 0 {
		t.Fatal("a failed Start left addresses or loops")
	}
	c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(freeAddr)))
	if err != nil {
		t.Fatalf("the first address is still bound: %v", err)
	}
	c.Close()
	if err := s.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
}
