package zone

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/miekg/dns"
)

// Problems Load and Parse find in a zone file that parsed as RFC 1035 text
// but does not make a valid zone. Errors wrap one of them; the message in
// front says which file, which line and which record.
var (
	ErrOrigin        = errors.New("invalid zone origin")
	ErrMissingSOA    = errors.New("no SOA record at the zone apex")
	ErrSOA           = errors.New("a zone has exactly one SOA record, at its apex")
	ErrMissingNS     = errors.New("no NS records at the zone apex")
	ErrOutOfZone     = errors.New("record outside the zone origin")
	ErrCNAMEConflict = errors.New("CNAME and other data at one name")
	ErrOccluded      = errors.New("data below a delegation other than glue")
	ErrUnsupported   = errors.New("unsupported record")
)

// Load reads the RFC 1035 zone file at path for the zone origin.
// $INCLUDE is not allowed.
func Load(origin, path string) (*Zone, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("loading zone %s: %w", origin, err)
	}
	defer f.Close()
	return Parse(origin, f, path)
}

// Parse reads an RFC 1035 zone for origin from r. filename is used in error
// messages, which say file and line of the offending record.
func Parse(origin string, r io.Reader, filename string) (*Zone, error) {
	z, err := parse(origin, r, filename)
	if err != nil {
		return nil, fmt.Errorf("loading zone %s: %w", origin, err)
	}
	return z, nil
}

func parse(origin string, r io.Reader, filename string) (*Zone, error) {
	if origin == "" {
		return nil, fmt.Errorf("empty origin: %w", ErrOrigin)
	}
	if _, ok := dns.IsDomainName(origin); !ok {
		return nil, fmt.Errorf("%q is not a domain name: %w", origin, ErrOrigin)
	}
	z := &Zone{
		origin: dns.CanonicalName(origin),
		nodes:  make(map[string]*node),
	}
	z.nodes[z.origin] = &node{}

	lr := &lineReader{br: bufio.NewReader(r)}
	lines := make(map[dns.RR]int)
	zp := dns.NewZoneParser(lr, z.origin, filename)
	for rr, ok := zp.Next(); ok; rr, ok = zp.Next() {
		line := lr.line()
		at := func(format string, args ...any) error {
			return fmt.Errorf("%s:%d: %s", filename, line, fmt.Sprintf(format, args...))
		}
		h := rr.Header()
		h.Name = dns.CanonicalName(h.Name)
		typ := dns.TypeToString[h.Rrtype]
		if !dns.IsSubDomain(z.origin, h.Name) {
			return nil, fmt.Errorf("%w: %w", at("%s %s is not in %s", h.Name, typ, z.origin), ErrOutOfZone)
		}
		if h.Class != dns.ClassINET {
			return nil, fmt.Errorf("%w: %w", at("%s %s has class %s, only IN is served", h.Name, typ, dns.ClassToString[h.Class]), ErrUnsupported)
		}
		if h.Rrtype == dns.TypeNS && isWildcard(h.Name) {
			return nil, fmt.Errorf("%w: %w", at("NS at the wildcard name %s", h.Name), ErrUnsupported)
		}
		if soa, ok := rr.(*dns.SOA); ok {
			switch {
			case h.Name != z.origin:
				return nil, fmt.Errorf("%w: %w", at("SOA at %s, below the apex %s", h.Name, z.origin), ErrSOA)
			case z.soa != nil && !dns.IsDuplicate(z.soa, soa):
				return nil, fmt.Errorf("%w: %w", at("second SOA at %s", h.Name), ErrSOA)
			}
			z.soa = soa
		}
		n := z.nodes[h.Name]
		if n == nil {
			n = &node{}
			z.nodes[h.Name] = n
			z.addAncestors(h.Name)
		}
		if err := cnameConflict(n, rr); err != nil {
			return nil, fmt.Errorf("%w: %w", at("%s", err), ErrCNAMEConflict)
		}
		if n.add(rr) {
			lines[rr] = line
		}
	}
	if err := zp.Err(); err != nil {
		return nil, err
	}
	if z.soa == nil {
		return nil, fmt.Errorf("%s: %w %s", filename, ErrMissingSOA, z.origin)
	}
	if z.nodes[z.origin].get(dns.TypeNS) == nil {
		return nil, fmt.Errorf("%s: %w %s", filename, ErrMissingNS, z.origin)
	}
	for name, n := range z.nodes {
		if name != z.origin && n.get(dns.TypeNS) != nil {
			n.cut = true
			z.hasCut = true
		}
		if n.get(dns.TypeDNAME) != nil {
			z.hasDNAME = true
		}
	}
	if err := z.checkOccluded(filename, lines); err != nil {
		return nil, err
	}
	z.negSOA = dns.Copy(z.soa).(*dns.SOA)
	z.negSOA.Hdr.Ttl = min(z.soa.Hdr.Ttl, z.soa.Minttl)
	return z, nil
}

