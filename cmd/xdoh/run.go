package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"xdoh/cmd/xdoh/internal/config"
	"xdoh/cmd/xdoh/internal/metrics"
	"xdoh/datapath/doh"
	dpgnet "xdoh/datapath/gnet"
	"xdoh/datapath/udp"
	"xdoh/forwarder"
	"xdoh/forwarder/cache"
	"xdoh/forwarder/rules"
	"xdoh/forwarder/upstream"
	"xdoh/forwarder/zone"
)

// listFlag collects a repeatable flag; commas separate values too.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error {
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			*l = append(*l, s)
		}
	}
	return nil
}

type runFlags struct {
	config   string
	listen   listFlag
	upstream listFlag
	caFile   string
	noCache  bool
	demo     bool
	pprof    string
	metrics  string
}

func parseRunFlags(args []string) (*runFlags, error) {
	f := &runFlags{}
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.StringVar(&f.config, "c", "", "config file (YAML)")
	fs.Var(&f.listen, "listen", "Do53 address IP:PORT (UDP+TCP); replaces the file's listeners; repeatable")
	fs.Var(&f.upstream, "upstream", "default upstream target (https://… DoH, or IP[:port] Do53); repeatable")
	fs.StringVar(&f.caFile, "ca-file", "", "PEM CA to trust for the --upstream targets instead of the system roots")
	fs.BoolVar(&f.noCache, "no-cache", false, "disable the response cache")
	fs.StringVar(&f.metrics, "metrics", "", "serve Prometheus /metrics, /healthz, /readyz on IP:PORT")
	fs.StringVar(&f.pprof, "pprof", "", "serve net/http/pprof on this loopback address (debugging)")
	fs.BoolVar(&f.demo, "demo", false, "run the seed's topology on loopback with an in-process on-prem DoH resolver")
	if err := fs.Parse(args); err != nil {
		return nil, fmt.Errorf("%w: %v", errUsage, err)
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("%w: unexpected argument %q", errUsage, fs.Arg(0))
	}
	return f, nil
}

// layer applies command-line flags over a config (or builds one from flags alone).
func (f *runFlags) layer(cfg *config.Config) {
	if len(f.listen) > 0 {
		cfg.Listeners = []config.Listener{{Name: "cli", Protocols: []string{"do53"}, Do53: f.listen}}
	}
	if len(f.upstream) > 0 {
		cfg.Default = &config.Group{Targets: f.upstream, CAFile: f.caFile}
	} else if f.caFile != "" && cfg.Default != nil {
		cfg.Default.CAFile = f.caFile
	}
	if f.metrics != "" {
		cfg.Metrics.Address = f.metrics
	}
	if f.noCache {
		off := false
		cfg.Cache.Enabled = &off
	}
}

