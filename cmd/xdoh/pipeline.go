package main

// Building a pipeline: the forwarder, its upstreams and cache, from a
// validated config and its loaded zones. A start builds one; a reload builds
// the next beside the running one.

import (
	"cmp"
	"crypto/fips140"
	"fmt"
	"reflect"
	"time"

	"xdoh/cmd/xdoh/internal/config"
	"xdoh/datapath/tlsconf"
	"xdoh/forwarder"
	"xdoh/forwarder/cache"
	"xdoh/forwarder/group"
	"xdoh/forwarder/rules"
	"xdoh/forwarder/upstream"
	"xdoh/forwarder/zone"
)

// pipeline is one generation of the forwarder and what it owns.
type pipeline struct {
	fwd   *forwarder.Forwarder
	cache *cache.Cache
	// gen is the cache generation this pipeline writes as; a reload that
	// keeps the cache moves it to gen when the pipeline takes over.
	gen    uint64
	routes *routes // what answers each name, for the next reload's comparison
	// ups are the upstream clients this pipeline uses, upKeys their keys
	// in reg, which shares them with the other pipelines.
	ups    []upstream.Upstream
	upKeys []upKey
	reg    *upstreams
	// kept and dialled count the clients taken over from a running
	// pipeline and those made for this one.
	kept, dialled int
	// rrl and the section it was built from: the next generation keeps
	// the limiter, and its buckets, while the section stays the same.
	rrl    *forwarder.RRL
	rrlCfg config.RRL
}

func (p *pipeline) close() {
	if p.fwd != nil {
		p.fwd.Close()
	}
	for _, k := range p.upKeys {
		p.reg.release(k) // closed once no pipeline uses it
	}
	p.ups, p.upKeys = nil, nil
}

func loadZones(cfg *config.Config) ([]*zone.Zone, error) {
	var zs []*zone.Zone
	for i, zc := range cfg.Zones {
		z, err := zone.Load(zc.Name, cfg.Path(zc.File))
		if err != nil {
			return nil, fmt.Errorf("zones[%d]: loading %s: %w", i, zc.Name, err)
		}
		zs = append(zs, z)
	}
	return zs, nil
}

// ecsPolicy is the forwarder's form of a (validated) client-subnet policy.
func ecsPolicy(s config.Subnet) forwarder.ECS {
	mode, _ := forwarder.ParseECSMode(s.ECS) // validated
	return forwarder.ECS{Mode: mode, V4: s.ECSPrefix.IPv4, V6: s.ECSPrefix.IPv6}
}

// cookies is the server-cookie maker of the config (nil: off).
func cookies(c config.Cookies) *forwarder.Cookies {
	if !c.On() {
		return nil
	}
	return forwarder.NewCookies(c.SecretBytes(), c.RotateEvery(), c.Require)
}

// rrl is the response-rate limiter of the config's rrl section (nil: off):
// prev's when the section is the one prev was built from, so that a reload
// does not hand every limited prefix a fresh burst.
func rrl(c config.RRL, prev *pipeline) (*forwarder.RRL, error) {
	if !c.Enabled {
		return nil, nil
	}
	if prev != nil && prev.rrl != nil && reflect.DeepEqual(prev.rrlCfg, c) {
		return prev.rrl, nil
	}
	rc := forwarder.RRLConfig{
		ResponsesPerSecond: c.ResponsesPerSecond, NXDomainsPerSecond: c.NXDomainsPerSecond, ErrorsPerSecond: c.ErrorsPerSecond,
		Burst: c.Burst, Slip: c.SlipEvery(), IPv4Prefix: c.IPv4Prefix, IPv6Prefix: c.IPv6Prefix, Entries: c.Entries,
	}
	if rc.Slip == 0 {
		rc.Slip = forwarder.NoSlip
	}
	for _, e := range c.Exempt {
		pfx, _ := config.ParsePrefix(e) // validated
		rc.Exempt = append(rc.Exempt, pfx)
	}
	l, err := forwarder.NewRRL(rc)
	if err != nil {
		return nil, fmt.Errorf("rrl: %w", err)
	}
	return l, nil
}

