package main

// The control socket: operator commands to a running xdoh (`xdoh ctl`,
// and `xdoh reload`, which is `xdoh ctl reload`).
//
// Protocol: a client sends one request line (at most maxRequest octets,
// words separated by spaces, ended by a newline); the server answers with
// any number of output lines and then one final line, "ok" or
// "error: why", and closes the connection. No output line is "ok" or
// starts with "error: ", so a client reads to the final line and prints
// the rest (`socat - UNIX-CONNECT:/run/xdoh.sock` works as well):
//
//	stats                        counters for a person to read
//	cache flush [NAME [TYPE]]    remove cached answers: all, NAME and every
//	                             name below it (like rndc flushtree), or
//	                             only those of TYPE
//	cache dump [NAME]            one line per answer that can still be
//	                             served: name type class ttl rcode flags
//	upstreams                    each rule's targets: state, in flight,
//	                             round trips, errors by reason
//	upstream drain TARGET        no new queries to TARGET (undrain: again)
//	reload                       read the config file again (as SIGHUP)
//
// At most maxConns connections are served at once (more are told so and
// closed); a client has ctlTimeout to send its request and to take each
// chunk of the answer (a dump streams: it is bounded per chunk, not as a
// whole). Counters come from the same places the Prometheus metrics read;
// nothing here counts on its own.

import (
	"bufio"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"net"
	"net/netip"
	"os"
	"os/user"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/miekg/dns"

	"xdoh/cmd/xdoh/internal/config"
	"xdoh/forwarder"
	"xdoh/forwarder/cache"
	"xdoh/forwarder/upstream"
	"xdoh/internal/dnsmsg"
)

const (
	maxRequest = 512              // octets of a request line
	maxConns   = 8                // connections served at once
	ctlTimeout = 30 * time.Second // to read a request and answer it (a dump: per chunk)
)

// controlServer serves the control socket.
type controlServer struct {
	ln    net.Listener
	path  string
	conns atomic.Int32
}

// listenControl creates the socket at path with cc's mode and group.
func listenControl(path string, cc config.Control, a *app) (*controlServer, error) {
	gid := -1
	if cc.Group != "" {
		g, err := user.LookupGroup(cc.Group)
		if err != nil {
			g, err = user.LookupGroupId(cc.Group)
		}
		if err != nil {
			return nil, fmt.Errorf("control.group: %w", err)
		}
		if gid, err = strconv.Atoi(g.Gid); err != nil {
			return nil, fmt.Errorf("control.group: group %s has gid %q", cc.Group, g.Gid)
		}
	}
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
		_ = os.Remove(path) // a stale socket from a previous run
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("control.socket: %w", err)
	}
	if gid >= 0 {
		if err := os.Lchown(path, -1, gid); err != nil {
			ln.Close()
			return nil, fmt.Errorf("control.group: %w", err)
		}
	}
	if err := os.Chmod(path, cc.FileMode()); err != nil {
		ln.Close()
		return nil, fmt.Errorf("control.mode: %w", err)
	}
	s := &controlServer{ln: ln, path: path}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if s.conns.Add(1) > maxConns {
				s.conns.Add(-1)
				_ = c.SetDeadline(time.Now().Add(time.Second))
				fmt.Fprintf(c, "error: %d control connections are open already; try again\n", maxConns)
				c.Close()
				continue
			}
			go func() {
				defer s.conns.Add(-1)
				defer c.Close()
				s.serve(c, a)
			}()
		}
	}()
	return s, nil
}

func (s *controlServer) Close() error {
	err := s.ln.Close()
	_ = os.Remove(s.path)
	return err
}

// chunkWriter renews the connection's write deadline before each write,
// so a long answer is bounded per chunk rather than as a whole.
type chunkWriter struct{ c net.Conn }

func (w chunkWriter) Write(p []byte) (int, error) {
	_ = w.c.SetWriteDeadline(time.Now().Add(ctlTimeout))
	return w.c.Write(p)
}

