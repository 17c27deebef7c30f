package upstream

import (
	"errors"
	"testing"

	"github.com/miekg/dns"

	"xdoh/forwarder/upstream/upstreamtest"
)

func TestCheckResponse(t *testing.T) {
	q := makeQuery(t, "www.Example.com.", 1)
	reply := func(edit func(m *dns.Msg)) []byte {
		m := new(dns.Msg)
		if err := m.Unpack(q); err != nil {
			t.Fatal(err)
		}
		r := upstreamtest.AnswerFor(m)
		edit(r)
		b, err := r.Pack()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	tests := []struct {
		name string
		resp []byte
		ok   bool
	}{
		{"answer", reply(func(*dns.Msg) {}), true},
		{"case differs", reply(func(m *dns.Msg) { m.Question[0].Name = "WWW.example.COM." }), true},
		{"FORMERR without question", reply(func(m *dns.Msg) { m.Question = nil; m.Rcode = dns.RcodeFormatError }), true},
		{"short", []byte{0, 1, 2}, false},
		{"not a response", reply(func(m *dns.Msg) { m.Response = false }), false},
		{"other opcode", reply(func(m *dns.Msg) { m.Opcode = dns.OpcodeNotify }), false},
		{"other name", reply(func(m *dns.Msg) { m.Question[0].Name = "www.example.net." }), false},
		{"other type", reply(func(m *dns.Msg) { m.Question[0].Qtype = dns.TypeAAAA }), false},
		{"no question, NOERROR", reply(func(m *dns.Msg) { m.Question = nil }), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := checkResponse(q, tt.resp)
			if tt.ok && err != nil {
				t.Fatal(err)
			}
			if !tt.ok && !errors.Is(err, ErrBadResponse) {
				t.Fatalf("error %v, want ErrBadResponse", err)
			}
		})
	}
}
