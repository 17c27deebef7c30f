// Package xsktest makes the network the AF_XDP tests run on: two network
// namespaces of the test's own, joined by a veth pair, with link-local IPv4
// and ULA IPv6 addresses that exist only inside them (the layout of
// ../shared/bench-xdp/netns.sh). Nothing a test sends here can leave the
// machine. Everything is removed in t.Cleanup.
package xsktest

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"
)

// Pair is a client and a server namespace joined by a veth pair.
type Pair struct {
	ClientNS, ServerNS string // namespace names (for `ip netns exec`)
	ClientIf, ServerIf string // the veth ends, one in each namespace
	Client4, Server4   string // 169.254.N.1 and .2
	Client6, Server6   string // fdNN::1 and ::2
}

var seq atomic.Int32

// NewPair creates the namespaces and the veth pair with queues rx/tx
// queues on each end. It skips the test when not root or when ip(8) is
// missing.
func NewPair(t testing.TB, queues int) *Pair {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: network namespaces and XDP")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs ip(8) (iproute2)")
	}
	n := int(seq.Add(1))
	id := fmt.Sprintf("%d%d", os.Getpid()%100000, n)
	sub := 100 + (os.Getpid()+n)%100 // 169.254.<sub>.0/24, fd53:<sub>::/64
	p := &Pair{
		ClientNS: "xskc" + id, ServerNS: "xsks" + id,
		ClientIf: "xc" + id, ServerIf: "xs" + id,
		Client4: fmt.Sprintf("169.254.%d.1", sub), Server4: fmt.Sprintf("169.254.%d.2", sub),
		Client6: fmt.Sprintf("fd53:%d::1", sub), Server6: fmt.Sprintf("fd53:%d::2", sub),
	}
	t.Cleanup(func() {
		_ = exec.Command("ip", "netns", "del", p.ClientNS).Run()
		_ = exec.Command("ip", "netns", "del", p.ServerNS).Run()
	})
	q := fmt.Sprint(queues)
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	run("netns", "add", p.ClientNS)
	run("netns", "add", p.ServerNS)
	run("link", "add", p.ClientIf, "numtxqueues", q, "numrxqueues", q, "type", "veth",
		"peer", "name", p.ServerIf, "numtxqueues", q, "numrxqueues", q)
	run("link", "set", p.ClientIf, "netns", p.ClientNS)
	run("link", "set", p.ServerIf, "netns", p.ServerNS)
	run("-n", p.ClientNS, "addr", "add", p.Client4+"/24", "dev", p.ClientIf)
	run("-n", p.ServerNS, "addr", "add", p.Server4+"/24", "dev", p.ServerIf)
	run("-n", p.ClientNS, "-6", "addr", "add", p.Client6+"/64", "dev", p.ClientIf, "nodad")
	run("-n", p.ServerNS, "-6", "addr", "add", p.Server6+"/64", "dev", p.ServerIf, "nodad")
	for _, ns := range []string{p.ClientNS, p.ServerNS} {
		run("-n", ns, "link", "set", "lo", "up")
	}
	run("-n", p.ClientNS, "link", "set", p.ClientIf, "up")
	run("-n", p.ServerNS, "link", "set", p.ServerIf, "up")
	// Static neighbours: no ARP or ND exchange before the first query.
	mc, ms := p.mac(t, p.ClientNS, p.ClientIf), p.mac(t, p.ServerNS, p.ServerIf)
	run("-n", p.ClientNS, "neigh", "replace", p.Server4, "lladdr", ms, "dev", p.ClientIf, "nud", "permanent")
	run("-n", p.ServerNS, "neigh", "replace", p.Client4, "lladdr", mc, "dev", p.ServerIf, "nud", "permanent")
	run("-n", p.ClientNS, "-6", "neigh", "replace", p.Server6, "lladdr", ms, "dev", p.ClientIf, "nud", "permanent")
	run("-n", p.ServerNS, "-6", "neigh", "replace", p.Client6, "lladdr", mc, "dev", p.ServerIf, "nud", "permanent")
	return p
}

func (p *Pair) mac(t testing.TB, ns, dev string) string {
	t.Helper()
	out, err := exec.Command("ip", "-n", ns, "-o", "link", "show", dev).CombinedOutput()
	if err != nil {
		t.Fatalf("ip link show %s: %v\n%s", dev, err, out)
	}
	f := strings.Fields(string(out))
	for i, w := range f {
		if w == "link/ether" && i+1 < len(f) {
			return f[i+1]
		}
	}
	t.Fatalf("no MAC address for %s in %q", dev, out)
	return ""
}

// Command returns cmd run inside namespace ns (ip netns exec).
func Command(ns string, name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", ns, name}, args...)...)
}

// In runs f on a thread that has entered namespace ns; sockets f creates
// belong to ns and keep working from any goroutine afterwards.
func In(ns string, f func() error) error {
	h, err := os.Open("/run/netns/" + ns)
	if err != nil {
		return err
	}
	defer h.Close()
	orig, err := os.Open("/proc/thread-self/ns/net") // where this thread is: the test's own namespace
	if err != nil {
		return err
	}
	defer orig.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// Leave the thread locked if it cannot go back: the runtime then
		// ends it with the goroutine instead of reusing it.
		if err := unix.Setns(int(h.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("entering netns %s: %w", ns, err)
			return
		}
		ferr := f()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("leaving netns %s: %w", ns, err)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// Dial connects from namespace ns.
func Dial(ns, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := In(ns, func() (err error) {
		c, err = net.Dial(network, addr)
		return err
	})
	return c, err
}
