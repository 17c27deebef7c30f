// Package udp is xdoh's Do53-over-UDP datapath on raw sockets: one goroutine
// per SO_REUSEPORT socket, recvmmsg(2) in, sendmmsg(2) out, and no heap
// allocation per query answered at once (cache hit, local zone, block, bad
// input).
//
// Why not gnet for UDP. Profiling cache hits on gnet's UDP event loops (the
// former udp_engine: gnet, removed; see docs/performance.md) showed them to
// be the limit: per datagram gnet allocates a Conn object and a sockaddr,
// x/sys's Recvfrom makes an extra getsockopt(SO_PROTOCOL) syscall per packet
// (anyToSockaddr's L2TP check), and every reply is its own sendto(2). Here
// one recvmmsg fetches up to Config.Batch datagrams into preallocated
// buffers, the client address is read straight from the raw sockaddr bytes,
// the forwarder's Answer writes each reply into the slot it is sent from, and
// one sendmmsg sends every reply of the batch. The per-batch work is
// (*loop).process, tested and benchmarked at zero allocations per cache hit.
//
// Misses. When Answer cannot answer, Resolve takes a copy of the query and
// resolves it; its done callback (pooled state holding a copy of the
// client's sockaddr and pktinfo) runs on the goroutine that completed the
// resolution, mostly an upstream connection's reader, and queues the reply
// on the socket's outbox (outbox.go), whose sender goroutine sends
// everything queued with one sendmmsg(2). Only when the outbox is full does
// the callback send its reply itself with sendto(2). Either way the reply
// leaves from the address the query arrived on; a full socket buffer drops
// it (MSG_DONTWAIT, EAGAIN), as UDP would, and counts it. Sends hold the
// socket's read lock so a late answer never goes to a closed (and perhaps
// reused) descriptor.
//
// Wildcard addresses. A socket bound to 0.0.0.0 or [::] receives each query
// with its destination address (IP_PKTINFO, IPV6_RECVPKTINFO) and sends the
// reply with it, in the same sendmmsg or in the miss path's sendmsg, so that
// a multi-homed host answers from the address the client asked; routing
// alone would pick another and the client would drop the reply.
//
// Memory is bounded per socket and allocated once: Batch receive slots of
// 4 KiB (larger datagrams arrive with MSG_TRUNC and are dropped and counted:
// no DNS query is that large), Batch send slots of 4 KiB (UDP replies are
// capped at dnsmsg.MaxUDPSize), so Batch × 8 KiB, plus 60 KiB so that the
// last slot still offers Answer the 64 KiB it may write before truncating
// (a cache entry is copied whole, then cut to the client's size), plus
// Batch × 64 octets for pktinfo on wildcard sockets.
//
// Waiting. With more than one P (GOMAXPROCS) a loop blocks its thread in
// recvmmsg: the runtime hands the thread's P to other goroutines, and a
// lone query is answered fastest. With one P that hand-off waits for the
// runtime's sysmon (20 µs to 10 ms): the resolving goroutines could not run
// while the loop waited, and a lone forwarded query took milliseconds. So
// with GOMAXPROCS 1 (one CPU, or a container's CPU limit) the socket is
// non-blocking and registered with the runtime's network poller, and a loop
// that finds nothing (recvmmsg with MSG_DONTWAIT) parks its goroutine until
// epoll says the socket is readable; no thread sits in the kernel. On 2
// cores with GOMAXPROCS=1 a lone forwarded query took half as long as with
// blocking; saturated, blocking forwarded slightly more, which is not worth
// the stalls. Config.Wait overrides the choice. WaitAdaptive decides at each wait, for a process
// that changes GOMAXPROCS between 1 and 2 at run time (cmd/xdoh does, see
// cmd/xdoh/internal/procs): with two Ps the poller made lone forwarded
// queries slower than blocking (more context switches per query). The
// figures are in docs/performance.md.
//
// Stopping. close(2) on the descriptor does not wake a thread blocked in
// recvmmsg. Stop sets a flag and calls shutdown(fd, SHUT_RD): on Linux this
// returns ENOTCONN for an unconnected UDP socket but still marks the socket
// RCV_SHUTDOWN and wakes its waiters, and a receive on a shut-down socket
// returns at once (an empty datagram) instead of blocking; a loop parked in
// the poller is woken by a read deadline in the past. The loop sees the
// flag, closes its socket and exits. The test TestStop checks the wake-up
// takes well under a second, in both modes.
package udp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"xdoh/forwarder"
)

