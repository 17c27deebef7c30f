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
	rr, found, _, ok := findOPT(msg)
	if !ok || !found {
		return msg
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
	if rr.End == w {
		return msg
	}
	binary.BigEndian.PutUint16(msg[rr.RDataOff-2:], uint16(w-rr.RDataOff))
	n := copy(msg[w:], msg[rr.End:])
	return msg[:w+n]
}

// findOPT walks msg's question and records up to the first OPT record of
// its additional section and returns it (found). Without one it returns
// the offset just past the last record (end). ok is false when msg does
// not parse that far.
func findOPT(msg []byte) (opt RR, found bool, end int, ok bool) {
	if len(msg) < HeaderLen {
		return RR{}, false, 0, false
	}
	qd, an, ns, ar := Counts(msg)
	off := HeaderLen
	for range qd {
		n, err := SkipName(msg, off)
		if err != nil || n+4 > len(msg) {
			return RR{}, false, 0, false
		}
		off = n + 4
	}
	for i := range an + ns + ar {
		rr, err := ReadRR(msg, off)
		if err != nil {
			return RR{}, false, 0, false
		}
		if rr.Type == TypeOPT && i >= an+ns {
			return rr, true, 0, true
		}
		off = rr.End
	}
	return RR{}, false, off, true
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
	if len(id) > 0xFFFF-4 {
		return resp
	}
	if n := len(resp) + 4 + len(id); n > max || n > cap(resp) {
		return resp
	}
	opt, found, _, ok := findOPT(resp)
	if !ok || !found || opt.End != len(resp) || opt.RDLen+4+len(id) > 0xFFFF {
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
	_, found, end, ok := findOPT(resp)
	if !ok || found || end != len(resp) {
		return resp
	}
	_, _, _, ar := Counts(resp)
	if ar == 0xFFFF {
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
