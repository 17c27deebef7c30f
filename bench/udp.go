//go:build linux

package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Do53 over UDP is the rig's own: the upstream client's sockets pick
// random IDs and match answers through a map, right for a forwarder and
// too slow for a load generator. Here each of the Clients connected
// sockets has one sender and one receiver goroutine, which move up to
// udpBatch datagrams per system call (sendmmsg, recvmmsg), and a query's
// ID is its index in the socket's table of queries in flight, so an
// answer finds its query with one array access. Nothing is allocated per
// query: the datagrams are written into buffers the socket owns.

const (
	udpBatch   = 64
	udpRecvBuf = 4096
	// udpScan is how often the receiver looks for timed-out queries (and
	// how long it waits for a datagram at most).
	udpScan = 20 * time.Millisecond
)

// mmsghdr is struct mmsghdr: Go pads it like C does.
type mmsghdr struct {
	hdr unix.Msghdr
	n   uint32
}

// udpTransport runs phases over UDP sockets.
type udpTransport struct {
	addr    *net.UDPAddr
	clients int
}

func newUDP(target string, cfg *Config) (*udpTransport, error) {
	ap, err := parseDo53(target)
	if err != nil {
		return nil, err
	}
	return &udpTransport{addr: net.UDPAddrFromAddrPort(ap), clients: cfg.Clients}, nil
}

func (t *udpTransport) Close() error { return nil }

func (t *udpTransport) run(ctx context.Context, p *phase) error {
	n := t.clients
	if !p.open() {
		n = min(n, p.outstanding)
	}
	socks := make([]*udpSocket, n)
	for i := range socks {
		size := slotTableSize(p, i, n)
		s, err := newUDPSocket(t.addr, size, p, i, n)
		if err != nil {
			for _, s := range socks[:i] {
				s.close()
			}
			return err
		}
		socks[i] = s
	}
	p.begin()
	var wg sync.WaitGroup
	for _, s := range socks {
		wg.Go(s.send)
		wg.Go(s.receive)
	}
	wg.Wait()
	for _, s := range socks {
		s.close()
	}
	return nil
}

// udpSocket is one connected socket with its sender and receiver.
type udpSocket struct {
	slotTable
	conn *net.UDPConn
	rc   syscall.RawConn

	// sender-owned
	sbufs  [udpBatch][MaxQuery]byte
	siov   [udpBatch]unix.Iovec
	smsgs  [udpBatch]mmsghdr
	sn     int // messages to send
	soff   int // sent so far
	serr   syscall.Errno
	sendFn func(uintptr) bool

	// receiver-owned
	rbufs  [udpBatch][udpRecvBuf]byte
	riov   [udpBatch]unix.Iovec
	rmsgs  [udpBatch]mmsghdr
	rn     int
	rerr   syscall.Errno
	recvFn func(uintptr) bool
}

func newUDPSocket(addr *net.UDPAddr, size int, p *phase, i, n int) (*udpSocket, error) {
	conn, err := net.DialUDP("udp", nil, addr)
	if err != nil {
		return nil, fmt.Errorf("opening a UDP socket to %s: %w", addr, err)
	}
	_ = conn.SetReadBuffer(4 << 20)
	_ = conn.SetWriteBuffer(4 << 20)
	rc, err := conn.SyscallConn()
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("UDP socket to %s: %w", addr, err)
	}
	s := &udpSocket{conn: conn, rc: rc}
	s.init(p, size, i, n)
	s.next = s.nextQuery
	for j := range udpBatch {
		s.siov[j].Base = &s.sbufs[j][0]
		s.smsgs[j].hdr.Iov = &s.siov[j]
		s.smsgs[j].hdr.SetIovlen(1)
		s.riov[j].Base = &s.rbufs[j][0]
		s.riov[j].SetLen(udpRecvBuf)
		s.rmsgs[j].hdr.Iov = &s.riov[j]
		s.rmsgs[j].hdr.SetIovlen(1)
	}
	s.sendFn = s.trySend
	s.recvFn = s.tryRecv
	return s, nil
}

func (s *udpSocket) close() { s.conn.Close() }

// trySend is sendmmsg on the non-blocking socket from soff on; false asks
// the poller to wait until it is writable.
func (s *udpSocket) trySend(fd uintptr) bool {
	for s.soff < s.sn {
		r, _, e := unix.Syscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&s.smsgs[s.soff])), uintptr(s.sn-s.soff), 0, 0, 0)
		if e == unix.EAGAIN {
			return false
		}
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			s.serr = e
			return true
		}
		s.soff += int(r)
	}
	return true
}

