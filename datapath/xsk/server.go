package xsk

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"xdoh/bpf"
	"xdoh/forwarder"
)

// Handler is the part of the forwarder the datapath needs (the same as
// datapath/udp's); *forwarder.Switch implements it.
type Handler interface {
	// Answer does not block. (resp, true) means reply now with resp (nil:
	// send nothing); false means call Resolve with the same request.
	Answer(r *forwarder.Request, out []byte) ([]byte, bool)
	// Resolve copies r and later calls done(resp) from another goroutine,
	// or returns (resp, true) to reply at once (overload SERVFAIL).
	Resolve(r *forwarder.Request, out []byte, done func(resp []byte)) ([]byte, bool)
}

// Mode is how the XDP program is attached.
type Mode int

const (
	// ModeAuto tries native (driver) mode, then generic (skb) mode.
	ModeAuto Mode = iota
	ModeNative
	ModeGeneric
)

// ParseMode reads a config mode name (auto, native, generic).
func ParseMode(s string) (Mode, error) {
	switch s {
	case "", "auto":
		return ModeAuto, nil
	case "native":
		return ModeNative, nil
	case "generic":
		return ModeGeneric, nil
	}
	return 0, fmt.Errorf("%q is not one of auto, native, generic", s)
}

func (m Mode) String() string {
	switch m {
	case ModeNative:
		return "native"
	case ModeGeneric:
		return "generic"
	}
	return "auto"
}

// Affinity is where the loops run.
type Affinity int

const (
	// AffinityAuto binds each queue's loop to the CPU whose softirq fills
	// its RX ring, while one does: the XDP program counts its redirects
	// per queue and CPU, and every 250 ms (follow.go) a loop whose queue
	// got at least 90% of its packets from one CPU, a CPU xdoh may use,
	// moves onto an OS thread of its own bound to that CPU; it is unbound
	// when that CPU falls below 75% (moved when another has 90%). Below
	// 1000 packets a second nothing changes: an idle queue keeps its
	// binding. On a NIC that is the CPU of the queue's
	// interrupt; on a veth, the sender's. Rings and frames then stay in
	// one CPU's caches, and the kick that transmits runs there too.
	AffinityAuto Affinity = iota
	// AffinityOff leaves the loops to Go's scheduler, on any CPU.
	AffinityOff
)

// ParseAffinity reads a config affinity (auto, off).
func ParseAffinity(s string) (Affinity, error) {
	switch s {
	case "", "auto":
		return AffinityAuto, nil
	case "off":
		return AffinityOff, nil
	}
	return 0, fmt.Errorf("%q is not one of auto, off", s)
}

func (a Affinity) String() string {
	if a == AffinityOff {
		return "off"
	}
	return "auto"
}

// Config for one listener's AF_XDP datapath.
type Config struct {
	Name       string           // listener name, copied into each Request
	Addrs      []netip.AddrPort // the listener's Do53 addresses; an unspecified address is any local one
	Interfaces []string
	Mode       Mode
	// Allow is the listener's source ACL. With ACLDrop the XDP program
	// drops (and counts) other sources; otherwise it lets them through and
	// the forwarder answers them REFUSED.
	Allow   []netip.Prefix
	ACLDrop bool
	// Frames per socket's UMEM (default 4096) and ring size (default 2048).
	Frames, RingSize int
	// Batch is the most descriptors one loop iteration takes (default 64).
	Batch int
	// Affinity binds each queue's loop to a CPU (default AffinityAuto).
	Affinity Affinity
	// KernelCache is the in-kernel answer tier: hot cached answers sent
	// by the XDP program itself (XDP_TX). It needs a Handler that is also
	// a Peeker.
	KernelCache KernelCache
	// Log gets what the server does not return as an error (nil:
	// slog.Default()).
	Log *slog.Logger
}

