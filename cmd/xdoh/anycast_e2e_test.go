package main

import (
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/miekg/dns"

	"xdoh/datapath/xsk/xsktest"
)

// The scale-out of deploy/bird: xdoh instances announce one anycast address
// over BGP with BIRD 2, and a router spreads clients over them with ECMP.
// The addresses are those of deploy/bird/router.conf; they exist only in
// the test's own namespaces.
const (
	anycastAddr   = "10.53.53.53"
	anycastClient = "10.53.0.2" // the client namespace, behind the router's 10.53.0.1
	anycastName   = "ipv4.aws.example.internal"

	anycastFlows  = 32                    // client sockets: distinct source ports for the flow hash
	anycastPeriod = 10 * time.Millisecond // between two queries of one flow
	// A query unanswered this long after the last one was sent is lost.
	anycastGrace = time.Second
)

// anycastNet is a router namespace with a veth to a client namespace and one
// to each instance namespace. Instance i (0-based) is 10.53.<i+1>.2 on its
// link, the router 10.53.<i+1>.1; every instance has anycastAddr on lo.
type anycastNet struct {
	client, router string
	inst           []string
}

func newAnycastNet(t *testing.T, instances int) *anycastNet {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: network namespaces")
	}
	xdpNeed(t, "ip", "bird", "birdc", "curl")
	id := fmt.Sprintf("anycast%d-", os.Getpid()%100000)
	n := &anycastNet{client: id + "c", router: id + "r"}
	for i := range instances {
		n.inst = append(n.inst, id+string(rune('a'+i)))
	}
	all := append([]string{n.client, n.router}, n.inst...)
	t.Cleanup(func() {
		for _, ns := range all {
			_ = exec.Command("ip", "netns", "del", ns).Run()
		}
	})
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	for _, ns := range all {
		ip("netns", "add", ns)
		ip("-n", ns, "link", "set", "lo", "up")
	}
	// The veths are made inside the namespaces: no name on the host.
	link := func(peer, peerIf, peerAddr, routerIf, routerAddr string) {
		ip("-n", n.router, "link", "add", routerIf, "type", "veth", "peer", "name", peerIf, "netns", peer)
		ip("-n", n.router, "addr", "add", routerAddr+"/24", "dev", routerIf)
		ip("-n", peer, "addr", "add", peerAddr+"/24", "dev", peerIf)
		ip("-n", n.router, "link", "set", routerIf, "up")
		ip("-n", peer, "link", "set", peerIf, "up")
	}
	link(n.client, "eth0", anycastClient, "rc", "10.53.0.1")
	ip("-n", n.client, "route", "add", "default", "via", "10.53.0.1")
	for i, ns := range n.inst {
		link(ns, "eth0", fmt.Sprintf("10.53.%d.2", i+1), fmt.Sprintf("r%d", i), fmt.Sprintf("10.53.%d.1", i+1))
		ip("-n", ns, "route", "add", "default", "via", fmt.Sprintf("10.53.%d.1", i+1))
		ip("-n", ns, "addr", "add", anycastAddr+"/32", "dev", "lo")
	}
	// As router.conf says: forward, and hash flows on ports too.
	if err := xsktest.In(n.router, func() error {
		for key, val := range map[string]string{"ip_forward": "1", "fib_multipath_hash_policy": "1", "conf/all/rp_filter": "0"} {
			if err := os.WriteFile("/proc/sys/net/ipv4/"+key, []byte(val), 0o644); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatalf("setting the router's sysctls in %s: %v", n.router, err)
	}
	return n
}

// nextHops are the gateways of the router's kernel route to anycastAddr.
func (n *anycastNet) nextHops(t *testing.T) []string {
	t.Helper()
	out, err := exec.Command("ip", "-n", n.router, "-4", "route", "show", anycastAddr+"/32").CombinedOutput()
	if err != nil {
		t.Fatalf("ip route show in %s: %v\n%s", n.router, err, out)
	}
	var hops []string
	for _, m := range regexp.MustCompile(`via (\S+)`).FindAllStringSubmatch(string(out), -1) {
		hops = append(hops, m[1])
	}
	sort.Strings(hops)
	return hops
}

// waitNextHops waits until the route has want next hops and returns when
// it saw them.
func (n *anycastNet) waitNextHops(t *testing.T, want int, within time.Duration, logs ...string) time.Time {
	t.Helper()
	var hops []string
	for deadline := time.Now().Add(within); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if hops = n.nextHops(t); len(hops) == want {
			return time.Now()
		}
	}
	var b strings.Builder
	for _, f := range logs {
		log, _ := os.ReadFile(f)
		fmt.Fprintf(&b, "\n== %s\n%s", filepath.Base(f), tail(string(log), 15))
	}
	t.Fatalf("the router's route to %s has next hops %v, want %d within %v%s", anycastAddr, hops, want, within, b.String())
	return time.Time{}
}

