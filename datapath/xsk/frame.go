package xsk

import (
	"encoding/binary"
	"math/bits"
	"net/netip"
)

const (
	ethHdrLen  = 14
	vlanTagLen = 4
	maxVLANs   = 2 // 802.1Q, or QinQ (802.1ad outer + 802.1Q inner)
	ipv4HdrLen = 20
	ipv6HdrLen = 40
	udpHdrLen  = 8
	dnsHdrLen  = 12

	etherTypeIPv4 = 0x0800
	etherTypeIPv6 = 0x86dd
	etherTypeVLAN = 0x8100 // 802.1Q
	etherTypeQinQ = 0x88a8 // 802.1ad service tag

	protoUDP = 17
	replyTTL = 64 // TTL / hop limit of every reply

	// MaxHeader is the longest Ethernet+VLAN+IP+UDP header Parse accepts:
	// what a Header keeps of a query.
	MaxHeader = ethHdrLen + maxVLANs*vlanTagLen + ipv6HdrLen + udpHdrLen

	maxPayload4 = 0xffff - ipv4HdrLen - udpHdrLen // IPv4 total length is 16 bits
	maxPayload6 = 0xffff - udpHdrLen              // IPv6 payload length (UDP header included) is 16 bits
)

// View locates the parts of a parsed query frame. Its offsets are from the
// start of the frame (the Ethernet destination address).
type View struct {
	L3Off      int  // IP header
	L4Off      int  // UDP header
	PayloadOff int  // DNS message
	PayloadLen int  // DNS message length (UDP length - 8), at least 12
	End        int  // end of the IP packet; bytes after it are Ethernet padding
	IPv6       bool // IPv6, else IPv4
}

// Parse checks that frame is a UDP datagram carrying at least a DNS header,
// in Ethernet (optionally one 802.1Q tag or a QinQ pair) and IPv4 or IPv6,
// and locates its parts. It rejects, so that no reply to it is ever built:
//   - IPv4 with options (IHL != 5), fragments (MF or an offset) or the
//     reserved flag; IPv6 with any next header but UDP (extension headers);
//   - lengths that disagree: the IP length must fit in the frame (trailing
//     Ethernet padding is allowed) and the UDP length must equal it;
//   - group (multicast or broadcast) MAC addresses, and source or
//     destination IP addresses that are unspecified, loopback, multicast,
//     IPv4 class E/broadcast or IPv4-mapped IPv6;
//   - port 0 on either side.
//
// Checksums of the query are not checked: on veth they are often partial.
// Parse reads only frame[:View.End] and allocates nothing.
func Parse(frame []byte) (View, bool) {
	var v View
	if len(frame) < ethHdrLen || frame[0]&1 != 0 || frame[6]&1 != 0 {
		return v, false
	}
	off := 12 // the EtherType (or TPID) field
	et := binary.BigEndian.Uint16(frame[off:])
	for tags := 0; et == etherTypeVLAN || et == etherTypeQinQ; tags++ {
		if tags == maxVLANs || len(frame) < off+vlanTagLen+2 {
			return v, false
		}
		off += vlanTagLen
		et = binary.BigEndian.Uint16(frame[off:])
	}
	l3 := off + 2
	switch et {
	case etherTypeIPv4:
		if len(frame) < l3+ipv4HdrLen+udpHdrLen {
			return v, false
		}
		ip := frame[l3 : l3+ipv4HdrLen]
		total := int(binary.BigEndian.Uint16(ip[2:]))
		if ip[0] != 0x45 || // version 4, IHL 5
			binary.BigEndian.Uint16(ip[6:])&0xbfff != 0 || // reserved bit, MF, fragment offset (DF is fine)
			ip[9] != protoUDP ||
			total < ipv4HdrLen+udpHdrLen+dnsHdrLen || l3+total > len(frame) ||
			!unicast4(ip[12:16]) || !unicast4(ip[16:20]) {
			return v, false
		}
		v.L4Off = l3 + ipv4HdrLen
		v.End = l3 + total
	case etherTypeIPv6:
		if len(frame) < l3+ipv6HdrLen+udpHdrLen {
			return v, false
		}
		ip := frame[l3 : l3+ipv6HdrLen]
		plen := int(binary.BigEndian.Uint16(ip[4:]))
		if ip[0]>>4 != 6 || ip[6] != protoUDP ||
			plen < udpHdrLen+dnsHdrLen || l3+ipv6HdrLen+plen > len(frame) ||
			!unicast6(ip[8:24]) || !unicast6(ip[24:40]) {
			return v, false
		}
		v.IPv6 = true
		v.L4Off = l3 + ipv6HdrLen
		v.End = v.L4Off + plen
	default:
		return v, false
	}
	udp := frame[v.L4Off : v.L4Off+udpHdrLen]
	if int(binary.BigEndian.Uint16(udp[4:])) != v.End-v.L4Off ||
		binary.BigEndian.Uint16(udp[0:]) == 0 || binary.BigEndian.Uint16(udp[2:]) == 0 {
		return v, false
	}
	v.L3Off = l3
	v.PayloadOff = v.L4Off + udpHdrLen
	v.PayloadLen = v.End - v.PayloadOff
	return v, true
}

