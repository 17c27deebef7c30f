package xsk

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/miekg/dns"

	"xdoh/bpf"
	"xdoh/forwarder"
	"xdoh/forwarder/cache"
	"xdoh/internal/dnsmsg"
)

// xdpTX is the XDP_TX verdict.
const xdpTX = 3

// The listeners of the tier tests: both answer from the map.
var (
	tierListen4 = netip.MustParseAddrPort("192.0.2.1:53")
	tierListen6 = netip.MustParseAddrPort("[2001:db8::1]:53")
)

// tierKC is the tier config of most tests: two hits in a window promote.
var tierKC = KernelCache{Mode: KernelCacheOn, Entries: 64, Hits: 2}

// loadTierProgram loads the XDP program with the answer tier and sets both
// test listeners to answer from it, skipping where BPF cannot be used.
func loadTierProgram(tb testing.TB, entries int) *bpf.Program {
	tb.Helper()
	p, err := bpf.Load(bpf.Options{Queues: 1, Answers: true, AnswerEntries: entries})
	if err != nil && !errors.As(err, new(*ebpf.VerifierError)) &&
		(errors.Is(err, os.ErrPermission) || errors.Is(err, ebpf.ErrNotSupported)) {
		tb.Skipf("skipping: loading the XDP program needs root or CAP_BPF and a recent kernel (uid %d): %v", os.Geteuid(), err)
	}
	if err != nil {
		tb.Fatalf("%+v", err)
	}
	tb.Cleanup(func() {
		if err := p.Close(); err != nil {
			tb.Errorf("closing the program: %v", err)
		}
	})
	if err := p.SetListeners([]bpf.Listener{
		{Addr: tierListen4, Answers: true},
		{Addr: tierListen6, Answers: true},
	}); err != nil {
		tb.Fatal(err)
	}
	return p
}

// tierFrame is a frame carrying payload from a unicast client to the test
// listener of the family.
func tierFrame(tb testing.TB, v6 bool, payload []byte) []byte {
	tb.Helper()
	q := query{payload: payload, src: client4, dst: tierListen4.Addr()}
	if v6 {
		q.v6, q.src, q.dst = true, client6, tierListen6.Addr()
	}
	return q.build(tb)
}

// tierRun is what one run of the program did with a frame.
type tierRun struct {
	verdict uint32
	out     []byte
	events  bpf.AnswerCounters // increments
}

// event is the one answer event counted, NumAnswerEvents if not exactly one.
func (r tierRun) event() bpf.AnswerEvent {
	e := bpf.NumAnswerEvents
	for i, n := range r.events {
		switch {
		case n == 0:
		case n == 1 && e == bpf.NumAnswerEvents:
			e = bpf.AnswerEvent(i)
		default:
			return bpf.NumAnswerEvents
		}
	}
	return e
}

// runTierProgram runs frame through p once (BPF_PROG_RUN).
func runTierProgram(tb testing.TB, p *bpf.Program, frame []byte) tierRun {
	tb.Helper()
	a0, err := p.AnswerCounters()
	if err != nil {
		tb.Fatal(err)
	}
	opts := ebpf.RunOptions{Data: frame, DataOut: make([]byte, len(frame)+2048)}
	verdict, err := p.XDP().Run(&opts)
	if err != nil {
		tb.Fatalf("running the program on %d bytes: %v", len(frame), err)
	}
	a1, err := p.AnswerCounters()
	if err != nil {
		tb.Fatal(err)
	}
	r := tierRun{verdict: verdict, out: opts.DataOut}
	for i := range a1 {
		r.events[i] = a1[i] - a0[i]
	}
	return r
}

// tierClock is a cache clock the test moves by hand.
type tierClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *tierClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *tierClock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// tierPeeker is the tier's Peeker over a real cache, as forwarder.Forwarder
// reads it, with hooks for tests of the tier's own checks and races.
type tierPeeker struct {
	c *cache.Cache
	// mangle edits every answer Peek returns.
	mangle func(resp []byte)
	// during runs after the cache lookup, before Peek returns.
	during func()
	// hot counts Hot calls, prefetches the claims it won.
	hot, prefetches atomic.Int64
}

// Hot counts the calls and claims the prefetch as the forwarder does.
func (p *tierPeeker) Hot(r *forwarder.Request) {
	if dnsmsg.Parse(r.Msg, &r.Q) != nil {
		return
	}
	p.hot.Add(1)
	if p.c.ClaimPrefetch(&r.Q) {
		p.prefetches.Add(1)
	}
}

func (p *tierPeeker) Peek(r *forwarder.Request, out []byte) ([]byte, int64, bool) {
	if dnsmsg.Parse(r.Msg, &r.Q) != nil {
		return nil, 0, false
	}
	resp, expires, ok := p.c.Peek(&r.Q, out)
	if ok && p.mangle != nil {
		p.mangle(resp)
	}
	if p.during != nil {
		p.during()
	}
	return resp, expires, ok
}

