package doh

import (
	"encoding/base64"
	"errors"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"

	"xdoh/forwarder"
)

const (
	mediaType = "application/dns-message"
	headerLen = 12 // DNS header

	initialInSize  = 1 << 10
	initialOutSize = 64 << 10   // the forwarder wants room for any response
	maxPooledSize  = 64<<10 + 1 // larger buffers are left to the GC
)

// Shared header values; net/http does not modify them.
var (
	contentTypeDNS = []string{mediaType}
	allowMethods   = []string{"GET, POST"}
)

// exchange is the per-request state kept in the server's pool.
type exchange struct {
	in  []byte // the query
	out []byte // the response
	req forwarder.Request
}

func newExchange() *exchange {
	return &exchange{in: make([]byte, 0, initialInSize), out: make([]byte, 0, initialOutSize)}
}

func (s *Server) putExchange(ex *exchange) {
	ex.req = forwarder.Request{}
	if cap(ex.in) > maxPooledSize || cap(ex.out) > maxPooledSize {
		return
	}
	s.pool.Put(ex)
}

// ServeHTTP answers one DoH request. It serves only Config.Path and works
// as a plain http.Handler too, e.g. behind another server.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != s.cfg.Path {
		s.fail(w, http.StatusNotFound, "404 page not found")
		return
	}
	ex := s.pool.Get().(*exchange)
	defer s.putExchange(ex)

	var (
		msg  []byte
		code int
		why  string
	)
	switch r.Method {
	case http.MethodPost:
		msg, code, why = s.readPost(r, ex)
	case http.MethodGet:
		msg, code, why = s.readGet(r, ex)
	default:
		w.Header()["Allow"] = allowMethods
		s.fail(w, http.StatusMethodNotAllowed, "method not allowed: use GET or POST")
		return
	}
	if code != 0 {
		s.fail(w, code, why)
		return
	}
	switch {
	case len(msg) < headerLen:
		s.fail(w, http.StatusBadRequest, "not a DNS query: shorter than a DNS header")
		return
	case msg[2]&0x80 != 0:
		s.fail(w, http.StatusBadRequest, "not a DNS query: QR bit set")
		return
	}

	ex.req = forwarder.Request{
		Msg:       msg,
		Transport: s.transport,
		Client:    clientAddr(r.RemoteAddr),
		Listener:  s.cfg.Name,
	}
	// out may be ex.out, a grown copy of it or the handler's own buffer;
	// only ex.out goes back to the pool.
	out := s.h.ServeDNS(r.Context(), &ex.req, ex.out[:0])
	if out == nil {
		s.fail(w, http.StatusBadRequest, "query not answered")
		return
	}
	if len(out) < headerLen {
		s.fail(w, http.StatusInternalServerError, "malformed response")
		return
	}
	h := w.Header()
	h["Content-Type"] = contentTypeDNS
	h["Cache-Control"] = []string{"max-age=" + strconv.FormatUint(uint64(maxAge(out)), 10)}
	h["Content-Length"] = []string{strconv.Itoa(len(out))}
	w.WriteHeader(http.StatusOK)
	s.stats.ok.Add(1)
	w.Write(out) // the client's problem if it fails; nothing left to tell it
}

// fail answers with an HTTP error status and counts it.
func (s *Server) fail(w http.ResponseWriter, code int, why string) {
	s.stats.count(code)
	http.Error(w, why, code)
}

// readPost reads a POST body into ex.in. A non-zero code is the HTTP status
// to fail with, why its text.
func (s *Server) readPost(r *http.Request, ex *exchange) (msg []byte, code int, why string) {
	if !isDNSMessage(r.Header.Get("Content-Type")) {
		return nil, http.StatusUnsupportedMediaType, "unsupported media type: want " + mediaType
	}
	if r.ContentLength > int64(s.cfg.MaxBodySize) {
		return nil, http.StatusRequestEntityTooLarge, "query too large"
	}
	buf, err := readBody(r.Body, ex.in, s.cfg.MaxBodySize)
	ex.in = buf[:0]
	switch {
	case errors.Is(err, errTooLarge):
		return nil, http.StatusRequestEntityTooLarge, "query too large"
	case err != nil:
		return nil, http.StatusBadRequest, "reading query: " + err.Error()
	}
	return buf, 0, ""
}

// readGet decodes the dns parameter of a GET into ex.in.
func (s *Server) readGet(r *http.Request, ex *exchange) (msg []byte, code int, why string) {
	v, ok := queryParam(r.URL.RawQuery, "dns")
	if !ok || v == "" {
		return nil, http.StatusBadRequest, "missing dns parameter"
	}
	if strings.IndexByte(v, '%') >= 0 { // percent-encoded padding
		var err error
		if v, err = url.QueryUnescape(v); err != nil {
			return nil, http.StatusBadRequest, "malformed dns parameter"
		}
	}
	v = strings.TrimRight(v, "=") // tolerate padding
	n := base64.RawURLEncoding.DecodedLen(len(v))
	if n > s.cfg.MaxBodySize {
		return nil, http.StatusRequestEntityTooLarge, "query too large"
	}
	if cap(ex.in) < n {
		ex.in = make([]byte, 0, n)
	}
	n, err := base64.RawURLEncoding.Decode(ex.in[:n], []byte(v))
	if err != nil {
		return nil, http.StatusBadRequest, "malformed dns parameter: not base64url"
	}
	return ex.in[:n], 0, ""
}

var errTooLarge = errors.New("body larger than the limit")

// readBody reads r into buf[:0], growing it up to limit octets.
func readBody(r io.Reader, buf []byte, limit int) ([]byte, error) {
	buf = buf[:0]
	for {
		if len(buf) == cap(buf) {
			if len(buf) > limit {
				return buf, errTooLarge
			}
			grown := make([]byte, len(buf), min(max(2*cap(buf), 512), limit+1))
			copy(grown, buf)
			buf = grown
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if len(buf) > limit {
			return buf, errTooLarge
		}
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return buf, err
		}
	}
}

// isDNSMessage reports whether a Content-Type value is application/dns-message,
// parameters and case aside.
func isDNSMessage(ct string) bool {
	if i := strings.IndexByte(ct, ';'); i >= 0 {
		ct = ct[:i]
	}
	return strings.EqualFold(strings.TrimSpace(ct), mediaType)
}

// queryParam returns the raw (still escaped) value of the first parameter
// key in a URL query, without building a url.Values map.
func queryParam(rawQuery, key string) (string, bool) {
	for rawQuery != "" {
		var kv string
		kv, rawQuery, _ = strings.Cut(rawQuery, "&")
		if k, v, _ := strings.Cut(kv, "="); k == key {
			return v, true
		}
	}
	return "", false
}

// clientAddr parses http.Request.RemoteAddr; IPv4-mapped IPv6 addresses
// become IPv4. An unparsable address gives the zero AddrPort.
func clientAddr(remote string) netip.AddrPort {
	ap, err := netip.ParseAddrPort(remote)
	if err != nil {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
