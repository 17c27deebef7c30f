package dot

import "sync/atomic"

// Stats counts what a Server did since New.
type Stats struct {
	Conns             uint64 // connections accepted and served
	Open              uint64 // connections open now
	Refused           uint64 // connections closed at once: MaxConns were open
	RefusedPerClient  uint64 // connections closed at once: MaxConnsPerClient were open from the client's address
	HandshakeErrors   uint64 // TLS handshakes that failed
	HandshakeTimeouts uint64 // TLS handshakes not done within HandshakeTimeout
	Queries           uint64 // queries read
	Answers           uint64 // answers written (queued for writing)
	ProtocolErrors    uint64 // connections closed for a message shorter than a DNS header
	Timeouts          uint64 // connections closed for a query not complete within ReadTimeout
	IdleClosed        uint64 // connections closed for idleness
	PipelineFull      uint64 // times a connection's reading paused at MaxPipeline
	SlowClients       uint64 // connections cut off because a write timed out
}

// Stats returns the server's counters; safe to call at any time.
func (s *Server) Stats() Stats {
	c := &s.stats
	open := s.conns.Len()
	return Stats{
		Conns:             c.conns.Load(),
		Open:              uint64(open),
		Refused:           c.refused.Load(),
		RefusedPerClient:  c.refusedPerClient.Load(),
		HandshakeErrors:   c.handshakeErrors.Load(),
		HandshakeTimeouts: c.handshakeTimeouts.Load(),
		Queries:           c.queries.Load(),
		Answers:           c.answers.Load(),
		ProtocolErrors:    c.protocolErrors.Load(),
		Timeouts:          c.timeouts.Load(),
		IdleClosed:        c.idleClosed.Load(),
		PipelineFull:      c.pipelineFull.Load(),
		SlowClients:       c.slowClients.Load(),
	}
}

type counters struct {
	conns, refused, refusedPerClient, handshakeErrors, handshakeTimeouts, queries, answers,
	protocolErrors, timeouts, idleClosed, pipelineFull, slowClients atomic.Uint64
}
