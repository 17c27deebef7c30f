package bpf

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/bits"
	"math/rand/v2"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/miekg/dns"
	"golang.org/x/sys/unix"

	"xdoh/forwarder/cache"
	"xdoh/internal/dnsmsg"
)

// answerListeners is the program's configuration in the answer tests.
var answerListeners = []Listener{
	{ID: 1, Addr: ap("0.0.0.0:53"), Answers: true},
	{ID: 2, Addr: ap("[::]:53"), Answers: true},
	{ID: 3, Addr: ap("0.0.0.0:5353")}, // no answer tier
	{ID: 4, Addr: ap("[::]:5353")},    // no answer tier
	// An allow list without ACL drop: the others go to userspace (REFUSED).
	{ID: 5, Addr: ap("198.51.100.5:53"), Allow: []netip.Prefix{pfx("10.0.0.0/8"), pfx("2001:db8:a::/48")}, Answers: true},
	{ID: 5, Addr: ap("[2001:db8::5]:53"), Allow: []netip.Prefix{pfx("10.0.0.0/8"), pfx("2001:db8:a::/48")}, Answers: true},
	// An allow list with ACL drop.
	{ID: 7, Addr: ap("198.51.100.7:53"), Allow: []netip.Prefix{pfx("10.0.0.0/8")}, ACLDrop: true, Answers: true},
}

// Clients and servers of the answer tests' frames.
var (
	client4 = ap("192.0.2.1:40000")
	server4 = ap("203.0.113.1:53")
	client6 = ap("[2001:db8:1::1]:40000")
	server6 = ap("[2001:db8::53]:53")
)

// loadTier loads the program with the answer tier and answerListeners.
func loadTier(tb testing.TB, opts Options) *Program {
	tb.Helper()
	opts.Answers = true
	p := load(tb, opts)
	if err := p.SetListeners(answerListeners); err != nil {
		tb.Fatal(err)
	}
	return p
}

// monoNow is CLOCK_MONOTONIC in nanoseconds, bpf_ktime_get_ns's clock.
func monoNow(tb testing.TB) uint64 {
	tb.Helper()
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		tb.Fatal(err)
	}
	return uint64(ts.Nano())
}

// mustRR parses one record in zone-file form.
func mustRR(tb testing.TB, s string) dns.RR {
	tb.Helper()
	rr, err := dns.NewRR(s)
	if err != nil {
		tb.Fatalf("%q: %v", s, err)
	}
	return rr
}

