package xsk

import (
	"errors"
	"fmt"
	"math/bits"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ZeroCopyMode says whether Open may, must or must not bind in zero-copy
// mode.
type ZeroCopyMode uint8

const (
	// ZeroCopyAuto tries zero-copy and falls back to copy mode when the
	// driver has none (EOPNOTSUPP or EINVAL), as on veth.
	ZeroCopyAuto ZeroCopyMode = iota
	// ZeroCopyOn fails unless the driver binds in zero-copy mode.
	ZeroCopyOn
	// ZeroCopyOff binds in copy mode.
	ZeroCopyOff
)

func (m ZeroCopyMode) String() string {
	switch m {
	case ZeroCopyAuto:
		return "auto"
	case ZeroCopyOn:
		return "on"
	case ZeroCopyOff:
		return "off"
	}
	return fmt.Sprintf("ZeroCopyMode(%d)", uint8(m))
}

// SocketConfig describes one AF_XDP socket. Zero values take the defaults.
type SocketConfig struct {
	Ifindex   int          // interface to bind to (in the caller's network namespace)
	Queue     int          // its RX/TX queue
	FrameSize int          // UMEM frame size: 2048 or 4096 (DefaultFrameSize)
	NumFrames int          // frames in the UMEM (DefaultNumFrames)
	RingSize  int          // entries of each of the four rings, a power of two (DefaultRingSize)
	ZeroCopy  ZeroCopyMode // ZeroCopyAuto unless set
}

// normalize fills in the defaults and checks the fields.
func (c SocketConfig) normalize() (SocketConfig, error) {
	if c.FrameSize == 0 {
		c.FrameSize = DefaultFrameSize
	}
	if c.NumFrames == 0 {
		c.NumFrames = DefaultNumFrames
	}
	if c.RingSize == 0 {
		c.RingSize = DefaultRingSize
	}
	switch {
	case c.Ifindex <= 0:
		return c, fmt.Errorf("ifindex %d: must be positive", c.Ifindex)
	case c.Queue < 0 || c.Queue > 1<<16:
		return c, fmt.Errorf("queue %d: out of range", c.Queue)
	case c.FrameSize != 2048 && c.FrameSize != 4096:
		return c, fmt.Errorf("frame size %d: must be 2048 or 4096", c.FrameSize)
	case c.NumFrames < 1 || c.NumFrames > 1<<20:
		return c, fmt.Errorf("frames %d: must be between 1 and %d", c.NumFrames, 1<<20)
	case c.RingSize < 2 || c.RingSize > 1<<20 || bits.OnesCount(uint(c.RingSize)) != 1:
		return c, fmt.Errorf("ring size %d: must be a power of two between 2 and %d", c.RingSize, 1<<20)
	case c.ZeroCopy > ZeroCopyOff:
		return c, fmt.Errorf("zero-copy mode %v: unknown", c.ZeroCopy)
	}
	return c, nil
}

// bindTries and bindBackoff bound the retries of a bind that failed with
// EBUSY: the kernel releases a closed socket's queue from a work queue, so
// a socket opened right after another one on the same queue closed can
// find the queue still taken for a moment.
const (
	bindTries   = 6
	bindBackoff = 10 * time.Millisecond // doubled after each try: 310 ms in all
)

// Socket is one AF_XDP socket with its own UMEM and rings.
//
// Each ring has one user-side end, and the methods on it are not safe for
// concurrent use: Receive (RX ring), Fill (fill ring), Transmit (TX ring)
// and Complete (completion ring) must each be called by one goroutine at a
// time, as must Wait. Methods on different rings may run concurrently, so
// RX and TX can live on different goroutines. Stats may be called from
// anywhere until Close; Close only once nothing else runs.
type Socket struct {
	fd   int
	fdMu sync.RWMutex // Close against Stats; the loop never takes it

	cfg      SocketConfig
	zeroCopy bool
	umem     umem
	fill     ring[uint64]
	comp     ring[uint64]
	rx       ring[unix.XDPDesc]
	tx       ring[unix.XDPDesc]

	kickTries int // sendto calls a kick may make while the kernel says EAGAIN

	txKicks, txKickErrors, rxWakeups atomic.Uint64
}

// Open creates an AF_XDP socket with its UMEM and rings and binds it to
// cfg.Ifindex/cfg.Queue. The fill ring starts empty: hand it frames (from
// NewFrames) before expecting packets. Traffic arrives only once an XDP
// program redirects the queue into an XSKMAP entry holding FD.
func Open(cfg SocketConfig) (*Socket, error) {
	cfg, err := cfg.normalize()
	if err != nil {
		return nil, fmt.Errorf("xsk config: %w", err)
	}
	s := &Socket{fd: -1, cfg: cfg}
	if s.umem, err = newUMEM(cfg.FrameSize, cfg.NumFrames); err != nil {
		return nil, err
	}
	fd, err := unix.Socket(unix.AF_XDP, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		s.umem.unmap()
		return nil, fmt.Errorf("creating AF_XDP socket: %w", err)
	}
	s.fd = fd
	if err := s.setup(); err != nil {
		s.Close()
		return nil, fmt.Errorf("opening AF_XDP socket on ifindex %d queue %d: %w", cfg.Ifindex, cfg.Queue, err)
	}
	return s, nil
}

// setup registers the UMEM, creates and maps the rings, then binds. The
// rings must be mapped before bind: the kernel refuses mmap on a bound
// socket.
func (s *Socket) setup() error {
	if err := s.umem.register(s.fd); err != nil {
		return fmt.Errorf("registering the UMEM: %w", err)
	}
	size := s.cfg.RingSize
	for _, o := range []struct {
		name string
		opt  int
	}{
		{"fill", unix.XDP_UMEM_FILL_RING},
		{"completion", unix.XDP_UMEM_COMPLETION_RING},
		{"rx", unix.XDP_RX_RING},
		{"tx", unix.XDP_TX_RING},
	} {
		if err := unix.SetsockoptInt(s.fd, unix.SOL_XDP, o.opt, size); err != nil {
			return fmt.Errorf("sizing the %s ring: %w", o.name, err)
		}
	}
	var off unix.XDPMmapOffsets
	n, err := getsockopt(s.fd, unix.XDP_MMAP_OFFSETS, unsafe.Pointer(&off), unsafe.Sizeof(off))
	if err != nil {
		return fmt.Errorf("reading ring offsets: %w", err)
	}
	if n < unsafe.Sizeof(off) {
		return fmt.Errorf("reading ring offsets: kernel returned %d bytes, want %d (no ring flags: kernel older than 5.4)", n, unsafe.Sizeof(off))
	}
	u := uint32(size)
	if err := mapRing(&s.fill, s.fd, unix.XDP_UMEM_PGOFF_FILL_RING, off.Fr, u, true); err != nil {
		return fmt.Errorf("fill ring: %w", err)
	}
	if err := mapRing(&s.comp, s.fd, unix.XDP_UMEM_PGOFF_COMPLETION_RING, off.Cr, u, false); err != nil {
		return fmt.Errorf("completion ring: %w", err)
	}
	if err := mapRing(&s.rx, s.fd, unix.XDP_PGOFF_RX_RING, off.Rx, u, false); err != nil {
		return fmt.Errorf("rx ring: %w", err)
	}
	if err := mapRing(&s.tx, s.fd, unix.XDP_PGOFF_TX_RING, off.Tx, u, true); err != nil {
		return fmt.Errorf("tx ring: %w", err)
	}

	// In copy mode one sendto sends at most max_tx_budget descriptors
	// (32 by default) and says EAGAIN if more are queued. Since 6.17 the
	// budget can be raised to the ring size, so one kick drains the ring;
	// on older kernels a kick repeats sendto instead.
	s.kickTries = size/32 + 2
	budget := uint32(size)
	if size >= 32 && setsockopt(s.fd, unix.XDP_MAX_TX_SKB_BUDGET, unsafe.Pointer(&budget), 4) == nil {
		s.kickTries = 3
	}

	if err := s.bind(); err != nil {
		return err
	}
	var opts uint32
	if _, err := getsockopt(s.fd, unix.XDP_OPTIONS, unsafe.Pointer(&opts), unsafe.Sizeof(opts)); err != nil {
		return fmt.Errorf("reading the bound mode: %w", err)
	}
	s.zeroCopy = opts&unix.XDP_OPTIONS_ZEROCOPY != 0
	return nil
}

// bind binds in the mode the config asks for, falling back from zero-copy
// to copy mode for ZeroCopyAuto. A failed bind leaves the socket unbound
// with its UMEM and rings, so the fallback reuses them.
func (s *Socket) bind() error {
	const wake = unix.XDP_USE_NEED_WAKEUP
	switch s.cfg.ZeroCopy {
	case ZeroCopyOn:
		return s.bindRetry(unix.XDP_ZEROCOPY | wake)
	case ZeroCopyOff:
		return s.bindRetry(unix.XDP_COPY | wake)
	}
	err := s.bindRetry(unix.XDP_ZEROCOPY | wake)
	if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EINVAL) {
		err = s.bindRetry(unix.XDP_COPY | wake)
	}
	return err
}