func (s *controlServer) serve(c net.Conn, a *app) {
	_ = c.SetDeadline(time.Now().Add(ctlTimeout))
	line, err := bufio.NewReaderSize(io.LimitReader(c, maxRequest), maxRequest).ReadString('\n')
	switch {
	case err == nil:
	case len(line) >= maxRequest:
		fmt.Fprintf(c, "error: request longer than %d octets\n", maxRequest)
		return
	case !errors.Is(err, io.EOF) || line == "":
		return
	} // else a last line without its newline: the client closed its side
	w := bufio.NewWriterSize(chunkWriter{c}, 64<<10)
	if err := a.control(w, strings.Fields(line)); err != nil {
		fmt.Fprintf(w, "error: %s\n", strings.ReplaceAll(err.Error(), "\n", "; "))
	} else {
		fmt.Fprintln(w, "ok")
	}
	_ = w.Flush()
}

const ctlUsage = "stats, cache flush [NAME [TYPE]], cache dump [NAME], upstreams, upstream drain|undrain TARGET, reload"

// control runs one request and writes its output lines to w; the error
// is the request's failure.
func (a *app) control(w io.Writer, args []string) error {
	cmd := strings.Join(args, " ")
	switch {
	case cmd == "stats":
		return a.ctlStats(w)
	case len(args) >= 2 && len(args) <= 4 && args[0] == "cache" && args[1] == "flush":
		return a.ctlFlush(w, args[2:])
	case len(args) >= 2 && len(args) <= 3 && args[0] == "cache" && args[1] == "dump":
		return a.ctlDump(w, args[2:])
	case cmd == "upstreams":
		return a.ctlUpstreams(w)
	case len(args) == 3 && args[0] == "upstream" && (args[1] == "drain" || args[1] == "undrain"):
		return a.ctlDrain(w, args[2], args[1] == "drain")
	case cmd == "reload":
		if err := a.reload(); err != nil {
			a.log.Error("reload rejected; the running config stays", "err", err, "via", "control socket")
			return err
		}
		fmt.Fprintln(w, "reloaded")
		return nil
	}
	return fmt.Errorf("unknown command %q (want %s)", cmd, ctlUsage)
}

// ctlStats writes a summary of the counters the metrics export.
func (a *app) ctlStats(w io.Writer) error {
	p := a.pipe.Load()
	fs := p.fwd.Stats()
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintf(tw, "uptime\t%s\n", time.Since(a.started).Round(time.Second))
	fmt.Fprintf(tw, "queries\t%d\t(dropped %d, formerr %d)\n", fs.Queries, fs.Dropped, fs.FormErr)
	byTransport := map[string]map[string]uint64{}
	for _, ac := range a.counters.Answers() {
		m := byTransport[ac.Transport]
		if m == nil {
			m = map[string]uint64{}
			byTransport[ac.Transport] = m
		}
		m[ac.Rcode] += ac.Count
	}
	for _, tr := range slices.Sorted(maps.Keys(byTransport)) {
		var parts []string
		for _, rc := range slices.Sorted(maps.Keys(byTransport[tr])) {
			parts = append(parts, fmt.Sprintf("%s %d", rc, byTransport[tr][rc]))
		}
		fmt.Fprintf(tw, "answers %s\t%s\n", tr, strings.Join(parts, ", "))
	}
	fmt.Fprintf(tw, "local\t%d from zones, %d blocked\n", fs.Local, fs.Blocked)
	if p.cache != nil {
		cs := p.cache.Stats()
		ratio := 0.0
		if n := cs.Hits + cs.Misses; n > 0 {
			ratio = 100 * float64(cs.Hits) / float64(n)
		}
		fmt.Fprintf(tw, "cache\t%d entries, %d bytes\t(hits %d, misses %d, hit ratio %.1f%%; stale %d, evictions %d, flushed %d)\n",
			cs.Entries, cs.Bytes, cs.Hits, cs.Misses, ratio, cs.Stale, cs.Evictions, cs.Flushed)
	} else {
		fmt.Fprintf(tw, "cache\toff\n")
	}
	fmt.Fprintf(tw, "upstream\t%d forwarded, %d in flight\t(errors %d, servfail %d, coalesced %d, prefetches %d)\n",
		fs.Forwarded, a.inflight(), fs.UpstreamErrors, fs.ServFail, fs.Coalesced, fs.Prefetches)
	r := fs.RRL
	fmt.Fprintf(tw, "rrl\tdropped %d, slipped %d\t(dropped/slipped: responses %d/%d, nxdomains %d/%d, errors %d/%d)\n",
		r.Dropped[0]+r.Dropped[1]+r.Dropped[2], r.Slipped[0]+r.Slipped[1]+r.Slipped[2],
		r.Dropped[0], r.Slipped[0], r.Dropped[1], r.Slipped[1], r.Dropped[2], r.Slipped[2])
	fmt.Fprintf(tw, "limits\toverload %d, acl refused %d, acl dropped %d\n", fs.Overload, fs.ACLRefused, fs.ACLDropped)
	return tw.Flush()
}