// pack packs m, failing the test on error.
func pack(tb testing.TB, m *dns.Msg) []byte {
	tb.Helper()
	b, err := m.Pack()
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// parseQuery is dnsmsg.Parse, failing the test on error.
func parseQuery(tb testing.TB, msg []byte) dnsmsg.Query {
	tb.Helper()
	var q dnsmsg.Query
	if err := dnsmsg.Parse(msg, &q); err != nil {
		tb.Fatalf("dnsmsg.Parse: %v", err)
	}
	return q
}

// wireName is name (presentation form) in uncompressed wire form.
func wireName(tb testing.TB, name string) []byte {
	tb.Helper()
	b := make([]byte, 256)
	n, err := dns.PackDomainName(name, b, 0, nil, false)
	if err != nil {
		tb.Fatalf("%q: %v", name, err)
	}
	return b[:n]
}

// swapCase swaps the case of the ASCII letters of s.
func swapCase(s string) string {
	b := []byte(s)
	for i, c := range b {
		switch {
		case 'a' <= c && c <= 'z':
			b[i] = c - 'a' + 'A'
		case 'A' <= c && c <= 'Z':
			b[i] = c - 'A' + 'a'
		}
	}
	return string(b)
}

// padTo adds a TXT record owned by the question name to m's answers so that
// m packs to exactly size bytes.
func padTo(tb testing.TB, m *dns.Msg, size int) {
	tb.Helper()
	txt := &dns.TXT{Hdr: dns.RR_Header{Name: m.Question[0].Name, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 300}, Txt: []string{""}}
	m.Answer = append(m.Answer, txt)
	rdata := size - len(pack(tb, m)) + 1 // TXT RDATA bytes wanted (one empty string is 1)
	if rdata < 1 {
		tb.Fatalf("padTo(%d): the message is already %d bytes", size, size-rdata+1)
	}
	// k strings of at most 255 characters, each with its length octet.
	k := (rdata + 255) / 256
	n := rdata - k
	txt.Txt = nil
	for i := range k {
		l := n / k
		if i < n%k {
			l++
		}
		txt.Txt = append(txt.Txt, strings.Repeat("x", l))
	}
	if got := len(pack(tb, m)); got != size {
		tb.Fatalf("padTo(%d): packed %d bytes", size, got)
	}
}

// ones is the 16-bit one's complement sum of the concatenation of parts, an
// odd last byte padded with zero (RFC 1071), folded.
func ones(parts ...[]byte) uint16 {
	var b []byte
	for _, p := range parts {
		b = append(b, p...)
	}
	if len(b)%2 == 1 {
		b = append(b, 0)
	}
	var s uint64
	for i := 0; i < len(b); i += 2 {
		s += uint64(b[i])<<8 | uint64(b[i+1])
	}
	for s > 0xffff {
		s = s&0xffff + s>>16
	}
	return uint16(s)
}

// udpChecksumOK checks the UDP checksum of segment (header and payload)
// with the pseudo-header of src and dst (4 or 16 bytes each): a zero
// checksum is wrong for both families here (the program always sets one),
// and the sum over pseudo-header and segment is all ones.
func udpChecksumOK(src, dst, segment []byte) (bool, uint16) {
	ph := append(append([]byte{}, src...), dst...)
	if len(src) == 4 {
		ph = append(ph, 0, 17)
		ph = binary.BigEndian.AppendUint16(ph, uint16(len(segment)))
	} else {
		ph = binary.BigEndian.AppendUint32(ph, uint32(len(segment)))
		ph = append(ph, 0, 0, 0, 17)
	}
	s := ones(ph, segment)
	return binary.BigEndian.Uint16(segment[6:]) != 0 && s == 0xffff, s
}

// l3Offset is the offset of the IP header in a frame pkt.bytes built.
func l3Offset(p pkt) int { return 14 + 4*len(p.tags) }

// markFrame gives the frame's IP header a traffic class with ECN bits
// (DSCP EF, ECN CE), an IPv6 flow label and a TTL / hop limit other than 64,
// so the test sees what the program rewrites.
func markFrame(frame []byte, l3 int) {
	if frame[l3]>>4 == 4 {
		frame[l3+1] = 0xbb // DSCP 46, ECN 3
		frame[l3+8] = 17   // TTL
		frame[l3+10], frame[l3+11] = 0, 0
		binary.BigEndian.PutUint16(frame[l3+10:], ^csum(frame[l3:l3+20]))
		return
	}
	// version 6, traffic class 0xbb, flow label 0x12345
	frame[l3], frame[l3+1], frame[l3+2], frame[l3+3] = 0x6b, 0xb1, 0x23, 0x45
	frame[l3+7] = 17 // hop limit
}

// runResult is one BPF_PROG_RUN and what it changed in the counters.
type runResult struct {
	verdict uint32
	out     []byte         // the frame as the program left it
	reasons Counters       // increments
	events  AnswerCounters // increments
	hits    []uint64       // increments per slot
}

// snapshot reads all counters of p.
func snapshot(tb testing.TB, p *Program) (Counters, AnswerCounters, []uint64) {
	tb.Helper()
	c, err := p.Counters()
	if err != nil {
		tb.Fatal(err)
	}
	a, err := p.AnswerCounters()
	if err != nil {
		tb.Fatal(err)
	}
	h := make([]uint64, p.AnswerEntries())
	if err := p.AnswerHits(h); err != nil {
		tb.Fatal(err)
	}
	return c, a, h
}

// execFrame runs frame through the program once with room for it to grow,
// and returns the verdict, the frame that came out and the counter changes.
func execFrame(tb testing.TB, p *Program, frame []byte) runResult {
	tb.Helper()
	c0, a0, h0 := snapshot(tb, p)
	opts := ebpf.RunOptions{Data: frame, DataOut: make([]byte, len(frame)+2048)}
	verdict, err := p.XDP().Run(&opts)
	if err != nil {
		tb.Fatalf("running the program on %d bytes: %v", len(frame), err)
	}
	c1, a1, h1 := snapshot(tb, p)
	r := runResult{verdict: verdict, out: opts.DataOut, hits: make([]uint64, len(h1))}
	for i := range c1 {
		r.reasons[i] = c1[i] - c0[i]
	}
	for i := range a1 {
		r.events[i] = a1[i] - a0[i]
	}
	for i := range h1 {
		r.hits[i] = h1[i] - h0[i]
	}
	return r
}

// checkHit checks that r is exactly one XDP_TX answer counted under
// ReasonTX, AnswerHit and slot.
func checkHit(tb testing.TB, r runResult, slot uint32) {
	tb.Helper()
	if r.verdict != xdpTX {
		tb.Errorf("verdict %d, want XDP_TX (%d); answer events %v", r.verdict, xdpTX, r.events)
	}
	if want := (Counters{ReasonTX: 1}); r.reasons != want {
		tb.Errorf("reason counters went up by %v, want one %s", r.reasons, ReasonTX)
	}
	if want := (AnswerCounters{AnswerHit: 1}); r.events != want {
		tb.Errorf("answer counters went up by %v, want one %s", r.events, AnswerHit)
	}
	for i, n := range r.hits {
		want := uint64(0)
		if uint32(i) == slot {
			want = 1
		}
		if n != want {
			tb.Errorf("answer hits of slot %d went up by %d, want %d", i, n, want)
		}
	}
}

// checkReply checks that out is in's reply carrying dnsPayload: MACs, IP
// addresses and ports swapped, lengths, TTL 64, ECN cleared, checksums.
func checkReply(tb testing.TB, in, out []byte, l3 int, dnsPayload []byte) {
	tb.Helper()
	be := binary.BigEndian
	v4 := in[l3]>>4 == 4
	ipHdr := 40
	if v4 {
		ipHdr = 20
	}
	l4 := l3 + ipHdr
	if want := l4 + 8 + len(dnsPayload); len(out) != want {
		tb.Fatalf("reply frame of %d bytes, want %d", len(out), want)
	}
	if !bytes.Equal(out[0:6], in[6:12]) || !bytes.Equal(out[6:12], in[0:6]) {
		tb.Errorf("MACs dst %x src %x, want dst %x src %x", out[0:6], out[6:12], in[6:12], in[0:6])
	}
	if !bytes.Equal(out[12:l3], in[12:l3]) {
		tb.Errorf("EtherType and tags %x, want %x", out[12:l3], in[12:l3])
	}
	ip, qip := out[l3:l4], in[l3:l4]
	if v4 {
		if ip[0] != qip[0] || ip[1] != qip[1]&^3 {
			tb.Errorf("IPv4 version/IHL %#x TOS %#x, want %#x %#x", ip[0], ip[1], qip[0], qip[1]&^3)
		}
		if got, want := int(be.Uint16(ip[2:])), 20+8+len(dnsPayload); got != want {
			tb.Errorf("IPv4 total length %d, want %d", got, want)
		}
		if !bytes.Equal(ip[4:8], qip[4:8]) {
			tb.Errorf("IPv4 ID and fragment field %x, want %x", ip[4:8], qip[4:8])
		}
		if ip[8] != 64 || ip[9] != 17 {
			tb.Errorf("IPv4 TTL %d protocol %d, want 64 and 17", ip[8], ip[9])
		}
		if s := csum(ip); s != 0xffff {
			tb.Errorf("IPv4 header checksum %#04x is wrong (sum %#04x)", be.Uint16(ip[10:]), s)
		}
		if !bytes.Equal(ip[12:16], qip[16:20]) || !bytes.Equal(ip[16:20], qip[12:16]) {
			tb.Errorf("IPv4 src %v dst %v, want them swapped from %v %v", ip[12:16], ip[16:20], qip[12:16], qip[16:20])
		}
	} else {
		if ip[0] != qip[0] || ip[1] != qip[1]&^0x30 || ip[2] != qip[2] || ip[3] != qip[3] {
			tb.Errorf("IPv6 first word %x, want %x with ECN cleared", ip[0:4], qip[0:4])
		}
		if got, want := int(be.Uint16(ip[4:])), 8+len(dnsPayload); got != want {
			tb.Errorf("IPv6 payload length %d, want %d", got, want)
		}
		if ip[6] != 17 || ip[7] != 64 {
			tb.Errorf("IPv6 next header %d hop limit %d, want 17 and 64", ip[6], ip[7])
		}
		if !bytes.Equal(ip[8:24], qip[24:40]) || !bytes.Equal(ip[24:40], qip[8:24]) {
			tb.Errorf("IPv6 src %x dst %x, want them swapped", ip[8:24], ip[24:40])
		}
	}
	udp, qudp := out[l4:], in[l4:]
	if !bytes.Equal(udp[0:2], qudp[2:4]) || !bytes.Equal(udp[2:4], qudp[0:2]) {
		tb.Errorf("UDP ports %d→%d, want %d→%d", be.Uint16(udp), be.Uint16(udp[2:]), be.Uint16(qudp[2:]), be.Uint16(qudp))
	}
	if got, want := int(be.Uint16(udp[4:])), 8+len(dnsPayload); got != want {
		tb.Errorf("UDP length %d, want %d", got, want)
	}
	src, dst := ip[12:16], ip[16:20]
	if !v4 {
		src, dst = ip[8:24], ip[24:40]
	}
	if ok, s := udpChecksumOK(src, dst, udp); !ok {
		tb.Errorf("UDP checksum %#04x is wrong (sum %#04x)", be.Uint16(udp[6:]), s)
	}
	if got := udp[8:]; !bytes.Equal(got, dnsPayload) {
		tb.Errorf("DNS payload differs from the userspace cache's answer\n got %x\nwant %x", got, dnsPayload)
	}
}

// diffCase is one query of the differential test: the client's query and
// frame, and the upstream's response the cache holds.
type diffCase struct {
	name   string
	qname  string // the client's letter case
	qtype  uint16
	qclass uint16 // 0: IN
	noRD   bool
	cd     bool
	edns   uint16 // EDNS UDP size; 0: no OPT record
	do     bool
	tags   []uint16
	v6     bool
	pad    int // Ethernet padding after the query
	// resp fills in the upstream's response to req (lower-case question,
	// its own ID): rcode and records; runDiff adds the OPT record.
	resp func(tb testing.TB, req, m *dns.Msg)
	// size, if not 0, pads the response to this many bytes.
	size int
}

// answers returns a resp function adding the records rrs (zone-file form)
// to the answer section.
func answers(rrs ...string) func(testing.TB, *dns.Msg, *dns.Msg) {
	return func(tb testing.TB, _, m *dns.Msg) {
		for _, s := range rrs {
			m.Answer = append(m.Answer, mustRR(tb, s))
		}
	}
}

// diffFixture holds what runDiff needs across cases.
type diffFixture struct {
	p    *Program
	slot uint32
}

// runDiff runs one differential case: the cache's answer to the client's
// query, computed in userspace, must be exactly the payload of the frame
// the program sends back, and the frame must be a correct reply.
func (f *diffFixture) runDiff(t *testing.T, tc diffCase) {
	t.Helper()
	qclass := tc.qclass
	if qclass == 0 {
		qclass = dns.ClassINET
	}

	// The client's query.
	cq := new(dns.Msg)
	cq.SetQuestion(tc.qname, tc.qtype)
	cq.Question[0].Qclass = qclass
	cq.Id = uint16(rand.Uint32())
	cq.RecursionDesired = !tc.noRD
	cq.CheckingDisabled = tc.cd
	if tc.edns != 0 {
		cq.SetEdns0(tc.edns, tc.do)
	}
	qb := pack(t, cq)
	q := parseQuery(t, qb)

	// The upstream's response: lower-case question, another ID.
	req := cq.Copy()
	req.Id = cq.Id + 0x1111
	req.Question[0].Name = strings.ToLower(tc.qname)
	m := new(dns.Msg)
	m.SetReply(req)
	m.RecursionAvailable = true
	m.Compress = true
	tc.resp(t, req, m)
	if tc.edns != 0 {
		m.SetEdns0(1232, tc.do)
	}
	if tc.size != 0 {
		padTo(t, m, tc.size)
	}
	up := pack(t, m)
	qend, err := dnsmsg.CheckResponse(up, &q)
	if err != nil {
		t.Fatalf("CheckResponse: %v", err)
	}

	// The cache stores it at t0 and answers 7 seconds later, so that the
	// TTLs are aged, the same for both answers.
	now := time.Unix(1_700_000_000, 0)
	c := cache.New(cache.Config{Entries: 16, Now: func() time.Time { return now }})
	c.Put(&q, up, qend)
	now = now.Add(7 * time.Second)

	// What goes into the answers map: the cache's answer to a query with
	// another ID and the name in another letter case, not truncated.
	canon := cq.Copy()
	canon.Id = ^cq.Id
	canon.Question[0].Name = swapCase(tc.qname)
	cqp := parseQuery(t, pack(t, canon))
	stored, res := c.Get(&cqp, make([]byte, 65535), 65535)
	if res == cache.Miss {
		t.Fatal("the cache did not store the response")
	}
	stored = bytes.Clone(stored)

	// What userspace sends this client.
	want, res := c.Get(&q, make([]byte, 65535), q.MaxUDPSize())
	if res == cache.Miss {
		t.Fatal("cache miss for the client's query")
	}
	if len(want) != len(stored) || want[2]&0x02 != 0 {
		t.Fatalf("the cache truncated the answer for the client (%d of %d bytes): not a case the kernel answers", len(want), len(stored))
	}
	if binary.BigEndian.Uint16(want) != q.ID || binary.BigEndian.Uint16(stored) == q.ID {
		t.Fatalf("IDs: want %#x stored %#x client %#x", binary.BigEndian.Uint16(want), binary.BigEndian.Uint16(stored), q.ID)
	}
	if strings.ContainsAny(strings.ToLower(tc.qname), "abcdefghijklmnopqrstuvwxyz") &&
		bytes.Equal(stored[12:12+len(q.Name)], want[12:12+len(q.Name)]) {
		t.Fatal("the stored answer's question name has the client's case")
	}

	// The key from the cache's own key (dnsmsg.AppendKey): lower-cased
	// name, type, class, flags octet.
	ck := dnsmsg.AppendKey(nil, &cqp)
	key, ok := NewAnswerKey(cqp.Name, cqp.Type, cqp.Class, ck[len(ck)-1])
	if !ok {
		t.Fatalf("NewAnswerKey(%x) refused", cqp.Name)
	}
	if !bytes.Equal(key.Name[:key.NameLen], ck[:len(cqp.Name)]) {
		t.Fatalf("NewAnswerKey name %x, the cache's key %x", key.Name[:key.NameLen], ck[:len(cqp.Name)])
	}
	f.slot++
	val, err := NewAnswer(stored, len(cqp.Name), monoNow(t)+uint64(10*time.Second), f.slot)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.p.PutAnswers([]AnswerKey{key}, []Answer{val}); err != nil {
		t.Fatal(err)
	}

	pk := pkt{src: client4, dst: server4, payload: qb, tags: tc.tags, pad: tc.pad}
	if tc.v6 {
		pk.src, pk.dst = client6, server6
	}
	frame := pk.bytes()
	l3 := l3Offset(pk)
	markFrame(frame, l3)
	r := execFrame(t, f.p, frame)
	checkHit(t, r, f.slot)
	if r.verdict != xdpTX {
		return
	}
	checkReply(t, frame, r.out, l3, want)
}

// TestAnswerDifferential proves that a query answered in the kernel gets
// byte for byte the DNS message the userspace cache (cache.Get) would send
// that client, from an entry stored with another ID and question-name case,
// in a correct reply frame (addresses and ports swapped, lengths, TTL 64,
// ECN cleared, IPv4 header and UDP checksums), counted once as tx, as a hit
// and in the entry's slot.
func TestAnswerDifferential(t *testing.T) {
	p := loadTier(t, Options{})
	f := &diffFixture{p: p}
	long := strings.Repeat("aBcD", 16)[:63] + "." + strings.Repeat("EfGh", 16)[:62] + "." // 128 wire bytes
	const rrsig = "example.com. 300 IN RRSIG A 13 2 300 20300101000000 20200101000000 12345 example.com. " +
		"oJB1W6WNGv+ldvQ3WDG0MQkg5IEhjRip8WTrPYGv07h108dUKGMeDPKijVCHX3DDKdfb+v6oB9wfuh3DTJXUAfI="
	soa := func(zone string) string {
		return zone + " 3600 IN SOA ns1." + zone + " hostmaster." + zone + " 2024010101 7200 3600 1209600 300"
	}
	nx := func(zone string) func(testing.TB, *dns.Msg, *dns.Msg) {
		return func(tb testing.TB, _, m *dns.Msg) {
			m.Rcode = dns.RcodeNameError
			m.Ns = append(m.Ns, mustRR(tb, soa(zone)))
		}
	}
	cases := []diffCase{
		{name: "ipv4 A, two records", qname: "example.com.", qtype: dns.TypeA,
			resp: answers("example.com. 300 IN A 192.0.2.10", "example.com. 300 IN A 192.0.2.11")},
		{name: "ipv6 AAAA", qname: "example.com.", qtype: dns.TypeAAAA, v6: true,
			resp: answers("example.com. 600 IN AAAA 2001:db8::10", "example.com. 60 IN AAAA 2001:db8::11")},
		{name: "CNAME chain, compressed", qname: "www.example.com.", qtype: dns.TypeA,
			resp: answers(
				"www.example.com. 300 IN CNAME web.example.com.",
				"web.example.com. 300 IN CNAME edge.cdn.example.com.",
				"edge.cdn.example.com. 30 IN A 192.0.2.20",
				"edge.cdn.example.com. 30 IN A 192.0.2.21")},
		{name: "MX with glue in additional", qname: "example.com.", qtype: dns.TypeMX, v6: true,
			resp: func(tb testing.TB, req, m *dns.Msg) {
				answers("example.com. 3600 IN MX 10 mx1.example.com.", "example.com. 3600 IN MX 20 mx2.example.com.")(tb, req, m)
				m.Extra = append(m.Extra, mustRR(tb, "mx1.example.com. 3600 IN A 192.0.2.25"), mustRR(tb, "mx2.example.com. 3600 IN AAAA 2001:db8::25"))
			}},
		{name: "TXT, several strings", qname: "example.com.", qtype: dns.TypeTXT,
			resp: answers(`example.com. 300 IN TXT "v=spf1 -all"`, `example.com. 300 IN TXT "one" "two" "three"`)},
		{name: "EDNS with DO, RRSIG and OPT", qname: "example.com.", qtype: dns.TypeA, edns: 1232, do: true,
			resp: answers("example.com. 300 IN A 192.0.2.10", rrsig)},
		{name: "EDNS without DO, ipv6", qname: "example.com.", qtype: dns.TypeA, edns: 1232, v6: true,
			resp: answers("example.com. 300 IN A 192.0.2.10")},
		{name: "EDNS with CD and DO", qname: "example.com.", qtype: dns.TypeA, edns: 4096, do: true, cd: true,
			resp: answers("example.com. 300 IN A 192.0.2.10", rrsig)},
		{name: "CD without EDNS", qname: "example.com.", qtype: dns.TypeA, cd: true,
			resp: answers("example.com. 300 IN A 192.0.2.10")},
		{name: "no RD", qname: "example.com.", qtype: dns.TypeA, noRD: true,
			resp: answers("example.com. 300 IN A 192.0.2.10")},
		{name: "EDNS size 256 counts as 512", qname: "example.com.", qtype: dns.TypeTXT, edns: 256, size: 512},
		{name: "EDNS size 65535 is capped, answer of AnswerMax bytes", qname: "example.com.", qtype: dns.TypeTXT, edns: 65535, size: AnswerMax},
		{name: "EDNS 1232, answer of AnswerMax bytes", qname: "big.example.com.", qtype: dns.TypeTXT, edns: 1232, size: AnswerMax, v6: true},
		{name: "no EDNS, 512-byte answer", qname: "example.com.", qtype: dns.TypeTXT, size: 512},
		{name: "NXDOMAIN with SOA", qname: "nope.example.com.", qtype: dns.TypeA, resp: nx("example.com.")},
		{name: "NXDOMAIN with SOA, EDNS DO, ipv6", qname: "nope.example.com.", qtype: dns.TypeAAAA, edns: 1232, do: true, v6: true, resp: nx("example.com.")},
		{name: "NODATA with SOA", qname: "example.com.", qtype: dns.TypeCAA,
			resp: func(tb testing.TB, _, m *dns.Msg) { m.Ns = append(m.Ns, mustRR(tb, soa("example.com."))) }},
		{name: "0x20 question", qname: "ExAmPlE.CoM.", qtype: dns.TypeA,
			resp: answers("example.com. 300 IN A 192.0.2.10")},
		{name: "0x20 question, CNAME, ipv6", qname: "wWw.ExAmPlE.cOm.", qtype: dns.TypeAAAA, v6: true,
			resp: answers("www.example.com. 300 IN CNAME example.com.", "example.com. 300 IN AAAA 2001:db8::10")},
		{name: "ipv4 in 802.1Q", qname: "example.com.", qtype: dns.TypeA, tags: []uint16{0x8100},
			resp: answers("example.com. 300 IN A 192.0.2.10")},
		{name: "ipv6 in QinQ, EDNS", qname: "example.com.", qtype: dns.TypeAAAA, tags: []uint16{0x88a8, 0x8100}, v6: true, edns: 1232,
			resp: answers("example.com. 300 IN AAAA 2001:db8::10")},
		{name: "ipv4 with Ethernet padding", qname: "a.io.", qtype: dns.TypeA, pad: 20,
			resp: answers("a.io. 300 IN A 192.0.2.10")},
		{name: "name of 128 wire bytes", qname: long, qtype: dns.TypeA,
			resp: answers(strings.ToLower(long) + " 300 IN A 192.0.2.10")},
		{name: "name of 128 wire bytes, ipv6, EDNS", qname: long, qtype: dns.TypeAAAA, v6: true, edns: 1232,
			resp: answers(strings.ToLower(long) + " 300 IN AAAA 2001:db8::10")},
		{name: "root NS", qname: ".", qtype: dns.TypeNS,
			resp: answers(". 518400 IN NS a.root-servers.net.", ". 518400 IN NS b.root-servers.net.")},
		{name: "class CH", qname: "version.bind.", qtype: dns.TypeTXT, qclass: dns.ClassCHAOS,
			resp: answers(`version.bind. 30 CH TXT "x"`, `version.bind. 60 CH TXT "xdoh"`)},
	}
	// Every length modulo 8 of what follows the question, for the copy
	// loops; odd and even totals for the checksum.
	for n := range 8 {
		cases = append(cases, diffCase{name: fmt.Sprintf("answer of %d bytes", 100+n), qname: "Tail.Example.", qtype: dns.TypeTXT, size: 100 + n, v6: n%2 == 1})
	}
	// Question names of every length modulo 8, for the 8-byte name loop.
	for n := range 8 {
		name := strings.Repeat("aB", 8)[:3+n] + ".ExAmPlE.NeT." // wire length 17+n
		cases = append(cases, diffCase{name: fmt.Sprintf("name of %d wire bytes", 17+n), qname: name, qtype: dns.TypeA, v6: n%2 == 0,
			resp: answers(strings.ToLower(name) + " 300 IN A 192.0.2.10")})
	}
	for _, tc := range cases {
		if tc.resp == nil {
			tc.resp = func(testing.TB, *dns.Msg, *dns.Msg) {}
		}
		t.Run(tc.name, func(t *testing.T) { f.runDiff(t, tc) })
	}
}

// answerResponse is a packed response to name/qtype with one A or TXT
// record, ID 0x4242.
func answerResponse(tb testing.TB, name string, qtype uint16) []byte {
	tb.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m = new(dns.Msg).SetReply(m)
	m.Id = 0x4242
	if qtype == dns.TypeA {
		m.Answer = append(m.Answer, mustRR(tb, name+" 300 IN A 192.0.2.10"))
	}
	return pack(tb, m)
}

// putAnswer puts resp under the key of name/qtype/IN/flags with slot.
func putAnswer(tb testing.TB, p *Program, name string, qtype uint16, flags uint8, resp []byte, expires uint64, slot uint32) {
	tb.Helper()
	wire := wireName(tb, name)
	k, ok := NewAnswerKey(wire, qtype, dns.ClassINET, flags)
	if !ok {
		tb.Fatalf("NewAnswerKey(%q) refused", name)
	}
	v, err := NewAnswer(resp, len(wire), expires, slot)
	if err != nil {
		tb.Fatal(err)
	}
	if err := p.PutAnswers([]AnswerKey{k}, []Answer{v}); err != nil {
		tb.Fatal(err)
	}
}

// runMiss runs frame through the program with the run helper (one reason
// counted, the frame unchanged) and returns the answer counters' changes,
// failing if a hit counter moved.
func runMiss(tb testing.TB, p *Program, frame []byte) (uint32, Reason, AnswerCounters) {
	tb.Helper()
	_, a0, h0 := snapshot(tb, p)
	verdict, reason := run(tb, p, frame)
	_, a1, h1 := snapshot(tb, p)
	var d AnswerCounters
	for i := range a1 {
		d[i] = a1[i] - a0[i]
	}
	for i := range h1 {
		if h1[i] != h0[i] {
			tb.Errorf("answer hits of slot %d went up by %d without an answer", i, h1[i]-h0[i])
		}
	}
	return verdict, reason, d
}

// noEvent stands for "no answer event" in the tables.
const noEvent = NumAnswerEvents

// TestAnswerMisses proves that the program leaves alone (frame unchanged,
// steered as without the tier) every query it must not answer, counting the
// right answer event: expired and absent entries, answers larger than the
// client takes, queries whose cache answer is not exactly the stored one
// (header bits, counts, EDNS shape, name form, trailing bytes) and sources
// or destinations that are not one unicast host. Listeners without the tier
// never answer, and an allow list keeps sources outside it away from the
// tier. Each frame that must not be answered has an entry in the map that
// its question would hit, so a missing check shows as an XDP_TX.
func TestAnswerMisses(t *testing.T) {
	p := loadTier(t, Options{})
	now := monoNow(t)
	later := now + uint64(time.Hour)

	// example.com A IN under every flag combination, so any query for it
	// the program wrongly accepted would hit.
	small := answerResponse(t, "example.com.", dns.TypeA)
	for flags := range uint8(16) {
		putAnswer(t, p, "example.com.", dns.TypeA, flags, small, later, 1)
	}
	putAnswer(t, p, "expired.example.", dns.TypeA, KeyRD, answerResponse(t, "expired.example.", dns.TypeA), now-uint64(time.Second), 2)

	// A 513-byte answer for big.example TXT, with and without OPT; a
	// 512-byte one for edge.example TXT.
	sized := func(name string, size int) []byte {
		m := new(dns.Msg).SetReply(new(dns.Msg).SetQuestion(name, dns.TypeTXT))
		m.Compress = true
		padTo(t, m, size)
		return pack(t, m)
	}
	big := sized("big.example.", 513)
	putAnswer(t, p, "big.example.", dns.TypeTXT, KeyRD, big, later, 3)
	putAnswer(t, p, "big.example.", dns.TypeTXT, KeyRD|KeyOPT, big, later, 4)
	putAnswer(t, p, "edge.example.", dns.TypeTXT, KeyRD, sized("edge.example.", 512), later, 5)

	// Entries userspace never makes (NewAnswer refuses them): the program
	// must still not send them.
	rawPut := func(name string, qtype uint16, flags uint8, v Answer) {
		k, ok := NewAnswerKey(wireName(t, name), qtype, dns.ClassINET, flags)
		if !ok {
			t.Fatalf("NewAnswerKey(%q)", name)
		}
		v.Name = k.Name
		if err := p.objs.Answers.Put(k.mapKey(), &v); err != nil {
			t.Fatal(err)
		}
	}
	rawPut("huge.example.", dns.TypeTXT, KeyRD|KeyOPT, Answer{Expires: later, Slot: 6, Len: 4097})
	rawPut("long.example.", dns.TypeTXT, KeyRD|KeyOPT, Answer{Expires: later, Slot: 6, Len: uint16(len(Answer{}.Data) + 1)})
	rawPut("short.example.", dns.TypeTXT, KeyRD, Answer{Expires: later, Slot: 6, Len: uint16(12 + len(wireName(t, "short.example.")) + 3)})

	// The client's queries.
	msg := func(name string, qtype uint16, edit func(m *dns.Msg)) []byte {
		m := new(dns.Msg)
		m.SetQuestion(name, qtype)
		m.Id = uint16(rand.Uint32())
		if edit != nil {
			edit(m)
		}
		return pack(t, m)
	}
	base := msg("example.com.", dns.TypeA, nil)
	edns := msg("example.com.", dns.TypeA, func(m *dns.Msg) { m.SetEdns0(1232, false) })
	edit := func(b []byte, f func(b []byte) []byte) []byte { return f(bytes.Clone(b)) }
	hdr := func(b []byte, off int, v byte) []byte { return edit(b, func(b []byte) []byte { b[off] = v; return b }) }
	or := func(b []byte, off int, v byte) []byte {
		return edit(b, func(b []byte) []byte { b[off] |= v; return b })
	}
	add := func(b []byte, tail ...byte) []byte { return append(bytes.Clone(b), tail...) }
	qend := len(base)
	rawQuestion := func(name ...byte) []byte { // header of base, then name, type A, class IN
		b := append(bytes.Clone(base[:12]), name...)
		return append(b, 0, 1, 0, 1)
	}
	l63, l62 := strings.Repeat("a", 63), strings.Repeat("b", 62)
	name130 := wireName(t, l63+"."+l62+".d.")                                   // 64+63+2+1
	name255 := wireName(t, l63+"."+l63+"."+l63+"."+strings.Repeat("c", 61)+".") // 3*64+62+1
	name129 := wireName(t, l63+"."+l63+".")                                     // 64+64+1
	if len(name130) != 130 || len(name255) != 255 || len(name129) != 129 {
		t.Fatalf("names of %d, %d and %d bytes", len(name129), len(name130), len(name255))
	}
	opt := []byte{0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0}

	v4 := func(payload []byte) pkt { return pkt{src: client4, dst: server4, payload: payload} }
	v6 := func(payload []byte) pkt { return pkt{src: client6, dst: server6, payload: payload} }
	from := func(pk pkt, src string) pkt { pk.src = ap(src); return pk }
	to := func(pk pkt, dst string) pkt { pk.dst = ap(dst); return pk }
	frame := func(pk pkt, f func([]byte)) []byte { b := pk.bytes(); f(b); return b }

	tests := []struct {
		name  string
		frame []byte
		want  Reason
		event AnswerEvent // noEvent: none
	}{
		{"expired", v4(msg("expired.example.", dns.TypeA, nil)).bytes(), ReasonPassNoSocket, AnswerMissExpired},
		{"absent: other type", v4(msg("example.com.", dns.TypeAAAA, nil)).bytes(), ReasonPassNoSocket, AnswerMissAbsent},
		{"absent: other name", v6(msg("example.net.", dns.TypeA, nil)).bytes(), ReasonPassNoSocket, AnswerMissAbsent},
		{"absent: other class", v4(msg("example.com.", dns.TypeA, func(m *dns.Msg) { m.Question[0].Qclass = dns.ClassCHAOS })).bytes(), ReasonPassNoSocket, AnswerMissAbsent},
		{"513 bytes, no EDNS", v4(msg("big.example.", dns.TypeTXT, nil)).bytes(), ReasonPassNoSocket, AnswerMissTooLarge},
		{"513 bytes, EDNS 512", v4(msg("big.example.", dns.TypeTXT, func(m *dns.Msg) { m.SetEdns0(512, false) })).bytes(), ReasonPassNoSocket, AnswerMissTooLarge},
		{"513 bytes, EDNS 100", v6(msg("big.example.", dns.TypeTXT, func(m *dns.Msg) { m.SetEdns0(100, false) })).bytes(), ReasonPassNoSocket, AnswerMissTooLarge},

		{"bad entry: 4097 bytes to EDNS 65535 (capped to 4096)", v4(msg("huge.example.", dns.TypeTXT, func(m *dns.Msg) { m.SetEdns0(65535, false) })).bytes(), ReasonPassNoSocket, AnswerMissTooLarge},
		{"bad entry: longer than its data", v4(msg("long.example.", dns.TypeTXT, func(m *dns.Msg) { m.SetEdns0(4096, false) })).bytes(), ReasonPassNoSocket, AnswerMissNotExact},
		{"bad entry: shorter than the question", v4(msg("short.example.", dns.TypeTXT, nil)).bytes(), ReasonPassNoSocket, AnswerMissNotExact},

		{"QR set", v4(or(base, 2, 0x80)).bytes(), ReasonPassNoSocket, AnswerMissNotExact},
		{"opcode IQUERY", v4(or(base, 2, 1<<3)).bytes(), ReasonPassNoSocket, AnswerMissNotExact},
		{"opcode STATUS", v4(or(base, 2, 2<<3)).bytes(), ReasonPassNoSocket, AnswerMissNotExact},
		{"opcode NOTIFY", v6(or(base, 2, 4<<3)).bytes(), ReasonPassNoSocket, AnswerMissNotExact},
		{"opcode UPDATE", v4(or(base, 2, 5<<3)).bytes(), ReasonPassNoSocket, AnswerMissNotExact},
		{"opcode 15", v4(or(base, 2, 15<<3)).bytes(), ReasonPassNoSocket, AnswerMissNotExact},
		{"TC set", v4(or(base, 2, 0x02)).bytes(), ReasonPassNoSocket, AnswerMissNotExact},
		{"QDCOUNT 0", v4(hdr(base, 5, 0)).bytes(), ReasonPassNoSocket, AnswerMissNotExact},
		{"QDCOUNT 2, one question", v4(hdr(base, 5, 2)).bytes(), ReasonPassNoSocket, AnswerMissNotExact},
		{"QDCOUNT 2, two questions", v4(add(hdr(base, 5, 2), base[12:]...)).bytes(), ReasonPassNoSocket, AnswerMissNotExact},
		{"QDCOUNT 257", v4(hdr(base, 4, 1)).bytes(), ReasonPassNoSocket, AnswerMissNotExact},
		{"ANCOUNT 1", v4(hdr(base, 7, 1)).bytes(), ReasonPassNoSocket, AnswerMissNotExact},
		{"ANCOUNT 256", v4(hdr(base, 6, 1)).bytes(), ReasonPassNoSocket, AnswerMissNotExact},
		{"NSCOUNT 1", v6(hdr(base, 9, 1)).bytes(), ReasonPassNoSocket, AnswerMissNotExact},
		{"NSCOUNT 256", v4(hdr(base, 8, 1)).bytes(), ReasonPassNoSocket, AnswerMissNotExact},
		{"ARCOUNT 2, one OPT record", v4(hdr(edns, 11, 2)).bytes(), ReasonPassNoSocket, AnswerMissNotExact},
		{"ARCOUNT 2, two OPT records", v4(add(hdr(edns, 11, 2), edns[qend:]...)).bytes(), ReasonPassNoSocket, AnswerMissNotExact},
		{"ARCOUNT 256", v4(hdr(edns, 10, 1)).bytes(), ReasonPassNoSocket, AnswerMissNotExact},
		{"ARCOUNT 1, nothing after the question", v4(hdr(base, 11, 1)).bytes(), ReasonPassNoSocket, AnswerMissNotExact},
		{"OPT with a cookie", v4(msg("example.com.", dns.TypeA, func(m *dns.Msg) {
			m.SetEdns0(1232, false)
			o := m.IsEdns0()
			o.Option = append(o.Option, &dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708"})
		})).bytes(), ReasonPassNoSocket, AnswerMissNotExact},
		{"OPT with an empty NSID", v6(msg("example.com.", dns.TypeA, func(m *dns.Msg) {
			m.SetEdns0(1232, true)
			o := m.IsEdns0()
			o.Option = append(o.Option, &dns.EDNS0_NSID{Code: dns.EDNS0NSID})
		})).bytes(), ReasonPassNoSocket, AnswerMissNotExact},
		{"OPT RDLENGTH 4 without data", v4(add(hdr(base, 11, 1), 0, 0, 41, 4, 0xd0, 0, 0, 0, 0, 0, 4)).bytes(), ReasonPassNoSocket, AnswerMissNotExact},
		{"OPT RDLENGTH 256 without data", v4(add(hdr(base, 11, 1), 0, 0, 41, 4, 0xd0, 0, 0, 0, 0, 1, 0)).bytes(), ReasonPassNoSocket, AnswerMissNotExact},
		{"EDNS version 1", v4(msg("example.com.", dns.TypeA, func(m *dns.Msg) { m.SetEdns0(1232, false); m.IsEdns0().SetVersion(1) })).bytes(), ReasonPassNoSocket, AnswerMissNotExact},
		{"OPT owner not the root", v4(add(hdr(base, 11, 1), 1, 'a', 0, 0, 41, 4, 0xd0, 0, 0, 0, 0, 0, 0)).bytes(), ReasonPassNoSocket, AnswerMissNotExact},
		{"11-byte OPT whose owner is not the root", v4(add(hdr(base, 11, 1), 1, 0, 41, 4, 0xd0, 0, 0, 0, 0, 0, 0)).bytes(), ReasonPassNoSocket, AnswerMissNotExact},
		{"OPT owner a pointer", v4(add(hdr(base, 11, 1), 0xc0, 12, 0, 41, 4, 0xd0, 0, 0, 0, 0, 0, 0)).bytes(), ReasonPassNoSocket, AnswerMissNotExact},
		{"additional record of type A, not OPT", v4(add(hdr(base, 11, 1), 0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0)).bytes(), ReasonPassNoSocket, AnswerMissNotExact},
		{"additional record of type 297 (41 in the low byte)", v4(add(hdr(base, 11, 1), 0, 1, 41, 4, 0xd0, 0, 0, 0, 0, 0, 0)).bytes(), ReasonPassNoSocket, AnswerMissNotExact},
		{"OPT then a trailing byte", v4(add(edns, 0)).bytes(), ReasonPassNoSocket, AnswerMissNotExact},
		{"OPT bytes but ARCOUNT 0", v4(add(base, opt...)).bytes(), ReasonPassNoSocket, AnswerMissNotExact},
		{"trailing byte after the question", v4(add(base, 0)).bytes(), ReasonPassNoSocket, AnswerMissNotExact},
		{"trailing garbage after the question", v6(add(base, 0xde, 0xad, 0xbe, 0xef)).bytes(), ReasonPassNoSocket, AnswerMissNotExact},
		{"question without class", v4(base[:qend-2]).bytes(), ReasonPassNoSocket, AnswerMissNotExact},
		{"question without type and class", v4(base[:qend-4]).bytes(), ReasonPassNoSocket, AnswerMissNotExact},
		{"name runs past the datagram", v4(base[:12+5]).bytes(), ReasonPassNoSocket, AnswerMissNotExact},
		{"compressed qname: a pointer", v4(rawQuestion(0xc0, 12)).bytes(), ReasonPassNoSocket, AnswerMissNotExact},
		{"compressed qname: label then pointer", v4(rawQuestion(3, 'w', 'w', 'w', 0xc0, 12)).bytes(), ReasonPassNoSocket, AnswerMissNotExact},
		{"label length 64", v4(rawQuestion(append(append([]byte{64}, bytes.Repeat([]byte{'a'}, 64)...), 0)...)).bytes(), ReasonPassNoSocket, AnswerMissNotExact},
		{"name of 129 wire bytes", v6(rawQuestion(name129...)).bytes(), ReasonPassNoSocket, AnswerMissNotExact},
		{"name of 130 wire bytes", v4(rawQuestion(name130...)).bytes(), ReasonPassNoSocket, AnswerMissNotExact},
		{"name of 255 wire bytes", v6(rawQuestion(name255...)).bytes(), ReasonPassNoSocket, AnswerMissNotExact},

		{"broadcast source MAC", frame(v4(base), func(b []byte) { copy(b[6:12], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}) }), ReasonPassNoSocket, AnswerMissNotExact},
		{"multicast source MAC", frame(v6(base), func(b []byte) { copy(b[6:12], []byte{0x33, 0x33, 0, 0, 0, 1}) }), ReasonPassNoSocket, AnswerMissNotExact},
		{"broadcast destination MAC", frame(v4(base), func(b []byte) { copy(b[0:6], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}) }), ReasonPassNoSocket, AnswerMissNotExact},
		{"multicast destination MAC", frame(v4(base), func(b []byte) { copy(b[0:6], []byte{0x01, 0, 0x5e, 0, 0, 0xfb}) }), ReasonPassNoSocket, AnswerMissNotExact},
		{"ipv4 source 224.0.0.1", from(v4(base), "224.0.0.1:5353").bytes(), ReasonPassNoSocket, AnswerMissNotExact},
		{"ipv4 source 239.255.255.250", from(v4(base), "239.255.255.250:1900").bytes(), ReasonPassNoSocket, AnswerMissNotExact},
		{"ipv4 source 240.0.0.1", from(v4(base), "240.0.0.1:1").bytes(), ReasonPassNoSocket, AnswerMissNotExact},
		{"ipv4 source 255.255.255.255", from(v4(base), "255.255.255.255:1").bytes(), ReasonPassNoSocket, AnswerMissNotExact},
		{"ipv4 source 0.0.0.0", from(v4(base), "0.0.0.0:68").bytes(), ReasonPassNoSocket, AnswerMissNotExact},
		{"ipv6 source ff02::1", from(v6(base), "[ff02::1]:1").bytes(), ReasonPassNoSocket, AnswerMissNotExact},
		{"ipv6 source ff0e::1", from(v6(base), "[ff0e::1]:1").bytes(), ReasonPassNoSocket, AnswerMissNotExact},
		{"ipv4 source 127.0.0.1", from(v4(base), "127.0.0.1:1").bytes(), ReasonPassNoSocket, AnswerMissNotExact},
		{"ipv6 source ::1", from(v6(base), "[::1]:1").bytes(), ReasonPassNoSocket, AnswerMissNotExact},
		{"ipv6 source ::", from(v6(base), "[::]:1").bytes(), ReasonPassNoSocket, AnswerMissNotExact},
		{"ipv6 source ::ffff:192.0.2.1", from(v6(base), "[::ffff:192.0.2.1]:1").bytes(), ReasonPassNoSocket, AnswerMissNotExact},
		{"udp source port 0, ipv4", from(v4(base), "192.0.2.1:0").bytes(), ReasonPassNoSocket, AnswerMissNotExact},
		{"udp source port 0, ipv6", from(v6(base), "[2001:db8::1]:0").bytes(), ReasonPassNoSocket, AnswerMissNotExact},
		{"ipv4 reserved flag", func() []byte { p := v4(base); p.frag = 0x8000; return p.bytes() }(), ReasonPassNoSocket, AnswerMissNotExact},

		{"no answer tier, ipv4", to(v4(base), "203.0.113.1:5353").bytes(), ReasonPassNoSocket, noEvent},
		{"no answer tier, ipv6", to(v6(edns), "[2001:db8::53]:5353").bytes(), ReasonPassNoSocket, noEvent},
		{"allow list without drop: ipv4 source outside", from(to(v4(base), "198.51.100.5:53"), "192.0.2.1:1").bytes(), ReasonPassNoSocket, noEvent},
		{"allow list without drop: ipv6 source outside", from(to(v6(base), "[2001:db8::5]:53"), "[2001:db8:b::1]:1").bytes(), ReasonPassNoSocket, noEvent},
		{"allow list with drop: source outside", from(to(v4(base), "198.51.100.7:53"), "192.0.2.1:1").bytes(), ReasonDropACL, noEvent},
		{"not a listener", to(v4(base), "203.0.113.1:54").bytes(), ReasonPassNotListener, noEvent},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			verdict, got, events := runMiss(t, p, tt.frame)
			if got != tt.want || verdict != tt.want.verdict() {
				t.Errorf("got %s (verdict %d), want %s (verdict %d)", got, verdict, tt.want, tt.want.verdict())
			}
			var want AnswerCounters
			if tt.event != noEvent {
				want[tt.event] = 1
			}
			if events != want {
				t.Errorf("answer counters went up by %v, want %v", events, want)
			}
		})
	}

	// A program loaded without the tier ignores the listeners' flag.
	t.Run("tier not loaded", func(t *testing.T) {
		off := load(t, Options{})
		if err := off.SetListeners(answerListeners); err != nil {
			t.Fatal(err)
		}
		putAnswer(t, off, "example.com.", dns.TypeA, KeyRD, small, later, 1)
		for _, pk := range []pkt{v4(base), v6(base)} {
			verdict, got, events := runMiss(t, off, pk.bytes())
			if got != ReasonPassNoSocket || verdict != xdpPass || events != (AnswerCounters{}) {
				t.Errorf("%s: got %s (verdict %d), answer events %v; want pass_no_socket and none", pk.dst, got, verdict, events)
			}
		}
	})

	// The answers the kernel does give next to those misses: the same
	// 513 bytes to a client that takes them, 512 bytes to one without
	// EDNS, and the allow lists' sources inside.
	hits := []struct {
		name string
		pk   pkt
		slot uint32
	}{
		{"513 bytes, EDNS 1232", v4(msg("big.example.", dns.TypeTXT, func(m *dns.Msg) { m.SetEdns0(1232, false) })), 4},
		{"513 bytes, EDNS 513", v6(msg("big.example.", dns.TypeTXT, func(m *dns.Msg) { m.SetEdns0(513, false) })), 4},
		{"512 bytes, no EDNS", v4(msg("edge.example.", dns.TypeTXT, nil)), 5},
		{"allow list without drop: ipv4 source inside", from(to(v4(base), "198.51.100.5:53"), "10.1.2.3:1"), 1},
		{"allow list without drop: ipv6 source inside", from(to(v6(base), "[2001:db8::5]:53"), "[2001:db8:a::1]:1"), 1},
		{"allow list with drop: source inside", from(to(v4(base), "198.51.100.7:53"), "10.1.2.3:1"), 1},
	}
	for _, tt := range hits {
		t.Run(tt.name, func(t *testing.T) {
			fr := tt.pk.bytes()
			r := execFrame(t, p, fr)
			checkHit(t, r, tt.slot)
			if r.verdict == xdpTX && len(r.out) < l3Offset(tt.pk)+20+8+12 {
				t.Errorf("reply of %d bytes", len(r.out))
			}
		})
	}
}