// tierRig is a tier over a real cache and a loaded program, refreshed by
// hand with one loop's hot table.
type tierRig struct {
	t     *tier
	c     *cache.Cache
	clock *tierClock
	peek  *tierPeeker
	prog  *bpf.Program
	hot   *hotTable
	out   []byte
}

// newTierRig builds a rig. The cache's clock is the rig's (starting now)
// unless cc has one; with onChange the cache's OnChange is the tier's
// invalidate, as the app wires it through Server.InvalidateKernel.
func newTierRig(tb testing.TB, kc KernelCache, cc cache.Config, onChange bool) *tierRig {
	tb.Helper()
	r := &tierRig{
		clock: &tierClock{t: time.Now()},
		prog:  loadTierProgram(tb, kc.Entries),
		hot:   newHotTable(),
		out:   make([]byte, answerRoom),
	}
	if cc.Now == nil {
		cc.Now = r.clock.now
	}
	if onChange {
		cc.OnChange = func(key []byte) { r.t.invalidate(key) }
	}
	r.c = cache.New(cc)
	r.peek = &tierPeeker{c: r.c}
	r.t = newTier(kc, r.peek, "test")
	r.t.progs = []*bpf.Program{r.prog}
	return r
}

// put stores resp, the answer to q, in the cache.
func (r *tierRig) put(tb testing.TB, q, resp *dns.Msg) {
	tb.Helper()
	r.putBytes(tb, mustPack(tb, q), mustPack(tb, resp))
}

func (r *tierRig) putBytes(tb testing.TB, qb, rb []byte) {
	tb.Helper()
	var q dnsmsg.Query
	if err := dnsmsg.Parse(qb, &q); err != nil {
		tb.Fatalf("query: %v", err)
	}
	qend, err := dnsmsg.CheckResponse(rb, &q)
	if err != nil {
		tb.Fatalf("response: %v", err)
	}
	r.c.Put(&q, rb, qend)
}

// get is the cache's answer to msg as a UDP client gets it now.
func (r *tierRig) get(tb testing.TB, msg []byte) ([]byte, bool) {
	tb.Helper()
	var q dnsmsg.Query
	if err := dnsmsg.Parse(msg, &q); err != nil {
		tb.Fatalf("query: %v", err)
	}
	resp, res := r.c.Get(&q, r.out, q.MaxUDPSize())
	if res == cache.Miss {
		return nil, false
	}
	return bytes.Clone(resp), true
}

// hits is n cache hits for msg as the loop counts them: the answer it sent
// (truncated to the client's size) and then tier.hit. The answer must be
// cached.
func (r *tierRig) hits(tb testing.TB, msg []byte, n int) {
	tb.Helper()
	for range n {
		resp, ok := r.get(tb, msg)
		if !ok {
			tb.Fatal("hit on an answer the cache does not have")
		}
		req := forwarder.Request{Msg: msg, Transport: forwarder.TransportUDP}
		if err := dnsmsg.Parse(msg, &req.Q); err != nil {
			tb.Fatal(err)
		}
		r.t.hit(r.hot, &req, len(resp))
	}
}

func (r *tierRig) refresh() { r.t.refresh([]*hotTable{r.hot}) }

func (r *tierRig) wantStats(tb testing.TB, want TierStats) {
	tb.Helper()
	if got := r.t.stats(); got != want {
		tb.Errorf("tier stats %+v, want %+v", got, want)
	}
}

// wantTX runs frame and checks that the program answers it with XDP_TX and
// exactly the cache's answer to its query now (client's ID and name case).
func (r *tierRig) wantTX(tb testing.TB, frame []byte) {
	tb.Helper()
	v, ok := Parse(frame)
	if !ok {
		tb.Fatal("test frame does not parse")
	}
	payload := bytes.Clone(v.Payload(frame))
	want, ok := r.get(tb, payload)
	if !ok {
		tb.Fatal("the cache does not answer the query")
	}
	res := runTierProgram(tb, r.prog, frame)
	if res.verdict != xdpTX {
		tb.Fatalf("verdict %d, want XDP_TX; answer events %v", res.verdict, res.events)
	}
	checkReply(tb, frame, res.out, want)
	rv, ok := Parse(res.out)
	if !ok {
		tb.Fatal("reply does not parse")
	}
	got := rv.Payload(res.out)
	if len(got) < len(payload) || !bytes.Equal(got[:2], payload[:2]) {
		tb.Errorf("reply ID % x, query's % x", got[:2], payload[:2])
	}
	var q dnsmsg.Query
	if err := dnsmsg.Parse(payload, &q); err == nil && !bytes.Equal(got[12:12+len(q.Name)], q.Name) {
		tb.Errorf("reply name %q, query's %q", got[12:12+len(q.Name)], q.Name)
	}
}

