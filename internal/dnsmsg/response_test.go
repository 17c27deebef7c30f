package dnsmsg

import (
	"bytes"
	"errors"
	"testing"

	"github.com/miekg/dns"
)

func TestCheckResponse(t *testing.T) {
	query := newQuery("WwW.Example.COM.", dns.TypeA)
	query.SetEdns0(1232, false)
	qmsg := pack(t, query)
	q := mustParse(t, qmsg)
	wantQEnd := HeaderLen + len(q.Name) + 4

	reply := func(edit func(m *dns.Msg)) []byte {
		m := bigResponse(t, query, 3)
		m.Ns = append(m.Ns, rr(t, "example.com. 300 IN NS ns.example.com."))
		m.Compress = true
		if edit != nil {
			edit(m)
		}
		return pack(t, m)
	}
	good := reply(nil)

	tests := []struct {
		name string
		resp []byte
		err  error // nil: accepted
	}{
		{name: "matching", resp: good},
		{name: "lower-case name", resp: reply(func(m *dns.Msg) { m.Question[0].Name = "www.example.com." })},
		{name: "upper-case name", resp: reply(func(m *dns.Msg) { m.Question[0].Name = "WWW.EXAMPLE.COM." })},
		{name: "different ID is not checked here", resp: reply(func(m *dns.Msg) { m.Id++ })},
		{name: "no records", resp: reply(func(m *dns.Msg) { m.Answer, m.Ns, m.Extra = nil, nil, nil })},
		{name: "other name", resp: reply(func(m *dns.Msg) { m.Question[0].Name = "www.example.net." }), err: ErrQuestion},
		{name: "longer name", resp: reply(func(m *dns.Msg) { m.Question[0].Name = "wwww.example.com." }), err: ErrQuestion},
		{name: "other type", resp: reply(func(m *dns.Msg) { m.Question[0].Qtype = dns.TypeAAAA }), err: ErrQuestion},
		{name: "other class", resp: reply(func(m *dns.Msg) { m.Question[0].Qclass = dns.ClassCHAOS }), err: ErrQuestion},
		{name: "no question", resp: reply(func(m *dns.Msg) { m.Question = nil }), err: ErrQuestion},
		{name: "two questions", resp: reply(func(m *dns.Msg) { m.Question = append(m.Question, m.Question[0]) }), err: ErrQuestion},
		{name: "QR clear", resp: reply(func(m *dns.Msg) { m.Response = false }), err: ErrNotResponse},
		{name: "short", resp: good[:11], err: ErrShort},
		{name: "question cut", resp: good[:wantQEnd-1], err: ErrQuestion},
		{name: "last record cut", resp: good[:len(good)-3], err: ErrTruncated},
		{name: "record header cut", resp: good[:wantQEnd+5], err: ErrTruncated},
		{name: "extra count past the end", resp: func() []byte {
			b := append([]byte(nil), good...)
			b[11]++
			return b
		}(), err: ErrTruncated},
		{name: "compressed question name", resp: cat(hdr(0xBEEF, FlagQR, 1, 0, 0, 0), []byte{0xC0, 0x0C}, u16(dns.TypeA), u16(dns.ClassINET)), err: ErrQuestion},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			qend, err := CheckResponse(tt.resp, q)
			if !errors.Is(err, tt.err) {
				t.Fatalf("CheckResponse = %d, %v; want %v", qend, err, tt.err)
			}
			if err == nil && qend != wantQEnd {
				t.Errorf("qend = %d, want %d", qend, wantQEnd)
			}
		})
	}
}

func TestSetIDAndCopyQuestionName(t *testing.T) {
	query := newQuery("MiXeD.ExAmPlE.", dns.TypeA)
	q := mustParse(t, pack(t, query))
	stored := bigResponse(t, newQuery("mixed.example.", dns.TypeA), 2)
	stored.Compress = true
	resp := pack(t, stored)
	if _, err := CheckResponse(resp, q); err != nil {
		t.Fatal(err)
	}
	SetID(resp, 0x4242)
	CopyQuestionName(resp, q.Name)
	var m dns.Msg
	if err := m.Unpack(resp); err != nil {
		t.Fatal(err)
	}
	if m.Id != 0x4242 || m.Question[0].Name != "MiXeD.ExAmPlE." {
		t.Errorf("id %#x, question %q", m.Id, m.Question[0].Name)
	}
	// Compressed answer names point at the question and follow its case;
	// what matters is that they still resolve to the same name.
	for _, a := range m.Answer {
		if dns.CanonicalName(a.Header().Name) != "mixed.example." {
			t.Errorf("answer owner %q", a.Header().Name)
		}
	}
}

