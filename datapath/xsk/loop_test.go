package xsk

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"

	"xdoh/datapath/xsk/xsktest"
	"xdoh/forwarder"
	"xdoh/forwarder/cache"
	"xdoh/forwarder/group"
)

// The test handler serves a query by the last label of its name:
//
//	hit      Answer replies at once with an A record of hitIP
//	miss     Answer says false; Resolve replies later, from a timer's goroutine, with missIP
//	drop     Answer returns (nil, true): no reply
//	big      Answer replies at once with a bigSize-byte answer
//	bigmiss  Resolve replies later with a bigSize-byte answer
var (
	hitIP  = [4]byte{192, 0, 2, 1}
	missIP = [4]byte{192, 0, 2, 2}
)

// bigSize is larger than any reply a 1500-byte MTU can carry.
const bigSize = 3000

type answerKind int

const (
	kindBad answerKind = iota
	kindHit
	kindMiss
	kindDrop
	kindBig
	kindBigMiss
)

// kindOf reads the last label of the question name of msg and returns the
// end of the question; kindBad if msg has no well-formed question.
func kindOf(msg []byte) (answerKind, int) {
	var last []byte
	off := dnsHdrLen
	for {
		if off >= len(msg) {
			return kindBad, 0
		}
		n := int(msg[off])
		if n == 0 {
			break
		}
		if n > 63 || off+1+n > len(msg) {
			return kindBad, 0
		}
		last = msg[off+1 : off+1+n]
		off += 1 + n
	}
	qend := off + 1 + 4 // root label, type, class
	if qend > len(msg) {
		return kindBad, 0
	}
	// Comparisons of string(b) with a constant do not allocate.
	switch {
	case string(last) == "hit":
		return kindHit, qend
	case string(last) == "miss":
		return kindMiss, qend
	case string(last) == "drop":
		return kindDrop, qend
	case string(last) == "big":
		return kindBig, qend
	case string(last) == "bigmiss":
		return kindBigMiss, qend
	}
	return kindBad, qend
}

// appendAnswer appends to dst the answer to the query q (whose question
// ends at qend): q's header and question with QR and RA set, and A records
// of ip with compressed names, one or as many as make it size bytes long.
func appendAnswer(dst, q []byte, qend int, ip [4]byte, size int) []byte {
	start := len(dst)
	dst = append(dst, q[:qend]...)
	dst[start+2] |= 0x80 // QR
	dst[start+3] = 0x80  // RA, NOERROR
	n := 0
	for n == 0 || len(dst)-start < size {
		dst = append(dst, 0xc0, dnsHdrLen, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, ip[0], ip[1], ip[2], ip[3])
		n++
	}
	h := dst[start:]
	binary.BigEndian.PutUint16(h[6:], uint16(n)) // ANCOUNT
	binary.BigEndian.PutUint16(h[8:], 0)
	binary.BigEndian.PutUint16(h[10:], 0)
	return dst
}

// testHandler is a Handler shaped like the forwarder's: see the kinds
// above. It records what it finds wrong with a request; report checks.
type testHandler struct {
	listener string
	// delay is the longest a miss waits before done; each waits a quarter
	// to all of it, by its ID, so that answers overtake each other.
	delay time.Duration

	mu       sync.Mutex
	problems []string
}

var _ Handler = (*testHandler)(nil)

func (h *testHandler) problem(format string, args ...any) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.problems) < 20 {
		h.problems = append(h.problems, fmt.Sprintf(format, args...))
	}
}

// report fails t with what the handler found wrong.
func (h *testHandler) report(t testing.TB) {
	t.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, p := range h.problems {
		t.Error("handler: " + p)
	}
}

// check returns the kind of r, recording a problem for a request the
// datapath should not have passed on.
func (h *testHandler) check(r *forwarder.Request) (answerKind, int) {
	k, qend := kindOf(r.Msg)
	switch {
	case k == kindBad:
		h.problem("request %x: no question the test sent", r.Msg)
	case r.Msg[2]&0x80 != 0:
		h.problem("request %x: QR set (a reply handed over as a query)", r.Msg)
		k = kindBad
	case r.Transport != forwarder.TransportUDP || r.Listener != h.listener ||
		!r.Client.IsValid() || r.Client.Port() == 0:
		h.problem("request from %v over %v for listener %q", r.Client, r.Transport, r.Listener)
	}
	return k, qend
}