// Stats are a listener's counters summed over its sockets.
type Stats struct {
	Queries   uint64 // frames received from the RX rings
	Replies   uint64 // replies put on the TX rings (at once and after resolving)
	Misses    uint64 // queries handed to the forwarder's asynchronous path
	Malformed uint64 // frames that did not parse (dropped)
	NoFrame   uint64 // replies dropped: no free UMEM frame or TX ring full
	Truncated uint64 // answers cut to fit a frame (TC set)
}

// Iface is what one attached interface reports at scrape time.
type Iface struct {
	Name     string
	Mode     Mode // native or generic, as attached
	Verdicts bpf.Counters
	Sockets  []SocketStats
	// KernelCache says whether the in-kernel answer tier runs here;
	// Answers are its per-query events.
	KernelCache bool
	Answers     bpf.AnswerCounters
}

// SocketStats are one queue's socket counters (XDP_STATISTICS).
type SocketStats struct {
	Queue    int
	ZeroCopy bool
	CPU      int      // the CPU its loop is bound to; -1: none
	Kernel   XDPStats // XDP_STATISTICS, see stats.go
}

// Server is one listener's AF_XDP datapath on its interfaces.
type Server struct {
	cfg Config
	h   Handler

	mu       sync.Mutex
	started  bool
	stopped  bool
	ifaces   []*iface
	tier     *tier     // nil: no interface runs the in-kernel tier
	follow   *follower // nil: AffinityOff
	wg       sync.WaitGroup
	stopping atomic.Bool
}

// iface is the program, link and sockets on one interface.
type iface struct {
	name   string
	index  int
	mode   Mode
	prog   *bpf.Program
	link   link.Link
	loops  []*loop
	ls     []bpf.Listener
	tier   bool   // answers from the program's map
	driver string // ETHTOOL_GDRVINFO's, "" if unknown
	mtu    int
}

// New checks cfg; nothing is attached until Start.
func New(cfg Config, h Handler) (*Server, error) {
	if h == nil {
		return nil, errors.New("xdp: no handler")
	}
	if len(cfg.Addrs) == 0 {
		return nil, errors.New("xdp: no addresses")
	}
	if len(cfg.Interfaces) == 0 {
		return nil, errors.New("xdp: no interfaces")
	}
	if cfg.Frames <= 0 {
		cfg.Frames = 4096
	}
	if cfg.RingSize <= 0 {
		cfg.RingSize = 2048
	}
	if cfg.Batch <= 0 {
		cfg.Batch = 64
	}
	return &Server{cfg: cfg, h: h}, nil
}

func (s *Server) log() *slog.Logger {
	if s.cfg.Log != nil {
		return s.cfg.Log
	}
	return slog.Default()
}

// Start loads the XDP program on every interface, opens one AF_XDP socket
// per receive queue and attaches the program. On any failure everything
// done so far is undone and the error says what was being done; the
// caller decides whether to fall back to the socket path.
func (s *Server) Start() (err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started {
		return errors.New("xdp: already started")
	}
	s.started = true
	defer func() {
		if err != nil {
			if s.follow != nil {
				s.follow.close()
				s.follow = nil
			}
			s.closeIfaces()
		}
	}()
	for _, name := range s.cfg.Interfaces {
		ifc, err := s.startIface(name)
		if ifc != nil {
			s.ifaces = append(s.ifaces, ifc)
		}
		if err != nil {
			return fmt.Errorf("xdp on %s: %w", name, err)
		}
	}
	if s.cfg.Affinity == AffinityAuto {
		if err := s.startFollow(); err != nil {
			return err
		}
	}
	// Last: nothing after it fails, and nothing stops its goroutine on
	// the error path.
	if err := s.startTier(); err != nil {
		return err
	}
	for _, ifc := range s.ifaces {
		for _, l := range ifc.loops {
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				l.run()
			}()
		}
	}
	return nil
}

