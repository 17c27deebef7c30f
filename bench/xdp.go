//go:build linux

package bench

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"sync"

	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"xdoh/bpf"
	"xdoh/datapath/xsk"
)

// Do53 over UDP through AF_XDP (--xdp IFACE), as kxdpgun sends: an
// AF_XDP socket on every receive queue of the interface, the first -c of
// which send (one by default: on a veth the queue sent on is the peer's
// receive queue, and a target may serve only some of them). Each sending
// socket has one goroutine, locked to its thread as kxdpgun's threads
// are, that owns its rings and frames and those of the receive-only
// sockets it is given: it sends a batch when one can go, takes back the
// sent frames, drains the RX rings without blocking, and sleeps in
// poll(2) only when it could neither send nor receive, until a reply
// arrives, the open loop's next query is due or the timeout scan is.
// There is no second goroutine per socket to wake. Each query is written
// straight into a UMEM frame behind Ethernet/IP/UDP headers laid out
// once (xsk.Datagram), with a source port from its socket's range, and
// the kernel is kicked once per batch (copy mode sends in that system
// call). The bpf/ program xdp_bench steers the target's replies to those
// ports into the socket of the queue they arrive on, which need not be
// the one that sent the query: the destination port names the sending
// socket and the ID its slot, as over sockets (udp.go), whose slot table
// and matching this shares. Nothing is allocated per query.

const (
	xdpPortBase  = 42000 // the first source port; each socket has xdpPorts from here on
	xdpPorts     = 1024
	xdpFrameSize = 2048
	xdpNumFrames = 8192
	xdpRingSize  = 4096 // the fill ring holds this many frames; the rest are for sending
)

// xdpTransport is the sockets and the program, set up once for the run.
type xdpTransport struct {
	peer  *linkPeer
	prog  *bpf.BenchProgram
	lnk   link.Link
	socks []*xdpSocket // one per receive queue; the first senders send
	// senders is how many sockets send (-c, at most one per queue).
	senders int
}

// xdpSocket is one queue's AF_XDP socket, its frames and its batches;
// one loop goroutine owns all of it.
type xdpSocket struct {
	q      int
	sock   *xsk.Socket
	dg     xsk.Datagram
	frames *xsk.Frames // free TX frames (the fill ring's are the RX side's for good)
	comp   []uint64
	descs  [udpBatch]unix.XDPDesc
	rx     [udpBatch]unix.XDPDesc
	refill [udpBatch]uint64
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
	senders := min(max(cfg.Clients, 1), queues)
	hi := xdpPortBase + senders*xdpPorts - 1
	if hi > 65535 {
		return nil, fmt.Errorf("--xdp %s: %d sending queues need more source ports than there are", cfg.XDP, senders)
	}
	t := &xdpTransport{peer: peer, senders: senders}
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
	s := &xdpSocket{q: q, sock: so, comp: make([]uint64, xdpRingSize)}
	// The fill ring's frames are the RX side's for good: each received
	// frame goes straight back. The others are for sending.
	s.frames = xsk.NewFrames(xdpFrameSize, xdpNumFrames)
	fill := make([]uint64, xdpRingSize)
	s.frames.GetN(fill)
	if n := so.Fill(fill); n != len(fill) {
		s.close()
		return nil, fmt.Errorf("filling the fill ring: %d of %d frames", n, len(fill))
	}
	return s, nil
}

func (s *xdpSocket) close() { s.sock.Close() }

// sockets is how many sockets send: Settings.Clients.
func (t *xdpTransport) sockets() int { return t.senders }

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

// xdpWorker is one sending socket's queries of a phase: its slot table
// (IDs are slot indexes, source ports follow from them) and its sending
// state.
type xdpWorker struct {
	slotTable
	r        *xdpRun
	s        *xdpSocket
	port     uint16 // this socket's first source port
	sendDone bool
}

// xdpRun is one phase over every socket.
type xdpRun struct {
	p       *phase
	workers []*xdpWorker // the sending sockets', by socket index
}

// xdpLoop is one goroutine's share: a sending socket and the
// receive-only sockets it serves too, and what it polls.
type xdpLoop struct {
	r       *xdpRun
	workers []*xdpWorker
	socks   []*xdpSocket // to receive from: its workers' and its receive-only sockets
	rt      *tally       // what it receives: its first worker's
	pfds    []unix.PollFd
	ts      unix.Timespec
}

func (t *xdpTransport) run(ctx context.Context, p *phase) error {
	loops := t.loops(p)
	p.begin()
	var wg sync.WaitGroup
	for _, l := range loops {
		wg.Go(l.run)
	}
	wg.Wait()
	return nil
}

