package upstream

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
	"time"
)

// endpoint is where a target's connections go: host:port, the host
// resolved by the system resolver at each dial, or, when the target has
// bootstrap addresses (Options.Bootstrap), those instead. Either way the
// host stays the TLS server name, what the certificate is verified for and
// DoH's :authority: only the addresses dialled change.
type endpoint struct {
	host      string
	port      uint16
	bootstrap []netip.Addr
	next      atomic.Uint32 // the bootstrap address the next dial starts with
}

// newEndpoint makes the endpoint of dialAddr ("host:port", checked by the
// caller's parser) with bootstrap addresses, which only a host name takes.
func newEndpoint(dialAddr string, bootstrap []netip.Addr) (*endpoint, error) {
	host, ps, err := net.SplitHostPort(dialAddr)
	if err != nil {
		return nil, fmt.Errorf("parsing address %q: %w", dialAddr, err)
	}
	port, err := parsePort(ps)
	if err != nil {
		return nil, err
	}
	e := &endpoint{host: host, port: port}
	if len(bootstrap) == 0 {
		return e, nil
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return nil, fmt.Errorf("bootstrap addresses are for a target named by host, and %s is an IP address", host)
	}
	for _, a := range bootstrap {
		if !a.IsValid() || a.Zone() != "" {
			return nil, fmt.Errorf("bootstrap address %v is not an IP address without zone", a)
		}
		e.bootstrap = append(e.bootstrap, a.Unmap())
	}
	return e, nil
}

// addrs are the addresses a dial tries, in order: the bootstrap addresses
// starting with the next in turn (so that a target's connections spread
// over them), else the host itself when it is an IP address, else what the
// system resolver answers for it now.
func (e *endpoint) addrs(ctx context.Context) ([]netip.AddrPort, error) {
	if n := len(e.bootstrap); n > 0 {
		start := int(e.next.Add(1)-1) % n
		aps := make([]netip.AddrPort, 0, n)
		for i := range n {
			aps = append(aps, netip.AddrPortFrom(e.bootstrap[(start+i)%n], e.port))
		}
		return aps, nil
	}
	if a, err := netip.ParseAddr(e.host); err == nil {
		return []netip.AddrPort{netip.AddrPortFrom(a.Unmap(), e.port)}, nil
	}
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", e.host)
	if err == nil && len(ips) == 0 {
		err = errors.New("no addresses")
	}
	if err != nil {
		return nil, fmt.Errorf("resolving %s: %w", e.host, err)
	}
	aps := make([]netip.AddrPort, 0, len(ips))
	for _, a := range ips {
		aps = append(aps, netip.AddrPortFrom(a.Unmap(), e.port))
	}
	return aps, nil
}

// dialEach dials e's addresses in order with try until one succeeds, giving
// each attempt an equal share of the time left before ctx's deadline (as
// net.Dialer does with a name's addresses), so that a silent address
// leaves time for the next. The error joins every attempt's.
func dialEach[C any](ctx context.Context, e *endpoint, try func(ctx context.Context, a netip.AddrPort) (C, error)) (C, error) {
	var zero C
	aps, err := e.addrs(ctx)
	if err != nil {
		return zero, err
	}
	var errs []error
	for i, a := range aps {
		actx, cancel := ctx, context.CancelFunc(func() {})
		if dl, ok := ctx.Deadline(); ok && i < len(aps)-1 {
			share := time.Until(dl) / time.Duration(len(aps)-i)
			actx, cancel = context.WithTimeout(ctx, share)
		}
		c, err := try(actx, a)
		cancel()
		if err == nil {
			return c, nil
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	if len(errs) == 1 {
		return zero, errs[0]
	}
	return zero, errors.Join(errs...)
}

// dialTCP connects to one of e's addresses over TCP.
func (e *endpoint) dialTCP(ctx context.Context) (net.Conn, error) {
	return dialEach(ctx, e, func(ctx context.Context, a netip.AddrPort) (net.Conn, error) {
		var dialer net.Dialer
		return dialer.DialContext(ctx, "tcp", a.String())
	})
}
