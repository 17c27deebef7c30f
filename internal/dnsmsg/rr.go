package dnsmsg

import "encoding/binary"

// RR locates one resource record inside a message.
type RR struct {
	NameLen  int // octets of the owner name as it stands in the message
	Type     uint16
	Class    uint16
	TTL      uint32
	TTLOff   int // offset of the TTL field
	RDataOff int
	RDLen    int
	End      int // offset just past the record
}

// SkipName returns the offset just past a possibly compressed name at off.
// It does not follow pointers: a pointer ends the name in place.
func SkipName(msg []byte, off int) (int, error) {
	start := off
	for {
		if off >= len(msg) {
			return 0, ErrTruncated
		}
		l := int(msg[off])
		switch {
		case l == 0:
			return off + 1, nil
		case l&0xC0 == 0xC0:
			if off+2 > len(msg) {
				return 0, ErrTruncated
			}
			return off + 2, nil
		case l&0xC0 != 0:
			return 0, ErrName
		}
		off += 1 + l
		if off-start > 255 {
			return 0, ErrNameLen
		}
	}
}

// ReadRR reads the resource record starting at off.
func ReadRR(msg []byte, off int) (RR, error) {
	var rr RR
	n, err := SkipName(msg, off)
	if err != nil {
		return rr, err
	}
	if n+10 > len(msg) {
		return rr, ErrTruncated
	}
	rr.NameLen = n - off
	rr.Type = binary.BigEndian.Uint16(msg[n:])
	rr.Class = binary.BigEndian.Uint16(msg[n+2:])
	rr.TTLOff = n + 4
	rr.TTL = binary.BigEndian.Uint32(msg[n+4:])
	rr.RDLen = int(binary.BigEndian.Uint16(msg[n+8:]))
	rr.RDataOff = n + 10
	rr.End = rr.RDataOff + rr.RDLen
	if rr.End > len(msg) {
		return rr, ErrTruncated
	}
	return rr, nil
}

// Counts returns QDCOUNT, ANCOUNT, NSCOUNT and ARCOUNT. msg must hold a header.
func Counts(msg []byte) (qd, an, ns, ar int) {
	return int(binary.BigEndian.Uint16(msg[4:])), int(binary.BigEndian.Uint16(msg[6:])),
		int(binary.BigEndian.Uint16(msg[8:])), int(binary.BigEndian.Uint16(msg[10:]))
}

// Rcode returns the header RCODE (the low 4 bits; extended RCODEs in OPT are ignored).
func Rcode(msg []byte) int { return int(msg[3] & 0x0F) }
