package xsk

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/miekg/dns"
	"golang.org/x/sys/unix"

	"xdoh/datapath/xsk/xsktest"
)

func TestConfigNormalize(t *testing.T) {
	tests := []struct {
		name string
		cfg  SocketConfig
		err  string // substring; empty: valid
		want SocketConfig
	}{
		{name: "defaults", cfg: SocketConfig{Ifindex: 3}, want: SocketConfig{Ifindex: 3, FrameSize: 4096, NumFrames: 4096, RingSize: 2048}},
		{name: "set", cfg: SocketConfig{Ifindex: 3, Queue: 2, FrameSize: 2048, NumFrames: 100, RingSize: 64, ZeroCopy: ZeroCopyOff},
			want: SocketConfig{Ifindex: 3, Queue: 2, FrameSize: 2048, NumFrames: 100, RingSize: 64, ZeroCopy: ZeroCopyOff}},
		{name: "no ifindex", cfg: SocketConfig{}, err: "ifindex 0"},
		{name: "negative queue", cfg: SocketConfig{Ifindex: 1, Queue: -1}, err: "queue -1"},
		{name: "frame size", cfg: SocketConfig{Ifindex: 1, FrameSize: 3000}, err: "frame size 3000"},
		{name: "ring not a power of two", cfg: SocketConfig{Ifindex: 1, RingSize: 1000}, err: "ring size 1000"},
		{name: "negative frames", cfg: SocketConfig{Ifindex: 1, NumFrames: -5}, err: "frames -5"},
		{name: "mode", cfg: SocketConfig{Ifindex: 1, ZeroCopy: 7}, err: "ZeroCopyMode(7)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.cfg.normalize()
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("error %v, want one containing %q", err, tt.err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("normalize = %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
}

func TestFrames(t *testing.T) {
	f := NewFrames(2048, 4)
	if f.Len() != 4 {
		t.Fatalf("Len %d", f.Len())
	}
	a, _ := f.Get()
	b, _ := f.Get()
	if a != 0 || b != 2048 {
		t.Errorf("first frames %d, %d; want 0, 2048", a, b)
	}
	dst := make([]uint64, 5)
	if n := f.GetN(dst); n != 2 || dst[0]+dst[1] != 4096+6144 {
		t.Errorf("GetN = %d %v", n, dst[:n])
	}
	if _, ok := f.Get(); ok {
		t.Error("Get from an empty list")
	}
	f.Put(a + Headroom) // an RX address: rounded down to its frame
	f.PutN([]uint64{b + 77, 4096, 6144 + 2047})
	if n := f.GetN(dst); n != 4 {
		t.Fatalf("GetN after Put = %d", n)
	}
	seen := map[uint64]bool{}
	for _, x := range dst[:4] {
		seen[x] = true
	}
	if len(seen) != 4 || !seen[0] || !seen[2048] || !seen[4096] || !seen[6144] {
		t.Errorf("frames back %v", dst[:4])
	}
	f.PutN(dst[:4])
	defer func() {
		if recover() == nil {
			t.Error("a fifth Put did not panic")
		}
	}()
	f.Put(0)
}

// TestRing drives the ring logic against a fake kernel side in ordinary
// memory, across the wrap of the 32-bit indices.
func TestRing(t *testing.T) {
	const size = 8
	var shared [3]uint32 // producer, consumer, flags
	entries := make([]uint64, size)
	mk := func(start uint32, producer bool) *ring[uint64] {
		shared[0], shared[1] = start, start
		r := &ring[uint64]{producer: &shared[0], consumer: &shared[1], flags: &shared[2], entries: entries, size: size, mask: size - 1}
		r.init(producer)
		return r
	}

	// Producer ring (fill/TX): we produce, the "kernel" consumes.
	p := mk(^uint32(0)-2, true)
	idx, n := p.reserve(5)
	if n != 5 || idx != ^uint32(0)-2 {
		t.Fatalf("reserve(5) = %d, %d", idx, n)
	}
	for i := range n {
		p.entries[(idx+i)&p.mask] = uint64(100 + i)
	}
	p.submit()
	if shared[0] != idx+5 || !p.pending() {
		t.Fatalf("producer index %d after submit, pending %v", shared[0], p.pending())
	}
	if _, n := p.reserve(4); n != 3 {
		t.Fatalf("reserve(4) with 3 free = %d", n)
	}
	p.submit()
	if _, n := p.reserve(1); n != 0 {
		t.Fatalf("reserve on a full ring = %d", n)
	}
	// The kernel consumes 6 entries, in order.
	for i := range uint32(6) {
		if got := entries[(shared[1]+i)&(size-1)]; i < 5 && got != uint64(100+i) {
			t.Fatalf("entry %d = %d", i, got)
		}
	}
	shared[1] += 6
	if _, n := p.reserve(7); n != 6 {
		t.Fatalf("reserve(7) after the kernel freed 6 = %d", n)
	}
	p.submit()
	shared[1] = shared[0]
	if p.pending() {
		t.Error("pending with everything consumed")
	}

	// Consumer ring (RX/completion): the "kernel" produces.
	c := mk(^uint32(0)-1, false)
	if _, n := c.peek(4); n != 0 {
		t.Fatalf("peek on an empty ring = %d", n)
	}
	for i := range uint32(5) {
		entries[(shared[0]+i)&(size-1)] = uint64(200 + i)
	}
	shared[0] += 5
	idx, n = c.peek(3)
	if n != 3 || c.entries[idx&c.mask] != 200 {
		t.Fatalf("peek(3) = %d, %d", idx, n)
	}
	c.release()
	if shared[1] != shared[0]-2 {
		t.Fatalf("consumer index %d, producer %d", shared[1], shared[0])
	}
	idx, n = c.peek(8)
	if n != 2 || c.entries[idx&c.mask] != 203 || c.entries[(idx+1)&c.mask] != 204 {
		t.Fatalf("peek(8) = %d, %d", idx, n)
	}
	c.release()

	shared[2] = unix.XDP_RING_NEED_WAKEUP
	if !c.needWakeup() {
		t.Error("needWakeup false with the flag set")
	}
}

// testNet is a veth pair between two network namespaces of the test's own:
// the server end (an AF_XDP socket, no IP addresses) and the client end
// (a normal stack with link-local IPv4 and ULA IPv6 addresses, and static
// neighbour entries for the server's addresses, which nothing in the
// server namespace would answer ARP or ND for).
type testNet struct {
	serverNS, clientNS string
	serverIf, clientIf string
}

var (
	testNetSeq  atomic.Int32
	serverMAC          = "02:00:00:00:53:01"
	clientMAC          = "02:00:00:00:53:02"
	testServer4        = netip.MustParseAddr("169.254.53.1")
	testClient4        = netip.MustParseAddr("169.254.53.2")
	testServer6        = netip.MustParseAddr("fd00:53::1")
	testClient6        = netip.MustParseAddr("fd00:53::2")
	testPort    uint16 = 5300
)

func newTestNet(t testing.TB) *testNet {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: network namespaces, BPF and AF_XDP")
	}
	id := fmt.Sprintf("%d-%d", os.Getpid(), testNetSeq.Add(1))
	short := fmt.Sprintf("%d%d", os.Getpid()%100000, testNetSeq.Load())
	n := &testNet{
		serverNS: "xskt-" + id + "-s", clientNS: "xskt-" + id + "-c",
		serverIf: "xts" + short, clientIf: "xtc" + short,
	}
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	ip("netns", "add", n.serverNS)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", n.serverNS).Run() })
	ip("netns", "add", n.clientNS)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", n.clientNS).Run() })
	// One queue each way: the redirect uses the RX queue index, and
	// socket and program must agree on it.
	ip("link", "add", n.serverIf, "netns", n.serverNS, "numtxqueues", "1", "numrxqueues", "1", "type", "veth",
		"peer", "name", n.clientIf, "netns", n.clientNS, "numtxqueues", "1", "numrxqueues", "1")
	ip("-n", n.serverNS, "link", "set", n.serverIf, "address", serverMAC, "up")
	ip("-n", n.clientNS, "link", "set", n.clientIf, "address", clientMAC, "up")
	ip("-n", n.clientNS, "addr", "add", testClient4.String()+"/24", "dev", n.clientIf)
	ip("-n", n.clientNS, "addr", "add", testClient6.String()+"/64", "dev", n.clientIf, "nodad")
	ip("-n", n.clientNS, "neigh", "replace", testServer4.String(), "lladdr", serverMAC, "dev", n.clientIf, "nud", "permanent")
	ip("-n", n.clientNS, "neigh", "replace", testServer6.String(), "lladdr", serverMAC, "dev", n.clientIf, "nud", "permanent")
	return n
}

// rig is an AF_XDP socket on queue 0 of the server end, behind a minimal
// XDP program that redirects every packet of a queue with a socket in the
// XSKMAP, and passes the rest.
type rig struct {
	net    *testNet
	s      *Socket
	frames *Frames
	rx     []unix.XDPDesc
	tx     []unix.XDPDesc
	addrs  []uint64
}

func newRig(t testing.TB, cfg SocketConfig, mode link.XDPAttachFlags) *rig {
	t.Helper()
	n := newTestNet(t)
	r := &rig{net: n, rx: make([]unix.XDPDesc, 64), tx: make([]unix.XDPDesc, 64), addrs: make([]uint64, 64)}
	err := xsktest.In(n.serverNS, func() error {
		ifi, err := net.InterfaceByName(n.serverIf)
		if err != nil {
			return err
		}
		xsks, err := ebpf.NewMap(&ebpf.MapSpec{Name: "xsks", Type: ebpf.XSKMap, KeySize: 4, ValueSize: 4, MaxEntries: 1})
		if err != nil {
			return fmt.Errorf("creating the XSKMAP: %w", err)
		}
		t.Cleanup(func() { xsks.Close() })
		prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
			Name:    "xsk_redirect",
			Type:    ebpf.XDP,
			License: "Dual MIT/GPL",
			Instructions: asm.Instructions{
				// return bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS)
				asm.LoadMem(asm.R2, asm.R1, 16, asm.Word), // struct xdp_md: rx_queue_index
				asm.LoadMapPtr(asm.R1, xsks.FD()),
				asm.Mov.Imm(asm.R3, 2), // XDP_PASS
				asm.FnRedirectMap.Call(),
				asm.Return(),
			},
		})
		if err != nil {
			return fmt.Errorf("loading the redirect program: %w", err)
		}
		t.Cleanup(func() { prog.Close() })
		l, err := link.AttachXDP(link.XDPOptions{Program: prog, Interface: ifi.Index, Flags: mode})
		if err != nil {
			return fmt.Errorf("attaching: %w", err)
		}
		t.Cleanup(func() { l.Close() })
		cfg.Ifindex = ifi.Index
		if r.s, err = Open(cfg); err != nil {
			return err
		}
		t.Cleanup(func() {
			if err := r.s.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
		})
		return xsks.Put(uint32(0), uint32(r.s.FD()))
	})
	if err != nil {
		t.Fatal(err)
	}
	r.frames = NewFrames(r.s.FrameSize(), r.s.NumFrames())
	// Half the frames wait for packets, the rest carry replies.
	fill := make([]uint64, min(r.s.NumFrames()/2, r.s.cfg.RingSize))
	k := r.frames.GetN(fill)
	if got := r.s.Fill(fill[:k]); got != k {
		t.Fatalf("Fill took %d of %d", got, k)
	}
	return r
}

// dial returns a UDP socket of the client namespace connected to the
// server's address, with a receive timeout: a blocking descriptor, so a
// test can send and read without allocating.
func (r *rig) dial(t testing.TB, server netip.Addr) int {
	t.Helper()
	var fd int
	err := xsktest.In(r.net.clientNS, func() (err error) {
		var sa unix.Sockaddr
		family := unix.AF_INET
		if server.Is4() {
			sa = &unix.SockaddrInet4{Port: int(testPort), Addr: server.As4()}
		} else {
			family = unix.AF_INET6
			sa = &unix.SockaddrInet6{Port: int(testPort), Addr: server.As16()}
		}
		if fd, err = unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0); err != nil {
			return err
		}
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 3}); err != nil {
			return err
		}
		return unix.Connect(fd, sa)
	})
	if err != nil {
		t.Fatalf("client socket: %v", err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

// next waits (at most 5 s) for a UDP frame to the test port and returns
// its descriptor and parse; other frames (the client's ND and MLD) go back
// to the fill ring.
func (r *rig) next(t testing.TB) (unix.XDPDesc, []byte, View) {
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		if r.s.Receive(r.rx[:1]) == 0 {
			if err := waitRX(r.s, 100); err != nil {
				t.Fatal(err)
			}
			continue
		}
		d := r.rx[0]
		pkt := r.s.Packet(d.Addr)
		if v, ok := Parse(pkt[:d.Len]); ok && v.Server(pkt).Port() == testPort {
			return d, pkt, v
		}
		r.addrs[0] = d.Addr
		if r.s.Fill(r.addrs[:1]) != 1 {
			t.Fatal("fill ring full")
		}
	}
	t.Fatal("no query arrived within 5 s")
	return unix.XDPDesc{}, nil, View{}
}

// complete waits (at most 2 s) until want sent frames came back, returns
// them to the free list and the addresses the kernel gave.
func (r *rig) complete(t testing.TB, want int) []uint64 {
	var got []uint64
	for deadline := time.Now().Add(2 * time.Second); len(got) < want; {
		n := r.s.Complete(r.addrs)
		for _, a := range r.addrs[:n] {
			got = append(got, a)
			r.frames.Put(a)
		}
		if n == 0 {
			if time.Now().After(deadline) {
				t.Fatalf("%d of %d transmitted frames completed within 2 s", len(got), want)
			}
			time.Sleep(time.Millisecond)
		}
	}
	return got
}

// TestSocket answers DNS queries from a normal UDP socket over a veth, in
// generic and native XDP, over IPv4 and IPv6: once in place (Reply on the
// received frame) and once as a miss (the frame goes back to the fill ring
// and BuildReply writes the answer into a free frame).
func TestSocket(t *testing.T) {
	for _, m := range []struct {
		name string
		mode link.XDPAttachFlags
		cfg  SocketConfig
	}{
		{"generic", link.XDPGenericMode, SocketConfig{FrameSize: 2048, NumFrames: 512, RingSize: 256}},
		{"native", link.XDPDriverMode, SocketConfig{}},
	} {
		t.Run(m.name, func(t *testing.T) {
			r := newRig(t, m.cfg, m.mode)
			if r.s.ZeroCopy() {
				t.Error("zero-copy on veth")
			}
			sent := 0
			for _, fam := range []struct {
				name           string
				server, client netip.Addr
			}{{"ipv4", testServer4, testClient4}, {"ipv6", testServer6, testClient6}} {
				t.Run(fam.name, func(t *testing.T) {
					c := r.dial(t, fam.server)
					for i, miss := range []bool{false, true} {
						name := fmt.Sprintf("q%d.%s.example.", i, fam.name)
						q := new(dns.Msg).SetQuestion(name, dns.TypeA)
						q.Id = uint16(1000 + i)
						qb, _ := q.Pack()
						if _, err := unix.Write(c, qb); err != nil {
							t.Fatalf("client send: %v", err)
						}

						d, pkt, v := r.next(t)
						if got := v.Client(pkt); got.Addr() != fam.client {
							t.Errorf("query from %v, want %v", got, fam.client)
						}
						if got := v.Server(pkt); got != netip.AddrPortFrom(fam.server, testPort) {
							t.Errorf("query to %v", got)
						}
						if d.Addr%uint64(r.s.FrameSize()) != Headroom {
							t.Errorf("RX data at offset %d in its frame, want %d", d.Addr%uint64(r.s.FrameSize()), Headroom)
						}
						got := new(dns.Msg)
						if err := got.Unpack(v.Payload(pkt)); err != nil || got.Id != q.Id {
							t.Fatalf("received query %v, %v", got, err)
						}
						resp := new(dns.Msg).SetReply(got)
						resp.Answer = append(resp.Answer, &dns.A{
							Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60},
							A:   net.IPv4(192, 0, 2, byte(i)),
						})
						answer, _ := resp.Pack()

						var out unix.XDPDesc
						if !miss {
							copy(pkt[v.PayloadOff:], answer)
							n := Reply(pkt, v, len(answer))
							out = unix.XDPDesc{Addr: d.Addr, Len: uint32(n)}
						} else {
							h := SaveHeader(pkt, v)
							r.addrs[0] = d.Addr
							if r.s.Fill(r.addrs[:1]) != 1 {
								t.Fatal("fill ring full")
							}
							addr, ok := r.frames.Get()
							if !ok {
								t.Fatal("no free frame")
							}
							n := BuildReply(r.s.Packet(addr), &h, answer)
							out = unix.XDPDesc{Addr: addr, Len: uint32(n)}
						}
						if out.Len == 0 {
							t.Fatal("no reply built")
						}
						r.tx[0] = out
						if r.s.Transmit(r.tx[:1]) != 1 {
							t.Fatal("TX ring full")
						}
						sent++

						buf := make([]byte, 4096)
						n, err := unix.Read(c, buf)
						if err != nil {
							t.Fatalf("client receive (miss %v): %v", miss, err)
						}
						echo := new(dns.Msg)
						if err := echo.Unpack(buf[:n]); err != nil {
							t.Fatalf("reply: %v", err)
						}
						if echo.Id != q.Id || !echo.Response || len(echo.Answer) != 1 ||
							!echo.Answer[0].(*dns.A).A.Equal(net.IPv4(192, 0, 2, byte(i))) {
							t.Errorf("reply %v", echo)
						}
						if done := r.complete(t, 1); done[0] != out.Addr {
							t.Errorf("completion returned %#x, transmitted %#x", done[0], out.Addr)
						}
					}
				})
			}
			st, err := r.s.Stats()
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("stats: %+v", st)
			if st.RxInvalidDescs != 0 || st.TxInvalidDescs != 0 || st.TxKickErrors != 0 {
				t.Errorf("stats %+v", st)
			}
			if st.TxKicks < uint64(sent) {
				t.Errorf("%d kicks for %d copy-mode transmits", st.TxKicks, sent)
			}
		})
	}
}

