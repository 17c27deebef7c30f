package xsk

import (
	"context"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"xdoh/forwarder"
	"xdoh/internal/dnsmsg"
)

// answerRoom is what Answer may write into before truncating to the
// client's size: the cache copies a whole entry (up to 64 KiB) first.
const answerRoom = 65536

// loop serves one queue's socket. The loop goroutine owns the RX and fill
// rings; the TX and completion rings and the free-frame list are shared
// with the outbox's goroutine (replies of misses) under mu, taken once per
// batch.
type loop struct {
	srv   *Server
	sock  *Socket
	queue int
	name  string
	mtu   int // the interface's: no reply's IP packet is larger

	file   *os.File        // a dup of the socket's descriptor, in Go's poller
	rc     syscall.RawConn // of file
	recvFn func(fd uintptr) bool
	rn     int

	rx    []unix.XDPDesc // received this batch
	tx    []unix.XDPDesc // replies of this batch
	freed []uint64       // frames of this batch that carry no reply
	out   []byte         // Answer's scratch (answerRoom)
	req   forwarder.Request
	fill  []uint64 // scratch for the fill and completion rings

	mu       sync.Mutex
	frames   *Frames // UMEM frames owned by no ring
	unkicked int     // replies queued on the TX ring since the last kick

	want  atomic.Int32 // the CPU the follower wants the loop on (-1: any)
	bound int32        // the CPU the loop's thread is bound to (-1: none); loop goroutine only
	cpu   atomic.Int32 // bound, for readers
	tid   atomic.Int32 // the bound thread's id (0: not bound)
	// prevCPUs is the follower's (follow.go): the queue's per-CPU
	// redirect counts at its last read.
	prevCPUs   []uint64
	bindFailed atomic.Bool
	policy     *unix.SchedAttr // the bound thread's policy before SCHED_BATCH (nil: unchanged); loop goroutine only

	ob       *outbox
	inflight atomic.Int64 // misses whose done has not run its course
	hot      *hotTable    // cache hits per question, for the kernel tier (nil: off)

	queries, replies, misses, malformed, noFrame, truncated atomic.Uint64
}

