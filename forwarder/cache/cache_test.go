package cache

import (
	"encoding/binary"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"xdoh/internal/dnsmsg"
)

// clock is an injectable, concurrency-safe clock.
type clock struct{ ns atomic.Int64 }

func newClock() *clock {
	c := &clock{}
	c.ns.Store(time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC).UnixNano())
	return c
}

func (c *clock) Now() time.Time              { return time.Unix(0, c.ns.Load()) }
func (c *clock) Advance(d time.Duration)     { c.ns.Add(int64(d)) }
func newCache(cfg Config, clk *clock) *Cache { cfg.Now = clk.Now; return New(cfg) }

// qspec describes a client query.
type qspec struct {
	name   string
	qtype  uint16
	qclass uint16
	id     uint16
	edns   bool
	size   uint16
	do, cd bool
	noRD   bool
}

func (s qspec) msg() *dns.Msg {
	m := new(dns.Msg)
	if s.qtype == 0 {
		s.qtype = dns.TypeA
	}
	m.SetQuestion(s.name, s.qtype)
	if s.qclass != 0 {
		m.Question[0].Qclass = s.qclass
	}
	m.Id = s.id
	m.CheckingDisabled = s.cd
	m.RecursionDesired = !s.noRD
	if s.edns {
		size := s.size
		if size == 0 {
			size = 1232
		}
		m.SetEdns0(size, s.do)
	}
	return m
}

// query returns the packed query and its parsed view (which aliases it).
func (s qspec) query(t testing.TB) (*dns.Msg, *dnsmsg.Query) {
	t.Helper()
	m := s.msg()
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	var q dnsmsg.Query
	if err := dnsmsg.Parse(b, &q); err != nil {
		t.Fatal(err)
	}
	return m, &q
}

// answer builds the upstream response to m and returns it with its qend.
func answer(t testing.TB, m *dns.Msg, rcode int, an, ns []string, edit func(*dns.Msg)) ([]byte, int) {
	t.Helper()
	r := new(dns.Msg)
	r.SetReply(m)
	r.Rcode = rcode
	r.Compress = true
	for _, s := range an {
		rr, err := dns.NewRR(s)
		if err != nil {
			t.Fatal(err)
		}
		r.Answer = append(r.Answer, rr)
	}
	for _, s := range ns {
		rr, err := dns.NewRR(s)
		if err != nil {
			t.Fatal(err)
		}
		r.Ns = append(r.Ns, rr)
	}
	if o := m.IsEdns0(); o != nil {
		r.SetEdns0(4096, o.Do())
	}
	if edit != nil {
		edit(r)
	}
	b, err := r.Pack()
	if err != nil {
		t.Fatal(err)
	}
	var q dnsmsg.Query
	qb, _ := m.Pack()
	if err := dnsmsg.Parse(qb, &q); err != nil {
		t.Fatal(err)
	}
	qend, err := dnsmsg.CheckResponse(b, &q)
	if err != nil {
		t.Fatalf("test response fails CheckResponse: %v", err)
	}
	return b, qend
}

// store puts the answer to spec with the given records into c.
func store(t testing.TB, c *Cache, spec qspec, rcode int, an, ns []string) {
	t.Helper()
	m, q := spec.query(t)
	b, qend := answer(t, m, rcode, an, ns, nil)
	c.Put(q, b, qend)
}

// get looks spec up and unpacks a hit.
func get(t testing.TB, c *Cache, spec qspec, maxSize int) (*dns.Msg, []byte, bool) {
	t.Helper()
	_, q := spec.query(t)
	out := make([]byte, 65535)
	b, res := c.Get(q, out, maxSize)
	if res == Miss {
		return nil, nil, false
	}
	var m dns.Msg
	if err := m.Unpack(b); err != nil {
		t.Fatalf("cached response does not unpack: %v", err)
	}
	return &m, b, true
}

const soa3600min300 = "example.com. 3600 IN SOA ns.example.com. host.example.com. 1 7200 900 1209600 300"

var aRecords = []string{"www.example.com. 300 IN A 192.0.2.1", "www.example.com. 120 IN A 192.0.2.2"}