// unicast4 accepts an IPv4 address a reply may come from or go to: not
// 0/8, 127/8, multicast (224/4) or class E and broadcast (240/4).
func unicast4(a []byte) bool {
	return a[0] != 0 && a[0] != 127 && a[0] < 224
}

func unicast6(a []byte) bool {
	ip := netip.AddrFrom16([16]byte(a))
	return !ip.IsUnspecified() && !ip.IsLoopback() && !ip.IsMulticast() && !ip.Is4In6()
}

// Payload returns the DNS message of the parsed frame.
func (v View) Payload(frame []byte) []byte {
	return frame[v.PayloadOff : v.PayloadOff+v.PayloadLen]
}

// Client returns the query's source address and port, where the reply goes.
func (v View) Client(frame []byte) netip.AddrPort {
	return netip.AddrPortFrom(v.addr(frame, 0), binary.BigEndian.Uint16(frame[v.L4Off:]))
}

// Server returns the query's destination address and port.
func (v View) Server(frame []byte) netip.AddrPort {
	return netip.AddrPortFrom(v.addr(frame, 1), binary.BigEndian.Uint16(frame[v.L4Off+2:]))
}

// addr returns the source (i=0) or destination (i=1) IP address.
func (v View) addr(frame []byte, i int) netip.Addr {
	if v.IPv6 {
		o := v.L3Off + 8 + 16*i
		return netip.AddrFrom16([16]byte(frame[o : o+16]))
	}
	o := v.L3Off + 12 + 4*i
	return netip.AddrFrom4([4]byte(frame[o : o+4]))
}

// Room returns how many bytes of DNS answer a reply built in buf can carry:
// buf is the frame's buffer from its Ethernet header to the end of the
// room the caller has (for a received packet, Socket.Packet(addr) runs to
// the end of its UMEM frame). It is bounded by the 16-bit IP length fields
// too, but not by the link's MTU: that is the caller's to apply.
func (v View) Room(buf []byte) int {
	limit := maxPayload4
	if v.IPv6 {
		limit = maxPayload6
	}
	return max(0, min(len(buf)-v.PayloadOff, limit))
}

// Reply turns the query frame in buf, parsed as v, into the reply carrying
// the n-byte DNS answer that the caller has already written at
// buf[v.PayloadOff:]: it swaps the MAC addresses, IP addresses and ports,
// sets the IP and UDP lengths, TTL or hop limit 64, clears the ECN bits,
// and computes the IPv4 header checksum and the UDP checksum from scratch
// (0 is sent as 0xffff). VLAN tags, DSCP, the IPv4 ID and DF and the IPv6
// flow label stay. It returns the reply's frame length, v.PayloadOff+n (the
// query's Ethernet padding is dropped), or 0 if n is negative or above
// v.Room(buf).
func Reply(buf []byte, v View, n int) int {
	if n < 0 || n > v.Room(buf) {
		return 0
	}
	end := v.PayloadOff + n
	f := buf[:end]

	var mac [6]byte
	copy(mac[:], f[0:6])
	copy(f[0:6], f[6:12])
	copy(f[6:12], mac[:])

	udpLen := udpHdrLen + n
	var sum uint64 // the UDP pseudo-header's addresses
	if v.IPv6 {
		ip := f[v.L3Off : v.L3Off+ipv6HdrLen]
		var a [16]byte
		copy(a[:], ip[8:24])
		copy(ip[8:24], ip[24:40])
		copy(ip[24:40], a[:])
		ip[1] &^= 0x30 // ECN: the low two bits of the traffic class
		binary.BigEndian.PutUint16(ip[4:], uint16(udpLen))
		ip[7] = replyTTL
		sum = sumLE(ip[8:40], 0)
	} else {
		ip := f[v.L3Off : v.L3Off+ipv4HdrLen]
		var a [4]byte
		copy(a[:], ip[12:16])
		copy(ip[12:16], ip[16:20])
		copy(ip[16:20], a[:])
		ip[1] &^= 0x03 // ECN
		binary.BigEndian.PutUint16(ip[2:], uint16(ipv4HdrLen+udpLen))
		ip[8] = replyTTL
		ip[10], ip[11] = 0, 0
		binary.BigEndian.PutUint16(ip[10:], ^fold(sumLE(ip, 0)))
		sum = sumLE(ip[12:20], 0)
	}

	udp := f[v.L4Off:]
	udp[0], udp[1], udp[2], udp[3] = udp[2], udp[3], udp[0], udp[1]
	binary.BigEndian.PutUint16(udp[4:], uint16(udpLen))
	udp[6], udp[7] = 0, 0
	// Protocol and UDP length complete the pseudo-header; sumLE works on
	// byte-swapped 16-bit words, so they are added swapped.
	var c uint64
	sum, c = bits.Add64(sum, uint64(bits.ReverseBytes16(protoUDP))+uint64(bits.ReverseBytes16(uint16(udpLen))), 0)
	sum += c // after a carry sum is small: adding it back cannot carry again
	csum := ^fold(sumLE(udp, sum))
	if csum == 0 {
		csum = 0xffff // 0 means "no checksum" (and is illegal in IPv6)
	}
	binary.BigEndian.PutUint16(udp[6:], csum)
	return end
}

