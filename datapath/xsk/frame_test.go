package xsk

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"testing"

	"github.com/miekg/dns"
	"golang.org/x/net/ipv4"
)

var (
	macClient = [6]byte{0x02, 0, 0, 0, 0, 0x01}
	macServer = [6]byte{0x02, 0, 0, 0, 0, 0x02}
	client4   = netip.MustParseAddr("169.254.7.1")
	server4   = netip.MustParseAddr("169.254.7.2")
	client6   = netip.MustParseAddr("fd00:7::1")
	server6   = netip.MustParseAddr("fd00:7::2")
)

// query is a frame to build for a test: a DNS query from client to server
// unless a field says otherwise.
type query struct {
	vlans        []uint16 // TPIDs of the tags, outermost first
	v6           bool
	src, dst     netip.Addr // zero: client4/6 and server4/6
	sport, dport uint16     // zero: 40000 and 53
	payload      []byte     // nil: a packed A query for example.com
	pad          int        // Ethernet padding after the IP packet
	junkSums     bool       // garbage in the IPv4 and UDP checksums
	tos          byte       // IPv4 TOS / IPv6 traffic class
	flags        uint16     // IPv4 flags and fragment offset
}

func dnsQuery(t testing.TB, name string) []byte {
	t.Helper()
	b, err := new(dns.Msg).SetQuestion(dns.Fqdn(name), dns.TypeA).Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// build lays out q as a frame, with correct checksums unless junkSums.
func (q query) build(t testing.TB) []byte {
	t.Helper()
	if q.payload == nil {
		q.payload = dnsQuery(t, "example.com")
	}
	if !q.src.IsValid() {
		q.src, q.dst = client4, server4
		if q.v6 {
			q.src, q.dst = client6, server6
		}
	}
	if q.sport == 0 {
		q.sport = 40000
	}
	if q.dport == 0 {
		q.dport = 53
	}
	f := append([]byte{}, macServer[:]...)
	f = append(f, macClient[:]...)
	for i, tpid := range q.vlans {
		f = binary.BigEndian.AppendUint16(f, tpid)
		f = binary.BigEndian.AppendUint16(f, uint16(100+i)) // VID
	}
	udpLen := 8 + len(q.payload)
	var pseudo []byte
	if q.v6 {
		f = binary.BigEndian.AppendUint16(f, 0x86dd)
		f = append(f, 0x60|q.tos>>4, q.tos<<4|0x0a, 0xbc, 0xde) // flow label 0xabcde
		f = binary.BigEndian.AppendUint16(f, uint16(udpLen))
		f = append(f, 17, 61)
		f = append(f, q.src.AsSlice()...)
		f = append(f, q.dst.AsSlice()...)
		pseudo = append(q.src.AsSlice(), q.dst.AsSlice()...)
		pseudo = binary.BigEndian.AppendUint32(pseudo, uint32(udpLen))
		pseudo = append(pseudo, 0, 0, 0, 17)
	} else {
		f = binary.BigEndian.AppendUint16(f, 0x0800)
		ip := []byte{0x45, q.tos, 0, 0, 0x12, 0x34, 0, 0, 61, 17, 0, 0}
		binary.BigEndian.PutUint16(ip[2:], uint16(20+udpLen))
		binary.BigEndian.PutUint16(ip[6:], q.flags)
		ip = append(ip, q.src.AsSlice()...)
		ip = append(ip, q.dst.AsSlice()...)
		binary.BigEndian.PutUint16(ip[10:], ^refSum(ip))
		if q.junkSums {
			ip[10], ip[11] = 0xde, 0xad
		}
		f = append(f, ip...)
		pseudo = append(append(q.src.AsSlice(), q.dst.AsSlice()...), 0, 17)
		pseudo = binary.BigEndian.AppendUint16(pseudo, uint16(udpLen))
	}
	udp := binary.BigEndian.AppendUint16(nil, q.sport)
	udp = binary.BigEndian.AppendUint16(udp, q.dport)
	udp = binary.BigEndian.AppendUint16(udp, uint16(udpLen))
	udp = append(udp, 0, 0)
	udp = append(udp, q.payload...)
	binary.BigEndian.PutUint16(udp[6:], ^refSum(append(pseudo, udp...)))
	if q.junkSums {
		udp[6], udp[7] = 0xbe, 0xef
	}
	f = append(f, udp...)
	for range q.pad {
		f = append(f, 0xa5)
	}
	return f
}

// refSum is the plain RFC 1071 sum, 16 bits at a time: the reference the
// fast sumLE is checked against.
func refSum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s>>16 != 0 {
		s = s>>16 + s&0xffff
	}
	return uint16(s)
}

