package dnsmsg

import (
	"encoding/binary"
	"errors"
)

// Response check errors.
var (
	ErrNotResponse = errors.New("message is not a response (QR clear)")
	ErrIDMismatch  = errors.New("response ID does not match the query")
	ErrQuestion    = errors.New("response question does not match the query")
)

// CheckResponse verifies that resp answers q: a response header, one question
// equal to q's (name compared without case), and records that can be walked to
// the end of the message. It returns the offset just past the question.
func CheckResponse(resp []byte, q *Query) (int, error) {
	if len(resp) < HeaderLen {
		return 0, ErrShort
	}
	if resp[2]&0x80 == 0 {
		return 0, ErrNotResponse
	}
	qd, an, ns, ar := Counts(resp)
	if qd != 1 {
		return 0, ErrQuestion
	}
	end, err := nameEnd(resp, HeaderLen)
	if err != nil || end+4 > len(resp) {
		return 0, ErrQuestion
	}
	if !EqualFold(resp[HeaderLen:end], q.Name) ||
		binary.BigEndian.Uint16(resp[end:]) != q.Type ||
		binary.BigEndian.Uint16(resp[end+2:]) != q.Class {
		return 0, ErrQuestion
	}
	qend := end + 4
	off := qend
	for i := 0; i < an+ns+ar; i++ {
		rr, err := ReadRR(resp, off)
		if err != nil {
			return 0, err
		}
		off = rr.End
	}
	return qend, nil
}

// SetID writes id into the header of msg.
func SetID(msg []byte, id uint16) { binary.BigEndian.PutUint16(msg, id) }

// CopyQuestionName overwrites the question name of resp with name, which must
// be equal ignoring case (CheckResponse ensures it). The client gets its own
// letter case back (0x20 mixed-case clients depend on it).
func CopyQuestionName(resp, name []byte) {
	copy(resp[HeaderLen:], name)
}

// Truncate makes resp fit in size octets. If it already fits it is returned as
// is. Otherwise the answer is cut to the header, the question and the OPT
// record (when the response has one and it fits), with TC set, so the client
// retries over TCP. resp is modified in place and the shortened slice returned.
//
// A message without exactly one uncompressed question (which CheckResponse
// would have rejected) is cut to its header with all counts zero; one shorter
// than a header is returned as is.
func Truncate(resp []byte, size int) []byte {
	if len(resp) <= size || len(resp) < HeaderLen {
		return resp
	}
	qd, an, ns, ar := Counts(resp)
	qend := HeaderLen
	if n, err := nameEnd(resp, HeaderLen); qd == 1 && err == nil && n+4 <= len(resp) {
		qend = n + 4
	}
	// Find the OPT record, if any, in the additional section.
	optOff, optEnd := -1, -1
	off := qend
	for i := 0; qend > HeaderLen && i < an+ns+ar; i++ {
		rr, err := ReadRR(resp, off)
		if err != nil {
			break
		}
		if i >= an+ns && rr.Type == TypeOPT && rr.NameLen == 1 && resp[off] == 0 {
			optOff, optEnd = off, rr.End
		}
		off = rr.End
	}
	out := resp[:qend]
	if qend == HeaderLen {
		binary.BigEndian.PutUint16(resp[4:], 0)
	}
	binary.BigEndian.PutUint16(resp[6:], 0)
	binary.BigEndian.PutUint16(resp[8:], 0)
	binary.BigEndian.PutUint16(resp[10:], 0)
	if optOff >= 0 && qend+(optEnd-optOff) <= size {
		n := copy(resp[qend:], resp[optOff:optEnd])
		out = resp[:qend+n]
		binary.BigEndian.PutUint16(resp[10:], 1)
	}
	resp[2] |= FlagTC >> 8
	return out
}

// AppendError appends to dst a response to the query msg with the given rcode:
// the header with QR set (RD copied), the question when q is usable, and an OPT
// record when the query had one (version 0, DO copied, no options; an
// extended rcode such as RcodeBadVers puts its upper bits there). It never
// produces more octets than the query had, so it cannot amplify. q may be nil
// when only the header parsed.
func AppendError(dst, msg []byte, q *Query, rcode int) []byte {
	start := len(dst)
	dst = append(dst, msg[:HeaderLen]...)
	h := dst[start:]
	flags := binary.BigEndian.Uint16(h[2:])
	flags = FlagQR | flags&(0xF<<11) | flags&FlagRD | flags&FlagCD | FlagRA | uint16(rcode&0xF)
	binary.BigEndian.PutUint16(h[2:], flags)
	binary.BigEndian.PutUint16(h[4:], 0)
	binary.BigEndian.PutUint16(h[6:], 0)
	binary.BigEndian.PutUint16(h[8:], 0)
	binary.BigEndian.PutUint16(h[10:], 0)
	if q == nil || q.QEnd == 0 {
		return dst
	}
	dst = append(dst, msg[HeaderLen:q.QEnd]...)
	binary.BigEndian.PutUint16(dst[start+4:], 1)
	if q.HasOPT {
		// A minimal OPT: root name, type 41, our UDP size, no options.
		dst = append(dst, 0, 0, TypeOPT, byte(ourUDPSize>>8), byte(ourUDPSize&0xFF), byte(rcode>>4), 0, 0, 0, 0, 0)
		if q.DO {
			dst[len(dst)-4] = 0x80
		}
		binary.BigEndian.PutUint16(dst[start+10:], 1)
	}
	return dst
}

// ourUDPSize is the EDNS UDP size xdoh advertises in its own responses
// (the DNS Flag Day 2020 recommendation).
const ourUDPSize = 1232
