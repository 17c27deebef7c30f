package dnsmsg

import (
	"bytes"
	"testing"

	"github.com/miekg/dns"
)

func validQuerySeeds(t testing.TB) [][]byte {
	plain := newQuery("www.example.com.", dns.TypeA)
	edns := newQuery("WwW.ExAmPlE.cOm.", dns.TypeAAAA)
	edns.SetEdns0(4096, true)
	cookie := newQuery("example.org.", dns.TypeTXT)
	cookie.SetEdns0(1232, false)
	o := cookie.IsEdns0()
	o.Option = append(o.Option, &dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708"})
	root := newQuery(".", dns.TypeNS)
	nsid := newQuery("example.org.", dns.TypeA)
	nsid.SetEdns0(1232, true)
	n := nsid.IsEdns0()
	n.Option = append(n.Option, &dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708"}, &dns.EDNS0_NSID{Code: dns.EDNS0NSID})
	v1 := newQuery("example.org.", dns.TypeA)
	v1.SetEdns0(1232, false)
	v1.IsEdns0().SetVersion(1)
	ecs := newQuery("example.org.", dns.TypeA)
	ecs.SetEdns0(1232, false)
	ecs.IsEdns0().Option = append(ecs.IsEdns0().Option,
		&dns.EDNS0_SUBNET{Code: dns.EDNS0SUBNET, Family: 1, SourceNetmask: 20, Address: []byte{192, 0, 16, 0}},
		&dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708010000005cf79f111f8130c3eee29480"})
	return [][]byte{pack(t, plain), pack(t, edns), pack(t, cookie), pack(t, root), pack(t, nsid), pack(t, v1), pack(t, ecs)}
}

// questionLen returns the length of header plus first question when the
// message has QDCOUNT 1 and an uncompressed, valid question; else -1.
func questionLen(msg []byte) int {
	if len(msg) < HeaderLen || msg[4] != 0 || msg[5] != 1 {
		return -1
	}
	for off := HeaderLen; off < len(msg) && off-HeaderLen < 256; {
		l := int(msg[off])
		if l == 0 {
			if !validWireName(msg[HeaderLen:off+1]) || off+5 > len(msg) {
				return -1
			}
			return off + 5
		}
		if l > 63 {
			return -1
		}
		off += 1 + l
	}
	return -1
}

func FuzzParse(f *testing.F) {
	for _, s := range validQuerySeeds(f) {
		f.Add(s)
	}
	for _, c := range malformedQueries() {
		f.Add(c.msg)
	}
	f.Fuzz(func(t *testing.T, msg []byte) {
		orig := append([]byte(nil), msg...)
		var q Query
		err := Parse(msg, &q)
		if !bytes.Equal(msg, orig) {
			t.Fatal("Parse modified its input")
		}
		if err == nil {
			if !validWireName(q.Name) {
				t.Fatalf("accepted an invalid name %q", q.Name)
			}
			if q.QEnd > len(msg) || q.QEnd != HeaderLen+len(q.Name)+4 {
				t.Fatalf("QEnd %d, name %d octets, message %d", q.QEnd, len(q.Name), len(msg))
			}
			if q.HasOPT && (q.OPTOff < q.QEnd || q.OPTEnd > len(msg) || q.OPTEnd-q.OPTOff < 11) {
				t.Fatalf("OPT at [%d:%d], QEnd %d, len %d", q.OPTOff, q.OPTEnd, q.QEnd, len(msg))
			}
			if q.Opcode() != 0 || msg[2]&0x80 != 0 {
				t.Fatal("accepted a non-query")
			}
			if n := len(q.Cookie); q.Cookie != nil && n != 8 && (n < 16 || n > 40) {
				t.Fatalf("accepted a cookie of %d octets", n)
			}
			if q.ECS != nil && (!validECS(q.ECS) || q.ECS[3] != 0) {
				t.Fatalf("accepted client subnet %x", q.ECS)
			}
			// Whatever Parse accepts miekg/dns must read the question of.
			var m dns.Msg
			if err := m.Unpack(msg[:q.QEnd]); err == nil {
				if len(m.Question) != 1 || m.Question[0].Qtype != q.Type || m.Question[0].Qclass != q.Class {
					t.Fatalf("miekg reads question %v, Parse %d/%d", m.Question, q.Type, q.Class)
				}
			}
		}
		if err != nil && (q.NSID || q.Cookie != nil || q.ECS != nil) {
			t.Fatalf("%v, but options kept to echo: NSID %v, cookie %x, ECS %x", err, q.NSID, q.Cookie, q.ECS)
		}
		if ParseHeader(msg) != nil {
			return
		}
		for _, rcode := range []int{RcodeFormErr, RcodeServFail} {
			out := AppendError(nil, msg, &q, rcode)
			if len(out) > len(msg) {
				t.Fatalf("error response of %d octets for a %d-octet query (%v)", len(out), len(msg), err)
			}
			var m dns.Msg
			if err := m.Unpack(out); err != nil {
				t.Fatalf("error response does not unpack: %v", err)
			}
			if !m.Response || m.Rcode != rcode {
				t.Fatalf("error response QR %v rcode %d", m.Response, m.Rcode)
			}
		}
	})
}

func FuzzCheckResponse(f *testing.F) {
	query := newQuery("www.example.com.", dns.TypeA)
	query.SetEdns0(1232, true)
	q := mustParse(f, pack(f, query))

	ok := bigResponse(f, query, 40)
	ok.Ns = append(ok.Ns, rr(f, "example.com. 3600 IN SOA ns.example.com. h.example.com. 1 2 3 4 300"))
	ok.Compress = true
	f.Add(pack(f, ok))
	ok.Compress = false
	f.Add(pack(f, ok))
	f.Add(pack(f, bigResponse(f, query, 0)))
	f.Add([]byte{})
	f.Add(hdr(0, FlagQR, 1, 0, 0, 0))
	f.Fuzz(func(t *testing.T, resp []byte) {
		qend, err := CheckResponse(resp, q)
		if err != nil {
			return
		}
		if qend != HeaderLen+len(q.Name)+4 || qend > len(resp) {
			t.Fatalf("qend %d, len %d", qend, len(resp))
		}
		// The cache and forwarder then do all of this; none may panic.
		SetID(resp, 7)
		CopyQuestionName(resp, q.Name)
		MinTTL(resp, qend)
		AgeTTLs(resp, qend, 30, 0)
		out := Truncate(resp, MinUDPSize)
		if len(out) > MinUDPSize {
			t.Fatalf("truncated to %d octets", len(out))
		}
	})
}

func FuzzTruncate(f *testing.F) {
	query := newQuery("www.example.com.", dns.TypeA)
	query.SetEdns0(4096, false)
	for _, n := range []int{0, 1, 50} {
		m := bigResponse(f, query, n)
		m.Compress = n == 50
		f.Add(pack(f, m), uint16(512))
		f.Add(pack(f, m), uint16(40))
	}
	f.Add([]byte{1, 2, 3}, uint16(1))
	f.Fuzz(func(t *testing.T, msg []byte, size uint16) {
		in := append([]byte(nil), msg...)
		var before dns.Msg
		unpacked := before.Unpack(in) == nil
		out := Truncate(msg, int(size))
		if len(out) > len(in) {
			t.Fatalf("grew from %d to %d octets", len(in), len(out))
		}
		if len(in) <= int(size) {
			if !bytes.Equal(out, in) {
				t.Fatal("changed a message that fits")
			}
			return
		}
		ql := questionLen(in)
		if ql > 0 && int(size) >= ql && len(out) > int(size) {
			t.Fatalf("%d octets for size %d (question ends at %d)", len(out), size, ql)
		}
		if ql < 0 && int(size) >= HeaderLen && len(out) > int(size) {
			t.Fatalf("%d octets for size %d, no usable question", len(out), size)
		}
		if len(in) < HeaderLen {
			return
		}
		if out[2]&(FlagTC>>8) == 0 {
			t.Fatal("TC not set")
		}
		if _, an, ns, ar := Counts(out); an != 0 || ns != 0 || ar > 1 {
			t.Fatalf("counts an/ns/ar %d/%d/%d", an, ns, ar)
		}
		if unpacked {
			var after dns.Msg
			if err := after.Unpack(out); err != nil {
				t.Fatalf("miekg read the message but not its truncation: %v\nin  % x\nout % x", err, in, out)
			}
		}
	})
}

// FuzzAppendNSID: any bytes as a response: no panic, and the result is the
// input unchanged or the input plus one option, within the limit.
func FuzzAppendNSID(f *testing.F) {
	m := new(dns.Msg)
	m.SetQuestion("example.com.", dns.TypeA)
	m.Response = true
	m.SetEdns0(1232, false)
	f.Add(pack(f, m), 512)
	f.Add([]byte{}, 512)
	f.Fuzz(func(t *testing.T, resp []byte, max int) {
		in := append(make([]byte, 0, len(resp)+64), resp...)
		out := AppendOption(in, OptionNSID, []byte("edge-1"), max)
		switch {
		case len(out) == len(resp):
			if !bytes.Equal(out, resp) {
				t.Fatal("changed without adding the option")
			}
		case len(out) == len(resp)+10:
			if len(out) > max || !bytes.Equal(out[len(resp):], []byte("\x00\x03\x00\x06edge-1")) {
				t.Fatalf("added %x within %d", out[len(resp):], max)
			}
		default:
			t.Fatalf("%d octets from %d", len(out), len(resp))
		}
	})
}
