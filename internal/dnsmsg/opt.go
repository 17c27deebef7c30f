package dnsmsg

import "encoding/binary"

// EDNS option codes xdoh reads or writes.
const (
	OptionNSID   = 3  // name server identifier (RFC 5001)
	OptionECS    = 8  // client subnet (RFC 7871)
	OptionCookie = 10 // DNS cookie (RFC 7873)
	optionEDE    = 15 // Extended DNS Errors (RFC 8914): end to end, survives StripHopOptions
)

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

// walkOptions calls fn with the code and data of each option in the OPT
// RDATA rdata, in order, until fn returns false. It reports false when an
// option runs past the end of rdata (the options are malformed).
func walkOptions(rdata []byte, fn func(code uint16, data []byte) bool) bool {
	for len(rdata) > 0 {
		if len(rdata) < 4 {
			return false
		}
		l := 4 + int(binary.BigEndian.Uint16(rdata[2:]))
		if l > len(rdata) {
			return false
		}
		if !fn(binary.BigEndian.Uint16(rdata), rdata[4:l]) {
			return true
		}
		rdata = rdata[l:]
	}
	return true
}

// FindOPT returns the OPT record of msg's additional section (the
// first), and false without one or when msg does not parse that far.
func FindOPT(msg []byte) (RR, bool) {
	rr, found, _, ok := findOPT(msg)
	return rr, ok && found
}

// FindOption returns the data of the first option with code in the OPT
// record of msg, a query or a response; ok is false without one (or when
// msg does not parse that far).
func FindOption(msg []byte, code uint16) (data []byte, ok bool) {
	opt, found, _, parsed := findOPT(msg)
	if !parsed || !found {
		return nil, false
	}
	walkOptions(msg[opt.RDataOff:opt.End], func(c uint16, d []byte) bool {
		if c == code {
			data, ok = d, true
			return false
		}
		return true
	})
	return data, ok
}

// AppendOption adds the EDNS option code with data to the OPT record of
// msg, in place, when the result fits in cap(msg) and in max octets;
// otherwise, or when msg has no OPT record or does not parse, it returns
// msg unchanged. The OPT must be the last record (xdoh's messages carry no
// TSIG).
func AppendOption(msg []byte, code uint16, data []byte, max int) []byte {
	if len(data) > 0xFFFF-4 {
		return msg
	}
	if n := len(msg) + 4 + len(data); n > max || n > cap(msg) {
		return msg
	}
	opt, found, _, ok := findOPT(msg)
	if !ok || !found || opt.End != len(msg) || opt.RDLen+4+len(data) > 0xFFFF {
		return msg
	}
	msg = binary.BigEndian.AppendUint16(msg, code)
	msg = binary.BigEndian.AppendUint16(msg, uint16(len(data)))
	msg = append(msg, data...)
	binary.BigEndian.PutUint16(msg[opt.RDataOff-2:], uint16(opt.RDLen+4+len(data)))
	return msg
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
