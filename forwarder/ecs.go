package forwarder

import (
	"bytes"
	"fmt"
	"net/netip"

	"xdoh/internal/dnsmsg"
)

// ECSMode is what a rule does with EDNS Client Subnet (RFC 7871).
type ECSMode uint8

const (
	// ECSStrip (the default, for privacy): no client subnet goes
	// upstream; a client's own option comes back to it with scope 0.
	ECSStrip ECSMode = iota
	// ECSPass forwards the client's own option, when it sends one.
	ECSPass
	// ECSAdd sends the client's subnet: its own option shortened to the
	// configured prefix, or its address cut to that prefix when it sends
	// none. A client's /0 (RFC 7871 7.1.2) opts out and is passed as is.
	ECSAdd
)

// ParseECSMode reads "strip", "pass" or "add" ("" is strip).
func ParseECSMode(s string) (ECSMode, error) {
	switch s {
	case "", "strip":
		return ECSStrip, nil
	case "pass":
		return ECSPass, nil
	case "add":
		return ECSAdd, nil
	}
	return 0, fmt.Errorf("%q is not strip, pass or add", s)
}

// ECS is a rule's client-subnet policy. Answers to a query sent with a
// subnet are cached for that subnet only, unless the upstream scopes them
// to /0 (valid for everyone): an answer for 10.1.2.0/24 is never served to
// 10.9.0.0/16.
type ECS struct {
	Mode ECSMode
	// V4 and V6 are ECSAdd's source prefix lengths (default 24 and 56,
	// RFC 7871 11.1).
	V4, V6 int
}

func (e ECS) prefixes() (v4, v6 int) {
	v4, v6 = e.V4, e.V6
	if v4 <= 0 || v4 > 32 {
		v4 = 24
	}
	if v6 <= 0 || v6 > 128 {
		v6 = 56
	}
	return v4, v6
}

// setSubnet sets r.Q.Subnet to the client subnet policy e sends upstream
// for r (in r's own buffer), or leaves it nil. Only a query with EDNS can
// carry one: xdoh adds no OPT a client did not send.
func (e ECS) setSubnet(r *Request) {
	if e.Mode == ECSStrip || !r.Q.HasOPT {
		return
	}
	if c := r.Q.ECS; c != nil {
		src := int(c[2])
		if e.Mode == ECSPass || src == 0 {
			r.Q.Subnet = append(r.subnet[:0], c...)
			return
		}
		v4, v6 := e.prefixes()
		max := v4
		if c[1] == 2 {
			max = v6
		}
		a, ok := subnetAddr(c)
		if !ok {
			return
		}
		r.Q.Subnet = appendSubnet(r.subnet[:0], a, min(src, max))
		return
	}
	if e.Mode != ECSAdd {
		return
	}
	a := r.Client.Addr().Unmap()
	if !a.IsValid() {
		return
	}
	v4, v6 := e.prefixes()
	bits := v4
	if a.Is6() {
		bits = v6
	}
	r.Q.Subnet = appendSubnet(r.subnet[:0], a, bits)
}

// subnetAddr is the address of the CLIENT-SUBNET data c (validated).
func subnetAddr(c []byte) (netip.Addr, bool) {
	var b [16]byte
	copy(b[:], c[4:])
	if c[1] == 1 {
		return netip.AddrFrom4([4]byte(b[:4])), true
	}
	return netip.AddrFrom16(b), true
}

// appendSubnet appends CLIENT-SUBNET option data for a cut to bits:
// family, source prefix, scope 0, the prefix's octets.
func appendSubnet(dst []byte, a netip.Addr, bits int) []byte {
	p, err := a.Prefix(bits)
	if err != nil {
		return dst[:0]
	}
	fam := byte(1)
	if a.Is6() {
		fam = 2
	}
	dst = append(dst, 0, fam, byte(bits), 0)
	ab := p.Addr().AsSlice()
	return append(dst, ab[:(bits+7)/8]...)
}

// answerScope reads the CLIENT-SUBNET option of an upstream's answer to a
// query sent with subnet sent: the scope prefix length it gives (0 with
// no option: the upstream does not do ECS, the answer is for everyone),
// and false when the option does not echo what was sent (RFC 7871 7.3:
// such an answer must be dropped).
func answerScope(resp, sent []byte) (int, bool) {
	got, ok := dnsmsg.FindOption(resp, dnsmsg.OptionECS)
	if !ok {
		return 0, true
	}
	if len(got) != len(sent) || !bytes.Equal(got[:3], sent[:3]) || !bytes.Equal(got[4:], sent[4:]) {
		return 0, false
	}
	return int(got[3]), true
}
