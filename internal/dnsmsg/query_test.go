package dnsmsg

import (
	"bytes"
	"errors"
	"testing"

	"github.com/miekg/dns"
)

// exampleCom is "example.com." in wire format.
var exampleCom = []byte("\x07example\x03com\x00")

type malformedCase struct {
	name string
	msg  []byte
	err  error
}

// malformedQueries are queries Parse must reject; they also seed FuzzParse.
func malformedQueries() []malformedCase {
	q := question(exampleCom, dns.TypeA, dns.ClassINET)
	rd := uint16(FlagRD)
	aRR := cat([]byte{0xC0, 0x0C}, u16(dns.TypeA), u16(dns.ClassINET), []byte{0, 0, 0, 60}, u16(4), []byte{192, 0, 2, 1})
	return []malformedCase{
		{name: "empty", msg: nil, err: ErrShort},
		{name: "short header", msg: hdr(1, rd, 1, 0, 0, 0)[:11], err: ErrShort},
		{name: "QR set", msg: cat(hdr(1, FlagQR|rd, 1, 0, 0, 0), q), err: ErrNotQuery},
		{name: "QDCOUNT 0", msg: hdr(1, rd, 0, 0, 0, 0), err: ErrQDCount},
		{name: "QDCOUNT 0 with a question", msg: cat(hdr(1, rd, 0, 0, 0, 0), q), err: ErrQDCount},
		{name: "QDCOUNT 2", msg: cat(hdr(1, rd, 2, 0, 0, 0), q, q), err: ErrQDCount},
		{name: "opcode STATUS", msg: cat(hdr(1, 2<<11|rd, 1, 0, 0, 0), q), err: ErrOpcode},
		{name: "opcode UPDATE", msg: cat(hdr(1, 5<<11, 1, 0, 0, 0), q), err: ErrOpcode},
		{name: "opcode 3, header only", msg: hdr(1, 3<<11|rd, 0, 0, 0, 0), err: ErrOpcode},
		{name: "opcode NOTIFY, two questions", msg: cat(hdr(1, 4<<11, 2, 0, 0, 0), q, q), err: ErrOpcode},
		{name: "header only", msg: hdr(1, rd, 1, 0, 0, 0), err: ErrName},
		{name: "name without terminator", msg: cat(hdr(1, rd, 1, 0, 0, 0), []byte("\x07example\x03com")), err: ErrName},
		{name: "label runs past the end", msg: cat(hdr(1, rd, 1, 0, 0, 0), []byte("\x20abc")), err: ErrName},
		{name: "label of 64", msg: cat(hdr(1, rd, 1, 0, 0, 0), question(labels(64), 1, 1)), err: ErrLabelLen},
		{name: "label type 0x80", msg: cat(hdr(1, rd, 1, 0, 0, 0), question([]byte{0x81, 'a', 0}, 1, 1)), err: ErrLabelLen},
		{name: "name of 256", msg: cat(hdr(1, rd, 1, 0, 0, 0), question(labels(63, 63, 63, 62), 1, 1)), err: ErrNameLen},
		{name: "name of 320", msg: cat(hdr(1, rd, 1, 0, 0, 0), question(labels(63, 63, 63, 63, 63), 1, 1)), err: ErrNameLen},
		{name: "pointer loop in question", msg: cat(hdr(1, rd, 1, 0, 0, 0), []byte{0xC0, 0x0C, 0, 1, 0, 1}), err: ErrPointer},
		{name: "pointer after a label", msg: cat(hdr(1, rd, 1, 0, 0, 0), []byte{3, 'w', 'w', 'w', 0xC0, 0x0C, 0, 1, 0, 1}), err: ErrPointer},
		{name: "no type and class", msg: cat(hdr(1, rd, 1, 0, 0, 0), exampleCom), err: ErrTruncated},
		{name: "half a class", msg: cat(hdr(1, rd, 1, 0, 0, 0), exampleCom, []byte{0, 1, 0}), err: ErrTruncated},
		{name: "answer record in a query", msg: cat(hdr(1, rd, 1, 1, 0, 0), q, aRR), err: ErrTrailingRRs},
		{name: "authority record in a query", msg: cat(hdr(1, rd, 1, 0, 1, 0), q, aRR), err: ErrTrailingRRs},
		{name: "two OPT records", msg: cat(hdr(1, rd, 1, 0, 0, 2), q, optRR(4096, 0), optRR(1232, 0)), err: ErrOPT},
		{name: "OPT with a non-root name", msg: cat(hdr(1, rd, 1, 0, 0, 1), q, []byte{1, 'a'}, optRR(4096, 0)), err: ErrOPT},
		{name: "OPT with a pointer name", msg: cat(hdr(1, rd, 1, 0, 0, 1), q, []byte{0xC0, 0x0C}, optRR(4096, 0)[1:]), err: ErrOPT},
		{name: "ARCOUNT 1 without a record", msg: cat(hdr(1, rd, 1, 0, 0, 1), q), err: ErrTruncated},
		{name: "OPT cut short", msg: cat(hdr(1, rd, 1, 0, 0, 1), q, optRR(4096, 0)[:8]), err: ErrTruncated},
		{name: "OPT RDLEN past the end", msg: cat(hdr(1, rd, 1, 0, 0, 1), q, optRR(4096, 0)[:9], u16(4), []byte{0, 10}), err: ErrTruncated},
	}
}