// wantNoTX runs frame and checks that the program does not answer it.
func (r *tierRig) wantNoTX(tb testing.TB, frame []byte, want bpf.AnswerEvent) {
	tb.Helper()
	res := runTierProgram(tb, r.prog, frame)
	if res.verdict == xdpTX {
		tb.Fatal("answered with XDP_TX")
	}
	if e := res.event(); e != want {
		tb.Errorf("answer event %v (%v), want %v", e, res.events, want)
	}
}

// tierQuery is a recursive query for name's A records, ID 1, with an empty
// EDNS0 OPT when edns.
func tierQuery(name string, edns bool) *dns.Msg {
	m := new(dns.Msg).SetQuestion(name, dns.TypeA)
	m.Id = 1
	if edns {
		m.SetEdns0(1232, false)
	}
	return m
}

// tierAnswer is a NOERROR answer to q with n A records of ttl, the first
// address first.
func tierAnswer(q *dns.Msg, ttl uint32, n int, first net.IP) *dns.Msg {
	r := new(dns.Msg).SetReply(q)
	r.RecursionAvailable = true
	ip := first.To4()
	for i := range n {
		a := net.IPv4(ip[0], ip[1], ip[2], ip[3]+byte(i))
		r.Answer = append(r.Answer, &dns.A{
			Hdr: dns.RR_Header{Name: q.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: ttl},
			A:   a,
		})
	}
	if o := q.IsEdns0(); o != nil {
		r.SetEdns0(1232, o.Do())
	}
	return r
}

var (
	addrOld = net.IPv4(192, 0, 2, 10)
	addrNew = net.IPv4(198, 51, 100, 20)
)

// TestExact proves exact() accepts exactly the queries the XDP program
// answers from its map: each case is also run through the program, which
// must count it as not exact (ANSWER_MISS_NOT_EXACT) exactly when exact()
// rejects it, and as absent from the (empty) map otherwise.
func TestExact(t *testing.T) {
	pack := func(m *dns.Msg) []byte { return mustPack(t, m) }
	plain := pack(tierQuery("example.com.", false))
	edit := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(plain)) }
	withOPT := func(f func(o *dns.OPT, m *dns.Msg)) []byte {
		m := tierQuery("example.com.", true)
		f(m.IsEdns0(), m)
		return pack(m)
	}
	// name is a wire name of labels of the given lengths.
	name := func(labels ...int) string {
		var s strings.Builder
		for i, n := range labels {
			s.WriteString(strings.Repeat(string(rune('a'+i%26)), n))
			s.WriteByte('.')
		}
		return s.String()
	}
	ones := make([]int, 63) // 63 one-letter labels: 127 bytes, 64 labels with the root
	for i := range ones {
		ones[i] = 1
	}
	extraA := &dns.A{Hdr: dns.RR_Header{Name: "example.com.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 1}, A: addrOld}

	tests := []struct {
		name string
		msg  []byte
		want bool
	}{
		{"plain", plain, true},
		{"empty OPT", withOPT(func(*dns.OPT, *dns.Msg) {}), true},
		{"empty OPT with DO", withOPT(func(o *dns.OPT, _ *dns.Msg) { o.SetDo() }), true},
		{"empty OPT, UDP size 0", withOPT(func(o *dns.OPT, _ *dns.Msg) { o.SetUDPSize(0) }), true},
		{"RD and CD clear", pack(func() *dns.Msg {
			m := tierQuery("example.com.", false)
			m.RecursionDesired = false
			return m
		}()), true},
		{"CD set", pack(func() *dns.Msg {
			m := tierQuery("example.com.", false)
			m.CheckingDisabled = true
			return m
		}()), true},
		{"name of 128 bytes", pack(tierQuery(name(63, 62), false)), true},
		{"name of 127 bytes in 63 labels", pack(tierQuery(name(ones...), false)), true},

		{"OPT with a cookie", withOPT(func(o *dns.OPT, _ *dns.Msg) {
			o.Option = append(o.Option, &dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708"})
		}), false},
		{"EDNS version 1", withOPT(func(o *dns.OPT, _ *dns.Msg) { o.SetVersion(1) }), false},
		{"TC set", edit(func(b []byte) []byte { b[2] |= 0x02; return b }), false},
		{"opcode STATUS", edit(func(b []byte) []byte { b[2] |= 2 << 3; return b }), false},
		{"opcode NOTIFY", edit(func(b []byte) []byte { b[2] |= 4 << 3; return b }), false},
		{"QR set", edit(func(b []byte) []byte { b[2] |= 0x80; return b }), false},
		{"trailing byte", append(bytes.Clone(plain), 0), false},
		{"trailing byte after OPT", append(withOPT(func(*dns.OPT, *dns.Msg) {}), 0), false},
		{"OPT and another additional record", withOPT(func(_ *dns.OPT, m *dns.Msg) {
			m.Extra = append(m.Extra, extraA)
		}), false},
		{"one additional record, not OPT", pack(func() *dns.Msg {
			m := tierQuery("example.com.", false)
			m.Extra = append(m.Extra, extraA)
			return m
		}()), false},
		{"answer record", pack(func() *dns.Msg {
			m := tierQuery("example.com.", false)
			m.Answer = append(m.Answer, extraA)
			return m
		}()), false},
		{"two questions", edit(func(b []byte) []byte {
			b[5] = 2
			return append(b, b[12:]...)
		}), false},
		{"compressed name", append(bytes.Clone(plain[:12]),
			3, 'w', 'w', 'w', 0xc0, 12, // www + a pointer to the header's end
			0, 1, 0, 1), false},
		{"name of 129 bytes", pack(tierQuery(name(63, 63), false)), false},
		{"name of 255 bytes", pack(tierQuery(name(63, 63, 63, 61), false)), false},
		{"header only", bytes.Clone(plain[:12]), false},
	}
	var prog *bpf.Program
	if os.Geteuid() == 0 {
		prog = loadTierProgram(t, 64)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := exact(tt.msg); got != tt.want {
				t.Errorf("exact = %v, want %v (% x)", got, tt.want, tt.msg)
			}
			if len(tt.msg) > maxCandidateMsg && tt.want {
				t.Errorf("an exact query of %d bytes is longer than maxCandidateMsg (%d): hit drops it", len(tt.msg), maxCandidateMsg)
			}
			if prog == nil {
				return
			}
			want := bpf.AnswerMissNotExact
			if tt.want {
				want = bpf.AnswerMissAbsent
			}
			for _, v6 := range []bool{false, true} {
				res := runTierProgram(t, prog, tierFrame(t, v6, tt.msg))
				if e := res.event(); e != want {
					t.Errorf("v6 %v: the program counted %v (%v), exact says %v", v6, e, res.events, tt.want)
				}
			}
		})
	}
}