// buildPipeline turns a validated config and its loaded zones (loadZones)
// into a forwarder (nothing listens). onChange is the cache's OnChange (nil:
// none). On reload, prev is the running pipeline (nil at start) and keep,
// if not nil, its cache to share (keepCache): the new pipeline writes it
// as the next generation. The upstream clients come from reg: those of
// targets whose settings the running pipeline has too are shared with it
// (their connections stay), the others are dialled; closing the pipeline
// gives them back.
func buildPipeline(cfg *config.Config, zs []*zone.Zone, counters *forwarder.Counters, qlog forwarder.QueryLogger, onChange func([]byte), prev *pipeline, keep *cache.Cache, reg *upstreams) (*pipeline, error) {
	p := &pipeline{rrlCfg: cfg.RRL, reg: reg}
	uses := map[upKey]int{} // of each client's settings so far
	var err error
	if p.routes, err = newRoutes(cfg, zs); err != nil {
		return nil, err
	}
	fail := func(err error) (*pipeline, error) { p.close(); return nil, err }
	// The in-flight bound, and each target's wait queue with it: a waiting
	// query is in flight too.
	maxInflight := cmp.Or(cfg.Upstream.MaxInflight, forwarder.DefaultMaxInflight)
	mkTargets := func(field string, targets []string, caFile, serverName, method string, bootstrap []string, timeout config.Duration) ([]forwarder.Target, error) {
		if timeout == 0 {
			timeout = cfg.Upstream.Timeout // the rule's own, else the global per-attempt timeout
		}
		var ts []forwarder.Target
		for j, t := range targets {
			k, err := newUpKey(t, upstream.Options{
				CAFile:     cfg.Path(caFile),
				ServerName: serverName,
				Bootstrap:  config.BootstrapAddrs(bootstrap),
				Method:     upstreamMethod(method),
				Timeout:    timeout.D(),
				Conns:      cfg.Upstream.Conns,
				MaxWait:    maxInflight,
			})
			if err != nil {
				return nil, fmt.Errorf("%s.ca_file: %w", field, err)
			}
			k.n = uses[k]
			uses[k]++
			up, dialled, err := reg.acquire(t, k)
			if err != nil {
				return nil, fmt.Errorf("%s.targets[%d]: %w", field, j, err)
			}
			p.ups, p.upKeys = append(p.ups, up), append(p.upKeys, k)
			if dialled {
				p.dialled++
			} else {
				p.kept++
			}
			ts = append(ts, forwarder.Target{Up: up, Timeout: timeout.D()})
		}
		return ts, nil
	}
	nsid, err := cfg.NSIDBytes()
	if err != nil {
		return fail(err)
	}
	if p.rrl, err = rrl(cfg.RRL, prev); err != nil {
		return fail(err)
	}
	fc := forwarder.Config{
		RRL:           p.rrl,
		NSID:          nsid,
		Cookies:       cookies(cfg.Cookies),
		QueryTimeout:  cfg.Upstream.QueryTimeout.D(),
		TargetTimeout: cfg.Upstream.Timeout.D(),
		MaxInflight:   maxInflight,
		Counters:      counters,
	}
	if qlog != nil {
		fc.Log = qlog
	}
	for _, l := range cfg.Listeners {
		fl := forwarder.Listener{Name: l.Name, Drop: l.ACLAction == "drop"}
		for _, a := range l.Allow {
			pfx, _ := config.ParsePrefix(a) // validated
			fl.Allow = append(fl.Allow, pfx)
		}
		fc.Listeners = append(fc.Listeners, fl)
	}
	for i, z := range zs {
		fc.Rules = append(fc.Rules, forwarder.Rule{Name: "zone:" + cfg.Zones[i].Name, Domain: z.Origin(), Type: rules.Zone, Zone: z})
	}
	for i, rc := range cfg.Rules {
		typ, err := rules.ParseType(rc.Type)
		if err != nil {
			return fail(fmt.Errorf("rules[%d].type: %w", i, err))
		}
		r := forwarder.Rule{Name: rc.Name, Domain: rc.Domain, Type: typ, ECS: ecsPolicy(rc.Subnet)}
		if r.Select, err = selectConfig(rc.Select); err != nil {
			return fail(fmt.Errorf("rules[%d]: %w", i, err))
		}
		if r.Targets, err = mkTargets(fmt.Sprintf("rules[%d]", i), rc.Targets, rc.CAFile, rc.TLSServerName, rc.Method, rc.Bootstrap, rc.Timeout); err != nil {
			return fail(err)
		}
		fc.Rules = append(fc.Rules, r)
	}
	if cfg.Default != nil {
		fc.DefaultECS = ecsPolicy(cfg.Default.Subnet)
		if fc.DefaultSelect, err = selectConfig(cfg.Default.Select); err != nil {
			return fail(fmt.Errorf("default: %w", err))
		}
		if fc.Default, err = mkTargets("default", cfg.Default.Targets, cfg.Default.CAFile, cfg.Default.TLSServerName, cfg.Default.Method, cfg.Default.Bootstrap, cfg.Default.Timeout); err != nil {
			return fail(err)
		}
	}
	switch {
	case keep != nil:
		p.cache, p.gen = keep, keep.Generation()+1
		fc.Cache, fc.CacheGeneration = p.cache, p.gen
	case cfg.Cache.On():
		p.cache = cache.New(cache.Config{
			Entries: cfg.Cache.Entries, MaxBytes: cfg.Cache.MaxBytes,
			MinTTL: cfg.Cache.MinTTL.D(), MaxTTL: cfg.Cache.MaxTTL.D(),
			ServFailTTL: cfg.Cache.ServFailTTL.D(), StaleWindow: cfg.Cache.ServeStale.D(),
			OnChange: onChange,
		})
		fc.Cache = p.cache
	}
	if p.fwd, err = forwarder.New(fc); err != nil {
		return fail(err)
	}
	return p, nil
}