// checkReply verifies that the n-byte frame out is a correct reply to the
// query frame in: swapped addresses and ports, lengths, TTL, checksums by
// the reference sum (and the IPv4 header by x/net/ipv4), payload answer.
func checkReply(t testing.TB, in, out []byte, answer []byte) {
	t.Helper()
	qv, ok := Parse(in)
	if !ok {
		t.Fatal("query does not parse")
	}
	v, ok := Parse(out)
	if !ok {
		t.Fatalf("reply does not parse: % x", out)
	}
	if len(out) != v.End {
		t.Errorf("reply is %d bytes, its IP packet ends at %d", len(out), v.End)
	}
	if v.L3Off != qv.L3Off || v.L4Off != qv.L4Off || v.PayloadOff != qv.PayloadOff || v.IPv6 != qv.IPv6 {
		t.Errorf("reply layout %+v, query %+v", v, qv)
	}
	if !bytes.Equal(out[0:6], in[6:12]) || !bytes.Equal(out[6:12], in[0:6]) {
		t.Errorf("MACs not swapped: % x / % x", out[:12], in[:12])
	}
	if !bytes.Equal(out[12:qv.L3Off], in[12:qv.L3Off]) {
		t.Errorf("VLAN tags changed: % x, was % x", out[12:qv.L3Off], in[12:qv.L3Off])
	}
	if got, want := v.Client(out), qv.Server(in); got != want {
		t.Errorf("reply source %v, want %v", got, want)
	}
	if got, want := v.Server(out), qv.Client(in); got != want {
		t.Errorf("reply destination %v, want %v", got, want)
	}
	if !bytes.Equal(v.Payload(out), answer) {
		t.Errorf("payload % x, want % x", v.Payload(out), answer)
	}
	ip := out[v.L3Off:v.L4Off]
	udp := out[v.L4Off:v.End]
	var pseudo []byte
	if v.IPv6 {
		if ip[7] != 64 {
			t.Errorf("hop limit %d", ip[7])
		}
		if ip[1]&0x30 != 0 {
			t.Errorf("ECN bits left: %#x", ip[1])
		}
		if got := binary.BigEndian.Uint16(ip[4:]); int(got) != len(udp) {
			t.Errorf("IPv6 payload length %d, want %d", got, len(udp))
		}
		q := in[qv.L3Off:]
		if ip[0] != q[0] || ip[1]&^0x30 != q[1]&^0x30 || ip[2] != q[2] || ip[3] != q[3] {
			t.Errorf("traffic class or flow label changed: % x, was % x", ip[:4], q[:4])
		}
		pseudo = append(append(pseudo, ip[8:40]...), 0, 0)
		pseudo = binary.BigEndian.AppendUint16(pseudo, uint16(len(udp)))
		pseudo = append(pseudo, 0, 0, 0, 17)
	} else {
		h, err := ipv4.ParseHeader(ip)
		if err != nil {
			t.Fatalf("x/net/ipv4 parse: %v", err)
		}
		if h.TTL != 64 || h.Protocol != 17 || h.TotalLen != len(ip)+len(udp) || h.Len != 20 {
			t.Errorf("IPv4 header %+v", h)
		}
		if h.TOS&3 != 0 {
			t.Errorf("ECN bits left: %#x", h.TOS)
		}
		if refSum(ip) != 0xffff {
			t.Errorf("IPv4 header checksum %#04x wrong (sum %#04x)", h.Checksum, refSum(ip))
		}
		pseudo = append(append(pseudo, ip[12:20]...), 0, 17)
		pseudo = binary.BigEndian.AppendUint16(pseudo, uint16(len(udp)))
	}
	if got := binary.BigEndian.Uint16(udp[4:]); int(got) != len(udp) {
		t.Errorf("UDP length %d, want %d", got, len(udp))
	}
	if binary.BigEndian.Uint16(udp[6:]) == 0 {
		t.Error("UDP checksum 0")
	}
	if s := refSum(append(pseudo, udp...)); s != 0xffff {
		t.Errorf("UDP checksum %#04x wrong (sum %#04x)", binary.BigEndian.Uint16(udp[6:]), s)
	}
}