// TestTierPromotes proves that Hits cache hits in one window and one
// refresh put the answer into the map, and that the program then answers
// the question itself (IPv4 and IPv6, with and without an empty OPT) with
// exactly the cache's answer for the client's query: its ID and 0x20 name
// case, the cache's TTLs of that second. Before the refresh it does not.
func TestTierPromotes(t *testing.T) {
	r := newTierRig(t, tierKC, cache.Config{}, false)
	type client struct {
		name  string
		edns  bool
		frame [2][]byte // IPv4, IPv6
	}
	var clients []*client
	for _, edns := range []bool{false, true} {
		q := tierQuery("example.com.", edns)
		r.put(t, q, tierAnswer(q, 300, 2, addrOld))
		c := &client{name: "plain", edns: edns}
		if edns {
			c.name = "edns"
		}
		cq := tierQuery("eXaMpLe.CoM.", edns)
		cq.Id = 0xbeef
		for i, v6 := range []bool{false, true} {
			c.frame[i] = tierFrame(t, v6, mustPack(t, cq))
		}
		clients = append(clients, c)
		// Not in the map yet.
		r.wantNoTX(t, c.frame[0], bpf.AnswerMissAbsent)
		r.hits(t, mustPack(t, q), tierKC.Hits)
		r.wantNoTX(t, c.frame[1], bpf.AnswerMissAbsent) // candidates wait for the tick
	}
	r.wantStats(t, TierStats{})
	r.refresh()
	r.wantStats(t, TierStats{Promotions: 2, Entries: 2})
	for _, c := range clients {
		for i, fam := range []string{"ipv4", "ipv6"} {
			t.Run(c.name+"/"+fam, func(t *testing.T) { r.wantTX(t, c.frame[i]) })
		}
	}
	// The other RD flag is another question: not answered.
	q := tierQuery("example.com.", false)
	q.RecursionDesired = false
	r.wantNoTX(t, tierFrame(t, false, mustPack(t, q)), bpf.AnswerMissAbsent)
}

