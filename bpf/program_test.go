package bpf

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

var (
	ap  = netip.MustParseAddrPort
	pfx = netip.MustParsePrefix
)

// testListeners is the program's configuration in the table tests.
var testListeners = []Listener{
	{ID: 1, Addr: ap("0.0.0.0:53")},          // IPv4 wildcard
	{ID: 2, Addr: ap("192.0.2.53:5353")},     // IPv4 exact, no wildcard on 5353
	{ID: 3, Addr: ap("[::]:53")},             // IPv6 wildcard
	{ID: 4, Addr: ap("[2001:db8::53]:5353")}, // IPv6 exact
	{ID: 5, Addr: ap("198.51.100.1:53"), Allow: []netip.Prefix{pfx("10.0.0.0/8"), pfx("192.0.2.128/25")}, ACLDrop: true},
	{ID: 5, Addr: ap("198.51.100.2:53"), Allow: []netip.Prefix{pfx("192.0.2.128/25"), pfx("10.0.0.0/8")}, ACLDrop: true},
	{ID: 6, Addr: ap("[2001:db8::6]:53"), Allow: []netip.Prefix{pfx("2001:db8:a::/48"), pfx("2001:db8:c::1/128")}, ACLDrop: true},
	{ID: 7, Addr: ap("198.51.100.7:53"), Allow: []netip.Prefix{pfx("10.0.0.0/8")}}, // ACL off
	{ID: 8, Addr: ap("[::]:853")}, // IPv6 only
	{ID: 9, Addr: ap("198.51.100.9:53"), Allow: []netip.Prefix{pfx("172.16.0.0/12")}, ACLDrop: true}, // other ID's ACL
	{ID: 10, Addr: ap("198.51.100.10:53"), ACLDrop: true},                                            // empty allow: everyone
}