// Handler is the part of the forwarder the datapath needs; *forwarder.Forwarder
// implements it.
type Handler interface {
	// Answer does not block. (resp, true) means reply now with resp (nil:
	// send nothing); false means call Resolve with the same request.
	Answer(r *forwarder.Request, out []byte) ([]byte, bool)
	// Resolve copies r and later calls done(resp) from another goroutine,
	// or returns (resp, true) to reply at once (overload SERVFAIL).
	Resolve(r *forwarder.Request, out []byte, done func(resp []byte)) ([]byte, bool)
}

// Config for one Do53/UDP listener.
type Config struct {
	Name  string   // listener name, copied into each Request
	Addrs []string // "127.0.0.1:53", "[::1]:53"
	// Sockets is the number of SO_REUSEPORT sockets (and loop goroutines)
	// per address; default GOMAXPROCS/2, at least 1. The kernel's UDP work
	// per packet (softirq, copies) needs CPU too: one loop per core halves
	// the batch each recvmmsg gets and measured slower on 2 cores.
	Sockets int
	Batch   int  // datagrams per recvmmsg/sendmmsg; default 32, at most 1024
	Wait    Wait // how a loop waits for datagrams; default WaitAuto
	// Steer, if set, is called by Start, once the loops run, with the
	// sockets of each address, to make the kernel give that address's
	// datagrams to them alone and none to other processes' sockets in
	// the same SO_REUSEPORT group (bpf.SteerReuseport: an overlapping
	// restart then loses nothing). It must not keep the descriptors.
	Steer func(addr netip.AddrPort, fds []int)
}

// Wait is how a loop waits for datagrams (see the package documentation).
type Wait int

const (
	// WaitAuto parks in the poller when GOMAXPROCS is 1, else blocks.
	WaitAuto Wait = iota
	// WaitBlocking blocks the loop's thread in recvmmsg.
	WaitBlocking
	// WaitPoller parks the loop's goroutine in the runtime's network poller.
	WaitPoller
	// WaitAdaptive decides at each wait: the poller while GOMAXPROCS is 1,
	// else blocked in recvmmsg. For a process that changes GOMAXPROCS at
	// run time (cmd/xdoh/internal/procs). The socket is registered with the
	// poller but left blocking: the poller's receive says MSG_DONTWAIT.
	WaitAdaptive
)

// autoWait resolves WaitAuto; a variable so that tests can run both modes.
var autoWait = func() Wait {
	if runtime.GOMAXPROCS(0) == 1 {
		return WaitPoller
	}
	return WaitBlocking
}

// Stats are the datapath's counters.
type Stats struct {
	Queries    uint64 // datagrams received
	Replies    uint64 // replies sent (at once and after resolving)
	ReplyDrops uint64 // replies that could not be sent (socket buffer full, bad address)
	Truncated  uint64 // datagrams over 4096 octets, dropped unanswered
	Batches    uint64 // recvmmsg calls that returned datagrams
}

const (
	defaultBatch = 32
	maxBatch     = 1024    // UIO_MAXIOV, the kernel's limit for sendmmsg/recvmmsg
	sockBuf      = 4 << 20 // SO_SNDBUF asked for
	// rcvBuf is the SO_RCVBUF asked for: queries that arrive while the
	// loop cannot run (a busy or paused box) wait here, and past it the
	// kernel drops them (RcvbufErrors). 16 MiB (the kernel doubles it for
	// its bookkeeping) hold about half a second of small queries at
	// 50,000 a second. SO_RCVBUFFORCE (CAP_NET_ADMIN, as Unbound does for
	// so-rcvbuf) passes net.core.rmem_max; without it the kernel caps the
	// size there (Debian's default: 208 KiB).
	rcvBuf = 16 << 20
)

