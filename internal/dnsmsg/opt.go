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

// OptionNSID is the EDNS option code of NSID (RFC 5001).
const OptionNSID = 3

// hasOption reports whether the OPT RDATA rdata holds an option with code.
func hasOption(rdata []byte, code uint16) bool {
	for len(rdata) >= 4 {
		l := 4 + int(binary.BigEndian.Uint16(rdata[2:]))
		if binary.BigEndian.Uint16(rdata) == code {
			return true
		}
		if l > len(rdata) {
			return false
		}
		rdata = rdata[l:]
	}
	return false
}

// AppendNSID adds an NSID option carrying id to the OPT record of the
// response resp, in place, when the result fits in cap(resp) and in max
// octets; otherwise, or when resp has no OPT record or does not parse, it
// returns resp unchanged. The OPT must be the last record (xdoh's responses
// carry no TSIG).
func AppendNSID(resp, id []byte, max int) []byte {
	if len(resp) < HeaderLen || len(id) > 0xFFFF-4 {
		return resp
	}
	n := len(resp) + 4 + len(id)
	if n > max || n > cap(resp) {
		return resp
	}
	qd, an, ns, ar := Counts(resp)
	off := HeaderLen
	for range qd {
		end, err := SkipName(resp, off)
		if err != nil || end+4 > len(resp) {
			return resp
		}
		off = end + 4
	}
	var opt RR
	found := false
	for i := range an + ns + ar {
		rr, err := ReadRR(resp, off)
		if err != nil {
			return resp
		}
		if rr.Type == TypeOPT && i >= an+ns {
			opt, found = rr, true
		}
		off = rr.End
	}
	if !found || opt.End != len(resp) || opt.RDLen+4+len(id) > 0xFFFF {
		return resp
	}
	resp = binary.BigEndian.AppendUint16(resp, OptionNSID)
	resp = binary.BigEndian.AppendUint16(resp, uint16(len(id)))
	resp = append(resp, id...)
	binary.BigEndian.PutUint16(resp[opt.RDataOff-2:], uint16(opt.RDLen+4+len(id)))
	return resp
}

// EnsureOPT returns resp with an OPT record: resp itself when it has one
// (or does not parse), else resp with a minimal OPT appended (xdoh's UDP
// size, DO as given, no options) and ARCOUNT raised. A forwarder owes a
// client that sent EDNS an OPT in the answer (RFC 6891 7) even when its
// upstream left it out.
func EnsureOPT(resp []byte, do bool) []byte {
	if len(resp) < HeaderLen {
		return resp
	}
	qd, an, ns, ar := Counts(resp)
	off := HeaderLen
	for range qd {
		end, err := SkipName(resp, off)
		if err != nil || end+4 > len(resp) {
			return resp
		}
		off = end + 4
	}
	for i := range an + ns + ar {
		rr, err := ReadRR(resp, off)
		if err != nil {
			return resp
		}
		if rr.Type == TypeOPT && i >= an+ns {
			return resp
		}
		off = rr.End
	}
	if off != len(resp) || ar == 0xFFFF {
		return resp
	}
	var flags byte
	if do {
		flags = 0x80
	}
	resp = append(resp, 0, 0, TypeOPT, byte(ourUDPSize>>8), byte(ourUDPSize&0xFF), 0, 0, flags, 0, 0, 0)
	binary.BigEndian.PutUint16(resp[10:], uint16(ar+1))
	return resp
}