// TestProgram runs crafted frames through the program (BPF_PROG_RUN, no
// interface) and checks the verdict and the counter. The xsks map is empty,
// so a steered packet comes back XDP_PASS as pass_no_socket; TestRedirect
// covers a queue with a socket.
func TestProgram(t *testing.T) {
	p := load(t, Options{})
	if err := p.SetListeners(testListeners); err != nil {
		t.Fatal(err)
	}
	q := query(t)
	c4, c6 := ap("192.0.2.1:40000"), ap("[2001:db8:1::1]:40000")
	v4 := func(dst string) pkt { return pkt{src: c4, dst: ap(dst), payload: q} }
	v6 := func(dst string) pkt { return pkt{src: c6, dst: ap(dst), payload: q} }
	with := func(p pkt, f func(*pkt)) pkt { f(&p); return p }
	from := func(p pkt, src string) pkt { p.src = ap(src); return p }

	tests := []struct {
		name string
		pkt  pkt
		want Reason
	}{
		{"ipv4 to the wildcard", v4("203.0.113.1:53"), ReasonPassNoSocket},
		{"ipv6 to the wildcard", v6("[2001:db8:ff::1]:53"), ReasonPassNoSocket},
		{"ipv4 in 802.1Q", with(v4("203.0.113.1:53"), func(p *pkt) { p.tags = []uint16{0x8100} }), ReasonPassNoSocket},
		{"ipv6 in 802.1Q", with(v6("[2001:db8:ff::1]:53"), func(p *pkt) { p.tags = []uint16{0x8100} }), ReasonPassNoSocket},
		{"ipv4 in QinQ", with(v4("203.0.113.1:53"), func(p *pkt) { p.tags = []uint16{0x88a8, 0x8100} }), ReasonPassNoSocket},
		{"ipv6 in QinQ", with(v6("[2001:db8:ff::1]:53"), func(p *pkt) { p.tags = []uint16{0x88a8, 0x8100} }), ReasonPassNoSocket},
		{"ipv4 in two 802.1Q tags", with(v4("203.0.113.1:53"), func(p *pkt) { p.tags = []uint16{0x8100, 0x8100} }), ReasonPassNoSocket},
		{"three VLAN tags", with(v4("203.0.113.1:53"), func(p *pkt) { p.tags = []uint16{0x88a8, 0x8100, 0x8100} }), ReasonPassNotIP},

		{"ipv4 exact", v4("192.0.2.53:5353"), ReasonPassNoSocket},
		{"ipv4 other address, exact listener's port", v4("192.0.2.54:5353"), ReasonPassNotListener},
		{"ipv4 other port", v4("192.0.2.53:54"), ReasonPassNotListener},
		{"ipv4 upstream answer to an ephemeral port", with(v4("192.0.2.53:40000"), func(p *pkt) { p.src = ap("9.9.9.9:53") }), ReasonPassNotListener},
		{"ipv6 exact", v6("[2001:db8::53]:5353"), ReasonPassNoSocket},
		{"ipv6 other address, exact listener's port", v6("[2001:db8::54]:5353"), ReasonPassNotListener},
		{"ipv6 other port", v6("[2001:db8::53]:54"), ReasonPassNotListener},
		{"ipv4 to a port only IPv6 listens on", v4("203.0.113.1:853"), ReasonPassNotListener},
		{"ipv6 to the IPv6 wildcard", v6("[2001:db8::1]:853"), ReasonPassNoSocket},
		{"exact wins over the wildcard", from(v4("198.51.100.1:53"), "172.16.0.1:1"), ReasonDropACL},

		{"ipv4 TCP to 53", with(v4("203.0.113.1:53"), func(p *pkt) { p.proto = 6 }), ReasonPassNotUDP},
		{"ipv4 ICMP", with(v4("203.0.113.1:53"), func(p *pkt) { p.proto = 1 }), ReasonPassNotUDP},
		{"ipv6 TCP to 53", with(v6("[2001:db8::53]:53"), func(p *pkt) { p.proto = 6 }), ReasonPassNotUDP},
		{"ipv6 ICMPv6", with(v6("[2001:db8::53]:53"), func(p *pkt) { p.proto = 58 }), ReasonPassNotUDP},
		{"ARP", with(v4("203.0.113.1:53"), func(p *pkt) { p.etype = 0x0806 }), ReasonPassNotIP},
		{"ARP in 802.1Q", with(v4("203.0.113.1:53"), func(p *pkt) { p.etype = 0x0806; p.tags = []uint16{0x8100} }), ReasonPassNotIP},
		{"IPv4 EtherType, version 6", with(v4("203.0.113.1:53"), func(p *pkt) { p.version = 6 }), ReasonPassNotIP},
		{"IPv6 EtherType, version 4", with(v6("[2001:db8::53]:53"), func(p *pkt) { p.version = 4 }), ReasonPassNotIP},

		{"ipv4 first fragment (MF)", with(v4("203.0.113.1:53"), func(p *pkt) { p.frag = 0x2000 }), ReasonPassFragment},
		{"ipv4 last fragment (offset)", with(v4("203.0.113.1:53"), func(p *pkt) { p.frag = 0x0010 }), ReasonPassFragment},
		{"ipv4 DF is fine", with(v4("203.0.113.1:53"), func(p *pkt) { p.frag = 0x4000 }), ReasonPassNoSocket},
		{"ipv4 options", with(v4("203.0.113.1:53"), func(p *pkt) { p.opts = 4 }), ReasonPassIPOptions},
		{"ipv4 IHL 4", with(v4("203.0.113.1:53"), func(p *pkt) { p.opts = -4 }), ReasonPassBadLength},
		{"ipv4 bad header checksum", with(v4("203.0.113.1:53"), func(p *pkt) { p.badSum = true }), ReasonPassBadChecksum},
		{"ipv6 hop-by-hop", with(v6("[2001:db8::53]:53"), func(p *pkt) { p.ext = u8(0) }), ReasonPassIPv6Ext},
		{"ipv6 fragment header", with(v6("[2001:db8::53]:53"), func(p *pkt) { p.ext = u8(44) }), ReasonPassIPv6Ext},
		{"ipv6 destination options", with(v6("[2001:db8::53]:53"), func(p *pkt) { p.ext = u8(60) }), ReasonPassIPv6Ext},
		{"ipv6 routing header", with(v6("[2001:db8::53]:53"), func(p *pkt) { p.ext = u8(43) }), ReasonPassIPv6Ext},

		{"ipv4 length past the frame", with(v4("203.0.113.1:53"), func(p *pkt) { p.ipLen = u16(20 + 8 + uint16(len(q)) + 1) }), ReasonPassBadLength},
		{"ipv4 length under the header", with(v4("203.0.113.1:53"), func(p *pkt) { p.ipLen = u16(19) }), ReasonPassBadLength},
		{"ipv4 length leaves no UDP header", with(v4("203.0.113.1:53"), func(p *pkt) { p.ipLen = u16(27) }), ReasonPassBadLength},
		{"ipv6 length past the frame", with(v6("[2001:db8::53]:53"), func(p *pkt) { p.ipLen = u16(8 + uint16(len(q)) + 1) }), ReasonPassBadLength},
		{"ipv6 length 0 (jumbogram)", with(v6("[2001:db8::53]:53"), func(p *pkt) { p.ipLen = u16(0) }), ReasonPassBadLength},
		{"ipv6 length leaves no UDP header", with(v6("[2001:db8::53]:53"), func(p *pkt) { p.ipLen = u16(7) }), ReasonPassBadLength},
		{"ipv4 UDP length past the IP payload", with(v4("203.0.113.1:53"), func(p *pkt) { p.udpLen = u16(8 + uint16(len(q)) + 1) }), ReasonPassBadLength},
		{"ipv4 UDP length short of the IP payload", with(v4("203.0.113.1:53"), func(p *pkt) { p.udpLen = u16(8 + uint16(len(q)) - 1) }), ReasonPassBadLength},
		{"ipv4 UDP length 7", with(v4("203.0.113.1:53"), func(p *pkt) { p.udpLen = u16(7) }), ReasonPassBadLength},
		{"ipv4 UDP length 0", with(v4("203.0.113.1:53"), func(p *pkt) { p.udpLen = u16(0) }), ReasonPassBadLength},
		{"ipv6 UDP length past the IP payload", with(v6("[2001:db8::53]:53"), func(p *pkt) { p.udpLen = u16(8 + uint16(len(q)) + 1) }), ReasonPassBadLength},
		{"ipv6 UDP length 7", with(v6("[2001:db8::53]:53"), func(p *pkt) { p.udpLen = u16(7) }), ReasonPassBadLength},
		{"ipv4 DNS payload of 11 bytes", with(v4("203.0.113.1:53"), func(p *pkt) { p.payload = q[:11] }), ReasonPassShortDNS},
		{"ipv4 DNS payload of 12 bytes", with(v4("203.0.113.1:53"), func(p *pkt) { p.payload = q[:12] }), ReasonPassNoSocket},
		{"ipv4 empty UDP", with(v4("203.0.113.1:53"), func(p *pkt) { p.payload = nil }), ReasonPassShortDNS},
		{"ipv6 DNS payload of 11 bytes", with(v6("[2001:db8::53]:53"), func(p *pkt) { p.payload = q[:11] }), ReasonPassShortDNS},
		{"ipv6 DNS payload of 12 bytes", with(v6("[2001:db8::53]:53"), func(p *pkt) { p.payload = q[:12] }), ReasonPassNoSocket},
		{"ipv4 Ethernet padding to 60 bytes", with(v4("203.0.113.1:53"), func(p *pkt) { p.payload = q[:12]; p.pad = 6 }), ReasonPassNoSocket},
		{"ipv4 padding after a query", with(v4("203.0.113.1:53"), func(p *pkt) { p.pad = 100 }), ReasonPassNoSocket},
		{"ipv6 padding after a query", with(v6("[2001:db8::53]:53"), func(p *pkt) { p.pad = 100 }), ReasonPassNoSocket},
		{"ipv4 short DNS with padding is still short", with(v4("203.0.113.1:53"), func(p *pkt) { p.payload = q[:4]; p.pad = 20 }), ReasonPassShortDNS},

		{"acl4 allowed /8", from(v4("198.51.100.1:53"), "10.1.2.3:1"), ReasonPassNoSocket},
		{"acl4 allowed /25", from(v4("198.51.100.1:53"), "192.0.2.200:1"), ReasonPassNoSocket},
		{"acl4 outside the /25", from(v4("198.51.100.1:53"), "192.0.2.127:1"), ReasonDropACL},
		{"acl4 same id, other address", from(v4("198.51.100.2:53"), "10.9.9.9:1"), ReasonPassNoSocket},
		{"acl4 same id, other address, denied", from(v4("198.51.100.2:53"), "11.0.0.1:1"), ReasonDropACL},
		{"acl4 allowed for another id only", from(v4("198.51.100.9:53"), "10.1.2.3:1"), ReasonDropACL},
		{"acl4 allowed for its id", from(v4("198.51.100.9:53"), "172.31.0.1:1"), ReasonPassNoSocket},
		{"acl4 off", from(v4("198.51.100.7:53"), "172.16.0.1:1"), ReasonPassNoSocket},
		{"acl4 drop with an empty allow list", from(v4("198.51.100.10:53"), "172.16.0.1:1"), ReasonPassNoSocket},
		{"acl6 allowed /48", from(v6("[2001:db8::6]:53"), "[2001:db8:a:ffff::1]:1"), ReasonPassNoSocket},
		{"acl6 allowed /128", from(v6("[2001:db8::6]:53"), "[2001:db8:c::1]:1"), ReasonPassNoSocket},
		{"acl6 next to the /128", from(v6("[2001:db8::6]:53"), "[2001:db8:c::2]:1"), ReasonDropACL},
		{"acl6 denied", from(v6("[2001:db8::6]:53"), "[2001:db8:b::1]:1"), ReasonDropACL},
		{"acl6 denied in QinQ", with(from(v6("[2001:db8::6]:53"), "[2001:db8:b::1]:1"), func(p *pkt) { p.tags = []uint16{0x88a8, 0x8100} }), ReasonDropACL},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			verdict, got := run(t, p, tt.pkt.bytes())
			if got != tt.want || verdict != tt.want.verdict() {
				t.Errorf("got %s (verdict %d), want %s (verdict %d)", got, verdict, tt.want, tt.want.verdict())
			}
		})
	}
}