// tryRecv is recvmmsg; false waits for a datagram (or the deadline).
func (s *udpSocket) tryRecv(fd uintptr) bool {
	for {
		r, _, e := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&s.rmsgs[0])), udpBatch, unix.MSG_DONTWAIT, 0, 0)
		switch e {
		case 0:
			s.rn, s.rerr = int(r), 0
			return true
		case unix.EAGAIN:
			return false
		case unix.EINTR:
			continue
		default:
			s.rn, s.rerr = 0, e
			return true
		}
	}
}

// send is the sender goroutine.
func (s *udpSocket) send() {
	defer s.senderFinished()
	p := s.p
	for {
		var n int
		if p.open() {
			n = s.takeDue(udpBatch, true)
		} else {
			n = s.takeFree(udpBatch, true)
		}
		if n < 0 {
			return
		}
		if n > 0 {
			s.sendBatch(n)
		}
	}
}

// nextQuery is the table's next: query seq into the send buffer j.
func (s *udpSocket) nextQuery(j int, _ uint16, seq uint64, _ int64) ([]byte, bool) {
	q, ok := s.p.src.Next(seq, s.rng, s.sbufs[j][:])
	if ok {
		s.siov[j].SetLen(len(q))
	}
	return q, ok
}

// sendBatch sends the batch's n queries.
func (s *udpSocket) sendBatch(n int) {
	s.sn, s.soff, s.serr = n, 0, 0
	err := s.rc.Write(s.sendFn)
	now := s.p.rec.now()
	bytes := 0
	for j := range s.soff {
		bytes += int(s.siov[j].Len)
	}
	s.st.sent(now, s.soff, bytes)
	if s.soff < n {
		// The rest failed (an ICMP error reported on this send, say).
		var e error = s.serr
		if err != nil {
			e = err
		}
		for j := s.soff; j < n; j++ {
			if s.release(s.ids[j]) {
				s.st.failErr(fmt.Errorf("sending to %s: %w", s.conn.RemoteAddr(), e))
			}
		}
	}
	s.lastSend.Store(now)
	s.st.flush()
}

// receive is the receiver goroutine: it matches answers and times out
// queries until the sender is done and nothing is in flight (or the last
// query's timeout has passed).
func (s *udpSocket) receive() {
	p := s.p
	timeout := int64(p.cfg.Timeout)
	lastScan := p.rec.now()
	for {
		_ = s.conn.SetReadDeadline(time.Now().Add(udpScan))
		s.rn, s.rerr = 0, 0
		err := s.rc.Read(s.recvFn)
		now := p.rec.now()
		if err == nil && s.rerr != 0 {
			// An ICMP error from an earlier send (port unreachable): it
			// names no query; those it concerns are counted as they time
			// out, so it is only noted.
			s.rt.note(fmt.Errorf("receiving from %s: %w", s.conn.RemoteAddr(), s.rerr))
		} else if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			s.rt.failErr(fmt.Errorf("receiving from %s: %w", s.conn.RemoteAddr(), err))
			time.Sleep(udpScan)
		}
		for j := range s.rn {
			s.match(s.rbufs[j][:s.rmsgs[j].n], now, s.rt)
		}
		if now-lastScan >= int64(udpScan) || s.rn == 0 {
			s.scan(now, timeout)
			lastScan = now
		}
		s.rt.flush()
		if s.senderDone.Load() {
			if s.inflight.Load() == 0 {
				return
			}
			if now-s.lastSend.Load() > timeout+int64(udpScan) {
				s.scan(now+timeout, timeout) // everything left has had its time
				s.rt.flush()
				return
			}
		}
	}
}

// questionHash is FNV-1a over the question section of a message with one
// question (0 if it is cut short).
func questionHash(m []byte) uint64 {
	i := 12
	for i < len(m) {
		l := int(m[i])
		if l == 0 {
			i++
			break
		}
		if l&0xc0 != 0 { // a pointer: not in a question we sent
			i += 2
			break
		}
		i += 1 + l
	}
	i += 4
	if i > len(m) {
		return 0
	}
	h := uint64(14695981039346656037)
	for _, c := range m[12:i] {
		h ^= uint64(c)
		h *= 1099511628211
	}
	return h
}
