package group

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// AsyncExchanger is an Exchanger that can also exchange without blocking
// its caller (forwarder/upstream's DoH and Do53 do): Submit calls done
// exactly once, within timeout, with the response carrying the query's ID
// or an error, unless the query is cancelled. It does not retain query;
// done must not block and owns the response. The Canceler it returns (nil
// if done has already been called; non-nil does not promise it has not)
// abandons the query, freeing what it holds upstream; done is then not
// called unless it already has been or is being called. Cancel must not be
// called with a lock that done takes.
type AsyncExchanger interface {
	Exchanger
	Submit(query []byte, timeout time.Duration, done func(resp []byte, err error)) Canceler
}

// Canceler abandons a submitted query. An alias of the interface literal,
// so that forwarder/upstream's own alias of it is the same type.
type Canceler = interface{ Cancel() }

// CanSubmit reports whether every target can Submit, so that ExchangeAsync
// needs no goroutine of its own.
func (g *Group) CanSubmit() bool { return g.async }

// ExchangeAsync is Exchange without blocking the caller: done receives what
// Exchange would return, once, by the deadline at the latest (plus the
// scheduling of a callback). When every target is an AsyncExchanger the
// attempts — failover and hedging as in Exchange — are started from the
// callbacks of the ones before and from a hedge timer, with no goroutine of
// their own (the miss path of a busy forwarder); otherwise one goroutine
// runs Exchange. classify and done run on whichever goroutine completed an
// attempt (or on the caller's, for an attempt refused at once); query must
// stay unchanged until done is called.
func (g *Group) ExchangeAsync(query []byte, deadline time.Time, classify func([]byte) Verdict, done func(resp []byte, target string, err error)) {
	if classify == nil {
		classify = allGood
	}
	c := &chain{g: g, query: query, deadline: deadline, classify: classify, done: done}
	c.order, c.nUp = g.order(c.orderBuf[:0])
	if g.cfg.HedgeDelay >= 0 {
		g.earn()
		c.mayHedge = c.nUp >= 2 && g.tokens.Load() >= tokenUnit
	}
	if !g.async {
		go c.blocking()
		return
	}
	c.mu.Lock()
	c.launch(false) // unlocks
}

// chain is one query's attempts without a goroutine: at most two at a time
// (the second a hedge), each started by a callback or the hedge timer.
type chain struct {
	g        *Group
	query    []byte
	deadline time.Time
	classify func([]byte) Verdict
	done     func(resp []byte, target string, err error)
	orderBuf [maxStackTargets]int
	order    []int // order[:nUp] are up
	nUp      int
	mayHedge bool // the budget allowed a hedge when the query started

	mu       sync.Mutex
	next     int // index in order of the next target to try
	inflight int
	hedged   bool
	finished bool // done has been called (or is being called)
	slots    [2]aslot
	timer    *time.Timer // the hedge timer, once armed
	armed    int         // how many times it was armed
	launches int         // attempts started; numbers the slots' generations
	o        outcome
}

type aslot struct {
	t      *target
	start  time.Time
	busy   bool
	gen    int      // which launch of the chain is in the slot
	cancel Canceler // the attempt's, once Submit has returned
	lost   bool     // overtaken before its Canceler was stored: cancel it then
}

// launch starts an attempt at the next target with c.mu held, and releases
// it: Submit may call back at once. Without a target or time left it ends
// the query. The hedge timer is armed while a hedge is still possible.
func (c *chain) launch(hedge bool) {
	g := c.g
	now := g.now()
	left := c.deadline.Sub(now)
	if c.next >= len(c.order) || left <= 0 {
		c.finish()
		return
	}
	s := 0
	if c.slots[0].busy {
		s = 1
	}
	t := g.targets[c.order[c.next]]
	c.next++
	if t.timeout > 0 && t.timeout < left {
		left = t.timeout
	}
	c.launches++
	gen := c.launches
	c.slots[s] = aslot{t: t, start: now, busy: true, gen: gen}
	c.inflight++
	c.o.tried = t.name
	t.attempts.Add(1)
	if hedge {
		t.hedges.Add(1)
	}
	if c.mayHedge && !c.hedged && c.next < c.nUp {
		// A timer per arming, numbered: one that fired for an attempt that
		// has failed since must not hedge its successor early.
		if c.timer != nil {
			c.timer.Stop()
		}
		c.armed++
		armed := c.armed
		c.timer = time.AfterFunc(g.hedgeDelayUntil(c.deadline, true, t), func() { c.hedge(armed) })
	}
	c.mu.Unlock()
	h := t.async.Submit(c.query, left, func(resp []byte, err error) { c.reply(s, resp, err) })
	if h == nil || !c.mayHedge {
		return // without a hedge no attempt is ever overtaken: nothing to cancel
	}
	c.mu.Lock()
	sl := &c.slots[s]
	if sl.gen != gen { // answered already, and the slot reused
		c.mu.Unlock()
		return
	}
	if sl.busy {
		sl.cancel = h
		c.mu.Unlock()
		return
	}
	lost := sl.lost // overtaken by the other attempt's answer meanwhile
	sl.lost = false
	c.mu.Unlock()
	if lost {
		h.Cancel()
	}
}

