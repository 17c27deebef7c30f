package zone

import (
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
		next := dns.CanonicalName(target)
		if hop+1 >= maxChain || !dns.IsSubDomain(z.origin, next) {
			return
		}
		seen[hop] = name
		for _, s := range seen[:hop+1] {
			if s == next {
				return // loop: the answer holds every record of it once
			}
		}
		name, qname = next, target
	}
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
