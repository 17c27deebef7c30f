// Package dnsmsg is xdoh's one DNS wire library: it reads and patches DNS
// messages in wire format without unpacking them, for every datapath, the
// forwarder and its upstreams: the query view the hot path needs (header,
// first question, OPT record), record walking, response checks, and the few
// in-place edits a forwarder makes to a response (ID, question-name case,
// truncation, TTLs).
//
// Everything here works on caller-owned byte slices and allocates nothing.
// miekg/dns is used for the slow path elsewhere (zones, building answers).
package dnsmsg

import (
	"encoding/binary"
	"errors"
)

// HeaderLen is the size of the fixed DNS header.
const HeaderLen = 12

// MinUDPSize is the response size every UDP client accepts (RFC 1035).
const MinUDPSize = 512

// MaxUDPSize caps the UDP response size whatever the client advertises.
const MaxUDPSize = 4096

// Header flag bits (second 16-bit word of the header).
const (
	FlagQR = 1 << 15
	FlagAA = 1 << 10
	FlagTC = 1 << 9
	FlagRD = 1 << 8
	FlagRA = 1 << 7
	FlagAD = 1 << 5
	FlagCD = 1 << 4
)

// Resource record types and classes used by the parser and the forwarder.
const (
	TypeOPT     = 41
	TypeSOA     = 6
	TypeIXFR    = 251
	TypeAXFR    = 252
	ClassINET   = 1
	ClassCHAOS  = 3
	ClassHESIOD = 4
	ClassANY    = 255
)

// RCODEs the forwarder produces itself.
const (
	RcodeSuccess  = 0
	RcodeFormErr  = 1
	RcodeServFail = 2
	RcodeNXDomain = 3
	RcodeNotImp   = 4
	RcodeRefused  = 5
	// RcodeBadVers is an extended RCODE (RFC 6891): its upper 8 bits go
	// in the OPT record, its lower 4 (0) in the header.
	RcodeBadVers = 16
	// RcodeBadCookie is the extended RCODE of a bad or missing server
	// cookie (RFC 7873 8).
	RcodeBadCookie = 23
)

// Parse errors. A query that fails with ErrShort or ErrNotQuery gets no reply;
// the others can be answered with FORMERR (the header is usable).
var (
	ErrShort       = errors.New("message shorter than a DNS header")
	ErrNotQuery    = errors.New("message is a response (QR set)")
	ErrQDCount     = errors.New("question count is not 1")
	ErrOpcode      = errors.New("opcode is not QUERY")
	ErrName        = errors.New("malformed question name")
	ErrLabelLen    = errors.New("label longer than 63 octets")
	ErrNameLen     = errors.New("name longer than 255 octets")
	ErrPointer     = errors.New("compression pointer in question name")
	ErrTruncated   = errors.New("message ends inside a record")
	ErrOPT         = errors.New("malformed OPT record")
	ErrCookie      = errors.New("malformed COOKIE option")
	ErrECS         = errors.New("malformed CLIENT-SUBNET option")
	ErrTrailingRRs = errors.New("unexpected records after the question")
)

// Query is a view of a DNS query parsed straight from wire bytes. Name
// aliases the message it was parsed from.
type Query struct {
	ID    uint16
	Flags uint16
	// Name is the question name in wire format, letter case as sent.
	Name  []byte
	Type  uint16
	Class uint16
	// QEnd is the offset just past the question section.
	QEnd int

	// EDNS, from the OPT record in the additional section, if any.
	HasOPT  bool
	UDPSize uint16 // as advertised; see MaxUDPSize
	DO      bool
	Version uint8 // EDNS version; only 0 is implemented (BADVERS otherwise)
	NSID    bool  // the OPT carries an NSID option (RFC 5001): the client asks who answers
	// Cookie is the data of the COOKIE option (RFC 7873): an 8-octet
	// client cookie, then an 8- to 32-octet server cookie if the client
	// has one. Nil without the option.
	Cookie []byte
	// ECS is the data of the CLIENT-SUBNET option (RFC 7871), checked by
	// Parse: family, source prefix, scope prefix 0, address. Nil without.
	ECS []byte
	// OPTOff and OPTEnd delimit the OPT record in the message.
	OPTOff, OPTEnd int

	// Subnet is not parsed: the forwarder sets it to the CLIENT-SUBNET
	// option data (scope 0) it sends upstream for this query, when a rule
	// asks for one (RFC 7871). Answers differ by subnet, so it is part of
	// the key (AppendKey). Nil: none.
	Subnet []byte
}

