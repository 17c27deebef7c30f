package upstream

// DNS cookies (RFC 7873) of a Do53 upstream: the COOKIE option its queries
// carry and what its answers' cookies mean.

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"

	"xdoh/internal/dnsmsg"
)

const (
	clientCookieLen = 8                    // RFC 7873 4
	minCookieLen    = clientCookieLen + 8  // client cookie and the shortest server cookie
	maxCookieLen    = clientCookieLen + 32 // client cookie and the longest server cookie
	cookieRoom      = 4 + maxCookieLen     // what addCookie may add to a query
	rcodeBadCookie  = 23                   // extended RCODE BADCOOKIE (RFC 7873 8)
)

// cookieOpt is the data of the COOKIE option a Do53 upstream sends: its
// client cookie, then the server cookie it learned last, if any. A
// published cookieOpt is never modified; learning a new server cookie
// publishes a new one.
type cookieOpt struct {
	n int
	b [maxCookieLen]byte
}

func (c *cookieOpt) data() []byte { return c.b[:c.n] }

// newCookie draws a random client cookie, without a server cookie yet.
func newCookie() *cookieOpt {
	c := &cookieOpt{n: clientCookieLen}
	rand.Read(c.b[:clientCookieLen]) // never fails (crypto/rand, Go 1.24+)
	return c
}

// addCookie appends the upstream's COOKIE option to q, a query copy with
// cookieRoom to spare, and reports whether it did: only when q has an OPT
// record (adding one would change the answer the client gets) and no
// COOKIE of its own (the forwarder strips clients' cookies; a direct
// caller's is sent as it is and its answer not checked here). A DoT
// upstream adds none: a cookie guards against off-path spoofing and
// amplification, which an authenticated TLS stream already rules out, and
// it would only make queries longer and answers to them linkable.
func (u *Do53) addCookie(q []byte) ([]byte, bool) {
	if u.tlsConf != nil {
		return q, false
	}
	if _, _, _, ar := dnsmsg.Counts(q); ar == 0 {
		return q, false
	}
	if _, ok := dnsmsg.FindOption(q, dnsmsg.OptionCookie); ok {
		return q, false
	}
	n := len(q)
	q = dnsmsg.AppendOption(q, dnsmsg.OptionCookie, u.cookie.Load().data(), maxResponseSize)
	return q, len(q) > n
}

// renewCookie replaces the COOKIE option addCookie appended to q at off
// (the last option of the last record) with the upstream's current one,
// which carries the server cookie learned since. It works in place: q has
// the room addCookie was given.
func (u *Do53) renewCookie(q []byte, off int) []byte {
	rr, ok := dnsmsg.FindOPT(q)
	if !ok || rr.End != len(q) || off < rr.RDataOff || off > len(q) {
		return q // not as addCookie left it; cannot happen
	}
	d := u.cookie.Load().data()
	q = binary.BigEndian.AppendUint16(q[:off], dnsmsg.OptionCookie)
	q = binary.BigEndian.AppendUint16(q, uint16(len(d)))
	q = append(q, d...)
	binary.BigEndian.PutUint16(q[rr.RDataOff-2:], uint16(len(q)-rr.RDataOff))
	return q
}

// responseCookie returns the data of resp's COOKIE option, if it has one.
func responseCookie(resp []byte) ([]byte, bool) {
	if _, _, _, ar := dnsmsg.Counts(resp); ar == 0 {
		return nil, false // no OPT: the common answer to a query without EDNS
	}
	return dnsmsg.FindOption(resp, dnsmsg.OptionCookie)
}

// cookieValid reports whether the COOKIE option data d of a response is
// well formed (a server cookie of 8 to 32 octets) and echoes the
// upstream's client cookie (RFC 7873 5.3). Anything else is a spoof or a
// misdirected answer.
func (u *Do53) cookieValid(d []byte) bool {
	return len(d) >= minCookieLen && len(d) <= maxCookieLen &&
		bytes.Equal(d[:clientCookieLen], u.clientCookie[:])
}

// learnCookie makes valid COOKIE option data d the one the upstream's next
// queries carry. It allocates only when the server cookie changed.
func (u *Do53) learnCookie(d []byte) {
	if cur := u.cookie.Load(); bytes.Equal(cur.data(), d) {
		return
	}
	c := &cookieOpt{n: len(d)}
	copy(c.b[:], d)
	u.cookie.Store(c)
}

// isBadCookie reports whether resp's extended RCODE is BADCOOKIE: its low
// four bits are the header's RCODE (7, YXRRSET without OPT), the high eight
// the top octet of the OPT record's TTL (1).
func isBadCookie(resp []byte) bool {
	if dnsmsg.Rcode(resp) != rcodeBadCookie&0x0F {
		return false
	}
	rr, ok := dnsmsg.FindOPT(resp)
	return ok && int(rr.TTL>>24)<<4|dnsmsg.Rcode(resp) == rcodeBadCookie
}