// nameFilter is the predicate for a flush or dump of NAME's subtree, of
// type TYPE when given (nil: every entry).
func nameFilter(args []string) (func(key []byte) bool, error) {
	if len(args) == 0 {
		return nil, nil
	}
	var b [256]byte
	n, err := dns.PackDomainName(dns.Fqdn(args[0]), b[:], 0, nil, false)
	if err != nil {
		return nil, fmt.Errorf("name %q: %w", args[0], err)
	}
	zone := dnsmsg.AppendLower(nil, b[:n])
	var qtype uint16
	if len(args) == 2 {
		t, ok := dns.StringToType[strings.ToUpper(args[1])]
		if !ok {
			return nil, fmt.Errorf("type %q: unknown", args[1])
		}
		qtype = t
	}
	return func(key []byte) bool {
		name, t, _, _, _, ok := dnsmsg.KeyFields(key)
		return ok && dnsmsg.InZone(name, zone) && (qtype == 0 || t == qtype)
	}, nil
}

// ctlFlush removes cached answers: all, or NAME's subtree, or of those
// only TYPE's.
func (a *app) ctlFlush(w io.Writer, args []string) error {
	c := a.pipe.Load().cache
	if c == nil {
		return errors.New("the cache is off")
	}
	drop, err := nameFilter(args)
	if err != nil {
		return err
	}
	n := c.Flush(drop)
	a.log.Info("cache flushed", "via", "control socket", "filter", strings.Join(args, " "), "entries", n)
	fmt.Fprintf(w, "flushed %d entries\n", n)
	return nil
}

// ctlDump writes one line per cached answer that can still be served
// (NAME's subtree only, when given), streaming as it walks the table.
func (a *app) ctlDump(w io.Writer, args []string) error {
	c := a.pipe.Load().cache
	if c == nil {
		return errors.New("the cache is off")
	}
	match, err := nameFilter(args)
	if err != nil {
		return err
	}
	var line []byte
	var werr error
	c.Range(func(e cache.Entry) bool {
		if match != nil && !match(e.Key) {
			return true
		}
		line = appendEntry(line[:0], e)
		_, werr = w.Write(line)
		return werr == nil
	})
	return werr
}

// appendEntry formats a cache entry as a dump line: name, type, class,
// remaining TTL (0 or less: expired, served only stale), rcode, and the
// key's flags (rd, edns, do, cd, ecs=PREFIX) or "-".
func appendEntry(dst []byte, e cache.Entry) []byte {
	name, qt, qc, flags, subnet, ok := dnsmsg.KeyFields(e.Key)
	if !ok {
		return append(dst, "; an entry whose key does not parse\n"...)
	}
	dst = dnsmsg.AppendPresentation(dst, name)
	dst = fmt.Appendf(dst, " %s %s %d %s ", dns.Type(qt), dns.Class(qc), e.TTL, rcodeString(e.Rcode))
	var fl []string
	for _, f := range []struct {
		bit  byte
		name string
	}{{dnsmsg.KeyRD, "rd"}, {dnsmsg.KeyOPT, "edns"}, {dnsmsg.KeyDO, "do"}, {dnsmsg.KeyCD, "cd"}} {
		if flags&f.bit != 0 {
			fl = append(fl, f.name)
		}
	}
	if subnet != nil {
		fl = append(fl, "ecs="+subnetString(subnet))
	}
	if len(fl) == 0 {
		fl = append(fl, "-")
	}
	dst = append(dst, strings.Join(fl, ",")...)
	return append(dst, '\n')
}