func TestGetPatchesHit(t *testing.T) {
	clk := newClock()
	c := newCache(Config{}, clk)
	store(t, c, qspec{name: "www.example.com.", id: 0x1111, edns: true}, dns.RcodeSuccess, aRecords, nil)

	tests := []struct {
		name     string
		spec     qspec
		age      time.Duration
		wantTTLs []uint32
	}{
		{name: "same second", spec: qspec{name: "www.example.com.", id: 0x2222, edns: true}, wantTTLs: []uint32{300, 120}},
		{name: "mixed case after 100s", spec: qspec{name: "WwW.ExAmPlE.CoM.", id: 0x3333, edns: true}, age: 100 * time.Second, wantTTLs: []uint32{200, 20}},
		{name: "partial seconds", spec: qspec{name: "WWW.EXAMPLE.COM.", id: 0, edns: true}, age: 119*time.Second + 900*time.Millisecond, wantTTLs: []uint32{181, 1}},
		{name: "last second", spec: qspec{name: "www.example.com.", id: 0xFFFF, edns: true}, age: 119 * time.Second, wantTTLs: []uint32{181, 1}},
	}
	start := clk.Now()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk.ns.Store(start.Add(tt.age).UnixNano())
			m, _, ok := get(t, c, tt.spec, 65535)
			if !ok {
				t.Fatal("miss")
			}
			if m.Id != tt.spec.id {
				t.Errorf("id = %#x, want %#x", m.Id, tt.spec.id)
			}
			if m.Question[0].Name != tt.spec.name {
				t.Errorf("question name %q, want the client's %q", m.Question[0].Name, tt.spec.name)
			}
			if !m.Response || m.Rcode != dns.RcodeSuccess || m.Truncated {
				t.Errorf("QR/rcode/TC = %v/%d/%v", m.Response, m.Rcode, m.Truncated)
			}
			if len(m.Answer) != len(tt.wantTTLs) {
				t.Fatalf("%d answers, want %d", len(m.Answer), len(tt.wantTTLs))
			}
			for i, a := range m.Answer {
				if a.Header().Ttl != tt.wantTTLs[i] {
					t.Errorf("answer %d TTL %d, want %d", i, a.Header().Ttl, tt.wantTTLs[i])
				}
			}
			if o := m.IsEdns0(); o == nil || o.UDPSize() != 4096 {
				t.Errorf("OPT = %v, want the stored one", o)
			}
		})
	}
	// The entry lives as long as its smallest TTL.
	clk.ns.Store(start.Add(120 * time.Second).UnixNano())
	if _, _, ok := get(t, c, qspec{name: "www.example.com.", edns: true}, 65535); ok {
		t.Error("hit after the smallest TTL ran out")
	}
	if s := c.Stats(); s.Hits != uint64(len(tests)) || s.Misses != 1 || s.Inserts != 1 || s.Entries != 1 {
		t.Errorf("stats = %+v", s)
	}
}

func TestPutCopiesResponse(t *testing.T) {
	clk := newClock()
	c := newCache(Config{}, clk)
	spec := qspec{name: "www.example.com.", id: 5}
	m, q := spec.query(t)
	b, qend := answer(t, m, dns.RcodeSuccess, aRecords, nil, nil)
	c.Put(q, b, qend)
	for i := range b {
		b[i] = 0xFF // the forwarder reuses its buffers
	}
	got, _, ok := get(t, c, spec, 65535)
	if !ok || len(got.Answer) != 2 || got.Answer[0].(*dns.A).A.String() != "192.0.2.1" {
		t.Fatalf("hit %v: %v", ok, got)
	}
}

func TestGetTruncates(t *testing.T) {
	clk := newClock()
	c := newCache(Config{}, clk)
	var many []string
	for i := range 80 {
		many = append(many, fmt.Sprintf("big.example.com. 600 IN A 192.0.2.%d", i))
	}
	spec := qspec{name: "big.example.com.", edns: true, do: true, id: 9}
	store(t, c, spec, dns.RcodeSuccess, many, nil)

	tests := []struct {
		name    string
		maxSize int
		wantTC  bool
	}{
		{name: "512", maxSize: 512, wantTC: true},
		{name: "1232 still too small", maxSize: 1232, wantTC: true},
		{name: "TCP size", maxSize: 65535},
		{name: "512 again after a full answer", maxSize: 512, wantTC: true},
		{name: "full again after a truncation", maxSize: 65535},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, b, ok := get(t, c, spec, tt.maxSize)
			if !ok {
				t.Fatal("miss")
			}
			if len(b) > tt.maxSize {
				t.Errorf("%d octets for a limit of %d", len(b), tt.maxSize)
			}
			if m.Truncated != tt.wantTC {
				t.Errorf("TC = %v, want %v", m.Truncated, tt.wantTC)
			}
			wantAnswers := len(many)
			if tt.wantTC {
				wantAnswers = 0
			}
			if len(m.Answer) != wantAnswers {
				t.Errorf("%d answers, want %d", len(m.Answer), wantAnswers)
			}
			if o := m.IsEdns0(); o == nil || !o.Do() {
				t.Errorf("OPT with DO lost: %v", o)
			}
			if m.Id != spec.id || m.Question[0].Name != spec.name {
				t.Errorf("id %#x question %q", m.Id, m.Question[0].Name)
			}
		})
	}
}