func (h *testHandler) Answer(r *forwarder.Request, out []byte) ([]byte, bool) {
	switch k, qend := h.check(r); k {
	case kindHit:
		return appendAnswer(out[:0], r.Msg, qend, hitIP, 0), true
	case kindBig:
		return appendAnswer(out[:0], r.Msg, qend, hitIP, bigSize), true
	case kindMiss, kindBigMiss:
		return nil, false
	}
	return nil, true // drop, and whatever the test did not send
}

func (h *testHandler) Resolve(r *forwarder.Request, _ []byte, done func([]byte)) ([]byte, bool) {
	k, qend := kindOf(r.Msg)
	size := 0
	switch k {
	case kindMiss:
	case kindBigMiss:
		size = bigSize
	default:
		h.problem("Resolve called for %x", r.Msg)
		return nil, true
	}
	q := bytes.Clone(r.Msg) // r.Msg is the datapath's frame
	d := h.delay * time.Duration(binary.BigEndian.Uint16(q)%4+1) / 4
	time.AfterFunc(d, func() { done(appendAnswer(nil, q, qend, missIP, size)) })
	return nil, false
}

// inServerNS runs f on a thread that has entered network namespace ns and
// a mount namespace of its own with the sysfs of ns on /sys, as `ip netns
// exec` does: New and Start look the interface up, count its queues under
// /sys/class/net and open the sockets in the calling thread's namespaces,
// and sysfs lists the interfaces of the network namespace it was mounted
// in, not the caller's. The thread gets its own namespaces back before
// the goroutine ends, still locked, so that the runtime ends it: if it is
// the main thread, which the runtime parks instead, /proc/self/ns/net
// (xsktest.In's way back) stays the test's namespace.
func inServerNS(ns string, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		errc <- func() (err error) {
			var orig [2]*os.File // this thread's network and mount namespaces
			for i, kind := range []string{"net", "mnt"} {
				if orig[i], err = os.Open("/proc/thread-self/ns/" + kind); err != nil {
					return err
				}
				defer orig[i].Close()
			}
			h, err := os.Open("/run/netns/" + ns)
			if err != nil {
				return err
			}
			defer h.Close()
			if err := unix.Setns(int(h.Fd()), unix.CLONE_NEWNET); err != nil {
				return fmt.Errorf("entering netns %s: %w", ns, err)
			}
			defer func() {
				if e := unix.Setns(int(orig[1].Fd()), unix.CLONE_NEWNS); e != nil {
					err = errors.Join(err, fmt.Errorf("restoring the mount namespace: %w", e))
				}
				if e := unix.Setns(int(orig[0].Fd()), unix.CLONE_NEWNET); e != nil {
					err = errors.Join(err, fmt.Errorf("leaving netns %s: %w", ns, e))
				}
			}()
			if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
				return fmt.Errorf("unsharing the mount namespace: %w", err)
			}
			if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_SLAVE, ""); err != nil {
				return fmt.Errorf("making / a slave mount: %w", err)
			}
			if err := unix.Mount(ns, "/sys", "sysfs", 0, ""); err != nil {
				return fmt.Errorf("mounting the sysfs of netns %s: %w", ns, err)
			}
			return f()
		}()
	}()
	return <-errc
}

func serverAddrs(p *xsktest.Pair) []netip.AddrPort {
	return []netip.AddrPort{
		netip.AddrPortFrom(netip.MustParseAddr(p.Server4), 53),
		netip.AddrPortFrom(netip.MustParseAddr(p.Server6), 53),
	}
}

// startServer starts a Server for h on the server end of p and stops it
// in Cleanup (a second Stop does nothing).
func startServer(t testing.TB, p *xsktest.Pair, cfg Config, h Handler) *Server {
	t.Helper()
	var s *Server
	err := inServerNS(p.ServerNS, func() (err error) {
		if s, err = New(cfg, h); err != nil {
			return err
		}
		return s.Start()
	})
	if err != nil {
		t.Fatalf("starting the server: %v", err)
	}
	t.Cleanup(func() { stopServer(t, s) })
	return s
}

