// Package pipetest is the pipeline the encrypted datapaths' tests (DoT,
// DoQ) run against: a real forwarder.Forwarder with a local zone, a cache,
// and an in-process upstream whose delay each test picks per name, so that
// a test can have some answers overtake others. One copy, instead of a
// fake handler in each datapath's tests.
package pipetest

import (
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"xdoh/forwarder"
	"xdoh/forwarder/cache"
	"xdoh/forwarder/group"
	"xdoh/forwarder/querylog"
	"xdoh/forwarder/rules"
	"xdoh/forwarder/zone"
)

// Local names, answered by the zone without an upstream.
const (
	ZoneName = "aws.example.internal."
	LocalA   = "ipv4.aws.example.internal." // A 10.2.1.10
	LocalIP  = "10.2.1.10"
)

// UpstreamIP is the address the upstream answers every A query with.
const UpstreamIP = "192.0.2.53"

// Upstream answers every query with one A record of UpstreamIP (TTL 300),
// after Delay(name) (nil or 0: at once, on the caller's goroutine).
type Upstream struct {
	Delay func(qname string) time.Duration
}

func (*Upstream) String() string { return "pipetest" }

// Submit implements group.Exchanger.
func (u *Upstream) Submit(query []byte, _ time.Duration, done func([]byte, error)) group.Canceler {
	q := new(dns.Msg)
	if err := q.Unpack(query); err != nil || len(q.Question) != 1 {
		done(nil, err)
		return nil
	}
	r := new(dns.Msg).SetReply(q)
	r.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: q.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 300}, A: net.ParseIP(UpstreamIP)}}
	resp, err := r.Pack()
	var d time.Duration
	if u.Delay != nil {
		d = u.Delay(strings.ToLower(q.Question[0].Name))
	}
	if d <= 0 {
		done(resp, err)
		return nil
	}
	return timer{time.AfterFunc(d, func() { done(resp, err) })}
}

type timer struct{ *time.Timer }

func (t timer) Cancel() { t.Stop() }

// Log records the transports the query log was given.
type Log struct {
	mu         sync.Mutex
	Transports []string
}

// Log implements forwarder.QueryLogger.
func (l *Log) Log(e *querylog.Entry) {
	l.mu.Lock()
	l.Transports = append(l.Transports, e.Transport)
	l.mu.Unlock()
}

// Seen returns a copy of the transports logged so far.
func (l *Log) Seen() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.Transports...)
}

// Forwarder builds the pipeline: the zone, a cache, up as the default
// target, and log (may be nil) as the query log. It is closed when the test
// ends.
func Forwarder(t testing.TB, up *Upstream, log *Log) *forwarder.Forwarder {
	t.Helper()
	z, err := zone.Parse(ZoneName, strings.NewReader(`$ORIGIN aws.example.internal.
@ 300 IN SOA ns1 hostmaster 1 7200 900 1209600 60
@ 300 IN NS ns1
ns1 300 IN A 10.2.0.53
ipv4 300 IN A 10.2.1.10
`), "pipetest.zone")
	if err != nil {
		t.Fatal(err)
	}
	cfg := forwarder.Config{
		Rules:   []forwarder.Rule{{Name: "z", Domain: strings.TrimSuffix(ZoneName, "."), Type: rules.Zone, Zone: z}},
		Default: []forwarder.Target{{Up: up}},
		Cache:   cache.New(cache.Config{}),
	}
	if log != nil {
		cfg.Log = log
	}
	f, err := forwarder.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Close)
	return f
}

// Query packs an A query for name with the given ID.
func Query(t testing.TB, name string, id uint16) []byte {
	t.Helper()
	m := new(dns.Msg).SetQuestion(dns.Fqdn(name), dns.TypeA)
	m.Id = id
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}
