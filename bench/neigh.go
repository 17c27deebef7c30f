//go:build linux

package bench

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// linkPeer is where --xdp frames go: the interface, the source address
// on it and the target's MAC address.
type linkPeer struct {
	ifi    *net.Interface
	src    netip.Addr
	dstMAC [6]byte
}

// resolvePeer finds the address of ifName to send from to target and the
// target's MAC address in the kernel's neighbour table, after one probe (a
// datagram to the target through a normal socket: ARP or ND) if the table
// has none. The target must be on-link: no route is followed.
func resolvePeer(ifName string, target netip.AddrPort) (*linkPeer, error) {
	ifi, err := net.InterfaceByName(ifName)
	if err != nil {
		return nil, fmt.Errorf("--xdp %s: %w", ifName, err)
	}
	if len(ifi.HardwareAddr) != 6 {
		return nil, fmt.Errorf("--xdp %s: not an Ethernet interface", ifName)
	}
	src, err := sourceAddr(ifi, target.Addr())
	if err != nil {
		return nil, err
	}
	lp := &linkPeer{ifi: ifi, src: src}
	for try := 0; ; try++ {
		mac, ok, err := neighbour(ifi.Index, target.Addr())
		if err != nil {
			return nil, fmt.Errorf("--xdp %s: reading the neighbour table: %w", ifName, err)
		}
		if ok {
			lp.dstMAC = mac
			return lp, nil
		}
		if try == 0 {
			probe(target)
		}
		if try == 20 {
			return nil, fmt.Errorf("--xdp %s: no neighbour entry (MAC address) for %s after a probe: is it on-link?", ifName, target.Addr())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// sourceAddr picks ifi's address of target's family, one whose prefix
// holds the target first.
func sourceAddr(ifi *net.Interface, target netip.Addr) (netip.Addr, error) {
	addrs, err := ifi.Addrs()
	if err != nil {
		return netip.Addr{}, fmt.Errorf("--xdp %s: %w", ifi.Name, err)
	}
	var best netip.Addr
	for _, a := range addrs {
		n, ok := a.(*net.IPNet)
		if !ok {
			continue
		}
		p, err := netip.ParsePrefix(n.String())
		if err != nil || p.Addr().Is4() != target.Is4() {
			continue
		}
		if p.Contains(target) {
			return p.Addr(), nil
		}
		if !best.IsValid() || best.IsLinkLocalUnicast() {
			best = p.Addr()
		}
	}
	if !best.IsValid() {
		return best, fmt.Errorf("--xdp %s: no address of %s's family on the interface", ifi.Name, target)
	}
	return best, nil
}

// probe sends one empty DNS query to target from a normal socket, so that
// the kernel resolves its MAC address.
func probe(target netip.AddrPort) {
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(target))
	if err != nil {
		return
	}
	defer c.Close()
	_, _ = c.Write(make([]byte, 12))
}

// neighbour looks addr up in the kernel's neighbour table for ifindex
// (RTM_GETNEIGH over rtnetlink); false if there is no usable entry.
func neighbour(ifindex int, addr netip.Addr) ([6]byte, bool, error) {
	var mac [6]byte
	fam := unix.AF_INET6
	if addr.Is4() {
		fam = unix.AF_INET
	}
	tab, err := syscall.NetlinkRIB(unix.RTM_GETNEIGH, fam)
	if err != nil {
		return mac, false, err
	}
	msgs, err := syscall.ParseNetlinkMessage(tab)
	if err != nil {
		return mac, false, err
	}
	for _, m := range msgs {
		if m.Header.Type != unix.RTM_NEWNEIGH || len(m.Data) < unix.SizeofNdMsg {
			continue
		}
		nd := (*unix.NdMsg)(unsafe.Pointer(&m.Data[0]))
		if int(nd.Ifindex) != ifindex || nd.State&(unix.NUD_INCOMPLETE|unix.NUD_FAILED|unix.NUD_NOARP) != 0 {
			continue
		}
		var dst netip.Addr
		var ll []byte
		for b := m.Data[unix.SizeofNdMsg:]; len(b) >= 4; {
			l := int(binary.NativeEndian.Uint16(b))
			if l < 4 || l > len(b) {
				return mac, false, errors.New("malformed neighbour attribute")
			}
			switch binary.NativeEndian.Uint16(b[2:]) {
			case unix.NDA_DST:
				dst, _ = netip.AddrFromSlice(b[4:l])
			case unix.NDA_LLADDR:
				ll = b[4:l]
			}
			b = b[min(len(b), (l+3)&^3):]
		}
		if dst.Unmap() == addr && len(ll) == 6 {
			copy(mac[:], ll)
			return mac, true, nil
		}
	}
	return mac, false, nil
}