func TestTruncate(t *testing.T) {
	ednsQuery := newQuery("big.example.com.", dns.TypeA)
	ednsQuery.SetEdns0(4096, true)
	plainQuery := newQuery("big.example.com.", dns.TypeA)

	withOPT := bigResponse(t, ednsQuery, 60) // ~1000 octets uncompressed
	withOPT.Ns = append(withOPT.Ns, rr(t, "example.com. 300 IN NS ns.example.com."))
	withOPT.Extra = append([]dns.RR{rr(t, "ns.example.com. 300 IN A 192.0.2.53")}, withOPT.Extra...)
	noOPT := bigResponse(t, plainQuery, 60)
	optFirst := bigResponse(t, ednsQuery, 60)
	optFirst.Extra = append(optFirst.Extra, rr(t, "ns.example.com. 300 IN A 192.0.2.53")) // OPT before another record
	small := bigResponse(t, ednsQuery, 1)

	qlen := HeaderLen + len(wireName(t, "big.example.com.")) + 4
	const optLen = 11

	tests := []struct {
		name    string
		resp    *dns.Msg
		size    int
		wantLen int  // -1: unchanged
		wantOPT bool // the OPT survives
	}{
		{name: "fits", resp: small, size: 512, wantLen: -1},
		{name: "exactly fits", resp: small, size: -1, wantLen: -1}, // size = len
		{name: "too big with OPT", resp: withOPT, size: 512, wantLen: qlen + optLen, wantOPT: true},
		{name: "too big without OPT", resp: noOPT, size: 512, wantLen: qlen},
		{name: "OPT not last", resp: optFirst, size: 512, wantLen: qlen + optLen, wantOPT: true},
		{name: "room for the question only", resp: withOPT, size: qlen + optLen - 1, wantLen: qlen},
		{name: "room for question and OPT exactly", resp: withOPT, size: qlen + optLen, wantLen: qlen + optLen, wantOPT: true},
		{name: "one octet short of fitting", resp: small, size: -2, wantLen: qlen + optLen, wantOPT: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			msg := pack(t, tt.resp)
			orig := append([]byte(nil), msg...)
			size := tt.size
			switch size {
			case -1:
				size = len(msg)
			case -2:
				size = len(msg) - 1
			}
			out := Truncate(msg, size)
			if tt.wantLen < 0 {
				if !bytes.Equal(out, orig) {
					t.Fatal("a response that fits was changed")
				}
				return
			}
			if len(out) != tt.wantLen || len(out) > size {
				t.Fatalf("len = %d, want %d (size %d)", len(out), tt.wantLen, size)
			}
			var m dns.Msg
			if err := m.Unpack(out); err != nil {
				t.Fatalf("truncated response does not unpack: %v", err)
			}
			if !m.Truncated || !m.Response || m.Id != tt.resp.Id || m.Rcode != tt.resp.Rcode || m.RecursionDesired != tt.resp.RecursionDesired {
				t.Errorf("header TC/QR/id/rcode/RD = %v/%v/%#x/%d/%v", m.Truncated, m.Response, m.Id, m.Rcode, m.RecursionDesired)
			}
			if len(m.Question) != 1 || m.Question[0] != tt.resp.Question[0] {
				t.Errorf("question = %v", m.Question)
			}
			qd, an, ns, ar := Counts(out)
			wantAR := 0
			if tt.wantOPT {
				wantAR = 1
			}
			if qd != 1 || an != 0 || ns != 0 || ar != wantAR {
				t.Errorf("counts = %d/%d/%d/%d, want 1/0/0/%d", qd, an, ns, ar, wantAR)
			}
			if tt.wantOPT {
				o, want := m.IsEdns0(), tt.resp.IsEdns0()
				if o == nil || o.UDPSize() != want.UDPSize() || o.Do() != want.Do() {
					t.Errorf("OPT = %v, want %v", o, want)
				}
			}
		})
	}
}

// TestTruncateGarbage covers inputs Truncate may see only from a broken
// upstream or a bug: it must not panic and must not grow the message.
func TestTruncateGarbage(t *testing.T) {
	tests := []struct {
		name string
		msg  []byte
		size int
	}{
		{name: "shorter than a header", msg: []byte{1, 2, 3, 4, 5}, size: 2},
		{name: "header only", msg: hdr(1, FlagQR, 1, 3, 0, 0), size: 4},
		{name: "question cut", msg: cat(hdr(1, FlagQR, 1, 0, 0, 0), []byte("\x07exam")), size: 14},
		{name: "records claimed, none there", msg: cat(hdr(1, FlagQR, 1, 9, 9, 9), question(exampleCom, 1, 1), []byte{0xFF}), size: 29},
		{name: "QDCOUNT 2", msg: cat(hdr(1, FlagQR, 2, 0, 0, 0), question(exampleCom, 1, 1), question(exampleCom, 1, 1)), size: 20},
		{name: "compressed question", msg: cat(hdr(1, FlagQR, 1, 1, 0, 0), []byte{0xC0, 29}, u16(1), u16(1), exampleCom, u16(1), u16(1), []byte{0, 0, 0, 9}, u16(4), []byte{1, 2, 3, 4}), size: 20},
		{name: "no question, records", msg: cat(hdr(1, FlagQR, 0, 1, 0, 0), exampleCom, u16(1), u16(1), []byte{0, 0, 0, 9}, u16(4), []byte{1, 2, 3, 4}), size: 20},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := append([]byte(nil), tt.msg...)
			out := Truncate(in, tt.size)
			if len(out) > len(tt.msg) {
				t.Fatalf("grew from %d to %d", len(tt.msg), len(out))
			}
			if len(tt.msg) >= HeaderLen {
				if tt.size >= HeaderLen && len(out) > tt.size {
					t.Errorf("%d octets for size %d", len(out), tt.size)
				}
				qd, an, ns, ar := Counts(out)
				if an != 0 || ns != 0 || ar != 0 || qd > 1 {
					t.Errorf("counts %d/%d/%d/%d after truncation", qd, an, ns, ar)
				}
				var m dns.Msg
				if err := m.Unpack(out); err != nil {
					t.Errorf("result does not unpack: %v (% x)", err, out)
				}
			}
		})
	}
}