func newLoop(so *Socket, s *Server, queue, mtu int) (*loop, error) {
	fd, err := unix.Dup(so.FD())
	if err != nil {
		return nil, fmt.Errorf("dup of the AF_XDP socket: %w", err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		_ = unix.Close(fd)
		return nil, fmt.Errorf("making the AF_XDP socket non-blocking: %w", err)
	}
	f := os.NewFile(uintptr(fd), fmt.Sprintf("xsk-q%d", queue))
	rc, err := f.SyscallConn()
	if err != nil {
		_ = f.Close()
		return nil, err
	}
	l := &loop{
		srv: s, sock: so, queue: queue, mtu: mtu, name: s.cfg.Name, file: f, rc: rc,
		rx:     make([]unix.XDPDesc, s.cfg.Batch),
		tx:     make([]unix.XDPDesc, 0, s.cfg.Batch),
		freed:  make([]uint64, 0, s.cfg.Batch),
		out:    make([]byte, answerRoom),
		fill:   make([]uint64, max(s.cfg.Batch, s.cfg.RingSize)),
		frames: NewFrames(so.FrameSize(), so.NumFrames()),
	}
	l.want.Store(-1)
	l.bound = -1
	l.cpu.Store(-1)
	l.recvFn = l.tryRecv
	l.ob = newOutbox(l)
	go l.ob.run() // ended by close, also when Start fails
	// Half the frames wait in the fill ring for packets; the rest carry
	// replies of misses and cover frames on the TX ring.
	l.mu.Lock()
	l.refill(min(s.cfg.RingSize, so.NumFrames()/2))
	l.mu.Unlock()
	return l, nil
}

// run receives and answers batches until the server stops.
func (l *loop) run() {
	for {
		n := l.recv()
		if l.srv.stopping.Load() && n == 0 {
			return
		}
		l.process(n)
	}
}

// recv waits in Go's poller until the RX ring has descriptors (or the
// server stops) and takes up to a batch of them.
func (l *loop) recv() int {
	if w := l.want.Load(); w != l.bound && !l.bindFailed.Load() {
		l.rebind(w)
	}
	if n := l.sock.Receive(l.rx); n > 0 {
		return n
	}
	l.mu.Lock()
	if l.unkicked > 0 { // replies held back for a batch that did not come
		l.sock.Kick()
		l.unkicked = 0
	}
	l.reap()
	l.refill(len(l.fill))
	l.mu.Unlock()
	l.rn = 0
	if err := l.rc.Read(l.recvFn); err != nil {
		return 0 // deadline (Stop) or closed: run checks the flag
	}
	return l.rn
}

// tryRecv is recv's poller callback (bound once: a closure per call would
// allocate): false asks the poller to wait until the socket is readable.
func (l *loop) tryRecv(uintptr) bool {
	l.rn = l.sock.Receive(l.rx)
	return l.rn > 0 || l.srv.stopping.Load()
}

// wake ends a wait in the poller (Stop).
func (l *loop) wake() { _ = l.file.SetReadDeadline(time.Unix(1, 0)) }

// process answers the n received frames: hits in their own frame, misses
// to Resolve. It allocates nothing unless a query must be resolved.
func (l *loop) process(n int) {
	l.tx = l.tx[:0]
	var queries, malformed, truncated uint64
	now := time.Now() // one clock read a batch (the forwarder's start time)
	for i := range n {
		d := l.rx[i]
		queries++
		pkt := l.sock.Packet(d.Addr)
		v, ok := Parse(pkt[:d.Len])
		if !ok {
			malformed++
			l.release(d.Addr)
			continue
		}
		l.req = forwarder.Request{
			Msg:       v.Payload(pkt),
			Transport: forwarder.TransportUDP,
			Client:    v.Client(pkt),
			Listener:  l.name,
			Received:  now,
		}
		resp, ok := l.srv.h.Answer(&l.req, l.out)
		if ok && l.hot != nil && len(resp) > 0 && l.req.CacheHit() {
			l.srv.tier.hit(l.hot, &l.req, len(resp))
		}
		if !ok {
			l.misses.Add(1)
			l.inflight.Add(1)
			resp, ok = l.srv.h.Resolve(&l.req, l.out, l.missDone(pkt, v))
			if !ok {
				l.release(d.Addr) // done will reply from a free frame
				continue
			}
			l.inflight.Add(-1) // answered at once (overload): no done
		}
		if len(resp) == 0 {
			l.release(d.Addr)
			continue
		}
		if room := l.room(pkt, v); len(resp) > room {
			resp = dnsmsg.Truncate(resp, room)
			truncated++
		}
		copy(pkt[v.PayloadOff:], resp)
		l.tx = append(l.tx, unix.XDPDesc{Addr: d.Addr, Len: uint32(Reply(pkt, v, len(resp)))})
	}
	l.queries.Add(queries)
	if malformed != 0 {
		l.malformed.Add(malformed)
	}
	if truncated != 0 {
		l.truncated.Add(truncated)
	}
	l.mu.Lock()
	l.frames.PutN(l.freed)
	l.freed = l.freed[:0]
	l.transmit()
	l.reap()
	l.refill(len(l.fill))
	l.mu.Unlock()
}

// room is how much DNS answer fits in the reply to v in buf: within the
// frame and within the interface's MTU.
func (l *loop) room(buf []byte, v View) int {
	return min(v.Room(buf), l.mtu-(v.PayloadOff-v.L3Off))
}

// kickAfter is how many replies may wait on the TX ring for more to batch
// with while the RX ring still holds queries.
const kickAfter = 128

// release gives a received frame back; it joins the free list with the
// batch's replies, under one lock.
func (l *loop) release(addr uint64) { l.freed = append(l.freed, addr) }

// transmit puts l.tx on the TX ring; what does not fit is dropped and its
// frames freed. mu held.
func (l *loop) transmit() {
	if len(l.tx) == 0 {
		return
	}
	sent := l.sock.Queue(l.tx)
	l.replies.Add(uint64(sent))
	// Kick once the RX ring is empty (nothing more to batch with) or
	// enough replies wait: a kick is a system call, and in copy mode the
	// device's transmit path runs once per kick.
	if l.unkicked += sent; l.unkicked >= kickAfter || !l.sock.RxReady() {
		l.sock.Kick()
		l.unkicked = 0
	}
	for _, d := range l.tx[sent:] {
		l.frames.Put(d.Addr)
	}
	if k := len(l.tx) - sent; k > 0 {
		l.noFrame.Add(uint64(k))
	}
	l.tx = l.tx[:0]
}

// reap moves frames the kernel has sent from the completion ring to the
// free list. mu held.
func (l *loop) reap() {
	for {
		n := l.sock.Complete(l.fill)
		l.frames.PutN(l.fill[:n])
		if n < len(l.fill) {
			return
		}
	}
}

// refill gives up to want free frames to the fill ring, keeping a reserve
// for replies of misses. mu held.
func (l *loop) refill(want int) {
	reserve := l.sock.NumFrames() / 4
	// Only what the ring has room for: taking more off the free list
	// and putting it back costs a copy of up to a ring's worth a batch.
	room := l.sock.FillRoom(want)
	k := min(want, l.frames.Len()-reserve, len(l.fill), room)
	if k <= 0 {
		return
	}
	k = l.frames.GetN(l.fill[:k])
	n := l.sock.Fill(l.fill[:k])
	l.frames.PutN(l.fill[n:k]) // what the ring did not take
}

// takeFrame pops a free frame, reaping completions if none is free. mu held.
func (l *loop) takeFrame() (uint64, bool) {
	if l.frames.Len() == 0 {
		l.reap()
	}
	return l.frames.Get()
}

// waitMisses waits until every miss has been answered or ctx is done.
func (l *loop) waitMisses(ctx context.Context) error {
	for l.inflight.Load() > 0 {
		select {
		case <-ctx.Done():
			return fmt.Errorf("xdp queue %d: %d queries still resolving: %w", l.queue, l.inflight.Load(), ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
	return nil
}

// close ends the outbox and releases the socket; the loop has returned.
func (l *loop) close() {
	l.ob.close()
	_ = l.file.Close()
	_ = l.sock.Close()
}

// missDone returns Resolve's callback for the query in pkt: it saves the
// frame's headers, from which done builds the reply frame. The callback's
// state is pooled: the forwarder calls it exactly once.
func (l *loop) missDone(pkt []byte, v View) func([]byte) {
	d := pendingPool.Get().(*pending)
	d.l = l
	d.hdr = SaveHeader(pkt, v)
	return d.fn
}

// pending is what a miss needs to send its reply later.
type pending struct {
	l   *loop
	hdr Header
	fn  func([]byte) // d.done, bound once
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
	if len(resp) == 0 || !l.ob.put(resp, &d.hdr) {
		if len(resp) > 0 {
			l.noFrame.Add(1) // the outbox is full or closed
		}
		l.inflight.Add(-1)
	}
	d.l = nil
	pendingPool.Put(d)
}

// outboxCap bounds the replies of misses queued on one socket; past it a
// reply is dropped and counted (the client retries, as over UDP).
const outboxCap = 512

// outbox batches the replies of misses for one socket: resolving
// goroutines queue them, the outbox goroutine builds their frames from the
// saved headers and puts them on the TX ring together.
type outbox struct {
	l      *loop
	mu     sync.Mutex
	q      []outMsg
	n      int
	wake   chan struct{}
	quit   chan struct{}
	done   chan struct{}
	closed bool
	spare  []outMsg
	tx     []unix.XDPDesc // flush's scratch
}

type outMsg struct {
	hdr Header
	buf []byte
}

func newOutbox(l *loop) *outbox {
	return &outbox{
		l: l, q: make([]outMsg, outboxCap), spare: make([]outMsg, outboxCap), tx: make([]unix.XDPDesc, 0, outboxCap),
		wake: make(chan struct{}, 1), quit: make(chan struct{}), done: make(chan struct{}),
	}
}

// put queues resp for the client of hdr; false if full or closed.
func (o *outbox) put(resp []byte, hdr *Header) bool {
	o.mu.Lock()
	if o.n == len(o.q) || o.closed {
		o.mu.Unlock()
		return false
	}
	m := &o.q[o.n]
	o.n++
	first := o.n == 1
	m.hdr = *hdr
	m.buf = append(m.buf[:0], resp...)
	o.mu.Unlock()
	if first {
		select {
		case o.wake <- struct{}{}:
		default:
		}
	}
	return true
}

func (o *outbox) run() {
	defer close(o.done)
	for {
		select {
		case <-o.wake:
			o.flush()
		case <-o.quit:
			o.mu.Lock()
			o.closed = true
			o.mu.Unlock()
			o.flush()
			return
		}
	}
}

func (o *outbox) close() {
	select {
	case <-o.quit:
	default:
		close(o.quit)
	}
	<-o.done
}

// flush builds and transmits the queued replies.
func (o *outbox) flush() {
	o.mu.Lock()
	q, k := o.q, o.n
	o.q, o.spare, o.n = o.spare, o.q, 0
	o.mu.Unlock()
	if k == 0 {
		return
	}
	l := o.l
	l.mu.Lock()
	tx := o.tx[:0]
	var truncated uint64
	for i := range k {
		m := &q[i]
		addr, ok := l.takeFrame()
		if !ok {
			l.noFrame.Add(uint64(k - i))
			break
		}
		frame := l.sock.Packet(addr)
		resp := m.buf
		if room := l.room(frame, m.hdr.v); len(resp) > room {
			resp = dnsmsg.Truncate(resp, room)
			truncated++
		}
		n := BuildReply(frame, &m.hdr, resp)
		tx = append(tx, unix.XDPDesc{Addr: addr, Len: uint32(n)})
	}
	if len(tx) > 0 {
		sent := l.sock.Transmit(tx)
		l.replies.Add(uint64(sent))
		for _, d := range tx[sent:] {
			l.frames.Put(d.Addr)
		}
		if sent < len(tx) {
			l.noFrame.Add(uint64(len(tx) - sent))
		}
	}
	l.mu.Unlock()
	if truncated != 0 {
		l.truncated.Add(truncated)
	}
	l.inflight.Add(-int64(k))
}