// Opcode returns the header opcode.
func (q *Query) Opcode() int { return int(q.Flags>>11) & 0xF }

// RD reports whether recursion was desired.
func (q *Query) RD() bool { return q.Flags&FlagRD != 0 }

// CD reports whether checking was disabled.
func (q *Query) CD() bool { return q.Flags&FlagCD != 0 }

// MaxUDPSize is the largest UDP response xdoh sends the client: its EDNS UDP
// size, at least 512 and at most MaxUDPSize (larger datagrams fragment, and
// fragments are what gets lost and spoofed; RFC 9715).
func (q *Query) MaxUDPSize() int {
	switch {
	case !q.HasOPT || q.UDPSize < MinUDPSize:
		return MinUDPSize
	case q.UDPSize > MaxUDPSize:
		return MaxUDPSize
	}
	return int(q.UDPSize)
}

// ParseHeader checks that msg can be answered at all: it is long enough for a
// header and is not a response. Replying to anything else would turn xdoh into
// a reflector.
func ParseHeader(msg []byte) error {
	if len(msg) < HeaderLen {
		return ErrShort
	}
	if msg[2]&0x80 != 0 {
		return ErrNotQuery
	}
	return nil
}

// Parse fills q from msg. It accepts exactly one question with an
// uncompressed name, and in the additional section at most one OPT record
// (other additional records, e.g. TSIG or cookies, are walked over).
// Answer and authority sections must be empty.
func Parse(msg []byte, q *Query) error {
	*q = Query{}
	if err := ParseHeader(msg); err != nil {
		return err
	}
	q.ID = binary.BigEndian.Uint16(msg[0:])
	q.Flags = binary.BigEndian.Uint16(msg[2:])
	if q.Opcode() != 0 { // NOTIMP whatever follows, a header-only message too
		return ErrOpcode
	}
	if binary.BigEndian.Uint16(msg[4:]) != 1 {
		return ErrQDCount
	}
	end, err := nameEnd(msg, HeaderLen)
	if err != nil {
		return err
	}
	q.Name = msg[HeaderLen:end]
	if end+4 > len(msg) {
		return ErrTruncated
	}
	q.Type = binary.BigEndian.Uint16(msg[end:])
	q.Class = binary.BigEndian.Uint16(msg[end+2:])
	q.QEnd = end + 4
	if binary.BigEndian.Uint16(msg[6:]) != 0 || binary.BigEndian.Uint16(msg[8:]) != 0 {
		return ErrTrailingRRs
	}
	arcount := int(binary.BigEndian.Uint16(msg[10:]))
	off := q.QEnd
	for i := 0; i < arcount; i++ {
		rr, err := ReadRR(msg, off)
		if err != nil {
			q.NSID, q.Cookie, q.ECS = false, nil, nil // a FORMERR echoes no option
			return err
		}
		if rr.Type == TypeOPT {
			if q.HasOPT || rr.NameLen != 1 || msg[off] != 0 {
				q.HasOPT = false // no usable EDNS: the FORMERR carries no OPT (as BIND's)
				return ErrOPT
			}
			q.HasOPT = true
			q.UDPSize = rr.Class
			q.DO = rr.TTL&0x8000 != 0
			q.Version = uint8(rr.TTL >> 16)
			q.OPTOff, q.OPTEnd = off, rr.End
			if err := q.parseOptions(msg[rr.RDataOff:rr.End]); err != nil {
				// What EDNS the FORMERR keeps is BIND's: none for a broken
				// option list, an OPT without DO for a bad option.
				if err == ErrOPT {
					q.HasOPT = false
				}
				// Nothing of a malformed OPT is echoed (a FORMERR is never
				// larger than its query).
				q.DO, q.NSID, q.Cookie, q.ECS = false, false, nil, nil
				return err
			}
		}
		off = rr.End
	}
	return nil
}

