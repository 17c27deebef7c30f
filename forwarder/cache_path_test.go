package forwarder

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"xdoh/forwarder/cache"
	"xdoh/forwarder/rules"
	"xdoh/forwarder/zone"
)

// clock is an injectable time source.
type clock struct{ ns atomic.Int64 }

func newClock() *clock {
	c := &clock{}
	c.ns.Store(time.Date(2026, 11, 26, 0, 0, 0, 0, time.UTC).UnixNano())
	return c
}
func (c *clock) now() time.Time      { return time.Unix(0, c.ns.Load()) }
func (c *clock) add(d time.Duration) { c.ns.Add(int64(d)) }

// switchable answers with TTL ttl, or fails while down is set. With gate
// set (before the first query) it answers only once gate is closed, instead
// of after its delay.
type switchable struct {
	fakeUp
	down atomic.Bool
	gate chan struct{}
}

func newSwitchable(ttl uint32, delay time.Duration) *switchable {
	s := &switchable{}
	s.name = "switchable"
	s.fn = func(ctx context.Context, q *dns.Msg) (*dns.Msg, error) {
		if s.down.Load() {
			return nil, errors.New("connection refused")
		}
		var wait <-chan time.Time // nil: forever
		if s.gate == nil {
			wait = time.After(delay)
		}
		select {
		case <-wait:
		case <-s.gate: // nil without a gate: never
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		r := new(dns.Msg)
		r.SetReply(q)
		r.Answer = append(r.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: ttl}, A: net.IPv4(192, 0, 2, 5)})
		return r, nil
	}
	return s
}

func TestCoalescedMisses(t *testing.T) {
	up := newSwitchable(300, 0)
	// The upstream answers once every query has joined the flight (or after
	// a second, when the count below fails): a goroutine scheduled late on a
	// loaded machine must not find the flight already landed.
	up.gate = make(chan struct{})
	f, err := New(Config{Default: []Target{{Up: up}}})
	if err != nil {
		t.Fatal(err)
	}
	const n = 50
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			name := "Same.Example.COM."
			if i%2 == 1 {
				name = "same.example.com."
			}
			m := new(dns.Msg).SetQuestion(name, dns.TypeA)
			m.Id = uint16(1000 + i)
			b, _ := m.Pack()
			out := f.ServeDNS(context.Background(), &Request{Msg: b, Transport: TransportUDP}, nil)
			r := new(dns.Msg)
			if err := r.Unpack(out); err != nil {
				errs <- err
				return
			}
			if r.Id != m.Id || r.Question[0].Name != name || len(r.Answer) != 1 {
				errs <- errors.New("wrong answer: " + r.String())
			}
		}()
	}
	for deadline := time.Now().Add(time.Second); f.Stats().Coalesced < n-1 && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	close(up.gate)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if c := up.calls.Load(); c != 1 {
		t.Fatalf("upstream asked %d times for %d identical queries, want 1", c, n)
	}
	if s := f.Stats(); s.Coalesced != n-1 {
		t.Fatalf("coalesced %d, want %d", s.Coalesced, n-1)
	}
	// A query differing in EDNS (DO) is not the same question.
	m := new(dns.Msg).SetQuestion("same.example.com.", dns.TypeA)
	m.SetEdns0(1232, true)
	b, _ := m.Pack()
	f.ServeDNS(context.Background(), &Request{Msg: b, Transport: TransportUDP}, nil)
	if c := up.calls.Load(); c != 2 {
		t.Fatalf("DO query: upstream asked %d times in all, want 2", c)
	}
}

