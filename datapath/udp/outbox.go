package udp

import (
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// outboxCap bounds the replies of misses queued on one socket; past it a
// reply is sent at once by whoever completed it.
const outboxCap = 512

// outbox batches the replies of misses for one socket. Misses complete on
// other goroutines — mostly an upstream connection's reader, several per
// read — which queue their replies here; the socket's sender goroutine sends
// everything queued with one sendmmsg. The sender is woken once per batch
// and, being readied by the completing goroutine, usually runs when that
// goroutine next blocks: by then the whole read has been answered.
type outbox struct {
	l      *loop
	mu     sync.Mutex
	q      []outMsg // queued replies; q[:n] in use
	n      int
	wake   chan struct{} // cap 1: q went from empty to not empty
	closed bool          // the socket is closed: put refuses

	// Sender-owned.
	spare []outMsg
	hdrs  []unix.Mmsghdr
	iovs  []unix.Iovec
}

// outMsg is one queued reply with its destination; buf keeps its capacity
// from batch to batch.
type outMsg struct {
	buf    []byte
	sa     [nameSize]byte
	salen  int
	ctl    [ctlSize]byte
	ctllen int
}

func newOutbox(l *loop) *outbox {
	return &outbox{
		l: l, q: make([]outMsg, outboxCap), spare: make([]outMsg, outboxCap),
		hdrs: make([]unix.Mmsghdr, outboxCap), iovs: make([]unix.Iovec, outboxCap),
		wake: make(chan struct{}, 1),
	}
}

// put queues the reply resp to d's client and reports whether it did;
// false means the outbox is full or closed and the caller sends it itself.
func (o *outbox) put(resp []byte, d *pending) bool {
	o.mu.Lock()
	if o.n == len(o.q) || o.closed {
		o.mu.Unlock()
		return false
	}
	m := &o.q[o.n]
	o.n++
	first := o.n == 1
	m.buf = append(m.buf[:0], resp...)
	m.salen = copy(m.sa[:], d.sa[:d.salen])
	m.ctllen = copy(m.ctl[:], d.ctl[:d.ctllen])
	o.mu.Unlock()
	if first {
		select {
		case o.wake <- struct{}{}:
		default:
		}
	}
	return true
}

// run is the sender goroutine. It ends when the socket is closed, after a
// last flush (whose sends then fail and are counted as drops).
func (o *outbox) run(quit <-chan struct{}) {
	for {
		select {
		case <-o.wake:
			o.flush()
		case <-quit:
			o.mu.Lock()
			o.closed = true
			o.mu.Unlock()
			o.flush()
			return
		}
	}
}

// flush sends what is queued.
func (o *outbox) flush() {
	o.mu.Lock()
	q, k := o.q, o.n
	o.q, o.spare, o.n = o.spare, o.q, 0
	o.mu.Unlock()
	if k == 0 {
		return
	}
	for i := range k {
		m := &q[i]
		o.iovs[i].Base = &m.buf[0]
		o.iovs[i].SetLen(len(m.buf))
		h := &o.hdrs[i].Hdr
		h.Iov = &o.iovs[i]
		h.SetIovlen(1)
		h.Name = &m.sa[0]
		h.Namelen = uint32(m.salen)
		h.Control = nil
		h.SetControllen(0)
		if m.ctllen > 0 {
			h.Control = &m.ctl[0]
			h.SetControllen(m.ctllen)
		}
	}
	sent, drops := o.l.sock.sendBatch(o.hdrs[:k])
	if sent != 0 {
		o.l.replies.Add(sent)
	}
	if drops != 0 {
		o.l.drops.Add(drops)
	}
	o.l.sock.misses.Add(-int64(k))
}

// sendBatch sends hdrs like sendAll unless the socket is closed.
func (so *socket) sendBatch(hdrs []unix.Mmsghdr) (sent, drops uint64) {
	so.mu.RLock()
	defer so.mu.RUnlock()
	if so.closed {
		return 0, uint64(len(hdrs))
	}
	return sendAll(so.fd, hdrs)
}

// sendAll sends hdrs on fd with as few sendmmsg calls as the kernel allows,
// without blocking (MSG_DONTWAIT: a raw system call, no P handoff). A full socket buffer drops what is left; a message the
// kernel refuses (an address it will not send to, say) is skipped.
func sendAll(fd int, hdrs []unix.Mmsghdr) (sent, drops uint64) {
	k := len(hdrs)
	for i := 0; i < k; {
		n, _, errno := unix.RawSyscall6(unix.SYS_SENDMMSG, uintptr(fd),
			uintptr(unsafe.Pointer(&hdrs[i])), uintptr(k-i), unix.MSG_DONTWAIT, 0, 0)
		switch errno {
		case 0:
			if n == 0 {
				return sent, drops + uint64(k-i)
			}
			sent += uint64(n)
			i += int(n)
		case unix.EINTR:
		case unix.EAGAIN:
			return sent, drops + uint64(k-i)
		default:
			drops++
			i++
		}
	}
	return sent, drops
}
