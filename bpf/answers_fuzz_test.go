package bpf

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"
)

// FuzzAnswer runs arbitrary frames through the program with the answer tier
// loaded, answerListeners and a handful of answers entries, and checks each
// run against fuzzAnswerOracle, a Go model of the tier written from doc.go
// ("The answer tier"):
//
//   - the program does not fail and returns XDP_TX, XDP_PASS, XDP_REDIRECT
//     or XDP_DROP, the verdict of the one reason counter that went up, and
//     that reason is classify's (tx instead of the steered reason for an
//     answer);
//   - at most one answer event counter goes up, the one the oracle expects
//     (none where the tier never sees the packet), and the hit counter of
//     the answering entry's slot goes up with XDP_TX, no other;
//   - a frame not answered comes back byte for byte;
//   - an answered frame is a query the oracle answers from an entry of the
//     map, and what comes back is its reply: MACs, addresses and ports
//     swapped, lengths, IPv4 header and UDP checksums (checkReply), the DNS
//     message the stored response with the query's ID and question name.
//
// The second argument, odd, first sets the frame's IP and UDP lengths to
// end with the frame and the IPv4 header checksum to match, so that
// mutations that add or remove bytes reach the DNS parser.
func FuzzAnswer(f *testing.F) {
	o := newFuzzAnswerOracle(f)
	p := o.p

	msg := func(name string, qtype uint16, edit func(m *dns.Msg)) []byte {
		m := new(dns.Msg)
		m.SetQuestion(name, qtype)
		m.Id = uint16(0x1000 + len(name)*31 + int(qtype))
		if edit != nil {
			edit(m)
		}
		return pack(f, m)
	}
	edns := func(size uint16, do bool) func(*dns.Msg) {
		return func(m *dns.Msg) { m.SetEdns0(size, do) }
	}
	v4 := func(payload []byte) pkt { return pkt{src: client4, dst: server4, payload: payload} }
	v6 := func(payload []byte) pkt { return pkt{src: client6, dst: server6, payload: payload} }
	tagged := func(pk pkt, tags ...uint16) pkt { pk.tags = tags; return pk }
	from := func(pk pkt, src string) pkt { pk.src = ap(src); return pk }
	to := func(pk pkt, dst string) pkt { pk.dst = ap(dst); return pk }
	set := func(b []byte, off int, v byte) []byte { b = bytes.Clone(b); b[off] = v; return b }

	ex := msg("example.com.", dns.TypeA, nil)
	long := strings.Repeat("aA", 32)[:63] + "." + strings.Repeat("Bb", 31) + "." // 128 wire bytes
	many := strings.Repeat("X.x.", 32)[:126]                                     // 63 labels, 127 wire bytes
	opt := []byte{0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0}
	rawQuestion := func(name ...byte) []byte {
		b := append(bytes.Clone(ex[:12]), name...)
		return append(b, 0, 1, 0, 1)
	}

	seeds := []pkt{
		// Hits.
		v4(ex),
		tagged(v4(msg("ExAmPlE.cOm.", dns.TypeA, func(m *dns.Msg) { m.RecursionDesired, m.CheckingDisabled = false, true })), 0x8100),
		tagged(v6(msg("EXAMPLE.COM.", dns.TypeA, edns(1232, true))), 0x88a8, 0x8100),
		v6(msg("example.com.", dns.TypeA, func(m *dns.Msg) { m.CheckingDisabled = true; m.SetEdns0(4096, false) })),
		v4(msg("eXample.com.", dns.TypeA, func(m *dns.Msg) { m.RecursionDesired = false; m.SetEdns0(100, true) })),
		v4(msg(long, dns.TypeA, nil)),
		v6(msg(long, dns.TypeAAAA, edns(1232, false))),
		tagged(v4(msg(many, dns.TypeA, nil)), 0x8100),
		v4(msg("Edge.Example.", dns.TypeTXT, nil)),                // 512 bytes without EDNS
		v6(msg("big.EXAMPLE.", dns.TypeTXT, edns(4096, false))),   // AnswerMax bytes
		v4(msg("big513.example.", dns.TypeTXT, edns(513, false))), // 513 bytes to EDNS 513
		v6(msg(".", dns.TypeNS, nil)),                             // the root
		v4(msg("Version.BIND.", dns.TypeTXT, func(m *dns.Msg) { m.Question[0].Qclass = dns.ClassCHAOS })),
		v4(msg(`_X-1.A\@B[C.eXAMPLE.`, dns.TypeA, nil)),
		{src: client4, dst: server4, payload: ex, pad: 20}, // Ethernet padding
		from(to(v4(ex), "198.51.100.5:53"), "10.1.2.3:1"),  // allow list without drop, inside
		from(to(v6(ex), "[2001:db8::5]:53"), "[2001:db8:a::1]:1"),
		from(to(v4(ex), "198.51.100.7:53"), "10.9.9.9:53"), // allow list with drop, inside

		// Misses.
		v4(msg("big.example.", dns.TypeTXT, edns(1231, false))),   // too large
		v4(msg("big513.example.", dns.TypeTXT, nil)),              // too large
		v6(msg("big513.example.", dns.TypeTXT, edns(512, false))), // too large
		v4(msg("expired.example.", dns.TypeA, nil)),
		v4(msg("example.net.", dns.TypeA, nil)),
		v6(msg("example.com.", dns.TypeAAAA, nil)),
		v4(set(ex, 2, ex[2]|0x80)), // QR
		v4(set(ex, 2, ex[2]|0x02)), // TC
		v4(set(ex, 2, ex[2]|0x28)), // opcode 5
		v4(set(ex, 5, 2)),          // QDCOUNT 2
		v6(set(ex, 11, 1)),         // ARCOUNT 1, no record
		v4(append(bytes.Clone(ex), 0)),
		v4(ex[:len(ex)-2]),
		v4(rawQuestion(0xc0, 12)),
		v4(rawQuestion(3, 'w', 'w', 'w', 0xc0, 12)),
		v6(rawQuestion(wireName(f, strings.Repeat("a", 63)+"."+strings.Repeat("b", 63)+".")...)), // 129 bytes
		v4(msg("example.com.", dns.TypeA, func(m *dns.Msg) { m.SetEdns0(1232, false); m.IsEdns0().SetVersion(1) })),
		v6(msg("example.com.", dns.TypeA, func(m *dns.Msg) {
			m.SetEdns0(1232, true)
			m.IsEdns0().Option = append(m.IsEdns0().Option, &dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708"})
		})),
		from(to(v4(ex), "198.51.100.5:53"), "192.0.2.1:1"), // allow list without drop, outside
		from(to(v4(ex), "198.51.100.7:53"), "192.0.2.1:1"), // allow list with drop, outside
		to(v6(ex), "[2001:db8::53]:5353"),                  // no answer tier
		to(v4(ex), "203.0.113.1:54"),                       // not a listener
		from(v4(ex), "127.0.0.1:1"),
		from(v4(ex), "224.0.0.1:1"),
		to(v4(ex), "255.255.255.255:53"),
		from(v6(ex), "[::1]:1"),
		from(v6(ex), "[ff02::1]:1"),
		{src: client4, dst: server4, payload: ex, badSum: true},
		{src: client4, dst: server4, payload: ex, frag: 0x2000},
		{src: client6, dst: server6, payload: ex, ext: u8(44)},
		{src: client4, dst: server4, payload: ex, udpLen: u16(uint16(8 + len(ex) + 1))},
		{src: client4, dst: server4, payload: ex[:11]},
	}
	for i, s := range seeds {
		fr := s.bytes()
		if i%2 == 1 && !s.badSum { // markFrame rewrites the IPv4 header checksum
			markFrame(fr, l3Offset(s))
		}
		f.Add(fr, byte(0))
	}
	// Multicast source MAC.
	fr := v6(ex).bytes()
	fr[6] = 0x33
	f.Add(fr, byte(0))
	// Wrong lengths that the fix-up makes right: an OPT record appended
	// to the frame, and a frame cut short in the question.
	f.Add(append(v4(set(ex, 11, 1)).bytes(), opt...), byte(1))
	f.Add(tagged(v6(msg("Example.Com.", dns.TypeA, edns(1232, false))), 0x8100).bytes()[:18+40+8+12+5], byte(1))

	f.Fuzz(func(t *testing.T, frame []byte, fix byte) {
		if len(frame) < 14 || len(frame) > 3000 { // BPF_PROG_RUN takes an Ethernet header, and at most about a page
			return
		}
		if fix&1 != 0 {
			frame = fuzzFixLengths(frame)
		}
		o.check(t, p, frame)
	})
}

// fuzzAnswerEntry is one entry FuzzAnswer puts in the answers map.
type fuzzAnswerEntry struct {
	key     fuzzAnswerKey
	resp    []byte // the stored response
	slot    uint32
	expired bool
}

// fuzzAnswerKey is what the tier keys an answer on.
type fuzzAnswerKey struct {
	name          string // lower-cased (A-Z only) wire name
	qtype, qclass uint16
	flags         uint8 // Key*
}

// fuzzAnswerOracle is the program under test and the oracle's copy of its
// answers map.
type fuzzAnswerOracle struct {
	p       *Program
	steered Reason // the reason of a steered packet the tier does not answer
	entries map[fuzzAnswerKey]*fuzzAnswerEntry
}

// newFuzzAnswerOracle loads the program with the answer tier and
// answerListeners and fills the answers map: example.com A under every flag
// combination (each with its own record), names of 128 and 127 wire bytes,
// answers of 512, 513 and AnswerMax bytes, an expired entry, the root, class
// CH and a name with bytes next to the letters.
func newFuzzAnswerOracle(tb testing.TB) *fuzzAnswerOracle {
	tb.Helper()
	p := loadTier(tb, Options{AnswerEntries: 256})
	o := &fuzzAnswerOracle{p: p, steered: ReasonPassNoSocket, entries: map[fuzzAnswerKey]*fuzzAnswerEntry{}}
	if fd, err := unix.Socket(unix.AF_XDP, unix.SOCK_RAW, 0); err == nil {
		tb.Cleanup(func() { unix.Close(fd) })
		if err := p.SetSocket(0, fd); err != nil {
			tb.Fatal(err)
		}
		o.steered = ReasonRedirect
	}

	now := monoNow(tb)
	var keys []AnswerKey
	var vals []Answer
	put := func(name string, qtype, qclass uint16, flags uint8, expired bool, edit func(m *dns.Msg), size int) {
		q := new(dns.Msg)
		q.SetQuestion(name, qtype)
		q.Question[0].Qclass = qclass
		q.RecursionDesired = flags&KeyRD != 0
		q.CheckingDisabled = flags&KeyCD != 0
		m := new(dns.Msg).SetReply(q)
		m.Id = uint16(0x4242 + len(keys))
		m.RecursionAvailable = true
		m.Compress = true
		if edit != nil {
			edit(m)
		}
		if flags&KeyOPT != 0 {
			m.SetEdns0(1232, flags&KeyDO != 0)
		}
		if size != 0 {
			padTo(tb, m, size)
		}
		resp := pack(tb, m)
		wire := wireName(tb, name)
		k, ok := NewAnswerKey(wire, qtype, qclass, flags)
		if !ok {
			tb.Fatalf("NewAnswerKey(%q) refused", name)
		}
		expires := now + uint64(time.Hour)
		if expired {
			expires = now - uint64(time.Second)
		}
		slot := uint32(len(keys) + 1)
		v, err := NewAnswer(resp, len(wire), expires, slot)
		if err != nil {
			tb.Fatal(err)
		}
		keys, vals = append(keys, k), append(vals, v)
		fk := fuzzAnswerKey{name: string(fuzzLower(wire)), qtype: qtype, qclass: qclass, flags: flags}
		if o.entries[fk] != nil {
			tb.Fatalf("entry %q %d %d %d twice", name, qtype, qclass, flags)
		}
		o.entries[fk] = &fuzzAnswerEntry{key: fk, resp: resp, slot: slot, expired: expired}
	}
	rr := func(s string) func(m *dns.Msg) {
		return func(m *dns.Msg) { m.Answer = append(m.Answer, mustRR(tb, s)) }
	}
	in, txt := uint16(dns.ClassINET), dns.TypeTXT
	for flags := range uint8(16) {
		put("example.com.", dns.TypeA, in, flags, false, rr(fmt.Sprintf("example.com. 300 IN A 192.0.2.%d", 100+flags)), 0)
	}
	long := strings.Repeat("a", 63) + "." + strings.Repeat("b", 62) + "."
	put(long, dns.TypeA, in, KeyRD, false, rr(long+" 300 IN A 192.0.2.1"), 0)
	put(long, dns.TypeAAAA, in, KeyRD|KeyOPT, false, rr(long+" 300 IN AAAA 2001:db8::1"), 0)
	many := strings.Repeat("x.", 63)
	put(many, dns.TypeA, in, KeyRD, false, rr(many+" 300 IN A 192.0.2.2"), 0)
	put("edge.example.", txt, in, KeyRD, false, nil, 512)
	put("big.example.", txt, in, KeyRD|KeyOPT, false, nil, AnswerMax)
	put("big513.example.", txt, in, KeyRD, false, nil, 513)
	put("big513.example.", txt, in, KeyRD|KeyOPT, false, nil, 513)
	put("expired.example.", dns.TypeA, in, KeyRD, true, rr("expired.example. 300 IN A 192.0.2.3"), 0)
	put(".", dns.TypeNS, in, KeyRD, false, rr(". 518400 IN NS a.root-servers.net."), 0)
	put("version.bind.", txt, dns.ClassCHAOS, KeyRD, false, rr(`version.bind. 30 CH TXT "xdoh"`), 0)
	put(`_x-1.a\@b[c.example.`, dns.TypeA, in, KeyRD, false, rr(`_x-1.a\@b[c.example. 300 IN A 192.0.2.4`), 0)
	if err := p.PutAnswers(keys, vals); err != nil {
		tb.Fatal(err)
	}
	// All there: the LRU map evicted none.
	n := 0
	var mk xdpAnswerKey
	var v Answer
	for it := p.objs.Answers.Iterate(); it.Next(&mk, &v); {
		n++
	}
	if n != len(keys) {
		tb.Fatalf("%d answers in the map, put %d", n, len(keys))
	}
	return o
}

// fuzzAnswerCase is what the oracle makes of a frame.
type fuzzAnswerCase struct {
	event AnswerEvent      // noEvent: the tier does not see the frame
	entry *fuzzAnswerEntry // the entry the question keys, if there is one
	l3    int              // offsets of the IP header and the DNS message
	dns   int
	msg   []byte // the DNS message (the UDP payload)
	name  []byte // the question name as the client sent it
	why   string // why not AnswerHit
}

// model is what the tier does with frame, from doc.go: the event it
// counts and, for a hit, the entry it answers from.
func (o *fuzzAnswerOracle) model(frame []byte) fuzzAnswerCase {
	c := fuzzAnswerCase{event: noEvent}
	if r := classify(frame, answerListeners, o.steered); r != o.steered {
		c.why = "not steered: " + r.String()
		return c
	}
	// classify accepted the headers: Ethernet, up to two tags, IPv4
	// without options or IPv6 with UDP right after, lengths that agree.
	be := binary.BigEndian
	l3, etype := 14, be.Uint16(frame[12:])
	for range 2 {
		if etype != 0x8100 && etype != 0x88a8 {
			break
		}
		etype, l3 = be.Uint16(frame[l3+2:]), l3+4
	}
	ip := frame[l3:]
	var src, dst netip.Addr
	var udp []byte
	if etype == 0x0800 {
		src, dst = netip.AddrFrom4([4]byte(ip[12:16])), netip.AddrFrom4([4]byte(ip[16:20]))
		udp = ip[20:be.Uint16(ip[2:])]
	} else {
		src, dst = netip.AddrFrom16([16]byte(ip[8:24])), netip.AddrFrom16([16]byte(ip[24:40]))
		udp = ip[40 : 40+int(be.Uint16(ip[4:]))]
	}
	c.l3, c.msg = l3, udp[8:]
	if etype == 0x0800 {
		c.dns = l3 + 20 + 8
	} else {
		c.dns = l3 + 40 + 8
	}

	port := be.Uint16(udp[2:])
	l, ok := find(answerListeners, dst, port)
	if !ok {
		if dst.Is4() {
			l, _ = find(answerListeners, netip.IPv4Unspecified(), port)
		} else {
			l, _ = find(answerListeners, netip.IPv6Unspecified(), port)
		}
	}
	if !l.Answers {
		c.why = "listener without the answer tier"
		return c
	}
	if len(l.Allow) > 0 && !allowed(l.Allow, src) {
		c.why = "source outside the allow list"
		return c
	}

	c.event = AnswerMissNotExact
	notExact := func(why string) fuzzAnswerCase { c.why = why; return c }
	if c.dns < 42 || c.dns > 128 || l3 > 64 {
		return notExact("headers too long")
	}
	if frame[0]&1 != 0 || frame[6]&1 != 0 {
		return notExact("group MAC address")
	}
	v6special := func(a netip.Addr) bool {
		return a == netip.IPv6Unspecified() || a == netip.IPv6Loopback() || a.Is4In6() || a.As16()[0] == 0xff
	}
	if src.Is4() {
		s, d := src.As4()[0], dst.As4()[0]
		if s == 0 || s == 127 || s >= 224 || d == 0 || d == 127 || d >= 224 {
			return notExact("IPv4 address in 0/8, 127/8, 224/4 or 240/4")
		}
		if frame[l3+6]&0x80 != 0 {
			return notExact("IPv4 reserved flag")
		}
	} else if v6special(src) || v6special(dst) {
		return notExact("IPv6 address ::, ::1, IPv4-mapped or multicast")
	}
	if be.Uint16(frame[c.dns-8:]) == 0 {
		return notExact("UDP source port 0")
	}

	m := c.msg
	switch {
	case m[2]&0x80 != 0:
		return notExact("QR")
	case m[2]>>3&0xf != 0:
		return notExact("opcode")
	case m[2]&0x02 != 0:
		return notExact("TC")
	case be.Uint16(m[4:]) != 1 || be.Uint16(m[6:]) != 0 || be.Uint16(m[8:]) != 0 || be.Uint16(m[10:]) > 1:
		return notExact("counts")
	}
	i := 12
	for {
		if i >= len(m) {
			return notExact("name past the message")
		}
		n := int(m[i])
		if n == 0 {
			i++
			break
		}
		if n > 63 {
			return notExact("pointer or bad label length")
		}
		i += 1 + n
		if i-12 >= AnswerNameMax { // the root label still to come
			return notExact("name longer than AnswerNameMax")
		}
	}
	c.name = m[12:i]
	if i+4 > len(m) {
		return notExact("question without type and class")
	}
	key := fuzzAnswerKey{name: string(fuzzLower(c.name)), qtype: be.Uint16(m[i:]), qclass: be.Uint16(m[i+2:])}
	if m[2]&0x01 != 0 {
		key.flags |= KeyRD
	}
	if m[3]&0x10 != 0 {
		key.flags |= KeyCD
	}
	maxSize := 512
	qend := i + 4
	if m[11] == 0 {
		if len(m) != qend {
			return notExact("bytes after the question")
		}
	} else {
		rec := m[qend:]
		if len(rec) != 11 {
			return notExact("additional record not 11 bytes up to the end")
		}
		// owner, TYPE, CLASS (UDP size), extended RCODE, version, flags, RDLENGTH
		if rec[0] != 0 || be.Uint16(rec[1:]) != 41 || rec[6] != 0 || be.Uint16(rec[9:]) != 0 {
			return notExact("not an empty version 0 OPT at the root")
		}
		key.flags |= KeyOPT
		if rec[7]&0x80 != 0 {
			key.flags |= KeyDO
		}
		maxSize = max(512, min(int(be.Uint16(rec[3:])), 4096))
	}
	e := o.entries[key]
	c.entry = e
	switch {
	case e == nil:
		c.event, c.why = AnswerMissAbsent, fmt.Sprintf("no entry for name %q type %d class %d flags %d", key.name, key.qtype, key.qclass, key.flags)
	case e.expired:
		c.event, c.why = AnswerMissExpired, "expired"
	case len(e.resp) > maxSize:
		c.event, c.why = AnswerMissTooLarge, fmt.Sprintf("%d bytes to a client of %d", len(e.resp), maxSize)
	default:
		c.event, c.why = AnswerHit, ""
	}
	return c
}

// check runs frame through p once and checks what the program did
// against the model.
func (o *fuzzAnswerOracle) check(t *testing.T, p *Program, frame []byte) {
	t.Helper()
	defer func() {
		if t.Failed() {
			t.Logf("frame (%d bytes): %#v", len(frame), frame)
		}
	}()
	r := execFrame(t, p, frame)
	switch r.verdict {
	case xdpTX, xdpPass, xdpRedirect, xdpDrop:
	default:
		t.Fatalf("verdict %d", r.verdict)
	}
	reason := NumReasons
	for i, d := range r.reasons {
		if d == 0 {
			continue
		}
		if d != 1 || reason != NumReasons {
			t.Fatalf("reason counters went up by %v, want one by one", r.reasons)
		}
		reason = Reason(i)
	}
	if reason == NumReasons {
		t.Fatalf("no reason counter went up (verdict %d)", r.verdict)
	}
	event := noEvent
	for i, d := range r.events {
		if d == 0 {
			continue
		}
		if d != 1 || event != noEvent {
			t.Fatalf("answer counters went up by %v, want at most one by one", r.events)
		}
		event = AnswerEvent(i)
	}
	if reason.verdict() != r.verdict {
		t.Errorf("verdict %d, counted %s", r.verdict, reason)
	}
	if (event == AnswerHit) != (reason == ReasonTX) {
		t.Errorf("counted %s and answer event %s", reason, fuzzEventName(event))
	}

	want := o.model(frame)
	if c := classify(frame, answerListeners, o.steered); reason != c && (reason != ReasonTX || c != o.steered) {
		t.Errorf("counted %s, classify says %s", reason, c)
	}
	if event != want.event {
		t.Errorf("answer event %s, the oracle says %s (%s)", fuzzEventName(event), fuzzEventName(want.event), want.why)
	}
	o.checkInput(t, want)
	for slot, d := range r.hits {
		var w uint64
		if r.verdict == xdpTX && want.entry != nil && uint32(slot) == want.entry.slot {
			w = 1
		}
		if d != w {
			t.Errorf("answer hits of slot %d went up by %d, want %d", slot, d, w)
		}
	}

	if r.verdict != xdpTX {
		if !bytes.Equal(r.out, frame) {
			t.Errorf("verdict %d, but the frame changed\n got %x\nwant %x", r.verdict, r.out, frame)
		}
		return
	}
	if want.event != AnswerHit {
		t.Fatalf("answered with XDP_TX a frame the oracle does not answer: %s (%s)", fuzzEventName(want.event), want.why)
	}
	if port := binary.BigEndian.Uint16(frame[want.dns-6:]); port != 53 {
		t.Errorf("answered a query to port %d", port)
	}
	payload := bytes.Clone(want.entry.resp)
	copy(payload, want.msg[:2])
	copy(payload[12:], want.name)
	checkReply(t, frame, r.out, want.l3, payload)
	if len(r.out) <= want.dns {
		return
	}
	var q, a dns.Msg
	if err := q.Unpack(want.msg); err != nil {
		t.Fatalf("miekg/dns cannot unpack the query: %v", err)
	}
	if err := a.Unpack(r.out[want.dns:]); err != nil {
		t.Fatalf("miekg/dns cannot unpack the reply: %v", err)
	}
	if !a.Response || a.Id != q.Id || len(a.Question) != 1 || a.Question[0] != q.Question[0] {
		t.Errorf("reply ID %#x QR %v question %v, want ID %#x and question %v", a.Id, a.Response, a.Question, q.Id, q.Question)
	}
}

// checkInput cross-checks the oracle's parse of a query it keys with
// miekg/dns: one question with that name (A-Z lowered), type and class,
// the RD and CD bits, an OPT record (with its DO bit) as keyed.
func (o *fuzzAnswerOracle) checkInput(t *testing.T, c fuzzAnswerCase) {
	t.Helper()
	if c.event == noEvent || c.event == AnswerMissNotExact {
		return
	}
	var m dns.Msg
	if err := m.Unpack(c.msg); err != nil {
		t.Errorf("the oracle keys a query miekg/dns cannot unpack: %v", err)
		return
	}
	if len(m.Question) != 1 {
		t.Errorf("the oracle keys a query with %d questions", len(m.Question))
		return
	}
	wire := make([]byte, 256)
	n, err := dns.PackDomainName(m.Question[0].Name, wire, 0, nil, false)
	if err != nil || !bytes.Equal(wire[:n], c.name) {
		t.Errorf("question name %q packs to %x (%v), the oracle read %x", m.Question[0].Name, wire[:n], err, c.name)
	}
	var flags uint8
	if m.RecursionDesired {
		flags |= KeyRD
	}
	if m.CheckingDisabled {
		flags |= KeyCD
	}
	if opt := m.IsEdns0(); opt != nil {
		flags |= KeyOPT
		if opt.Do() {
			flags |= KeyDO
		}
	}
	key := fuzzAnswerKey{name: string(fuzzLower(c.name)), qtype: m.Question[0].Qtype, qclass: m.Question[0].Qclass, flags: flags}
	if c.entry != nil && c.entry.key != key {
		t.Errorf("miekg/dns reads the key %+v, the oracle %+v", key, c.entry.key)
	}
}

// fuzzEventName is e's name, "none" for noEvent.
func fuzzEventName(e AnswerEvent) string {
	if e == noEvent {
		return "none"
	}
	return e.String()
}

// fuzzLower lower-cases the ASCII letters A-Z of a wire name, and only
// them, as the cache does.
func fuzzLower(name []byte) []byte {
	b := bytes.Clone(name)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return b
}

// fuzzFixLengths returns frame with the IP total length (IPv4) or payload
// length (IPv6) and the UDP length of a datagram that ends with the frame,
// and the IPv4 header checksum right, as far as the headers are there.
func fuzzFixLengths(frame []byte) []byte {
	b := bytes.Clone(frame)
	be := binary.BigEndian
	if len(b) < 14 {
		return b
	}
	l3, etype := 14, be.Uint16(b[12:])
	for range 2 {
		if etype != 0x8100 && etype != 0x88a8 {
			break
		}
		if len(b) < l3+4 {
			return b
		}
		etype, l3 = be.Uint16(b[l3+2:]), l3+4
	}
	ip := b[l3:]
	switch etype {
	case 0x0800:
		if len(ip) < 20 {
			return b
		}
		hl := int(ip[0]&0xf) * 4
		be.PutUint16(ip[2:], uint16(len(ip)))
		if hl < 20 || len(ip) < hl {
			return b
		}
		if ip[9] == 17 && len(ip) >= hl+8 {
			be.PutUint16(ip[hl+4:], uint16(len(ip)-hl))
		}
		ip[10], ip[11] = 0, 0
		be.PutUint16(ip[10:], ^csum(ip[:hl]))
	case 0x86dd:
		if len(ip) < 40 {
			return b
		}
		be.PutUint16(ip[4:], uint16(len(ip)-40))
		if ip[6] == 17 && len(ip) >= 48 {
			be.PutUint16(ip[44:], uint16(len(ip)-40))
		}
	}
	return b
}
