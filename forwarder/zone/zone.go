// Package zone holds local authoritative zones: RFC 1035 zone files loaded
// into memory and answered authoritatively, the way a private hosted zone is
// answered by the Route 53 Resolver.
//
// A Zone is built once by Load or Parse, checked for the mistakes a zone file
// can hold (no SOA at the apex, records outside the origin, a CNAME beside
// other data, data hidden below a delegation), and never changes afterwards,
// so it is safe for concurrent use. Answer resolves one question inside the
// zone: positive answers, NXDOMAIN and NODATA with the SOA for negative
// caching (RFC 2308), CNAME chains inside the zone, wildcards (RFC 4592),
// DNAME redirection (RFC 6672) and referrals for delegated subdomains.
//
// EDNS and truncation are left to the caller: Answer never adds an OPT record.
package zone

import (
	"crypto/sha256"
	"io"
	"slices"

	"github.com/miekg/dns"
)

// Zone is one loaded zone. It is immutable after Load or Parse and safe for
// concurrent use.
type Zone struct {
	origin string // lower-case FQDN
	soa    *dns.SOA
	negSOA *dns.SOA // the SOA as it goes into negative answers (RFC 2308 TTL)
	nodes  map[string]*node
	hasCut bool // at least one delegation below the apex
	// hasDNAME: at least one DNAME (RFC 6672), which redirects the names
	// below its owner.
	hasDNAME bool
}

// node is one name in the zone. A node without RRsets is an empty
// non-terminal: it exists only because names below it do.
type node struct {
	sets []rrset // sorted by type
	cut  bool    // NS records below the apex: a delegation point
}

// rrset is the records of one type at one name.
type rrset struct {
	typ uint16
	rrs []dns.RR
}

// Origin returns the zone apex as a lower-case FQDN, e.g.
// "aws.example.internal.".
func (z *Zone) Origin() string { return z.origin }

// get returns the records of type t at n, or nil.
func (n *node) get(t uint16) []dns.RR {
	for i := range n.sets {
		if n.sets[i].typ == t {
			return n.sets[i].rrs
		}
	}
	return nil
}

// add appends rr to the RRset of its type, keeping the sets sorted by type
// and dropping exact duplicates. It reports whether rr was new.
func (n *node) add(rr dns.RR) bool {
	t := rr.Header().Rrtype
	i, found := slices.BinarySearchFunc(n.sets, t, func(s rrset, t uint16) int { return int(s.typ) - int(t) })
	if !found {
		n.sets = slices.Insert(n.sets, i, rrset{typ: t, rrs: []dns.RR{rr}})
		return true
	}
	for _, old := range n.sets[i].rrs {
		if dns.IsDuplicate(old, rr) {
			return false
		}
	}
	n.sets[i].rrs = append(n.sets[i].rrs, rr)
	return true
}

// Digest is a SHA-256 over the zone's origin and records in a canonical
// order: two loads of a zone give the same digest exactly when they answer
// alike, so a reload can tell a changed zone from an unchanged one.
func (z *Zone) Digest() [sha256.Size]byte {
	h := sha256.New()
	io.WriteString(h, z.origin)
	names := make([]string, 0, len(z.nodes))
	for n := range z.nodes {
		names = append(names, n)
	}
	slices.Sort(names)
	var recs []string
	for _, n := range names {
		io.WriteString(h, "\x00"+n)
		for _, s := range z.nodes[n].sets {
			recs = recs[:0]
			for _, rr := range s.rrs {
				recs = append(recs, rr.String())
			}
			slices.Sort(recs)
			for _, r := range recs {
				io.WriteString(h, "\x00"+r)
			}
		}
	}
	var d [sha256.Size]byte
	h.Sum(d[:0])
	return d
}