// shippedConf reads deploy/bird/name and sets its `define NAME = …;` and
// `router id …;` lines; each must be there.
func shippedConf(t *testing.T, name string, set map[string]string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "deploy", "bird", name))
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	for key, val := range set {
		re := regexp.MustCompile(`(?m)^define ` + key + ` = [^;]+;`)
		repl := "define " + key + " = " + val + ";"
		if key == "router id" {
			re, repl = regexp.MustCompile(`(?m)^router id [^;]+;`), "router id "+val+";"
		}
		if !re.MatchString(text) {
			t.Fatalf("deploy/bird/%s has no line %q", name, re)
		}
		text = re.ReplaceAllLiteralString(text, repl)
	}
	return text
}

// anycastInstance is one xdoh with its BIRD and health check.
type anycastInstance struct {
	ns, nsid, conf, dir string
	xdoh, check         *exec.Cmd
	exited              <-chan struct{}
	logs                []string
}

func (in *anycastInstance) startXDOH(t *testing.T) {
	t.Helper()
	logFile := filepath.Join(in.dir, fmt.Sprintf("xdoh-%d.log", time.Now().UnixNano()))
	in.xdoh, in.exited = startInNS(t, in.ns, logFile, xdohBin, "run", "-c", in.conf)
	in.logs = append(in.logs, logFile)
}

