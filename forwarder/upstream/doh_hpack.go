package upstream

// The request header blocks of an h2Conn (see doh_conn.go): precomputed
// per connection, with only content-length (POST) or :path (GET) encoded
// per request.

import (
	"encoding/base64"
	"fmt"
	"strconv"
	"strings"
)

// headerBlocks are the HPACK request header blocks of one target, without
// what is appended per request: content-length for a POST, :path with the
// query for a GET (appendGetPath).
type headerBlocks struct {
	first     []byte // inserts the constant fields into the dynamic table
	next      []byte // refers to those entries by index
	literal   []byte // uses no dynamic table
	tableSize uint32 // dynamic table size that first needs
	get       bool   // GET: :path carries the query; no content-type
	getPath   string // GET: the target's path and "?dns=" (or "&dns=" after a query of its own)
}

const dnsMessage = "application/dns-message"

// HPACK static table indices (RFC 7541, appendix A).
const (
	hpackAuthority     = 1
	hpackMethodGET     = 2
	hpackMethodPOST    = 3
	hpackPathSlash     = 4
	hpackSchemeHTTPS   = 7
	hpackAccept        = 19
	hpackContentLength = 28
	hpackContentType   = 31
)

type hpackField struct {
	idx   uint64
	name  string
	value string
}

// newHeaderBlocks precomputes the header blocks of a POST, or of a GET
// (RFC 8484 4.1): :method GET, no content-type, and a :path of its own per
// request, which appendGetPath encodes after the block.
func newHeaderBlocks(authority, path string, get bool) (headerBlocks, error) {
	var h headerBlocks
	fields := []hpackField{
		{hpackAuthority, ":authority", authority},
		{hpackPathSlash, ":path", path},
		{hpackContentType, "content-type", dnsMessage},
		{hpackAccept, "accept", dnsMessage},
	}
	pseudo := []byte{0x80 | hpackMethodPOST, 0x80 | hpackSchemeHTTPS}
	if get {
		// appendGetPath puts :method, :scheme and :path first: pseudo-header
		// fields precede the others (RFC 9113 8.3).
		fields = []hpackField{
			{hpackAuthority, ":authority", authority},
			{hpackAccept, "accept", dnsMessage},
		}
		pseudo = nil
		h.get = true
		h.getPath = path + "?dns="
		if strings.Contains(path, "?") {
			h.getPath = path + "&dns="
		}
	}
	h.first = append(h.first, pseudo...)
	h.literal = append(h.literal, pseudo...)
	h.next = append(h.next, pseudo...)
	for i, f := range fields {
		h.first = appendHpackString(appendHpackInt(h.first, 0x40, 6, f.idx), f.value)     // incremental indexing
		h.literal = appendHpackString(appendHpackInt(h.literal, 0x00, 4, f.idx), f.value) // without indexing
		h.tableSize += uint32(len(f.name) + len(f.value) + 32)
		// After the insertions the last one is dynamic index 62.
		h.next = appendHpackInt(h.next, 0x80, 7, uint64(62+len(fields)-1-i))
	}
	if len(h.literal)+len(h.getPath)+16 > maxHeaderBlock {
		return headerBlocks{}, fmt.Errorf("URL too long for one HEADERS frame (%d bytes)", len(h.literal))
	}
	if h.tableSize > 4096 {
		h.first = h.literal // would not fit the default table: never index
		h.next = h.literal
	}
	return h, nil
}

// appendHpackInt appends v as an HPACK integer with an n-bit prefix, the
// remaining high bits of the first byte taken from first (RFC 7541, 5.1).
func appendHpackInt(dst []byte, first byte, n uint, v uint64) []byte {
	limit := uint64(1)<<n - 1
	if v < limit {
		return append(dst, first|byte(v))
	}
	dst = append(dst, first|byte(limit))
	v -= limit
	for v >= 128 {
		dst = append(dst, byte(v&0x7f)|0x80)
		v >>= 7
	}
	return append(dst, byte(v))
}

// appendHpackString appends s as a raw (not Huffman-coded) HPACK string.
func appendHpackString(dst []byte, s string) []byte {
	return append(appendHpackInt(dst, 0, 7, uint64(len(s))), s...)
}

// appendContentLength appends content-length: n as a literal without
// indexing, so that the dynamic table keeps only the constant fields.
func appendContentLength(dst []byte, n int) []byte {
	var digits [20]byte
	d := strconv.AppendInt(digits[:0], int64(n), 10)
	dst = appendHpackInt(dst, 0x00, 4, hpackContentLength)
	dst = appendHpackInt(dst, 0, 7, uint64(len(d)))
	return append(dst, d...)
}

// appendGetPath appends the start of a GET's header block, to be
// followed by first, next or literal: :method GET, :scheme https and
// :path, the target's path with the query (its ID 0) in base64url without
// padding as the dns parameter (RFC 8484 4.1), as a literal without
// indexing: each query's path is new, and indexing it would only churn
// the server's dynamic table.
func (h *headerBlocks) appendGetPath(dst, query []byte) []byte {
	n := len(h.getPath) + base64.RawURLEncoding.EncodedLen(len(query))
	dst = append(dst, 0x80|hpackMethodGET, 0x80|hpackSchemeHTTPS)
	dst = appendHpackInt(dst, 0x00, 4, hpackPathSlash)
	dst = appendHpackInt(dst, 0, 7, uint64(n))
	dst = append(dst, h.getPath...)
	return base64.RawURLEncoding.AppendEncode(dst, query)
}