func (s *Server) startIface(name string) (*iface, error) {
	ni, err := net.InterfaceByName(name)
	if err != nil {
		return nil, err
	}
	queues, err := RxQueues(name)
	if err != nil {
		return nil, err
	}
	entries := s.cfg.KernelCache.Entries
	if s.cfg.KernelCache.Mode == KernelCacheOff {
		entries = 64 // the map exists, but nothing is put in it
	}
	tier := s.cfg.KernelCache.Mode != KernelCacheOff
	prog, err := bpf.Load(bpf.Options{Queues: queues, Answers: tier, AnswerEntries: entries})
	if err != nil && tier {
		// A kernel that cannot verify the answer tier runs without it.
		s.log().Warn("xdp: in-kernel answers unavailable, loading without them", "listener", s.cfg.Name, "interface", name, "reason", err.Error())
		prog, err = bpf.Load(bpf.Options{Queues: queues, AnswerEntries: 64})
	}
	if err != nil {
		return nil, err
	}
	ifc := &iface{name: name, index: ni.Index, prog: prog, mtu: ni.MTU}
	ifc.driver, _ = ethtoolDriver(name)
	ls := make([]bpf.Listener, len(s.cfg.Addrs))
	for i, a := range s.cfg.Addrs {
		ls[i] = bpf.Listener{ID: 0, Addr: a, Allow: s.cfg.Allow, ACLDrop: s.cfg.ACLDrop && len(s.cfg.Allow) > 0}
	}
	ifc.ls = ls
	if err := prog.SetListeners(ls); err != nil {
		return ifc, err
	}
	// Attach first: a copy-mode socket binds to a queue of an interface
	// that has an XDP program, and the program redirects only to queues
	// whose socket is in the map, so packets of a queue without one keep
	// reaching the kernel in the meantime.
	if ifc.link, ifc.mode, err = Attach(prog.XDP(), ni.Index, s.cfg.Mode); err != nil {
		return ifc, err
	}
	for q := range queues {
		so, err := Open(SocketConfig{Ifindex: ni.Index, Queue: q, NumFrames: s.cfg.Frames, RingSize: s.cfg.RingSize})
		if err != nil {
			return ifc, fmt.Errorf("opening an AF_XDP socket on queue %d: %w", q, err)
		}
		l, err := newLoop(so, s, q, ni.MTU)
		if err != nil {
			_ = so.Close()
			return ifc, err
		}

		ifc.loops = append(ifc.loops, l)
		if err := prog.SetSocket(q, so.FD()); err != nil {
			return ifc, fmt.Errorf("registering the socket of queue %d: %w", q, err)
		}
	}
	return ifc, nil
}

// startTier turns the in-kernel answer tier on where the config wants it:
// every interface with KernelCacheOn, native ones with KernelCacheAuto.
func (s *Server) startTier() error {
	kc := s.cfg.KernelCache
	p, ok := s.h.(Peeker)
	if kc.Mode == KernelCacheOff || !ok {
		return nil
	}
	t := newTier(kc, p, s.cfg.Name)
	var tables []*hotTable
	for _, ifc := range s.ifaces {
		if !ifc.prog.Answers() {
			continue
		}
		if kc.Mode == KernelCacheAuto && (ifc.mode != ModeNative || ifc.driver == "veth") {
			// On a veth, native XDP_TX frames only arrive when the
			// peer has an XDP program too: `on` asserts it does.
			s.log().Info("xdp: in-kernel answers off (kernel_cache auto: native mode on a NIC only; on forces them)",
				"listener", s.cfg.Name, "interface", ifc.name, "mode", ifc.mode.String(), "driver", ifc.driver)
			continue
		}
		ls := make([]bpf.Listener, len(ifc.ls))
		for i, l := range ifc.ls {
			l.Answers = true
			ls[i] = l
		}
		if err := ifc.prog.SetListeners(ls); err != nil {
			return fmt.Errorf("xdp on %s: turning on the in-kernel answers: %w", ifc.name, err)
		}
		ifc.tier = true
		t.progs = append(t.progs, ifc.prog)
		// The program does not truncate: no answer larger than the
		// link takes in one IPv6 packet.
		t.cfg.MaxAnswer = min(t.cfg.MaxAnswer, ifc.mtu-40-8)
		for _, l := range ifc.loops {
			l.hot = newHotTable()
			tables = append(tables, l.hot)
		}
	}
	if len(t.progs) == 0 {
		return nil
	}
	s.tier = t
	go t.run(tables)
	return nil
}

