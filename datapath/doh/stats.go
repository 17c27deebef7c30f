package doh

import "sync/atomic"

// Stats counts what a Server did since New: requests by outcome, and the
// connections and streams it refused or cut off.
type Stats struct {
	OK                   uint64 // 200: answered
	BadRequest           uint64 // 400: malformed query, or one the handler did not answer
	NotFound             uint64 // 404: a path other than Config.Path
	MethodNotAllowed     uint64 // 405: neither GET nor POST
	TooLarge             uint64 // 413: query over MaxBodySize
	HeaderTooLarge       uint64 // 431: header list over MaxHeaderBytes
	UnsupportedMediaType uint64 // 415: POST without application/dns-message
	ServerError          uint64 // 500: the handler returned a malformed response
	HandshakeErrors      uint64 // TLS handshakes that failed or timed out
	HTTP1                uint64 // HTTP/1.x requests answered 505

	Conns            uint64 // connections accepted and served
	Open             uint64 // connections open now
	Refused          uint64 // connections reset at once: MaxConns were open
	RefusedPerClient uint64 // connections reset at once: MaxConnsPerClient were open from the client's address

	ProtocolErrors uint64 // connections ended with GOAWAY for an HTTP/2 error
	StreamErrors   uint64 // streams reset for an HTTP/2 error
	RefusedStreams uint64 // streams past MaxConcurrentStreams, reset with REFUSED_STREAM
	ResetFloods    uint64 // connections that reset too many streams (rapid reset)
	HeaderFloods   uint64 // connections whose header block outgrew the limit (CONTINUATION flood)
	SlowClients    uint64 // connections cut off for not reading their answers
	Timeouts       uint64 // requests, header blocks or client prefaces not completed in time
	IdleClosed     uint64 // connections closed for idleness
}

// Stats returns the server's counters; safe to call at any time.
func (s *Server) Stats() Stats {
	c := &s.stats
	return Stats{
		OK:                   c.ok.Load(),
		BadRequest:           c.badRequest.Load(),
		NotFound:             c.notFound.Load(),
		MethodNotAllowed:     c.methodNotAllowed.Load(),
		TooLarge:             c.tooLarge.Load(),
		HeaderTooLarge:       c.headerTooLarge.Load(),
		UnsupportedMediaType: c.unsupportedMediaType.Load(),
		ServerError:          c.serverError.Load(),
		HandshakeErrors:      c.handshakeErrors.Load(),
		HTTP1:                c.http1.Load(),
		Conns:                c.conns.Load(),
		Open:                 uint64(s.conns.Len()),
		Refused:              c.refused.Load(),
		RefusedPerClient:     c.refusedPerClient.Load(),
		ProtocolErrors:       c.protocolErrors.Load(),
		StreamErrors:         c.streamErrors.Load(),
		RefusedStreams:       c.refusedStreams.Load(),
		ResetFloods:          c.resetFloods.Load(),
		HeaderFloods:         c.headerFloods.Load(),
		SlowClients:          c.slowClients.Load(),
		Timeouts:             c.timeouts.Load(),
		IdleClosed:           c.idleClosed.Load(),
	}
}

type counters struct {
	ok, badRequest, notFound, methodNotAllowed, tooLarge, headerTooLarge,
	unsupportedMediaType, serverError, handshakeErrors, http1,
	protocolErrors, streamErrors, refusedStreams, resetFloods, headerFloods,
	slowClients, timeouts, idleClosed, conns, refused, refusedPerClient atomic.Uint64
}

// count adds one to the counter of an HTTP error status.
func (c *counters) count(status int) {
	switch status {
	case 400:
		c.badRequest.Add(1)
	case 404:
		c.notFound.Add(1)
	case 405:
		c.methodNotAllowed.Add(1)
	case 413:
		c.tooLarge.Add(1)
	case 415:
		c.unsupportedMediaType.Add(1)
	case 431:
		c.headerTooLarge.Add(1)
	case 500:
		c.serverError.Add(1)
	}
}
