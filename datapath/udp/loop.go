package udp

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"xdoh/forwarder"
	"xdoh/internal/dnsmsg"
)

const (
	slotSize = dnsmsg.MaxUDPSize // rx and tx slot: the largest query we take, the largest reply we send
	// answerRoom is what Answer may write into before truncating to the
	// client's size: the cache copies a whole entry (up to 64 KiB) first.
	answerRoom = 65536
	nameSize   = unix.SizeofSockaddrInet6 // room for either family's sockaddr
	ctlSize    = 64                       // room for one IP_PKTINFO or IPV6_PKTINFO message
)

// loop serves one socket. All its buffers are allocated in newLoop; process
// and flush reuse them batch after batch.
type loop struct {
	sock     *socket
	h        Handler
	name     string
	stopping *atomic.Bool

	rxHdrs  []unix.Mmsghdr
	rxIovs  []unix.Iovec
	rxBufs  []byte // slot i: [i*slotSize, (i+1)*slotSize)
	rxNames []byte // slot i: [i*nameSize, (i+1)*nameSize)
	rxCtl   []byte // slot i: [i*ctlSize, (i+1)*ctlSize); nil unless the socket has pktinfo
	txHdrs  []unix.Mmsghdr
	txIovs  []unix.Iovec
	txBufs  []byte // slot k starts at k*slotSize; Answer gets answerRoom from there

	req forwarder.Request // reused for every datagram
	out *outbox           // replies of misses

	resolving bool // the current batch sent queries upstream

	recvFn  func(fd uintptr) bool // l.tryRecv, bound once (poller mode)
	parked  int                   // waits in the poller (read by tests after Stop)
	blocked int                   // waits in recvmmsg (likewise)
	rn      int                   // tryRecv's result
	rerr    syscall.Errno

	queries, replies, drops, truncated, batches atomic.Uint64
}

func newLoop(so *socket, h Handler, name string, batch int, stopping *atomic.Bool) *loop {
	l := &loop{
		sock: so, h: h, name: name, stopping: stopping,
		rxHdrs:  make([]unix.Mmsghdr, batch),
		rxIovs:  make([]unix.Iovec, batch),
		rxBufs:  make([]byte, batch*slotSize),
		rxNames: make([]byte, batch*nameSize),
		txHdrs:  make([]unix.Mmsghdr, batch),
		txIovs:  make([]unix.Iovec, batch),
		txBufs:  make([]byte, (batch-1)*slotSize+answerRoom),
	}
	if so.pktinfo {
		l.rxCtl = make([]byte, batch*ctlSize)
	}
	l.out = newOutbox(l)
	l.recvFn = l.tryRecv
	for i := range batch {
		l.rxIovs[i].Base = &l.rxBufs[i*slotSize]
		l.rxIovs[i].SetLen(slotSize)
		h := &l.rxHdrs[i].Hdr
		h.Name = &l.rxNames[i*nameSize]
		h.Iov = &l.rxIovs[i]
		h.SetIovlen(1)
		if l.rxCtl != nil {
			h.Control = &l.rxCtl[i*ctlSize]
		}

		l.txIovs[i].Base = &l.txBufs[i*slotSize]
		h = &l.txHdrs[i].Hdr
		h.Iov = &l.txIovs[i]
		h.SetIovlen(1)
	}
	return l
}

// run receives and answers batches until Stop. On Stop it answers what is
// still queued on the socket; the socket stays open for replies of misses
// still resolving and is closed by the Server when they are done.
func (l *loop) run() error {
	for {
		n, errno := l.recv()
		if l.stopping.Load() {
			if errno == 0 && n > 0 {
				l.flush(l.process(n))
			}
			l.drain()
			return nil
		}
		switch errno {
		case 0:
		case unix.EINTR, unix.EAGAIN:
			continue
		case unix.ENOMEM, unix.ENOBUFS:
			time.Sleep(time.Millisecond) // transient; don't spin
			continue
		default:
			return fmt.Errorf("receiving on %s: %w", l.sock.local, errno)
		}
		if n == 0 {
			continue
		}
		l.batches.Add(1)
		l.flush(l.process(n))
		if l.resolving {
			// The batch's misses are queued for their upstream connections'
			// writers, which are ready to run on this P: let them, before
			// this thread blocks in recvmmsg holding it (or, in poller
			// mode, before this goroutine reads again).
			l.resolving = false
			runtime.Gosched()
		}
	}
}

