package forwarder

import "sync/atomic"

// Switch is what the datapaths hold: the running pipeline, replaced in one
// atomic store on reload. A query stays with the pipeline that took it (its
// Resolve runs on the same Forwarder as its Answer), so queries in flight
// during a reload finish on the old pipeline and none is dropped.
type Switch struct {
	cur atomic.Pointer[Forwarder]
}

// NewSwitch starts with f.
func NewSwitch(f *Forwarder) *Switch {
	s := &Switch{}
	s.cur.Store(f)
	return s
}

// Store makes f the pipeline for new queries and returns the previous one.
func (s *Switch) Store(f *Forwarder) *Forwarder { return s.cur.Swap(f) }

// Load returns the current pipeline.
func (s *Switch) Load() *Forwarder { return s.cur.Load() }

// Answer runs the current pipeline's Answer.
func (s *Switch) Answer(r *Request, out []byte) ([]byte, bool) {
	return s.cur.Load().Answer(r, out)
}

// Resolve runs Resolve on the pipeline that answered r.
func (s *Switch) Resolve(r *Request, out []byte, done func(resp []byte)) ([]byte, bool) {
	f := r.owner
	if f == nil {
		f = s.cur.Load()
	}
	return f.Resolve(r, out, done)
}

// Hot runs the current pipeline's Hot.
func (s *Switch) Hot(r *Request) { s.cur.Load().Hot(r) }

// Peek runs the current pipeline's Peek.
func (s *Switch) Peek(r *Request, out []byte) ([]byte, int64, bool) {
	return s.cur.Load().Peek(r, out)
}