// TestTierNotPromoted proves that answers the kernel must not give are
// never promoted however hot: SERVFAIL, truncated, larger than MaxAnswer,
// about to expire or gone, queries the program would not answer exactly,
// and questions short of Hits hits in a window. The first row is the
// control: the same steps with a good answer do promote.
func TestTierNotPromoted(t *testing.T) {
	q := tierQuery("example.com.", false)
	qb := mustPack(t, q)
	qe := tierQuery("example.com.", true)
	qeb := mustPack(t, qe)
	qc := tierQuery("example.com.", true)
	qc.IsEdns0().Option = []dns.EDNS0{&dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708"}}
	qcb := mustPack(t, qc)
	big := func(q *dns.Msg) *dns.Msg { return tierAnswer(q, 300, 25, addrOld) } // 700+ bytes
	tests := []struct {
		name     string
		cc       cache.Config
		msg      []byte // the hot query; its frame is run at the end
		setup    func(t *testing.T, r *tierRig)
		promoted bool
		miss     bpf.AnswerEvent // what the program counts for msg (0: AnswerMissAbsent)
	}{
		{name: "control", msg: qb, promoted: true, setup: func(t *testing.T, r *tierRig) {
			r.put(t, q, tierAnswer(q, 300, 1, addrOld))
			r.hits(t, qb, 2)
		}},
		{name: "SERVFAIL", cc: cache.Config{ServFailTTL: 10 * time.Second}, msg: qb, setup: func(t *testing.T, r *tierRig) {
			sf := new(dns.Msg).SetRcode(q, dns.RcodeServerFailure)
			r.put(t, q, sf)
			r.hits(t, qb, 2) // fails unless the cache keeps SERVFAIL
		}},
		{name: "TC set", msg: qb, setup: func(t *testing.T, r *tierRig) {
			// The cache refuses truncated answers, so only a Peeker
			// breaking its contract can hand the tier one: mangle
			// the answer it returns, to test tier.entry's own check.
			tc := tierAnswer(q, 300, 1, addrOld)
			tc.Truncated = true
			r.put(t, q, tc)
			if _, ok := r.get(t, qb); ok {
				t.Fatal("the cache stored a truncated answer")
			}
			r.put(t, q, tierAnswer(q, 300, 1, addrOld))
			r.peek.mangle = func(resp []byte) { resp[2] |= 0x02 }
			r.hits(t, qb, 2)
		}},
		{name: "larger than MaxAnswer, truncated for the client", msg: qb, setup: func(t *testing.T, r *tierRig) {
			// The loop counts the 512-byte TC answer it sent: the
			// candidate reaches the tick, Peek's answer is too big.
			r.put(t, q, big(q))
			r.hits(t, qb, 2)
			if r.hot.n != 1 {
				t.Fatalf("%d candidates, want 1 (the truncated answer fits MaxAnswer)", r.hot.n)
			}
		}},
		{name: "larger than MaxAnswer, EDNS", msg: qeb, setup: func(t *testing.T, r *tierRig) {
			r.put(t, qe, big(qe))
			r.hits(t, qeb, 2)
		}},
		{name: "larger than MaxAnswer by the tick", msg: qb, setup: func(t *testing.T, r *tierRig) {
			r.put(t, q, tierAnswer(q, 300, 1, addrOld))
			r.hits(t, qb, 2)
			r.put(t, q, big(q)) // a new, larger answer before the tick
		}},
		{name: "TTL 1", msg: qb, setup: func(t *testing.T, r *tierRig) {
			r.put(t, q, tierAnswer(q, 1, 1, addrOld))
			r.hits(t, qb, 2)
		}},
		{name: "TTL 2", msg: qb, setup: func(t *testing.T, r *tierRig) {
			r.put(t, q, tierAnswer(q, 2, 1, addrOld)) // under 2 s left once any time passed
			r.hits(t, qb, 2)
		}},
		{name: "expired by the tick", msg: qb, setup: func(t *testing.T, r *tierRig) {
			r.put(t, q, tierAnswer(q, 5, 1, addrOld))
			r.hits(t, qb, 2)
			r.clock.advance(6 * time.Second)
		}},
		{name: "EDNS option (cookie)", msg: qcb, miss: bpf.AnswerMissNotExact, setup: func(t *testing.T, r *tierRig) {
			r.put(t, qc, tierAnswer(qc, 300, 1, addrOld))
			r.hits(t, qcb, 2)
			if r.hot.n != 1 {
				t.Fatalf("%d candidates, want 1", r.hot.n)
			}
		}},
		{name: "fewer hits than Hits", msg: qb, setup: func(t *testing.T, r *tierRig) {
			r.put(t, q, tierAnswer(q, 300, 1, addrOld))
			r.hits(t, qb, 1)
		}},
		{name: "hits in two windows", msg: qb, setup: func(t *testing.T, r *tierRig) {
			r.put(t, q, tierAnswer(q, 300, 1, addrOld))
			r.hits(t, qb, 1)
			for range int(time.Second / tierTick) { // the next window
				r.refresh()
			}
			r.hits(t, qb, 1)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newTierRig(t, tierKC, tt.cc, false)
			tt.setup(t, r)
			r.refresh()
			if tt.promoted {
				r.wantStats(t, TierStats{Promotions: 1, Entries: 1})
				r.wantTX(t, tierFrame(t, false, tt.msg))
				return
			}
			r.wantStats(t, TierStats{})
			miss := tt.miss
			if miss == 0 {
				miss = bpf.AnswerMissAbsent
			}
			r.wantNoTX(t, tierFrame(t, false, tt.msg), miss)
		})
	}
}

// promoteOne puts an answer for q (addr first) and promotes it.
func (r *tierRig) promoteOne(tb testing.TB, q *dns.Msg, addr net.IP) {
	tb.Helper()
	before := r.t.stats()
	r.put(tb, q, tierAnswer(q, 300, 1, addr))
	r.hits(tb, mustPack(tb, q), r.t.cfg.Hits)
	r.refresh()
	if after := r.t.stats(); after.Promotions != before.Promotions+1 {
		tb.Fatalf("not promoted: stats %+v, before %+v", after, before)
	}
}

// tierKey is the cache key of msg (dnsmsg.AppendKey's form).
func tierKey(tb testing.TB, m *dns.Msg) []byte {
	tb.Helper()
	var q dnsmsg.Query
	if err := dnsmsg.Parse(mustPack(tb, m), &q); err != nil {
		tb.Fatal(err)
	}
	return dnsmsg.AppendKey(nil, &q)
}

// TestTierInvalidate proves that invalidate with a promoted question's
// cache key takes it out of the map at once, that other keys leave it
// alone, and that with the cache's OnChange wired to it (as the app does) a
// Put of a new answer does the same, after which the new answer is the one
// promoted.
func TestTierInvalidate(t *testing.T) {
	q := tierQuery("example.com.", false)
	other := tierQuery("example.net.", false)
	frame := tierFrame(t, false, mustPack(t, q))

	t.Run("direct", func(t *testing.T) {
		r := newTierRig(t, tierKC, cache.Config{}, false)
		r.promoteOne(t, q, addrOld)
		r.wantTX(t, frame)

		aaaa := q.Copy()
		aaaa.Question[0].Qtype = dns.TypeAAAA
		for _, k := range [][]byte{nil, {0, 0, 1}, tierKey(t, other), tierKey(t, aaaa), tierKey(t, tierQuery("example.com.", true))} {
			r.t.invalidate(k)
		}
		r.wantStats(t, TierStats{Promotions: 1, Entries: 1})
		r.wantTX(t, frame)

		// Out of the kernel at once; out of the books at the next tick
		// (invalidate never waits for the tier's lock).
		r.t.invalidate(tierKey(t, q))
		r.wantNoTX(t, frame, bpf.AnswerMissAbsent)
		r.refresh()
		r.wantStats(t, TierStats{Promotions: 1, Evictions: 1})
		r.t.invalidate(tierKey(t, q)) // again: nothing left to remove
		r.refresh()
		r.wantStats(t, TierStats{Promotions: 1, Evictions: 1})
	})

	t.Run("OnChange", func(t *testing.T) {
		r := newTierRig(t, tierKC, cache.Config{}, true)
		r.promoteOne(t, q, addrOld)
		r.wantTX(t, frame)

		r.put(t, other, tierAnswer(other, 300, 1, addrNew))
		r.wantStats(t, TierStats{Promotions: 1, Entries: 1})
		r.wantTX(t, frame)

		r.put(t, q, tierAnswer(q, 300, 1, addrNew))
		r.wantNoTX(t, frame, bpf.AnswerMissAbsent)

		r.refresh() // no new hits: stays out
		r.wantStats(t, TierStats{Promotions: 1, Evictions: 1})
		r.wantNoTX(t, frame, bpf.AnswerMissAbsent)

		// The hits that promoted it are in this window: hit counts a
		// question once per window, when it reaches Hits.
		r.t.epoch.Add(1)
		r.hits(t, mustPack(t, q), tierKC.Hits)
		r.refresh()
		r.wantStats(t, TierStats{Promotions: 2, Evictions: 1, Entries: 1})
		r.wantTX(t, frame) // the new answer, as the cache gives it
	})
}

// TestTierInvalidateDuringPromotion proves the coherence OnChange promises
// for a question being promoted while a new answer is stored: the tier's
// Peek has the old answer, then the Put (both OnChange calls) completes before
// the tick writes the map. The kernel must not then answer with the old
// answer that the cache no longer has.
func TestTierInvalidateDuringPromotion(t *testing.T) {
	r := newTierRig(t, tierKC, cache.Config{}, true)
	q := tierQuery("example.com.", false)
	qb := mustPack(t, q)
	frame := tierFrame(t, false, qb)
	r.put(t, q, tierAnswer(q, 300, 1, addrOld))
	r.hits(t, qb, tierKC.Hits)

	newer := mustPack(t, tierAnswer(q, 300, 1, addrNew))
	var pq dnsmsg.Query
	if err := dnsmsg.Parse(qb, &pq); err != nil {
		t.Fatal(err)
	}
	qend, err := dnsmsg.CheckResponse(newer, &pq)
	if err != nil {
		t.Fatal(err)
	}
	putDone := make(chan struct{})
	var once sync.Once
	r.peek.during = func() {
		once.Do(func() {
			go func() {
				r.c.Put(&pq, newer, qend)
				close(putDone)
			}()
			// An invalidate that waits for the tick is fine too.
			select {
			case <-putDone:
			case <-time.After(200 * time.Millisecond):
			}
		})
	}
	r.refresh()
	select {
	case <-putDone:
	case <-time.After(10 * time.Second):
		t.Fatal("the Put never returned")
	}
	r.peek.during = nil

	res := runTierProgram(t, r.prog, frame)
	if res.verdict != xdpTX {
		return // not in the map: coherent
	}
	want, _ := r.get(t, qb)
	v, _ := Parse(res.out)
	if got := v.Payload(res.out); !bytes.Equal(got, want) {
		m := new(dns.Msg)
		_ = m.Unpack(got)
		t.Errorf("the kernel answers %v after the cache stored %s (tier stats %+v)", m.Answer, addrNew, r.t.stats())
	}
}

// TestTierIdleDemotes proves that a promoted answer the program never
// serves is demoted after tierIdle refreshes, and one it serves between
// refreshes (hits read back through AnswerHits) stays.
func TestTierIdleDemotes(t *testing.T) {
	r := newTierRig(t, tierKC, cache.Config{}, false)
	idle := tierQuery("idle.example.", false)
	busy := tierQuery("busy.example.", false)
	r.put(t, idle, tierAnswer(idle, 300, 1, addrOld))
	r.put(t, busy, tierAnswer(busy, 300, 1, addrOld))
	r.hits(t, mustPack(t, idle), tierKC.Hits)
	r.hits(t, mustPack(t, busy), tierKC.Hits)
	r.refresh()
	r.wantStats(t, TierStats{Promotions: 2, Entries: 2})

	idleFrame := tierFrame(t, false, mustPack(t, idle))
	busyFrame := tierFrame(t, true, mustPack(t, busy))
	for i := 1; i <= 3*tierIdle; i++ {
		r.wantTX(t, busyFrame)
		r.refresh()
		want := TierStats{Promotions: 2, Entries: 2}
		if i >= tierIdle {
			want = TierStats{Promotions: 2, Evictions: 1, Entries: 1}
		}
		if got := r.t.stats(); got != want {
			t.Fatalf("after %d refreshes: stats %+v, want %+v", i, got, want)
		}
	}
	r.wantNoTX(t, idleFrame, bpf.AnswerMissAbsent)
	r.wantTX(t, busyFrame)
}

// TestTierLock proves that lock empties the map at once (the program stops
// answering) and that a refresh started while locked waits for unlock,
// then promotes from the cache as usual.
func TestTierLock(t *testing.T) {
	r := newTierRig(t, tierKC, cache.Config{}, false)
	q := tierQuery("example.com.", false)
	qb := mustPack(t, q)
	frame := tierFrame(t, false, qb)
	r.promoteOne(t, q, addrOld)
	r.wantTX(t, frame)

	unlock := r.t.lock()
	unlocked := false
	defer func() {
		if !unlocked {
			unlock()
		}
	}()
	r.wantStats(t, TierStats{Promotions: 1, Evictions: 1})
	r.wantNoTX(t, frame, bpf.AnswerMissAbsent)

	r.t.epoch.Add(1) // the next window: the promoting hits were counted in this one
	r.hits(t, qb, tierKC.Hits)
	done := make(chan struct{})
	go func() {
		r.refresh()
		close(done)
	}()
	select {
	case <-done:
		t.Fatal("refresh ran while the tier was locked")
	case <-time.After(150 * time.Millisecond):
	}
	r.wantStats(t, TierStats{Promotions: 1, Evictions: 1})
	r.wantNoTX(t, frame, bpf.AnswerMissAbsent)

	unlocked = true
	unlock()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("refresh did not finish after unlock")
	}
	r.wantStats(t, TierStats{Promotions: 2, Evictions: 1, Entries: 1})
	r.wantTX(t, frame)
}

