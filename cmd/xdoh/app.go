package main

import (
	"context"
	"crypto/fips140"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"xdoh/cmd/xdoh/internal/config"
	"xdoh/cmd/xdoh/internal/metrics"
	"xdoh/cmd/xdoh/internal/procs"
	"xdoh/datapath/doh"
	dpgnet "xdoh/datapath/gnet"
	"xdoh/datapath/udp"
	"xdoh/datapath/xsk"
	"xdoh/forwarder"
	"xdoh/forwarder/cache"
	"xdoh/forwarder/group"
	"xdoh/forwarder/querylog"
	"xdoh/forwarder/rules"
	"xdoh/forwarder/upstream"
	"xdoh/forwarder/zone"
)

// app is a running xdoh: listeners bound to datapaths that all feed one
// forwarder.Switch, and the pipeline behind it. A reload builds a new
// pipeline, checks the protocol migration, swaps the pipeline in one atomic
// store, and starts or stops only the datapaths whose settings changed; the
// old pipeline finishes its queries in flight and is closed after the query
// timeout.
type app struct {
	log  *slog.Logger
	load func() (*config.Config, error)

	mu        sync.Mutex // serialises start, reload, stop
	cfg       *config.Config
	sw        *forwarder.Switch
	pipe      atomic.Pointer[pipeline]
	counters  *forwarder.Counters
	listeners map[string]*listener
	qlog      *querylog.Logger
	qlogCfg   config.QueryLog
	qsw       logSwitch
	mx        *metrics.Server
	ctl       *controlServer
	stopped   bool
	// procs, if set (by run, for the process), is raised by the Do53
	// listeners' event loops while they have work; their UDP loops then
	// wait as suits the current level (udp.WaitAdaptive).
	procs *procs.Governor
	// kernelTiers are the AF_XDP servers (their in-kernel answer tiers),
	// for the cache's OnPut, which must not take mu.
	kernelTiers atomic.Pointer[[]*xsk.Server]
}

// pipeline is one generation of the forwarder and what it owns.
type pipeline struct {
	fwd   *forwarder.Forwarder
	cache *cache.Cache
	ups   []upstream.Upstream
}

func (p *pipeline) close() {
	if p.fwd != nil {
		p.fwd.Close()
	}
	for _, u := range p.ups {
		_ = u.Close()
	}
}

// listener is the datapaths of one configured listener.
type listener struct {
	cfg  config.Listener
	do53 *dpgnet.Server // TCP, and UDP when udp_engine is gnet
	udp  *udp.Server
	doh  *doh.Server
	xsk  *xsk.Server // Do53 UDP through AF_XDP (nil: sockets only)
	// xdpMode is how XDP is attached: native, generic, or off (not
	// configured, or auto fell back to the sockets).
	xdpMode string
}

