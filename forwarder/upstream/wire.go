package upstream

import (
	"encoding/binary"
	"fmt"

	"xdoh/internal/dnsmsg"
)

const headerLen = dnsmsg.HeaderLen

// questionEnd returns the offset just past the first question of msg, or -1
// if msg has no complete first question.
func questionEnd(msg []byte) int {
	end, err := dnsmsg.SkipName(msg, headerLen)
	if err != nil || end+4 > len(msg) {
		return -1
	}
	return end + 4
}

// checkResponse verifies that resp is a DNS response to query, ignoring the
// ID: the QR bit, the opcode and the first question (name compared without
// regard to ASCII case). A response without a question is accepted only with
// a non-zero RCODE (servers drop the question from FORMERR and the like).
func checkResponse(query, resp []byte) error {
	if len(resp) < headerLen {
		return fmt.Errorf("%w: %d bytes is too short for a DNS message", ErrBadResponse, len(resp))
	}
	if resp[2]&0x80 == 0 {
		return fmt.Errorf("%w: QR bit not set", ErrBadResponse)
	}
	if (resp[2]>>3)&0xF != (query[2]>>3)&0xF {
		return fmt.Errorf("%w: opcode differs from the query's", ErrBadResponse)
	}
	qd := binary.BigEndian.Uint16(query[4:])
	if qd == 0 {
		return nil
	}
	rqd := binary.BigEndian.Uint16(resp[4:])
	if rqd == 0 && resp[3]&0xF != 0 {
		return nil
	}
	if rqd != qd {
		return fmt.Errorf("%w: %d questions, want %d", ErrBadResponse, rqd, qd)
	}
	end := questionEnd(query)
	if end < 0 {
		return nil // the query itself is odd; the upstream answered it anyway
	}
	if len(resp) < end || !dnsmsg.EqualFold(resp[headerLen:end-4], query[headerLen:end-4]) ||
		string(resp[end-4:end]) != string(query[end-4:end]) {
		return fmt.Errorf("%w: question differs from the query's", ErrBadResponse)
	}
	return nil
}