// TestAnycastECMP: two xdoh instances announce one anycast address through
// the shipped BIRD configuration and health check; the router's ECMP route
// spreads 32 client flows over both (each answer's NSID names the
// instance). SIGKILL one under load: the check sees /readyz fail, BIRD
// withdraws its route, and its flows move to the other instance. Only its
// flows lose queries, only until the withdrawal (the loss window, logged
// with the table); the survivor's flows lose none. Started again, the
// instance is announced again and takes flows back. Last, the survivor is
// drained by stopping its check: its route goes, its flows move, and no
// query is lost.
func TestAnycastECMP(t *testing.T) {
	n := newAnycastNet(t, 2)
	dir := t.TempDir()
	write := func(name, text string) string {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	zone, err := os.ReadFile(filepath.Join("demo", "aws.example.internal.zone"))
	if err != nil {
		t.Fatal(err)
	}
	write("aws.example.internal.zone", string(zone))

	routerConf := write("router.conf", shippedConf(t, "router.conf", nil))
	routerLog := filepath.Join(dir, "bird-router.log")
	startInNS(t, n.router, routerLog, "bird", "-f", "-c", routerConf, "-s", filepath.Join(dir, "router.ctl"))

	check, err := filepath.Abs(filepath.Join("..", "..", "deploy", "bird", "xdoh-anycast-check"))
	if err != nil {
		t.Fatal(err)
	}
	insts := make([]*anycastInstance, len(n.inst))
	var logs []string
	for i, ns := range n.inst {
		name := string(rune('a' + i))
		in := &anycastInstance{ns: ns, nsid: "xdoh-" + name, dir: dir}
		insts[i] = in
		in.conf = write("xdoh-"+name+".yaml", fmt.Sprintf(`nsid: %s
listeners:
  - name: anycast
    protocols: [do53]
    do53: ["%s:53"]
zones:
  - {name: aws.example.internal, file: aws.example.internal.zone}
metrics: {address: "127.0.0.1:9153"}
`, in.nsid, anycastAddr))
		birdConf := write("bird-"+name+".conf", shippedConf(t, "instance.conf", map[string]string{
			"ROUTER":    fmt.Sprintf("10.53.%d.1", i+1),
			"router id": fmt.Sprintf("10.53.%d.2", i+1),
		}))
		sock := filepath.Join(dir, "bird-"+name+".ctl")
		birdLog := filepath.Join(dir, "bird-"+name+".log")
		startInNS(t, ns, birdLog, "bird", "-f", "-c", birdConf, "-s", sock)
		in.startXDOH(t)
		checkLog := filepath.Join(dir, "check-"+name+".log")
		in.check, _ = startInNS(t, ns, checkLog, "env", "XDOH_READYZ=http://127.0.0.1:9153/readyz",
			"BIRD_SOCKET="+sock, "BIRD_PROTOCOL=xdoh_anycast", "bash", check)
		in.logs = append(in.logs, birdLog, checkLog)
		logs = append(logs, in.logs...)
	}
	logs = append(logs, routerLog)
	n.waitNextHops(t, 2, 15*time.Second, logs...)

	load := startAnycastLoad(t, n.client)
	// The check's phase at the kill decides the window: a random one, as
	// in life (the route came up right after a check).
	time.Sleep(1500*time.Millisecond + rand.N(500*time.Millisecond))
	victim, survivor := insts[0], insts[1]
	killAt := time.Now()
	if err := syscall.Kill(victim.xdoh.Process.Pid, syscall.SIGKILL); err != nil {
		t.Fatalf("killing %s: %v", victim.nsid, err)
	}
	<-victim.exited
	withdrawnAt := n.waitNextHops(t, 1, 5*time.Second, logs...)
	if hops := n.nextHops(t); hops[0] != "10.53.2.2" {
		t.Fatalf("after %s died the route goes via %v, want the survivor 10.53.2.2", victim.nsid, hops)
	}
	time.Sleep(2 * time.Second)
	restartAt := time.Now()
	victim.startXDOH(t)
	n.waitNextHops(t, 2, 10*time.Second, append(logs, victim.logs...)...)
	time.Sleep(1500 * time.Millisecond)
	// Draining as deploy/bird/README.md says: stopping the check withdraws
	// the route while xdoh still answers, so nothing is lost.
	drainAt := time.Now()
	if err := syscall.Kill(survivor.check.Process.Pid, syscall.SIGTERM); err != nil {
		t.Fatalf("stopping %s's check: %v", survivor.nsid, err)
	}
	n.waitNextHops(t, 1, 5*time.Second, logs...)
	if hops := n.nextHops(t); hops[0] != "10.53.1.2" {
		t.Fatalf("after %s's check stopped the route goes via %v, want 10.53.1.2", survivor.nsid, hops)
	}
	time.Sleep(time.Second)
	res := load.stop(t)

	// Each flow has one instance while the route is unchanged.
	owner := make([]string, anycastFlows)
	for f, qs := range res {
		for _, q := range qs {
			if q.at.Before(killAt) && q.nsid != "" {
				if owner[f] != "" && owner[f] != q.nsid {
					t.Fatalf("flow %d answered by %s and %s before the kill: the router does not keep a flow on one path", f, owner[f], q.nsid)
				}
				owner[f] = q.nsid
			}
		}
		if owner[f] == "" {
			t.Fatalf("flow %d got no answer before the kill", f)
		}
	}
	type row struct{ flows, before, after, rejoined, drained, lost int }
	rows := map[string]*row{}
	for _, in := range insts {
		rows[in.nsid] = &row{}
	}
	var firstLost, lastLost time.Time
	for f, qs := range res {
		r := rows[owner[f]]
		if r == nil {
			t.Fatalf("flow %d answered with NSID %q, want one of the instances'", f, owner[f])
		}
		r.flows++
		for _, q := range qs {
			if q.nsid == "" {
				rows[owner[f]].lost++
				if firstLost.IsZero() || q.at.Before(firstLost) {
					firstLost = q.at
				}
				if q.at.After(lastLost) {
					lastLost = q.at
				}
				if owner[f] != victim.nsid || q.at.Before(killAt.Add(-50*time.Millisecond)) || q.at.After(withdrawnAt.Add(50*time.Millisecond)) {
					t.Errorf("flow %d (%s) lost the query sent %v after the kill (withdrawn after %v): only the killed instance's flows may lose queries, and only until the withdrawal",
						f, owner[f], q.at.Sub(killAt).Round(time.Millisecond), withdrawnAt.Sub(killAt).Round(time.Millisecond))
				}
				continue
			}
			r := rows[q.nsid]
			if r == nil {
				t.Fatalf("an answer with NSID %q, want one of the instances'", q.nsid)
			}
			switch {
			case q.at.Before(killAt):
				r.before++
			case q.at.Before(restartAt):
				r.after++
			case q.at.Before(drainAt):
				r.rejoined++
			default:
				r.drained++
			}
		}
	}
	window := lastLost.Sub(firstLost)
	var b strings.Builder
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "\ninstance\tflows\tanswered before kill\tafter kill\tafter restart\tafter drain\tlost\t")
	for _, in := range insts {
		r := rows[in.nsid]
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t\n", in.nsid, r.flows, r.before, r.after, r.rejoined, r.drained, r.lost)
	}
	tw.Flush()
	vr := rows[victim.nsid]
	fmt.Fprintf(&b, "load: %d flows, one query per %v each (%.0f q/s)\n", anycastFlows, anycastPeriod, anycastFlows*float64(time.Second)/float64(anycastPeriod))
	fmt.Fprintf(&b, "route withdrawn %d ms after the kill (seen by polling the router's table)\n", withdrawnAt.Sub(killAt).Milliseconds())
	if vr.lost > 0 {
		fmt.Fprintf(&b, "loss window: %d ms from the first lost query to the last; %d lost over %d flows = %d ms of each flow's queries\n",
			window.Milliseconds(), vr.lost, vr.flows, (time.Duration(vr.lost) * anycastPeriod / time.Duration(vr.flows)).Milliseconds())
	}
	t.Log(b.String())

	if vr.before == 0 || rows[survivor.nsid].before == 0 {
		t.Errorf("before the kill both instances must answer (ECMP over %d flows)", anycastFlows)
	}
	if vr.after != 0 {
		t.Errorf("%s answered %d queries between its kill and its restart", victim.nsid, vr.after)
	}
	if rows[survivor.nsid].after == 0 {
		t.Errorf("%s answered nothing after the kill", survivor.nsid)
	}
	if vr.rejoined == 0 {
		t.Errorf("%s answered nothing after it was announced again", victim.nsid)
	}
	if sr := rows[survivor.nsid]; sr.drained == 0 || vr.drained == 0 {
		t.Errorf("after %s's check stopped: %s answered %d, %s %d; want both > 0 (the last answers in flight, then all)",
			survivor.nsid, survivor.nsid, sr.drained, victim.nsid, vr.drained)
	}
	if vr.lost == 0 {
		t.Errorf("no query lost although %s was killed under load: did the kill reach it?", victim.nsid)
	}
	// The shipped check withdraws after 2 failures 100 ms apart; the rest
	// is curl, birdc and a BGP update on a veth, slower on a busy machine.
	if window > 1500*time.Millisecond {
		t.Errorf("loss window %v, want < 1.5s", window)
	}
}