// parseOptions notes the options of the query's OPT RDATA that xdoh acts
// on (the first of each code) and checks them as their RFCs require.
func (q *Query) parseOptions(rdata []byte) error {
	for len(rdata) > 0 {
		if len(rdata) < 4 {
			return ErrOPT
		}
		code := binary.BigEndian.Uint16(rdata)
		l := 4 + int(binary.BigEndian.Uint16(rdata[2:]))
		if l > len(rdata) {
			return ErrOPT
		}
		data := rdata[4:l:l]
		switch {
		case code == OptionNSID:
			q.NSID = true
		case code == OptionCookie && q.Cookie == nil:
			// RFC 7873 5.2.2: a client cookie alone (8), or with a server
			// cookie of 8 to 32 octets.
			if n := len(data); n != 8 && (n < 16 || n > 40) {
				return ErrCookie
			}
			q.Cookie = data
		case code == OptionECS && q.ECS == nil:
			if len(data) >= 4 && data[3] != 0 {
				return ErrOPT // a scope in a query: BIND drops EDNS from the FORMERR
			}
			if !validECS(data) {
				return ErrECS
			}
			q.ECS = data
		}
		rdata = rdata[l:]
	}
	return nil
}

// validECS checks a query's CLIENT-SUBNET option data (RFC 7871 6, 7.1.2):
// family 1 (IPv4) or 2 (IPv6), a source prefix no longer than the family's
// address, exactly the octets the source prefix covers, and
// no address bits set past it.
func validECS(d []byte) bool {
	if len(d) < 4 {
		return false
	}
	var bits int
	switch binary.BigEndian.Uint16(d) {
	case 1:
		bits = 32
	case 2:
		bits = 128
	default:
		return false
	}
	src := int(d[2])
	if src > bits || len(d)-4 != (src+7)/8 {
		return false
	}
	if src%8 != 0 && d[len(d)-1]&(0xFF>>(src%8)) != 0 {
		return false
	}
	return true
}

// nameEnd validates an uncompressed wire name starting at off and returns the
// offset just past it.
func nameEnd(msg []byte, off int) (int, error) {
	start := off
	for {
		if off >= len(msg) {
			return 0, ErrName
		}
		l := int(msg[off])
		switch {
		case l == 0:
			off++
			if off-start > 255 {
				return 0, ErrNameLen
			}
			return off, nil
		case l&0xC0 == 0xC0:
			return 0, ErrPointer
		case l > 63:
			return 0, ErrLabelLen
		}
		off += 1 + l
		if off-start > 255 {
			return 0, ErrNameLen
		}
	}
}

// AppendLower appends the wire name n with ASCII letters lower-cased.
func AppendLower(dst, n []byte) []byte {
	for _, c := range n {
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		dst = append(dst, c)
	}
	return dst
}

// EqualFold reports whether two uncompressed wire names are equal ignoring
// ASCII case.
func EqualFold(a, b []byte) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		ca, cb := a[i], b[i]
		if 'A' <= ca && ca <= 'Z' {
			ca += 'a' - 'A'
		}
		if 'A' <= cb && cb <= 'Z' {
			cb += 'a' - 'A'
		}
		if ca != cb {
			return false
		}
	}
	return true
}

// AppendPresentation appends the name in presentation format ("www.example.com.").
// Bytes outside printable ASCII and the characters . and \ are escaped.
func AppendPresentation(dst, n []byte) []byte {
	if len(n) <= 1 {
		return append(dst, '.')
	}
	for off := 0; off < len(n) && n[off] != 0; {
		l := int(n[off])
		off++
		for _, c := range n[off : off+l] {
			switch {
			case c == '.' || c == '\\':
				dst = append(dst, '\\', c)
			case c < '!' || c > '~':
				dst = append(dst, '\\', '0'+c/100, '0'+c/10%10, '0'+c%10)
			default:
				dst = append(dst, c)
			}
		}
		dst = append(dst, '.')
		off += l
	}
	return dst
}
