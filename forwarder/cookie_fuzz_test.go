package forwarder

import (
	"bytes"
	"testing"
	"time"
)

// FuzzCookie: any COOKIE option data from any address at any time is
// judged without a panic; a cookie this server made for a client checks
// as valid for that client and address within its hour, and flipping any
// octet of its server part, or asking from another address, makes it
// invalid.
func FuzzCookie(f *testing.F) {
	f.Add([]byte("\x24\x64\xc4\xab\xcf\x10\xc9\x57"), []byte{198, 51, 100, 100}, int64(1559731985), uint8(3))
	f.Add(unhex(f, "2464c4abcf10c957010000005cf79f111f8130c3eee29480"), []byte{198, 51, 100, 100}, int64(1559731985), uint8(23))
	f.Add([]byte{}, make([]byte, 16), int64(0), uint8(0))
	f.Add(make([]byte, 40), []byte{127, 0, 0, 1}, int64(-1), uint8(200))
	secret := [16]byte{0xe5, 0xe9, 0x73, 0xe5, 0xa6, 0xb2, 0xa4, 0x3f}
	rotating := NewCookies(secret, 24*time.Hour, false)
	fixed := NewCookies(secret, 0, true)
	f.Fuzz(func(t *testing.T, opt, addr []byte, now int64, flip uint8) {
		if len(addr) != 4 && len(addr) != 16 {
			addr = append(append(make([]byte, 0, 8), addr...), 0, 0, 0, 0)[:4]
		}
		now &= 1<<40 - 1 // unix seconds well within int64 arithmetic
		for _, c := range []*Cookies{rotating, fixed} {
			_ = c.check(opt, addr, now) // any input: a verdict, no panic
			if len(opt) < 8 {
				continue
			}
			var ck [24]byte
			c.make(&ck, opt[:8], addr, now)
			if !bytes.Equal(ck[:8], opt[:8]) {
				t.Fatalf("client cookie %x not kept: %x", opt[:8], ck[:8])
			}
			for _, later := range []int64{0, cookieMaxAge / 2, cookieMaxAge} {
				if v := c.check(ck[:], addr, now+later); v != cookieValidServer {
					t.Fatalf("own cookie %x judged %d after %d s", ck, v, later)
				}
			}
			if v := c.check(ck[:], addr, now+cookieMaxAge+1); v == cookieValidServer {
				t.Fatalf("own cookie %x still valid after its hour", ck)
			}
			bad := ck
			i := 16 + int(flip)%8 // the hash: any change there is a forgery
			bad[i] ^= 1 << (flip % 8)
			if v := c.check(bad[:], addr, now); v != cookieBadServer {
				t.Fatalf("forged cookie %x judged %d", bad, v)
			}
			other := append([]byte(nil), addr...)
			other[int(flip)%len(other)] ^= 0x80
			if v := c.check(ck[:], other, now); v != cookieBadServer {
				t.Fatalf("cookie for %x judged %d from %x", addr, v, other)
			}
		}
	})
}