// TestTruncated cuts valid queries at every length from the Ethernet header
// (BPF_PROG_RUN refuses less) to one byte short: each cut is pass_bad_length,
// whichever header or length it lands in.
func TestTruncated(t *testing.T) {
	p := load(t, Options{})
	if err := p.SetListeners(testListeners); err != nil {
		t.Fatal(err)
	}
	q := query(t)
	frames := map[string]pkt{
		"ipv4":        {src: ap("192.0.2.1:1"), dst: ap("203.0.113.1:53"), payload: q},
		"ipv6":        {src: ap("[2001:db8::1]:1"), dst: ap("[2001:db8::53]:53"), payload: q},
		"ipv4 802.1Q": {tags: []uint16{0x8100}, src: ap("192.0.2.1:1"), dst: ap("203.0.113.1:53"), payload: q},
		"ipv6 QinQ":   {tags: []uint16{0x88a8, 0x8100}, src: ap("[2001:db8::1]:1"), dst: ap("[2001:db8::53]:53"), payload: q},
	}
	for name, pk := range frames {
		full := len(pk.bytes())
		for cut := 14; cut < full; cut++ {
			pk.cut = cut
			t.Run(fmt.Sprintf("%s/%d of %d", name, cut, full), func(t *testing.T) {
				verdict, got := run(t, p, pk.bytes())
				if got != ReasonPassBadLength || verdict != xdpPass {
					t.Errorf("got %s (verdict %d), want pass_bad_length", got, verdict)
				}
			})
		}
	}
}

