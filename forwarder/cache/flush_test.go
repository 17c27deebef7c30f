package cache

import (
	"sort"
	"strings"
	"testing"

	"github.com/miekg/dns"

	"xdoh/internal/dnsmsg"
)

// TestFlush: Flush removes what its predicate selects (everything when it
// is nil), reports each entry to OnChange, counts them apart from
// Invalidate's, and leaves the generation, so the running writers go on
// storing.
func TestFlush(t *testing.T) {
	clk := newClock()
	var changed int
	c := newCache(Config{OnChange: func([]byte) { changed++ }}, clk)
	fill := func() {
		for _, n := range []string{"a.corp.example.", "b.corp.example.", "www.other.example."} {
			store(t, c, qspec{name: n}, dns.RcodeSuccess, []string{n + " 300 IN A 192.0.2.1"}, nil)
			store(t, c, qspec{name: n, qtype: dns.TypeAAAA}, dns.RcodeSuccess, []string{n + " 300 IN AAAA 2001:db8::1"}, nil)
		}
	}
	fill()
	gen := c.Generation()
	changed = 0
	corpA := func(key []byte) bool {
		_, qt, _, _, _, _ := dnsmsg.KeyFields(key)
		return strings.HasSuffix(string(dnsmsg.KeyName(key)), "\x04corp\x07example\x00") && qt == dns.TypeA
	}
	if n := c.Flush(corpA); n != 2 || changed != 2 {
		t.Fatalf("Flush removed %d entries (OnChange saw %d), want 2", n, changed)
	}
	for _, tc := range []struct {
		q   qspec
		hit bool
	}{
		{qspec{name: "a.corp.example."}, false},
		{qspec{name: "a.corp.example.", qtype: dns.TypeAAAA}, true},
		{qspec{name: "www.other.example."}, true},
	} {
		if _, _, hit := get(t, c, tc.q, 65535); hit != tc.hit {
			t.Errorf("%s/%d: hit %v after the flush, want %v", tc.q.name, tc.q.qtype, hit, tc.hit)
		}
	}
	if s := c.Stats(); s.Flushed != 2 || s.Invalidations != 0 || s.Entries != 4 || c.Generation() != gen {
		t.Errorf("stats %+v, generation %d (was %d); want 2 flushed, 4 entries, the generation unchanged", s, c.Generation(), gen)
	}
	// The pipeline writing as the current generation still stores.
	store(t, c, qspec{name: "a.corp.example."}, dns.RcodeSuccess, []string{"a.corp.example. 300 IN A 192.0.2.1"}, nil)
	if _, _, hit := get(t, c, qspec{name: "a.corp.example."}, 65535); !hit {
		t.Error("an answer stored after the flush is not served")
	}
	if n := c.Flush(nil); n != 5 || c.Stats().Entries != 0 {
		t.Errorf("Flush(nil) removed %d, %d left; want 5, 0", n, c.Stats().Entries)
	}
}

// TestRange: every live entry once, with its rcode and remaining TTL;
// expired ones inside the stale window with a TTL of 0 or less; dead ones
// not at all; stopping when fn says so.
func TestRange(t *testing.T) {
	clk := newClock()
	c := newCache(Config{StaleWindow: 60_000_000_000}, clk) // 60s
	store(t, c, qspec{name: "short.example."}, dns.RcodeSuccess, []string{"short.example. 10 IN A 192.0.2.1"}, nil)
	store(t, c, qspec{name: "long.example."}, dns.RcodeSuccess, []string{"long.example. 300 IN A 192.0.2.2"}, nil)
	store(t, c, qspec{name: "gone.example."}, dns.RcodeNameError, nil, []string{"example. 5 IN SOA ns. h. 1 2 3 4 5"})
	clk.Advance(20_000_000_000) // 20s: short and gone (the SOA's 5s) have expired, inside the stale window
	got := map[string]Entry{}
	c.Range(func(e Entry) bool {
		n, _, _, _, _, _ := dnsmsg.KeyFields(e.Key)
		s, _, _ := dns.UnpackDomainName(n, 0)
		got[s] = e
		return true
	})
	var names []string
	for n := range got {
		names = append(names, n)
	}
	sort.Strings(names)
	if strings.Join(names, " ") != "gone.example. long.example. short.example." {
		t.Fatalf("Range saw %v", names)
	}
	if e := got["long.example."]; e.TTL != 280 || e.Rcode != dns.RcodeSuccess {
		t.Errorf("long: %+v, want TTL 280 NOERROR", e)
	}
	if e := got["short.example."]; e.TTL != -10 {
		t.Errorf("short: TTL %d, want -10 (stale)", e.TTL)
	}
	if e := got["gone.example."]; e.Rcode != dns.RcodeNameError {
		t.Errorf("gone: rcode %d, want NXDOMAIN", e.Rcode)
	}
	clk.Advance(61_000_000_000) // past every stale window but long's
	n := 0
	c.Range(func(Entry) bool { n++; return true })
	if n != 1 {
		t.Errorf("after the stale window Range saw %d entries, want 1", n)
	}
	store(t, c, qspec{name: "x.example."}, dns.RcodeSuccess, []string{"x.example. 300 IN A 192.0.2.3"}, nil)
	n = 0
	c.Range(func(Entry) bool { n++; return false })
	if n != 1 {
		t.Errorf("Range went on after fn returned false: %d calls", n)
	}
}