// TestAnswerNameBytes proves that the program keys a question name on the
// same bytes as NewAnswerKey and the userspace cache, which lower-case A-Z
// only: names with digits, '-', '_', '@', '[', '`', '{' and bytes with the
// high bit set are answered from their own entry, and never from the entry
// of a name that differs from them in such a byte by 0x20.
func TestAnswerNameBytes(t *testing.T) {
	p := loadTier(t, Options{})
	f := &diffFixture{p: p}
	for _, name := range []string{
		"www-1.Example.com.", "_dmarc.Example.com.", "ns2.x9.Example.", `a\@b[c.Example.`, "`{|}~.Example.",
		`\017.Example.`, `\193Z\218.Example.`, `\225\250.eXample.`, `\127\255.Example.`,
	} {
		t.Run("hit "+name, func(t *testing.T) {
			f.runDiff(t, diffCase{name: name, qname: name, qtype: dns.TypeA,
				resp: answers(strings.ToLower(name) + " 300 IN A 192.0.2.10")})
		})
	}

	later := monoNow(t) + uint64(time.Hour)
	for _, tt := range []struct{ entry, query string }{
		{"1.example.", `\017.example.`},                          // 0x31, 0x11
		{"m.example.", "-.example."},                             // 0x6d, 0x4d
		{"`.example.", `\@.example.`},                            // 0x60, 0x40
		{"{.example.", `[.example.`},                             // 0x7b, 0x5b
		{"p.example.", "0.example."},                             // 0x70, 0x50
		{`\225.example.`, `\193.example.`},                       // 0xe1, 0xc1: A with the high bit
		{`\250.example.`, `\218.example.`},                       // 0xfa, 0xda: Z with the high bit
		{"a.example.", `\193.example.`},                          // 0x61, 0xc1
		{"aaaaaaaaaaaaaaa.example.", "aaaaaaaaaaaaaaA.examplf."}, // other name
	} {
		t.Run(fmt.Sprintf("%s does not answer %s", tt.entry, tt.query), func(t *testing.T) {
			if err := p.ClearAnswers(); err != nil {
				t.Fatal(err)
			}
			putAnswer(t, p, tt.entry, dns.TypeA, KeyRD, answerResponse(t, tt.entry, dns.TypeA), later, 9)
			m := new(dns.Msg)
			m.SetQuestion(tt.query, dns.TypeA)
			_, got, events := runMiss(t, p, pkt{src: client4, dst: server4, payload: pack(t, m)}.bytes())
			if got != ReasonPassNoSocket || events != (AnswerCounters{AnswerMissAbsent: 1}) {
				t.Errorf("got %s, answer events %v; want %s and one %s", got, events, ReasonPassNoSocket, AnswerMissAbsent)
			}
		})
	}
}

