package group

import (
	"context"
	"time"
)

// call is one query that may be hedged: at most two attempts at a time,
// each on its own goroutine, reporting on results. The order of targets is
// passed to its methods rather than kept in it, so that it can stay on the
// caller's stack (a call's contents escape to the attempt goroutines).
type call struct {
	g        *Group
	ctx      context.Context
	query    []byte // the caller's query, copied: attempts may outlive the call
	nUp      int    // order[:nUp] are up
	next     int    // index in order of the next target to try
	inflight int
	hedged   bool
	slots    [2]slot
	results  chan result
	timer    *time.Timer
	timerC   <-chan time.Time // nil when no hedge is pending
	o        outcome
}

// slot is one attempt in flight.
type slot struct {
	t      *target
	start  time.Time
	cancel context.CancelFunc
	busy   bool
}

type result struct {
	slot int
	resp []byte
	err  error
}

func (c *call) run(order []int, classify func([]byte) Verdict) ([]byte, string, error) {
	c.results = make(chan result, len(c.slots)) // never blocks an attempt, even a late one
	defer func() {
		if c.timer != nil {
			c.timer.Stop()
		}
	}()
	c.launch(order, false)
	for {
		select {
		case r := <-c.results:
			s := &c.slots[r.slot]
			s.busy = false
			c.inflight--
			s.cancel()
			v, err := c.g.settle(c.ctx.Err() != nil, s.t, r.resp, r.err, c.g.now().Sub(s.start), classify)
			if v == Good {
				c.abandon(true)
				return r.resp, s.t.name, nil
			}
			c.o.add(s.t, v, r.resp, err)
			if c.inflight > 0 {
				continue // the other attempt is our failover already
			}
			if c.next == len(order) || c.ctx.Err() != nil {
				return c.o.result(c.ctx.Err())
			}
			c.launch(order, false)
		case <-c.timerC:
			c.timerC = nil
			if c.inflight == 1 && c.next < c.nUp && c.g.spend() {
				c.hedged = true
				c.launch(order, true)
			}
		case <-c.ctx.Done():
			c.abandon(false)
			return c.o.result(c.ctx.Err())
		}
	}
}

// launch starts an attempt at the next target and, while the query has not
// been hedged and a healthy target is left to hedge to, arms the hedge timer.
func (c *call) launch(order []int, hedge bool) {
	s := 0
	if c.slots[0].busy {
		s = 1
	}
	t := c.g.targets[order[c.next]]
	c.next++
	var actx context.Context
	var cancel context.CancelFunc
	if t.timeout > 0 {
		actx, cancel = context.WithTimeout(c.ctx, t.timeout)
	} else {
		actx, cancel = context.WithCancel(c.ctx)
	}
	c.slots[s] = slot{t: t, start: c.g.now(), cancel: cancel, busy: true}
	c.inflight++
	c.o.tried = t.name
	t.attempts.Add(1)
	if hedge {
		t.hedges.Add(1)
	}
	go attempt(actx, t.up, c.query, s, c.results)

	if c.hedged || c.next >= c.nUp {
		c.timerC = nil
		return
	}
	d := c.g.hedgeDelay(c.ctx, t)
	if c.timer == nil {
		c.timer = time.NewTimer(d)
	} else {
		c.timer.Reset(d) // since Go 1.23 no stale tick survives Reset
	}
	c.timerC = c.timer.C
}

func attempt(ctx context.Context, up Exchanger, query []byte, s int, results chan<- result) {
	resp, err := up.Exchange(ctx, query)
	results <- result{slot: s, resp: resp, err: err}
}

// abandon cancels the attempts still in flight. When another attempt won,
// each loser has been slow for at least the time it was given: that lower
// bound feeds its EWMA if it is above it.
func (c *call) abandon(won bool) {
	for i := range c.slots {
		s := &c.slots[i]
		if !s.busy {
			continue
		}
		s.cancel()
		if won {
			s.t.overtaken(c.g.now().Sub(s.start))
		}
	}
}
