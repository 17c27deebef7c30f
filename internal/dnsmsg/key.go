package dnsmsg

// MaxKeyLen is the longest key AppendKey produces: a 255-octet name, type,
// class and a flags octet.
const MaxKeyLen = 255 + 5

// AppendKey appends the identity of q's answer: the lower-cased wire name,
// type, class and the EDNS bits that change an answer (OPT present, DO, CD).
// Two queries with equal keys can share one upstream response (the cache and
// in-flight coalescing rely on this).
func AppendKey(dst []byte, q *Query) []byte {
	dst = AppendLower(dst, q.Name)
	var flags byte
	if q.HasOPT {
		flags |= 1
	}
	if q.DO {
		flags |= 2
	}
	if q.CD() {
		flags |= 4
	}
	if q.RD() {
		flags |= 8
	}
	return append(dst, byte(q.Type>>8), byte(q.Type), byte(q.Class>>8), byte(q.Class), flags)
}
