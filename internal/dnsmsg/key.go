package dnsmsg

// MaxKeyLen is the longest key AppendKey produces: a 255-octet name, type,
// class, a flags octet and a client subnet (a length octet and up to 20).
const MaxKeyLen = 255 + 5 + 1 + 20

// AppendKey appends the identity of q's answer: the lower-cased wire name,
// type, class and the EDNS bits that change an answer (OPT present, DO, CD).
// A query with a Subnet (the client subnet its answer is asked for) has
// it in its key too. Two queries with equal keys can share one upstream
// response (the cache and in-flight coalescing rely on this).
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
	dst = append(dst, byte(q.Type>>8), byte(q.Type), byte(q.Class>>8), byte(q.Class), flags)
	if q.Subnet != nil {
		dst = append(dst, byte(len(q.Subnet)))
		dst = append(dst, q.Subnet...)
	}
	return dst
}

// KeyName returns the lower-cased wire name at the start of a key made by
// AppendKey (it aliases key), or nil when key does not start with one.
func KeyName(key []byte) []byte {
	for off := 0; off < len(key); {
		l := int(key[off])
		if l == 0 {
			return key[:off+1]
		}
		if l > 63 {
			return nil
		}
		off += 1 + l
	}
	return nil
}
