package forwarder

// resolveAsync resolves r (the pipeline's own copy, holding a slot of the
// in-flight bound) without a goroutine of its own when every target of its
// group can Submit: the group chains the attempts by callback, and the
// callback that ends them answers r and calls done. It reports false, doing
// nothing, when the group cannot; Resolve then uses a worker.
//
// This is what a busy forwarder's miss costs: no goroutine handoff, no
// context, one timer, and the answer sent from the upstream connection's
// reader.
func (f *Forwarder) resolveAsync(r *Request, done func(resp []byte)) bool {
	g := f.defGroup
	if r.rule != nil {
		g = r.rule.grp
	}
	if g == nil || !g.CanSubmit() {
		return false
	}
	f.c.forwarded.Add(1)
	complete := func(res result) {
		resp := f.respond(r, res, nil)
		f.finish(r, resp)
		done(resp)
		<-f.inflight
	}
	sh, key, fl := f.board(r, func(fl *flight) {
		// An identical query is being resolved (by either path): its
		// answer is ours. Its deadline is no later than ours would be.
		fl.waiters = append(fl.waiters, complete)
	})
	if fl == nil {
		return true
	}
	g.ExchangeAsync(upstreamQuery(r), r.start.Add(f.cfg.QueryTimeout), f.classifier(r),
		func(resp []byte, target string, err error) {
			res := f.accept(r, resp, target, err)
			sh.land(key, fl, res)
			complete(res)
		})
	return true
}