// drain answers the datagrams still queued on a socket that was shut down for
// reading, without blocking.
func (l *loop) drain() {
	for {
		l.resetRx()
		n, _, errno := unix.RawSyscall6(unix.SYS_RECVMMSG, uintptr(l.sock.fd),
			uintptr(unsafe.Pointer(&l.rxHdrs[0])), uintptr(len(l.rxHdrs)), unix.MSG_DONTWAIT, 0, 0)
		if errno != 0 || n == 0 {
			return
		}
		k := 0
		for i := range int(n) {
			if l.rxHdrs[i].Len > 0 {
				k++
			}
		}
		if k == 0 {
			return // the shutdown's empty wake-ups only
		}
		l.flush(l.process(int(n)))
	}
}

// resetRx gives every receive slot back its full name and control room
// before a recvmmsg.
func (l *loop) resetRx() {
	for i := range l.rxHdrs {
		l.rxHdrs[i].Hdr.Namelen = nameSize
		if l.rxCtl != nil {
			l.rxHdrs[i].Hdr.SetControllen(ctlSize)
		}
	}
}

// recv waits until at least one datagram is there (or the socket is shut
// down) and takes whatever else is queued, up to the batch size. How it
// waits is the socket's wait mode (see the package documentation): blocked
// in recvmmsg, or parked in the runtime's poller; an adaptive socket parks
// while GOMAXPROCS is 1 and blocks otherwise.
func (l *loop) recv() (int, syscall.Errno) {
	if l.sock.rc != nil && (!l.sock.adaptive || runtime.GOMAXPROCS(0) == 1) {
		l.parked++
		return l.recvPoller()
	}
	l.blocked++
	l.resetRx()
	// Syscall6, not RawSyscall: the runtime hands our P to other goroutines
	// while the thread waits in the kernel.
	n, _, errno := unix.Syscall6(unix.SYS_RECVMMSG, uintptr(l.sock.fd),
		uintptr(unsafe.Pointer(&l.rxHdrs[0])), uintptr(len(l.rxHdrs)), unix.MSG_WAITFORONE, 0, 0)
	if errno != 0 {
		return 0, errno
	}
	return int(n), 0
}

// recvPoller is recv in poller mode: recvmmsg with MSG_DONTWAIT, and on
// EAGAIN the goroutine parks in the runtime's poller until the socket is
// readable. A deadline set by Stop ends the wait with EAGAIN.
func (l *loop) recvPoller() (int, syscall.Errno) {
	l.rn, l.rerr = 0, 0
	if err := l.sock.rc.Read(l.recvFn); err != nil {
		return 0, unix.EAGAIN // deadline (Stop) or closed: run checks the flag
	}
	return l.rn, l.rerr
}

// tryRecv is recvPoller's callback (made once: a closure per call would
// allocate): one non-blocking recvmmsg; false asks the poller to wait.
func (l *loop) tryRecv(fd uintptr) bool {
	l.resetRx()
	r, _, e := unix.RawSyscall6(unix.SYS_RECVMMSG, fd,
		uintptr(unsafe.Pointer(&l.rxHdrs[0])), uintptr(len(l.rxHdrs)), unix.MSG_DONTWAIT, 0, 0)
	if e == unix.EAGAIN && !l.stopping.Load() {
		return false // park until readable
	}
	if e != 0 {
		l.rerr = e
	} else {
		l.rn = int(r)
	}
	return true
}