func TestParse(t *testing.T) {
	q := dnsQuery(t, "example.com")
	tests := []struct {
		name string
		q    query
		edit func(f []byte) []byte // applied after build
		ok   bool
		v    View // checked when ok (End, offsets)
	}{
		{name: "ipv4", q: query{}, ok: true, v: View{L3Off: 14, L4Off: 34, PayloadOff: 42, PayloadLen: len(q), End: 42 + len(q)}},
		{name: "ipv6", q: query{v6: true}, ok: true, v: View{L3Off: 14, L4Off: 54, PayloadOff: 62, PayloadLen: len(q), End: 62 + len(q), IPv6: true}},
		{name: "ipv4 802.1Q", q: query{vlans: []uint16{0x8100}}, ok: true, v: View{L3Off: 18, L4Off: 38, PayloadOff: 46, PayloadLen: len(q), End: 46 + len(q)}},
		{name: "ipv6 802.1Q", q: query{v6: true, vlans: []uint16{0x8100}}, ok: true, v: View{L3Off: 18, L4Off: 58, PayloadOff: 66, PayloadLen: len(q), End: 66 + len(q), IPv6: true}},
		{name: "ipv4 QinQ", q: query{vlans: []uint16{0x88a8, 0x8100}}, ok: true, v: View{L3Off: 22, L4Off: 42, PayloadOff: 50, PayloadLen: len(q), End: 50 + len(q)}},
		{name: "ipv6 QinQ", q: query{v6: true, vlans: []uint16{0x88a8, 0x8100}}, ok: true, v: View{L3Off: 22, L4Off: 62, PayloadOff: 70, PayloadLen: len(q), End: 70 + len(q), IPv6: true}},
		{name: "ipv4 double 802.1Q", q: query{vlans: []uint16{0x8100, 0x8100}}, ok: true, v: View{L3Off: 22, L4Off: 42, PayloadOff: 50, PayloadLen: len(q), End: 50 + len(q)}},
		{name: "ipv4 padded", q: query{payload: make([]byte, 12), pad: 6}, ok: true, v: View{L3Off: 14, L4Off: 34, PayloadOff: 42, PayloadLen: 12, End: 54}},
		{name: "ipv6 padded", q: query{v6: true, pad: 20}, ok: true, v: View{L3Off: 14, L4Off: 54, PayloadOff: 62, PayloadLen: len(q), End: 62 + len(q), IPv6: true}},
		{name: "junk checksums", q: query{junkSums: true}, ok: true, v: View{L3Off: 14, L4Off: 34, PayloadOff: 42, PayloadLen: len(q), End: 42 + len(q)}},
		{name: "DF", q: query{flags: 0x4000}, ok: true, v: View{L3Off: 14, L4Off: 34, PayloadOff: 42, PayloadLen: len(q), End: 42 + len(q)}},
		{name: "ECN and DSCP", q: query{tos: 0xb9}, ok: true, v: View{L3Off: 14, L4Off: 34, PayloadOff: 42, PayloadLen: len(q), End: 42 + len(q)}},
		{name: "12-byte payload", q: query{payload: make([]byte, 12)}, ok: true, v: View{L3Off: 14, L4Off: 34, PayloadOff: 42, PayloadLen: 12, End: 54}},

		{name: "11-byte payload", q: query{payload: make([]byte, 11)}},
		{name: "ipv6 11-byte payload", q: query{v6: true, payload: make([]byte, 11)}},
		{name: "three tags", q: query{vlans: []uint16{0x88a8, 0x8100, 0x8100}}},
		{name: "IHL 6", q: query{}, edit: func(f []byte) []byte {
			// A real 4-byte option: the header grows and the lengths agree.
			g := append(append(append([]byte{}, f[:34]...), 1, 1, 1, 0), f[34:]...)
			g[14] = 0x46
			binary.BigEndian.PutUint16(g[16:], binary.BigEndian.Uint16(g[16:])+4)
			return g
		}},
		{name: "IHL 4", edit: func(f []byte) []byte { f[14] = 0x44; return f }},
		{name: "IHL 15", edit: func(f []byte) []byte { f[14] = 0x4f; return f }},
		{name: "version 6 in an IPv4 frame", edit: func(f []byte) []byte { f[14] = 0x65; return f }},
		{name: "version 4 in an IPv6 frame", q: query{v6: true}, edit: func(f []byte) []byte { f[14] = 0x40; return f }},
		{name: "more fragments", q: query{flags: 0x2000}},
		{name: "fragment offset", q: query{flags: 0x0001}},
		{name: "last fragment", q: query{flags: 0x00ff}},
		{name: "reserved flag", q: query{flags: 0x8000}},
		{name: "TCP", edit: func(f []byte) []byte { f[23] = 6; return f }},
		{name: "ipv6 hop-by-hop", q: query{v6: true}, edit: func(f []byte) []byte { f[20] = 0; return f }},
		{name: "ipv6 fragment header", q: query{v6: true}, edit: func(f []byte) []byte { f[20] = 44; return f }},
		{name: "IP length beyond frame", edit: func(f []byte) []byte { return f[:len(f)-1] }},
		{name: "ipv6 length beyond frame", q: query{v6: true}, edit: func(f []byte) []byte { return f[:len(f)-1] }},
		{name: "UDP length beyond IP", edit: func(f []byte) []byte { binary.BigEndian.PutUint16(f[38:], uint16(len(f)-34+1)); return f }},
		{name: "UDP length short of IP", edit: func(f []byte) []byte { binary.BigEndian.PutUint16(f[38:], uint16(len(f)-34-1)); return f }},
		{name: "UDP length beyond frame, padded", q: query{pad: 8}, edit: func(f []byte) []byte {
			binary.BigEndian.PutUint16(f[38:], binary.BigEndian.Uint16(f[38:])+8)
			return f
		}},
		{name: "ipv6 UDP length short", q: query{v6: true}, edit: func(f []byte) []byte { binary.BigEndian.PutUint16(f[58:], 20); return f }},
		{name: "IP total below headers", edit: func(f []byte) []byte { binary.BigEndian.PutUint16(f[16:], 27); return f }},
		{name: "source port 0", q: query{sport: 0xffff}, edit: func(f []byte) []byte { f[34], f[35] = 0, 0; return f }},
		{name: "destination port 0", edit: func(f []byte) []byte { f[36], f[37] = 0, 0; return f }},
		{name: "broadcast MAC", edit: func(f []byte) []byte { copy(f, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}); return f }},
		{name: "multicast source MAC", edit: func(f []byte) []byte { f[6] |= 1; return f }},
		{name: "multicast destination", q: query{dst: netip.MustParseAddr("224.0.0.251"), src: client4}},
		{name: "broadcast destination", q: query{dst: netip.MustParseAddr("255.255.255.255"), src: client4}},
		{name: "unspecified source", q: query{src: netip.MustParseAddr("0.0.0.0"), dst: server4}},
		{name: "loopback source", q: query{src: netip.MustParseAddr("127.0.0.1"), dst: server4}},
		{name: "ipv6 multicast destination", q: query{v6: true, src: client6, dst: netip.MustParseAddr("ff02::fb")}},
		{name: "ipv6 unspecified source", q: query{v6: true, src: netip.MustParseAddr("::"), dst: server6}},
		{name: "ipv6 loopback destination", q: query{v6: true, src: client6, dst: netip.MustParseAddr("::1")}},
		{name: "ipv4-mapped source", q: query{v6: true, src: netip.MustParseAddr("::ffff:169.254.7.1"), dst: server6}},
		{name: "ARP", edit: func(f []byte) []byte { f[12], f[13] = 0x08, 0x06; return f }},
		{name: "empty", edit: func(f []byte) []byte { return nil }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := tt.q.build(t)
			if tt.edit != nil {
				f = tt.edit(f)
			}
			v, ok := Parse(f)
			if ok != tt.ok {
				t.Fatalf("Parse = %+v, %v; want ok %v", v, ok, tt.ok)
			}
			if !ok {
				return
			}
			if v != tt.v {
				t.Errorf("View %+v, want %+v", v, tt.v)
			}
			if got := v.Payload(f); !bytes.Equal(got, f[tt.v.PayloadOff:tt.v.End]) {
				t.Errorf("Payload % x", got)
			}
			src, dst := tt.q.src, tt.q.dst
			if !src.IsValid() {
				src, dst = client4, server4
				if tt.q.v6 {
					src, dst = client6, server6
				}
			}
			if got, want := v.Client(f), netip.AddrPortFrom(src, 40000); got != want && tt.q.sport == 0 {
				t.Errorf("Client %v, want %v", got, want)
			}
			if got, want := v.Server(f), netip.AddrPortFrom(dst, 53); got != want {
				t.Errorf("Server %v, want %v", got, want)
			}
			// Any cut that loses part of the IP packet must fail; cuts
			// inside the padding must still parse the same.
			for i := range len(f) {
				w, ok := Parse(f[:i])
				if want := i >= v.End; ok != want || ok && w != v {
					t.Fatalf("Parse(frame[:%d]) = %+v, %v; want ok %v", i, w, ok, want)
				}
			}
		})
	}
}