// addAncestors creates the empty non-terminals between name and the origin.
func (z *Zone) addAncestors(name string) {
	off, end := dns.NextLabel(name, 0)
	for !end {
		parent := name[off:]
		if parent == z.origin {
			return
		}
		if _, ok := z.nodes[parent]; ok {
			return // its ancestors exist already
		}
		z.nodes[parent] = &node{}
		off, end = dns.NextLabel(name, off)
	}
}

// cnameConflict reports a CNAME that would share its name with other data
// (RFC 1034 section 3.6.2; RFC 2181 section 10.1). DNSSEC records may coexist.
func cnameConflict(n *node, rr dns.RR) error {
	h := rr.Header()
	if h.Rrtype == dns.TypeCNAME {
		if old := n.get(dns.TypeCNAME); old != nil && !dns.IsDuplicate(old[0], rr) {
			return fmt.Errorf("second CNAME at %s", h.Name)
		}
		for _, s := range n.sets {
			if !cnameCompanion(s.typ) {
				return fmt.Errorf("CNAME at %s beside %s data", h.Name, dns.TypeToString[s.typ])
			}
		}
		return nil
	}
	if n.get(dns.TypeCNAME) != nil && !cnameCompanion(h.Rrtype) {
		return fmt.Errorf("%s at %s beside a CNAME", dns.TypeToString[h.Rrtype], h.Name)
	}
	return nil
}

func cnameCompanion(t uint16) bool {
	return t == dns.TypeCNAME || t == dns.TypeRRSIG || t == dns.TypeNSEC
}

// checkOccluded rejects records a resolver could never see: anything at or
// below a delegation point other than the NS and DS records of the cut and
// address records (glue) for name servers.
func (z *Zone) checkOccluded(filename string, lines map[dns.RR]int) error {
	if !z.hasCut {
		return nil
	}
	var (
		bad     dns.RR
		badLine int
		badCut  string
	)
	for name, n := range z.nodes {
		cut := z.cutAbove(name, true)
		if cut == "" {
			continue
		}
		for _, s := range n.sets {
			switch s.typ {
			case dns.TypeA, dns.TypeAAAA:
				continue
			case dns.TypeNS, dns.TypeDS, dns.TypeRRSIG, dns.TypeNSEC:
				if cut == name {
					continue
				}
			}
			for _, rr := range s.rrs {
				if l := lines[rr]; bad == nil || l < badLine {
					bad, badLine, badCut = rr, l, cut
				}
			}
		}
	}
	if bad == nil {
		return nil
	}
	h := bad.Header()
	return fmt.Errorf("%s:%d: %s %s is hidden by the delegation at %s: %w",
		filename, badLine, h.Name, dns.TypeToString[h.Rrtype], badCut, ErrOccluded)
}

// cutAbove returns the delegation point closest to the apex on the way from
// the apex to name, or "". With self false, a delegation at name itself does
// not count (the parent side answers DS queries there).
func (z *Zone) cutAbove(name string, self bool) string {
	var found string
	off, end := 0, false
	for !end {
		suffix := name[off:]
		if suffix == z.origin {
			break
		}
		if n := z.nodes[suffix]; n != nil && n.cut && (off > 0 || self) {
			found = suffix
		}
		off, end = dns.NextLabel(name, off)
	}
	return found
}

func isWildcard(name string) bool { return len(name) >= 2 && name[0] == '*' && name[1] == '.' }

// lineReader counts the lines the zone parser has consumed, so errors about
// records that parsed fine can still name their line. The parser reads
// through io.ByteReader when its input has one, one byte at a time.
type lineReader struct {
	br    *bufio.Reader
	lines int
	last  byte
}

func (r *lineReader) ReadByte() (byte, error) {
	c, err := r.br.ReadByte()
	if err == nil {
		r.last = c
		if c == '\n' {
			r.lines++
		}
	}
	return c, err
}

func (r *lineReader) Read(p []byte) (int, error) {
	n, err := r.br.Read(p)
	for _, c := range p[:n] {
		if c == '\n' {
			r.lines++
		}
	}
	if n > 0 {
		r.last = p[n-1]
	}
	return n, err
}

// line is the line on which the record just returned by the parser ends.
func (r *lineReader) line() int {
	if r.last == '\n' {
		return r.lines
	}
	return r.lines + 1
}