func (s *Socket) bindRetry(flags uint16) error {
	sa := &unix.SockaddrXDP{Flags: flags, Ifindex: uint32(s.cfg.Ifindex), QueueID: uint32(s.cfg.Queue)}
	mode := "copy"
	if flags&unix.XDP_ZEROCOPY != 0 {
		mode = "zero-copy"
	}
	delay := bindBackoff
	for try := 1; ; try++ {
		err := unix.Bind(s.fd, sa)
		if err == nil {
			return nil
		}
		if !errors.Is(err, unix.EBUSY) || try == bindTries {
			return fmt.Errorf("binding in %s mode (%d tries): %w", mode, try, err)
		}
		time.Sleep(delay)
		delay *= 2
	}
}

// FD returns the socket's descriptor, the value to store in the XSKMAP.
func (s *Socket) FD() int { return s.fd }

// ZeroCopy reports whether the socket is bound in zero-copy mode (false:
// copy mode).
func (s *Socket) ZeroCopy() bool { return s.zeroCopy }

// FrameSize returns the size of a UMEM frame in bytes.
func (s *Socket) FrameSize() int { return s.cfg.FrameSize }

// NumFrames returns how many frames the UMEM has; frame i is at address
// i*FrameSize. NewFrames(s.FrameSize(), s.NumFrames()) makes a free list of
// them all.
func (s *Socket) NumFrames() int { return s.cfg.NumFrames }

