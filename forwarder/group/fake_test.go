package group

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"

	"xdoh/internal/submittest"
)

// fake is a programmable Exchanger whose behaviour is a blocking function
// of a context: each Submit runs it on a goroutine, with a context that
// ends at the attempt's timeout or when the attempt is cancelled. Its
// behaviour can be changed while it is in use.
type fake struct {
	name  string
	calls atomic.Int64

	mu sync.Mutex
	fn func(ctx context.Context, q []byte) ([]byte, error)
}

func newFake(name string, fn func(ctx context.Context, q []byte) ([]byte, error)) *fake {
	return &fake{name: name, fn: fn}
}

func (f *fake) String() string { return f.name }

func (f *fake) Submit(q []byte, timeout time.Duration, done func([]byte, error)) Canceler {
	f.calls.Add(1)
	f.mu.Lock()
	fn := f.fn
	f.mu.Unlock()
	return submittest.Go(q, timeout, done, fn)
}

func (f *fake) set(fn func(ctx context.Context, q []byte) ([]byte, error)) {
	f.mu.Lock()
	f.fn = fn
	f.mu.Unlock()
}

var errDown = errors.New("connection refused")

// answer replies resp after delay, or fails with ctx's error if ctx ends
// first.
func answer(delay time.Duration, resp string) func(context.Context, []byte) ([]byte, error) {
	return func(ctx context.Context, _ []byte) ([]byte, error) {
		if delay > 0 {
			t := time.NewTimer(delay)
			defer t.Stop()
			select {
			case <-t.C:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		return []byte(resp), nil
	}
}

// fail fails at once.
func fail(context.Context, []byte) ([]byte, error) { return nil, errDown }

// hang answers nothing until ctx ends.
func hang(ctx context.Context, _ []byte) ([]byte, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}

// dnsReply answers a DNS query properly (for probes), with rcode.
func dnsReply(rcode int) func(context.Context, []byte) ([]byte, error) {
	return func(_ context.Context, q []byte) ([]byte, error) {
		m := new(dns.Msg)
		if err := m.Unpack(q); err != nil {
			return nil, err
		}
		r := new(dns.Msg)
		r.SetRcode(m, rcode)
		return r.Pack()
	}
}

// classify judges the fakes' responses by their first byte: G(ood),
// F(allback), anything else Bad.
func classify(resp []byte) Verdict {
	switch {
	case len(resp) > 0 && resp[0] == 'G':
		return Good
	case len(resp) > 0 && resp[0] == 'F':
		return Fallback
	}
	return Bad
}

// clock is a manual clock, advanced by the fakes to simulate round trips.
type clock struct{ ns atomic.Int64 }

func (c *clock) Now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *clock) Advance(d time.Duration) { c.ns.Add(int64(d)) }

// took answers "G" after advancing c by d.
func took(c *clock, d time.Duration) func(context.Context, []byte) ([]byte, error) {
	return func(context.Context, []byte) ([]byte, error) {
		c.Advance(d)
		return []byte("G"), nil
	}
}

func members(timeout time.Duration, fs ...*fake) []Member {
	ms := make([]Member, len(fs))
	for i, f := range fs {
		ms[i] = Member{Up: f, Timeout: timeout}
	}
	return ms
}

func mustNew(t interface {
	Helper()
	Fatal(...any)
}, ms []Member, cfg Config) *Group {
	t.Helper()
	g, err := New(ms, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return g
}