// TestAnswerDestination proves that a query to a broadcast or multicast IP
// address is not answered from the kernel (the reply would come from that
// address) even when it reaches a wildcard listener in a unicast frame.
func TestAnswerDestination(t *testing.T) {
	p := loadTier(t, Options{})
	m := new(dns.Msg)
	m.SetQuestion("example.com.", dns.TypeA)
	q := pack(t, m)
	putAnswer(t, p, "example.com.", dns.TypeA, KeyRD, answerResponse(t, "example.com.", dns.TypeA), monoNow(t)+uint64(time.Hour), 1)
	for _, dst := range []string{"255.255.255.255:53", "224.0.0.251:53", "239.1.2.3:53", "240.0.0.1:53", "[ff02::1]:53", "[ff05::fb]:53",
		"127.0.0.1:53", "0.0.0.0:53", "[::1]:53", "[::]:53", "[::ffff:203.0.113.1]:53"} {
		t.Run(dst, func(t *testing.T) {
			src := client4
			if ap(dst).Addr().Is6() {
				src = client6
			}
			_, got, events := runMiss(t, p, pkt{src: src, dst: ap(dst), payload: q}.bytes())
			if got != ReasonPassNoSocket || events != (AnswerCounters{AnswerMissNotExact: 1}) {
				t.Errorf("got %s, answer events %v; want %s and one %s", got, events, ReasonPassNoSocket, AnswerMissNotExact)
			}
		})
	}
}