// TestRedirect puts an AF_XDP socket into the xsks map. The socket is not
// bound (that needs an interface): BPF_PROG_RUN only runs the program, it
// does not deliver the frame, and bpf_redirect_map only needs the entry.
func TestRedirect(t *testing.T) {
	p := load(t, Options{Queues: 4})
	if err := p.SetListeners(testListeners); err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Socket(unix.AF_XDP, unix.SOCK_RAW, 0)
	if err != nil {
		t.Skipf("skipping: no AF_XDP socket: %v", err)
	}
	defer unix.Close(fd)
	frame := pkt{src: ap("192.0.2.1:1"), dst: ap("203.0.113.1:53"), payload: query(t)}.bytes()

	// BPF_PROG_RUN runs on rx queue 0 (of the loopback device), on the
	// calling thread's CPU: pinned, so queue_cpus can be checked.
	cpu := lastCPU(t)
	if err := p.SetSocket(0, fd); err != nil {
		t.Fatal(err)
	}
	if verdict, got := run(t, p, frame); got != ReasonRedirect || verdict != xdpRedirect {
		t.Errorf("with a socket: got %s (verdict %d), want redirect", got, verdict)
	}
	other := pkt{src: ap("192.0.2.1:1"), dst: ap("203.0.113.1:54"), payload: query(t)}.bytes()
	if _, got := run(t, p, other); got != ReasonPassNotListener {
		t.Errorf("other port with a socket: got %s, want pass_not_listener", got)
	}
	if err := p.DeleteSocket(0); err != nil {
		t.Fatal(err)
	}
	if err := p.DeleteSocket(0); err != nil {
		t.Errorf("deleting twice: %v", err)
	}
	if verdict, got := run(t, p, frame); got != ReasonPassNoSocket || verdict != xdpPass {
		t.Errorf("socket deleted: got %s (verdict %d), want pass_no_socket", got, verdict)
	}
	// Only the redirect counted, on queue 0, by this CPU.
	ncpu, err := ebpf.PossibleCPU()
	if err != nil {
		t.Fatal(err)
	}
	for q := range 4 {
		per := make([]uint64, ncpu)
		if err := p.QueueCPUs(q, per); err != nil {
			t.Fatal(err)
		}
		for c, n := range per {
			want := uint64(0)
			if q == 0 && c == cpu {
				want = 1
			}
			if n != want {
				t.Errorf("queue_cpus[%d] on CPU %d = %d, want %d", q, c, n, want)
			}
		}
	}
	if err := p.QueueCPUs(4, make([]uint64, ncpu)); err == nil {
		t.Error("QueueCPUs(4) on 4 queues: no error")
	}
	if err := p.SetSocket(4, fd); err == nil {
		t.Error("SetSocket(4) on 4 queues: no error")
	}
	if err := p.SetSocket(1, 1); err == nil { // stdout is no AF_XDP socket
		t.Error("SetSocket with a non-AF_XDP fd: no error")
	}
}