func TestParse(t *testing.T) {
	plain := newQuery("www.ExAmple.COM.", dns.TypeAAAA)
	edns := newQuery("example.com.", dns.TypeA)
	edns.SetEdns0(4096, true)
	ednsNoDO := newQuery("example.com.", dns.TypeMX)
	ednsNoDO.SetEdns0(1232, false)
	smallEDNS := newQuery("example.com.", dns.TypeA)
	smallEDNS.SetEdns0(256, false)
	cd := newQuery("example.com.", dns.TypeA)
	cd.CheckingDisabled = true
	cd.RecursionDesired = false
	chaos := newQuery("version.bind.", dns.TypeTXT)
	chaos.Question[0].Qclass = dns.ClassCHAOS
	root := newQuery(".", dns.TypeNS)
	withExtra := newQuery("example.com.", dns.TypeA)
	withExtra.Extra = append(withExtra.Extra, rr(t, "extra.example. 60 IN A 192.0.2.7"))
	withExtra.SetEdns0(1400, false)
	withExtra.Extra = append(withExtra.Extra, rr(t, "later.example. 60 IN TXT \"x\""))

	max255 := cat(hdr(7, FlagRD, 1, 0, 0, 0), question(labels(63, 63, 63, 61), dns.TypeA, dns.ClassINET))

	tests := []struct {
		name      string
		msg       []byte
		wantName  []byte
		wantType  uint16
		wantClass uint16
		wantID    uint16
		wantRD    bool
		wantCD    bool
		wantOPT   bool
		wantUDP   uint16
		wantMax   int
		wantDO    bool
		wantOPTRR []byte // the OPT record's bytes, when wantOPT
	}{
		{name: "plain mixed case", msg: pack(t, plain), wantName: wireName(t, "www.ExAmple.COM."), wantType: dns.TypeAAAA, wantClass: dns.ClassINET, wantID: 0xBEEF, wantRD: true, wantMax: 512},
		{name: "EDNS with DO", msg: pack(t, edns), wantName: exampleCom, wantType: dns.TypeA, wantClass: dns.ClassINET, wantID: 0xBEEF, wantRD: true, wantOPT: true, wantUDP: 4096, wantMax: 4096, wantDO: true, wantOPTRR: optRR(4096, 0x8000)},
		{name: "EDNS without DO", msg: pack(t, ednsNoDO), wantName: exampleCom, wantType: dns.TypeMX, wantClass: dns.ClassINET, wantID: 0xBEEF, wantRD: true, wantOPT: true, wantUDP: 1232, wantMax: 1232, wantOPTRR: optRR(1232, 0)},
		{name: "EDNS size below 512", msg: pack(t, smallEDNS), wantName: exampleCom, wantType: dns.TypeA, wantClass: dns.ClassINET, wantID: 0xBEEF, wantRD: true, wantOPT: true, wantUDP: 256, wantMax: 512, wantOPTRR: optRR(256, 0)},
		{name: "CD set, RD clear", msg: pack(t, cd), wantName: exampleCom, wantType: dns.TypeA, wantClass: dns.ClassINET, wantID: 0xBEEF, wantCD: true, wantMax: 512},
		{name: "CHAOS class", msg: pack(t, chaos), wantName: wireName(t, "version.bind."), wantType: dns.TypeTXT, wantClass: dns.ClassCHAOS, wantID: 0xBEEF, wantRD: true, wantMax: 512},
		{name: "root name", msg: pack(t, root), wantName: []byte{0}, wantType: dns.TypeNS, wantClass: dns.ClassINET, wantID: 0xBEEF, wantRD: true, wantMax: 512},
		{name: "other additional records around OPT", msg: pack(t, withExtra), wantName: exampleCom, wantType: dns.TypeA, wantClass: dns.ClassINET, wantID: 0xBEEF, wantRD: true, wantOPT: true, wantUDP: 1400, wantMax: 1400, wantOPTRR: optRR(1400, 0)},
		{name: "name of exactly 255", msg: max255, wantName: labels(63, 63, 63, 61), wantType: dns.TypeA, wantClass: dns.ClassINET, wantID: 7, wantRD: true, wantMax: 512},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var q Query
			if err := Parse(tt.msg, &q); err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if !bytes.Equal(q.Name, tt.wantName) {
				t.Errorf("Name = %q, want %q", q.Name, tt.wantName)
			}
			if q.ID != tt.wantID || q.Type != tt.wantType || q.Class != tt.wantClass {
				t.Errorf("ID/Type/Class = %#x/%d/%d, want %#x/%d/%d", q.ID, q.Type, q.Class, tt.wantID, tt.wantType, tt.wantClass)
			}
			if q.RD() != tt.wantRD || q.CD() != tt.wantCD {
				t.Errorf("RD/CD = %v/%v, want %v/%v", q.RD(), q.CD(), tt.wantRD, tt.wantCD)
			}
			if q.Opcode() != 0 {
				t.Errorf("Opcode = %d, want 0", q.Opcode())
			}
			if wantQEnd := HeaderLen + len(tt.wantName) + 4; q.QEnd != wantQEnd {
				t.Errorf("QEnd = %d, want %d", q.QEnd, wantQEnd)
			}
			if q.HasOPT != tt.wantOPT || q.UDPSize != tt.wantUDP || q.DO != tt.wantDO {
				t.Errorf("HasOPT/UDPSize/DO = %v/%d/%v, want %v/%d/%v", q.HasOPT, q.UDPSize, q.DO, tt.wantOPT, tt.wantUDP, tt.wantDO)
			}
			if q.MaxUDPSize() != tt.wantMax {
				t.Errorf("MaxUDPSize = %d, want %d", q.MaxUDPSize(), tt.wantMax)
			}
			if tt.wantOPT {
				if q.OPTOff < q.QEnd || q.OPTEnd > len(tt.msg) || !bytes.Equal(tt.msg[q.OPTOff:q.OPTEnd], tt.wantOPTRR) {
					t.Errorf("OPT at [%d:%d] of %d, want the record %x", q.OPTOff, q.OPTEnd, len(tt.msg), tt.wantOPTRR)
				}
			}
			// The name aliases the message.
			if &q.Name[0] != &tt.msg[HeaderLen] {
				t.Error("Name does not alias the message")
			}
		})
	}
}

