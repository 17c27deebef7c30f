//go:build linux

package bench

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"sync/atomic"
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

// udpSlot is one query in flight: its ID is its index.
type udpSlot struct {
	busy  atomic.Bool
	sched atomic.Int64  // ns from the phase's start: the scheduled (open loop) or actual send time
	qhash atomic.Uint64 // of the question, to match the answer's
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
		// Closed loop: each socket's share of the queries in flight.
		// Open loop: as many as the rate keeps in flight for the
		// timeout, with room; at most the 65536 IDs.
		size := 65536
		if !p.open() {
			size = p.outstanding / n
			if i < p.outstanding%n {
				size++
			}
		} else if p.rate > 0 {
			size = int(min(65536, max(256, 2*p.rate/float64(n)*p.cfg.Timeout.Seconds())))
		}
		if l := p.src.Len(); l > 0 {
			size = int(min(uint64(size), l/uint64(n)+1))
		}
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
	p      *phase
	conn   *net.UDPConn
	rc     syscall.RawConn
	slots  []udpSlot
	free   chan uint16
	first  uint64 // this socket's queries are first, first+stride, …
	stride uint64

	inflight   atomic.Int64
	senderDone atomic.Bool
	lastSend   atomic.Int64 // ns of the sender's last send

	// sender-owned
	st     *tally
	rng    *rand.Rand
	seq    uint64
	ids    [udpBatch]uint16
	sbufs  [udpBatch][MaxQuery]byte
	siov   [udpBatch]unix.Iovec
	smsgs  [udpBatch]mmsghdr
	sn     int // messages to send
	soff   int // sent so far
	serr   syscall.Errno
	sendFn func(uintptr) bool

	// receiver-owned
	rt     *tally
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
	s := &udpSocket{
		p:      p,
		conn:   conn,
		rc:     rc,
		slots:  make([]udpSlot, size),
		free:   make(chan uint16, size),
		first:  uint64(i),
		stride: uint64(n),
		st:     p.rec.worker(),
		rng:    rand.New(rand.NewPCG(rand.Uint64(), uint64(i))),
	}
	s.rt = &tally{r: p.rec, hist: s.st.hist} // one histogram per socket, written under the recorder's lock
	s.seq = s.first
	for id := range size {
		s.free <- uint16(id)
	}
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
	defer func() {
		s.st.flush()
		s.lastSend.Store(s.p.rec.now())
		s.senderDone.Store(true)
	}()
	p := s.p
	for {
		n := 0
		if p.open() {
			n = s.takeDue()
			if n < 0 {
				return
			}
		} else {
			n = s.takeFree()
			if n < 0 {
				return
			}
		}
		if n == 0 {
			continue
		}
		s.sendBatch(n)
	}
}

// takeFree (closed loop) waits for at least one free ID and fills the
// batch with the next queries; -1: the phase is over.
func (s *udpSocket) takeFree() int {
	p := s.p
	var id uint16
	select {
	case id = <-s.free:
	case <-p.stop:
		return -1
	}
	n := 0
	now := p.rec.now()
	for {
		if !p.more(s.seq) {
			s.free <- id
			if n == 0 {
				return -1
			}
			return n
		}
		q, ok := p.src.Next(s.seq, s.rng, s.sbufs[n][:])
		if !ok {
			s.free <- id
			if n == 0 {
				return -1
			}
			return n
		}
		s.seq += s.stride
		s.fill(n, id, q, now)
		n++
		if n == udpBatch {
			return n
		}
		select {
		case id = <-s.free:
		default:
			return n
		}
	}
}

// takeDue (open loop) fills the batch with the queries whose time has
// come, sleeping until the next one is due; -1: the phase is over.
func (s *udpSocket) takeDue() int {
	p := s.p
	n := 0
	for n == 0 {
		if !p.more(s.seq) {
			return -1
		}
		now := p.rec.now()
		for n < udpBatch && p.more(s.seq) {
			at := p.sched(s.seq)
			if at > now {
				break
			}
			var id uint16
			select {
			case id = <-s.free:
			default:
				// Every ID is in flight: the rig cannot offer this
				// query. Count it rather than send it late.
				s.st.unsent()
				s.seq += s.stride
				continue
			}
			q, ok := p.src.Next(s.seq, s.rng, s.sbufs[n][:])
			if !ok {
				s.free <- id
				return -1
			}
			s.fill(n, id, q, at)
			s.seq += s.stride
			n++
		}
		if n > 0 {
			return n
		}
		if !p.more(s.seq) {
			return -1
		}
		wait := time.Duration(p.sched(s.seq) - now)
		s.st.flush()
		select {
		case <-p.stop:
			return -1
		default:
		}
		time.Sleep(min(wait, 10*time.Millisecond))
	}
	return n
}

// fill puts query q with ID id in batch position j.
func (s *udpSocket) fill(j int, id uint16, q []byte, at int64) {
	binary.BigEndian.PutUint16(q, id)
	sl := &s.slots[id]
	sl.sched.Store(at)
	sl.qhash.Store(questionHash(q))
	sl.busy.Store(true)
	s.ids[j] = id
	s.siov[j].SetLen(len(q))
	s.inflight.Add(1)
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

// release frees a slot; false if it was free already (the receiver or
// timeout scan got it).
func (s *udpSocket) release(id uint16) bool {
	if !s.slots[id].busy.CompareAndSwap(true, false) {
		return false
	}
	s.inflight.Add(-1)
	s.free <- id
	return true
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
			// An ICMP error from an earlier send (port unreachable).
			s.rt.failErr(fmt.Errorf("receiving from %s: %w", s.conn.RemoteAddr(), s.rerr))
		} else if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			s.rt.failErr(fmt.Errorf("receiving from %s: %w", s.conn.RemoteAddr(), err))
			time.Sleep(udpScan)
		}
		for j := range s.rn {
			s.answer(s.rbufs[j][:s.rmsgs[j].n], now)
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

// answer matches one datagram to its query.
func (s *udpSocket) answer(b []byte, now int64) {
	if len(b) < 12 || b[2]&0x80 == 0 {
		s.rt.malformed()
		return
	}
	id := binary.BigEndian.Uint16(b)
	if int(id) >= len(s.slots) {
		s.rt.malformed()
		return
	}
	sl := &s.slots[id]
	if !sl.busy.Load() {
		s.rt.malformed() // late (timed out) or never asked
		return
	}
	qd := binary.BigEndian.Uint16(b[4:])
	rcode := int(b[3] & 0xf)
	if qd != 1 && !(qd == 0 && rcode != 0) {
		s.rt.malformed()
		return
	}
	if qd == 1 && questionHash(b) != sl.qhash.Load() {
		s.rt.malformed()
		return
	}
	sched := sl.sched.Load()
	if !s.release(id) {
		s.rt.malformed()
		return
	}
	s.rt.answer(now-sched, rcode, len(b))
}

// scan times out the queries sent before now-timeout.
func (s *udpSocket) scan(now, timeout int64) {
	if s.inflight.Load() == 0 {
		return
	}
	for id := range s.slots {
		sl := &s.slots[id]
		if sl.busy.Load() && now-sl.sched.Load() >= timeout {
			if s.release(uint16(id)) {
				s.rt.timeout()
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
