package cache

import (
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"xdoh/internal/dnsmsg"
)

// getStale looks spec up with GetStale and unpacks a hit.
func getStale(t testing.TB, c *Cache, spec qspec, maxSize int) (*dns.Msg, bool) {
	t.Helper()
	_, q := spec.query(t)
	b, ok := c.GetStale(q, make([]byte, 65535), maxSize)
	if !ok {
		return nil, false
	}
	var m dns.Msg
	if err := m.Unpack(b); err != nil {
		t.Fatalf("stale response does not unpack: %v", err)
	}
	return &m, true
}

// result looks spec up and returns what Get says.
func result(t testing.TB, c *Cache, spec qspec) Result {
	t.Helper()
	_, q := spec.query(t)
	_, res := c.Get(q, make([]byte, 65535), 65535)
	return res
}

// ttls returns the TTLs of every record but OPT.
func ttls(m *dns.Msg) []uint32 {
	var out []uint32
	for _, rr := range append(append(append([]dns.RR(nil), m.Answer...), m.Ns...), m.Extra...) {
		if rr.Header().Rrtype != dns.TypeOPT {
			out = append(out, rr.Header().Ttl)
		}
	}
	return out
}

// at sets clk to start+d.
func at(clk *clock, start time.Time, d time.Duration) { clk.ns.Store(start.Add(d).UnixNano()) }

func TestServeStale(t *testing.T) {
	spec := qspec{name: "www.example.com.", edns: true, id: 7}
	extra := func(m *dns.Msg) {
		glue, _ := dns.NewRR("ns.example.com. 900 IN A 192.0.2.53")
		m.Extra = append([]dns.RR{glue}, m.Extra...)
	}
	tests := []struct {
		name    string
		window  time.Duration
		rcode   int
		an, ns  []string
		expires time.Duration // the entry's TTL
		served  bool          // served stale at all
	}{
		{name: "answer", window: time.Hour, rcode: dns.RcodeSuccess, an: aRecords, expires: 120 * time.Second, served: true},
		{name: "NXDOMAIN", window: time.Hour, rcode: dns.RcodeNameError, ns: []string{soa3600min300}, expires: 300 * time.Second, served: true},
		{name: "window off", rcode: dns.RcodeSuccess, an: aRecords, expires: 120 * time.Second},
		{name: "SERVFAIL never stale", window: time.Hour, rcode: dns.RcodeServerFailure, expires: 5 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := newClock()
			start := clk.Now()
			c := newCache(Config{StaleWindow: tt.window, ServFailTTL: 5 * time.Second}, clk)
			m, q := spec.query(t)
			b, qend := answer(t, m, tt.rcode, tt.an, tt.ns, extra)
			c.Put(q, b, qend)

			// Fresh: GetStale answers as Get does.
			at(clk, start, tt.expires-time.Second)
			if _, _, ok := get(t, c, spec, 65535); !ok {
				t.Fatal("miss while fresh")
			}
			if got, ok := getStale(t, c, spec, 65535); ok != (tt.window > 0) || ok && slices.Contains(ttls(got), staleTTL) {
				t.Errorf("GetStale while fresh: %v %v", ok, got)
			}

			upper := qspec{name: "WWW.Example.COM.", edns: true, id: 0xABCD}
			ages := []time.Duration{0, time.Second}
			if tt.window > 0 {
				ages = append(ages, tt.window-time.Second)
			}
			for _, age := range ages {
				at(clk, start, tt.expires+age)
				if _, _, ok := get(t, c, spec, 65535); ok {
					t.Fatalf("Get hit %v after expiry", age)
				}
				got, ok := getStale(t, c, upper, 65535)
				if ok != tt.served {
					t.Fatalf("GetStale %v after expiry: %v, want %v", age, ok, tt.served)
				}
				if !ok {
					continue
				}
				if got.Id != upper.id || got.Question[0].Name != upper.name || got.Rcode != tt.rcode {
					t.Errorf("id %#x name %q rcode %d", got.Id, got.Question[0].Name, got.Rcode)
				}
				for i, ttl := range ttls(got) {
					if ttl != staleTTL {
						t.Errorf("record %d TTL %d, want %d (RFC 8767)", i, ttl, staleTTL)
					}
				}
				if o := got.IsEdns0(); o == nil || o.UDPSize() != 4096 {
					t.Errorf("OPT changed: %v", o)
				}
			}
			at(clk, start, tt.expires+tt.window)
			if _, ok := getStale(t, c, spec, 65535); ok {
				t.Error("served stale after the window")
			}
			want := uint64(0)
			if tt.served {
				want = uint64(len(ages))
			}
			if s := c.Stats(); s.Stale != want {
				t.Errorf("Stale = %d, want %d", s.Stale, want)
			}
		})
	}
}