func TestParseMalformed(t *testing.T) {
	for _, tt := range malformedQueries() {
		t.Run(tt.name, func(t *testing.T) {
			q := Query{ID: 99, HasOPT: true, QEnd: 1234} // Parse must reset stale fields
			err := Parse(tt.msg, &q)
			if !errors.Is(err, tt.err) {
				t.Fatalf("Parse = %v, want %v", err, tt.err)
			}
			if hErr := ParseHeader(tt.msg); (hErr != nil) != (tt.err == ErrShort || tt.err == ErrNotQuery) {
				t.Errorf("ParseHeader = %v for a message Parse rejects with %v", hErr, tt.err)
			}
			if q.QEnd > len(tt.msg) {
				t.Errorf("QEnd %d past the message (%d)", q.QEnd, len(tt.msg))
			}
			if hErr := ParseHeader(tt.msg); hErr != nil {
				return // no reply to these
			}
			checkFormErr(t, tt.msg, &q)
		})
	}
}

// checkFormErr builds a FORMERR for msg and checks it cannot amplify and is a
// well-formed reply.
func checkFormErr(t *testing.T, msg []byte, q *Query) {
	t.Helper()
	out := AppendError(nil, msg, q, RcodeFormErr)
	if len(out) > len(msg) {
		t.Fatalf("AppendError gave %d octets for a %d-octet query", len(out), len(msg))
	}
	var m dns.Msg
	if err := m.Unpack(out); err != nil {
		t.Fatalf("the error response does not unpack: %v (%x)", err, out)
	}
	if !m.Response || m.Rcode != dns.RcodeFormatError || m.Id != uint16(msg[0])<<8|uint16(msg[1]) {
		t.Errorf("response QR/rcode/id = %v/%d/%#x", m.Response, m.Rcode, m.Id)
	}
	if m.RecursionDesired != (msg[2]&1 != 0) {
		t.Errorf("RD = %v, query had %v", m.RecursionDesired, msg[2]&1 != 0)
	}
}

