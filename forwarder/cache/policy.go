package cache

import (
	"encoding/binary"
	"time"

	"xdoh/internal/dnsmsg"
)

// maxWireTTL is the largest TTL RFC 2181 §8 allows; a larger one is to be
// treated as 0.
const maxWireTTL = 1<<31 - 1

// cacheTTL returns how long resp, an answer to q whose question ends at qend,
// may be kept, and false when it must not be stored at all. Put trusts its
// caller to have checked resp against q (dnsmsg.CheckResponse) but checks
// again what would poison the cache if it slipped through:
//   - not a response (QR clear), QDCOUNT ≠ 1, or a question other than q's;
//   - truncated (TC): the answer is incomplete;
//   - a record that cannot be walked, or an answer or authority TTL above
//     2^31-1 (RFC 2181 §8: such a TTL means 0, so the response is not cached);
//   - NOERROR without answers and NXDOMAIN, unless the authority section has
//     an SOA (RFC 2308 §5: no SOA, no negative caching);
//   - RCODEs other than NOERROR and NXDOMAIN, except SERVFAIL for ServFailTTL.
//
// The TTL of a cacheable answer is its smallest record TTL, for negative
// answers min(SOA TTL, SOA MINIMUM) (dnsmsg.MinTTL), clamped to
// [MinTTL, MaxTTL].
func (c *Cache) cacheTTL(q *dnsmsg.Query, resp []byte, qend int) (time.Duration, bool) {
	if len(resp) < dnsmsg.HeaderLen || len(resp) > 0xFFFF {
		return 0, false
	}
	flags := binary.BigEndian.Uint16(resp[2:])
	if flags&dnsmsg.FlagQR == 0 || flags&dnsmsg.FlagTC != 0 {
		return 0, false
	}
	qd, an, ns, ar := dnsmsg.Counts(resp)
	n := len(q.Name)
	if qd != 1 || qend != dnsmsg.HeaderLen+n+4 || qend > len(resp) ||
		!dnsmsg.EqualFold(resp[dnsmsg.HeaderLen:dnsmsg.HeaderLen+n], q.Name) ||
		binary.BigEndian.Uint16(resp[qend-4:]) != q.Type ||
		binary.BigEndian.Uint16(resp[qend-2:]) != q.Class {
		return 0, false
	}
	soa := false
	off := qend
	for i := range an + ns + ar {
		rr, err := dnsmsg.ReadRR(resp, off)
		if err != nil {
			return 0, false
		}
		if i < an+ns && rr.TTL > maxWireTTL {
			return 0, false
		}
		if i >= an && i < an+ns && rr.Type == dnsmsg.TypeSOA {
			soa = true
		}
		off = rr.End
	}
	switch dnsmsg.Rcode(resp) {
	case dnsmsg.RcodeSuccess, dnsmsg.RcodeNXDomain:
		if !soa && (an == 0 || dnsmsg.Rcode(resp) == dnsmsg.RcodeNXDomain) {
			return 0, false
		}
		low, ok := dnsmsg.MinTTL(resp, qend)
		if !ok {
			return 0, false
		}
		ttl := time.Duration(low) * time.Second
		ttl = max(ttl, c.minTTL)
		ttl = min(ttl, c.maxTTL)
		return ttl, ttl > 0
	case dnsmsg.RcodeServFail:
		return c.servFail, c.servFail > 0
	}
	return 0, false
}