// upstreamMethod is the upstream.Options.Method of a (validated) rule's
// method: "" (POST) unless it says get.
func upstreamMethod(method string) string {
	if method == "get" {
		return upstream.MethodGET
	}
	return ""
}

// selectConfig turns a rule's selection settings into a group.Config.
func selectConfig(s config.Select) (group.Config, error) {
	gc := group.Config{
		FailAfter: s.Health.FailAfter, RecoverAfter: s.Health.RecoverAfter,
		ProbeName: s.Health.ProbeName, ProbeInterval: s.Health.ProbeInterval.D(),
	}
	if s.Policy != "" {
		p, err := group.ParsePolicy(s.Policy)
		if err != nil {
			return gc, fmt.Errorf("policy: %w", err)
		}
		gc.Policy = p
	}
	switch s.Hedge {
	case "": // adaptive: the target's p95 latency
	case "off":
		gc.HedgeDelay = -1
	default:
		d, err := time.ParseDuration(s.Hedge)
		if err != nil {
			return gc, fmt.Errorf("hedge: %w", err)
		}
		gc.HedgeDelay = d
	}
	return gc, nil
}

func listenerNames(cfg *config.Config) []string {
	var ns []string
	for _, l := range cfg.Listeners {
		ns = append(ns, l.Name)
	}
	return ns
}

// checkFIPS refuses doh-fips and dot-fips listeners outside Go's FIPS
// 140-3 mode, before anything is bound.
func checkFIPS(cfg *config.Config) error {
	for i, l := range cfg.Listeners {
		if protos, _ := l.ProtocolSet(); (protos["doh-fips"] || protos["dot-fips"]) && !fips140.Enabled() {
			return usagef("listeners[%d].protocols: %w", i, tlsconf.ErrFIPSModeOff)
		}
	}
	return nil
}
