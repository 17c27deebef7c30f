package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/term"

	"xdoh/bench"
)

const benchUsage = `usage: xdoh bench [flags] TARGET
       xdoh bench compare A.json B.json

TARGET: IP[:port] | udp://IP[:port] | tcp://IP[:port] | tls://HOST[:port]
        | https://HOST[:port]/dns-query | quic://HOST[:port]

queries (one of):
  -d FILE              dnsperf query file, "name type" per line, looped
  --zipf S             with -d: names drawn with Zipf popularity, exponent S
  --random-sub DOMAIN  random labels under DOMAIN (cache busting); --type T (A)
  --pcap FILE          replay the UDP port 53 queries of a capture, at its timing or -Q
load:
  -c CLIENTS           sockets or connections (1)
  -T THREADS           threads running Go code at once, as dnsperf's -T (all CPUs)
  -q OUTSTANDING       closed loop: queries in flight (100)
  -Q QPS               open loop: queries per second, latency from the scheduled time
  --ramp FROM:TO:STEP  open-loop steps of -l seconds each, up to --max-p99 (100ms) or --max-loss (1%)
  -l SECONDS           stop after SECONDS (10 unless -n or --pcap bound the run)
  -n COUNT             stop after COUNT queries
  -t SECONDS           query timeout (5)
transport:
  --get                DoH GET (POST by default)
  --ca-file FILE       trust this CA (DoT, DoH, DoQ)
  --tls-server-name N  verify this name instead of the target's host
  --allow-remote       allow a target that is not loopback
  --xdp IFACE          send UDP through AF_XDP on IFACE (root): -c queues send, every queue receives
output:
  --json FILE          write the report as JSON
  --plot FILE          draw QPS, the latency spectrum and loss (.svg or .png)
`

// benchArgs is what `xdoh bench` was asked.
type benchArgs struct {
	cfg         bench.Config
	queryFile   string
	zipf        float64
	randomSub   string
	qtype       uint16
	pcap        string
	jsonFile    string
	plotFile    string
	allowRemote bool
	xdp         string
	limitSet    bool
	cpuProfile  string // hidden: --cpuprofile FILE, a pprof CPU profile of the run
	threads     int    // -T: GOMAXPROCS for the run; 0: leave it
}

