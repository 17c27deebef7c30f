package group

import (
	"context"
	"time"
)

// AsyncExchanger is an Exchanger that can also exchange without blocking
// its caller (forwarder/upstream's DoH does): Submit calls done exactly once,
// within timeout, with the response carrying the query's ID or an error. It
// does not retain query; done must not block and owns the response.
type AsyncExchanger interface {
	Exchanger
	Submit(query []byte, timeout time.Duration, done func(resp []byte, err error))
}

// ExchangeAsync is Exchange without blocking the caller: done receives what
// Exchange would return, once, by the deadline at the latest. When every
// target is an AsyncExchanger and the query is not hedged, the attempts are
// chained from one callback to the next with no goroutine of their own (the
// miss path of a busy forwarder); otherwise one goroutine runs Exchange.
// classify and done run on whichever goroutine completed the attempt (or on
// the caller's, for an attempt refused at once); query must stay unchanged
// until done is called.
func (g *Group) ExchangeAsync(query []byte, deadline time.Time, classify func([]byte) Verdict, done func(resp []byte, target string, err error)) {
	if classify == nil {
		classify = allGood
	}
	c := &chain{g: g, query: query, deadline: deadline, classify: classify, done: done}
	order, nUp := g.order(c.orderBuf[:0])
	c.order = order
	hedge := false
	if g.cfg.HedgeDelay >= 0 {
		g.earn()
		hedge = nUp >= 2 && g.tokens.Load() >= tokenUnit
	}
	if hedge || !g.async {
		go c.blocking(hedge, nUp)
		return
	}
	c.next()
}

// chain is one query's attempts, one after the other, each started by the
// callback of the one before.
type chain struct {
	g        *Group
	query    []byte
	deadline time.Time
	classify func([]byte) Verdict
	done     func(resp []byte, target string, err error)

	orderBuf [maxStackTargets]int
	order    []int
	i        int // next index in order
	t        *target
	start    time.Time
	o        outcome
}

// next starts the next attempt, or ends the query when no target or no
// time is left.
func (c *chain) next() {
	g := c.g
	for c.i < len(c.order) {
		now := g.now()
		left := c.deadline.Sub(now)
		if left <= 0 {
			break
		}
		t := g.targets[c.order[c.i]]
		c.i++
		if t.timeout > 0 && t.timeout < left {
			left = t.timeout
		}
		t.attempts.Add(1)
		c.o.tried, c.t, c.start = t.name, t, now
		t.async.Submit(c.query, left, c.reply)
		return
	}
	var cerr error
	if !g.now().Before(c.deadline) {
		cerr = context.DeadlineExceeded
	}
	resp, target, err := c.o.result(cerr)
	c.done(resp, target, err)
}

// reply settles the current attempt: a Good answer ends the query, anything
// else moves on to the next target.
func (c *chain) reply(resp []byte, err error) {
	g := c.g
	now := g.now()
	gaveUp := err != nil && !now.Before(c.deadline) // as in serial: the query's time ran out, not the target
	v, err := g.settle(gaveUp, c.t, resp, err, now.Sub(c.start), c.classify)
	if v == Good {
		c.done(resp, c.t.name, nil)
		return
	}
	c.o.add(c.t, v, resp, err)
	c.next()
}

// blocking runs the query as Exchange does, on its own goroutine: for
// hedged queries and for groups with a target that cannot Submit.
func (c *chain) blocking(hedge bool, nUp int) {
	ctx, cancel := context.WithDeadline(context.Background(), c.deadline)
	defer cancel()
	var resp []byte
	var target string
	var err error
	if hedge {
		h := call{g: c.g, ctx: ctx, query: append([]byte(nil), c.query...), nUp: nUp}
		resp, target, err = h.run(c.order, c.classify)
	} else {
		resp, target, err = c.g.serial(ctx, c.query, c.order, c.classify)
	}
	c.done(resp, target, err)
}

// CanSubmit reports whether every target can Submit, so that ExchangeAsync
// chains attempts without goroutines (hedged queries aside).
func (g *Group) CanSubmit() bool { return g.async }
