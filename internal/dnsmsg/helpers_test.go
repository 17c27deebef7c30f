package dnsmsg

import (
	"encoding/binary"
	"testing"

	"github.com/miekg/dns"
)

// hdr builds a raw 12-octet header.
func hdr(id, flags, qd, an, ns, ar uint16) []byte {
	b := make([]byte, HeaderLen)
	binary.BigEndian.PutUint16(b[0:], id)
	binary.BigEndian.PutUint16(b[2:], flags)
	binary.BigEndian.PutUint16(b[4:], qd)
	binary.BigEndian.PutUint16(b[6:], an)
	binary.BigEndian.PutUint16(b[8:], ns)
	binary.BigEndian.PutUint16(b[10:], ar)
	return b
}

// cat concatenates byte slices into a new slice.
func cat(parts ...[]byte) []byte {
	var out []byte
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// u16 is a big-endian 16-bit field.
func u16(v uint16) []byte { return []byte{byte(v >> 8), byte(v)} }

// wireName packs a presentation name (uncompressed) with miekg/dns.
func wireName(t testing.TB, name string) []byte {
	t.Helper()
	buf := make([]byte, 256)
	n, err := dns.PackDomainName(dns.Fqdn(name), buf, 0, nil, false)
	if err != nil {
		t.Fatalf("packing %q: %v", name, err)
	}
	return buf[:n]
}

// labels builds a wire name from raw label lengths filled with 'a'.
func labels(lens ...int) []byte {
	var b []byte
	for _, l := range lens {
		b = append(b, byte(l))
		for range l {
			b = append(b, 'a')
		}
	}
	return append(b, 0)
}

// optRR is a raw OPT record with the given UDP size and TTL field.
func optRR(size uint16, ttl uint32) []byte {
	b := []byte{0}
	b = append(b, u16(TypeOPT)...)
	b = append(b, u16(size)...)
	b = binary.BigEndian.AppendUint32(b, ttl)
	return append(b, 0, 0)
}

// question is a raw question entry.
func question(name []byte, qtype, qclass uint16) []byte {
	return cat(name, u16(qtype), u16(qclass))
}

// newQuery is a miekg query with RD set.
func newQuery(name string, qtype uint16) *dns.Msg {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.Id = 0xBEEF
	return m
}

// pack packs m without compression unless compress is set.
func pack(t testing.TB, m *dns.Msg) []byte {
	t.Helper()
	b, err := m.Pack()
	if err != nil {
		t.Fatalf("packing: %v", err)
	}
	return b
}

// mustParse parses msg as a query and fails the test on error.
func mustParse(t testing.TB, msg []byte) *Query {
	t.Helper()
	var q Query
	if err := Parse(msg, &q); err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return &q
}

// rr parses a record in presentation format.
func rr(t testing.TB, s string) dns.RR {
	t.Helper()
	r, err := dns.NewRR(s)
	if err != nil {
		t.Fatalf("NewRR(%q): %v", s, err)
	}
	return r
}

// validWireName reports whether n is exactly one uncompressed wire name of at
// most 255 octets whose labels are at most 63 octets.
func validWireName(n []byte) bool {
	if len(n) == 0 || len(n) > 255 {
		return false
	}
	off := 0
	for off < len(n) {
		l := int(n[off])
		if l == 0 {
			return off == len(n)-1
		}
		if l > 63 {
			return false
		}
		off += 1 + l
	}
	return false
}

// bigResponse answers q with n A records (and an OPT when the query had one).
func bigResponse(t testing.TB, query *dns.Msg, n int) *dns.Msg {
	t.Helper()
	resp := new(dns.Msg)
	resp.SetReply(query)
	name := query.Question[0].Name
	for i := range n {
		a := rr(t, name+" 300 IN A 192.0.2.1")
		a.(*dns.A).A[3] = byte(i)
		resp.Answer = append(resp.Answer, a)
	}
	if o := query.IsEdns0(); o != nil {
		resp.SetEdns0(o.UDPSize(), o.Do())
	}
	return resp
}