func newApp(log *slog.Logger, load func() (*config.Config, error)) *app {
	return &app{log: log, load: load, listeners: map[string]*listener{}}
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

// buildPipeline turns a validated config and its loaded zones (loadZones)
// into a forwarder (nothing listens). onPut is the cache's OnPut (nil: none).
func buildPipeline(cfg *config.Config, zs []*zone.Zone, counters *forwarder.Counters, qlog forwarder.QueryLogger, onPut func([]byte)) (*pipeline, error) {
	p := &pipeline{}
	var err error
	fail := func(err error) (*pipeline, error) { p.close(); return nil, err }
	mkTargets := func(field string, targets []string, caFile string, timeout config.Duration) ([]forwarder.Target, error) {
		if timeout == 0 {
			timeout = cfg.Upstream.Timeout // the rule's own, else the global per-attempt timeout
		}
		var ts []forwarder.Target
		for j, t := range targets {
			up, err := upstream.New(t, upstream.Options{
				CAFile:  cfg.Path(caFile),
				Timeout: timeout.D(),
				Conns:   cfg.Upstream.Conns,
				Prewarm: true, // connections ready before the first query
			})
			if err != nil {
				return nil, fmt.Errorf("%s.targets[%d]: %w", field, j, err)
			}
			p.ups = append(p.ups, up)
			ts = append(ts, forwarder.Target{Up: up, Timeout: timeout.D()})
		}
		return ts, nil
	}
	fc := forwarder.Config{
		QueryTimeout:  cfg.Upstream.QueryTimeout.D(),
		TargetTimeout: cfg.Upstream.Timeout.D(),
		MaxInflight:   cfg.Upstream.MaxInflight,
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
		r := forwarder.Rule{Name: rc.Name, Domain: rc.Domain, Type: typ}
		if r.Select, err = selectConfig(rc.Select); err != nil {
			return fail(fmt.Errorf("rules[%d]: %w", i, err))
		}
		if r.Targets, err = mkTargets(fmt.Sprintf("rules[%d]", i), rc.Targets, rc.CAFile, rc.Timeout); err != nil {
			return fail(err)
		}
		fc.Rules = append(fc.Rules, r)
	}
	if cfg.Default != nil {
		if fc.DefaultSelect, err = selectConfig(cfg.Default.Select); err != nil {
			return fail(fmt.Errorf("default: %w", err))
		}
		if fc.Default, err = mkTargets("default", cfg.Default.Targets, cfg.Default.CAFile, cfg.Default.Timeout); err != nil {
			return fail(err)
		}
	}
	if cfg.Cache.On() {
		p.cache = cache.New(cache.Config{
			Entries: cfg.Cache.Entries, MaxBytes: cfg.Cache.MaxBytes,
			MinTTL: cfg.Cache.MinTTL.D(), MaxTTL: cfg.Cache.MaxTTL.D(),
			ServFailTTL: cfg.Cache.ServFailTTL.D(), StaleWindow: cfg.Cache.ServeStale.D(),
			OnPut: onPut,
		})
		fc.Cache = p.cache
	}
	if p.fwd, err = forwarder.New(fc); err != nil {
		return fail(err)
	}
	return p, nil
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

// checkFIPS refuses doh-fips listeners outside Go's FIPS 140-3 mode, before
// anything is bound.
func checkFIPS(cfg *config.Config) error {
	for i, l := range cfg.Listeners {
		if protos, _ := l.ProtocolSet(); protos["doh-fips"] && !fips140.Enabled() {
			return usagef("listeners[%d].protocols: %w", i, doh.ErrFIPSModeOff)
		}
	}
	return nil
}

// start builds everything from cfg and starts listening.
func (a *app) start(cfg *config.Config) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := checkFIPS(cfg); err != nil {
		return err
	}
	ql, err := openQueryLog(cfg.QueryLog, cfg)
	if err != nil {
		return err
	}
	a.qlog, a.qlogCfg = ql, cfg.QueryLog
	a.qsw.cur.Store(ql)
	a.counters = forwarder.NewCounters(listenerNames(cfg)...)
	zs, err := loadZones(cfg)
	if err != nil {
		return usagef("%v", err)
	}
	p, err := buildPipeline(cfg, zs, a.counters, a.queryLogger(cfg), a.invalidateKernel)
	if err != nil {
		return err
	}
	a.pipe.Store(p)
	p.fwd.StartHealthChecks()
	a.sw = forwarder.NewSwitch(p.fwd)
	a.cfg = cfg
	if cfg.Metrics.Address != "" {
		reg, err := a.collector().Registry()
		if err != nil {
			return err
		}
		if a.mx, err = metrics.Listen(cfg.Metrics.Address, reg); err != nil {
			return err
		}
		a.log.Info("metrics", "url", "http://"+a.mx.Addr().String()+"/metrics")
	}
	plan, err := a.prepare(cfg)
	if err != nil {
		return err
	}
	if err := a.commit(plan); err != nil {
		return err
	}
	if cfg.Control.Socket != "" {
		if a.ctl, err = listenControl(cfg.Path(cfg.Control.Socket), a); err != nil {
			return err
		}
	}
	if a.mx != nil {
		a.mx.SetReady(true)
	}
	a.log.Info("xdoh running", "pid", os.Getpid(), "listeners", len(cfg.Listeners), "rules", len(cfg.Rules), "zones", len(cfg.Zones),
		"cache", cfg.Cache.On(), "fips", doh.FIPSStatus())
	return nil
}

// logSwitch is the query logger every pipeline holds: the open
// querylog.Logger behind it is replaced on reload without rebuilding anything.
type logSwitch struct {
	cur atomic.Pointer[querylog.Logger]
}

func (s *logSwitch) Log(e *querylog.Entry) {
	if l := s.cur.Load(); l != nil {
		l.Log(e)
	}
}

// queryLogger is what a pipeline for cfg logs to (nil: no query log).
func (a *app) queryLogger(cfg *config.Config) forwarder.QueryLogger {
	if !cfg.QueryLog.On() {
		return nil
	}
	return &a.qsw
}

func openQueryLog(qc config.QueryLog, cfg *config.Config) (*querylog.Logger, error) {
	if !qc.On() {
		return nil, nil
	}
	lc := querylog.Config{Buffer: qc.Buffer, SampleRate: qc.SampleRate, Identity: "xdoh"}
	if qc.Path == "-" {
		lc.Stdout = true
	} else if qc.Path != "" {
		lc.Path = cfg.Path(qc.Path)
	}
	if qc.DnstapSocket != "" {
		lc.DnstapSocket = cfg.Path(qc.DnstapSocket)
	}
	if qc.DnstapFile != "" {
		lc.DnstapFile = cfg.Path(qc.DnstapFile)
	}
	return querylog.New(lc) // its errors name the querylog field
}

// grace is how long an old pipeline may still have queries in flight.
func (a *app) grace() time.Duration {
	qt := time.Duration(0)
	if a.cfg != nil {
		qt = a.cfg.Upstream.QueryTimeout.D()
	}
	if qt <= 0 {
		qt = 4 * time.Second
	}
	return qt + time.Second
}

// reload reads the config again and applies it, or keeps the running one and
// says why.
func (a *app) reload() error {
	a.mu.Lock() // reloads apply in the order their configs were read
	defer a.mu.Unlock()
	if a.stopped {
		return errors.New("shutting down")
	}
	next, err := a.load()
	if err != nil {
		return err
	}
	zs, err := loadZones(next)
	if err != nil {
		return err
	}
	if err := checkFIPS(next); err != nil {
		return err
	}
	if err := config.CheckMigration(a.cfg, next); err != nil {
		return err
	}
	if next.Procs != a.cfg.Procs {
		return fmt.Errorf("procs: changing it needs a restart (running: %d)", a.cfg.Procs)
	}
	if !slices.Equal(listenerNames(next), listenerNames(a.cfg)) {
		return fmt.Errorf("listeners: adding, removing or renaming listeners needs a restart (running: %s)", strings.Join(listenerNames(a.cfg), ", "))
	}
	// A query log at a new path is opened now, so a bad one rejects the
	// reload; one at the same path only after the old logger is closed
	// (two writers must not share a file).
	qc := next.QueryLog
	qlChanged := !reflect.DeepEqual(qc, a.qlogCfg)
	var newQlog *querylog.Logger
	if qlChanged && qc.On() && (a.qlog == nil || qc.Path != a.qlogCfg.Path || qc.DnstapFile != a.qlogCfg.DnstapFile) {
		if newQlog, err = openQueryLog(qc, next); err != nil {
			return err
		}
	}
	p, err := buildPipeline(next, zs, a.counters, a.queryLogger(next), a.invalidateKernel)
	if err != nil {
		if newQlog != nil {
			_ = newQlog.Close()
		}
		return err
	}
	grace := a.grace() // of the running config: its queries may still be in flight
	plan, err := a.prepare(next)
	if err != nil {
		p.close()
		if newQlog != nil {
			_ = newQlog.Close()
		}
		return err
	}
	old := a.pipe.Swap(p)
	// The kernel's answers come from the old cache: empty them, and keep
	// them empty until the new pipeline answers.
	var unlocks []func()
	for _, s := range a.xskServers() {
		unlocks = append(unlocks, s.LockKernelCache())
	}
	a.sw.Store(p.fwd)
	for _, u := range unlocks {
		u()
	}
	p.fwd.StartHealthChecks()
	a.cfg = next
	switch {
	case !qlChanged && a.qlog != nil:
		if err := a.qlog.Reopen(); err != nil { // SIGHUP after logrotate
			a.log.Error("reopening the query log", "err", err)
		}
	case qlChanged:
		if a.qlog != nil {
			a.qsw.cur.Store(newQlog) // nil until reopened below when the path is the same
			_ = a.qlog.Close()
		}
		if newQlog == nil && qc.On() {
			if newQlog, err = openQueryLog(qc, next); err != nil {
				a.log.Error("opening the query log; queries are not logged", "err", err)
			}
		}
		a.qlog, a.qlogCfg = newQlog, qc
		a.qsw.cur.Store(newQlog)
	}
	if err := a.commit(plan); err != nil {
		// Only a DoH server re-bound on its own address can fail here.
		a.log.Error("reload applied with an error", "err", err)
	}
	time.AfterFunc(grace, old.close)
	a.log.Info("reloaded", "listeners", len(next.Listeners), "rules", len(next.Rules), "zones", len(next.Zones))
	return nil
}

// do53Key and dohKey say when a listener's sockets must be rebuilt.
func do53Key(l config.Listener) string {
	k := fmt.Sprint(l.Do53, l.UDPEngine, l.UDPSockets, l.TCP)
	if l.XDPMode() != "off" { // the XDP program holds the addresses and the ACL
		k += fmt.Sprint(*l.XDP, l.Allow, l.ACLAction)
	}
	return k
}

func dohKey(l config.Listener, protos map[string]bool) string {
	if l.DoH == nil {
		return ""
	}
	return fmt.Sprint(l.DoH.Address, l.DoH.Path, l.DoH.Cert, l.DoH.Key, protos["doh-fips"])
}

// change is what a reload does to one listener's datapaths.
type change struct {
	cur      *listener
	next     config.Listener
	do53     *listener // new Do53 datapaths, already serving (nil: keep)
	stopDo53 bool      // stop the running Do53 datapaths at commit
	doh      *doh.Server
	dohFIPS  bool
	// dohRebind: the new DoH server takes the old one's address, so it
	// starts at commit, after the old one is shut down.
	dohRebind  bool
	stopDoH    bool
	reloadCert bool
}

// prepare works out each listener's change against what it is running now
// and starts every new datapath that can run beside the old one (Do53 via
// SO_REUSEPORT, DoH on a new address). If anything fails, everything new is
// stopped and the running listeners are untouched.
func (a *app) prepare(next *config.Config) (plan []*change, err error) {
	defer func() {
		if err != nil {
			for _, c := range plan {
				if c.do53 != nil {
					stopDo53(c.do53)
				}
				if c.doh != nil && !c.dohRebind {
					ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
					_ = c.doh.Shutdown(ctx)
					cancel()
				}
			}
		}
	}()
	for _, l := range next.Listeners {
		cur := a.listeners[l.Name]
		if cur == nil {
			cur = &listener{}
			a.listeners[l.Name] = cur
		}
		c := &change{cur: cur, next: l}
		plan = append(plan, c)
		protos, _ := l.ProtocolSet()
		https := protos["doh"] || protos["doh-fips"]
		fips := protos["doh-fips"]
		curProtos, _ := cur.cfg.ProtocolSet()
		switch {
		case cur.doh != nil && https && dohKey(cur.cfg, curProtos) == dohKey(l, protos):
			c.reloadCert = true
		case https:
			c.stopDoH = cur.doh != nil
			c.dohRebind = cur.doh != nil && cur.cfg.DoH != nil && cur.cfg.DoH.Address == l.DoH.Address
			if c.doh, err = a.newDoH(l, fips); err != nil { // certificate loaded and checked here
				return plan, err
			}
			c.dohFIPS = fips
			if !c.dohRebind {
				if err := c.doh.Start(); err != nil {
					c.doh = nil
					return plan, fmt.Errorf("listener %q: doh: %w", l.Name, err)
				}
			}
		default:
			c.stopDoH = cur.doh != nil
		}
		if c.reloadCert {
			if err := cur.doh.ReloadCertificate(); err != nil {
				return plan, fmt.Errorf("listener %q: %w", l.Name, err)
			}
		}
		// Do53 last: once it answers, the listener's DoH side is bound too
		// (a client or test that waits for Do53 finds DoH ready).
		running := cur.do53 != nil || cur.udp != nil
		if !(running && protos["do53"] && do53Key(cur.cfg) == do53Key(l)) {
			c.stopDo53 = running
			if protos["do53"] {
				c.do53 = &listener{}
				if err := a.startDo53(c.do53, l); err != nil {
					return plan, err
				}
			}
		}
	}
	return plan, nil
}

// commit stops what the plan replaces and starts DoH servers that take
// over their predecessor's address.
func (a *app) commit(plan []*change) error {
	var errs []error
	for _, c := range plan {
		if c.stopDo53 {
			stopDo53(c.cur)
		}
		if c.do53 != nil {
			c.cur.do53, c.cur.udp = c.do53.do53, c.do53.udp
			// XDP attaches now that the replaced listener has detached
			// its program: an interface holds one. Until then the new
			// kernel sockets answer.
			if err := a.startXDP(c.cur, c.next); err != nil {
				errs = append(errs, err)
			}
		}
		if c.stopDoH {
			stopDoH(c.cur)
		}
		if c.doh != nil {
			if c.dohRebind {
				if err := c.doh.Start(); err != nil {
					errs = append(errs, fmt.Errorf("listener %q: doh: %w", c.next.Name, err))
					c.cur.cfg = c.next
					continue
				}
			}
			c.cur.doh = c.doh
			a.logDoH(c.next.Name, c.doh, c.dohFIPS)
		}
		c.cur.cfg = c.next
	}
	a.publishKernelTiers()
	return errors.Join(errs...)
}

func (a *app) startDo53(cur *listener, l config.Listener) error {
	gnetUDP := l.UDPEngine == "gnet"
	var busy func(bool)
	wait := udp.WaitAuto
	if g := a.procs; g != nil {
		busy = func(b bool) {
			if b {
				g.Acquire()
			} else {
				g.Release()
			}
		}
		wait = udp.WaitAdaptive
	}
	s, err := dpgnet.New(dpgnet.Config{
		Name: l.Name, Addrs: l.Do53, TCPOnly: !gnetUDP,
		TCPIdleTimeout: l.TCP.IdleTimeout.D(), MaxTCPConns: l.TCP.MaxConns, MaxTCPPipeline: l.TCP.MaxPipeline,
		Loops: l.TCP.Loops, Busy: busy,
	}, a.sw)
	if err != nil {
		return fmt.Errorf("listener %q: %w", l.Name, err)
	}
	var u *udp.Server
	if !gnetUDP {
		if u, err = udp.New(udp.Config{Name: l.Name, Addrs: l.Do53, Sockets: l.UDPSockets, Wait: wait}, a.sw); err != nil {
			return fmt.Errorf("listener %q: %w", l.Name, err)
		}
		if err := u.Start(); err != nil {
			return fmt.Errorf("listener %q: %w", l.Name, err)
		}
	}
	if err := s.Start(); err != nil {
		if u != nil {
			_ = u.Stop(context.Background())
		}
		return fmt.Errorf("listener %q: %w", l.Name, err)
	}
	cur.do53, cur.udp = s, u
	a.log.Info("listening", "listener", l.Name, "transport", "do53 (udp+tcp)", "addrs", strings.Join(l.Do53, " "))
	return nil
}

func (a *app) newDoH(l config.Listener, fips bool) (*doh.Server, error) {
	s, err := doh.New(doh.Config{
		Name: l.Name, Addr: l.DoH.Address, Path: l.DoH.Path, FIPS: fips,
		CertFile: a.pathFor(l.DoH.Cert), KeyFile: a.pathFor(l.DoH.Key), ErrorLog: a.log,
		MaxConcurrentStreams: uint32(l.DoH.MaxStreams), IdleTimeout: time.Duration(l.DoH.IdleTimeout),
	}, a.sw)
	if err != nil {
		return nil, fmt.Errorf("listener %q: doh: %w", l.Name, err)
	}
	return s, nil
}

func (a *app) logDoH(name string, s *doh.Server, fips bool) {
	tr := "doh"
	if fips {
		tr = "doh-fips"
	}
	a.log.Info("listening", "listener", name, "transport", tr, "addr", s.Addr().String())
}

// pathFor resolves a file name against the directory of the config being
// applied (the running one at start, the next one on reload: same file).
func (a *app) pathFor(p string) string {
	if a.cfg == nil {
		return p
	}
	return a.cfg.Path(p)
}

// startXDP attaches the listener's XDP program and AF_XDP sockets. In
// mode auto a failure leaves the socket path serving, with one log line
// saying why; in mode native or generic it is an error.
func (a *app) startXDP(cur *listener, l config.Listener) error {
	cur.xdpMode = "off"
	if l.XDPMode() == "off" {
		return nil
	}
	mode, err := xsk.ParseMode(l.XDPMode())
	if err != nil {
		return fmt.Errorf("listener %q: xdp.mode: %w", l.Name, err)
	}
	kc, err := xsk.ParseKernelCacheMode(l.XDP.KernelCache)
	if err != nil {
		return fmt.Errorf("listener %q: xdp.kernel_cache: %w", l.Name, err)
	}
	cfg := xsk.Config{Name: l.Name, Interfaces: l.XDP.Interfaces, Mode: mode, ACLDrop: l.ACLAction == "drop", Log: a.log,
		KernelCache: xsk.KernelCache{Mode: kc, Entries: l.XDP.KernelCacheEntries,
			MaxAnswer: l.XDP.KernelCacheMaxAnswer, Hits: l.XDP.KernelCacheHits}}
	for _, d := range l.Do53 {
		ap, _ := netip.ParseAddrPort(d) // validated
		cfg.Addrs = append(cfg.Addrs, ap)
	}
	for _, s := range l.Allow {
		p, _ := config.ParsePrefix(s) // validated
		cfg.Allow = append(cfg.Allow, p)
	}
	s, err := xsk.New(cfg, a.sw)
	if err == nil {
		err = s.Start()
	}
	if err != nil {
		if mode == xsk.ModeAuto {
			a.log.Warn("xdp unavailable, serving Do53 through the kernel sockets", "listener", l.Name, "reason", err.Error())
			return nil
		}
		return fmt.Errorf("listener %q: %w", l.Name, err)
	}
	cur.xsk = s
	a.publishKernelTiers()
	modes := s.Modes()
	cur.xdpMode = modes[l.XDP.Interfaces[0]]
	_, tier := s.TierStats()
	a.log.Info("listening", "listener", l.Name, "transport", "do53 (udp) via af_xdp",
		"interfaces", strings.Join(l.XDP.Interfaces, " "), "mode", cur.xdpMode, "kernel_cache", tier)
	return nil
}

// xskServers are the running AF_XDP servers.
func (a *app) xskServers() []*xsk.Server {
	if p := a.kernelTiers.Load(); p != nil {
		return *p
	}
	return nil
}

// publishKernelTiers updates the list invalidateKernel reads; mu held.
func (a *app) publishKernelTiers() {
	var ss []*xsk.Server
	for _, l := range a.listeners {
		if l.xsk != nil {
			ss = append(ss, l.xsk)
		}
	}
	a.kernelTiers.Store(&ss)
}

// invalidateKernel is the caches' OnPut: the kernel's copy of an answer
// goes before the cache stores another for its question.
func (a *app) invalidateKernel(key []byte) {
	for _, s := range a.xskServers() {
		s.InvalidateKernel(key)
	}
}

func stopDo53(cur *listener) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if cur.xsk != nil { // first: its packets then reach the kernel sockets
		_ = cur.xsk.Stop(ctx)
		cur.xsk = nil
	}
	cur.xdpMode = "off"
	if cur.udp != nil {
		_ = cur.udp.Stop(ctx)
		cur.udp = nil
	}
	if cur.do53 != nil {
		_ = cur.do53.Stop(ctx)
		cur.do53 = nil
	}
}

func stopDoH(cur *listener) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = cur.doh.Shutdown(ctx)
	cur.doh = nil
}

func (a *app) stop() {
	var errs []error
	if a.mx != nil { // first: a scrape must not wait on a.mu while we stop
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		errs = append(errs, a.mx.Shutdown(ctx))
		cancel()
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.stopped = true
	if a.ctl != nil {
		errs = append(errs, a.ctl.Close())
	}
	for _, l := range a.listeners {
		stopDo53(l)
		if l.doh != nil {
			stopDoH(l)
		}
	}
	a.publishKernelTiers()
	if p := a.pipe.Load(); p != nil {
		p.close()
	}
	if a.qlog != nil {
		errs = append(errs, a.qlog.Close())
	}
	if err := errors.Join(errs...); err != nil {
		a.log.Warn("stopping", "err", err)
	}
}