func TestAppendError(t *testing.T) {
	ednsDO := newQuery("WWW.example.org.", dns.TypeA)
	ednsDO.SetEdns0(4096, true)
	edns := newQuery("www.example.org.", dns.TypeA)
	edns.SetEdns0(512, false)
	noRD := newQuery("www.example.org.", dns.TypeAAAA)
	noRD.RecursionDesired = false
	noRD.CheckingDisabled = true
	plain := newQuery("a.example.", dns.TypeTXT)

	tests := []struct {
		name   string
		query  *dns.Msg
		rcode  int
		prefix []byte // dst already holds this
		useQ   bool   // pass the parsed query (else nil)
	}{
		{name: "servfail with EDNS and DO", query: ednsDO, rcode: RcodeServFail, useQ: true},
		{name: "refused with EDNS", query: edns, rcode: RcodeRefused, useQ: true},
		{name: "notimp without RD, with CD", query: noRD, rcode: RcodeNotImp, useQ: true},
		{name: "nxdomain plain", query: plain, rcode: RcodeNXDomain, useQ: true},
		{name: "appends after existing bytes", query: ednsDO, rcode: RcodeServFail, useQ: true, prefix: []byte{0xAA, 0xBB}},
		{name: "header only", query: ednsDO, rcode: RcodeFormErr, useQ: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			msg := pack(t, tt.query)
			orig := append([]byte(nil), msg...)
			var q *Query
			if tt.useQ {
				q = mustParse(t, msg)
			}
			dst := append([]byte(nil), tt.prefix...)
			out := AppendError(dst, msg, q, tt.rcode)
			if !bytes.Equal(msg, orig) {
				t.Error("AppendError modified the query")
			}
			if !bytes.Equal(out[:len(tt.prefix)], tt.prefix) {
				t.Fatalf("prefix clobbered: % x", out[:len(tt.prefix)])
			}
			resp := out[len(tt.prefix):]
			if len(resp) > len(msg) {
				t.Errorf("response %d octets, query %d", len(resp), len(msg))
			}
			var m dns.Msg
			if err := m.Unpack(resp); err != nil {
				t.Fatalf("unpacking the response: %v", err)
			}
			if m.Id != tt.query.Id || !m.Response || m.Rcode != tt.rcode || m.Opcode != dns.OpcodeQuery {
				t.Errorf("id/QR/rcode/opcode = %#x/%v/%d/%d", m.Id, m.Response, m.Rcode, m.Opcode)
			}
			if m.RecursionDesired != tt.query.RecursionDesired || m.CheckingDisabled != tt.query.CheckingDisabled {
				t.Errorf("RD/CD = %v/%v, query %v/%v", m.RecursionDesired, m.CheckingDisabled, tt.query.RecursionDesired, tt.query.CheckingDisabled)
			}
			if m.Authoritative || m.Truncated || len(m.Answer) != 0 || len(m.Ns) != 0 {
				t.Errorf("unexpected AA/TC/records: %v", &m)
			}
			if !tt.useQ {
				if len(m.Question) != 0 || len(m.Extra) != 0 || len(resp) != HeaderLen {
					t.Errorf("header-only response has %d questions, %d extra, %d octets", len(m.Question), len(m.Extra), len(resp))
				}
				return
			}
			if len(m.Question) != 1 || m.Question[0] != tt.query.Question[0] {
				t.Errorf("question = %v, want %v (letter case kept)", m.Question, tt.query.Question[0])
			}
			qo, ro := tt.query.IsEdns0(), m.IsEdns0()
			if (qo == nil) != (ro == nil) {
				t.Fatalf("OPT in query %v, in response %v", qo != nil, ro != nil)
			}
			if ro != nil && (ro.Do() != qo.Do() || ro.UDPSize() != ourUDPSize || len(m.Extra) != 1) {
				t.Errorf("response OPT DO=%v size=%d (%d extra), want DO=%v size=%d", ro.Do(), ro.UDPSize(), len(m.Extra), qo.Do(), ourUDPSize)
			}
		})
	}
}