func TestStaleTruncates(t *testing.T) {
	clk := newClock()
	c := newCache(Config{StaleWindow: time.Minute}, clk)
	var many []string
	for i := range 80 {
		many = append(many, fmt.Sprintf("big.example.com. 60 IN A 192.0.2.%d", i))
	}
	spec := qspec{name: "big.example.com.", edns: true}
	store(t, c, spec, dns.RcodeSuccess, many, nil)
	clk.Advance(90 * time.Second)
	m, ok := getStale(t, c, spec, 512)
	if !ok || !m.Truncated || len(m.Answer) != 0 {
		t.Fatalf("stale over 512: %v %v", ok, m)
	}
}

func TestPrefetch(t *testing.T) {
	spec := qspec{name: "www.example.com."}
	rec := func(ttl int) []string { return []string{fmt.Sprintf("www.example.com. %d IN A 192.0.2.1", ttl)} }
	tests := []struct {
		name   string
		cfg    Config
		ttl    int
		ages   []time.Duration
		want   []Result
		stored time.Duration // a refresh is stored at this age (0: none)
	}{
		{
			name: "once under 10% of 300s",
			ttl:  300,
			ages: []time.Duration{0, 270 * time.Second, 271 * time.Second, 272 * time.Second, 299 * time.Second, 300 * time.Second},
			want: []Result{Hit, Hit, HitPrefetch, Hit, Hit, Miss},
		},
		{
			name:   "again for the refreshed entry",
			ttl:    300,
			ages:   []time.Duration{280 * time.Second, 281 * time.Second, 550 * time.Second, 551 * time.Second, 552 * time.Second},
			want:   []Result{HitPrefetch, Hit, Hit, HitPrefetch, Hit},
			stored: 281 * time.Second,
		},
		{
			name: "11s is long enough",
			ttl:  11,
			ages: []time.Duration{9 * time.Second, 10 * time.Second, 10 * time.Second},
			want: []Result{Hit, HitPrefetch, Hit},
		},
		{
			name: "not for short TTLs",
			ttl:  9,
			ages: []time.Duration{0, 5 * time.Second, 8 * time.Second, 8 * time.Second, 9 * time.Second},
			want: []Result{Hit, Hit, Hit, Hit, Miss},
		},
		{
			name: "of the clamped TTL",
			cfg:  Config{MinTTL: 100 * time.Second},
			ttl:  5,
			ages: []time.Duration{90 * time.Second, 91 * time.Second},
			want: []Result{Hit, HitPrefetch},
		},
		{
			name: "not for SERVFAIL",
			cfg:  Config{ServFailTTL: 30 * time.Second},
			ttl:  -1,
			ages: []time.Duration{27 * time.Second, 28 * time.Second, 29 * time.Second},
			want: []Result{Hit, Hit, Hit},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := newClock()
			start := clk.Now()
			c := newCache(tt.cfg, clk)
			put := func() {
				if tt.ttl < 0 {
					store(t, c, spec, dns.RcodeServerFailure, nil, nil)
				} else {
					store(t, c, spec, dns.RcodeSuccess, rec(tt.ttl), nil)
				}
			}
			put()
			prefetches := 0
			for i, age := range tt.ages {
				if tt.stored != 0 && age == tt.stored {
					put()
				}
				at(clk, start, age)
				if got := result(t, c, spec); got != tt.want[i] {
					t.Errorf("age %v: %v, want %v", age, got, tt.want[i])
				}
				if tt.want[i] == HitPrefetch {
					prefetches++
				}
			}
			if s := c.Stats(); s.Prefetches != uint64(prefetches) {
				t.Errorf("Prefetches = %d, want %d", s.Prefetches, prefetches)
			}
		})
	}
}