// TestNewAnswerKey proves that NewAnswerKey builds the key the program
// builds (lower-cased A-Z only, zero after the name, type and class in
// network order) and refuses what the program never looks up, and that
// NewAnswer refuses responses that do not fit and fills the entry,
// checksum included.
func TestNewAnswerKey(t *testing.T) {
	label63 := "\x3f" + strings.Repeat("x", 63)
	n128 := label63 + "\x3e" + strings.Repeat("Y", 62) + "\x00"
	n129 := label63 + "\x3f" + strings.Repeat("Y", 63) + "\x00"
	for _, tt := range []struct {
		name, wire string
		want       string // the key's name; "" when refused
	}{
		{"lower case", "\x07example\x03com\x00", "\x07example\x03com\x00"},
		{"mixed case", "\x07ExAmPlE\x03COM\x00", "\x07example\x03com\x00"},
		{"only A-Z change", "\x06A-1_@[\x03Z`{\x00", "\x06a-1_@[\x03z`{\x00"},
		{"high and control bytes kept", "\x03\xc1\xda\x11\x00", "\x03\xc1\xda\x11\x00"},
		{"root", "\x00", "\x00"},
		{"128 bytes", n128, strings.ToLower(n128)},
		{"129 bytes", n129, ""},
		{"empty", "", ""},
		{"pointer", "\xc0\x0c", ""},
		{"label then pointer", "\x03www\xc0\x0c", ""},
		{"label length 64", "\x40" + strings.Repeat("a", 64) + "\x00", ""},
		{"label past the end", "\x05abc", ""},
		{"bytes after the root", "\x03com\x00\x00", ""},
		{"root then a label", "\x00\x03com", ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			k, ok := NewAnswerKey([]byte(tt.wire), dns.TypeMX, dns.ClassCHAOS, KeyOPT|KeyRD)
			if ok != (tt.want != "") {
				t.Fatalf("ok = %v, want %v", ok, tt.want != "")
			}
			if !ok {
				return
			}
			var want [AnswerNameMax]byte
			copy(want[:], tt.want)
			if k.Name != want || int(k.NameLen) != len(tt.want) {
				t.Errorf("name %q (len %d), want %q (len %d)", k.Name[:], k.NameLen, want[:], len(tt.want))
			}
			mk := k.mapKey()
			b := binary.NativeEndian.AppendUint16(nil, mk.Qtype)
			b = binary.NativeEndian.AppendUint16(b, mk.Qclass)
			if !bytes.Equal(b, []byte{0, 15, 0, 3}) || mk.Flags != KeyOPT|KeyRD || mk.Pad != 0 || mk.NameLen != k.NameLen {
				t.Errorf("map key type/class bytes %x flags %d pad %d len %d, want 000f0003 %d 0 %d", b, mk.Flags, mk.Pad, mk.NameLen, KeyOPT|KeyRD, k.NameLen)
			}
		})
	}

	resp := answerResponse(t, "example.com.", dns.TypeA) // name of 13 bytes
	for _, tt := range []struct {
		name    string
		resp    []byte
		nameLen int
		ok      bool
	}{
		{"fits", resp, 13, true},
		{"AnswerMax bytes", append(bytes.Clone(resp), make([]byte, AnswerMax-len(resp))...), 13, true},
		{"AnswerMax+1 bytes", append(bytes.Clone(resp), make([]byte, AnswerMax+1-len(resp))...), 13, false},
		{"64 KiB", make([]byte, 65535), 13, false},
		{"nameLen 0", resp, 0, false},
		{"nameLen -1", resp, -1, false},
		{"just a question", resp[:12+13+4], 13, true},
		{"question cut short", resp[:12+13+3], 13, false},
		{"nameLen past the response", resp, len(resp) - 12 - 3, false},
		{"empty", nil, 1, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			a, err := NewAnswer(tt.resp, tt.nameLen, 12345, 7)
			if (err == nil) != tt.ok {
				t.Fatalf("error %v, want ok %v", err, tt.ok)
			}
			if !tt.ok {
				return
			}
			if a.Expires != 12345 || a.Slot != 7 || int(a.Len) != len(tt.resp) || !bytes.Equal(a.Data[:a.Len], tt.resp) ||
				!bytes.Equal(a.Data[a.Len:], make([]byte, len(a.Data)-int(a.Len))) {
				t.Errorf("entry %+v", a)
			}
			// Csum, folded, is the one's complement sum of the response
			// with ID and question name zeroed, in memory order
			// (little-endian: the big-endian sum byte-swapped).
			z := bytes.Clone(tt.resp)
			clear(z[:2])
			clear(z[12 : 12+tt.nameLen])
			got := a.Csum
			for got > 0xffff {
				got = got&0xffff + got>>16
			}
			if want := bits.ReverseBytes16(ones(z)); uint16(got) != want && !(got == 0xffff && want == 0) && !(got == 0 && want == 0xffff) {
				t.Errorf("csum %#x folds to %#04x, want %#04x", a.Csum, got, want)
			}
		})
	}
}

