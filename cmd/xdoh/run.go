package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"

	"github.com/coreos/go-systemd/v22/daemon"

	"xdoh/cmd/xdoh/internal/config"
	"xdoh/cmd/xdoh/internal/procs"
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
	conns    int
	demo     bool
	pprof    string
	metrics  string
	// resolvConf is the system resolver's file, for
	// config.CheckSelfResolution.
	resolvConf string
}

func parseRunFlags(args []string) (*runFlags, error) {
	f := &runFlags{}
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.StringVar(&f.config, "c", "", "config file (YAML)")
	fs.Var(&f.listen, "listen", "Do53 address IP:PORT (UDP+TCP); replaces the file's listeners; repeatable")
	fs.Var(&f.upstream, "upstream", "default upstream target (https://… DoH, or IP[:port] Do53); repeatable")
	fs.StringVar(&f.caFile, "ca-file", "", "PEM CA to trust for the --upstream targets instead of the system roots")
	fs.BoolVar(&f.noCache, "no-cache", false, "disable the response cache")
	fs.IntVar(&f.conns, "conns", 0, "DoH connections per upstream target (upstream.conns; default 2)")
	fs.StringVar(&f.metrics, "metrics", "", "serve Prometheus /metrics, /healthz, /readyz on IP:PORT")
	fs.StringVar(&f.pprof, "pprof", "", "serve net/http/pprof on this loopback address (debugging)")
	fs.StringVar(&f.resolvConf, "resolv-conf", config.ResolvConf, "the system resolver's configuration, to refuse upstreams named by host that would resolve through xdoh itself")
	fs.BoolVar(&f.demo, "demo", false, "run the seed's topology on loopback with an in-process on-prem DoH resolver")
	if err := fs.Parse(args); err != nil {
		return nil, usagef("%v", err)
	}
	if fs.NArg() > 0 {
		return nil, usagef("unexpected argument %q", fs.Arg(0))
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
	if f.conns != 0 {
		cfg.Upstream.Conns = f.conns // Validate names a bad value
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
	validate := func(c *config.Config) error {
		if err := c.Validate(); err != nil {
			return err
		}
		return c.CheckSelfResolution(f.resolvConf)
	}
	load := func() (*config.Config, error) { // the config a reload reads
		if f.config == "" {
			return nil, fmt.Errorf("no config file to reload (started without -c)")
		}
		c, err := config.Read(f.config)
		if err != nil {
			return nil, err
		}
		f.layer(c)
		if err := validate(c); err != nil {
			return nil, err
		}
		return c, nil
	}
	switch {
	case f.demo:
		var cleanup func()
		cfg, cleanup, err = startDemo(log)
		if err != nil {
			return err
		}
		defer cleanup()
		f.layer(cfg)
		err = validate(cfg)
	case f.config != "":
		cfg, err = load()
	default:
		cfg = &config.Config{}
		cfg.SetDir(".")
		f.layer(cfg)
		err = validate(cfg)
	}
	if err != nil {
		return usagef("%v", err)
	}
	a := newApp(log, load)
	a.procs = procs.Auto(cfg.Procs)
	if a.procs != nil {
		defer a.procs.Close()
	}
	log.Info("procs", "gomaxprocs", runtime.GOMAXPROCS(0), "cpus", runtime.NumCPU(), "governed", a.procs != nil)
	hup := make(chan os.Signal, 1) // before start: a SIGHUP during it reloads after
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	if err := a.start(cfg); err != nil {
		a.stop()
		return err
	}
	notify(a, daemon.SdNotifyReady) // every listener answers (ready.go)
	for {
		select {
		case <-ctx.Done():
			log.Info("shutting down")
			notify(a, daemon.SdNotifyStopping)
			a.stop()
			return nil
		case <-hup:
			notify(a, daemon.SdNotifyReloading)
			if err := a.reload(); err != nil {
				log.Error("reload rejected; the running config stays", "err", err)
			}
			notify(a, daemon.SdNotifyReady) // the new config, or the running one
		}
	}
}