// TestSetListenersReplaces checks that SetListeners leaves exactly the new
// entries in the maps, and that the program follows.
func TestSetListenersReplaces(t *testing.T) {
	p := load(t, Options{})
	if err := p.SetListeners(testListeners); err != nil {
		t.Fatal(err)
	}
	next := []Listener{
		{ID: 20, Addr: ap("198.51.100.1:53"), Allow: []netip.Prefix{pfx("10.0.0.0/8")}, ACLDrop: true},
		{ID: 21, Addr: ap("[::]:53"), Allow: []netip.Prefix{pfx("fd00::/8")}, ACLDrop: false},
	}
	if err := p.SetListeners(next); err != nil {
		t.Fatal(err)
	}
	want, err := compile(next)
	if err != nil {
		t.Fatal(err)
	}
	checkKeys(t, "listeners", p.objs.Listeners, want.listeners)
	checkKeys(t, "acl4", p.objs.Acl4, want.acl4)
	checkKeys(t, "acl6", p.objs.Acl6, want.acl6)

	q := query(t)
	for _, tt := range []struct {
		pkt  pkt
		want Reason
	}{
		{pkt{src: ap("10.0.0.1:1"), dst: ap("198.51.100.1:53"), payload: q}, ReasonPassNoSocket},
		{pkt{src: ap("192.0.2.200:1"), dst: ap("198.51.100.1:53"), payload: q}, ReasonDropACL}, // allowed under ID 5 before
		{pkt{src: ap("10.0.0.1:1"), dst: ap("203.0.113.1:53"), payload: q}, ReasonPassNotListener},
		{pkt{src: ap("[2001:db8::1]:1"), dst: ap("[2001:db8::53]:53"), payload: q}, ReasonPassNoSocket},
	} {
		if _, got := run(t, p, tt.pkt.bytes()); got != tt.want {
			t.Errorf("%s → %s: got %s, want %s", tt.pkt.src, tt.pkt.dst, got, tt.want)
		}
	}

	if err := p.SetListeners(nil); err != nil {
		t.Fatal(err)
	}
	checkKeys(t, "listeners", p.objs.Listeners, map[xdpListenerKey]xdpListenerValue{})
	checkKeys(t, "acl4", p.objs.Acl4, map[xdpAcl4Key]struct{}{})
	checkKeys(t, "acl6", p.objs.Acl6, map[xdpAcl6Key]struct{}{})
}