// Server serves one listener's addresses.
type Server struct {
	cfg   Config
	h     Handler
	addrs []netip.AddrPort // as configured

	mu      sync.Mutex
	started bool
	stopped bool
	locals  []netip.AddrPort // as bound
	socks   []*socket
	loops   []*loop
	errs    []error // one per loop, written before the loop's wg.Done
	wg      sync.WaitGroup
	senders sync.WaitGroup // the outboxes' sender goroutines, ended by closing their sockets
	done    chan struct{}  // closed when every loop has returned

	stopping atomic.Bool
}

// New checks cfg and prepares a server; Start binds and serves.
func New(cfg Config, h Handler) (*Server, error) {
	if h == nil {
		return nil, errors.New("do53: no handler")
	}
	if len(cfg.Addrs) == 0 {
		return nil, errors.New("do53: no addresses")
	}
	addrs := make([]netip.AddrPort, len(cfg.Addrs))
	for i, a := range cfg.Addrs {
		ap, err := netip.ParseAddrPort(a)
		if err != nil {
			return nil, fmt.Errorf("do53[%d]: %q is not an IP:port address: %w", i, a, err)
		}
		addrs[i] = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	if cfg.Sockets <= 0 {
		cfg.Sockets = max(1, runtime.GOMAXPROCS(0)/2)
	}
	if cfg.Wait == WaitAuto {
		cfg.Wait = autoWait()
	}
	switch {
	case cfg.Batch <= 0:
		cfg.Batch = defaultBatch
	case cfg.Batch > maxBatch:
		return nil, fmt.Errorf("do53: batch %d is over the kernel's limit of %d", cfg.Batch, maxBatch)
	}
	return &Server{cfg: cfg, h: h, addrs: addrs, done: make(chan struct{})}, nil
}

// Start binds Sockets sockets to every address and starts one loop per
// socket. If any bind fails, the sockets already opened are closed and the
// error returned. A port 0 address is bound to a port the kernel picks, the
// same for all of its sockets (see LocalAddrs).
func (s *Server) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started {
		return fmt.Errorf("starting do53 listener %q: already started", s.cfg.Name)
	}
	var socks []*socket
	var locals []netip.AddrPort
	fail := func(err error) error {
		for _, so := range socks {
			so.close()
		}
		return fmt.Errorf("starting do53 listener %q: %w", s.cfg.Name, err)
	}
	for i, ap := range s.addrs {
		for j := 0; j < s.cfg.Sockets; j++ {
			so, err := listen(ap, s.cfg.Wait)
			if err != nil {
				return fail(fmt.Errorf("do53[%d] %s: socket %d: %w", i, ap, j, err))
			}
			socks = append(socks, so)
			ap = so.local // port 0: the others join the port the first got
		}
		locals = append(locals, ap)
	}
	s.started = true
	s.socks, s.locals = socks, locals
	s.errs = make([]error, len(socks))
	for i, so := range socks {
		l := newLoop(so, s.h, s.cfg.Name, s.cfg.Batch, &s.stopping)
		s.loops = append(s.loops, l)
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.errs[i] = l.run()
		}()
		s.senders.Add(1)
		go func() {
			defer s.senders.Done()
			l.out.run(so.quit)
		}()
	}
	go func() {
		s.wg.Wait()
		close(s.done)
	}()
	if s.cfg.Steer != nil {
		n := s.cfg.Sockets // each address's sockets, in order
		for i, ap := range locals {
			fds := make([]int, n)
			for j, so := range socks[i*n : (i+1)*n] {
				fds[j] = so.fd
			}
			s.cfg.Steer(ap, fds)
		}
	}
	return nil
}