// Header is what a reply needs of a query's frame when the answer comes
// later and the frame has gone back to the kernel: its Ethernet, VLAN, IP
// and UDP headers (at most MaxHeader bytes) and their View. It is a plain
// value; copying it copies everything.
type Header struct {
	b [MaxHeader]byte
	v View
}

// SaveHeader copies the headers of the query frame parsed as v.
func SaveHeader(frame []byte, v View) Header {
	var h Header
	copy(h.b[:], frame[:v.PayloadOff])
	h.v = v
	return h
}

// Client returns the saved query's source address and port.
func (h *Header) Client() netip.AddrPort { return h.v.Client(h.b[:]) }

// Room returns how many bytes of answer BuildReply can put in buf.
func (h *Header) Room(buf []byte) int { return h.v.Room(buf) }

// BuildReply writes into buf (a free frame's buffer, from where the packet
// is to start) the complete reply frame to the saved query carrying answer,
// as Reply would have built it in place, and returns its length; 0 if the
// answer is longer than h.Room(buf).
func BuildReply(buf []byte, h *Header, answer []byte) int {
	v := h.v
	if len(answer) > v.Room(buf) {
		return 0
	}
	copy(buf, h.b[:v.PayloadOff])
	copy(buf[v.PayloadOff:], answer)
	return Reply(buf, v, len(answer))
}

// sumLE adds b to the ones'-complement accumulator acc 64 bits at a time.
// It loads words little-endian, which permutes the bytes of every 16-bit
// word the same way; ones'-complement addition commutes with that (RFC
// 1071), so fold only has to swap the final 16 bits back. An odd last byte
// is padded with a zero, as the checksum requires. b must start at an even
// offset of the checksummed data.
func sumLE(b []byte, acc uint64) uint64 {
	var c uint64
	for len(b) >= 32 {
		acc, c = bits.Add64(acc, binary.LittleEndian.Uint64(b[0:]), c)
		acc, c = bits.Add64(acc, binary.LittleEndian.Uint64(b[8:]), c)
		acc, c = bits.Add64(acc, binary.LittleEndian.Uint64(b[16:]), c)
		acc, c = bits.Add64(acc, binary.LittleEndian.Uint64(b[24:]), c)
		b = b[32:]
	}
	for len(b) >= 8 {
		acc, c = bits.Add64(acc, binary.LittleEndian.Uint64(b), c)
		b = b[8:]
	}
	// The last 0-7 bytes, each at its own position in one word.
	var t uint64
	if len(b) >= 4 {
		t = uint64(binary.LittleEndian.Uint32(b))
		b = b[4:]
		if len(b) >= 2 {
			t |= uint64(binary.LittleEndian.Uint16(b)) << 32
			b = b[2:]
			if len(b) == 1 {
				t |= uint64(b[0]) << 48
			}
		} else if len(b) == 1 {
			t |= uint64(b[0]) << 32
		}
	} else if len(b) >= 2 {
		t = uint64(binary.LittleEndian.Uint16(b))
		if len(b) == 3 {
			t |= uint64(b[2]) << 16
		}
	} else if len(b) == 1 {
		t = uint64(b[0])
	}
	acc, c = bits.Add64(acc, t, c)
	acc, c = bits.Add64(acc, 0, c)
	return acc + c
}

// fold reduces a sumLE accumulator to the 16-bit ones'-complement sum in
// network byte order.
func fold(acc uint64) uint16 {
	acc = acc>>32 + acc&0xffffffff
	acc = acc>>16 + acc&0xffff
	acc = acc>>16 + acc&0xffff
	acc = acc>>16 + acc&0xffff
	return bits.ReverseBytes16(uint16(acc))
}