// Close unbinds the socket and unmaps its rings and UMEM; every slice that
// Frame or Packet returned is invalid afterwards. Calling it again does
// nothing.
func (s *Socket) Close() error {
	s.fdMu.Lock()
	fd := s.fd
	s.fd = -1
	s.fdMu.Unlock()
	var err error
	if fd >= 0 {
		// Closing first stops the kernel before the memory goes.
		if e := unix.Close(fd); e != nil {
			err = fmt.Errorf("closing AF_XDP socket: %w", e)
		}
	}
	s.fill.unmap()
	s.comp.unmap()
	s.rx.unmap()
	s.tx.unmap()
	s.umem.unmap()
	return err
}

// Packet returns the UMEM from addr to the end of its frame: for a received
// descriptor d, Packet(d.Addr)[:d.Len] is the packet and the rest is the
// room a reply built in place can grow into; for a free frame's base it is
// the whole frame.
func (s *Socket) Packet(addr uint64) []byte {
	end := addr&s.umem.frameMask + s.umem.frameSize
	return s.umem.mem[addr:end:end]
}

// Receive takes up to len(descs) received packets off the RX ring into
// descs and returns how many. The frames are the caller's from here on.
func (s *Socket) Receive(descs []unix.XDPDesc) int {
	idx, n := s.rx.peek(uint32(len(descs)))
	if n == 0 {
		return 0
	}
	r := &s.rx
	for i := range n {
		descs[i] = r.entries[(idx+i)&r.mask]
	}
	r.release()
	return int(n)
}

// Fill gives frames to the kernel for receiving (any address inside a
// frame will do) and returns how many fit in the fill ring; the rest stay
// the caller's. If the driver asked for a wake-up (zero-copy only) it gets
// one.
func (s *Socket) Fill(addrs []uint64) int {
	r := &s.fill
	idx, n := r.reserve(uint32(len(addrs)))
	if n == 0 {
		return 0
	}
	for i := range n {
		r.entries[(idx+i)&r.mask] = addrs[i]
	}
	r.submit()
	if r.needWakeup() {
		s.rxWakeups.Add(1)
		// recvfrom only wakes the driver; errors say nothing useful here.
		unix.RawSyscall6(unix.SYS_RECVFROM, uintptr(s.fd), 0, 0, unix.MSG_DONTWAIT, 0, 0)
	}
	return int(n)
}