func rcodeString(rc int) string {
	if s, ok := dns.RcodeToString[rc]; ok {
		return s
	}
	return "RCODE" + strconv.Itoa(rc)
}

// subnetString shows a client-subnet option's data (RFC 7871) as a prefix.
func subnetString(d []byte) string {
	if len(d) < 4 {
		return "?"
	}
	var ip [16]byte
	copy(ip[:], d[4:])
	var addr netip.Addr
	switch binary.BigEndian.Uint16(d) {
	case 1:
		addr = netip.AddrFrom4([4]byte(ip[:4]))
	case 2:
		addr = netip.AddrFrom16(ip)
	default:
		return "?"
	}
	return netip.PrefixFrom(addr, int(d[2])).String()
}

// ctlUpstreams writes each rule's targets: state, attempts in flight and
// RTT (EWMA and recent p95) of the running pipeline's group, which a
// reload starts afresh; exchanges and errors by reason from the target's
// counters, which carry on (xdoh_upstream_requests_total and
// xdoh_upstream_errors_total), summed over the rules that share it.
func (a *app) ctlUpstreams(w io.Writer) error {
	counts := map[string]forwarder.Upstream{}
	for _, u := range a.counters.Upstreams() {
		counts[u.Target] = u
	}
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "TARGET\tRULE\tSTATE\tINFLIGHT\tRTT\tP95\tQUERIES\tERRORS")
	for _, st := range a.pipe.Load().fwd.Health() {
		state := "up"
		switch {
		case st.Drained && st.Inflight > 0:
			state = "draining"
		case st.Drained:
			state = "drained"
		case !st.Up:
			state = "down"
		}
		var reasons []string
		u := counts[st.Target]
		for i, n := range u.Failures {
			if n > 0 {
				reasons = append(reasons, fmt.Sprintf("%s=%d", upstream.Reasons[i], n))
			}
		}
		if len(reasons) == 0 {
			reasons = append(reasons, "-")
		}
		// The target first: a rule's name could look like the final line.
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%d\t%s\n", st.Target, st.Rule, state, st.Inflight,
			durationString(st.EWMA), durationString(st.P95), u.Attempts, strings.Join(reasons, ","))
	}
	return tw.Flush()
}

func durationString(d time.Duration) string {
	if d <= 0 {
		return "-"
	}
	return d.Round(10 * time.Microsecond).String()
}

// ctlDrain drains or undrains target in the running pipeline (and those
// still finishing their queries) and remembers it for the next reloads
// while the target stays in the config. It warns of rules whose targets
// are now all drained: their queries get SERVFAIL (or a stale answer).
func (a *app) ctlDrain(w io.Writer, target string, on bool) error {
	a.mu.Lock() // a reload applies a.drained to the pipeline it builds
	defer a.mu.Unlock()
	if a.stopped {
		return errors.New("shutting down")
	}
	p := a.pipe.Load()
	n := p.fwd.SetDrained(target, on)
	if n == 0 {
		return fmt.Errorf("no target %q in the running config (see xdoh ctl upstreams)", target)
	}
	a.retiring.Range(func(k, _ any) bool {
		k.(*pipeline).fwd.SetDrained(target, on)
		return true
	})
	verb := "undrained"
	if on {
		a.drained[target] = true
		verb = "drained"
	} else {
		delete(a.drained, target)
	}
	a.log.Info("upstream "+verb, "target", target, "rules", n, "via", "control socket")
	fmt.Fprintf(w, "%s %s in %d rules\n", verb, target, n)
	for _, rule := range allDrained(p.fwd.Health()) {
		fmt.Fprintf(w, "warning: every target of rule %s is drained: its queries get SERVFAIL\n", rule)
	}
	return nil
}