// LockKernelCache empties the in-kernel answer tier and keeps it empty
// until unlock is called: a reload swaps the pipeline in between, so the
// kernel never answers from the old one once the new one answers.
func (s *Server) LockKernelCache() (unlock func()) {
	s.mu.Lock()
	t := s.tier
	s.mu.Unlock()
	if t == nil {
		return func() {}
	}
	return t.lock()
}

// InvalidateKernel drops the kernel's answer for a cache key (dnsmsg.
// AppendKey's form), if it has one: wire it to the cache's OnChange.
func (s *Server) InvalidateKernel(key []byte) {
	if t := s.tier; t != nil {
		t.invalidate(key)
	}
}

// TierStats reads the in-kernel tier's counters; false when it is off.
func (s *Server) TierStats() (TierStats, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tier == nil {
		return TierStats{}, false
	}
	return s.tier.stats(), true
}

// Attach links an XDP program to the interface index in mode (auto:
// native, else generic) and returns the mode it got. Closing the link
// detaches it.
func Attach(prog *ebpf.Program, index int, mode Mode) (link.Link, Mode, error) {
	try := []Mode{mode}
	if mode == ModeAuto {
		try = []Mode{ModeNative, ModeGeneric}
	}
	var errs []error
	for _, m := range try {
		flags := link.XDPDriverMode
		if m == ModeGeneric {
			flags = link.XDPGenericMode
		}
		l, err := link.AttachXDP(link.XDPOptions{Program: prog, Interface: index, Flags: flags})
		if err == nil {
			return l, m, nil
		}
		if errors.Is(err, unix.EBUSY) || errors.Is(err, unix.EEXIST) {
			return nil, m, fmt.Errorf("attaching in %s mode: the interface already has an XDP program attached "+
				"(see `ip link show`; another xdoh, or detach it with `ip link set dev <if> xdp off`): %w", m, err)
		}
		errs = append(errs, fmt.Errorf("attaching in %s mode: %w", m, err))
	}
	return nil, mode, errors.Join(errs...)
}

// RxQueues is how many receive queues the interface has: ETHTOOL_GCHANNELS
// (rx or combined channels, like Knot), which follows the calling thread's
// network namespace; sysfs, which shows the namespace it was mounted in,
// only for a driver without it.
func RxQueues(name string) (int, error) {
	if n, err := ethtoolRxQueues(name); err == nil && n > 0 {
		return n, nil
	}
	ents, err := os.ReadDir(filepath.Join("/sys/class/net", name, "queues"))
	if err != nil {
		return 0, fmt.Errorf("counting receive queues: %w", err)
	}
	n := 0
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "rx-") {
			n++
		}
	}
	if n == 0 {
		return 0, errors.New("counting receive queues: none in sysfs")
	}
	return n, nil
}

// ethtoolChannels is struct ethtool_channels.
type ethtoolChannels struct {
	Cmd                                         uint32
	MaxRx, MaxTx, MaxOther, MaxCombined         uint32
	RxCount, TxCount, OtherCount, CombinedCount uint32
}

// ifreqData is struct ifreq with ifr_data.
type ifreqData struct {
	name [unix.IFNAMSIZ]byte
	data unsafe.Pointer
	_    [16]byte
}

// ethtoolDrvinfo is the head of struct ethtool_drvinfo (the kernel fills
// the whole struct: the tail is room).
type ethtoolDrvinfo struct {
	Cmd    uint32
	Driver [32]byte
	_      [164]byte
}