// FillRoom returns how many addresses Fill would take now, up to n: the
// free entries of the fill ring.
func (s *Socket) FillRoom(n int) int {
	return int(min(s.fill.free(uint32(n)), uint32(n)))
}

// Transmit queues up to len(descs) packets on the TX ring, kicks the kernel
// when it needs it (always in copy mode) and returns how many were queued;
// the rest stay the caller's. Each descriptor must lie inside one frame.
// The queued frames are the kernel's until Complete returns them.
// Transmit(nil) only kicks, if the ring still holds packets: call it after
// Complete made room when an earlier kick could not send everything.
func (s *Socket) Transmit(descs []unix.XDPDesc) int {
	n := s.Queue(descs)
	s.Kick()
	return n
}

// Queue is Transmit without the kick: the packets wait on the TX ring until
// the next Kick or Transmit. Several batches queued then kicked once cost
// one system call, and in copy mode one pass of the device's transmit path.
func (s *Socket) Queue(descs []unix.XDPDesc) int {
	r := &s.tx
	idx, n := r.reserve(uint32(len(descs)))
	for i := range n {
		r.entries[(idx+i)&r.mask] = descs[i]
	}
	if n > 0 {
		r.submit()
	}
	return int(n)
}

// Kick makes the kernel send what the TX ring holds, if anything and if it
// needs a wake-up for that (always in copy mode).
func (s *Socket) Kick() {
	if s.tx.pending() && (!s.zeroCopy || s.tx.needWakeup()) {
		s.kick()
	}
}

// RxReady reports whether the RX ring holds received packets.
func (s *Socket) RxReady() bool { return s.rx.avail(1) > 0 }

// kick makes the kernel process the TX ring: in copy mode sendto builds and
// sends the packets itself; in zero-copy mode it wakes the driver.
func (s *Socket) kick() {
	for range s.kickTries {
		_, _, e := unix.RawSyscall6(unix.SYS_SENDTO, uintptr(s.fd), 0, 0, unix.MSG_DONTWAIT, 0, 0)
		s.txKicks.Add(1)
		switch e {
		case 0:
			return
		case unix.EAGAIN:
			// More than one budget was queued, or the device is busy:
			// go on while packets are left.
			if !s.tx.pending() {
				return
			}
		case unix.EBUSY, unix.ENOBUFS, unix.ENETDOWN:
			// Transient; the packets stay queued (or were dropped and
			// completed) and the next kick retries.
			return
		default:
			s.txKickErrors.Add(1)
			return
		}
	}
}

// Complete takes up to len(addrs) addresses of sent packets off the
// completion ring into addrs (the TX descriptors' Addr, not rounded) and
// returns how many. The frames are the caller's again.
func (s *Socket) Complete(addrs []uint64) int {
	r := &s.comp
	idx, n := r.peek(uint32(len(addrs)))
	if n == 0 {
		return 0
	}
	for i := range n {
		addrs[i] = r.entries[(idx+i)&r.mask]
	}
	r.release()
	return int(n)
}

// setsockopt and getsockopt pass SOL_XDP structures that x/sys/unix has
// types but no helpers for.
func setsockopt(fd, name int, p unsafe.Pointer, size uintptr) error {
	_, _, e := unix.Syscall6(unix.SYS_SETSOCKOPT, uintptr(fd), unix.SOL_XDP, uintptr(name), uintptr(p), size, 0)
	if e != 0 {
		return e
	}
	return nil
}

// getsockopt returns how many bytes the kernel wrote.
func getsockopt(fd, name int, p unsafe.Pointer, size uintptr) (uintptr, error) {
	l := uint32(size)
	_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_XDP, uintptr(name), uintptr(p), uintptr(unsafe.Pointer(&l)), 0)
	if e != 0 {
		return 0, e
	}
	return uintptr(l), nil
}