// TestNewAnswerKeyNeedsRoot proves that NewAnswerKey refuses a name that
// does not end in the root label, whatever its last label's length.
func TestNewAnswerKeyNeedsRoot(t *testing.T) {
	for _, name := range []string{"\x03com", "\x04abc\x00", "\x01a\x03bc\x00", "\x07example\x03com"} {
		if k, ok := NewAnswerKey([]byte(name), dns.TypeA, dns.ClassINET, 0); ok {
			t.Errorf("NewAnswerKey(%q) = name %q (len %d), true; want false", name, k.Name[:k.NameLen], k.NameLen)
		}
	}
}

// TestAnswerNameCollision: the map is keyed on a hash of the name, so an
// entry found under a query's key whose stored name is another one (a
// hash collision) must not answer it.
func TestAnswerNameCollision(t *testing.T) {
	p := loadTier(t, Options{})
	later := monoNow(t) + uint64(time.Hour)
	k, ok := NewAnswerKey(wireName(t, "example.com."), dns.TypeA, dns.ClassINET, KeyRD)
	if !ok {
		t.Fatal("NewAnswerKey refused example.com.")
	}
	other, _ := NewAnswerKey(wireName(t, "exbmple.com."), dns.TypeA, dns.ClassINET, KeyRD)
	v, err := NewAnswer(answerResponse(t, "example.com.", dns.TypeA), int(k.NameLen), later, 1)
	if err != nil {
		t.Fatal(err)
	}
	v.Name = other.Name // under example.com's hash, but naming another
	if err := p.objs.Answers.Put(k.mapKey(), &v); err != nil {
		t.Fatal(err)
	}
	m := new(dns.Msg)
	m.SetQuestion("example.com.", dns.TypeA)
	frame := pkt{src: client4, dst: server4, payload: pack(t, m)}.bytes()
	before, _ := p.AnswerCounters()
	if verdict, r := run(t, p, frame); verdict == xdpTX || r == ReasonTX {
		t.Fatalf("a colliding entry answered: verdict %d, %s", verdict, r)
	}
	after, _ := p.AnswerCounters()
	if after[AnswerMissAbsent] != before[AnswerMissAbsent]+1 {
		t.Errorf("miss_absent went from %d to %d, want +1", before[AnswerMissAbsent], after[AnswerMissAbsent])
	}
	// The same entry with its own name answers: the check above is the
	// name comparison, not a broken entry.
	v.Name = k.Name
	if err := p.objs.Answers.Put(k.mapKey(), &v); err != nil {
		t.Fatal(err)
	}
	out := make([]byte, len(frame)+2048)
	verdict, err := p.XDP().Run(&ebpf.RunOptions{Data: frame, DataOut: out})
	if err != nil || verdict != xdpTX {
		t.Errorf("with its own name: verdict %d (%v), want XDP_TX", verdict, err)
	}
}

