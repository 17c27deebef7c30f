package doh

import (
	"net/http"
	"sync/atomic"
)

// Stats counts the requests a Server answered, by outcome, and its failed
// TLS handshakes, since New. Requests that net/http refuses before they reach
// the handler (an oversized header, a malformed request line) are not
// counted.
type Stats struct {
	OK                   uint64 // 200: answered
	BadRequest           uint64 // 400: malformed query, or one the handler did not answer
	NotFound             uint64 // 404: a path other than Config.Path
	MethodNotAllowed     uint64 // 405: neither GET nor POST
	TooLarge             uint64 // 413: query over MaxBodySize
	UnsupportedMediaType uint64 // 415: POST without application/dns-message
	ServerError          uint64 // 500: the handler returned a malformed response
	HandshakeErrors      uint64 // TLS handshakes that failed or timed out
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
		UnsupportedMediaType: c.unsupportedMediaType.Load(),
		ServerError:          c.serverError.Load(),
		HandshakeErrors:      c.handshakeErrors.Load(),
	}
}

type counters struct {
	ok, badRequest, notFound, methodNotAllowed, tooLarge,
	unsupportedMediaType, serverError, handshakeErrors atomic.Uint64
}

// count adds one to the counter of an HTTP status.
func (c *counters) count(status int) {
	switch status {
	case http.StatusOK:
		c.ok.Add(1)
	case http.StatusBadRequest:
		c.badRequest.Add(1)
	case http.StatusNotFound:
		c.notFound.Add(1)
	case http.StatusMethodNotAllowed:
		c.methodNotAllowed.Add(1)
	case http.StatusRequestEntityTooLarge:
		c.tooLarge.Add(1)
	case http.StatusUnsupportedMediaType:
		c.unsupportedMediaType.Add(1)
	case http.StatusInternalServerError:
		c.serverError.Add(1)
	}
}
