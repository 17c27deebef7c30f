package doh

import (
	"encoding/base64"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

const (
	mediaType = "application/dns-message"
	headerLen = 12 // DNS header
)

// stream is one request and its answer. The request fields belong to the
// reader; the answer fields are guarded by the connection's mu.
type stream struct {
	c  *conn
	id uint32

	// Reader-owned: the request as it arrives.
	start               time.Time
	method, path, ctype string
	scheme              bool
	clen                int64 // content-length; -1: none
	body                []byte
	recv                int  // DATA octets taken, padding included
	hsize               int  // header list size so far (RFC 9113 6.5.2)
	regular             bool // a regular field was seen: no pseudo-field may follow
	trailers            bool // the header block being decoded is the trailers
	endStream           bool // the request is complete once its header block is
	malformed, tooLarge bool
	ignore              bool          // reset or answered early: drop the rest of it
	refuse              http2.ErrCode // reset once the header block is decoded
	admitted            bool          // counted in conn.open

	// Guarded by conn.mu: the answer.
	window    int64  // send window
	pend      []byte // answer octets held back by flow control
	resolving bool   // the pipeline has not called back yet
	ended     bool   // END_STREAM or RST_STREAM sent or received: nothing more to write
}

func (c *conn) newStream(id uint32) *stream {
	return &stream{c: c, id: id, start: time.Now(), clen: -1}
}

// field takes one decoded header field. Whatever is wrong is noted and
// acted on when the block ends (the rest of the block must still be
// decoded to keep the HPACK table in step).
func (st *stream) field(f hpack.HeaderField, maxHeader int) {
	if st.hsize += len(f.Name) + len(f.Value) + 32; st.hsize > maxHeader {
		st.tooLarge = true
	}
	if st.malformed || st.ignore || st.tooLarge {
		return
	}
	if strings.HasPrefix(f.Name, ":") {
		if st.regular || st.trailers {
			st.malformed = true
			return
		}
		var dup bool
		switch f.Name {
		case ":method":
			dup, st.method = st.method != "", f.Value
		case ":path":
			dup, st.path = st.path != "", f.Value
		case ":scheme":
			dup, st.scheme = st.scheme, true
		case ":authority":
		default: // :status, :protocol or unknown
			dup = true
		}
		st.malformed = dup || f.Value == "" && f.Name != ":authority"
		return
	}
	st.regular = true
	if !validFieldName(f.Name) || !httpguts.ValidHeaderFieldValue(f.Value) {
		st.malformed = true
		return
	}
	if st.trailers {
		return
	}
	switch f.Name {
	case "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade":
		st.malformed = true // connection-specific (RFC 9113 8.2.2)
	case "te":
		st.malformed = f.Value != "trailers"
	case "content-type":
		st.ctype = f.Value
	case "content-length":
		n, err := strconv.ParseUint(f.Value, 10, 63)
		if err != nil || f.Value[0] == '+' || st.clen >= 0 && st.clen != int64(n) {
			st.malformed = true
			return
		}
		st.clen = int64(n)
	}
}

// complete reports whether the request header has what every request needs
// (RFC 9113 8.3.1). CONNECT, which has no :scheme and :path, counts as
// complete and gets 405.
func (st *stream) complete() bool {
	if st.method == "CONNECT" {
		return !st.scheme && st.path == ""
	}
	return st.method != "" && st.scheme && st.path != ""
}

// validFieldName reports whether a field name is a lower-case token (RFC
// 9113 8.2.1).
func validFieldName(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if !httpguts.IsTokenRune(r) || 'A' <= r && r <= 'Z' {
			return false
		}
	}
	return true
}

// parse applies RFC 8484 to a complete request and returns the DNS query,
// or the HTTP status to fail with and its text. A GET's query is decoded
// into *buf.
func (s *Server) parse(st *stream, buf *[]byte) (msg []byte, code int, why string) {
	path, query, _ := strings.Cut(st.path, "?")
	if path != s.cfg.Path {
		return nil, 404, "404 page not found"
	}
	switch st.method {
	case "POST":
		if !isDNSMessage(st.ctype) {
			return nil, 415, "unsupported media type: want " + mediaType
		}
		msg = st.body
	case "GET":
		v, ok := queryParam(query, "dns")
		if !ok || v == "" {
			return nil, 400, "missing dns parameter"
		}
		if strings.IndexByte(v, '%') >= 0 { // percent-encoded padding
			var err error
			if v, err = url.QueryUnescape(v); err != nil {
				return nil, 400, "malformed dns parameter"
			}
		}
		v = strings.TrimRight(v, "=") // tolerate padding
		n := base64.RawURLEncoding.DecodedLen(len(v))
		if n > s.cfg.MaxBodySize {
			return nil, 413, "query too large"
		}
		if cap(*buf) < n {
			*buf = make([]byte, n, max(n, 512))
		}
		n, err := base64.RawURLEncoding.Decode((*buf)[:n], []byte(v))
		if err != nil {
			return nil, 400, "malformed dns parameter: not base64url"
		}
		msg = (*buf)[:n]
	default:
		return nil, 405, "method not allowed: use GET or POST"
	}
	switch {
	case len(msg) < headerLen:
		return nil, 400, "not a DNS query: shorter than a DNS header"
	case msg[2]&0x80 != 0:
		return nil, 400, "not a DNS query: QR bit set"
	}
	return msg, 0, ""
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

// clientAddr parses a connection's remote address; IPv4-mapped IPv6
// addresses become IPv4. An unparsable address gives the zero AddrPort.
func clientAddr(remote string) netip.AddrPort {
	ap, err := netip.ParseAddrPort(remote)
	if err != nil {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