func parseBenchArgs(args []string) (*benchArgs, error) {
	b := &benchArgs{qtype: dns.TypeA}
	b.cfg.Clients = 1
	var pos []string
	var ramp string
	maxP99, maxLoss := 100*time.Millisecond, 0.01
	for i := 0; i < len(args); i++ {
		a := args[i]
		value := func() (string, error) {
			if k := strings.IndexByte(a, '='); k >= 0 {
				return a[k+1:], nil
			}
			if i+1 >= len(args) {
				return "", usagef("%s needs a value", a)
			}
			i++
			return args[i], nil
		}
		intValue := func() (int, error) {
			v, err := value()
			if err != nil {
				return 0, err
			}
			n, err := strconv.Atoi(v)
			if err != nil || n <= 0 {
				return 0, fmt.Errorf("want a positive integer, got %q", v)
			}
			return n, nil
		}
		floatValue := func() (float64, error) {
			v, err := value()
			if err != nil {
				return 0, err
			}
			f, err := strconv.ParseFloat(v, 64)
			if err != nil || !(f > 0) {
				return 0, fmt.Errorf("want a positive number, got %q", v)
			}
			return f, nil
		}
		secondsValue := func() (time.Duration, error) {
			v, err := value()
			if err != nil {
				return 0, err
			}
			return parseSeconds(v)
		}
		var err error
		switch flagName := strings.SplitN(strings.TrimLeft(a, "-"), "=", 2)[0]; {
		case !strings.HasPrefix(a, "-") || a == "-":
			pos = append(pos, a)
		case flagName == "h" || flagName == "help":
			return nil, usageError{errors.New(strings.TrimSuffix(benchUsage, "\n"))}
		case flagName == "d":
			b.queryFile, err = value()
		case flagName == "zipf":
			b.zipf, err = floatValue()
		case flagName == "random-sub":
			b.randomSub, err = value()
		case flagName == "type":
			var v string
			if v, err = value(); err == nil {
				t, ok := dns.StringToType[strings.ToUpper(v)]
				if !ok {
					err = fmt.Errorf("unknown query type %q", v)
				}
				b.qtype = t
			}
		case flagName == "pcap":
			b.pcap, err = value()
		case flagName == "c":
			b.cfg.Clients, err = intValue()
		case flagName == "T":
			b.threads, err = intValue()
		case flagName == "q":
			b.cfg.Outstanding, err = intValue()
		case flagName == "Q":
			b.cfg.Rate, err = floatValue()
		case flagName == "l":
			b.cfg.Limit, err = secondsValue()
			b.limitSet = true
		case flagName == "n":
			var n int
			n, err = intValue()
			b.cfg.Count = uint64(n)
		case flagName == "t":
			b.cfg.Timeout, err = secondsValue()
		case flagName == "ramp":
			ramp, err = value()
		case flagName == "max-p99":
			maxP99, err = secondsOrDuration(value)
		case flagName == "max-loss":
			var v string
			if v, err = value(); err == nil {
				maxLoss, err = parsePercent(v)
			}
		case flagName == "get":
			b.cfg.Get = true
		case flagName == "ca-file":
			b.cfg.CAFile, err = value()
		case flagName == "tls-server-name":
			b.cfg.ServerName, err = value()
		case flagName == "allow-remote":
			b.allowRemote = true
		case flagName == "xdp":
			b.xdp, err = value()
		case flagName == "json":
			b.jsonFile, err = value()
		case flagName == "plot":
			b.plotFile, err = value()
		case flagName == "cpuprofile":
			b.cpuProfile, err = value()
		default:
			return nil, usagef("unknown flag %s", a)
		}
		if err != nil {
			var ue usageError
			if errors.As(err, &ue) {
				return nil, err
			}
			return nil, usagef("%s: %v", a, err)
		}
	}
	if len(pos) != 1 {
		return nil, usagef("want one TARGET, got %d arguments (xdoh bench -h for help)", len(pos))
	}
	b.cfg.Target = pos[0]
	b.cfg.XDP = b.xdp
	tr, err := bench.Transport(b.cfg.Target, b.cfg.Get)
	if err != nil {
		return nil, usageError{err}
	}
	if b.cfg.Get && tr != "https-get" {
		return nil, usagef("--get is for https:// targets")
	}
	sources := 0
	for _, s := range []string{b.queryFile, b.randomSub, b.pcap} {
		if s != "" {
			sources++
		}
	}
	switch {
	case sources != 1:
		return nil, usagef("want exactly one query source: -d FILE, --random-sub DOMAIN or --pcap FILE")
	case b.zipf > 0 && b.queryFile == "":
		return nil, usagef("--zipf needs -d FILE")
	case b.cfg.Rate > 0 && b.cfg.Outstanding > 0:
		return nil, usagef("-q (closed loop) and -Q (open loop) exclude each other")
	case ramp != "" && (b.cfg.Rate > 0 || b.cfg.Outstanding > 0):
		return nil, usagef("--ramp sets the rate: no -q or -Q with it")
	case b.xdp != "" && tr != "udp":
		return nil, usagef("--xdp is for UDP targets, not %s", tr)
	}
	if ramp != "" {
		r, err := parseRamp(ramp)
		if err != nil {
			return nil, usagef("--ramp: %v", err)
		}
		r.MaxP99, r.MaxLoss = maxP99, maxLoss
		b.cfg.Ramp = r
	}
	// A run is always bounded: -l 10 unless -n or a pcap bounds it.
	if !b.limitSet && b.cfg.Count == 0 && b.pcap == "" {
		b.cfg.Limit = 10 * time.Second
	}
	if b.cfg.Ramp != nil && b.cfg.Limit == 0 {
		return nil, usagef("--ramp needs -l SECONDS, the length of each step")
	}
	return b, nil
}

// parseSeconds takes dnsperf's seconds ("2", "0.5") or a Go duration ("2s").
func parseSeconds(v string) (time.Duration, error) {
	if f, err := strconv.ParseFloat(v, 64); err == nil {
		if !(f > 0) || f > 1e6 {
			return 0, fmt.Errorf("want seconds above 0, got %q", v)
		}
		return time.Duration(f * float64(time.Second)), nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("want seconds (2, 0.5) or a duration (100ms), got %q", v)
	}
	return d, nil
}

// secondsOrDuration reads --max-p99: a duration ("100ms") or seconds.
func secondsOrDuration(value func() (string, error)) (time.Duration, error) {
	v, err := value()
	if err != nil {
		return 0, err
	}
	return parseSeconds(v)
}

