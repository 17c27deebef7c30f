//go:build linux

package bench

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"syscall"
	"time"

	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"xdoh/bpf"
	"xdoh/datapath/xsk"
)

// Do53 over UDP through AF_XDP (--xdp IFACE), as kxdpgun sends: one
// AF_XDP socket per receive queue of the interface, each with a sender
// goroutine (TX and completion rings, and the frames it sends from) and a
// receiver goroutine (RX and fill rings). The sender writes each query
// straight into a UMEM frame behind Ethernet/IP/UDP headers laid out once
// (xsk.Datagram), with a source port from its socket's range, and kicks
// the kernel once per batch (copy mode sends in that system call). The
// bpf/ program xdp_bench steers the target's replies to those ports into
// the socket of the queue they arrive on, which need not be the one that
// sent the query: the destination port names the sending socket and the
// ID its slot, as over sockets (udp.go), whose slot table and matching
// this shares. Nothing is allocated per query.

const (
	xdpPortBase  = 42000 // the first source port; each socket has xdpPorts from here on
	xdpPorts     = 1024
	xdpFrameSize = 2048
	xdpNumFrames = 8192
	xdpRingSize  = 2048 // the fill ring holds this many frames; the rest are the sender's
)

// xdpTransport is the sockets and the program, set up once for the run.
type xdpTransport struct {
	peer  *linkPeer
	prog  *bpf.BenchProgram
	lnk   link.Link
	socks []*xdpSocket
}

// xdpSocket is one queue's AF_XDP socket and what each of its two
// goroutines owns.
type xdpSocket struct {
	q    int
	sock *xsk.Socket
	file *os.File // a dup of the socket's descriptor, in Go's poller
	rc   syscall.RawConn
	dg   xsk.Datagram

	// sender-owned
	frames *xsk.Frames
	comp   []uint64
	descs  [udpBatch]unix.XDPDesc
	addrs  [udpBatch]uint64

	// receiver-owned
	rx     []unix.XDPDesc
	refill []uint64
	rn     int
	recvFn func(uintptr) bool
}

func newXDP(cfg *Config) (*xdpTransport, error) {
	ap, err := parseDo53(cfg.Target)
	if err != nil {
		return nil, err
	}
	peer, err := resolvePeer(cfg.XDP, ap)
	if err != nil {
		return nil, err
	}
	queues, err := xsk.RxQueues(cfg.XDP)
	if err != nil {
		return nil, fmt.Errorf("--xdp %s: %w", cfg.XDP, err)
	}
	hi := xdpPortBase + queues*xdpPorts - 1
	if hi > 65535 {
		return nil, fmt.Errorf("--xdp %s: %d queues need more source ports than there are", cfg.XDP, queues)
	}
	t := &xdpTransport{peer: peer}
	t.prog, err = bpf.LoadBench(bpf.BenchOptions{Target: ap, PortLo: xdpPortBase, PortHi: uint16(hi), Queues: queues})
	if err != nil {
		return nil, fmt.Errorf("--xdp %s: %w", cfg.XDP, err)
	}
	var srcMAC [6]byte
	copy(srcMAC[:], peer.ifi.HardwareAddr)
	for q := range queues {
		s, err := openXDPSocket(peer.ifi.Index, q)
		if err == nil {
			s.dg, err = xsk.NewDatagram(srcMAC, peer.dstMAC, peer.src, ap.Addr(), ap.Port())
		}
		if err == nil {
			err = t.prog.SetSocket(q, s.sock.FD())
		}
		if s != nil {
			t.socks = append(t.socks, s)
		}
		if err != nil {
			t.Close()
			return nil, fmt.Errorf("--xdp %s: %w", cfg.XDP, err)
		}
	}
	if t.lnk, _, err = xsk.Attach(t.prog.XDP(), peer.ifi.Index, xsk.ModeAuto); err != nil {
		t.Close()
		return nil, fmt.Errorf("--xdp %s: %w", cfg.XDP, err)
	}
	return t, nil
}

