package group

import (
	"context"
	"encoding/binary"
	"sync"

	"github.com/miekg/dns"

	"xdoh/internal/dnsmsg"
)

// probeRound probes, concurrently, every down target (every target with
// ProbeAll) that is not drained, and returns when all probes have ended.
func (g *Group) probeRound(ctx context.Context) {
	var wg sync.WaitGroup
	for _, t := range g.targets {
		if t.drained.Load() || t.healthy.Load() && !g.cfg.ProbeAll {
			continue // a drained target is left alone (its maintenance may be under way)
		}
		wg.Go(func() { g.probe(ctx, t) })
	}
	wg.Wait()
}

// probe sends one health probe to t and records the outcome. A probe is
// bounded by the member's timeout and by ProbeInterval.
func (g *Group) probe(ctx context.Context, t *target) {
	q := append([]byte(nil), g.probeMsg...)
	id := dns.Id()
	binary.BigEndian.PutUint16(q, id)
	to := g.cfg.ProbeInterval
	if t.timeout > 0 && t.timeout < to {
		to = t.timeout
	}
	type answer struct {
		resp []byte
		err  error
	}
	ch := make(chan answer, 1)
	start := g.now()
	h := t.up.Submit(q, to, func(resp []byte, err error) { ch <- answer{resp, err} })
	var a answer
	select {
	case a = <-ch:
	case <-ctx.Done():
		// Closing: the probe was cut short, it says nothing.
		if h != nil {
			h.Cancel()
		}
		return
	}
	rtt := g.now().Sub(start)
	switch {
	case ctx.Err() != nil:
		// Closing: as above.
	case a.err == nil && probeAnswered(q, a.resp):
		t.succeeded(rtt, g.cfg.RecoverAfter, true)
	default:
		t.failed(g.cfg.FailAfter)
	}
}

// probeAnswered reports whether resp is a response to the probe q: same ID,
// QR set, one question equal to q's (name compared case-insensitively).
// The RCODE does not matter: any answer shows the target is alive.
func probeAnswered(q, resp []byte) bool {
	if len(resp) < len(q) || resp[0] != q[0] || resp[1] != q[1] || resp[2]&0x80 == 0 ||
		binary.BigEndian.Uint16(resp[4:]) != 1 {
		return false
	}
	// q holds exactly one question and nothing else, uncompressed; a
	// response's first name cannot be compressed either (nothing precedes
	// it to point at).
	end := len(q) - 4
	return dnsmsg.EqualFold(resp[dnsmsg.HeaderLen:end], q[dnsmsg.HeaderLen:end]) && string(resp[end:len(q)]) == string(q[end:])
}
