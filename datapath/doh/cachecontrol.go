package doh

import (
	"encoding/binary"

	"xdoh/internal/dnsmsg"
)

// maxAge returns the HTTP freshness lifetime of a DNS response (RFC 8484
// section 5.1): the smallest TTL in the answer section; for a negative answer
// without one, the negative-caching TTL of the SOA in the authority section,
// min(SOA TTL, SOA MINIMUM) as in RFC 2308. Anything else, including error
// responses and messages that do not parse, gets 0.
//
// It walks the wire format without unpacking the message.
func maxAge(msg []byte) uint32 {
	if len(msg) < dnsmsg.HeaderLen {
		return 0
	}
	if rc := dnsmsg.Rcode(msg); rc != dnsmsg.RcodeSuccess && rc != dnsmsg.RcodeNXDomain {
		return 0
	}
	qd, an, ns, _ := dnsmsg.Counts(msg)
	off := dnsmsg.HeaderLen
	for range qd {
		end, err := dnsmsg.SkipName(msg, off)
		if err != nil || end+4 > len(msg) {
			return 0
		}
		off = end + 4
	}
	minTTL, found := uint32(0), false
	for range an {
		rr, err := dnsmsg.ReadRR(msg, off)
		if err != nil {
			return 0
		}
		if t := ttl(rr.TTL); rr.Type != dnsmsg.TypeOPT && (!found || t < minTTL) {
			minTTL, found = t, true
		}
		off = rr.End
	}
	if found {
		return minTTL
	}
	for range ns {
		rr, err := dnsmsg.ReadRR(msg, off)
		if err != nil {
			return 0
		}
		if rr.Type == dnsmsg.TypeSOA && rr.RDLen >= 20 {
			return min(ttl(rr.TTL), ttl(binary.BigEndian.Uint32(msg[rr.End-4:])))
		}
		off = rr.End
	}
	return 0
}

// ttl treats values with the top bit set as 0 (RFC 2181 section 8).
func ttl(v uint32) uint32 {
	if v > 1<<31-1 {
		return 0
	}
	return v
}
