package cache

import (
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/miekg/dns"

	"xdoh/internal/dnsmsg"
)

// under says whether a key's name is at or below the wire-format suffix
// of domain (the rule the reload changed).
func under(domain string) func(key []byte) bool {
	return func(key []byte) bool {
		n := string(dnsmsg.KeyName(key))
		var b [256]byte
		l, _ := dns.PackDomainName(dns.Fqdn(domain), b[:], 0, nil, false)
		return n != "" && strings.HasSuffix(n, string(b[:l]))
	}
}

// TestInvalidate: only the entries the caller names go, each reported to
// OnChange; the others keep answering; and the counters follow.
func TestInvalidate(t *testing.T) {
	clk := newClock()
	var changed []string
	c := newCache(Config{OnChange: func(k []byte) { changed = append(changed, string(dnsmsg.KeyName(k))) }}, clk)
	names := []string{"a.corp.example.", "b.corp.example.", "www.other.example.", "corp.example.org."}
	for _, n := range names {
		store(t, c, qspec{name: n}, dns.RcodeSuccess, []string{n + " 300 IN A 192.0.2.1"}, nil)
	}
	changed = nil
	if got := c.Invalidate(c.Generation()+1, under("corp.example")); got != 2 {
		t.Fatalf("Invalidate removed %d entries, want 2", got)
	}
	for _, n := range names {
		_, _, hit := get(t, c, qspec{name: n}, 65535)
		if want := !strings.HasSuffix(n, "corp.example."); hit != want {
			t.Errorf("%s: hit %v after invalidating corp.example, want %v", n, hit, want)
		}
	}
	if len(changed) != 2 {
		t.Errorf("OnChange saw %d keys, want the 2 removed", len(changed))
	}
	s := c.Stats()
	if s.Invalidations != 2 || s.Entries != 2 || s.Evictions != 0 {
		t.Errorf("stats %+v, want 2 invalidations, 2 entries left, no evictions", s)
	}
	if c.Invalidate(c.Generation()+1, nil) != 0 || c.Stats().Entries != 2 {
		t.Errorf("Invalidate with no predicate removed entries")
	}
}

// TestPutAsRetired: once the cache moved past a writer's generation, that
// writer's answers are not stored; the current generation's are.
func TestPutAsRetired(t *testing.T) {
	clk := newClock()
	c := newCache(Config{}, clk)
	old := c.Generation()
	next := old + 1
	c.Invalidate(next, nil)
	for _, tc := range []struct {
		name string
		gen  uint64
		want bool
	}{{"old.example.", old, false}, {"next.example.", next, true}} {
		m, q := qspec{name: tc.name}.query(t)
		b, qend := answer(t, m, dns.RcodeSuccess, []string{tc.name + " 300 IN A 192.0.2.1"}, nil, nil)
		c.PutAs(tc.gen, q, b, qend)
		if _, _, hit := get(t, c, qspec{name: tc.name}, 65535); hit != tc.want {
			t.Errorf("PutAs(gen %d) after Invalidate(%d): stored %v, want %v", tc.gen, next, hit, tc.want)
		}
	}
}

// TestInvalidateDuringPut: a retired writer that passed the generation
// check before Invalidate moved on, and publishes after the sweep passed
// its bucket, withdraws its entry itself. OnChange runs between the check
// and the publication, so the test sweeps from there.
func TestInvalidateDuringPut(t *testing.T) {
	clk := newClock()
	var c *Cache
	swept := false
	c = newCache(Config{OnChange: func([]byte) {
		if !swept {
			swept = true
			c.Invalidate(1, func([]byte) bool { return true })
		}
	}}, clk)
	m, q := qspec{name: "late.example."}.query(t)
	b, qend := answer(t, m, dns.RcodeSuccess, []string{"late.example. 300 IN A 192.0.2.1"}, nil, nil)
	c.PutAs(0, q, b, qend)
	if !swept {
		t.Fatal("OnChange did not run during the Put")
	}
	if _, _, hit := get(t, c, qspec{name: "late.example."}, 65535); hit || c.Stats().Entries != 0 {
		t.Errorf("an answer of the retired generation outlived Invalidate (hit %v, %d entries)", hit, c.Stats().Entries)
	}
}

// TestInvalidateConcurrent runs Invalidate against writers of both
// generations and readers, for the race detector; afterwards only the
// current generation's entries are left.
func TestInvalidateConcurrent(t *testing.T) {
	clk := newClock()
	c := newCache(Config{Entries: 4096}, clk)
	type put struct {
		q    *dnsmsg.Query
		b    []byte
		qend int
	}
	var puts []put
	for i := range 512 {
		n := fmt.Sprintf("h%d.example.", i)
		m, q := qspec{name: n}.query(t)
		b, qend := answer(t, m, dns.RcodeSuccess, []string{n + " 300 IN A 192.0.2.1"}, nil, nil)
		puts = append(puts, put{q, b, qend})
	}
	var wg sync.WaitGroup
	start := make(chan struct{})
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			out := make([]byte, 65535)
			for i := w; i < len(puts); i += 4 {
				c.PutAs(uint64(w%2), puts[i].q, puts[i].b, puts[i].qend) // odd writers: the next generation
				c.Get(puts[i].q, out, 65535)
			}
		}()
	}
	close(start)
	c.Invalidate(1, func([]byte) bool { return true })
	wg.Wait()
	n := 0
	for i := range puts {
		if _, _, hit := get(t, c, qspec{name: fmt.Sprintf("h%d.example.", i)}, 65535); hit {
			if i%4%2 == 0 {
				t.Errorf("h%d: written as generation 0, still cached after Invalidate(1)", i)
			}
			n++
		}
	}
	t.Logf("%d entries of generation 1 survived the sweep", n)
}
