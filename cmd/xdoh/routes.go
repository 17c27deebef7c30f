package main

// Keeping the cache over a reload: which cached answers the next config
// would give differently. The cache is looked up before routing, so an
// entry must go when the rule or zone that answers its name changed, or
// when its name now falls to another rule (a new zone, a new block, a
// removed forward rule): that is, when what answers the name differs.

import (
	"encoding/hex"
	"fmt"
	"reflect"
	"strings"

	"github.com/miekg/dns"

	"xdoh/cmd/xdoh/internal/config"
	"xdoh/forwarder/cache"
	"xdoh/forwarder/rules"
	"xdoh/forwarder/zone"
	"xdoh/internal/dnsmsg"
)

// routes maps a name to the identity of what answers it: a forward rule's
// settings, a zone's digest, "block", or the default targets' settings for
// system rules and names no rule covers. Names with equal identities under
// two configs get equal answers (up to the upstreams' own changes).
type routes struct {
	t   *rules.Table // Value: the identity string
	def string
	ids map[string]string // domain (lower-case FQDN) → identity, to compare tables
}

func newRoutes(cfg *config.Config, zs []*zone.Zone) (*routes, error) {
	r := &routes{def: "default none", ids: map[string]string{}}
	if cfg.Default != nil {
		r.def = fmt.Sprintf("default %#v", *cfg.Default)
	}
	var rs []rules.Rule
	add := func(name, domain, id string) {
		rs = append(rs, rules.Rule{Name: name, Domain: domain, Value: id})
	}
	for _, z := range zs {
		d := z.Digest()
		add("zone:"+z.Origin(), z.Origin(), "zone "+hex.EncodeToString(d[:]))
	}
	for _, rc := range cfg.Rules {
		var id string
		switch rc.Type {
		case "system":
			id = "system " + r.def
		case "block":
			id = "block"
		default:
			anon := rc
			anon.Name = "" // it only labels logs and metrics
			id = fmt.Sprintf("rule %#v", anon)
		}
		add(rc.Name, rc.Domain, id)
	}
	t, err := rules.New(rs)
	if err != nil {
		return nil, err
	}
	r.t = t
	for _, x := range rs {
		r.ids[strings.ToLower(dns.Fqdn(x.Domain))] = x.Value.(string)
	}
	return r, nil
}

// of is the identity of what answers the lower-cased wire name.
func (r *routes) of(name []byte) string {
	if m := r.t.Match(name); m != nil {
		return m.Value.(string)
	}
	return r.def
}

// changed is the predicate cache.Invalidate needs to go from old to next:
// true for a key whose name next answers differently. Nil when nothing
// differs at all.
func changed(old, next *routes) func(key []byte) bool {
	if old.def == next.def && reflect.DeepEqual(old.ids, next.ids) {
		return nil
	}
	return func(key []byte) bool {
		n := dnsmsg.KeyName(key)
		return n == nil || old.of(n) != next.of(n)
	}
}

// keepCache says whether a reload to next keeps the running cache c: the
// cache settings are the same (a size or TTL change starts an empty one).
func keepCache(c *cache.Cache, cur, next *config.Config) *cache.Cache {
	if c == nil || !next.Cache.On() || !reflect.DeepEqual(cur.Cache, next.Cache) {
		return nil
	}
	return c
}