// Stop wakes and ends every loop, which close their sockets, and waits for
// them until ctx is done. Replies still being resolved are dropped when they
// complete. It returns the first error a loop stopped with, if any.
func (s *Server) Stop(ctx context.Context) error {
	s.mu.Lock()
	if !s.started || s.stopped {
		s.mu.Unlock()
		return nil
	}
	s.stopped = true
	socks := s.socks
	s.mu.Unlock()

	s.stopping.Store(true)
	for _, so := range socks {
		so.shutdown()
	}
	defer func() {
		for _, so := range socks {
			so.close()
		}
		s.senders.Wait()
	}()
	select {
	case <-s.done:
	case <-ctx.Done():
		return fmt.Errorf("stopping do53 listener %q: %w", s.cfg.Name, ctx.Err())
	}
	// The loops have answered what was queued; misses still resolving get
	// their replies out before the sockets close (until ctx is done).
	for t := time.NewTicker(5 * time.Millisecond); ; {
		pending := int64(0)
		for _, so := range socks {
			pending += so.misses.Load()
		}
		if pending <= 0 {
			t.Stop()
			break
		}
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil // the rest are dropped and counted
		}
	}
	if err := errors.Join(s.errs...); err != nil {
		return fmt.Errorf("do53 listener %q: %w", s.cfg.Name, err)
	}
	return nil
}

// Stats sums the counters of every loop.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	loops := s.loops
	s.mu.Unlock()
	var st Stats
	for _, l := range loops {
		st.Queries += l.queries.Load()
		st.Replies += l.replies.Load()
		st.ReplyDrops += l.drops.Load()
		st.Truncated += l.truncated.Load()
		st.Batches += l.batches.Load()
	}
	return st
}

// LocalAddrs returns the bound address of each configured address, in order
// (with the port the kernel picked for port 0), or nil before Start.
func (s *Server) LocalAddrs() []netip.AddrPort {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]netip.AddrPort(nil), s.locals...)
}

// socket is one bound UDP socket. Its loop owns the descriptor; the lock
// keeps miss-path senders and Stop off it once the loop has closed it.
type socket struct {
	fd      int
	local   netip.AddrPort
	pktinfo bool // bound to a wildcard address: queries carry their destination

	file *os.File        // poller mode: owns fd once bound; registered with the poller
	rc   syscall.RawConn // file's, for waiting in the poller
	// adaptive: registered with the poller and blocking (WaitAdaptive).
	adaptive bool

	mu     sync.RWMutex
	closed bool
	quit   chan struct{} // closed with the socket: ends its outbox's sender
	misses atomic.Int64  // queries resolving (or queued in the outbox) whose reply goes out on this socket
}

