package group

import (
	"context"
	"sync"
	"time"
)

// ExchangeAsync sends query to the group's targets without blocking the
// caller, and calls done once with the first Good response, or the first
// Fallback one when no target gives a Good one, and the target that gave
// it. When none answers, done gets an error wrapping ErrNoAnswer and the
// last error (and context.DeadlineExceeded when the deadline ended the
// query); target is then the last target tried. Targets are tried healthy
// ones first, per the policy, then down ones; a failed attempt moves on to
// the next target at once, a slow one may be hedged. done is called by the
// deadline at the latest (plus the scheduling of a callback); a zero
// deadline leaves each attempt bounded by its member's timeout alone.
//
// The attempts are started from the callbacks of the ones before and from
// a hedge timer, with no goroutine of their own (the miss path of a busy
// forwarder). classify judges each response (nil: every response is
// Good); classify and done run on whichever goroutine completed an attempt
// (or on the caller's, for an attempt refused at once). query must stay
// unchanged until done is called.
func (g *Group) ExchangeAsync(query []byte, deadline time.Time, classify func([]byte) Verdict, done func(resp []byte, target string, err error)) {
	g.start(query, deadline, classify, false, done)
}

// start runs ExchangeAsync and returns the query's chain; cancellable
// keeps every attempt's Canceler, for Exchange to cancel the chain.
func (g *Group) start(query []byte, deadline time.Time, classify func([]byte) Verdict, cancellable bool, done func(resp []byte, target string, err error)) *chain {
	if classify == nil {
		classify = allGood
	}
	c := &chain{g: g, query: query, deadline: deadline, classify: classify, done: done, cancellable: cancellable}
	c.order, c.nUp = g.order(c.orderBuf[:0])
	if g.cfg.HedgeDelay >= 0 {
		g.earn()
		c.mayHedge = c.nUp >= 2 && g.tokens.Load() >= tokenUnit
	}
	c.mu.Lock()
	c.launch(false) // unlocks
	return c
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
	// cancellable: the chain may be cancelled (Cancel), so every attempt's
	// Canceler is kept, not only those of attempts a hedge may overtake.
	cancellable bool

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
	// live: the attempt counts in t.inflight; cleared, and the count
	// taken back, when it is settled or abandoned, whichever comes first.
	live bool
}

// release takes o's attempt out of its target's in-flight count, once;
// c.mu held.
func (o *aslot) release() {
	if o.live {
		o.live = false
		o.t.inflight.Add(-1)
	}
}

// launch starts an attempt at the next target with c.mu held, and releases
// it: Submit may call back at once. Without a target or time left it ends
// the query. The hedge timer is armed while a hedge is still possible.
func (c *chain) launch(hedge bool) {
	g := c.g
	now := g.now()
	var left time.Duration // 0: no deadline, the member's timeout alone
	if !c.deadline.IsZero() {
		if left = c.deadline.Sub(now); left <= 0 {
			c.finish()
			return
		}
	}
	if c.next >= len(c.order) {
		c.finish()
		return
	}
	s := 0
	if c.slots[0].busy {
		s = 1
	}
	t := g.targets[c.order[c.next]]
	c.next++
	if t.timeout > 0 && (left == 0 || t.timeout < left) {
		left = t.timeout
	}
	c.launches++
	gen := c.launches
	c.slots[s] = aslot{t: t, start: now, busy: true, gen: gen, live: true}
	c.inflight++
	c.o.tried = t.name
	t.attempts.Add(1)
	t.inflight.Add(1)
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
		c.timer = time.AfterFunc(g.hedgeDelayUntil(c.deadline, !c.deadline.IsZero(), t), func() { c.hedge(armed) })
	}
	c.mu.Unlock()
	h := t.up.Submit(c.query, left, func(resp []byte, err error) { c.reply(s, resp, err) })
	if h == nil || !c.mayHedge && !c.cancellable {
		return // without a hedge or Cancel no attempt is ever abandoned: nothing to cancel
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
	c.slots[s].release() // a loser's was released when it was abandoned
	if c.finished {
		c.mu.Unlock()
		return // a loser: abandoned when the winner answered
	}
	sl := c.slots[s]
	c.slots[s].busy = false // no longer overtaken by a winner; still in flight until settled
	c.mu.Unlock()

	now := g.now()
	gaveUp := err != nil && c.expired(now) // the query's time ran out, not the target's
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
				o.release()
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
	if c.expired(c.g.now()) {
		cerr = context.DeadlineExceeded
	}
	resp, target, err := c.o.result(cerr)
	c.mu.Unlock()
	c.done(resp, target, err)
}

// expired reports whether the query's deadline has passed at now.
func (c *chain) expired(now time.Time) bool {
	return !c.deadline.IsZero() && !now.Before(c.deadline)
}

// Cancel abandons the query unless done has been or is being called: the
// hedge timer is stopped, the attempts in flight are cancelled (they count
// for nothing in their targets' health) and done is never called. It
// reports whether it did.
func (c *chain) Cancel() bool {
	c.mu.Lock()
	if c.finished {
		c.mu.Unlock()
		return false
	}
	c.finished = true
	if c.timer != nil {
		c.timer.Stop()
	}
	var inflight [len(c.slots)]Canceler
	for i := range c.slots {
		if o := &c.slots[i]; o.busy {
			o.busy = false
			o.release()
			inflight[i], o.cancel = o.cancel, nil
			o.lost = inflight[i] == nil // launch cancels it when Submit returns
		}
	}
	c.mu.Unlock()
	for _, h := range inflight {
		if h != nil {
			h.Cancel()
		}
	}
	return true
}

// tried is the target of the attempt started last.
func (c *chain) tried() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.o.tried
}