func TestPrefetchClaimedOnce(t *testing.T) {
	clk := newClock()
	c := newCache(Config{}, clk)
	spec := qspec{name: "www.example.com."}
	store(t, c, spec, dns.RcodeSuccess, []string{"www.example.com. 100 IN A 192.0.2.1"}, nil)
	clk.Advance(95 * time.Second)
	_, q := spec.query(t)
	var wg sync.WaitGroup
	var mu sync.Mutex
	counts := map[Result]int{}
	for range 8 {
		wg.Go(func() {
			out := make([]byte, 65535)
			for range 200 {
				_, res := c.Get(q, out, 512)
				mu.Lock()
				counts[res]++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if counts[HitPrefetch] != 1 || counts[Hit] != 8*200-1 {
		t.Errorf("results %v, want exactly one %v", counts, HitPrefetch)
	}
}

// sameBucket returns n names whose keys (as qspec{name}) share hot's bucket.
func sameBucket(t *testing.T, c *Cache, hot qspec, n int) []qspec {
	t.Helper()
	bucketOf := func(s qspec) uint64 {
		_, q := s.query(t)
		var kb [dnsmsg.MaxKeyLen]byte
		_, h := c.hash(&kb, q)
		return h & c.mask
	}
	want := bucketOf(hot)
	var out []qspec
	for i := 0; len(out) < n; i++ {
		s := hot
		s.name = fmt.Sprintf("cold%d.example.", i)
		if bucketOf(s) == want {
			out = append(out, s)
		}
		if i > 1e7 {
			t.Fatal("no names for the bucket")
		}
	}
	return out
}

func TestClockKeepsHot(t *testing.T) {
	hot := qspec{name: "hot.example."}
	tests := []struct {
		name string
		cfg  Config
		cold func(t *testing.T, c *Cache) []qspec
	}{
		{
			name: "full bucket",
			cfg:  Config{Entries: 4096},
			cold: func(t *testing.T, c *Cache) []qspec { return sameBucket(t, c, hot, 60) },
		},
		{
			name: "entry bound",
			cfg:  Config{Entries: 64},
			cold: func(*testing.T, *Cache) []qspec { return names(3000) },
		},
		{
			name: "byte bound",
			cfg:  Config{Entries: 100000, MaxBytes: 3000},
			cold: func(*testing.T, *Cache) []qspec { return names(3000) },
		},
	}
	for _, tt := range tests {
		for _, hits := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/hits=%v", tt.name, hits), func(t *testing.T) {
				c := newCache(tt.cfg, newClock())
				cold := tt.cold(t, c)
				store(t, c, hot, dns.RcodeSuccess, []string{"hot.example. 300 IN A 192.0.2.1"}, nil)
				for i, s := range cold {
					store(t, c, s, dns.RcodeSuccess, []string{s.name + " 300 IN A 192.0.2.2"}, nil)
					if hits && result(t, c, hot) == Miss {
						t.Fatalf("hot entry evicted after %d cold inserts", i+1)
					}
				}
				s := c.Stats()
				if s.Evictions == 0 {
					t.Fatalf("no pressure: %+v", s)
				}
				// Without hits the hot entry is as cold as the rest: evicted.
				if alive := result(t, c, hot) != Miss; alive != hits {
					t.Errorf("hot entry present %v, want %v (%+v)", alive, hits, s)
				}
			})
		}
	}
}

// names returns n distinct cold queries.
func names(n int) []qspec {
	out := make([]qspec, n)
	for i := range out {
		out[i] = qspec{name: fmt.Sprintf("c%05d.example.", i)}
	}
	return out
}

// walk counts the entries and octets in the table, and checks that every tag
// hint agrees with its way and no key is stored twice in a bucket.
func walk(t *testing.T, c *Cache) (int, int64) {
	t.Helper()
	n, size := 0, int64(0)
	for bi := range c.buckets {
		b := &c.buckets[bi]
		for i := range ways {
			p := b.slot[i].Load()
			want := uint32(0)
			if p != nil {
				want = hintOf(p.tag)
				n++
				size += p.size()
				if p.tag&c.mask != uint64(bi) {
					t.Errorf("entry in bucket %d, hash says %d", bi, p.tag&c.mask)
				}
				for j := i + 1; j < ways; j++ {
					if o := b.slot[j].Load(); o != nil && sameKey(o, p) {
						t.Errorf("bucket %d: key twice (ways %d and %d)", bi, i, j)
					}
				}
			}
			if h := b.hint[i].Load(); h != want {
				t.Errorf("bucket %d way %d: hint %#x, want %#x", bi, i, h, want)
			}
		}
	}
	return n, size
}

func TestByteBound(t *testing.T) {
	clk := newClock()
	const maxBytes = 8192
	c := newCache(Config{Entries: 1000, MaxBytes: maxBytes}, clk)
	for i, s := range names(3000) {
		var an []string
		for j := range 1 + i%20 {
			an = append(an, fmt.Sprintf("%s 300 IN A 192.0.2.%d", s.name, j))
		}
		store(t, c, s, dns.RcodeSuccess, an, nil)
		if b := c.Stats().Bytes; b > maxBytes {
			t.Fatalf("%d octets after %d inserts, bound %d", b, i+1, maxBytes)
		}
	}
	s := c.Stats()
	n, size := walk(t, c)
	if n != s.Entries || size != s.Bytes {
		t.Errorf("table holds %d entries, %d octets; Stats %+v", n, size, s)
	}
	if s.Bytes < maxBytes/2 || s.Evictions == 0 {
		t.Errorf("bound not used: %+v", s)
	}

	// A response larger than the whole bound is not stored.
	small := newCache(Config{MaxBytes: 50}, clk)
	store(t, small, qspec{name: "www.example.com."}, dns.RcodeSuccess, aRecords, nil)
	if s := small.Stats(); s.Entries != 0 || s.Bytes != 0 {
		t.Errorf("oversized response stored: %+v", s)
	}
}

// TestCountersExact races Put, Get and GetStale over a small table with a
// moving clock, then checks the counters against the table itself.
func TestCountersExact(t *testing.T) {
	for _, cfg := range []Config{
		{Entries: 50, StaleWindow: 5 * time.Second, ServFailTTL: 2 * time.Second},
		{Entries: 1000, MaxBytes: 4000, StaleWindow: 5 * time.Second},
		{Entries: 3}, // one bucket: writers collide on every way
	} {
		t.Run(fmt.Sprintf("entries=%d,bytes=%d", cfg.Entries, cfg.MaxBytes), func(t *testing.T) {
			clk := newClock()
			c := newCache(cfg, clk)
			type item struct {
				q    *dnsmsg.Query
				resp []byte
				qend int
			}
			var items []item
			for i, s := range names(120) {
				s.edns = i%3 == 0
				m, q := s.query(t)
				rcode := dns.RcodeSuccess
				if i%7 == 0 {
					rcode = dns.RcodeServerFailure
				}
				var an []string
				for j := range 1 + i%5 {
					an = append(an, fmt.Sprintf("%s %d IN A 192.0.2.%d", s.name, 1+i%10, j))
				}
				b, qend := answer(t, m, rcode, an, nil, nil)
				items = append(items, item{q, b, qend})
			}
			var wg sync.WaitGroup
			for w := range 8 {
				wg.Go(func() {
					out := make([]byte, 65535)
					for n := range 4000 {
						it := &items[(w*37+n*13)%len(items)]
						switch {
						case n%200 == 0 && w == 0:
							clk.Advance(time.Second)
						case n%2 == 0:
							c.Put(it.q, it.resp, it.qend)
						case n%5 == 0:
							c.GetStale(it.q, out, 512)
						default:
							c.Get(it.q, out, 512)
						}
					}
				})
			}
			wg.Wait()
			s := c.Stats()
			n, size := walk(t, c)
			if n != s.Entries || size != s.Bytes {
				t.Errorf("table holds %d entries, %d octets; Stats %+v", n, size, s)
			}
			if s.Entries > cfg.Entries || (cfg.MaxBytes > 0 && s.Bytes > cfg.MaxBytes) {
				t.Errorf("bounds exceeded: %+v", s)
			}
			if s.Inserts == 0 || s.Hits+s.Misses == 0 {
				t.Errorf("nothing happened: %+v", s)
			}
		})
	}
}

func TestReadPathAllocs(t *testing.T) {
	clk := newClock()
	c := newCache(Config{StaleWindow: time.Hour}, clk)
	store(t, c, qspec{name: "www.example.com.", edns: true}, dns.RcodeSuccess, aRecords, nil)
	_, q := qspec{name: "WWW.Example.com.", edns: true, id: 3}.query(t)
	_, miss := qspec{name: "nowhere.example.com.", edns: true}.query(t)
	out := make([]byte, 65535)
	tests := []struct {
		name string
		age  time.Duration
		fn   func()
	}{
		{name: "Get hit", fn: func() { c.Get(q, out, 512) }},
		{name: "Get prefetch hit", age: 115 * time.Second, fn: func() { c.Get(q, out, 512) }},
		{name: "Get miss", fn: func() { c.Get(miss, out, 512) }},
		{name: "GetStale", age: time.Hour, fn: func() { c.GetStale(q, out, 512) }},
	}
	start := clk.Now()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			at(clk, start, tt.age)
			if n := testing.AllocsPerRun(200, tt.fn); n != 0 {
				t.Errorf("%v allocations per call", n)
			}
		})
	}
}

