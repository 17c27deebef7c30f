package doh

import "encoding/binary"

// DNS constants the TTL walk needs.
const (
	typeSOA = 6
	typeOPT = 41

	rcodeSuccess  = 0
	rcodeNXDomain = 3
)

// maxAge returns the HTTP freshness lifetime of a DNS response (RFC 8484
// section 5.1): the smallest TTL in the answer section; for a negative answer
// without one, the negative-caching TTL of the SOA in the authority section,
// min(SOA TTL, SOA MINIMUM) as in RFC 2308. Anything else, including error
// responses and messages that do not parse, gets 0.
//
// It walks the wire format without unpacking the message.
func maxAge(msg []byte) uint32 {
	if len(msg) < headerLen {
		return 0
	}
	if rc := msg[3] & 0x0F; rc != rcodeSuccess && rc != rcodeNXDomain {
		return 0
	}
	qd := int(binary.BigEndian.Uint16(msg[4:]))
	an := int(binary.BigEndian.Uint16(msg[6:]))
	ns := int(binary.BigEndian.Uint16(msg[8:]))
	off := headerLen
	for range qd {
		end, ok := skipName(msg, off)
		if !ok || end+4 > len(msg) {
			return 0
		}
		off = end + 4
	}
	minTTL, found := uint32(0), false
	for range an {
		rr, ok := readRR(msg, off)
		if !ok {
			return 0
		}
		if rr.typ != typeOPT && (!found || rr.ttl < minTTL) {
			minTTL, found = rr.ttl, true
		}
		off = rr.end
	}
	if found {
		return minTTL
	}
	for range ns {
		rr, ok := readRR(msg, off)
		if !ok {
			return 0
		}
		if rr.typ == typeSOA && rr.rdlen >= 20 {
			return min(rr.ttl, ttl(binary.BigEndian.Uint32(msg[rr.end-4:])))
		}
		off = rr.end
	}
	return 0
}

type rrInfo struct {
	typ   uint16
	ttl   uint32
	rdlen int
	end   int
}

// readRR reads the fixed part of the record at off.
func readRR(msg []byte, off int) (rrInfo, bool) {
	n, ok := skipName(msg, off)
	if !ok || n+10 > len(msg) {
		return rrInfo{}, false
	}
	rr := rrInfo{
		typ:   binary.BigEndian.Uint16(msg[n:]),
		ttl:   ttl(binary.BigEndian.Uint32(msg[n+4:])),
		rdlen: int(binary.BigEndian.Uint16(msg[n+8:])),
	}
	rr.end = n + 10 + rr.rdlen
	if rr.end > len(msg) {
		return rrInfo{}, false
	}
	return rr, true
}

// ttl treats values with the top bit set as 0 (RFC 2181 section 8).
func ttl(v uint32) uint32 {
	if v > 1<<31-1 {
		return 0
	}
	return v
}

// skipName returns the offset just past the (possibly compressed) name at off.
func skipName(msg []byte, off int) (int, bool) {
	for start := off; ; {
		if off >= len(msg) {
			return 0, false
		}
		l := int(msg[off])
		switch {
		case l == 0:
			return off + 1, true
		case l&0xC0 == 0xC0:
			if off+2 > len(msg) {
				return 0, false
			}
			return off + 2, true
		case l&0xC0 != 0:
			return 0, false
		}
		off += 1 + l
		if off-start > 255 {
			return 0, false
		}
	}
}
