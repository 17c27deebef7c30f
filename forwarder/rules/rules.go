// Package rules maps a query name to the rule that governs it: the rule whose
// domain is the longest suffix of the name, on label boundaries ("most
// specific domain wins"). A `system` rule on sys.example.com therefore exempts
// that subtree from a `forward` rule on example.com.
//
// Lookups walk the labels of the lower-cased wire name and probe a map keyed
// by wire-format domain; they allocate nothing.
package rules

import (
	"fmt"
	"strings"

	"github.com/miekg/dns"
)

// Type is what a rule does with the queries it matches.
type Type uint8

// Rule types. Zone is a local authoritative zone; the others mirror the
// Route 53 Resolver rule types (FORWARD, SYSTEM) plus a block list.
const (
	Forward Type = iota + 1
	System
	Block
	Zone
)

func (t Type) String() string {
	switch t {
	case Forward:
		return "forward"
	case System:
		return "system"
	case Block:
		return "block"
	case Zone:
		return "zone"
	}
	return "unknown"
}

// ParseType reads a rule type as written in the config.
func ParseType(s string) (Type, error) {
	switch s {
	case "forward":
		return Forward, nil
	case "system":
		return System, nil
	case "block":
		return Block, nil
	}
	return 0, fmt.Errorf("unknown rule type %q (want forward, system or block)", s)
}

// Rule is one entry of the table. Value carries whatever the caller attaches
// (the forwarder keeps its target group or zone there).
type Rule struct {
	Name   string
	Domain string // FQDN, lower case
	Type   Type
	Value  any
}

// Table is an immutable rule set, safe for concurrent use.
type Table struct {
	byDomain map[string]*Rule // key: lower-case wire-format domain
}

// New builds a table. Domains are normalised (lower case, trailing dot); two
// rules on the same domain are an error naming both.
func New(rs []Rule) (*Table, error) {
	t := &Table{byDomain: make(map[string]*Rule, len(rs))}
	for i := range rs {
		r := rs[i]
		d := strings.ToLower(dns.Fqdn(r.Domain))
		if _, ok := dns.IsDomainName(d); !ok {
			return nil, fmt.Errorf("rule %q: domain %q is not a valid domain name", r.Name, r.Domain)
		}
		buf := make([]byte, 256)
		n, err := dns.PackDomainName(d, buf, 0, nil, false)
		if err != nil {
			return nil, fmt.Errorf("rule %q: domain %q: %w", r.Name, r.Domain, err)
		}
		key := string(buf[:n])
		if prev, dup := t.byDomain[key]; dup {
			return nil, fmt.Errorf("rule %q: domain %q is already used by rule %q", r.Name, d, prev.Name)
		}
		r.Domain = d
		t.byDomain[key] = &r
	}
	return t, nil
}

// Match returns the most specific rule for the lower-cased, uncompressed wire
// name, or nil when none matches. A rule on "." matches every name.
func (t *Table) Match(lowerWire []byte) *Rule {
	if len(t.byDomain) == 0 {
		return nil
	}
	for off := 0; off < len(lowerWire); {
		if r, ok := t.byDomain[string(lowerWire[off:])]; ok {
			return r
		}
		l := int(lowerWire[off])
		if l == 0 {
			break
		}
		off += 1 + l
	}
	return nil
}

// Len is the number of rules.
func (t *Table) Len() int { return len(t.byDomain) }
