package bpf

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"os"
	"runtime"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/miekg/dns"
	"golang.org/x/sys/unix"
)

// XDP actions (enum xdp_action).
const (
	xdpAborted  = 0
	xdpDrop     = 1
	xdpPass     = 2
	xdpTX       = 3
	xdpRedirect = 4
)

// verdict is the action the program returns for a packet counted under r.
func (r Reason) verdict() uint32 {
	switch r {
	case ReasonRedirect:
		return xdpRedirect
	case ReasonDropACL, ReasonDropTorn:
		return xdpDrop
	case ReasonTX:
		return xdpTX
	}
	return xdpPass
}

// load loads the program for a test, skipping it where BPF cannot be used.
func load(tb testing.TB, opts Options) *Program {
	tb.Helper()
	p, err := Load(opts)
	if errors.Is(err, os.ErrPermission) && !errors.As(err, new(*ebpf.VerifierError)) {
		tb.Skipf("skipping: loading an XDP program needs root or CAP_BPF (uid %d): %v", os.Geteuid(), err)
	}
	if errors.Is(err, ebpf.ErrNotSupported) {
		tb.Skipf("skipping: this kernel cannot load the XDP program: %v", err)
	}
	if err != nil {
		tb.Fatalf("%+v", err)
	}
	tb.Cleanup(func() {
		if err := p.Close(); err != nil {
			tb.Errorf("closing: %v", err)
		}
	})
	return p
}

// run runs frame through the program once and returns the verdict and the
// one reason counted, failing unless exactly one counter went up by one and
// the frame came back unchanged.
func run(tb testing.TB, p *Program, frame []byte) (uint32, Reason) {
	tb.Helper()
	before, err := p.Counters()
	if err != nil {
		tb.Fatal(err)
	}
	out := make([]byte, len(frame)+64)
	verdict, err := p.XDP().Run(&ebpf.RunOptions{Data: frame, DataOut: out})
	if err != nil {
		tb.Fatalf("running the program on %d bytes: %v", len(frame), err)
	}
	after, err := p.Counters()
	if err != nil {
		tb.Fatal(err)
	}
	reason := NumReasons
	for r := range NumReasons {
		switch d := after[r] - before[r]; {
		case d == 0:
		case d == 1 && reason == NumReasons:
			reason = r
		default:
			tb.Fatalf("counter %s went up by %d (reason so far: %s)", r, d, reason)
		}
	}
	if reason == NumReasons {
		tb.Fatalf("no counter went up (verdict %d)", verdict)
	}
	if string(out[:len(frame)]) != string(frame) {
		tb.Errorf("the program changed the frame")
	}
	return verdict, reason
}

