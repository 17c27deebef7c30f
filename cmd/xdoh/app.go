package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"xdoh/bpf"
	"xdoh/cmd/xdoh/internal/config"
	"xdoh/cmd/xdoh/internal/metrics"
	"xdoh/cmd/xdoh/internal/procs"
	"xdoh/datapath/doh"
	"xdoh/datapath/tcp"
	"xdoh/datapath/tlsconf"
	"xdoh/datapath/udp"
	"xdoh/datapath/xsk"
	"xdoh/forwarder"
	"xdoh/forwarder/querylog"
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
	// listeners' TCP event loops while they have connections; their UDP
	// loops then wait as suits the current level (udp.WaitAdaptive).
	procs *procs.Governor
	// kernelTiers are the AF_XDP servers (their in-kernel answer tiers),
	// for the cache's OnChange, which must not take mu.
	kernelTiers atomic.Pointer[[]*xsk.Server]
	// retiring are pipelines a reload replaced, closed after their grace
	// (retire); a shutdown drains them too.
	retiring sync.Map // *pipeline → struct{}
	// ups are the upstream clients of the running and retiring
	// pipelines: a reload keeps those whose settings stay.
	ups upstreams
	// drained are the targets the operator drained (xdoh ctl upstream
	// drain), guarded by mu: each reload drains them in the pipeline it
	// builds, and forgets those its config no longer has.
	drained map[string]bool
	started time.Time
}

// listener is the datapaths of one configured listener.
type listener struct {
	cfg config.Listener
	tcp *tcp.Server // Do53 over TCP
	udp *udp.Server // Do53 over UDP
	doh *doh.Server
	dot encServer   // *dot.Server
	doq encServer   // *doq.Server
	xsk *xsk.Server // Do53 UDP through AF_XDP (nil: sockets only)
	// xdpMode is how XDP is attached: native, generic, or off (not
	// configured, or auto fell back to the sockets).
	xdpMode string
}

func newApp(log *slog.Logger, load func() (*config.Config, error)) *app {
	return &app{log: log, load: load, listeners: map[string]*listener{}, drained: map[string]bool{}, started: time.Now()}
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
	p, err := buildPipeline(cfg, zs, a.counters, a.queryLogger(cfg), a.invalidateKernel, nil, nil, &a.ups)
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
		if a.ctl, err = listenControl(cfg.Path(cfg.Control.Socket), cfg.Control, a); err != nil {
			return err
		}
	}
	// Ready once every listener answers (ready.go).
	ps, err := a.probes()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	err = awaitAnswers(ctx, ps)
	cancel()
	if err != nil {
		return err
	}
	if a.mx != nil {
		a.mx.SetReady(true)
	}
	a.log.Info("xdoh running", "pid", os.Getpid(), "listeners", len(cfg.Listeners), "rules", len(cfg.Rules), "zones", len(cfg.Zones),
		"cache", cfg.Cache.On(), "fips", tlsconf.FIPSStatus())
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

func (a *app) startDo53(cur *listener, l config.Listener) error {
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
	s, err := tcp.New(tcp.Config{
		Name: l.Name, Addrs: l.Do53,
		TCPIdleTimeout: l.TCP.IdleTimeout.D(), MaxTCPConns: l.TCP.MaxConns, MaxTCPConnsPerClient: l.TCP.MaxConnsPerClient, MaxTCPPipeline: l.TCP.MaxPipeline,
		Loops: l.TCP.Loops, Busy: busy,
	}, a.sw)
	if err != nil {
		return fmt.Errorf("listener %q: %w", l.Name, err)
	}
	u, err := udp.New(udp.Config{Name: l.Name, Addrs: l.Do53, Sockets: l.UDPSockets, Wait: wait, Steer: a.steerDo53(l.Name)}, a.sw)
	if err != nil {
		return fmt.Errorf("listener %q: %w", l.Name, err)
	}
	if err := u.Start(); err != nil {
		return fmt.Errorf("listener %q: %w", l.Name, err)
	}
	if err := s.Start(); err != nil {
		_ = u.Stop(context.Background())
		return fmt.Errorf("listener %q: %w", l.Name, err)
	}
	cur.tcp, cur.udp = s, u
	a.log.Info("listening", "listener", l.Name, "transport", "do53 (udp+tcp)", "addrs", strings.Join(l.Do53, " "))
	return nil
}

// steerDo53 returns the udp.Config.Steer of listener name: the newest
// sockets on an address take all its datagrams (bpf.SteerReuseport), so
// that an xdoh started beside a running one (an overlapping restart)
// takes over without the old one's sockets dropping what the kernel gave
// them. Without CAP_BPF the kernel keeps choosing by hash among both.
func (a *app) steerDo53(name string) func(netip.AddrPort, []int) {
	return func(addr netip.AddrPort, fds []int) {
		if err := bpf.SteerReuseport(fds); err != nil {
			a.log.Info("do53 sockets not steered: an overlapping restart may lose queries", "listener", name, "addr", addr, "err", err)
			return
		}
		a.log.Debug("do53 sockets steered", "listener", name, "addr", addr, "sockets", len(fds))
	}
}

