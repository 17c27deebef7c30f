package forwarder

import (
	"crypto/subtle"
	"encoding/binary"
	"sync/atomic"
	"time"

	"github.com/dchest/siphash"
)

// Cookies makes and checks DNS server cookies (RFC 7873) in the
// interoperable format of RFC 9018: version 1, three reserved octets, a
// 32-bit timestamp and SipHash-2-4 of the client cookie, those eight
// octets and the client's address, keyed with a 128-bit secret. A fleet of
// instances configured with the same secret (and clocks in step) accepts
// each other's cookies, as BIND and Knot with the same secret do.
//
// The secret rotates: with a period, the key of period e is derived from
// the configured secret (SipHash-2-4-128 of e), so every instance changes
// key at the same moment with nothing to distribute. Cookies made under
// the previous key stay valid. A period of 0 uses the secret itself, which
// is what BIND's cookie-secret does.
type Cookies struct {
	secret  [16]byte
	period  time.Duration
	require bool
	keys    atomic.Pointer[cookieKeys]
}

// cookieKeys are the SipHash keys of one period and the one before.
type cookieKeys struct {
	epoch     int64
	cur, prev [2]uint64
}

// Server cookie lifetime (RFC 9018 4.3): older than an hour, or from more
// than five minutes ahead, it is not valid.
const (
	cookieMaxAge    = 3600
	cookieMaxFuture = 300
	cookieRefresh   = 1800
	// MinCookieRotation is the shortest rotation period: a cookie must
	// outlive one period under the previous key.
	MinCookieRotation = time.Hour
)

// serverCookieLen is the length of an RFC 9018 server cookie.
const serverCookieLen = 16

// NewCookies returns a cookie maker with secret, rotated every period
// (0: never; otherwise at least MinCookieRotation). With require, a UDP
// client that sends a cookie but not a valid server cookie is answered
// BADCOOKIE with a fresh one instead (RFC 7873 5.2.3), so that a spoofed
// source gets nothing larger than its query.
func NewCookies(secret [16]byte, period time.Duration, require bool) *Cookies {
	return &Cookies{secret: secret, period: period, require: require}
}

// key returns the keys in force at unix second now.
func (c *Cookies) key(now int64) *cookieKeys {
	if c.period <= 0 {
		if k := c.keys.Load(); k != nil {
			return k
		}
		k0, k1 := binary.LittleEndian.Uint64(c.secret[:8]), binary.LittleEndian.Uint64(c.secret[8:])
		k := &cookieKeys{cur: [2]uint64{k0, k1}, prev: [2]uint64{k0, k1}}
		c.keys.Store(k)
		return k
	}
	epoch := now / int64(c.period/time.Second)
	if k := c.keys.Load(); k != nil && k.epoch == epoch {
		return k
	}
	k := &cookieKeys{epoch: epoch, cur: c.derive(epoch), prev: c.derive(epoch - 1)}
	c.keys.Store(k)
	return k
}

// derive is the key of period epoch: SipHash-2-4-128 of the epoch number
// under the configured secret.
func (c *Cookies) derive(epoch int64) [2]uint64 {
	k0, k1 := binary.LittleEndian.Uint64(c.secret[:8]), binary.LittleEndian.Uint64(c.secret[8:])
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(epoch))
	h0, h1 := siphash.Hash128(k0, k1, b[:])
	return [2]uint64{h0, h1}
}

// hash is the RFC 9018 hash: SipHash-2-4 of the client cookie, the first
// eight octets of the server cookie and the client's address.
func cookieHash(key [2]uint64, client []byte, head []byte, addr []byte) uint64 {
	var b [8 + 8 + 16]byte
	n := copy(b[:], client)
	n += copy(b[n:], head)
	n += copy(b[n:], addr)
	return siphash.Hash(key[0], key[1], b[:n])
}

// cookieVerdict is what a query's COOKIE option says about its client.
type cookieVerdict uint8

const (
	cookieNone        cookieVerdict = iota // no COOKIE option
	cookieClientOnly                       // a client cookie alone
	cookieBadServer                        // a server cookie we did not make, or too old
	cookieValidServer                      // a server cookie we made, still valid
)

// check judges the COOKIE option data opt (validated by dnsmsg.Parse)
// from the client at addr (4 or 16 octets) at unix second now.
func (c *Cookies) check(opt, addr []byte, now int64) cookieVerdict {
	switch {
	case opt == nil:
		return cookieNone
	case len(opt) == 8:
		return cookieClientOnly
	case len(opt) != 8+serverCookieLen || opt[8] != 1:
		return cookieBadServer
	}
	ts := int64(binary.BigEndian.Uint32(opt[12:16]))
	// Serial-number arithmetic on 32 bits (RFC 1982), as RFC 9018 asks.
	age := int64(int32(uint32(now) - uint32(ts)))
	if age > cookieMaxAge || age < -cookieMaxFuture {
		return cookieBadServer
	}
	k := c.key(now)
	var want [8]byte
	for _, key := range [2][2]uint64{k.cur, k.prev} {
		binary.LittleEndian.PutUint64(want[:], cookieHash(key, opt[:8], opt[8:16], addr))
		if subtle.ConstantTimeCompare(want[:], opt[16:24]) == 1 {
			return cookieValidServer
		}
	}
	return cookieBadServer
}

// cookieStale reports whether the valid cookie opt is old enough, at unix
// second now, to be replaced by a new one (RFC 9018 4.3: half an hour);
// until then the client gets its own back and xdoh saves a hash.
func cookieStale(opt []byte, now int64) bool {
	return int64(int32(uint32(now)-binary.BigEndian.Uint32(opt[12:16]))) > cookieRefresh
}

// make writes into dst (24 octets) the COOKIE option data for the client
// cookie client at addr: the client cookie and a server cookie made at
// unix second now.
func (c *Cookies) make(dst *[24]byte, client, addr []byte, now int64) {
	copy(dst[:8], client)
	dst[8], dst[9], dst[10], dst[11] = 1, 0, 0, 0
	binary.BigEndian.PutUint32(dst[12:16], uint32(now))
	binary.LittleEndian.PutUint64(dst[16:24], cookieHash(c.key(now).cur, dst[:8], dst[8:16], addr))
}