// answerTTL is the TTL of the first answer record of payload.
func answerTTL(tb testing.TB, payload []byte) uint32 {
	tb.Helper()
	m := new(dns.Msg)
	if err := m.Unpack(payload); err != nil || len(m.Answer) == 0 {
		tb.Fatalf("answer %v: % x", err, payload)
	}
	return m.Answer[0].Header().Ttl
}

// TestTierTTLRefresh proves that a refresh rewrites a promoted answer with
// its TTLs as of now: after the cache's clock moved, the program's answer
// is again exactly the cache's.
func TestTierTTLRefresh(t *testing.T) {
	r := newTierRig(t, tierKC, cache.Config{}, false)
	q := tierQuery("example.com.", true)
	qb := mustPack(t, q)
	frame := tierFrame(t, true, qb)
	r.promoteOne(t, q, addrOld)
	r.wantTX(t, frame)
	if res := runTierProgram(t, r.prog, frame); res.verdict != xdpTX {
		t.Fatal("not answered")
	} else if v, _ := Parse(res.out); answerTTL(t, v.Payload(res.out)) != 300 {
		t.Fatalf("TTL %d, want 300", answerTTL(t, v.Payload(res.out)))
	}

	for _, step := range []time.Duration{3 * time.Second, 2 * time.Second} {
		r.clock.advance(step)
		r.refresh()
		r.wantTX(t, frame)
	}
	want, _ := r.get(t, qb)
	if ttl := answerTTL(t, want); ttl != 295 {
		t.Errorf("cache TTL %d after 5 s, want 295", ttl)
	}
	r.wantStats(t, TierStats{Promotions: 1, Entries: 1})
}

