package dnsmsg

import "encoding/binary"

// MinTTL returns the smallest TTL of the answer and authority records of a
// response starting after its question at qend (OPT excluded), and whether
// there was any such record. For a negative answer that is the SOA's TTL; the
// caller clamps it with the SOA MINIMUM where RFC 2308 asks for it.
func MinTTL(msg []byte, qend int) (uint32, bool) {
	_, an, ns, _ := Counts(msg)
	min, any := uint32(0), false
	off := qend
	for i := 0; i < an+ns; i++ {
		rr, err := ReadRR(msg, off)
		if err != nil {
			break
		}
		ttl := rr.TTL
		if rr.Type == TypeSOA && i >= an {
			// RFC 2308 §5: the negative TTL is min(SOA TTL, SOA MINIMUM).
			if m, ok := soaMinimum(msg, rr); ok && m < ttl {
				ttl = m
			}
		}
		if !any || ttl < min {
			min, any = ttl, true
		}
		off = rr.End
	}
	return min, any
}

// soaMinimum reads the MINIMUM field, the last 4 octets of SOA RDATA.
func soaMinimum(msg []byte, rr RR) (uint32, bool) {
	if rr.RDLen < 22 { // two names (≥1 octet each) + 5 × 32-bit fields
		return 0, false
	}
	return binary.BigEndian.Uint32(msg[rr.End-4:]), true
}

// AgeTTLs subtracts age seconds from the TTL of every record after the
// question (qend), never going below floor; OPT records are left alone.
func AgeTTLs(msg []byte, qend int, age, floor uint32) {
	_, an, ns, ar := Counts(msg)
	off := qend
	for i := 0; i < an+ns+ar; i++ {
		rr, err := ReadRR(msg, off)
		if err != nil {
			return
		}
		if rr.Type != TypeOPT {
			ttl := rr.TTL
			if ttl > age {
				ttl -= age
			} else {
				ttl = 0
			}
			if ttl < floor {
				ttl = floor
			}
			binary.BigEndian.PutUint32(msg[rr.TTLOff:], ttl)
		}
		off = rr.End
	}
}

// CapTTLs lowers to max every TTL above it in the records after the question
// (qend); OPT records are left alone. A cache whose max_ttl is 1h must not
// hand out a week-long TTL for clients to keep.
func CapTTLs(msg []byte, qend int, max uint32) {
	_, an, ns, ar := Counts(msg)
	off := qend
	for i := 0; i < an+ns+ar; i++ {
		rr, err := ReadRR(msg, off)
		if err != nil {
			return
		}
		if rr.Type != TypeOPT && rr.TTL > max {
			binary.BigEndian.PutUint32(msg[rr.TTLOff:], max)
		}
		off = rr.End
	}
}
