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
		flags |= KeyOPT
	}
	if q.DO {
		flags |= KeyDO
	}
	if q.CD() {
		flags |= KeyCD
	}
	if q.RD() {
		flags |= KeyRD
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

// Key flags, the octet after the class in a key made by AppendKey.
const (
	KeyOPT = 1 << iota // the query had an OPT record
	KeyDO              // DNSSEC OK
	KeyCD              // checking disabled
	KeyRD              // recursion desired
)

// KeyFields splits a key made by AppendKey: the lower-cased wire name (it
// aliases key), type, class, flags (KeyOPT...) and the client subnet
// option's data (nil: none). ok is false for a key that does not parse.
func KeyFields(key []byte) (name []byte, qtype, qclass uint16, flags byte, subnet []byte, ok bool) {
	name = KeyName(key)
	rest := key[len(name):]
	if name == nil || len(rest) < 5 {
		return nil, 0, 0, 0, nil, false
	}
	qtype, qclass, flags = uint16(rest[0])<<8|uint16(rest[1]), uint16(rest[2])<<8|uint16(rest[3]), rest[4]
	if rest = rest[5:]; len(rest) > 0 {
		if int(rest[0]) != len(rest)-1 {
			return nil, 0, 0, 0, nil, false
		}
		subnet = rest[1:]
	}
	return name, qtype, qclass, flags, subnet, true
}

// InZone reports whether the wire name n is zone or a name below it. Both
// are uncompressed wire names in one letter case (AppendLower's).
func InZone(n, zone []byte) bool {
	for off := 0; off < len(n); off += 1 + int(n[off]) {
		if len(n)-off == len(zone) {
			return string(n[off:]) == string(zone)
		}
		if n[off] == 0 || len(n)-off < len(zone) {
			return false
		}
	}
	return false
}