// process answers the n datagrams in the receive slots. Replies ready at once
// are put into the send slots, in order, with the sender's address; it
// returns how many. Misses go to Resolve. It allocates nothing unless a
// query must be resolved.
func (l *loop) process(n int) int {
	k := 0
	var queries, truncated, drops uint64
	for i := range n {
		rh := &l.rxHdrs[i]
		size := int(rh.Len)
		if size == 0 {
			continue // an empty datagram, or the wake-up of a shut-down socket
		}
		queries++
		if rh.Hdr.Flags&unix.MSG_TRUNC != 0 {
			truncated++
			continue
		}
		name := l.rxNames[i*nameSize : i*nameSize+min(int(rh.Hdr.Namelen), nameSize)]
		client, ok := clientAddr(name)
		if !ok || client.Port() == 0 {
			continue // nowhere to reply to
		}
		var ctl []byte // the reply's source address, for wildcard sockets
		if l.rxCtl != nil && rh.Hdr.Flags&unix.MSG_CTRUNC == 0 {
			ctl = replyPktinfo(l.rxCtl[i*ctlSize : i*ctlSize+min(int(rh.Hdr.Controllen), ctlSize)])
		}
		off := i * slotSize
		l.req = forwarder.Request{
			Msg:       l.rxBufs[off : off+size : off+size],
			Transport: forwarder.TransportUDP,
			Client:    client,
			Listener:  l.name,
		}
		out := l.txBufs[k*slotSize : k*slotSize+answerRoom]
		resp, ok := l.h.Answer(&l.req, out)
		if !ok {
			l.sock.misses.Add(1)
			if resp, ok = l.h.Resolve(&l.req, out, l.missDone(name, ctl)); !ok {
				l.resolving = true
				continue // done will reply
			}
			l.sock.misses.Add(-1) // answered at once (overload): no done
		}
		switch {
		case len(resp) == 0:
			continue // nothing to send
		case len(resp) > slotSize:
			drops++ // cannot happen with the forwarder's UDP cap
			continue
		}
		slot := l.txBufs[k*slotSize : (k+1)*slotSize]
		if &resp[0] != &slot[0] {
			copy(slot, resp)
		}
		l.txIovs[k].SetLen(len(resp))
		th := &l.txHdrs[k].Hdr
		th.Name = &name[0] // the receive slot stays untouched until after flush
		th.Namelen = uint32(len(name))
		th.Control = nil
		th.SetControllen(0)
		if len(ctl) > 0 {
			th.Control = &ctl[0] // likewise
			th.SetControllen(len(ctl))
		}
		k++
	}
	l.queries.Add(queries)
	if truncated != 0 {
		l.truncated.Add(truncated)
	}
	if drops != 0 {
		l.drops.Add(drops)
	}
	return k
}

// flush sends the first k send slots with as few sendmmsg calls as the kernel
// allows. It never blocks: a full socket buffer drops what is left.
func (l *loop) flush(k int) {
	if k == 0 {
		return
	}
	sent, drops := sendAll(l.sock.fd, l.txHdrs[:k])
	if sent != 0 {
		l.replies.Add(sent)
	}
	if drops != 0 {
		l.drops.Add(drops)
	}
}

// missDone returns Resolve's callback for the client whose raw sockaddr is
// name (and, on a wildcard socket, whose reply source is in the pktinfo
// message ctl): it copies both, then queues the reply on the socket's outbox
// (or, when that is full, sends it from the resolving goroutine). The
// callback's state is pooled: the forwarder calls it exactly once.
func (l *loop) missDone(name, ctl []byte) func([]byte) {
	d := pendingPool.Get().(*pending)
	d.l = l
	d.salen = copy(d.sa[:], name)
	d.ctllen = copy(d.ctl[:], ctl)
	return d.fn
}

// pending is what a miss needs to send its reply later.
type pending struct {
	l      *loop
	sa     [nameSize]byte
	salen  int
	ctl    [ctlSize]byte
	ctllen int
	fn     func([]byte) // d.done, bound once
}

var pendingPool sync.Pool // of *pending

func init() { // not in the declaration: done refers to the pool
	pendingPool.New = func() any {
		d := new(pending)
		d.fn = d.done
		return d
	}
}

func (d *pending) done(resp []byte) {
	l := d.l
	queued := len(resp) > 0 && l.out.put(resp, d) // the outbox counts the miss done once it is sent
	if !queued && len(resp) > 0 {
		if l.sock.send(resp, d.sa[:d.salen], d.ctl[:d.ctllen]) {
			l.replies.Add(1)
		} else {
			l.drops.Add(1)
		}
	}
	d.l = nil
	pendingPool.Put(d)
	if !queued {
		l.sock.misses.Add(-1)
	}
}