func FuzzPut(f *testing.F) {
	spec := qspec{name: "www.example.com.", edns: true}
	m, q := spec.query(f)
	for _, rcode := range []int{dns.RcodeSuccess, dns.RcodeNameError, dns.RcodeServerFailure} {
		b, qend := answer(f, m, rcode, aRecords, []string{soa3600min300}, nil)
		f.Add(b, qend)
	}
	b, qend := answer(f, m, dns.RcodeNameError, nil, []string{soa3600min300}, nil)
	f.Add(b, qend)
	f.Add([]byte{0, 0, 0x80, 0, 0, 1}, 6)
	f.Fuzz(func(t *testing.T, resp []byte, qend int) {
		clk := newClock()
		c := newCache(Config{Entries: 8, StaleWindow: time.Minute, ServFailTTL: time.Second}, clk)
		c.Put(q, resp, qend)
		for i := range resp {
			resp[i] = 0xEE // Put must have copied
		}
		out := make([]byte, 65535)
		for _, age := range []time.Duration{0, time.Hour} {
			clk.Advance(age)
			got, res := c.Get(q, out, 512)
			if res == Miss {
				if got, ok := c.GetStale(q, out, 512); ok && len(got) > 512 {
					t.Fatalf("stale answer of %d octets", len(got))
				}
				continue
			}
			if len(got) > 512 || dnsmsg.Rcode(got) == 0xE || got[0] != byte(spec.id>>8) {
				t.Fatalf("hit % x", got)
			}
		}
		if s := c.Stats(); s.Entries > 1 {
			t.Fatalf("stats %+v", s)
		}
	})
}

func BenchmarkPut(b *testing.B) {
	const n = 4096
	c := newCache(Config{Entries: n / 4}, newClock())
	type item struct {
		q    *dnsmsg.Query
		resp []byte
		qend int
	}
	items := make([]item, n)
	for i, s := range names(n) {
		m, q := s.query(b)
		resp, qend := answer(b, m, dns.RcodeSuccess, []string{s.name + " 300 IN A 192.0.2.1"}, nil, nil)
		items[i] = item{q, resp, qend}
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		it := &items[i%n]
		c.Put(it.q, it.resp, it.qend)
		i++
	}
}