func openXDPSocket(ifindex, q int) (*xdpSocket, error) {
	so, err := xsk.Open(xsk.SocketConfig{Ifindex: ifindex, Queue: q, FrameSize: xdpFrameSize, NumFrames: xdpNumFrames, RingSize: xdpRingSize})
	if err != nil {
		return nil, err
	}
	s := &xdpSocket{q: q, sock: so, comp: make([]uint64, xdpRingSize), rx: make([]unix.XDPDesc, udpBatch), refill: make([]uint64, udpBatch)}
	fd, err := unix.Dup(so.FD())
	if err == nil {
		err = unix.SetNonblock(fd, true)
	}
	if err != nil {
		so.Close()
		return nil, fmt.Errorf("polling the AF_XDP socket: %w", err)
	}
	s.file = os.NewFile(uintptr(fd), fmt.Sprintf("xsk-bench-q%d", q))
	if s.rc, err = s.file.SyscallConn(); err != nil {
		s.close()
		return nil, err
	}
	s.recvFn = s.tryRecv
	// The fill ring's frames are the receiver's for good: each received
	// frame goes straight back. The others are the sender's.
	s.frames = xsk.NewFrames(xdpFrameSize, xdpNumFrames)
	fill := make([]uint64, xdpRingSize)
	s.frames.GetN(fill)
	if n := so.Fill(fill); n != len(fill) {
		s.close()
		return nil, fmt.Errorf("filling the fill ring: %d of %d frames", n, len(fill))
	}
	return s, nil
}

func (s *xdpSocket) close() {
	if s.file != nil {
		s.file.Close()
	}
	s.sock.Close()
}

// sockets is how many sockets send: Settings.Clients.
func (t *xdpTransport) sockets() int { return len(t.socks) }

func (t *xdpTransport) Close() error {
	var err error
	if t.lnk != nil {
		err = t.lnk.Close() // detach first: the sockets go after
	}
	for _, s := range t.socks {
		s.close()
	}
	return errors.Join(err, t.prog.Close())
}

// xdpWorker is one socket's queries of a phase: its slot table (IDs are
// slot indexes, source ports follow from them) and its sender's state.
type xdpWorker struct {
	slotTable
	r    *xdpRun
	s    *xdpSocket
	port uint16 // this socket's first source port
}

// xdpRun is one phase over every socket.
type xdpRun struct {
	p       *phase
	workers []*xdpWorker
}

func (t *xdpTransport) run(ctx context.Context, p *phase) error {
	n := len(t.socks)
	r := &xdpRun{p: p, workers: make([]*xdpWorker, n)}
	for i, s := range t.socks {
		w := &xdpWorker{r: r, s: s, port: uint16(xdpPortBase + i*xdpPorts)}
		w.init(p, slotTableSize(p, i, n), i, n)
		w.next = w.nextFrame
		r.workers[i] = w
	}
	p.begin()
	var wg sync.WaitGroup
	for _, w := range r.workers {
		wg.Go(w.send)
		wg.Go(w.receive)
	}
	wg.Wait()
	return nil
}

// send is a socket's sender goroutine.
func (w *xdpWorker) send() {
	defer w.senderFinished()
	if len(w.slots) == 0 {
		return
	}
	p, s := w.r.p, w.s
	for {
		w.reap()
		room := min(udpBatch, s.frames.Len())
		if room == 0 {
			s.sock.Kick()
			runtime.Gosched()
			continue
		}
		var n int
		if p.open() {
			n = w.takeDue(room)
		} else {
			n = w.takeFree(room)
		}
		if n < 0 {
			return
		}
		if n > 0 {
			w.transmit(n)
		}
	}
}

// reap takes the sent frames back.
func (w *xdpWorker) reap() {
	s := w.s
	if n := s.sock.Complete(s.comp); n > 0 {
		s.frames.PutN(s.comp[:n])
	}
}