// loops sets up a phase: a loop for each sending socket, the
// receive-only sockets shared out among them.
func (t *xdpTransport) loops(p *phase) []*xdpLoop {
	n := t.senders
	r := &xdpRun{p: p, workers: make([]*xdpWorker, n)}
	loops := make([]*xdpLoop, n)
	for i, s := range t.socks {
		if i < n {
			w := &xdpWorker{r: r, s: s, port: uint16(xdpPortBase + i*xdpPorts)}
			w.init(p, slotTableSize(p, i, n), i, n)
			w.next = w.nextFrame
			r.workers[i] = w
			loops[i] = &xdpLoop{r: r, workers: []*xdpWorker{w}, rt: w.rt}
		}
		l := loops[i%n]
		l.socks = append(l.socks, s)
		l.pfds = append(l.pfds, unix.PollFd{Fd: int32(s.sock.FD()), Events: unix.POLLIN})
	}
	return loops
}

// run is a loop's goroutine: on its own thread, as kxdpgun's, it sends a
// batch if one can go, takes the replies that have arrived on its
// sockets, and sleeps in poll(2) only when it could do neither: until a
// reply arrives, the open loop's next query is due, or it is time to
// look for timed-out queries. It ends when every socket's sending is
// over and nothing is in flight (or the last send's timeout has passed):
// a reply to any socket's query can arrive on any queue.
func (l *xdpLoop) run() {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	r, p := l.r, l.r.p
	timeout := int64(p.cfg.Timeout)
	lastScan := p.rec.now()
	for {
		moved, sending := false, false
		for _, w := range l.workers {
			if w.sendBatch() {
				moved = true
			}
			sending = sending || !w.sendDone
		}
		for _, s := range l.socks {
			if l.receive(s) {
				moved = true
			}
		}
		now := p.rec.now()
		if now-lastScan >= int64(udpScan) {
			for _, w := range l.workers {
				w.scan(now, timeout)
				w.rt.flush()
			}
			lastScan = now
		}
		if !sending {
			if done, last := r.sendersDone(); done {
				if r.inflight() == 0 {
					return
				}
				if now-last > timeout+int64(udpScan) {
					for _, w := range l.workers {
						w.scan(now+timeout, timeout)
						w.rt.flush()
					}
					return
				}
			}
		}
		if !moved {
			l.park(now, lastScan)
		}
	}
}

// park waits in poll(2) for a reply on any of the loop's sockets, at most
// until the next query is due (open loop) or the next timeout scan.
func (l *xdpLoop) park(now, lastScan int64) {
	until := lastScan + int64(udpScan)
	for _, w := range l.workers {
		if w.sendDone || !w.p.open() {
			continue
		}
		if at, ok := w.nextDue(); ok {
			until = min(until, at)
		}
	}
	if until <= now {
		return
	}
	l.ts = unix.NsecToTimespec(until - now)
	for i := range l.pfds {
		l.pfds[i].Revents = 0
	}
	_, _ = unix.Ppoll(l.pfds, &l.ts, nil) // EINTR and the rest: the loop looks again
}

// sendBatch takes the sent frames back and, if a batch of queries can go
// (closed loop: free IDs; open loop: queries due) and there are frames
// for it, sends it. It reports whether it did anything.
func (w *xdpWorker) sendBatch() bool {
	if w.sendDone {
		return false
	}
	s := w.s
	w.reap()
	room := min(udpBatch, s.frames.Len())
	if room == 0 {
		// Every frame is on the TX ring or not completed yet.
		s.sock.Kick()
		return true
	}
	var n int
	if w.p.open() {
		n = w.takeDue(room, false)
	} else {
		n = w.takeFree(room, false)
	}
	if n < 0 {
		w.sendDone = true
		w.senderFinished()
		return true
	}
	if n == 0 {
		return false
	}
	w.transmit(n)
	return true
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

// receive matches the replies waiting on s's RX ring, whichever socket
// sent their queries, and gives their frames back to the fill ring. It
// reports whether there were any.
func (l *xdpLoop) receive(s *xdpSocket) bool {
	n := s.sock.Receive(s.rx[:])
	if n == 0 {
		return false
	}
	now := l.r.p.rec.now()
	for j := range n {
		d := s.rx[j]
		l.reply(s.sock.Packet(d.Addr)[:d.Len], now)
		s.refill[j] = d.Addr
	}
	s.sock.Fill(s.refill[:n]) // as many as were taken: they fit
	l.rt.flush()
	return true
}

// reply matches one frame to its query, in the worker its port names.
func (l *xdpLoop) reply(frame []byte, now int64) {
	v, ok := xsk.Parse(frame)
	if !ok {
		l.rt.malformed()
		return
	}
	port := int(binary.BigEndian.Uint16(frame[v.L4Off+2:])) - xdpPortBase
	if port < 0 || port/xdpPorts >= len(l.r.workers) {
		l.rt.malformed()
		return
	}
	o := l.r.workers[port/xdpPorts]
	b := v.Payload(frame)
	if len(b) >= 2 && int(binary.BigEndian.Uint16(b))%xdpPorts != port%xdpPorts {
		l.rt.malformed() // an ID the port does not go with
		return
	}
	o.match(b, now, l.rt)
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
