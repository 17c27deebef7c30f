package dnsmsg

import "encoding/binary"

// EDNS option codes that are end-to-end and survive StripHopOptions.
const optionEDE = 15 // Extended DNS Errors (RFC 8914)

// StripHopOptions removes from the OPT record of msg every EDNS option that
// belongs to one hop — COOKIE (RFC 7873), padding, TCP keepalive, and
// anything else except Extended DNS Errors — compacting the message in place
// and returning the shortened slice. A forwarder must not hand an upstream's
// server cookie to a client (the client would see a cookie mismatch), nor the
// client's cookie to an upstream. A message without OPT is returned as is.
func StripHopOptions(msg []byte) []byte {
	if len(msg) < HeaderLen {
		return msg
	}
	qd, an, ns, ar := Counts(msg)
	off := HeaderLen
	for i := 0; i < qd; i++ {
		n, err := SkipName(msg, off)
		if err != nil || n+4 > len(msg) {
			return msg
		}
		off = n + 4
	}
	for i := 0; i < an+ns+ar; i++ {
		rr, err := ReadRR(msg, off)
		if err != nil {
			return msg
		}
		if i < an+ns || rr.Type != TypeOPT {
			off = rr.End
			continue
		}
		// Compact the options we keep to the front of the RDATA.
		w := rr.RDataOff
		for r := rr.RDataOff; r+4 <= rr.End; {
			code := binary.BigEndian.Uint16(msg[r:])
			l := int(binary.BigEndian.Uint16(msg[r+2:]))
			if r+4+l > rr.End {
				break // malformed option: drop it and the rest
			}
			if code == optionEDE {
				w += copy(msg[w:], msg[r:r+4+l])
			}
			r += 4 + l
		}
		removed := rr.End - w
		if removed == 0 {
			return msg
		}
		binary.BigEndian.PutUint16(msg[rr.RDataOff-2:], uint16(w-rr.RDataOff))
		n := copy(msg[w:], msg[rr.End:])
		return msg[:w+n]
	}
	return msg
}
