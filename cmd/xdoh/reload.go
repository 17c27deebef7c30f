package main

// Reloading: read the config again, build the next pipeline, work out
// each listener's change, start what can run beside the old datapaths,
// swap, then stop what was replaced.

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"time"

	"xdoh/cmd/xdoh/internal/config"
	"xdoh/datapath/doh"
	"xdoh/forwarder/querylog"
)

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
	if next.Control != a.cfg.Control {
		return errors.New("control: changing it needs a restart (the socket is made at start)")
	}
	if next.Procs != a.cfg.Procs {
		return fmt.Errorf("procs: changing it needs a restart (running: %d)", a.cfg.Procs)
	}
	if !slices.Equal(listenerNames(next), listenerNames(a.cfg)) {
		return fmt.Errorf("listeners: adding, removing or renaming listeners needs a restart (running: %s)", strings.Join(listenerNames(a.cfg), ", "))
	}
	if next.RRL.Enabled && !a.cfg.RRL.Enabled {
		for _, name := range listenerNames(a.cfg) {
			if l := a.listeners[name]; l != nil && l.xsk != nil {
				if _, on := l.xsk.TierStats(); on {
					return fmt.Errorf("rrl.enabled: listener %q's XDP program answers hot names itself, past any limit: turning rrl on needs a restart (or xdp.kernel_cache: off)", name)
				}
			}
		}
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
	cur := a.pipe.Load()
	keep := keepCache(cur.cache, a.cfg, next)
	p, err := buildPipeline(next, zs, a.counters, a.queryLogger(next), a.invalidateKernel, cur, keep, &a.ups)
	if err != nil {
		if newQlog != nil {
			_ = newQlog.Close()
		}
		return err
	}
	gone := a.applyDrains(p)
	grace := a.grace() // of the running config: its queries may still be in flight
	plan, err := a.prepare(next)
	if err != nil {
		p.close()
		if newQlog != nil {
			_ = newQlog.Close()
		}
		return err
	}
	var unlocks []func()
	if keep != nil {
		// The cache stays: take out the answers the next rules and zones
		// give differently (the kernel's copies go with them, through
		// OnChange), and from now on refuse the running pipeline's
		// answers, which come from its rules.
		n := keep.Invalidate(p.gen, changed(cur.routes, p.routes))
		a.log.Info("cache kept over the reload", "invalidated", n, "entries", keep.Stats().Entries)
	} else {
		// A new cache: the kernel's answers come from the old one: empty
		// them, and keep them empty until the new pipeline answers.
		for _, s := range a.xskServers() {
			unlocks = append(unlocks, s.LockKernelCache())
		}
	}
	old := a.pipe.Swap(p)
	a.sw.Store(p.fwd)
	for _, u := range unlocks {
		u()
	}
	p.fwd.StartHealthChecks()
	a.cfg = next
	for _, t := range gone {
		delete(a.drained, t)
		a.log.Info("drained target no longer in the config; forgotten", "target", t)
	}
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
		// Only a DoH, DoT or DoQ server re-bound on its own address can fail here.
		a.log.Error("reload applied with an error", "err", err)
	}
	a.retire(old, grace)
	a.log.Info("upstreams kept over the reload", "kept", p.kept, "dialled", p.dialled)
	a.log.Info("reloaded", "listeners", len(next.Listeners), "rules", len(next.Rules), "zones", len(next.Zones))
	return nil
}

// do53Key and dohKey say when a listener's sockets must be rebuilt.
func do53Key(l config.Listener) string {
	k := fmt.Sprint(l.Do53, l.UDPSockets, l.TCP)
	if l.XDPMode() != "off" { // the XDP program holds the addresses and the ACL
		k += fmt.Sprint(*l.XDP, l.Allow, l.ACLAction)
	}
	return k
}

func dohKey(l config.Listener, protos map[string]bool) string {
	if l.DoH == nil {
		return ""
	}
	return fmt.Sprint(*l.DoH, protos["doh-fips"]) // limits included: a new server applies them
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
	enc        []encChange // DoT, DoQ
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
				for i := range c.enc {
					c.enc[i].abort()
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
		for _, k := range encKinds {
			ec, err := a.prepareEnc(k, cur, l, protos, curProtos)
			if err != nil {
				return plan, err
			}
			c.enc = append(c.enc, ec)
		}
		// Do53 last: once it answers, the listener's DoH side is bound too
		// (a client or test that waits for Do53 finds DoH ready).
		running := cur.tcp != nil || cur.udp != nil
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

// commit stops what the plan replaces and starts DoH, DoT and DoQ servers
// that take over their predecessor's address.
func (a *app) commit(plan []*change) error {
	var errs []error
	for _, c := range plan {
		if c.stopDo53 {
			stopDo53(c.cur)
		}
		if c.do53 != nil {
			c.cur.tcp, c.cur.udp = c.do53.tcp, c.do53.udp
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
		for i := range c.enc {
			if err := c.enc[i].commit(a, c.cur, c.next.Name); err != nil {
				errs = append(errs, err)
			}
		}
		c.cur.cfg = c.next
	}
	a.publishKernelTiers()
	return errors.Join(errs...)
}