// send sends b to the raw sockaddr sa, with the control message ctl if any,
// without blocking: sendto(2), or sendmsg(2) when there is a control
// message. It reports whether the datagram went out; after the loop has
// closed the socket nothing is sent.
func (so *socket) send(b, sa, ctl []byte) bool {
	so.mu.RLock()
	defer so.mu.RUnlock()
	if so.closed {
		return false
	}
	for {
		var errno syscall.Errno
		if len(ctl) == 0 {
			_, _, errno = unix.RawSyscall6(unix.SYS_SENDTO, uintptr(so.fd),
				uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), unix.MSG_DONTWAIT,
				uintptr(unsafe.Pointer(&sa[0])), uintptr(len(sa)))
		} else {
			iov := unix.Iovec{Base: &b[0]}
			iov.SetLen(len(b))
			msg := unix.Msghdr{Name: &sa[0], Namelen: uint32(len(sa)), Iov: &iov, Control: &ctl[0]}
			msg.SetIovlen(1)
			msg.SetControllen(len(ctl))
			_, _, errno = unix.RawSyscall(unix.SYS_SENDMSG, uintptr(so.fd), uintptr(unsafe.Pointer(&msg)), unix.MSG_DONTWAIT)
		}
		if errno != unix.EINTR {
			return errno == 0
		}
	}
}

// replyPktinfo turns the IP_PKTINFO/IPV6_PKTINFO message a wildcard socket
// received with a query into the one that makes the reply leave from the
// address the query was sent to, in place, and returns it (nil if ctl holds
// none). For IPv4 that is ipi_spec_dst (the destination, or for a broadcast
// query the interface's address) with ipi_ifindex cleared so that routing
// picks the way out; IPv6 sends from ipi6_addr on the interface it came in
// by (which link-local addresses need).
func replyPktinfo(ctl []byte) []byte {
	hl := unix.CmsgLen(0)
	if len(ctl) < hl {
		return nil
	}
	h := (*unix.Cmsghdr)(unsafe.Pointer(&ctl[0]))
	switch {
	case h.Level == unix.IPPROTO_IP && h.Type == unix.IP_PKTINFO && int(h.Len) >= unix.CmsgLen(unix.SizeofInet4Pktinfo) && len(ctl) >= unix.CmsgSpace(unix.SizeofInet4Pktinfo):
		pi := (*unix.Inet4Pktinfo)(unsafe.Pointer(&ctl[hl]))
		pi.Ifindex = 0
		return ctl[:unix.CmsgSpace(unix.SizeofInet4Pktinfo)]
	case h.Level == unix.IPPROTO_IPV6 && h.Type == unix.IPV6_PKTINFO && int(h.Len) >= unix.CmsgLen(unix.SizeofInet6Pktinfo) && len(ctl) >= unix.CmsgSpace(unix.SizeofInet6Pktinfo):
		return ctl[:unix.CmsgSpace(unix.SizeofInet6Pktinfo)]
	}
	return nil
}

// clientAddr reads the client's address from a raw sockaddr_in or
// sockaddr_in6 without allocating. The IPv6 scope is left out (a zone string
// would allocate); replies go to the raw sockaddr, which keeps it.
func clientAddr(name []byte) (netip.AddrPort, bool) {
	if len(name) < 2 {
		return netip.AddrPort{}, false
	}
	switch binary.NativeEndian.Uint16(name) {
	case unix.AF_INET:
		if len(name) >= unix.SizeofSockaddrInet4 {
			return netip.AddrPortFrom(netip.AddrFrom4([4]byte(name[4:8])), binary.BigEndian.Uint16(name[2:4])), true
		}
	case unix.AF_INET6:
		if len(name) >= unix.SizeofSockaddrInet6 {
			return netip.AddrPortFrom(netip.AddrFrom16([16]byte(name[8:24])), binary.BigEndian.Uint16(name[2:4])), true
		}
	}
	return netip.AddrPort{}, false
}