// TestAnswerBatchOps proves the map operations: PutAnswers stores entries
// the program answers from and refuses slots past AnswerEntries (storing
// nothing), DeleteAnswers removes the keys it is given and skips absent ones
// without error, ClearAnswers empties the map, AnswerHits wants
// AnswerEntries slots.
func TestAnswerBatchOps(t *testing.T) {
	const entries = 8
	p := loadTier(t, Options{AnswerEntries: entries})
	if p.AnswerEntries() != entries {
		t.Fatalf("AnswerEntries() = %d", p.AnswerEntries())
	}
	later := monoNow(t) + uint64(time.Hour)
	key := func(name string) AnswerKey {
		k, ok := NewAnswerKey(wireName(t, name), dns.TypeA, dns.ClassINET, KeyRD)
		if !ok {
			t.Fatalf("NewAnswerKey(%q)", name)
		}
		return k
	}
	names := []string{"a.example.", "b.example.", "c.example.", "d.example.", "e.example."}
	var ks []AnswerKey
	var vs []Answer
	for i, name := range names {
		v, err := NewAnswer(answerResponse(t, name, dns.TypeA), len(name)+1, later, uint32(i))
		if err != nil {
			t.Fatal(err)
		}
		ks = append(ks, key(name))
		vs = append(vs, v)
	}
	stored := func() map[AnswerKey]Answer {
		t.Helper()
		m := map[AnswerKey]Answer{}
		var mk xdpAnswerKey
		var v Answer
		it := p.objs.Answers.Iterate()
		for it.Next(&mk, &v) {
			k := AnswerKey{Qtype: hton16(mk.Qtype), Qclass: hton16(mk.Qclass), Flags: mk.Flags, NameLen: mk.NameLen, Name: v.Name}
			if k.mapKey() != mk {
				t.Errorf("map key %+v is not the hash of its entry's name %q", mk, v.Name[:mk.NameLen])
			}
			m[k] = v
		}
		if err := it.Err(); err != nil {
			t.Fatal(err)
		}
		return m
	}
	query := func(name string) []byte {
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeA)
		return pkt{src: client4, dst: server4, payload: pack(t, m)}.bytes()
	}

	// Refused batches store nothing.
	bad := vs[1]
	bad.Slot = entries
	if err := p.PutAnswers(ks[:2], []Answer{vs[0], bad}); err == nil {
		t.Error("PutAnswers with slot AnswerEntries: no error")
	}
	if err := p.PutAnswers(ks[:1], []Answer{{Slot: 1 << 31}}); err == nil {
		t.Error("PutAnswers with slot 2^31: no error")
	}
	if err := p.PutAnswers(ks[:2], vs[:1]); err == nil {
		t.Error("PutAnswers with 2 keys and 1 value: no error")
	}
	if m := stored(); len(m) != 0 {
		t.Fatalf("%d entries after refused puts", len(m))
	}
	if err := p.PutAnswers(nil, nil); err != nil {
		t.Errorf("PutAnswers(nil, nil): %v", err)
	}
	last := vs[0]
	last.Slot = entries - 1
	if err := p.PutAnswers(ks[:1], []Answer{last}); err != nil {
		t.Errorf("PutAnswers with the last slot: %v", err)
	}

	// A batch stores them all (replacing the one above), and they answer.
	if err := p.PutAnswers(ks, vs); err != nil {
		t.Fatal(err)
	}
	m := stored()
	if len(m) != len(ks) {
		t.Errorf("%d entries, want %d", len(m), len(ks))
	}
	for i, k := range ks {
		if v, ok := m[k]; !ok || v != vs[i] {
			t.Errorf("%s: stored %v (present %v), want the put value", names[i], v.Slot, ok)
		}
	}
	checkHit(t, execFrame(t, p, query("c.example.")), 2)

	// Deleting present and absent keys in any order.
	absent := []AnswerKey{key("x.example."), key("y.example."), key("z.example.")}
	if err := p.DeleteAnswers([]AnswerKey{absent[0], ks[0], absent[1], absent[2], ks[2], absent[0]}); err != nil {
		t.Errorf("DeleteAnswers: %v", err)
	}
	m = stored()
	for i, k := range ks {
		if _, ok := m[k]; ok != (i != 0 && i != 2) {
			t.Errorf("%s: present %v after deleting a and c", names[i], ok)
		}
	}
	if _, _, ev := runMiss(t, p, query("c.example.")); ev != (AnswerCounters{AnswerMissAbsent: 1}) {
		t.Errorf("deleted entry: answer events %v, want one miss_absent", ev)
	}
	if err := p.DeleteAnswers(absent); err != nil {
		t.Errorf("DeleteAnswers of absent keys only: %v", err)
	}
	if err := p.DeleteAnswers(nil); err != nil {
		t.Errorf("DeleteAnswers(nil): %v", err)
	}
	if len(stored()) != 3 {
		t.Errorf("%d entries, want 3", len(stored()))
	}

	if err := p.ClearAnswers(); err != nil {
		t.Fatal(err)
	}
	if m := stored(); len(m) != 0 {
		t.Errorf("%d entries after ClearAnswers", len(m))
	}
	if _, _, ev := runMiss(t, p, query("b.example.")); ev != (AnswerCounters{AnswerMissAbsent: 1}) {
		t.Errorf("after ClearAnswers: answer events %v, want one miss_absent", ev)
	}
	if err := p.ClearAnswers(); err != nil {
		t.Errorf("ClearAnswers on an empty map: %v", err)
	}

	// The hits survive the entries; AnswerHits wants the map's size.
	h := make([]uint64, entries)
	if err := p.AnswerHits(h); err != nil {
		t.Fatal(err)
	}
	if want := []uint64{2: 1, entries - 1: 0}; !bytes.Equal(fmt.Append(nil, h), fmt.Append(nil, want)) {
		t.Errorf("hits %v, want %v", h, want)
	}
	if err := p.AnswerHits(make([]uint64, entries+1)); err == nil {
		t.Error("AnswerHits with a wrong length: no error")
	}
}