// transmit queues the batch's n frames on the TX ring, kicks once, and
// counts them.
func (w *xdpWorker) transmit(n int) {
	s := w.s
	for done := s.sock.Queue(s.descs[:n]); done < n; done += s.sock.Queue(s.descs[done:n]) {
		s.sock.Kick() // the ring is full: send what it holds first
		w.reap()
		runtime.Gosched()
	}
	s.sock.Kick()
	now := w.r.p.rec.now()
	bytes := 0
	for j := range n {
		bytes += int(s.descs[j].Len) - s.dg.Len()
	}
	w.st.sent(now, n, bytes)
	w.lastSend.Store(now)
	w.st.flush()
}

// nextFrame is the table's next: query seq into a free frame as batch
// position j with ID id (the source port follows from it); false if the
// source has no more (the frame stays free).
func (w *xdpWorker) nextFrame(j int, id uint16, seq uint64, _ int64) ([]byte, bool) {
	s := w.s
	addr, _ := s.frames.Get() // the caller made room
	pkt := s.sock.Packet(addr)
	hl := s.dg.Len()
	q, ok := w.p.src.Next(seq, w.rng, pkt[hl:hl+MaxQuery])
	if !ok {
		s.frames.Put(addr)
		return nil, false
	}
	binary.BigEndian.PutUint16(q, id) // before the checksum
	s.descs[j] = unix.XDPDesc{Addr: addr, Len: uint32(s.dg.Build(pkt, w.port+id%xdpPorts, len(q)))}
	return q, true
}

// tryRecv is the receiver's poller callback: false waits for packets.
func (s *xdpSocket) tryRecv(uintptr) bool {
	s.rn = s.sock.Receive(s.rx)
	return s.rn > 0
}

// receive is a socket's receiver goroutine: it matches the replies that
// arrive on its queue, whichever socket sent the query, and times out its
// own worker's queries, until every sender is done and nothing is in
// flight (or the last send's timeout has passed).
func (w *xdpWorker) receive() {
	r, s, p := w.r, w.s, w.r.p
	timeout := int64(p.cfg.Timeout)
	lastScan := p.rec.now()
	for {
		s.rn = s.sock.Receive(s.rx)
		if s.rn == 0 {
			_ = s.file.SetReadDeadline(time.Now().Add(udpScan))
			_ = s.rc.Read(s.recvFn) // a deadline is no error here
		}
		now := p.rec.now()
		for j := range s.rn {
			d := s.rx[j]
			w.reply(s.sock.Packet(d.Addr)[:d.Len], now)
			s.refill[j] = d.Addr
		}
		if s.rn > 0 {
			s.sock.Fill(s.refill[:s.rn]) // as many as were taken: they fit
		}
		if now-lastScan >= int64(udpScan) || s.rn == 0 {
			w.scan(now, timeout)
			lastScan = now
		}
		w.rt.flush()
		if done, last := r.sendersDone(); done {
			if r.inflight() == 0 {
				return
			}
			if now-last > timeout+int64(udpScan) {
				w.scan(now+timeout, timeout)
				w.rt.flush()
				return
			}
		}
	}
}

// reply matches one frame to its query, in the worker its port names.
func (w *xdpWorker) reply(frame []byte, now int64) {
	v, ok := xsk.Parse(frame)
	if !ok {
		w.rt.malformed()
		return
	}
	port := int(binary.BigEndian.Uint16(frame[v.L4Off+2:])) - xdpPortBase
	if port < 0 || port/xdpPorts >= len(w.r.workers) {
		w.rt.malformed()
		return
	}
	o := w.r.workers[port/xdpPorts]
	b := v.Payload(frame)
	if len(b) >= 2 && int(binary.BigEndian.Uint16(b))%xdpPorts != port%xdpPorts {
		w.rt.malformed() // an ID the port does not go with
		return
	}
	o.match(b, now, w.rt)
}

// sendersDone reports whether every sender is done, and the last send.
func (r *xdpRun) sendersDone() (bool, int64) {
	var last int64
	for _, w := range r.workers {
		if !w.senderDone.Load() {
			return false, 0
		}
		last = max(last, w.lastSend.Load())
	}
	return true, last
}

func (r *xdpRun) inflight() int64 {
	var n int64
	for _, w := range r.workers {
		n += w.inflight.Load()
	}
	return n
}