func TestKey(t *testing.T) {
	base := qspec{name: "www.example.com.", edns: true, size: 1232}
	tests := []struct {
		name    string
		spec    qspec
		wantHit bool
	}{
		{name: "same", spec: base, wantHit: true},
		{name: "upper case", spec: qspec{name: "WWW.EXAMPLE.COM.", edns: true}, wantHit: true},
		{name: "other EDNS size", spec: qspec{name: "www.example.com.", edns: true, size: 4096}, wantHit: true},
		{name: "RD clear (an RD=0 answer may be a referral)", spec: qspec{name: "www.example.com.", edns: true, noRD: true}},
		{name: "DO set", spec: qspec{name: "www.example.com.", edns: true, do: true}},
		{name: "CD set", spec: qspec{name: "www.example.com.", edns: true, cd: true}},
		{name: "no EDNS", spec: qspec{name: "www.example.com."}},
		{name: "type AAAA", spec: qspec{name: "www.example.com.", edns: true, qtype: dns.TypeAAAA}},
		{name: "class CH", spec: qspec{name: "www.example.com.", edns: true, qclass: dns.ClassCHAOS}},
		{name: "other name", spec: qspec{name: "www.example.org.", edns: true}},
		{name: "subdomain", spec: qspec{name: "a.www.example.com.", edns: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newCache(Config{}, newClock())
			store(t, c, base, dns.RcodeSuccess, aRecords, nil)
			if _, _, ok := get(t, c, tt.spec, 65535); ok != tt.wantHit {
				t.Errorf("hit = %v, want %v", ok, tt.wantHit)
			}
			// And the other way round: stored under the variant, asked as base.
			c = newCache(Config{}, newClock())
			m, q := tt.spec.query(t)
			b, qend := answer(t, m, dns.RcodeSuccess, []string{dns.Fqdn(tt.spec.name) + " 300 IN A 192.0.2.9"}, nil, func(r *dns.Msg) {
				r.Answer[0].Header().Class = m.Question[0].Qclass
				r.Answer[0].Header().Rrtype = dns.TypeA
			})
			c.Put(q, b, qend)
			if _, _, ok := get(t, c, base, 65535); ok != tt.wantHit {
				t.Errorf("reverse: hit = %v, want %v", ok, tt.wantHit)
			}
		})
	}
}

