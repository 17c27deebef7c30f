package config

import (
	"fmt"
	"slices"
	"strings"
)

// CheckMigration checks that going from the running config old to next
// keeps clients able to reach every listener that stays: like a Route 53
// Resolver endpoint, a listener may not switch directly from Do53 only to
// encrypted only (DoH, DoH-FIPS, DoT, DoT-FIPS, DoQ), or back. It must
// pass through a set holding both, so clients can move over while the
// query log shows who still uses which.
func CheckMigration(old, next *Config) error {
	prev := map[string]map[string]bool{}
	for _, l := range old.Listeners {
		if set, err := l.ProtocolSet(); err == nil {
			prev[l.Name] = set
		}
	}
	var problems []string
	for i, l := range next.Listeners {
		was, ok := prev[l.Name]
		if !ok {
			continue // a new listener may start with any set
		}
		now, err := l.ProtocolSet()
		if err != nil {
			continue // Validate reports it
		}
		if plain(was) && encryptedOnly(now) || encryptedOnly(was) && plain(now) {
			problems = append(problems, fmt.Sprintf(
				"listeners[%d].protocols: %q cannot go from %s straight to %s; pass through a set with both (e.g. [do53, %s]) and check the query log first",
				i, l.Name, setString(was), setString(now), encryptedName(was, now)))
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("%s", strings.Join(problems, "; "))
	}
	return nil
}

func plain(set map[string]bool) bool { return len(set) == 1 && set["do53"] }

// encryptedProtocols are the protocols other than do53, in the order a
// migration hint names them.
var encryptedProtocols = []string{"doh-fips", "doh", "dot-fips", "dot", "doq"}

func encryptedOnly(set map[string]bool) bool {
	return !set["do53"] && slices.ContainsFunc(encryptedProtocols, func(p string) bool { return set[p] })
}

// encryptedName is the encrypted protocol a or b has, for the hint.
func encryptedName(a, b map[string]bool) string {
	for _, p := range encryptedProtocols {
		if a[p] || b[p] {
			return p
		}
	}
	return "doh"
}

func setString(set map[string]bool) string {
	var ps []string
	for p := range set {
		ps = append(ps, p)
	}
	slices.Sort(ps)
	return "[" + strings.Join(ps, ", ") + "]"
}