func TestReply(t *testing.T) {
	tests := []struct {
		name string
		q    query
	}{
		{"ipv4", query{}},
		{"ipv6", query{v6: true}},
		{"ipv4 802.1Q", query{vlans: []uint16{0x8100}}},
		{"ipv6 QinQ", query{v6: true, vlans: []uint16{0x88a8, 0x8100}}},
		{"ipv4 padded", query{payload: make([]byte, 12), pad: 6}},
		{"ipv6 padded", query{v6: true, pad: 20}},
		{"ipv4 junk checksums", query{junkSums: true}},
		{"ipv6 junk checksums", query{v6: true, junkSums: true}},
		{"ipv4 ECN", query{tos: 0xbb}},
		{"ipv6 ECN", query{v6: true, tos: 0xbb}},
		{"ipv4 high port", query{sport: 65535, dport: 65534}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := tt.q.build(t)
			v, ok := Parse(in)
			if !ok {
				t.Fatal("query does not parse")
			}
			m := new(dns.Msg)
			if err := m.Unpack(v.Payload(in)); err != nil && tt.q.payload == nil {
				t.Fatal(err)
			}
			r := new(dns.Msg).SetReply(m)
			r.Answer = append(r.Answer, &dns.A{Hdr: dns.RR_Header{Name: "example.com.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 300}, A: net.IPv4(192, 0, 2, 1)})
			for _, size := range []struct {
				name   string
				answer []byte
			}{
				{"longer", mustPack(t, r)},
				{"same", v.Payload(in)},
				{"shorter", v.Payload(in)[:12]},
				{"odd", append(mustPack(t, r), 0x77)},
			} {
				t.Run(size.name, func(t *testing.T) {
					answer := append([]byte{}, size.answer...)
					buf := make([]byte, 2048)
					copy(buf, in)
					copy(buf[v.PayloadOff:], answer)
					n := Reply(buf, v, len(answer))
					if n != v.PayloadOff+len(answer) {
						t.Fatalf("Reply = %d, want %d", n, v.PayloadOff+len(answer))
					}
					checkReply(t, in, buf[:n], answer)
					if size.name == "longer" {
						got := new(dns.Msg)
						if err := got.Unpack(buf[v.PayloadOff:n]); err != nil || len(got.Answer) != 1 {
							t.Errorf("reply payload: %v, %v", got, err)
						}
					}

					// The saved header builds the same frame elsewhere.
					h := SaveHeader(in, v)
					if h.Client() != v.Client(in) {
						t.Errorf("Header.Client %v, want %v", h.Client(), v.Client(in))
					}
					in[v.PayloadOff] ^= 0xff // the query frame is gone
					other := bytes.Repeat([]byte{0x5a}, 4096)
					if m := BuildReply(other, &h, answer); m != n || !bytes.Equal(other[:m], buf[:n]) {
						t.Errorf("BuildReply = %d bytes % x\nReply = %d bytes % x", m, other[:m], n, buf[:n])
					}
					in[v.PayloadOff] ^= 0xff
				})
			}
		})
	}
}

func mustPack(t testing.TB, m *dns.Msg) []byte {
	t.Helper()
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestRoom checks the boundaries: an answer of exactly Room bytes fits the
// buffer, one more is refused, and nothing is written past the buffer.
func TestRoom(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		t.Run(fmt.Sprint("v6=", v6), func(t *testing.T) {
			in := query{v6: v6, pad: 4}.build(t)
			v, _ := Parse(in)
			for _, size := range []int{v.End, v.End + 1, 512, 1500} {
				backing := make([]byte, size+16)
				for i := range backing {
					backing[i] = 0xee
				}
				buf := backing[:size:size]
				copy(buf, in)
				room := v.Room(buf)
				if room != size-v.PayloadOff {
					t.Fatalf("Room(%d-byte buffer) = %d, want %d", size, room, size-v.PayloadOff)
				}
				if n := Reply(buf, v, room+1); n != 0 {
					t.Errorf("Reply with room+1 = %d, want 0", n)
				}
				if n := Reply(buf, v, -1); n != 0 {
					t.Errorf("Reply with -1 = %d, want 0", n)
				}
				h := SaveHeader(in, v)
				if n := BuildReply(make([]byte, size), &h, make([]byte, room+1)); n != 0 {
					t.Errorf("BuildReply with room+1 = %d, want 0", n)
				}
				if n := Reply(buf, v, room); n != size {
					t.Errorf("Reply with room = %d, want %d", n, size)
				}
				checkReply(t, in, buf, buf[v.PayloadOff:])
				for i, b := range backing[size:] {
					if b != 0xee {
						t.Fatalf("byte %d past the buffer written", size+i)
					}
				}
			}
			// The IP length fields bound the room of a huge buffer.
			want := 65535 - 28
			if v6 {
				want = 65535 - 8
			}
			if got := v.Room(make([]byte, 1<<17)); got != want {
				t.Errorf("Room(128 KiB) = %d, want %d", got, want)
			}
			if got := v.Room(in[:v.PayloadOff-1]); got != 0 {
				t.Errorf("Room(short buffer) = %d, want 0", got)
			}
		})
	}
}

func TestChecksum(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	buf := make([]byte, 2100)
	for i := range buf {
		buf[i] = byte(r.Uint32())
	}
	ones := bytes.Repeat([]byte{0xff}, 2100)
	for _, data := range [][]byte{buf, ones, make([]byte, 2100)} {
		for n := range 300 {
			if got, want := fold(sumLE(data[:n], 0)), refSum(data[:n]); got != want {
				t.Fatalf("sum of %d bytes: %#04x, want %#04x", n, got, want)
			}
		}
		for _, n := range []int{511, 512, 1499, 1500, 2047, 2100} {
			if got, want := fold(sumLE(data[:n], 0)), refSum(data[:n]); got != want {
				t.Fatalf("sum of %d bytes: %#04x, want %#04x", n, got, want)
			}
		}
	}
	// Sums chain: the sum of two even-length pieces is the sum of both.
	for n := 0; n < 200; n += 2 {
		if got, want := fold(sumLE(buf[n:1000], sumLE(buf[:n], 0))), refSum(buf[:1000]); got != want {
			t.Fatalf("chained at %d: %#04x, want %#04x", n, got, want)
		}
	}
	// A saturated accumulator still folds right.
	if got, want := fold(sumLE(ones[:8], ^uint64(0))), refSum(ones[:8]); got != want {
		t.Errorf("saturated: %#04x, want %#04x", got, want)
	}
}

func TestFrameAllocs(t *testing.T) {
	in := query{v6: true, vlans: []uint16{0x8100}}.build(t)
	buf := make([]byte, 4096)
	out := make([]byte, 4096)
	var h Header
	allocs := testing.AllocsPerRun(100, func() {
		copy(buf, in)
		v, ok := Parse(buf[:len(in)])
		if !ok {
			t.Fatal("no parse")
		}
		_ = v.Client(buf)
		h = SaveHeader(buf, v)
		Reply(buf, v, v.PayloadLen)
		BuildReply(out, &h, buf[v.PayloadOff:v.End])
	})
	if allocs != 0 {
		t.Errorf("%v allocations per parse+reply", allocs)
	}
}

func BenchmarkChecksum(b *testing.B) {
	for _, n := range []int{64, 512, 1500} {
		data := make([]byte, n)
		for i := range data {
			data[i] = byte(i * 7)
		}
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(n))
			var s uint16
			for b.Loop() {
				s += fold(sumLE(data, 0))
			}
			_ = s
		})
	}
}

// BenchmarkParseReply is the per-packet frame work of a cache hit: parse
// the query, answer in place (a 100-byte answer), checksums included.
func BenchmarkParseReply(b *testing.B) {
	for _, v6 := range []bool{false, true} {
		in := query{v6: v6}.build(b)
		buf := make([]byte, 4096)
		b.Run(fmt.Sprint("v6=", v6), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				copy(buf, in)
				v, ok := Parse(buf[:len(in)])
				if !ok {
					b.Fatal("no parse")
				}
				Reply(buf, v, 100)
			}
		})
	}
}