func TestPutPolicy(t *testing.T) {
	spec := qspec{name: "www.example.com.", edns: true}
	tests := []struct {
		name     string
		cfg      Config
		rcode    int
		an, ns   []string
		edit     func(*dns.Msg)
		wire     func(b []byte, qend int) // edits the packed response CheckResponse accepted
		lastHit  time.Duration            // still a hit at this age (negative: never cached)
		firstOut time.Duration            // a miss from this age on
	}{
		{name: "NOERROR answer", rcode: dns.RcodeSuccess, an: aRecords, lastHit: 119 * time.Second, firstOut: 120 * time.Second},
		{name: "NXDOMAIN with SOA, MINIMUM below TTL", rcode: dns.RcodeNameError, ns: []string{soa3600min300}, lastHit: 299 * time.Second, firstOut: 300 * time.Second},
		{name: "NXDOMAIN with SOA, TTL below MINIMUM", rcode: dns.RcodeNameError, ns: []string{"example.com. 100 IN SOA ns.example.com. host.example.com. 1 7200 900 1209600 300"}, lastHit: 99 * time.Second, firstOut: 100 * time.Second},
		{name: "NODATA with SOA", rcode: dns.RcodeSuccess, ns: []string{soa3600min300}, lastHit: 299 * time.Second, firstOut: 300 * time.Second},
		{name: "NOERROR without records or SOA", rcode: dns.RcodeSuccess, lastHit: -1},
		{name: "NXDOMAIN without SOA", rcode: dns.RcodeNameError, lastHit: -1},
		{name: "truncated", rcode: dns.RcodeSuccess, an: aRecords, edit: func(m *dns.Msg) { m.Truncated = true }, lastHit: -1},
		{name: "SERVFAIL, ServFailTTL 0", rcode: dns.RcodeServerFailure, lastHit: -1},
		{name: "SERVFAIL, ServFailTTL 5s", cfg: Config{ServFailTTL: 5 * time.Second}, rcode: dns.RcodeServerFailure, lastHit: 4 * time.Second, firstOut: 5 * time.Second},
		{name: "SERVFAIL, ServFailTTL 500ms", cfg: Config{ServFailTTL: 500 * time.Millisecond}, rcode: dns.RcodeServerFailure, lastHit: 0, firstOut: time.Second},
		{name: "REFUSED", cfg: Config{ServFailTTL: 5 * time.Second}, rcode: dns.RcodeRefused, an: aRecords, lastHit: -1},
		{name: "FORMERR", rcode: dns.RcodeFormatError, an: aRecords, lastHit: -1},
		{name: "max TTL clamp", cfg: Config{MaxTTL: time.Hour}, rcode: dns.RcodeSuccess, an: []string{"www.example.com. 604800 IN A 192.0.2.1"}, lastHit: time.Hour - time.Second, firstOut: time.Hour},
		{name: "default max TTL is a day", rcode: dns.RcodeSuccess, an: []string{"www.example.com. 604800 IN A 192.0.2.1"}, lastHit: 24*time.Hour - time.Second, firstOut: 24 * time.Hour},
		{name: "min TTL raises", cfg: Config{MinTTL: time.Minute}, rcode: dns.RcodeSuccess, an: []string{"www.example.com. 10 IN A 192.0.2.1"}, lastHit: 59 * time.Second, firstOut: time.Minute},
		{name: "zero TTL not cached", rcode: dns.RcodeSuccess, an: []string{"www.example.com. 0 IN A 192.0.2.1"}, lastHit: -1},
		{name: "zero TTL with min TTL", cfg: Config{MinTTL: 10 * time.Second}, rcode: dns.RcodeSuccess, an: []string{"www.example.com. 0 IN A 192.0.2.1"}, lastHit: 9 * time.Second, firstOut: 10 * time.Second},
		{name: "SERVFAIL, ServFailTTL clamped to 30s", cfg: Config{ServFailTTL: 5 * time.Minute}, rcode: dns.RcodeServerFailure, lastHit: 29 * time.Second, firstOut: 30 * time.Second},
		{name: "TTL 2^31-1 is valid", rcode: dns.RcodeSuccess, an: []string{"www.example.com. 2147483647 IN A 192.0.2.1"},
			lastHit: 24*time.Hour - time.Second, firstOut: 24 * time.Hour},

		// Bad upstream data must not poison the cache.
		{name: "answer TTL above 2^31-1", cfg: Config{MinTTL: time.Minute}, rcode: dns.RcodeSuccess, an: aRecords,
			edit: func(m *dns.Msg) { m.Answer[1].Header().Ttl = 1 << 31 }, lastHit: -1},
		{name: "authority TTL above 2^31-1", rcode: dns.RcodeNameError, ns: []string{soa3600min300},
			edit: func(m *dns.Msg) { m.Ns[0].Header().Ttl = 0xFFFFFFFF }, lastHit: -1},
		{name: "NOERROR, authority NS but no SOA", rcode: dns.RcodeSuccess, ns: []string{"example.com. 3600 IN NS ns.example.com."}, lastHit: -1},
		{name: "NXDOMAIN, CNAME but no SOA", rcode: dns.RcodeNameError, an: []string{"www.example.com. 300 IN CNAME gone.example.com."}, lastHit: -1},
		{name: "NXDOMAIN, CNAME and SOA", rcode: dns.RcodeNameError, an: []string{"www.example.com. 600 IN CNAME gone.example.com."}, ns: []string{soa3600min300}, lastHit: 299 * time.Second, firstOut: 300 * time.Second},
		{name: "QR clear", rcode: dns.RcodeSuccess, an: aRecords, wire: func(b []byte, _ int) { b[2] &^= 0x80 }, lastHit: -1},
		{name: "QDCOUNT 0", rcode: dns.RcodeSuccess, an: aRecords, wire: func(b []byte, _ int) { b[5] = 0 }, lastHit: -1},
		{name: "QDCOUNT 2", rcode: dns.RcodeSuccess, an: aRecords, wire: func(b []byte, _ int) { b[5] = 2 }, lastHit: -1},
		{name: "question of another type", rcode: dns.RcodeSuccess, an: aRecords, wire: func(b []byte, qend int) { b[qend-3] = byte(dns.TypeAAAA) }, lastHit: -1},
		{name: "question of another name", rcode: dns.RcodeSuccess, an: aRecords, wire: func(b []byte, _ int) { b[13] = 'x' }, lastHit: -1},
		{name: "records cut short", rcode: dns.RcodeSuccess, an: aRecords, wire: func(b []byte, _ int) { b[7]++ }, lastHit: -1},
		{name: "TC set after the check", rcode: dns.RcodeSuccess, an: aRecords, wire: func(b []byte, _ int) { b[2] |= 0x02 }, lastHit: -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := newClock()
			start := clk.Now()
			c := newCache(tt.cfg, clk)
			m, q := spec.query(t)
			b, qend := answer(t, m, tt.rcode, tt.an, tt.ns, tt.edit)
			if tt.wire != nil {
				tt.wire(b, qend)
			}
			c.Put(q, b, qend)
			if tt.lastHit < 0 {
				if s := c.Stats(); s.Entries != 0 || s.Inserts != 0 {
					t.Errorf("stored: %+v", s)
				}
				if _, _, ok := get(t, c, spec, 65535); ok {
					t.Error("hit for a response that must not be cached")
				}
				return
			}
			clk.ns.Store(start.Add(tt.lastHit).UnixNano())
			got, _, ok := get(t, c, spec, 65535)
			if !ok {
				t.Fatalf("miss at %v", tt.lastHit)
			}
			if got.Rcode != tt.rcode {
				t.Errorf("rcode %d, want %d", got.Rcode, tt.rcode)
			}
			age := uint32(tt.lastHit / time.Second)
			for _, r := range append(got.Answer, got.Ns...) {
				if orig := firstTTL(t, tt.an, tt.ns, r); r.Header().Ttl > orig-min(orig, age) {
					t.Errorf("%v: TTL %d at age %ds, stored %d", r.Header().Name, r.Header().Ttl, age, orig)
				}
			}
			clk.ns.Store(start.Add(tt.firstOut).UnixNano())
			if _, _, ok := get(t, c, spec, 65535); ok {
				t.Errorf("hit at %v", tt.firstOut)
			}
		})
	}
}