// checkKeys checks that m holds exactly the keys of want, with want's values
// where V is the map's value type.
func checkKeys[K comparable, V any](t *testing.T, name string, m *ebpf.Map, want map[K]V) {
	t.Helper()
	have, err := keys[K](m)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	if len(have) != len(want) {
		t.Errorf("%s: %d entries, want %d", name, len(have), len(want))
	}
	for _, k := range have {
		w, ok := want[k]
		if !ok {
			t.Errorf("%s: stale key %+v", name, k)
			continue
		}
		if v, isValue := any(w).(xdpListenerValue); isValue {
			var got xdpListenerValue
			if err := m.Lookup(k, &got); err != nil || got != v {
				t.Errorf("%s[%+v] = %+v (%v), want %+v", name, k, got, err, v)
			}
		}
	}
}

// BenchmarkProgram reports the program's time per packet in the kernel
// (BPF_PROG_RUN with Repeat; the frame is not modified, so every repetition
// sees it whole).
func BenchmarkProgram(b *testing.B) {
	p := load(b, Options{})
	if err := p.SetListeners(testListeners); err != nil {
		b.Fatal(err)
	}
	q := query(b)
	for _, bb := range []struct {
		name string
		pkt  pkt
	}{
		{"ipv4 steered", pkt{src: ap("192.0.2.1:1"), dst: ap("203.0.113.1:53"), payload: q}},
		{"ipv6 QinQ steered", pkt{tags: []uint16{0x88a8, 0x8100}, src: ap("[2001:db8::1]:1"), dst: ap("[2001:db8::53]:53"), payload: q}},
		{"ipv4 acl allowed", pkt{src: ap("10.0.0.1:1"), dst: ap("198.51.100.1:53"), payload: q}},
		{"ipv6 acl dropped", pkt{src: ap("[2001:db8:b::1]:1"), dst: ap("[2001:db8::6]:53"), payload: q}},
		{"ipv4 not a listener", pkt{src: ap("9.9.9.9:53"), dst: ap("192.0.2.1:40000"), payload: q}},
		{"ipv4 TCP", pkt{src: ap("192.0.2.1:1"), dst: ap("203.0.113.1:53"), proto: 6, payload: q}},
	} {
		b.Run(bb.name, func(b *testing.B) {
			frame := bb.pkt.bytes()
			_, d, err := p.XDP().Benchmark(frame, b.N, nil)
			if err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(d.Nanoseconds()), "ns/op")
		})
	}
}