// parsePercent takes "1%" or a share "0.01".
func parsePercent(v string) (float64, error) {
	s, pct := strings.CutSuffix(v, "%")
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f < 0 {
		return 0, fmt.Errorf("want a share (0.01) or a percentage (1%%), got %q", v)
	}
	if pct {
		f /= 100
	}
	if f > 1 {
		return 0, fmt.Errorf("loss %q is above 100%%", v)
	}
	return f, nil
}

func parseRamp(v string) (*bench.Ramp, error) {
	f := strings.Split(v, ":")
	if len(f) != 3 {
		return nil, fmt.Errorf("want FROM:TO:STEP, got %q", v)
	}
	var n [3]float64
	for i, s := range f {
		x, err := strconv.ParseFloat(s, 64)
		if err != nil || !(x > 0) {
			return nil, fmt.Errorf("want positive rates in FROM:TO:STEP, got %q", v)
		}
		n[i] = x
	}
	if n[1] < n[0] {
		return nil, fmt.Errorf("TO %g is below FROM %g", n[1], n[0])
	}
	return &bench.Ramp{From: n[0], To: n[1], Step: n[2]}, nil
}

// source builds the query source.
func (b *benchArgs) source() (bench.Source, error) {
	switch {
	case b.pcap != "":
		return bench.NewPcapSource(b.pcap)
	case b.randomSub != "":
		return bench.NewRandomSubSource(b.randomSub, b.qtype)
	case b.zipf > 0:
		return bench.NewZipfSource(b.queryFile, b.zipf)
	default:
		return bench.NewListSource(b.queryFile)
	}
}

// cmdBench is the load-test rig: it runs, prints the report on out and
// the live progress on progress, and writes --json and --plot.
func cmdBench(args []string, out, progress io.Writer) error {
	if len(args) > 0 && args[0] == "compare" {
		return cmdBenchCompare(args[1:], out)
	}
	b, err := parseBenchArgs(args)
	if err != nil {
		return err
	}
	if !b.allowRemote && !bench.IsLoopback(b.cfg.Target) {
		return usagef("target %s is not on loopback (127.0.0.0/8, ::1, localhost): refusing to send load there without --allow-remote", b.cfg.Target)
	}
	src, err := b.source()
	if err != nil {
		return err
	}
	b.cfg.Source = src
	b.cfg.Progress = progress
	if f, ok := progress.(*os.File); ok {
		b.cfg.TTY = term.IsTerminal(int(f.Fd()))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if b.threads > 0 {
		// On loopback the generator shares the CPUs with the server: a
		// generator that keeps fewer of them busy (dnsperf runs one thread
		// by default) leaves more to the server.
		defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(b.threads))
	}
	if b.cpuProfile != "" {
		f, err := os.Create(b.cpuProfile)
		if err != nil {
			return fmt.Errorf("--cpuprofile: %w", err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("--cpuprofile: %w", err)
		}
		defer pprof.StopCPUProfile()
	}
	rep, runErr := bench.Run(ctx, b.cfg)
	if rep == nil {
		return runErr
	}
	if err := rep.WriteText(out); err != nil {
		return fmt.Errorf("writing the report: %w", err)
	}
	if b.jsonFile != "" {
		if err := writeJSON(b.jsonFile, rep); err != nil {
			return err
		}
	}
	if b.plotFile != "" {
		if err := bench.WritePlot(b.plotFile, rep); err != nil {
			return fmt.Errorf("--plot: %w", err)
		}
	}
	return runErr
}

func writeJSON(path string, rep *bench.Report) error {
	data, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding the report: %w", err)
	}
	if err := os.WriteFile(path, append(data, '\n'), 0o644); err != nil {
		return fmt.Errorf("writing --json: %w", err)
	}
	return nil
}

// cmdBenchCompare is `xdoh bench compare A.json B.json`: the two runs side
// by side and a verdict on B against A. The exit status is 0 unless B is
// worse or mixed, so that a script can gate on it.
func cmdBenchCompare(args []string, out io.Writer) error {
	if len(args) != 2 {
		return usagef("usage: xdoh bench compare A.json B.json")
	}
	a, err := bench.LoadReport(args[0])
	if err != nil {
		return err
	}
	b, err := bench.LoadReport(args[1])
	if err != nil {
		return err
	}
	switch v := bench.Compare(out, a, b); v {
	case bench.Worse, bench.Mixed:
		return fmt.Errorf("verdict %s: %s against %s", v, args[1], args[0])
	}
	return nil
}