// firstTTL returns the TTL r had in the upstream answer (records of one type
// share it in these tests).
func firstTTL(t *testing.T, an, ns []string, r dns.RR) uint32 {
	t.Helper()
	for _, s := range append(append([]string(nil), an...), ns...) {
		o, err := dns.NewRR(s)
		if err != nil {
			t.Fatal(err)
		}
		if o.Header().Rrtype == r.Header().Rrtype && dns.IsDuplicate(o, r) {
			return o.Header().Ttl
		}
	}
	t.Fatalf("record %v not in the upstream answer", r)
	return 0
}

func TestPutReplaces(t *testing.T) {
	clk := newClock()
	c := newCache(Config{Entries: 1}, clk)
	spec := qspec{name: "www.example.com."}
	store(t, c, spec, dns.RcodeSuccess, []string{"www.example.com. 300 IN A 192.0.2.1"}, nil)
	store(t, c, qspec{name: "WWW.example.com."}, dns.RcodeSuccess, []string{"www.example.com. 300 IN A 192.0.2.2"}, nil)
	if s := c.Stats(); s.Entries != 1 || s.Evictions != 0 || s.Inserts != 2 {
		t.Errorf("stats after replacing = %+v", s)
	}
	m, _, ok := get(t, c, spec, 65535)
	if !ok || m.Answer[0].(*dns.A).A.String() != "192.0.2.2" {
		t.Errorf("hit %v, answer %v; want the newer answer", ok, m)
	}
}