// query is a DNS query for example.com A, 29 bytes.
func query(tb testing.TB) []byte {
	tb.Helper()
	m := new(dns.Msg)
	m.SetQuestion("example.com.", dns.TypeA)
	b, err := m.Pack()
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// pkt describes a test frame: a UDP datagram in IPv4 or IPv6 in Ethernet,
// with knobs to make it unusual. The zero value of each knob is normal.
type pkt struct {
	tags     []uint16 // VLAN TPIDs, outer first
	etype    uint16   // EtherType after the tags (0: IPv4 or IPv6 from dst)
	src, dst netip.AddrPort
	proto    uint8   // IPv4 protocol / IPv6 next header (0: UDP)
	version  uint8   // IP version field (0: from dst)
	opts     int     // IPv4 option bytes (a multiple of 4)
	frag     uint16  // IPv4 flags and fragment offset (host order)
	ext      *uint8  // IPv6: an 8-byte extension header of this type before UDP
	ipLen    *uint16 // IPv4 total length / IPv6 payload length (nil: right)
	udpLen   *uint16 // UDP length (nil: right)
	badSum   bool    // wrong IPv4 header checksum
	payload  []byte  // the UDP payload
	pad      int     // zero bytes after the IP packet
	cut      int     // keep this many bytes of the frame (0: all)
}

func u16(v uint16) *uint16 { return &v }

func u8(v uint8) *uint8 { return &v }

func (p pkt) bytes() []byte {
	v4 := p.dst.Addr().Is4()
	be := binary.BigEndian
	b := []byte{2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2} // dst, src MAC
	for _, tpid := range p.tags {
		b = be.AppendUint16(b, tpid)
		b = be.AppendUint16(b, 100) // VLAN 100
	}
	etype := p.etype
	if etype == 0 {
		etype = 0x86dd
		if v4 {
			etype = 0x0800
		}
	}
	b = be.AppendUint16(b, etype)
	l3 := len(b)

	proto := p.proto
	if proto == 0 {
		proto = 17
	}
	udpLen := uint16(8 + len(p.payload))
	if p.udpLen != nil {
		udpLen = *p.udpLen
	}
	udp := be.AppendUint16(nil, p.src.Port())
	udp = be.AppendUint16(udp, p.dst.Port())
	udp = be.AppendUint16(udp, udpLen)
	udp = be.AppendUint16(udp, 0) // no checksum: the program does not check it
	udp = append(udp, p.payload...)

	if v4 {
		version := p.version
		if version == 0 {
			version = 4
		}
		hl := 20 + p.opts
		tot := uint16(hl + len(udp))
		if p.ipLen != nil {
			tot = *p.ipLen
		}
		b = append(b, version<<4|uint8(hl/4), 0)
		b = be.AppendUint16(b, tot)
		b = be.AppendUint16(b, 0x1234) // id
		b = be.AppendUint16(b, p.frag)
		b = append(b, 64, proto, 0, 0) // TTL, protocol, checksum
		s, d := p.src.Addr().As4(), p.dst.Addr().As4()
		b = append(b, s[:]...)
		b = append(b, d[:]...)
		for range p.opts {
			b = append(b, 1) // NOP
		}
		sum := ^csum(b[l3 : l3+hl])
		if p.badSum {
			sum ^= 0x0100
		}
		be.PutUint16(b[l3+10:], sum)
	} else {
		version := p.version
		if version == 0 {
			version = 6
		}
		var ext []byte
		next := proto
		if p.ext != nil {
			ext = []byte{proto, 0, 0, 0, 0, 0, 0, 0}
			next = *p.ext
		}
		plen := uint16(len(ext) + len(udp))
		if p.ipLen != nil {
			plen = *p.ipLen
		}
		b = append(b, version<<4, 0, 0, 0)
		b = be.AppendUint16(b, plen)
		b = append(b, next, 64)
		s, d := p.src.Addr().As16(), p.dst.Addr().As16()
		b = append(b, s[:]...)
		b = append(b, d[:]...)
		b = append(b, ext...)
	}
	b = append(b, udp...)
	b = append(b, make([]byte, p.pad)...)
	if p.cut != 0 {
		b = b[:p.cut]
	}
	return b
}

// csum is the one's complement sum of b.
func csum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	for s > 0xffff {
		s = s&0xffff + s>>16
	}
	return uint16(s)
}

// lastCPU locks the calling goroutine to its thread, binds the thread to
// the last CPU the process may use and returns it (BPF_PROG_RUN runs on
// the caller's CPU). Cleanup restores the thread's affinity, then unlocks
// it: the thread goes back to the pool as it came.
func lastCPU(tb testing.TB) int {
	tb.Helper()
	runtime.LockOSThread()
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		runtime.UnlockOSThread()
		tb.Fatal(err)
	}
	cpu := -1
	for c, n := 0, 0; n < set.Count(); c++ {
		if set.IsSet(c) {
			cpu, n = c, n+1
		}
	}
	var one unix.CPUSet
	one.Set(cpu)
	if err := unix.SchedSetaffinity(0, &one); err != nil {
		runtime.UnlockOSThread()
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if unix.SchedSetaffinity(0, &set) == nil {
			runtime.UnlockOSThread()
		} // else the thread stays locked and ends with the test's goroutine
	})
	return cpu
}