// TestHitAllocs proves that counting a hit allocates nothing, the run that
// makes the question a candidate included.
func TestHitAllocs(t *testing.T) {
	const n = 50
	tr := newTier(KernelCache{Mode: KernelCacheOn, Entries: 64, Hits: n}, nil, "test")
	h := newHotTable()
	msg := mustPack(t, tierQuery("example.com.", true))
	req := forwarder.Request{Msg: msg, Transport: forwarder.TransportUDP}
	if err := dnsmsg.Parse(msg, &req.Q); err != nil {
		t.Fatal(err)
	}
	allocs := testing.AllocsPerRun(2*n, func() { tr.hit(h, &req, 100) })
	if allocs != 0 {
		t.Errorf("%v allocations per hit", allocs)
	}
	if h.n != 1 || !bytes.Equal(h.cands[0], msg) {
		t.Errorf("%d candidates (%x), want the query once", h.n, h.cands[:h.n])
	}
}

// TestTierPrefetch: the cache never sees the hits the kernel answers, so
// the tier tells the forwarder (Hot) about entries the kernel served since
// the last tick; one in its prefetch window is then claimed for a refresh
// from upstream exactly once, as a hit in userspace would claim it.
func TestTierPrefetch(t *testing.T) {
	r := newTierRig(t, tierKC, cache.Config{}, false)
	q := tierQuery("example.com.", true)
	frame := tierFrame(t, true, mustPack(t, q))
	r.promoteOne(t, q, addrOld)

	serve := func() {
		if res := runTierProgram(t, r.prog, frame); res.verdict != xdpTX {
			t.Fatal("not answered by the program")
		}
		r.refresh()
	}
	serve() // 300 s left of 300: not due
	if h, p := r.peek.hot.Load(), r.peek.prefetches.Load(); h != 1 || p != 0 {
		t.Fatalf("fresh entry: %d Hot calls, %d prefetches; want 1, 0", h, p)
	}
	r.refresh() // no kernel hit since: no Hot
	if h := r.peek.hot.Load(); h != 1 {
		t.Fatalf("%d Hot calls after a tick without kernel hits, want 1", h)
	}
	r.clock.advance(275 * time.Second) // 25 s left: in the window (under 10%)
	serve()
	serve()
	if h, p := r.peek.hot.Load(), r.peek.prefetches.Load(); h != 3 || p != 1 {
		t.Errorf("due entry served twice: %d Hot calls, %d prefetches; want 3, 1", h, p)
	}
}