// TestOnChange: the hook sees a key before and after each Put of it, and
// the key of every entry an eviction takes out, so a copy of the cache
// elsewhere can follow it.
func TestOnChange(t *testing.T) {
	clk := newClock()
	var got []string
	c := newCache(Config{Entries: 1, OnChange: func(k []byte) { got = append(got, string(k)) }}, clk)
	a, b := qspec{name: "a.example."}, qspec{name: "b.example."}
	store(t, c, a, dns.RcodeSuccess, []string{"a.example. 300 IN A 192.0.2.1"}, nil)
	_, qa := a.query(t)
	var kb [dnsmsg.MaxKeyLen]byte
	ka := string(dnsmsg.AppendKey(kb[:0], qa))
	if len(got) != 2 || got[0] != ka || got[1] != ka {
		t.Fatalf("after a Put: %q, want the key twice", got)
	}
	got = nil
	store(t, c, b, dns.RcodeSuccess, []string{"b.example. 300 IN A 192.0.2.2"}, nil) // evicts a
	_, qb := b.query(t)
	kbs := string(dnsmsg.AppendKey(kb[:0], qb))
	if c.Stats().Evictions != 1 {
		t.Fatalf("stats %+v, want one eviction", c.Stats())
	}
	want := map[string]int{kbs: 2, ka: 1}
	have := map[string]int{}
	for _, k := range got {
		have[k]++
	}
	if fmt.Sprint(have) != fmt.Sprint(want) {
		t.Errorf("after a Put that evicts: %q, want b's key twice and a's once", got)
	}
}

func TestEntryBound(t *testing.T) {
	tests := []struct {
		name    string
		entries int
		inserts int
	}{
		{name: "1", entries: 1, inserts: 50},
		{name: "10", entries: 10, inserts: 500},
		{name: "63", entries: 63, inserts: 3000},
		{name: "100", entries: 100, inserts: 4000},
		{name: "1000", entries: 1000, inserts: 20000},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := newClock()
			c := newCache(Config{Entries: tt.entries}, clk)
			m, _ := qspec{name: "x.example."}.query(t)
			b, qend := answer(t, m, dns.RcodeSuccess, []string{"x.example. 300 IN A 192.0.2.1"}, nil, nil)
			for i := range tt.inserts {
				// Same length names: the stored response with its question
				// rewritten answers them all.
				spec := qspec{name: fmt.Sprintf("%c.example.", 'a'+i%26), qtype: uint16(1000 + i/26)}
				_, q := spec.query(t)
				dnsmsg.CopyQuestionName(b, q.Name)
				binary.BigEndian.PutUint16(b[qend-4:], q.Type)
				c.Put(q, b, qend)
				if i%97 == 0 {
					if n := c.Stats().Entries; n > tt.entries {
						t.Fatalf("%d entries after %d inserts, bound %d", n, i+1, tt.entries)
					}
				}
			}
			s := c.Stats()
			// With this many distinct keys every shard in use is full.
			if s.Entries != tt.entries {
				t.Errorf("Entries = %d, want the bound %d", s.Entries, tt.entries)
			}
			if s.Inserts != uint64(tt.inserts) || s.Evictions != uint64(tt.inserts-tt.entries) {
				t.Errorf("Inserts %d Evictions %d, want %d and %d", s.Inserts, s.Evictions, tt.inserts, tt.inserts-tt.entries)
			}
		})
	}
}