func cmdRun(args []string) error {
	f, err := parseRunFlags(args)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if f.pprof != "" {
		if err := servePprof(f.pprof); err != nil {
			return err
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	var cfg *config.Config
	var cleanup func()
	switch {
	case f.demo:
		cfg, cleanup, err = startDemo(log)
		if err != nil {
			return err
		}
		defer cleanup()
	case f.config != "":
		if cfg, err = config.Read(f.config); err != nil { // validated below, after the flags
			return fmt.Errorf("%w: %v", errUsage, err)
		}
	default:
		cfg = &config.Config{}
		cfg.SetDir(".")
	}
	f.layer(cfg)
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	a, err := build(cfg, log)
	if err != nil {
		return err
	}
	if err := a.start(); err != nil {
		a.stop()
		return err
	}
	<-ctx.Done()
	log.Info("shutting down")
	a.stop()
	return nil
}

// app is a running xdoh: the pipeline and its datapaths.
type app struct {
	log   *slog.Logger
	cfg   *config.Config
	fwd   *forwarder.Forwarder
	ups   []upstream.Upstream
	do53  []*dpgnet.Server // TCP, and UDP when udp_engine is gnet
	udp   []*udp.Server
	cache *cache.Cache
	mx    *metrics.Server
	doh   []*doh.Server
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

// build turns a validated config into an app (nothing listens yet).
func build(cfg *config.Config, log *slog.Logger) (*app, error) {
	a := &app{log: log, cfg: cfg}
	fail := func(err error) (*app, error) { a.closeUpstreams(); return nil, err }

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
			})
			if err != nil {
				return nil, fmt.Errorf("%s.targets[%d]: %w", field, j, err)
			}
			a.ups = append(a.ups, up)
			ts = append(ts, forwarder.Target{Up: up, Timeout: timeout.D()})
		}
		return ts, nil
	}

	fc := forwarder.Config{
		QueryTimeout:  cfg.Upstream.QueryTimeout.D(),
		TargetTimeout: cfg.Upstream.Timeout.D(),
		MaxInflight:   cfg.Upstream.MaxInflight,
	}
	zs, err := loadZones(cfg)
	if err != nil {
		return fail(fmt.Errorf("%w: %v", errUsage, err))
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
		if r.Targets, err = mkTargets(fmt.Sprintf("rules[%d]", i), rc.Targets, rc.CAFile, rc.Timeout); err != nil {
			return fail(err)
		}
		fc.Rules = append(fc.Rules, r)
	}
	if cfg.Default != nil {
		if fc.Default, err = mkTargets("default", cfg.Default.Targets, cfg.Default.CAFile, cfg.Default.Timeout); err != nil {
			return fail(err)
		}
	}
	if cfg.Cache.On() {
		a.cache = cache.New(cache.Config{
			Entries: cfg.Cache.Entries, MaxBytes: cfg.Cache.MaxBytes,
			MinTTL: cfg.Cache.MinTTL.D(), MaxTTL: cfg.Cache.MaxTTL.D(),
			ServFailTTL: cfg.Cache.ServFailTTL.D(), StaleWindow: cfg.Cache.ServeStale.D(),
		})
		fc.Cache = a.cache
	}
	if a.fwd, err = forwarder.New(fc); err != nil {
		return fail(err)
	}
	for i, l := range cfg.Listeners {
		protos, _ := l.ProtocolSet()
		if protos["do53"] {
			gnetUDP := l.UDPEngine == "gnet"
			s, err := dpgnet.New(dpgnet.Config{
				Name: l.Name, Addrs: l.Do53, TCPOnly: !gnetUDP,
				TCPIdleTimeout: l.TCP.IdleTimeout.D(), MaxTCPConns: l.TCP.MaxConns, MaxTCPPipeline: l.TCP.MaxPipeline,
			}, a.fwd)
			if err != nil {
				return fail(fmt.Errorf("listeners[%d]: %w", i, err))
			}
			a.do53 = append(a.do53, s)
			if !gnetUDP {
				u, err := udp.New(udp.Config{Name: l.Name, Addrs: l.Do53, Sockets: l.UDPSockets}, a.fwd)
				if err != nil {
					return fail(fmt.Errorf("listeners[%d]: %w", i, err))
				}
				a.udp = append(a.udp, u)
			}
		}
		if protos["doh"] {
			s, err := doh.New(doh.Config{
				Name: l.Name, Addr: l.DoH.Address, Path: l.DoH.Path,
				CertFile: cfg.Path(l.DoH.Cert), KeyFile: cfg.Path(l.DoH.Key),
			}, a.fwd)
			if err != nil {
				return fail(fmt.Errorf("listeners[%d].doh: %w", i, err))
			}
			a.doh = append(a.doh, s)
		}
	}
	return a, nil
}

func (a *app) start() error {
	if a.cfg.Metrics.Address != "" {
		reg, err := a.collector().Registry()
		if err != nil {
			return err
		}
		if a.mx, err = metrics.Listen(a.cfg.Metrics.Address, reg); err != nil {
			return err
		}
		a.log.Info("metrics", "url", "http://"+a.mx.Addr().String()+"/metrics")
	}
	for _, s := range a.udp {
		if err := s.Start(); err != nil {
			return err
		}
	}
	for _, s := range a.do53 {
		if err := s.Start(); err != nil {
			return err
		}
		a.log.Info("listening", "transport", "do53", "listener", s.Name(), "addrs", strings.Join(s.Addrs(), " "))
	}
	for _, s := range a.doh {
		if err := s.Start(); err != nil {
			return err
		}
		a.log.Info("listening", "transport", "doh", "addr", s.Addr().String())
	}
	if a.mx != nil {
		a.mx.SetReady(true)
	}
	a.log.Info("xdoh running", "rules", len(a.cfg.Rules), "zones", len(a.cfg.Zones), "cache", a.cfg.Cache.On())
	return nil
}

func (a *app) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var errs []error
	for _, s := range a.do53 {
		errs = append(errs, s.Stop(ctx))
	}
	for _, s := range a.udp {
		errs = append(errs, s.Stop(ctx))
	}
	for _, s := range a.doh {
		errs = append(errs, s.Shutdown(ctx))
	}
	if a.mx != nil {
		errs = append(errs, a.mx.Shutdown(ctx))
	}
	a.closeUpstreams()
	if err := errors.Join(errs...); err != nil {
		a.log.Warn("stopping", "err", err)
	}
}

func (a *app) closeUpstreams() {
	for _, u := range a.ups {
		_ = u.Close()
	}
}
