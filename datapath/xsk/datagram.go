package xsk

import (
	"encoding/binary"
	"fmt"
	"math/bits"
	"net/netip"
)

// Datagram is the Ethernet, IP and UDP headers of datagrams from one
// address to another, laid out once for a sender that writes many (the
// load generator of `xdoh bench --xdp`): Build puts them in front of a
// payload already written in place, with the source port of the moment,
// the lengths, and the IPv4 header and UDP checksums computed in full. It
// is a plain value, safe to copy; Build allocates nothing.
type Datagram struct {
	b      [MaxHeader]byte
	n      int    // header length: Ethernet + IP + UDP
	ipv6   bool   // else IPv4
	pseudo uint64 // sumLE of the pseudo-header's addresses and protocol
}

// NewDatagram lays out the headers from src (its port is Build's) to dst,
// between the MAC addresses srcMAC and dstMAC: IPv4 with DF and TTL 64, or
// IPv6 with hop limit 64. The addresses must be of one family.
func NewDatagram(srcMAC, dstMAC [6]byte, src, dst netip.Addr, dstPort uint16) (Datagram, error) {
	var d Datagram
	src, dst = src.Unmap(), dst.Unmap()
	if !src.IsValid() || !dst.IsValid() || src.Is4() != dst.Is4() {
		return d, fmt.Errorf("datagram from %v to %v: want two addresses of one family", src, dst)
	}
	copy(d.b[0:6], dstMAC[:])
	copy(d.b[6:12], srcMAC[:])
	l3 := ethHdrLen
	if src.Is4() {
		binary.BigEndian.PutUint16(d.b[12:], etherTypeIPv4)
		ip := d.b[l3 : l3+ipv4HdrLen]
		ip[0] = 0x45
		binary.BigEndian.PutUint16(ip[6:], 0x4000) // DF
		ip[8] = replyTTL
		ip[9] = protoUDP
		s, t := src.As4(), dst.As4()
		copy(ip[12:16], s[:])
		copy(ip[16:20], t[:])
		d.pseudo = sumLE(ip[12:20], 0)
		d.n = l3 + ipv4HdrLen + udpHdrLen
	} else {
		binary.BigEndian.PutUint16(d.b[12:], etherTypeIPv6)
		ip := d.b[l3 : l3+ipv6HdrLen]
		ip[0] = 0x60
		ip[6] = protoUDP
		ip[7] = replyTTL
		s, t := src.As16(), dst.As16()
		copy(ip[8:24], s[:])
		copy(ip[24:40], t[:])
		d.pseudo = sumLE(ip[8:40], 0)
		d.ipv6 = true
		d.n = l3 + ipv6HdrLen + udpHdrLen
	}
	binary.BigEndian.PutUint16(d.b[d.n-udpHdrLen+2:], dstPort)
	var c uint64
	d.pseudo, c = bits.Add64(d.pseudo, uint64(bits.ReverseBytes16(protoUDP)), 0)
	d.pseudo += c
	return d, nil
}

// Len is the headers' length: the payload goes at buf[d.Len():].
func (d *Datagram) Len() int { return d.n }

// Build writes the headers into buf in front of the n-byte payload the
// caller has written at buf[d.Len():], with source port srcPort, and
// returns the frame's length; 0 if n is negative or the frame does not fit
// in buf or the IP length fields.
func (d *Datagram) Build(buf []byte, srcPort uint16, n int) int {
	end := d.n + n
	if n < 0 || end > len(buf) || n > maxPayload6 || (!d.ipv6 && n > maxPayload4) {
		return 0
	}
	copy(buf, d.b[:d.n])
	udpLen := udpHdrLen + n
	if d.ipv6 {
		binary.BigEndian.PutUint16(buf[ethHdrLen+4:], uint16(udpLen))
	} else {
		ip := buf[ethHdrLen : ethHdrLen+ipv4HdrLen]
		binary.BigEndian.PutUint16(ip[2:], uint16(ipv4HdrLen+udpLen))
		binary.BigEndian.PutUint16(ip[10:], ^fold(sumLE(ip, 0)))
	}
	udp := buf[d.n-udpHdrLen : end]
	binary.BigEndian.PutUint16(udp[0:], srcPort)
	binary.BigEndian.PutUint16(udp[4:], uint16(udpLen))
	sum, c := bits.Add64(d.pseudo, uint64(bits.ReverseBytes16(uint16(udpLen))), 0)
	sum += c
	csum := ^fold(sumLE(udp, sum))
	if csum == 0 {
		csum = 0xffff
	}
	binary.BigEndian.PutUint16(udp[6:], csum)
	return end
}