// TestOpen checks binding: zero-copy refused on veth, and a socket opened
// on the queue right after another one closed (EBUSY while the kernel
// releases the queue, which Open retries).
func TestOpen(t *testing.T) {
	r := newRig(t, SocketConfig{NumFrames: 64, RingSize: 32}, link.XDPGenericMode)
	var ifindex int
	err := xsktest.In(r.net.serverNS, func() error {
		ifi, err := net.InterfaceByName(r.net.serverIf)
		ifindex = ifi.Index
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	err = xsktest.In(r.net.serverNS, func() error {
		// The queue is taken by the rig's socket.
		if s, err := Open(SocketConfig{Ifindex: ifindex, NumFrames: 64, RingSize: 32}); err == nil {
			s.Close()
			return errors.New("a second socket bound to a taken queue")
		} else if !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("second socket on a taken queue: %v, want EBUSY", err)
		}
		if err := r.s.Close(); err != nil {
			return err
		}
		if err := r.s.Close(); err != nil {
			return fmt.Errorf("second Close: %w", err)
		}
		if _, err := r.s.Stats(); !errors.Is(err, unix.EBADF) {
			return fmt.Errorf("Stats after Close: %v", err)
		}
		for range 3 {
			s, err := Open(SocketConfig{Ifindex: ifindex, NumFrames: 64, RingSize: 32, ZeroCopy: ZeroCopyOff})
			if err != nil {
				return fmt.Errorf("reopening the queue: %w", err)
			}
			if err := s.Close(); err != nil {
				return err
			}
		}
		if s, err := Open(SocketConfig{Ifindex: ifindex, NumFrames: 64, RingSize: 32, ZeroCopy: ZeroCopyOn}); err == nil {
			s.Close()
			return errors.New("zero-copy bound on veth")
		} else if !errors.Is(err, unix.EOPNOTSUPP) {
			return fmt.Errorf("zero-copy on veth: %v, want EOPNOTSUPP", err)
		}
		if _, err := Open(SocketConfig{Ifindex: 9999, NumFrames: 64, RingSize: 32}); !errors.Is(err, unix.ENODEV) {
			return fmt.Errorf("unknown ifindex: %v, want ENODEV", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// cycle is one query through the socket: the client sends, the socket
// receives, answers in place (the query echoed with QR set), transmits,
// the client reads, the frame completes and goes back to the fill ring.
func (r *rig) cycle(tb testing.TB, c int, query, buf []byte) {
	if _, err := unix.Write(c, query); err != nil {
		tb.Fatal(err)
	}
	var d unix.XDPDesc
	var pkt []byte
	var v View
	for tries := 0; ; tries++ {
		if tries == 100 {
			tb.Fatal("no query within 100 waits")
		}
		if r.s.Receive(r.rx[:1]) == 0 {
			if err := waitRX(r.s, 50); err != nil {
				tb.Fatal(err)
			}
			continue
		}
		d = r.rx[0]
		pkt = r.s.Packet(d.Addr)
		var ok bool
		if v, ok = Parse(pkt[:d.Len]); ok && v.Server(pkt).Port() == testPort {
			break
		}
		r.addrs[0] = d.Addr
		r.s.Fill(r.addrs[:1])
	}
	pkt[v.PayloadOff+2] |= 0x80 // QR
	r.tx[0] = unix.XDPDesc{Addr: d.Addr, Len: uint32(Reply(pkt, v, v.PayloadLen))}
	if r.s.Transmit(r.tx[:1]) != 1 {
		tb.Fatal("TX ring full")
	}
	if n, err := unix.Read(c, buf); err != nil || n != len(query) {
		tb.Fatalf("client read %d bytes: %v", n, err)
	}
	for deadline := time.Now().Add(2 * time.Second); r.s.Complete(r.addrs[:1]) == 0; {
		if time.Now().After(deadline) {
			tb.Fatal("no completion within 2 s")
		}
	}
	r.s.Fill(r.addrs[:1])
}

func TestSocketAllocs(t *testing.T) {
	r := newRig(t, SocketConfig{NumFrames: 256, RingSize: 128}, link.XDPGenericMode)
	c := r.dial(t, testServer4)
	q, _ := new(dns.Msg).SetQuestion("alloc.example.", dns.TypeA).Pack()
	buf := make([]byte, 512)
	r.cycle(t, c, q, buf) // warm up
	if allocs := testing.AllocsPerRun(50, func() { r.cycle(t, c, q, buf) }); allocs != 0 {
		t.Errorf("%v allocations per receive/reply/transmit/complete cycle", allocs)
	}
}

// BenchmarkSocketCycle is one query's round trip through the socket (see
// cycle); most of the time is the client's system calls and the veth.
func BenchmarkSocketCycle(b *testing.B) {
	r := newRig(b, SocketConfig{NumFrames: 256, RingSize: 128}, link.XDPGenericMode)
	c := r.dial(b, testServer4)
	q, _ := new(dns.Msg).SetQuestion("bench.example.", dns.TypeA).Pack()
	buf := make([]byte, 512)
	b.ReportAllocs()
	for b.Loop() {
		r.cycle(b, c, q, buf)
	}
}

// TestSocketBurst answers a burst larger than the kernel's default copy-mode
// TX budget (32 per sendto) with one Transmit: every reply must arrive.
func TestSocketBurst(t *testing.T) {
	const burst = 100
	r := newRig(t, SocketConfig{NumFrames: 512, RingSize: 128}, link.XDPGenericMode)
	c := r.dial(t, testServer4)
	for i := range burst {
		q := new(dns.Msg).SetQuestion(fmt.Sprintf("b%d.example.", i), dns.TypeA)
		q.Id = uint16(i)
		b, _ := q.Pack()
		if _, err := unix.Write(c, b); err != nil {
			t.Fatal(err)
		}
	}
	descs := make([]unix.XDPDesc, 0, burst)
	rx := make([]unix.XDPDesc, 128)
	for deadline := time.Now().Add(5 * time.Second); len(descs) < burst; {
		if time.Now().After(deadline) {
			t.Fatalf("received %d of %d queries", len(descs), burst)
		}
		n := r.s.Receive(rx)
		if n == 0 {
			waitRX(r.s, 100)
		}
		for _, d := range rx[:n] {
			pkt := r.s.Packet(d.Addr)
			v, ok := Parse(pkt[:d.Len])
			if !ok || v.Server(pkt).Port() != testPort {
				r.frames.Put(d.Addr)
				continue
			}
			pkt[v.PayloadOff+2] |= 0x80
			descs = append(descs, unix.XDPDesc{Addr: d.Addr, Len: uint32(Reply(pkt, v, v.PayloadLen))})
		}
	}
	if n := r.s.Transmit(descs); n != burst {
		t.Fatalf("Transmit queued %d of %d", n, burst)
	}
	seen := make(map[uint16]bool)
	buf := make([]byte, 512)
	for len(seen) < burst {
		n, err := unix.Read(c, buf)
		if err != nil {
			t.Fatalf("%d of %d replies, then: %v", len(seen), burst, err)
		}
		m := new(dns.Msg)
		if err := m.Unpack(buf[:n]); err != nil || !m.Response {
			t.Fatalf("reply %v, %v", m, err)
		}
		seen[m.Id] = true
	}
	r.complete(t, burst)
	st, _ := r.s.Stats()
	t.Logf("kick tries %d, stats %+v", r.s.kickTries, st)
}

// waitRX polls s until its RX ring has packets or ms milliseconds pass
// (the loops wait in Go's poller instead).
func waitRX(s *Socket, ms int) error {
	fds := []unix.PollFd{{Fd: int32(s.FD()), Events: unix.POLLIN}}
	if _, err := unix.Poll(fds, ms); err != nil && err != unix.EINTR {
		return fmt.Errorf("polling AF_XDP socket: %w", err)
	}
	return nil
}