// TestAnswerRewriteNeverTorn: the tier rewrites hot entries while the
// program reads them, and a preallocated map hands a replaced element's
// memory to the next update at once. A reply must then never carry another
// entry's records: the program drops what it copied while the entry
// changed (drop_torn). One goroutine rewrites two entries without pause, as
// refresh does, while the query for the first runs for two seconds.
func TestAnswerRewriteNeverTorn(t *testing.T) {
	p := loadTier(t, Options{AnswerEntries: 64})
	later := monoNow(t) + uint64(time.Hour)
	mk := func(name, addr string) (AnswerKey, Answer) {
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeA)
		m = new(dns.Msg).SetReply(m)
		rr, err := dns.NewRR(name + " 300 IN A " + addr)
		if err != nil {
			t.Fatal(err)
		}
		m.Answer = append(m.Answer, rr)
		k, _ := NewAnswerKey(wireName(t, name), dns.TypeA, dns.ClassINET, KeyRD)
		v, err := NewAnswer(pack(t, m), len(wireName(t, name)), later, 1)
		if err != nil {
			t.Fatal(err)
		}
		return k, v
	}
	ka, va := mk("aaaa.example.", "192.0.2.1")
	kb, vb := mk("bbbb.example.", "198.51.100.99")
	if err := p.PutAnswers([]AnswerKey{ka, kb}, []Answer{va, vb}); err != nil {
		t.Fatal(err)
	}
	q := new(dns.Msg)
	q.SetQuestion("aaaa.example.", dns.TypeA)
	frame := pkt{src: client4, dst: server4, payload: pack(t, q)}.bytes()
	bad := netip.MustParseAddr("198.51.100.99").As4()
	var stop atomic.Bool
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for !stop.Load() {
			_ = p.PutAnswers([]AnswerKey{ka, kb}, []Answer{va, vb})
		}
	}()
	defer func() { stop.Store(true); wg.Wait() }()
	var txs, wrong int
	out := make([]byte, len(frame)+2048)
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); {
		opts := ebpf.RunOptions{Data: frame, DataOut: out}
		v, err := p.XDP().Run(&opts)
		if err != nil {
			t.Fatal(err)
		}
		if v == xdpTX {
			txs++
			if bytes.Contains(opts.DataOut, bad[:]) {
				wrong++
			}
		}
	}
	c, _ := p.Counters()
	t.Logf("%d replies, %d dropped as torn", txs, c[ReasonDropTorn])
	if wrong > 0 || txs == 0 {
		t.Errorf("%d of %d replies carried the other entry's address", wrong, txs)
	}
}