func TestAppendPresentation(t *testing.T) {
	tests := []struct {
		name string
		wire []byte
		want string
	}{
		{name: "root", wire: []byte{0}, want: "."},
		{name: "empty", wire: nil, want: "."},
		{name: "plain", wire: []byte("\x03www\x07example\x03com\x00"), want: "www.example.com."},
		{name: "case kept", wire: []byte("\x03WwW\x00"), want: "WwW."},
		{name: "dot in a label", wire: []byte("\x03a.b\x03com\x00"), want: `a\.b.com.`},
		{name: "backslash", wire: []byte("\x03a\\b\x00"), want: `a\\b.`},
		{name: "space", wire: []byte("\x03a b\x00"), want: `a\032b.`},
		{name: "control and high bytes", wire: []byte("\x04\x00\x09\x7f\xff\x00"), want: `\000\009\127\255.`},
		{name: "printable edges", wire: []byte("\x02!~\x00"), want: "!~."},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := AppendPresentation([]byte("x:"), tt.wire)
			if string(got) != "x:"+tt.want {
				t.Errorf("AppendPresentation = %q, want %q", got, "x:"+tt.want)
			}
			// miekg/dns must read the escaped form back to the same wire name.
			if len(tt.wire) > 1 {
				back := make([]byte, 256)
				n, err := dns.PackDomainName(tt.want, back, 0, nil, false)
				if err != nil || !bytes.Equal(back[:n], tt.wire) {
					t.Errorf("miekg reads %q back as %q (%v), want %q", tt.want, back[:n], err, tt.wire)
				}
			}
		})
	}
}

