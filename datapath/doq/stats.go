package doq

import "sync/atomic"

// Stats counts what a Server did since New.
type Stats struct {
	Conns             uint64 // connections that completed the handshake
	Open              uint64 // connections now, handshakes included
	Refused           uint64 // connections refused: MaxConns were open
	RefusedPerClient  uint64 // connections refused: MaxConnsPerClient were open from the client's address
	HandshakeErrors   uint64 // handshakes that failed
	HandshakeTimeouts uint64 // handshakes abandoned for HandshakeTimeout
	Queries           uint64 // queries read
	Answers           uint64 // answers written
	ProtocolErrors    uint64 // connections closed with DOQ_PROTOCOL_ERROR
	StreamTimeouts    uint64 // streams reset for not sending their query in time
	IdleClosed        uint64 // connections ended by the idle timeout
	WriteErrors       uint64 // answers that could not be written (stream reset, timeout)
}

// Stats returns the server's counters; safe to call at any time.
func (s *Server) Stats() Stats {
	c := &s.stats
	return Stats{
		Conns:             c.conns.Load(),
		Open:              uint64(s.conns.Len()),
		Refused:           c.refused.Load(),
		RefusedPerClient:  c.refusedPerClient.Load(),
		HandshakeErrors:   c.handshakeErrors.Load(),
		HandshakeTimeouts: c.handshakeTimeouts.Load(),
		Queries:           c.queries.Load(),
		Answers:           c.answers.Load(),
		ProtocolErrors:    c.protocolErrors.Load(),
		StreamTimeouts:    c.streamTimeouts.Load(),
		IdleClosed:        c.idleClosed.Load(),
		WriteErrors:       c.writeErrors.Load(),
	}
}

type counters struct {
	conns, refused, refusedPerClient, handshakeErrors, handshakeTimeouts, queries, answers,
	protocolErrors, streamTimeouts, idleClosed, writeErrors atomic.Uint64
}
