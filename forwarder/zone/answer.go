package zone

import (
	"slices"

	"github.com/miekg/dns"
)

// maxChain bounds the CNAME records Answer follows inside the zone.
const maxChain = 16

// Answer returns the authoritative response to the first question of req.
//
// The response carries AA (except for referrals), the RD and CD bits of req,
// and the question exactly as the client sent it; RA is never set. Names are
// matched without regard to case. A name outside the zone is REFUSED; a
// request without a question gets FORMERR and an opcode other than QUERY
// NOTIMP. The records in the response are copies the caller may modify.
func (z *Zone) Answer(req *dns.Msg) *dns.Msg {
	m := new(dns.Msg)
	m.SetReply(req)
	switch {
	case req.Opcode != dns.OpcodeQuery:
		m.Rcode = dns.RcodeNotImplemented
		return m
	case len(req.Question) == 0:
		m.Rcode = dns.RcodeFormatError
		return m
	}
	q := req.Question[0]
	if (q.Qclass != dns.ClassINET && q.Qclass != dns.ClassANY) || !dns.IsSubDomain(z.origin, q.Name) {
		m.Rcode = dns.RcodeRefused
		return m
	}
	m.Authoritative = true
	z.resolve(m, q.Name, q.Qtype)
	return m
}

// resolve fills m with the answer for qname/qtype, following CNAME records
// that stay inside the zone.
func (z *Zone) resolve(m *dns.Msg, qname string, qtype uint16) {
	name := dns.CanonicalName(qname)
	var seen [maxChain]string
	for hop := 0; ; hop++ {
		if z.hasCut {
			if cut := z.cutAbove(name, qtype != dns.TypeDS); cut != "" {
				if hop == 0 {
					z.referral(m, cut)
				}
				// A CNAME into a delegated subdomain: the chain ends here
				// and the resolver follows the target itself.
				return
			}
		}
		if z.hasDNAME {
			if d := z.dnameAbove(name); d != nil {
				// RFC 6672 3.2: the DNAME, and a CNAME synthesised from it
				// for the name asked, with the DNAME's TTL; then on to the
				// new name, as for a CNAME.
				m.Answer = appendRRs(m.Answer, d, "")
				dn := d[0].(*dns.DNAME)
				target := qname[:len(qname)-len(dn.Hdr.Name)] + dn.Target
				if _, ok := dns.IsDomainName(target); !ok || len(target) > 254 {
					m.Rcode = dns.RcodeYXDomain // the new name is too long
					return
				}
				m.Answer = append(m.Answer, &dns.CNAME{Hdr: dns.RR_Header{Name: qname, Rrtype: dns.TypeCNAME, Class: dns.ClassINET, Ttl: dn.Hdr.Ttl}, Target: target})
				if !z.follow(&seen, hop, name, target) {
					return
				}
				name, qname = dns.CanonicalName(target), target
				continue
			}
		}
		n, owner := z.nodes[name], ""
		if n == nil {
			if n = z.wildcard(name); n == nil {
				m.Rcode = dns.RcodeNameError
				m.Ns = append(m.Ns, dns.Copy(z.negSOA))
				return
			}
			owner = qname // synthesised from the wildcard, in the client's case
		}
		if qtype == dns.TypeANY {
			for _, s := range n.sets {
				m.Answer = appendRRs(m.Answer, s.rrs, owner)
			}
			if len(n.sets) == 0 {
				m.Ns = append(m.Ns, dns.Copy(z.negSOA))
			}
			return
		}
		if rrs := n.get(qtype); rrs != nil {
			m.Answer = appendRRs(m.Answer, rrs, owner)
			return
		}
		cname := n.get(dns.TypeCNAME)
		if cname == nil {
			m.Ns = append(m.Ns, dns.Copy(z.negSOA)) // NODATA
			return
		}
		m.Answer = appendRRs(m.Answer, cname, owner)
		target := cname[0].(*dns.CNAME).Target
		if !z.follow(&seen, hop, name, target) {
			return
		}
		name, qname = dns.CanonicalName(target), target
	}
}

// follow reports whether the chain goes on from name, hop hops in, to
// target: within the chain bound, inside the zone, and not in a loop (the
// answer then holds every record of the loop once).
func (z *Zone) follow(seen *[maxChain]string, hop int, name, target string) bool {
	next := dns.CanonicalName(target)
	if hop+1 >= maxChain || !dns.IsSubDomain(z.origin, next) {
		return false
	}
	seen[hop] = name
	return !slices.Contains(seen[:hop+1], next)
}

// dnameAbove returns the DNAME RRset that redirects name: the one at the
// ancestor of name closest to the apex that has one (names below a DNAME
// cannot exist, so a lower one would be occluded), or nil.
func (z *Zone) dnameAbove(name string) []dns.RR {
	var found []dns.RR
	for off, end := dns.NextLabel(name, 0); !end; off, end = dns.NextLabel(name, off) {
		anc := name[off:]
		if n := z.nodes[anc]; n != nil {
			if d := n.get(dns.TypeDNAME); d != nil {
				found = d
			}
		}
		if anc == z.origin {
			break
		}
	}
	return found
}

// wildcard returns the wildcard node that synthesises name (RFC 4592
// section 3.3.1): "*." prepended to the closest encloser, the nearest
// ancestor of name that exists. It returns nil when there is none.
func (z *Zone) wildcard(name string) *node {
	off, end := dns.NextLabel(name, 0)
	for !end {
		ce := name[off:]
		if _, ok := z.nodes[ce]; ok {
			return z.nodes["*."+ce]
		}
		if ce == z.origin {
			return nil
		}
		off, end = dns.NextLabel(name, off)
	}
	return nil
}

// referral fills m with a delegation to the name servers at cut: NS records
// in the authority section, addresses of in-zone name servers (glue) in the
// additional section, AA clear.
func (z *Zone) referral(m *dns.Msg, cut string) {
	m.Authoritative = false
	ns := z.nodes[cut].get(dns.TypeNS)
	m.Ns = appendRRs(m.Ns, ns, "")
	for _, rr := range ns {
		host := dns.CanonicalName(rr.(*dns.NS).Ns)
		if !dns.IsSubDomain(z.origin, host) {
			continue
		}
		if n := z.nodes[host]; n != nil {
			m.Extra = appendRRs(m.Extra, n.get(dns.TypeA), "")
			m.Extra = appendRRs(m.Extra, n.get(dns.TypeAAAA), "")
		}
	}
}

// appendRRs appends copies of rrs to dst, with the owner name replaced by
// owner when it is not empty (wildcard synthesis).
func appendRRs(dst, rrs []dns.RR, owner string) []dns.RR {
	for _, rr := range rrs {
		c := dns.Copy(rr)
		if owner != "" {
			c.Header().Name = owner
		}
		dst = append(dst, c)
	}
	return dst
}