func stopServer(t testing.TB, s *Server) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Stop(ctx); err != nil {
		t.Errorf("Stop: %v", err)
	}
}

// dialServer returns a UDP socket of the client namespace connected to
// addr port 53.
func dialServer(t testing.TB, p *xsktest.Pair, network, addr string) net.Conn {
	t.Helper()
	c, err := xsktest.Dial(p.ClientNS, network, net.JoinHostPort(addr, "53"))
	if err != nil {
		t.Fatalf("client socket: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func packA(id uint16, name string) []byte {
	m := new(dns.Msg).SetQuestion(name, dns.TypeA)
	m.Id = id
	b, _ := m.Pack() // a lone question always packs
	return b
}

// readReply reads one datagram within wait and unpacks it; n is its size.
func readReply(c net.Conn, buf []byte, wait time.Duration) (m *dns.Msg, n int, err error) {
	if err := c.SetReadDeadline(time.Now().Add(wait)); err != nil {
		return nil, 0, err
	}
	if n, err = c.Read(buf); err != nil {
		return nil, 0, err
	}
	m = new(dns.Msg)
	if err := m.Unpack(buf[:n]); err != nil {
		return nil, n, fmt.Errorf("reply %x: %w", buf[:n], err)
	}
	return m, n, nil
}

// checkAnswer checks that m answers the query for name with one A record
// of ip.
func checkAnswer(m *dns.Msg, name string, ip [4]byte) error {
	if !m.Response || len(m.Question) != 1 || m.Question[0].Name != name || len(m.Answer) != 1 {
		return fmt.Errorf("reply %d for %q: %v", m.Id, name, m)
	}
	if a, ok := m.Answer[0].(*dns.A); !ok || !a.A.Equal(net.IP(ip[:])) {
		return fmt.Errorf("reply %d for %q: answer %v, want %v", m.Id, name, m.Answer[0], net.IP(ip[:]))
	}
	return nil
}

// expectSilence fails unless nothing more arrives on c within wait.
func expectSilence(c net.Conn, buf []byte, wait time.Duration) error {
	m, _, err := readReply(c, buf, wait)
	if err == nil {
		return fmt.Errorf("an unexpected reply: %v", m)
	}
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		return err
	}
	return nil
}

// waitStats waits up to 2 s for s's counters to reach want (a reply is
// counted just after it is handed to the kernel, so the client may see it
// first) and fails if they do not.
func waitStats(t testing.TB, s *Server, want Stats) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for {
		got := s.Stats()
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("stats %+v\n      want %+v", got, want)
			for _, ifc := range s.Interfaces() {
				t.Logf("%s: %+v", ifc.Name, ifc)
			}
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// xdpAttached says whether the server's interface has an XDP program.
func xdpAttached(t testing.TB, p *xsktest.Pair) bool {
	t.Helper()
	out, err := exec.Command("ip", "-n", p.ServerNS, "-d", "link", "show", "dev", p.ServerIf).CombinedOutput()
	if err != nil {
		t.Fatalf("ip link show: %v\n%s", err, out)
	}
	return strings.Contains(string(out), "prog/xdp")
}

// TestServerAnswers runs a Server on a two-queue veth, in generic and
// native mode, and sends it hits, misses and a query that gets no reply
// from IPv4 and IPv6 sockets: each answered query gets its answer, nothing
// else arrives, the counters agree, and Stop detaches the program.
func TestServerAnswers(t *testing.T) {
	for _, mode := range []Mode{ModeGeneric, ModeNative} {
		t.Run(mode.String(), func(t *testing.T) {
			p := xsktest.NewPair(t, 2)
			h := &testHandler{listener: "t", delay: 10 * time.Millisecond}
			s := startServer(t, p, Config{Name: "t", Addrs: serverAddrs(p), Interfaces: []string{p.ServerIf}, Mode: mode}, h)
			if got := s.Modes()[p.ServerIf]; got != mode.String() {
				t.Errorf("attached in %s mode, want %s", got, mode)
			}
			if !xdpAttached(t, p) {
				t.Fatal("no XDP program on the server's interface after Start")
			}

			type expect struct {
				name string
				ip   [4]byte
			}
			var want Stats
			buf := make([]byte, 4096)
			// Two sockets per family: their flows may hash to either queue.
			for ci, c := range []struct{ network, addr string }{
				{"udp4", p.Server4}, {"udp4", p.Server4}, {"udp6", p.Server6}, {"udp6", p.Server6},
			} {
				conn := dialServer(t, p, c.network, c.addr)
				pending := map[uint16]expect{}
				send := func(id uint16, name string) {
					if _, err := conn.Write(packA(id, name)); err != nil {
						t.Fatalf("client send: %v", err)
					}
					want.Queries++
				}
				for i := range 5 {
					hit := fmt.Sprintf("h%d.c%d.hit.", i, ci)
					miss := fmt.Sprintf("m%d.c%d.miss.", i, ci)
					pending[uint16(100+i)] = expect{hit, hitIP}
					pending[uint16(200+i)] = expect{miss, missIP}
					send(uint16(100+i), hit)
					send(uint16(200+i), miss)
					if i == 2 {
						send(300, fmt.Sprintf("d.c%d.drop.", ci))
					}
				}
				want.Replies += uint64(len(pending))
				want.Misses += 5
				for len(pending) > 0 {
					m, _, err := readReply(conn, buf, 3*time.Second)
					if err != nil {
						t.Fatalf("%s socket %d: %d replies missing, then: %v", c.network, ci, len(pending), err)
					}
					e, ok := pending[m.Id]
					if !ok {
						t.Fatalf("%s socket %d: reply %d answers nothing pending: %v", c.network, ci, m.Id, m)
					}
					delete(pending, m.Id)
					if err := checkAnswer(m, e.name, e.ip); err != nil {
						t.Error(err)
					}
				}
				if err := expectSilence(conn, buf, 200*time.Millisecond); err != nil {
					t.Errorf("%s socket %d: %v", c.network, ci, err)
				}
			}
			waitStats(t, s, want)
			h.report(t)
			for _, ifc := range s.Interfaces() {
				for _, so := range ifc.Sockets {
					t.Logf("queue %d: zero-copy %v, %+v", so.Queue, so.ZeroCopy, so.Kernel)
				}
			}

			stopServer(t, s)
			if xdpAttached(t, p) {
				t.Error("the XDP program is still attached after Stop")
			}
		})
	}
}

// TestServerFrameOwnership pipelines thousands of hits and misses through
// a Server with a 64-frame UMEM, 32-entry rings and batches of 16, so that
// the fill ring often takes only part of what refill offers. Every frame
// must stay in one place at a time: a frame left on the free list after
// the fill ring took it is later written by a reply while the kernel
// receives a query into it (a Malformed query, a lost or a wrong answer),
// and one freed twice is received into twice.
func TestServerFrameOwnership(t *testing.T) {
	const (
		sockets = 4
		window  = 4 // in flight per socket: 16 in all, a whole batch
		each    = 800
	)
	p := xsktest.NewPair(t, 1)
	h := &testHandler{listener: "t", delay: 2 * time.Millisecond}
	s := startServer(t, p, Config{
		Name: "t", Addrs: serverAddrs(p), Interfaces: []string{p.ServerIf}, Mode: ModeGeneric,
		Frames: 64, RingSize: 32, Batch: 16,
	}, h)

	isMiss := func(i int) bool { return i%3 == 1 }
	errs := make(chan error, sockets)
	var wg sync.WaitGroup
	for si := range sockets {
		network, addr := "udp4", p.Server4
		if si%2 == 1 {
			network, addr = "udp6", p.Server6
		}
		c := dialServer(t, p, network, addr)
		wg.Go(func() {
			if err := pipeline(c, si, each, window, isMiss); err != nil {
				errs <- fmt.Errorf("%s socket %d: %w", network, si, err)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	misses := 0
	for i := range each {
		if isMiss(i) {
			misses++
		}
	}
	waitStats(t, s, Stats{Queries: sockets * each, Replies: sockets * each, Misses: uint64(sockets * misses)})
	h.report(t)
}

// pipeline sends total queries on c, window at a time (one more as each
// reply arrives), and checks that each reply answers a query still
// pending, with its name and the right record, and that nothing else
// arrives.
func pipeline(c net.Conn, si, total, window int, isMiss func(int) bool) error {
	pending := make(map[uint16]string, window)
	next := 0
	send := func() error {
		kind := "hit"
		if isMiss(next) {
			kind = "miss"
		}
		name := fmt.Sprintf("q%d.s%d.%s.", next, si, kind)
		pending[uint16(next)] = name
		next++
		_, err := c.Write(packA(uint16(next-1), name))
		return err
	}
	for next < min(window, total) {
		if err := send(); err != nil {
			return err
		}
	}
	buf := make([]byte, 4096)
	for got := 0; got < total; got++ {
		m, _, err := readReply(c, buf, 3*time.Second)
		if err != nil {
			return fmt.Errorf("%d of %d replies, %d pending, then: %w", got, total, len(pending), err)
		}
		name, ok := pending[m.Id]
		if !ok {
			return fmt.Errorf("reply %d (%d of %d) answers no pending query (a duplicate or for another query): %v", m.Id, got, total, m)
		}
		delete(pending, m.Id)
		ip := hitIP
		if isMiss(int(m.Id)) {
			ip = missIP
		}
		if err := checkAnswer(m, name, ip); err != nil {
			return err
		}
		if next < total {
			if err := send(); err != nil {
				return err
			}
		}
	}
	return expectSilence(c, buf, 100*time.Millisecond)
}

// TestServerTruncates: an answer larger than the link's MTU allows goes
// out cut to its question with TC set, in place (hit) and built in a free
// frame (miss), over IPv4 and IPv6, and reaches the client, so it fits.
func TestServerTruncates(t *testing.T) {
	p := xsktest.NewPair(t, 1)
	h := &testHandler{listener: "t", delay: time.Millisecond}
	s := startServer(t, p, Config{Name: "t", Addrs: serverAddrs(p), Interfaces: []string{p.ServerIf}, Mode: ModeGeneric}, h)
	var mtu int
	if err := xsktest.In(p.ServerNS, func() error {
		ifi, err := net.InterfaceByName(p.ServerIf)
		if err == nil {
			mtu = ifi.MTU
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if mtu >= bigSize {
		t.Fatalf("MTU %d: the test needs one below %d", mtu, bigSize)
	}
	buf := make([]byte, 65536)
	for _, c := range []struct {
		network, addr string
		ipHdr         int
	}{{"udp4", p.Server4, ipv4HdrLen}, {"udp6", p.Server6, ipv6HdrLen}} {
		t.Run(c.network, func(t *testing.T) {
			conn := dialServer(t, p, c.network, c.addr)
			for id, name := range []string{"t.big.", "t.bigmiss."} {
				if _, err := conn.Write(packA(uint16(id), name)); err != nil {
					t.Fatal(err)
				}
				m, n, err := readReply(conn, buf, 3*time.Second)
				if err != nil {
					t.Fatalf("%s: %v (a reply longer than the MTU is dropped by the device)", name, err)
				}
				if m.Id != uint16(id) || !m.Response || !m.Truncated || len(m.Question) != 1 || m.Question[0].Name != name {
					t.Errorf("%s: reply %v", name, m)
				}
				if room := mtu - c.ipHdr - udpHdrLen; n > room {
					t.Errorf("%s: %d-byte reply, more than the %d an MTU of %d leaves", name, n, room, mtu)
				}
			}
		})
	}
	waitStats(t, s, Stats{Queries: 4, Replies: 4, Misses: 2, Truncated: 4})
	h.report(t)
}

// loopRig is a loop the test drives itself: the program, socket and loop
// that Server.startIface makes on a one-queue veth in generic mode, with
// the outbox running but no goroutine calling run, so that the test may
// call process on frames it writes into the UMEM.
type loopRig struct {
	p    *xsktest.Pair
	s    *Server
	l    *loop
	c    net.Conn // connected to the server's IPv4 address
	tmpl []byte   // a query frame as the kernel delivered it
	off  uint64   // where in its frame the kernel put it
	id   uint16   // the template's DNS ID
}

// newLoopRig sets the loop up for h and receives one real query for name
// from the client as the template, which process then answers.
func newLoopRig(t testing.TB, h Handler, name string) *loopRig {
	t.Helper()
	p := xsktest.NewPair(t, 1)
	s, err := New(Config{Name: "t", Addrs: serverAddrs(p), Interfaces: []string{p.ServerIf}, Mode: ModeGeneric,
		Frames: 512, RingSize: 256}, h)
	if err != nil {
		t.Fatal(err)
	}
	err = inServerNS(p.ServerNS, func() error {
		ifc, err := s.startIface(p.ServerIf)
		if ifc != nil {
			s.ifaces = append(s.ifaces, ifc)
		}
		return err
	})
	s.started = true // newLoop started the outboxes; no run goroutines: the test calls process
	t.Cleanup(func() { stopServer(t, s) })
	if err != nil {
		t.Fatalf("setting up the interface: %v", err)
	}
	r := &loopRig{p: p, s: s, l: s.ifaces[0].loops[0], c: dialServer(t, p, "udp4", p.Server4), id: 4242}

	if _, err := r.c.Write(packA(r.id, name)); err != nil {
		t.Fatal(err)
	}
	r.l.file.SetReadDeadline(time.Now().Add(3 * time.Second))
	n := r.l.recv()
	r.l.file.SetReadDeadline(time.Time{})
	if n != 1 {
		t.Fatalf("received %d frames, want the query", n)
	}
	d := r.l.rx[0]
	r.tmpl = bytes.Clone(r.l.sock.Packet(d.Addr)[:d.Len])
	r.off = d.Addr % uint64(r.l.sock.FrameSize())
	r.l.process(n)
	if m, _, err := readReply(r.c, make([]byte, 4096), 3*time.Second); err != nil || m.Id != r.id {
		t.Fatalf("the template query's reply: %v, %v", m, err)
	}
	return r
}

// inject writes frames into free UMEM frames, where the kernel puts
// received packets, as if the RX ring had delivered them, and processes
// them as one batch.
func (r *loopRig) inject(tb testing.TB, frames [][]byte) {
	l := r.l
	l.mu.Lock()
	for i, f := range frames {
		addr, ok := l.takeFrame()
		if !ok {
			l.mu.Unlock()
			tb.Fatal("no free frame")
		}
		a := addr&^(uint64(l.sock.FrameSize())-1) + r.off
		l.rx[i] = unix.XDPDesc{Addr: a, Len: uint32(copy(l.sock.Packet(a), f))}
	}
	l.mu.Unlock()
	l.process(len(frames))
}

// withID returns a copy of the template with DNS ID id.
func (r *loopRig) withID(id uint16) []byte {
	f := bytes.Clone(r.tmpl)
	v, ok := Parse(f)
	if !ok {
		panic("the template does not parse")
	}
	binary.BigEndian.PutUint16(f[v.PayloadOff:], id)
	return f
}

// echoUpstream answers every query with one A record of hitIP.
type echoUpstream struct{}

func (echoUpstream) String() string { return "echo" }

func (echoUpstream) Submit(q []byte, _ time.Duration, done func([]byte, error)) group.Canceler {
	k, qend := kindOf(q)
	if k == kindBad {
		done(nil, errors.New("no question"))
		return nil
	}
	done(appendAnswer(nil, q, qend, hitIP, 0), nil)
	return nil
}

// newHitRig is a loopRig in front of a forwarder with a cache, whose
// template query is in the cache.
func newHitRig(t testing.TB) (*loopRig, *forwarder.Forwarder) {
	t.Helper()
	f, err := forwarder.New(forwarder.Config{Default: []forwarder.Target{{Up: echoUpstream{}}}, Cache: cache.New(cache.Config{})})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Close)
	return newLoopRig(t, f, "cached.example.hit."), f // the template's miss fills the cache
}

// TestLoopHitAllocs: a batch of cache hits through process, from the
// received frames to the TX ring, allocates nothing. Its name puts it in
// make test's run without -race, where a sync.Pool keeps its items (the
// race detector drops some on purpose).
func TestLoopHitAllocs(t *testing.T) {
	const batch = 16
	r, f := newHitRig(t)
	frames := make([][]byte, batch)
	for i := range frames {
		frames[i] = r.withID(uint16(i))
	}
	misses, hits := r.l.misses.Load(), f.Stats().CacheHits
	r.inject(t, frames)
	buf := make([]byte, 4096)
	for i := range batch {
		m, _, err := readReply(r.c, buf, 3*time.Second)
		if err != nil || m.Id != uint16(i) || !m.Response || len(m.Answer) != 1 {
			t.Fatalf("reply %d: %v, %v", i, m, err)
		}
	}
	if allocs := testing.AllocsPerRun(100, func() { r.inject(t, frames) }); allocs != 0 {
		t.Errorf("%v allocations per batch of %d cache hits, want 0", allocs, batch)
	}
	if got := f.Stats().CacheHits - hits; got != 102*batch {
		t.Errorf("%d cache hits, want %d", got, 102*batch)
	}
	if got := r.l.misses.Load() - misses; got != 0 {
		t.Errorf("%d misses", got)
	}
	if st := r.s.Stats(); st.Malformed != 0 || st.NoFrame != 0 {
		t.Errorf("stats %+v", st)
	}
}

// BenchmarkLoopHit is process on batches of cache hits: Parse, the
// forwarder's cache, Reply and the TX ring with its kick (sendto), and the
// completion and fill rings; the frames are the template copied into the
// UMEM.
func BenchmarkLoopHit(b *testing.B) {
	r, _ := newHitRig(b)
	for _, batch := range []int{1, 32} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			frames := make([][]byte, batch)
			for i := range frames {
				frames[i] = r.withID(uint16(i))
			}
			r.inject(b, frames)
			b.ReportAllocs()
			for b.Loop() {
				r.inject(b, frames)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*batch), "ns/hit")
			if st := r.s.Stats(); st.NoFrame != 0 || st.Malformed != 0 {
				b.Errorf("stats %+v", st)
			}
		})
	}
}

// TestLoopMalformed: a frame that does not parse (the XDP program would
// have passed it to the kernel, so it is injected) is counted Malformed,
// gets no reply and its frame goes back to the free list; the well-formed
// query after it in the same batch is answered.
func TestLoopMalformed(t *testing.T) {
	r := newLoopRig(t, &testHandler{listener: "t"}, "q.hit.")
	v, ok := Parse(r.tmpl)
	if !ok || v.IPv6 {
		t.Fatal("the template is not an IPv4 query")
	}
	edit := func(f func(b []byte)) []byte {
		b := bytes.Clone(r.tmpl)
		f(b)
		return b
	}
	tests := []struct {
		name  string
		frame []byte
	}{
		{name: "garbage", frame: bytes.Repeat([]byte{0x5a}, 60)},
		{name: "cut short", frame: r.tmpl[:len(r.tmpl)-3]},
		{name: "ethernet header only", frame: r.tmpl[:ethHdrLen]},
		{name: "multicast destination", frame: edit(func(b []byte) { b[0] |= 1 })},
		{name: "udp length", frame: edit(func(b []byte) { b[v.L4Off+5]++ })},
		{name: "ipv4 options", frame: edit(func(b []byte) { b[v.L3Off] = 0x46 })},
		{name: "fragment", frame: edit(func(b []byte) { b[v.L3Off+6] |= 0x20 })},
		{name: "source port 0", frame: edit(func(b []byte) { b[v.L4Off], b[v.L4Off+1] = 0, 0 })},
	}
	buf := make([]byte, 4096)
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := r.s.Stats()
			r.l.mu.Lock()
			free := r.l.frames.Len()
			r.l.mu.Unlock()

			id := uint16(i)
			r.inject(t, [][]byte{tt.frame, r.withID(id)})
			m, _, err := readReply(r.c, buf, 3*time.Second)
			if err != nil || m.Id != id {
				t.Fatalf("first reply %v, %v; want the answer to query %d", m, err, id)
			}
			if err := expectSilence(r.c, buf, 100*time.Millisecond); err != nil {
				t.Error(err)
			}
			got := r.s.Stats()
			if d := got.Malformed - before.Malformed; d != 1 {
				t.Errorf("%d counted malformed, want 1", d)
			}
			if q, rp := got.Queries-before.Queries, got.Replies-before.Replies; q != 2 || rp != 1 {
				t.Errorf("%d queries, %d replies; want 2, 1", q, rp)
			}
			r.l.mu.Lock()
			r.l.reap()
			after := r.l.frames.Len()
			r.l.mu.Unlock()
			if after != free {
				t.Errorf("%d free frames after the batch, %d before", after, free)
			}
		})
	}
}