func TestConcurrent(t *testing.T) {
	clk := newClock()
	c := newCache(Config{Entries: 64, ServFailTTL: time.Second}, clk)
	const names = 200
	type item struct {
		spec qspec
		resp []byte
		qend int
		q    *dnsmsg.Query
	}
	items := make([]item, names)
	for i := range items {
		spec := qspec{name: fmt.Sprintf("h%03d.example.", i), edns: i%2 == 0, id: uint16(i)}
		m, q := spec.query(t)
		rcode := dns.RcodeSuccess
		if i%10 == 0 {
			rcode = dns.RcodeServerFailure
		}
		b, qend := answer(t, m, rcode, []string{spec.name + " 30 IN A 192.0.2.1"}, nil, nil)
		items[i] = item{spec: spec, resp: b, qend: qend, q: q}
	}
	var wg sync.WaitGroup
	var hits atomic.Int64
	for w := range 8 {
		wg.Go(func() {
			out := make([]byte, 65535)
			for n := range 3000 {
				it := &items[(w*131+n*7)%names]
				switch {
				case n%3 == 0:
					c.Put(it.q, it.resp, it.qend)
				case n%500 == 0 && w == 0:
					clk.Advance(time.Second)
				default:
					b, res := c.Get(it.q, out, 512)
					if res == Miss {
						continue
					}
					hits.Add(1)
					var m dns.Msg
					if err := m.Unpack(b); err != nil {
						t.Errorf("hit does not unpack: %v", err)
						return
					}
					if m.Id != it.spec.id || m.Question[0].Name != it.spec.name {
						t.Errorf("hit for %s id %d is %s id %d", it.spec.name, it.spec.id, m.Question[0].Name, m.Id)
						return
					}
				}
			}
		})
	}
	wg.Wait()
	s := c.Stats()
	if hits.Load() == 0 || s.Entries > 64 || s.Hits != uint64(hits.Load()) {
		t.Errorf("hits %d, stats %+v", hits.Load(), s)
	}
}

func TestGetHitAllocs(t *testing.T) {
	c := newCache(Config{}, newClock())
	spec := qspec{name: "www.example.com.", edns: true, do: true}
	store(t, c, spec, dns.RcodeSuccess, aRecords, nil)
	_, q := qspec{name: "WWW.Example.com.", edns: true, do: true}.query(t)
	out := make([]byte, 65535)
	if _, res := c.Get(q, out, 512); res != Hit {
		t.Fatalf("Get = %v, want a hit", res)
	}
	if n := testing.AllocsPerRun(200, func() { c.Get(q, out, 512) }); n != 0 {
		t.Errorf("Get on a hit allocates %v times", n)
	}
}

func BenchmarkGetHit(b *testing.B) {
	c := newCache(Config{}, newClock())
	spec := qspec{name: "www.example.com.", edns: true}
	store(b, c, spec, dns.RcodeSuccess, aRecords, nil)
	_, q := spec.query(b)
	out := make([]byte, 65535)
	b.ReportAllocs()
	for b.Loop() {
		if _, res := c.Get(q, out, 1232); res == Miss {
			b.Fatal("miss")
		}
	}
}

func BenchmarkGetHitParallel(b *testing.B) {
	c := newCache(Config{}, newClock())
	const n = 1024
	qs := make([]*dnsmsg.Query, n)
	for i := range qs {
		spec := qspec{name: fmt.Sprintf("w%04d.example.com.", i), edns: true}
		store(b, c, spec, dns.RcodeSuccess, []string{spec.name + " 300 IN A 192.0.2.1"}, nil)
		_, qs[i] = spec.query(b)
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		out := make([]byte, 65535)
		i := 0
		for pb.Next() {
			if _, res := c.Get(qs[i%n], out, 1232); res == Miss {
				b.Error("miss")
				return
			}
			i++
		}
	})
}

// TestClaimPrefetch: for an entry served elsewhere, the prefetch claim
// follows Get's rule: only in the last 10% of a TTL of at least 10 s, once
// per stored entry, never for a missing or expired one.
func TestClaimPrefetch(t *testing.T) {
	clk := newClock()
	c := newCache(Config{}, clk)
	spec := qspec{name: "www.example.com."}
	_, q := spec.query(t)
	if c.ClaimPrefetch(q) {
		t.Fatal("claimed a missing entry")
	}
	store(t, c, spec, dns.RcodeSuccess, []string{"www.example.com. 100 IN A 192.0.2.1"}, nil)
	if c.ClaimPrefetch(q) {
		t.Error("claimed a fresh entry (100 s of 100 left)")
	}
	clk.Advance(95 * time.Second)
	if !c.ClaimPrefetch(q) {
		t.Error("did not claim an entry with 5 s of 100 left")
	}
	if c.ClaimPrefetch(q) {
		t.Error("claimed the same entry twice")
	}
	if _, res := c.Get(q, make([]byte, 65536), 512); res != Hit {
		t.Errorf("Get after the claim: %v, want a plain hit", res)
	}
	clk.Advance(10 * time.Second)
	if c.ClaimPrefetch(q) {
		t.Error("claimed an expired entry")
	}
}