// ethtoolDriver is the interface's driver name (ETHTOOL_GDRVINFO).
func ethtoolDriver(name string) (string, error) {
	var info ethtoolDrvinfo
	info.Cmd = unix.ETHTOOL_GDRVINFO
	if err := ethtool(name, unsafe.Pointer(&info)); err != nil {
		return "", err
	}
	return unix.ByteSliceToString(info.Driver[:]), nil
}

// ethtool runs one SIOCETHTOOL command on the interface.
func ethtool(name string, data unsafe.Pointer) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	var ifr ifreqData
	copy(ifr.name[:unix.IFNAMSIZ-1], name)
	ifr.data = data
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&ifr))); e != 0 {
		return e
	}
	return nil
}

func ethtoolRxQueues(name string) (int, error) {
	ch := ethtoolChannels{Cmd: unix.ETHTOOL_GCHANNELS}
	if err := ethtool(name, unsafe.Pointer(&ch)); err != nil {
		return 0, err
	}
	return int(max(ch.RxCount, ch.CombinedCount)), nil
}

// Stop detaches the programs first (new packets go to the kernel sockets),
// then ends the loops, waits for the replies of misses still resolving
// until ctx is done, and closes the sockets.
func (s *Server) Stop(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.started || s.stopped {
		return nil
	}
	s.stopped = true
	if s.tier != nil {
		s.tier.close()
	}
	if s.follow != nil {
		s.follow.close()
	}
	for _, ifc := range s.ifaces {
		if ifc.link != nil {
			_ = ifc.link.Close()
			ifc.link = nil
		}
	}
	s.stopping.Store(true)
	for _, ifc := range s.ifaces {
		for _, l := range ifc.loops {
			l.wake()
		}
	}
	s.wg.Wait()
	var err error
	for _, ifc := range s.ifaces {
		for _, l := range ifc.loops {
			if e := l.waitMisses(ctx); e != nil && err == nil {
				err = e
			}
		}
	}
	s.closeIfaces()
	return err
}

// closeIfaces releases everything Start made; loops must have ended.
func (s *Server) closeIfaces() {
	for _, ifc := range s.ifaces {
		if ifc.link != nil {
			_ = ifc.link.Close()
		}
		for _, l := range ifc.loops {
			l.close()
		}
		_ = ifc.prog.Close()
	}
	s.ifaces = nil
}

// Stats sums the loops' counters.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	var st Stats
	for _, ifc := range s.ifaces {
		for _, l := range ifc.loops {
			st.Queries += l.queries.Load()
			st.Replies += l.replies.Load()
			st.Misses += l.misses.Load()
			st.Malformed += l.malformed.Load()
			st.NoFrame += l.noFrame.Load()
			st.Truncated += l.truncated.Load()
		}
	}
	return st
}

// Interfaces reports each attached interface's mode, XDP verdict counters
// and sockets' kernel statistics, read now.
func (s *Server) Interfaces() []Iface {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Iface
	for _, ifc := range s.ifaces {
		r := Iface{Name: ifc.name, Mode: ifc.mode, KernelCache: ifc.tier}
		r.Verdicts, _ = ifc.prog.Counters()
		if ifc.tier {
			r.Answers, _ = ifc.prog.AnswerCounters()
		}
		for _, l := range ifc.loops {
			ks, _ := l.sock.Stats()
			r.Sockets = append(r.Sockets, SocketStats{Queue: l.queue, ZeroCopy: l.sock.ZeroCopy(), CPU: int(l.cpu.Load()), Kernel: ks})
		}
		out = append(out, r)
	}
	return out
}

// Modes says how each interface is attached ("native" or "generic").
func (s *Server) Modes() map[string]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := map[string]string{}
	for _, ifc := range s.ifaces {
		m[ifc.name] = ifc.mode.String()
	}
	return m
}
