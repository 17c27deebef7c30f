package config

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"strings"
)

// ResolvConf is the system resolver's configuration file, which
// CheckSelfResolution reads unless told another.
const ResolvConf = "/etc/resolv.conf"

// CheckSelfResolution refuses a config whose upstreams xdoh would have to
// find through itself. A DoH, DoT or DoQ target named by host
// ("https://dns.example.internal/dns-query") without bootstrap addresses is
// resolved at each dial by the system resolver (Go's, reading
// resolvConf); when a nameserver there is one of xdoh's own Do53
// listeners, the forwarder would ask itself for its upstream's address, and
// answer that question by forwarding it to the upstream it cannot reach.
// A nameserver is xdoh's own when it equals a do53 listener address on
// port 53 (a nameserver has no other port), when it is 0.0.0.0 or :: (this
// host) and a listener is on loopback, or when a listener is on a wildcard
// address (0.0.0.0 or ::) and the nameserver is a loopback address, a
// wildcard or an address of one of this host's interfaces. A resolv.conf
// that is missing or lists no nameserver means 127.0.0.1 and ::1, as it
// does for Go's and glibc's resolvers. /etc/hosts is not consulted: a
// target named there needs its bootstrap addresses all the same.
//
// Such targets need bootstrap addresses (Rule.Bootstrap, Group.Bootstrap);
// names that are not self-referential are resolved by the system resolver
// at each dial (forwarder/upstream), so a changed address is picked up by
// the next connection.
func (c *Config) CheckSelfResolution(resolvConf string) error {
	servers, err := nameservers(resolvConf)
	if err != nil {
		return err
	}
	own, err := c.ownResolver(servers)
	if err != nil || own == "" {
		return err
	}
	var errs []error
	check := func(f string, targets, bootstrap []string) {
		if len(bootstrap) > 0 {
			return
		}
		for j, t := range targets {
			if TargetHost(t) != "" {
				errs = append(errs, fmt.Errorf("%s.targets[%d]: %q is named by host, which the system resolver would resolve through xdoh itself (%s): set %s.bootstrap to the target's IP addresses",
					f, j, t, own, f))
			}
		}
	}
	for i, r := range c.Rules {
		check(fmt.Sprintf("rules[%d]", i), r.Targets, r.Bootstrap)
	}
	if c.Default != nil {
		check("default", c.Default.Targets, c.Default.Bootstrap)
	}
	return errors.Join(errs...)
}

// ownResolver says which of servers is xdoh itself, and as which listener
// ("" if none is).
func (c *Config) ownResolver(servers []nameserver) (string, error) {
	var local []netip.Addr // this host's interface addresses, read once if a listener is on a wildcard
	for i, l := range c.Listeners {
		for j, a := range l.Do53 {
			ap, err := netip.ParseAddrPort(a)
			if err != nil || ap.Port() != 53 {
				continue // validated; a nameserver is on port 53
			}
			la := ap.Addr().Unmap()
			if la.IsUnspecified() && local == nil {
				if local, err = interfaceAddrs(); err != nil {
					return "", err
				}
			}
			for _, ns := range servers {
				if isSelf(ns.addr, la, local) {
					return fmt.Sprintf("nameserver %s of %s is listeners[%d].do53[%d] %q", ns.addr, ns.from, i, j, a), nil
				}
			}
		}
	}
	return "", nil
}

// isSelf reports whether a query to nameserver ns on port 53 reaches a
// listener on la:53; local are this host's interface addresses.
func isSelf(ns, la netip.Addr, local []netip.Addr) bool {
	switch {
	case ns == la:
		return true
	case la.IsUnspecified():
		if la.Is4() && !ns.Is4() {
			return false // 0.0.0.0 takes no IPv6
		}
		if ns.IsLoopback() || ns.IsUnspecified() {
			return true
		}
		for _, a := range local {
			if a == ns {
				return true
			}
		}
		return false
	case ns.IsUnspecified():
		return la.IsLoopback() && la.Is4() == ns.Is4() // 0.0.0.0 is this host
	}
	return false
}

// interfaceAddrs are this host's addresses.
func interfaceAddrs() ([]netip.Addr, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, fmt.Errorf("listing this host's addresses: %w", err)
	}
	as := []netip.Addr{}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP); ok {
				as = append(as, ip.Unmap())
			}
		}
	}
	return as, nil
}

type nameserver struct {
	addr netip.Addr
	from string // where it comes from, for the error
}

// nameservers are the nameserver addresses of the resolv.conf file at
// path: 127.0.0.1 and ::1 when it is missing or lists none.
func nameservers(path string) ([]nameserver, error) {
	b, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("reading the system resolver's configuration: %w", err)
	}
	var ns []nameserver
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 || fields[0] != "nameserver" {
			continue
		}
		a, err := netip.ParseAddr(fields[1])
		if err != nil {
			continue // as the resolvers do
		}
		ns = append(ns, nameserver{addr: a.WithZone("").Unmap(), from: path})
	}
	if len(ns) == 0 {
		from := path + " (by default: it lists none)"
		if err != nil {
			from = path + " (by default: it is missing)"
		}
		ns = []nameserver{{netip.MustParseAddr("127.0.0.1"), from}, {netip.IPv6Loopback(), from}}
	}
	return ns, nil
}
