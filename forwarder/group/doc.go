// Package group chooses among the targets of one forwarding rule: which
// target gets a query, when to give up on it and try the next one, when to
// send a second copy of the query (hedging), and which targets are healthy.
//
// It follows the split CoreDNS makes between plugin/pkg/proxy (one upstream:
// its connections, its transport) and plugin/forward (policy and retry among
// upstreams). A target here is anything with Submit and String
// ([Exchanger]), so the forwarder/upstream DoH and Do53 clients plug in as
// they are, and tests plug in fakes. The package knows nothing about DNS answers beyond the [Verdict]
// that the caller's classify function gives each response; it only builds
// DNS messages for its health probes.
//
// # Selection
//
// Every query ([Group.ExchangeAsync]) computes an order of targets: the healthy targets
// arranged by the [Policy], then the targets that are down, in configured
// order, as a last resort. So a query is never failed without trying when
// every target is down, and a down target is only tried after every healthy
// one has failed.
//
// A target the operator drained ([Group.SetDrained]) is in no order: it
// gets no new query, hedge or probe, up or down, as dnsdist's setDown
// does; what was sent to it before runs to its end ([State].Inflight shows
// it reaching zero). With every target drained a query fails at once with
// [ErrDrained] (the forwarder answers SERVFAIL, or a stale answer): a
// drain is meant, unlike a failure, so it is not second-guessed.
//
//   - [Ordered]: configured order (primary, then backups).
//   - [RoundRobin]: the healthy targets in configured order, rotated by
//     one per query (an atomic per-group counter), so load spreads evenly
//     over whatever is up.
//   - [Fastest]: ascending EWMA of the round-trip time; a target never
//     measured (EWMA 0) sorts first, so every target gets measured. Because
//     a target that is not chosen is not measured either, one query in 32
//     puts another healthy target first, so a target that had a bad spell
//     gets the chance to show that it is fast again.
//
// Targets are tried one after the other; each attempt is bounded by the
// member's Timeout and by the query's deadline, and the query ends by its
// deadline. A response judged [Good] ends the query at once. A [Fallback]
// response (SERVFAIL, REFUSED) is kept, and returned only if no target gives
// a Good one. A [Bad] response (malformed, mismatched) counts as a failure.
//
// # Health
//
// Health is passive first: every attempt updates its target. An answer
// (Good or Fallback: the target is alive) resets the failure streak and
// feeds the RTT into an EWMA (alpha 1/5) and into a latency histogram. An
// error, a timeout or a Bad response extends the streak; FailAfter failures
// in a row mark the target down. An attempt ended by the caller (its context
// cancelled or past its deadline) says nothing about the target and is not
// counted; so set Member.Timeout, or a black-holed target is never marked
// down by timeouts alone.
//
// Recovery is active: [Group.Start] runs one prober goroutine that, every
// ProbeInterval, sends "ProbeName IN NS" (with a fresh random ID) to every
// down target, and with ProbeAll to the up ones too. Any response carrying
// the probe's ID and question is a success, whatever its RCODE. RecoverAfter
// successes in a row bring a down target back (hysteresis: one lucky answer
// does not put a flapping target back in rotation). Successful last-resort
// attempts count toward recovery as well, so a group whose prober is not
// running still recovers under traffic. A probe failure of an up target
// counts toward its failure streak.
//
// # Hedging
//
// When the target a query is waiting for has not answered after the hedge
// delay, the query is sent to the next healthy target in the order as well;
// the first Good answer wins and the other attempt is cancelled. There is at
// most one hedge per query, so at most two attempts of a query run at once
// (a failover while the hedge is in flight waits for it instead of starting
// a third). Hedges never go to targets that are down.
//
// The delay is Config.HedgeDelay, or when that is 0 the target's recent p95
// latency, clamped to [HedgeMin, Timeout/2] (Timeout being the smaller of
// the member's timeout and what is left of the context). The p95 comes from
// a log-linear histogram per target (4 buckets per octave, about 20%
// resolution, from 1µs to 137s) whose counts are halved whenever they reach
// 512, so it follows the last few hundred answers. Until a target has 16
// answers its delay is the upper clamp (100ms when nothing bounds it).
//
// Extra load is bounded by a token bucket: every query earns HedgeBudget of
// a token, a hedge spends a whole one, and the bucket holds at most 5
// tokens (one to start with). Over N queries there are at most
// 1+N*HedgeBudget hedges.
//
// When a hedge wins, the target it overtook has been slow for at least the
// time it was given; that lower bound feeds its EWMA if it is above it, so
// Fastest learns to avoid a target that is always overtaken.
//
// # Cost
//
// A query holds no goroutine: each attempt is started by the callback of
// the one before (Submit's done) or by the hedge timer (time.AfterFunc), and
// the callback that settles the query calls the caller's. The attempt a Good
// answer overtook is cancelled through the Canceler its Submit returned (an
// open DoH stream is reset, a Do53 query's ID withdrawn), so that it does
// not hold a stream until its timeout; were its callback already on its
// way, it is ignored. The hot path takes the query's own mutex, one short
// per-target mutex per answer, and otherwise atomics. [Group.Exchange] is
// the same for a caller that waits (tools, tests): ExchangeAsync and a
// channel, cancelling the query when the caller's context ends.
package group