// hedge runs when the hedge timer fires: if the first attempt is still
// alone and unanswered and the budget allows, the next target is asked too.
func (c *chain) hedge(armed int) {
	c.mu.Lock()
	alone := c.inflight == 1 && (c.slots[0].busy || c.slots[1].busy) // not being settled
	if c.finished || c.hedged || armed != c.armed || !alone || c.next >= c.nUp || !c.g.spend() {
		c.mu.Unlock()
		return
	}
	c.hedged = true
	c.launch(true)
}

// reply settles the attempt in slot s. The first Good answer ends the query
// (an attempt still running is abandoned: its callback will be ignored, and
// its request ends at its own timeout at the latest); a failure
// moves on to the next target unless the other attempt is still running.
func (c *chain) reply(s int, resp []byte, err error) {
	g := c.g
	c.mu.Lock()
	if c.finished {
		c.mu.Unlock()
		return // a loser: abandoned when the winner answered
	}
	sl := c.slots[s]
	c.slots[s].busy = false // no longer overtaken by a winner; still in flight until settled
	c.mu.Unlock()

	now := g.now()
	gaveUp := err != nil && !now.Before(c.deadline) // as in serial: the query's time ran out, not the target
	v, err := g.settle(gaveUp, sl.t, resp, err, now.Sub(sl.start), c.classify)

	c.mu.Lock()
	c.inflight--
	if c.finished {
		c.mu.Unlock()
		return
	}
	if v == Good {
		c.finished = true
		if c.timer != nil {
			c.timer.Stop()
		}
		var losers [len(c.slots)]Canceler
		for i := range c.slots {
			if o := &c.slots[i]; o.busy {
				o.busy = false
				o.t.overtaken(now.Sub(o.start))
				losers[i], o.cancel = o.cancel, nil
				o.lost = losers[i] == nil // launch cancels it when Submit returns
			}
		}
		c.mu.Unlock()
		for _, h := range losers {
			if h != nil {
				h.Cancel() // its stream is reset, not left open until it times out
			}
		}
		c.done(resp, sl.t.name, nil)
		return
	}
	c.o.add(sl.t, v, resp, err)
	if c.inflight > 0 {
		c.mu.Unlock()
		return // the other attempt is our failover already
	}
	c.launch(false)
}

// finish ends the query without a Good answer, with c.mu held; it releases
// it.
func (c *chain) finish() {
	c.finished = true
	if c.timer != nil {
		c.timer.Stop()
	}
	var cerr error
	if !c.g.now().Before(c.deadline) {
		cerr = context.DeadlineExceeded
	}
	resp, target, err := c.o.result(cerr)
	c.mu.Unlock()
	c.done(resp, target, err)
}

// blocking runs the query as Exchange does, on its own goroutine, for
// groups with a target that cannot Submit.
func (c *chain) blocking() {
	ctx, cancel := context.WithDeadline(context.Background(), c.deadline)
	defer cancel()
	if err := ctx.Err(); err != nil { // as Exchange: nothing is sent
		c.done(nil, "", fmt.Errorf("%w: %w", ErrNoAnswer, err))
		return
	}
	var resp []byte
	var target string
	var err error
	if c.mayHedge {
		h := call{g: c.g, ctx: ctx, query: append([]byte(nil), c.query...), nUp: c.nUp}
		resp, target, err = h.run(c.order, c.classify)
	} else {
		resp, target, err = c.g.serial(ctx, c.query, c.order, c.classify)
	}
	c.done(resp, target, err)
}