// TestTierInvalidatePromotedDuringRefresh: a promoted key whose new answer
// is stored while a refresh is peeking leaves the kernel when the Put
// returns, not when that refresh writes, and the Put does not wait for the
// refresh.
func TestTierInvalidatePromotedDuringRefresh(t *testing.T) {
	r := newTierRig(t, tierKC, cache.Config{}, true)
	q := tierQuery("example.com.", false)
	frame := tierFrame(t, false, mustPack(t, q))
	r.promoteOne(t, q, addrOld)
	r.wantTX(t, frame)

	var once sync.Once
	r.peek.during = func() {
		once.Do(func() {
			done := make(chan struct{})
			go func() { r.put(t, q, tierAnswer(q, 300, 1, addrNew)); close(done) }()
			select {
			case <-done:
			case <-time.After(2 * time.Second):
				t.Fatal("a Put waited for the refresh in progress")
			}
			res := runTierProgram(t, r.prog, frame)
			if res.verdict == xdpTX {
				t.Error("the kernel still answered after the Put of a new answer returned")
			}
		})
	}
	r.refresh()
	r.peek.during = nil
	r.wantNoTX(t, frame, bpf.AnswerMissAbsent)
	if st := r.t.stats(); st.Entries != 0 || st.Evictions != 1 {
		t.Errorf("after the refresh: %+v, want it demoted", st)
	}
}