// listen opens a UDP socket with SO_REUSEPORT bound to ap, for the wait
// mode: blocking (WaitBlocking), non-blocking and registered with the
// runtime's poller (WaitPoller), or both registered and blocking
// (WaitAdaptive).
func listen(ap netip.AddrPort, wait Wait) (*socket, error) {
	a := ap.Addr()
	family := unix.AF_INET6
	if a.Is4() {
		family = unix.AF_INET
	}
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err != nil {
		return nil, fmt.Errorf("creating socket: %w", err)
	}
	so := &socket{fd: fd, quit: make(chan struct{})}
	opts := []struct {
		level, opt, v int
		name          string
	}{
		{unix.SOL_SOCKET, unix.SO_REUSEADDR, 1, "SO_REUSEADDR"},
		{unix.SOL_SOCKET, unix.SO_REUSEPORT, 1, "SO_REUSEPORT"},
	}
	if family == unix.AF_INET6 {
		opts = append(opts, struct {
			level, opt, v int
			name          string
		}{unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1, "IPV6_V6ONLY"})
	}
	for _, o := range opts {
		if err := unix.SetsockoptInt(fd, o.level, o.opt, o.v); err != nil {
			so.close()
			return nil, fmt.Errorf("setting %s: %w", o.name, err)
		}
	}
	if a.IsUnspecified() {
		// A wildcard socket must send each reply from the address its query
		// was sent to, or a multi-homed host answers from whatever address
		// routing picks and the client drops it.
		lvl, opt, name := unix.IPPROTO_IP, unix.IP_PKTINFO, "IP_PKTINFO"
		if family == unix.AF_INET6 {
			lvl, opt, name = unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO, "IPV6_RECVPKTINFO"
		}
		if err := unix.SetsockoptInt(fd, lvl, opt, 1); err != nil {
			so.close()
			return nil, fmt.Errorf("setting %s: %w", name, err)
		}
		so.pktinfo = true
	}
	// Best effort: without CAP_NET_ADMIN the kernel caps these at
	// net.core.[rw]mem_max.
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, rcvBuf) != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, rcvBuf)
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, sockBuf)

	var sa unix.Sockaddr
	if family == unix.AF_INET {
		sa = &unix.SockaddrInet4{Port: int(ap.Port()), Addr: a.As4()}
	} else {
		sa6 := &unix.SockaddrInet6{Port: int(ap.Port()), Addr: a.As16()}
		if z := a.Zone(); z != "" {
			ifi, err := net.InterfaceByName(z)
			if err != nil {
				so.close()
				return nil, fmt.Errorf("zone of %s: %w", ap, err)
			}
			sa6.ZoneId = uint32(ifi.Index)
		}
		sa = sa6
	}
	if err := unix.Bind(fd, sa); err != nil {
		so.close()
		return nil, fmt.Errorf("binding %s: %w", ap, err)
	}
	got, err := unix.Getsockname(fd)
	if err != nil {
		so.close()
		return nil, fmt.Errorf("reading the bound address: %w", err)
	}
	switch got := got.(type) {
	case *unix.SockaddrInet4:
		so.local = netip.AddrPortFrom(netip.AddrFrom4(got.Addr), uint16(got.Port))
	case *unix.SockaddrInet6:
		so.local = netip.AddrPortFrom(netip.AddrFrom16(got.Addr).WithZone(a.Zone()), uint16(got.Port))
	}
	if wait == WaitPoller || wait == WaitAdaptive {
		// os.NewFile registers only a non-blocking descriptor.
		if err := unix.SetNonblock(fd, true); err != nil {
			so.close()
			return nil, fmt.Errorf("making the socket non-blocking: %w", err)
		}
		so.mu.Lock()
		so.file = os.NewFile(uintptr(fd), "udp "+so.local.String())
		so.mu.Unlock()
		rc, err := so.file.SyscallConn()
		if err != nil {
			so.close()
			return nil, fmt.Errorf("registering the socket with the poller: %w", err)
		}
		so.rc = rc
		so.adaptive = wait == WaitAdaptive
		if so.adaptive {
			// Blocking again, for recvmmsg without MSG_DONTWAIT. The
			// poller only watches the descriptor (epoll), and every read
			// through it says MSG_DONTWAIT; os.File never reads it.
			if err := unix.SetNonblock(fd, false); err != nil {
				so.close()
				return nil, fmt.Errorf("making the socket blocking: %w", err)
			}
		}
	}
	return so, nil
}

// shutdown wakes the loop blocked in recvmmsg (see the package comment).
// Linux answers ENOTCONN for an unconnected UDP socket yet shuts it down.
func (so *socket) shutdown() {
	so.mu.RLock()
	defer so.mu.RUnlock()
	if !so.closed {
		_ = unix.Shutdown(so.fd, unix.SHUT_RD)
		if so.file != nil {
			_ = so.file.SetReadDeadline(time.Unix(1, 0)) // wakes a loop parked in the poller
		}
	}
}

func (so *socket) close() {
	so.mu.Lock()
	defer so.mu.Unlock()
	if !so.closed {
		so.closed = true
		if so.file != nil {
			_ = so.file.Close() // leaves the poller, closes fd
		} else {
			_ = unix.Close(so.fd)
		}
		close(so.quit)
	}
}

// Name is the listener's name.
func (s *Server) Name() string { return s.cfg.Name }