func (a *app) newDoH(l config.Listener, fips bool) (*doh.Server, error) {
	s, err := doh.New(doh.Config{
		Name: l.Name, Addr: l.DoH.Address, Path: l.DoH.Path, FIPS: fips,
		CertFile: a.pathFor(l.DoH.Cert), KeyFile: a.pathFor(l.DoH.Key), ErrorLog: a.log,
		MaxConcurrentStreams: uint32(l.DoH.MaxStreams), IdleTimeout: time.Duration(l.DoH.IdleTimeout),
		MaxConns: l.DoH.MaxConns, MaxConnsPerClient: l.DoH.Conn.MaxConnsPerClient, MaxResetRate: l.DoH.MaxResetsPerSecond,
		MaxBodySize: l.DoH.MaxBodySize, MaxHeaderBytes: l.DoH.MaxHeaderBytes,
		ReadHeaderTimeout: l.DoH.Conn.HandshakeTimeout.D(), ReadTimeout: l.DoH.Conn.ReadTimeout.D(), WriteTimeout: l.DoH.Conn.WriteTimeout.D(),
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
	aff, err := xsk.ParseAffinity(l.XDP.Affinity)
	if err != nil {
		return fmt.Errorf("listener %q: xdp.affinity: %w", l.Name, err)
	}
	if a.cfg != nil && a.cfg.RRL.Enabled && kc == xsk.KernelCacheAuto {
		// Answers the XDP program sends itself never reach the limiter.
		kc = xsk.KernelCacheOff
		a.log.Info("xdp kernel cache off: rrl is enabled", "listener", l.Name)
	}
	cfg := xsk.Config{Name: l.Name, Interfaces: l.XDP.Interfaces, Mode: mode, ACLDrop: l.ACLAction == "drop", Log: a.log, Affinity: aff,
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
		"interfaces", strings.Join(l.XDP.Interfaces, " "), "mode", cur.xdpMode, "kernel_cache", tier, "affinity", aff.String())
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

// invalidateKernel is the caches' OnChange: the kernel's copy of an answer
// goes before the cache stores another for its question, and when the
// cache evicts it.
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
	if cur.tcp != nil {
		_ = cur.tcp.Stop(ctx)
		cur.tcp = nil
	}
}

func stopDoH(cur *listener) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = cur.doh.Shutdown(ctx)
	cur.doh = nil
}

// retire closes a replaced pipeline once its queries in flight have had
// grace to finish.
func (a *app) retire(p *pipeline, grace time.Duration) {
	a.retiring.Store(p, struct{}{})
	time.AfterFunc(grace, func() {
		if _, ok := a.retiring.LoadAndDelete(p); ok {
			p.close()
		}
	})
}

// inflight is the number of upstream resolutions under way in every
// pipeline still open.
func (a *app) inflight() int {
	n := 0
	if p := a.pipe.Load(); p != nil && p.fwd != nil {
		n += p.fwd.Inflight()
	}
	a.retiring.Range(func(k, _ any) bool {
		if p := k.(*pipeline); p.fwd != nil {
			n += p.fwd.Inflight()
		}
		return true
	})
	return n
}

// stop shuts down within shutdown_timeout, answering what is in flight:
// every listener that can stop taking queries while it still answers
// (UDP, which stops reading; DoH, DoT and DoQ, which send GOAWAY or
// refuse new streams) does so at once, all of them together, and waits for
// its own misses; then, while the TCP listeners still answer, stop waits
// for the upstream resolutions in flight to end; then the TCP listeners
// close, and the upstreams. Past the deadline what is left is dropped.
func (a *app) stop() {
	var errs []error
	if a.mx != nil { // first: a scrape must not wait on a.mu while we stop
		a.mx.SetReady(false)
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		errs = append(errs, a.mx.Shutdown(ctx))
		cancel()
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.stopped = true
	grace := config.DefaultShutdownTimeout
	if a.cfg != nil {
		grace = a.cfg.ShutdownGrace()
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	if a.ctl != nil {
		errs = append(errs, a.ctl.Close())
	}
	var wg sync.WaitGroup
	var emu sync.Mutex
	run := func(f func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(); err != nil {
				emu.Lock()
				errs = append(errs, err)
				emu.Unlock()
			}
		}()
	}
	for _, l := range a.listeners {
		run(func() error {
			var errs []error
			if l.xsk != nil { // first: its packets then reach the kernel sockets
				errs = append(errs, l.xsk.Stop(ctx))
				l.xsk = nil
			}
			l.xdpMode = "off"
			if l.udp != nil {
				errs = append(errs, l.udp.Stop(ctx))
				l.udp = nil
			}
			return errors.Join(errs...)
		})
		if l.doh != nil {
			s := l.doh
			l.doh = nil
			run(func() error { return s.Shutdown(ctx) })
		}
		for _, k := range encKinds {
			if slot := k.slot(l); *slot != nil {
				s := *slot
				*slot = nil
				run(func() error { return s.Shutdown(ctx) })
			}
		}
	}
	wg.Wait()
	// The TCP listeners still answer: let the resolutions in flight end.
	tick := time.NewTicker(5 * time.Millisecond)
drain:
	for a.inflight() > 0 {
		select {
		case <-tick.C:
		case <-ctx.Done():
			a.log.Warn("shutdown_timeout reached with queries in flight; they are dropped", "inflight", a.inflight(), "shutdown_timeout", grace)
			break drain
		}
	}
	tick.Stop()
	for _, l := range a.listeners {
		if l.tcp != nil {
			tctx, tcancel := context.WithTimeout(context.Background(), time.Second)
			errs = append(errs, l.tcp.Stop(tctx))
			tcancel()
			l.tcp = nil
		}
	}
	a.publishKernelTiers()
	if p := a.pipe.Load(); p != nil {
		p.close()
	}
	a.retiring.Range(func(k, _ any) bool {
		if _, ok := a.retiring.LoadAndDelete(k); ok {
			k.(*pipeline).close()
		}
		return true
	})
	if a.qlog != nil {
		errs = append(errs, a.qlog.Close())
	}
	if err := errors.Join(errs...); err != nil {
		a.log.Warn("stopping", "err", err)
	}
	a.log.Info("stopped", "took", time.Since(start).Round(time.Millisecond))
}