// allDrained lists the rules whose every target is drained.
func allDrained(sts []forwarder.TargetState) []string {
	live := map[string]bool{}
	var rules []string
	for _, st := range sts {
		if _, seen := live[st.Rule]; !seen {
			rules = append(rules, st.Rule)
		}
		live[st.Rule] = live[st.Rule] || !st.Drained
	}
	return slices.DeleteFunc(rules, func(r string) bool { return live[r] })
}

// applyDrains drains, in a pipeline being built by a reload, the targets
// drained in the running one; mu held. It returns those the new config no
// longer has, which the reload forgets once it is committed.
func (a *app) applyDrains(p *pipeline) (gone []string) {
	for t := range a.drained {
		if p.fwd.SetDrained(t, true) == 0 {
			gone = append(gone, t)
		}
	}
	return gone
}

// ctlFlags parses the socket flags of `xdoh ctl` and `xdoh reload`:
// -s SOCKET, or -c FILE naming control.socket.
func ctlFlags(name string, args []string) (sock string, rest []string, err error) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	s := fs.String("s", "", "control socket")
	path := fs.String("c", "", "config file naming control.socket")
	if err := fs.Parse(args); err != nil {
		return "", nil, usagef("%v", err)
	}
	if *s == "" && *path != "" {
		cfg, err := config.Read(*path)
		if err != nil {
			return "", nil, usagef("%v", err)
		}
		*s = cfg.Path(cfg.Control.Socket)
	}
	if *s == "" {
		return "", nil, usagef("-s SOCKET or -c FILE with control.socket is required")
	}
	return *s, fs.Args(), nil
}

// cmdCtl sends one command to a running xdoh: `xdoh ctl [-s SOCKET | -c
// FILE] COMMAND [ARGS]`, and prints its output.
func cmdCtl(args []string, out io.Writer) error {
	sock, rest, err := ctlFlags("ctl", args)
	if err != nil {
		return err
	}
	if len(rest) == 0 {
		return usagef("a command is required: %s", ctlUsage)
	}
	return ctlRequest(sock, strings.Join(rest, " "), out)
}

// cmdReload is `xdoh ctl reload`, under its older name.
func cmdReload(args []string, out io.Writer) error {
	sock, rest, err := ctlFlags("reload", args)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return usagef("unexpected argument %q", rest[0])
	}
	return ctlRequest(sock, "reload", out)
}

// ctlRequest sends req and copies the output lines to out; the final line
// decides the error.
func ctlRequest(sock, req string, out io.Writer) error {
	if len(req)+1 > maxRequest || strings.ContainsAny(req, "\r\n") {
		return usagef("the command must be one line of at most %d octets", maxRequest-1)
	}
	c, err := net.DialTimeout("unix", sock, 2*time.Second)
	if err != nil {
		return fmt.Errorf("connecting to %s: %w", sock, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * ctlTimeout))
	if _, err := fmt.Fprintln(c, req); err != nil {
		return fmt.Errorf("sending %q: %w", req, err)
	}
	r := bufio.NewReader(c)
	for {
		_ = c.SetReadDeadline(time.Now().Add(2 * ctlTimeout)) // a dump streams: bound each line
		line, err := r.ReadString('\n')
		if err != nil {
			return fmt.Errorf("reading the answer to %q: the connection ended before it did: %w", req, err)
		}
		switch l := strings.TrimRight(line, "\n"); {
		case l == "ok":
			return nil
		case strings.HasPrefix(l, "error: "):
			return errors.New(strings.TrimPrefix(l, "error: "))
		}
		if _, err := io.WriteString(out, line); err != nil {
			return err
		}
	}
}
