package bpf

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"
)

// FuzzProgram runs arbitrary frames through the program: the verdict is
// PASS, DROP or REDIRECT (never TX or ABORTED), exactly one counter goes up,
// the frame is not modified, and the reason is the one classify, a Go model
// of xdp.c, gives.
func FuzzProgram(f *testing.F) {
	p := load(f, Options{})
	if err := p.SetListeners(testListeners); err != nil {
		f.Fatal(err)
	}
	steered := ReasonPassNoSocket
	if fd, err := unix.Socket(unix.AF_XDP, unix.SOCK_RAW, 0); err == nil {
		f.Cleanup(func() { unix.Close(fd) })
		if err := p.SetSocket(0, fd); err != nil {
			f.Fatal(err)
		}
		steered = ReasonRedirect
	}

	q := query(f)
	for _, s := range []pkt{
		{src: ap("192.0.2.1:1"), dst: ap("203.0.113.1:53"), payload: q},
		{src: ap("172.16.0.1:1"), dst: ap("198.51.100.1:53"), payload: q, tags: []uint16{0x8100}},
		{src: ap("[2001:db8:a::1]:1"), dst: ap("[2001:db8::6]:53"), payload: q, tags: []uint16{0x88a8, 0x8100}},
		{src: ap("[2001:db8::1]:1"), dst: ap("[2001:db8::53]:53"), payload: q, ext: u8(44)},
		{src: ap("192.0.2.1:1"), dst: ap("203.0.113.1:53"), payload: q[:12], pad: 6, frag: 0x2000},
	} {
		f.Add(s.bytes())
	}
	f.Fuzz(func(t *testing.T, frame []byte) {
		if len(frame) < 14 || len(frame) > 3000 { // BPF_PROG_RUN takes an Ethernet header, and at most about a page
			return
		}
		verdict, got := run(t, p, frame)
		if verdict != xdpPass && verdict != xdpDrop && verdict != xdpRedirect {
			t.Fatalf("verdict %d", verdict)
		}
		if verdict != got.verdict() {
			t.Errorf("verdict %d, counted %s", verdict, got)
		}
		if want := classify(frame, testListeners, steered); got != want {
			t.Errorf("counted %s, the model says %s", got, want)
		}
	})
}

// classify is what xdp.c does to frame, written from doc.go's description:
// it returns the reason counted, steered for a packet the program steers.
func classify(frame []byte, ls []Listener, steered Reason) Reason {
	be := binary.BigEndian
	b := frame
	if len(b) < 14 {
		return ReasonPassBadLength
	}
	etype := be.Uint16(b[12:])
	b = b[14:]
	for range 2 {
		if etype != 0x8100 && etype != 0x88a8 {
			break
		}
		if len(b) < 4 {
			return ReasonPassBadLength
		}
		etype = be.Uint16(b[2:])
		b = b[4:]
	}
	var (
		src, dst netip.Addr
		udp      []byte // the IP payload
	)
	switch etype {
	case 0x0800:
		if len(b) < 20 {
			return ReasonPassBadLength
		}
		if b[0]>>4 != 4 {
			return ReasonPassNotIP
		}
		hl := int(b[0]&0xf) * 4
		tot := int(be.Uint16(b[2:]))
		switch {
		case hl < 20, tot < hl, tot > len(b):
			return ReasonPassBadLength
		case b[9] != 17:
			return ReasonPassNotUDP
		case be.Uint16(b[6:])&0x3fff != 0:
			return ReasonPassFragment
		case hl != 20:
			return ReasonPassIPOptions
		case csum(b[:20]) != 0xffff:
			return ReasonPassBadChecksum
		}
		src, dst = netip.AddrFrom4([4]byte(b[12:16])), netip.AddrFrom4([4]byte(b[16:20]))
		udp = b[20:tot]
	case 0x86dd:
		if len(b) < 40 {
			return ReasonPassBadLength
		}
		if b[0]>>4 != 6 {
			return ReasonPassNotIP
		}
		plen := int(be.Uint16(b[4:]))
		if plen == 0 || 40+plen > len(b) {
			return ReasonPassBadLength
		}
		switch b[6] {
		case 17:
		case 0, 43, 44, 50, 51, 60, 135, 139, 140, 253, 254:
			return ReasonPassIPv6Ext
		default:
			return ReasonPassNotUDP
		}
		src, dst = netip.AddrFrom16([16]byte(b[8:24])), netip.AddrFrom16([16]byte(b[24:40]))
		udp = b[40 : 40+plen]
	default:
		return ReasonPassNotIP
	}
	if len(udp) < 8 || int(be.Uint16(udp[4:])) != len(udp) {
		return ReasonPassBadLength
	}
	if len(udp)-8 < 12 {
		return ReasonPassShortDNS
	}
	port := be.Uint16(udp[2:])

	l, ok := find(ls, dst, port)
	if !ok {
		if dst.Is4() {
			l, ok = find(ls, netip.IPv4Unspecified(), port)
		} else {
			l, ok = find(ls, netip.IPv6Unspecified(), port)
		}
	}
	if !ok {
		return ReasonPassNotListener
	}
	if l.ACLDrop && len(l.Allow) > 0 && !allowed(l.Allow, src) {
		return ReasonDropACL
	}
	return steered
}

func find(ls []Listener, a netip.Addr, port uint16) (Listener, bool) {
	for _, l := range ls {
		if l.Addr.Addr() == a && l.Addr.Port() == port {
			return l, true
		}
	}
	return Listener{}, false
}

func allowed(allow []netip.Prefix, a netip.Addr) bool {
	for _, p := range allow {
		if p.Contains(a) {
			return true
		}
	}
	return false
}
