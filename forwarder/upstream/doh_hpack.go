package upstream

// The request header blocks of an h2Conn (see doh_conn.go): precomputed
// per connection, with only content-length encoded per request.

import (
	"fmt"
	"strconv"
)

// headerBlocks are the HPACK request header blocks of one target, without
// content-length, which is appended per request.
type headerBlocks struct {
	first     []byte // inserts :authority, :path, content-type, accept into the dynamic table
	next      []byte // refers to those four entries by index
	literal   []byte // uses no dynamic table
	tableSize uint32 // dynamic table size that first needs
}

const dnsMessage = "application/dns-message"

// HPACK static table indices (RFC 7541, appendix A).
const (
	hpackAuthority     = 1
	hpackMethodPOST    = 3
	hpackPathSlash     = 4
	hpackSchemeHTTPS   = 7
	hpackAccept        = 19
	hpackContentLength = 28
	hpackContentType   = 31
)

func newHeaderBlocks(authority, path string) (headerBlocks, error) {
	var h headerBlocks
	fields := []struct {
		idx   uint64
		name  string
		value string
	}{
		{hpackAuthority, ":authority", authority},
		{hpackPathSlash, ":path", path},
		{hpackContentType, "content-type", dnsMessage},
		{hpackAccept, "accept", dnsMessage},
	}
	pseudo := []byte{0x80 | hpackMethodPOST, 0x80 | hpackSchemeHTTPS}
	h.first = append(h.first, pseudo...)
	h.literal = append(h.literal, pseudo...)
	h.next = append(h.next, pseudo...)
	for i, f := range fields {
		h.first = appendHpackString(appendHpackInt(h.first, 0x40, 6, f.idx), f.value)     // incremental indexing
		h.literal = appendHpackString(appendHpackInt(h.literal, 0x00, 4, f.idx), f.value) // without indexing
		h.tableSize += uint32(len(f.name) + len(f.value) + 32)
		// After the four insertions the last one is dynamic index 62.
		h.next = appendHpackInt(h.next, 0x80, 7, uint64(62+len(fields)-1-i))
	}
	if len(h.literal)+16 > maxHeaderBlock {
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