// anycastQuery is one query of a flow: when it was sent and the NSID of
// its answer ("" while unanswered).
type anycastQuery struct {
	at   time.Time
	nsid string
}

// anycastLoad sends anycastFlows flows of queries with the NSID option to
// anycastAddr from the client namespace, each from its own socket (its own
// source port), one query per anycastPeriod per flow.
type anycastLoad struct {
	conns []*net.UDPConn
	mu    sync.Mutex
	qs    [][]anycastQuery // per flow, indexed by query ID
	stopc chan struct{}
	done  sync.WaitGroup
}

func startAnycastLoad(t *testing.T, ns string) *anycastLoad {
	t.Helper()
	l := &anycastLoad{qs: make([][]anycastQuery, anycastFlows), stopc: make(chan struct{})}
	if err := xsktest.In(ns, func() error {
		for range anycastFlows {
			c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.ParseIP(anycastClient)})
			if err != nil {
				return err
			}
			l.conns = append(l.conns, c)
		}
		return nil
	}); err != nil {
		t.Fatalf("opening the client sockets: %v", err)
	}
	t.Cleanup(func() {
		for _, c := range l.conns {
			c.Close()
		}
	})
	for f, c := range l.conns {
		l.done.Add(1)
		go func() { defer l.done.Done(); l.receive(f, c) }()
	}
	l.done.Add(1)
	go func() { defer l.done.Done(); l.send(t) }()
	return l
}