func TestEqualFoldAndAppendLower(t *testing.T) {
	tests := []struct {
		name  string
		a, b  []byte
		equal bool
	}{
		{name: "same", a: []byte("\x03www\x00"), b: []byte("\x03www\x00"), equal: true},
		{name: "case", a: []byte("\x03WwW\x00"), b: []byte("\x03wWw\x00"), equal: true},
		{name: "different letter", a: []byte("\x03www\x00"), b: []byte("\x03wwx\x00")},
		{name: "different length", a: []byte("\x03www\x00"), b: []byte("\x02ww\x00")},
		{name: "not ASCII-folded beyond letters", a: []byte("\x01@\x00"), b: []byte("\x01`\x00")},
		{name: "bracket vs brace", a: []byte("\x01[\x00"), b: []byte("\x01{\x00")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := EqualFold(tt.a, tt.b); got != tt.equal {
				t.Errorf("EqualFold = %v, want %v", got, tt.equal)
			}
			la, lb := AppendLower(nil, tt.a), AppendLower(nil, tt.b)
			if bytes.Equal(la, lb) != tt.equal {
				t.Errorf("AppendLower %q vs %q: equal %v, want %v", la, lb, bytes.Equal(la, lb), tt.equal)
			}
			if !bytes.Equal(la, bytes.ToLower(tt.a)) {
				t.Errorf("AppendLower(%q) = %q", tt.a, la)
			}
		})
	}
}

func TestParseAllocs(t *testing.T) {
	m := newQuery("www.example.com.", dns.TypeA)
	m.SetEdns0(1232, true)
	msg := pack(t, m)
	var q Query
	if n := testing.AllocsPerRun(100, func() { _ = Parse(msg, &q) }); n != 0 {
		t.Errorf("Parse allocates %v times", n)
	}
}

func BenchmarkParse(b *testing.B) {
	plain := newQuery("www.example.com.", dns.TypeA)
	edns := newQuery("www.example.com.", dns.TypeA)
	edns.SetEdns0(1232, true)
	for _, bc := range []struct {
		name string
		msg  *dns.Msg
	}{{"plain", plain}, {"edns", edns}} {
		b.Run(bc.name, func(b *testing.B) {
			msg := pack(b, bc.msg)
			var q Query
			b.ReportAllocs()
			b.SetBytes(int64(len(msg)))
			for b.Loop() {
				if err := Parse(msg, &q); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestEDNSVersion: Parse reports the OPT record's version (BADVERS is the
// forwarder's to answer), and AppendError puts an extended RCODE's upper
// bits in its OPT, version 0.
func TestEDNSVersion(t *testing.T) {
	q := question(exampleCom, dns.TypeA, dns.ClassINET)
	for _, v := range []uint32{0, 1, 255} {
		msg := cat(hdr(7, FlagRD, 1, 0, 0, 1), q, optRR(1232, v<<16|0x8000))
		var pq Query
		if err := Parse(msg, &pq); err != nil {
			t.Fatalf("version %d: %v", v, err)
		}
		if !pq.HasOPT || uint32(pq.Version) != v || !pq.DO {
			t.Fatalf("version %d: parsed HasOPT %v Version %d DO %v", v, pq.HasOPT, pq.Version, pq.DO)
		}
		resp := AppendError(nil, msg, &pq, RcodeBadVers)
		var m dns.Msg
		if err := m.Unpack(resp); err != nil {
			t.Fatalf("BADVERS response: %v", err)
		}
		opt := m.IsEdns0()
		if m.Rcode != dns.RcodeBadVers || opt == nil || opt.Version() != 0 || !opt.Do() || len(m.Answer) != 0 || len(resp) > len(msg) {
			t.Errorf("BADVERS for version %d: rcode %d, OPT %v, %d octets for a %d-octet query", v, m.Rcode, opt, len(resp), len(msg))
		}
	}
}