func TestServeStale(t *testing.T) {
	clk := newClock()
	up := newSwitchable(60, 0)
	f, err := New(Config{
		Default:      []Target{{Up: up, Timeout: 100 * time.Millisecond}},
		Cache:        cache.New(cache.Config{StaleWindow: time.Hour, Now: clk.now}),
		QueryTimeout: 500 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	q := query(t, "stale.example.com.", dns.TypeA, false)
	if m := serve(t, f, q, TransportUDP); len(m.Answer) != 1 {
		t.Fatalf("first answer: %v", m)
	}
	up.down.Store(true)
	clk.add(2 * time.Minute) // expired, within the stale window
	m := serve(t, f, q, TransportUDP)
	if m.Rcode != dns.RcodeSuccess || len(m.Answer) != 1 || m.Answer[0].Header().Ttl != 30 {
		t.Fatalf("want the stale answer with TTL 30, got %v", m)
	}
	if s := f.Stats(); s.Stale != 1 {
		t.Fatalf("stale counter %d, want 1", s.Stale)
	}
	clk.add(2 * time.Hour) // beyond the window
	if m := serve(t, f, q, TransportUDP); m.Rcode != dns.RcodeServerFailure {
		t.Fatalf("beyond the stale window: %v, want SERVFAIL", m)
	}
}

func TestPrefetch(t *testing.T) {
	clk := newClock()
	up := newSwitchable(100, 0)
	c := cache.New(cache.Config{Now: clk.now})
	f, err := New(Config{Default: []Target{{Up: up}}, Cache: c})
	if err != nil {
		t.Fatal(err)
	}
	q := query(t, "pre.example.com.", dns.TypeA, false)
	serve(t, f, q, TransportUDP)
	clk.add(95 * time.Second) // 5% of the TTL left: the hit triggers a refresh
	if m := serve(t, f, q, TransportUDP); len(m.Answer) != 1 || m.Answer[0].Header().Ttl != 5 {
		t.Fatalf("hit before expiry: %v", m)
	}
	deadline := time.Now().Add(3 * time.Second)
	for up.calls.Load() < 2 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if c := up.calls.Load(); c != 2 {
		t.Fatalf("upstream calls %d, want 2 (the prefetch)", c)
	}
	for c.Stats().Inserts < 2 && time.Now().Before(deadline) { // the refresh lands in the cache
		time.Sleep(5 * time.Millisecond)
	}
	clk.add(50 * time.Second) // past the old expiry, within the new one
	if m := serve(t, f, q, TransportUDP); len(m.Answer) != 1 || m.Answer[0].Header().Ttl != 50 {
		t.Fatalf("after prefetch: %v", m)
	}
	if c := up.calls.Load(); c != 2 {
		t.Fatalf("upstream calls %d after the refreshed hit, want 2", c)
	}
}

func TestLocalAnswersCachedAndHitsAllocateNothing(t *testing.T) {
	z, err := zone.Parse("aws.example.internal.", strings.NewReader(zoneText), "test.zone")
	if err != nil {
		t.Fatal(err)
	}
	f, err := New(Config{
		Rules: []Rule{{Name: "zone", Domain: "aws.example.internal", Type: rules.Zone, Zone: z}},
		Cache: cache.New(cache.Config{}),
	})
	if err != nil {
		t.Fatal(err)
	}
	msg := query(t, "IPv4.aws.example.internal.", dns.TypeA, true)
	for i := 0; i < 3; i++ {
		if m := serve(t, f, msg, TransportUDP); len(m.Answer) != 1 || !m.Authoritative || m.Question[0].Name != "IPv4.aws.example.internal." {
			t.Fatalf("round %d: %v", i, m)
		}
	}
	if s := f.Stats(); s.Local != 1 || s.CacheHits != 2 {
		t.Fatalf("local %d hits %d, want 1 and 2", s.Local, s.CacheHits)
	}
	out := make([]byte, 65536)
	r := &Request{Msg: msg, Transport: TransportUDP}
	allocs := testing.AllocsPerRun(1000, func() {
		*r = Request{Msg: msg, Transport: TransportUDP}
		if resp, ok := f.Answer(r, out); !ok || len(resp) == 0 {
			t.Fatal("not a hit")
		}
	})
	if allocs != 0 {
		t.Fatalf("%.1f allocations per cache hit, want 0", allocs)
	}
}