func (l *anycastLoad) send(t *testing.T) {
	dst := &net.UDPAddr{IP: net.ParseIP(anycastAddr), Port: 53}
	tick := time.NewTicker(anycastPeriod)
	defer tick.Stop()
	// IDs are indexes: the run stays below 65536 queries per flow.
	for id := 0; id < 1<<16; id++ {
		select {
		case <-l.stopc:
			return
		case <-tick.C:
		}
		for f, c := range l.conns {
			m := new(dns.Msg)
			m.SetQuestion(anycastName+".", dns.TypeA)
			m.Id = uint16(id)
			m.SetEdns0(1232, false)
			m.IsEdns0().Option = append(m.IsEdns0().Option, &dns.EDNS0_NSID{Code: dns.EDNS0NSID})
			wire, err := m.Pack()
			if err != nil {
				t.Errorf("packing a query: %v", err)
				return
			}
			l.mu.Lock()
			l.qs[f] = append(l.qs[f], anycastQuery{at: time.Now()})
			l.mu.Unlock()
			if _, err := c.WriteToUDP(wire, dst); err != nil {
				t.Errorf("flow %d: sending: %v", f, err)
				return
			}
		}
	}
	t.Error("the anycast load ran out of query IDs")
}

func (l *anycastLoad) receive(f int, c *net.UDPConn) {
	buf := make([]byte, 1500)
	for {
		k, _, err := c.ReadFromUDP(buf)
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			continue
		}
		m := new(dns.Msg)
		if m.Unpack(buf[:k]) != nil || m.Rcode != dns.RcodeSuccess || len(m.Answer) == 0 {
			continue
		}
		nsid := "?"
		if opt := m.IsEdns0(); opt != nil {
			for _, o := range opt.Option {
				if n, ok := o.(*dns.EDNS0_NSID); ok {
					if b, err := hex.DecodeString(n.Nsid); err == nil {
						nsid = string(b)
					}
				}
			}
		}
		l.mu.Lock()
		if int(m.Id) < len(l.qs[f]) {
			l.qs[f][m.Id].nsid = nsid
		}
		l.mu.Unlock()
	}
}

// stop ends the sending, waits anycastGrace for the last answers and
// returns every flow's queries.
func (l *anycastLoad) stop(t *testing.T) [][]anycastQuery {
	t.Helper()
	close(l.stopc)
	time.Sleep(anycastGrace)
	for _, c := range l.conns {
		c.Close()
	}
	l.done.Wait()
	return l.qs
}
