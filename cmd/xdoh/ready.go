package main

// Readiness: the process says it is ready (/readyz, and READY=1 to systemd
// when it runs as a Type=notify service) only once every listener answers
// a DNS query sent to it over each of its transports, not merely once the
// sockets are bound: a bound socket whose event loop has not started yet,
// or a TLS listener whose certificate cannot be served, answers nothing.
// The queries come from this host, so on an XDP listener they reach the
// kernel sockets (over lo), not the AF_XDP path. A SIGHUP reload is framed
// by RELOADING=1 and READY=1 (run.go); the datapaths it starts are not
// probed again.

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net/netip"
	"os"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/miekg/dns"

	"xdoh/cmd/xdoh/internal/config"
	"xdoh/forwarder/upstream"
)

const (
	// readyTimeout bounds how long start waits for every listener to
	// answer its readiness query.
	readyTimeout = 10 * time.Second
	// probeTimeout bounds one readiness query; a failed one is sent again
	// until readyTimeout.
	probeTimeout = time.Second
)

// readyQuery is the readiness query: IXFR, which the pipeline answers
// itself (FORMERR) on every transport before any rule, cache or upstream,
// so that an upstream that is down does not hold readiness back.
func readyQuery() []byte {
	m := new(dns.Msg).SetQuestion("xdoh-readiness.invalid.", dns.TypeIXFR)
	b, _ := m.Pack() // a fixed, valid message
	return b
}

// probe is one readiness query target: a listener's address over one
// transport, as an upstream target string.
type probe struct {
	listener string
	target   string         // udp://, tcp://, https://, tls://, quic://
	roots    *x509.CertPool // the listener's own certificate (TLS transports)
	name     string         // TLS name to verify: one the certificate carries
}

// probes lists a readiness query for every address and transport of every
// running listener; mu held. A listener whose ACL drops queries from its
// own address (acl_action drop, allow not covering it) would never answer
// one: it is left out, with a warning.
func (a *app) probes() ([]probe, error) {
	var ps []probe
	for _, l := range a.cfg.Listeners {
		cur := a.listeners[l.Name]
		if cur == nil {
			continue
		}
		var addrs []netip.AddrPort // Do53, as bound (UDP's kernel-picked port for port 0)
		if cur.udp != nil {
			addrs = cur.udp.LocalAddrs()
		}
		drops := func(ap netip.AddrPort) bool {
			if l.ACLAction != "drop" || len(l.Allow) == 0 {
				return false
			}
			for _, s := range l.Allow {
				if p, _ := config.ParsePrefix(s); p.Contains(ap.Addr().Unmap()) { // validated
					return false
				}
			}
			a.log.Warn("readiness: not probing an address whose allow list drops queries from itself",
				"listener", l.Name, "addr", ap.String())
			return true
		}
		for i, ap := range addrs {
			ap = selfAddr(ap)
			if drops(ap) {
				continue
			}
			ps = append(ps, probe{listener: l.Name, target: "udp://" + ap.String()})
			if cur.tcp != nil {
				// TCP binds the configured port (the same as UDP's unless 0).
				cfgAP, _ := netip.ParseAddrPort(l.Do53[i]) // validated
				if cfgAP.Port() != 0 {
					ps = append(ps, probe{listener: l.Name, target: "tcp://" + netip.AddrPortFrom(ap.Addr(), cfgAP.Port()).String()})
				}
			}
		}
		type tlsListener struct {
			scheme, addr, path, cert string
		}
		var tl []tlsListener
		if cur.doh != nil {
			tl = append(tl, tlsListener{"https", cur.doh.Addr().String(), l.DoH.Path, l.DoH.Cert})
		}
		if cur.dot != nil {
			tl = append(tl, tlsListener{"tls", cur.dot.Addr().String(), "", l.DoT.Cert})
		}
		if cur.doq != nil {
			tl = append(tl, tlsListener{"quic", cur.doq.Addr().String(), "", l.DoQ.Cert})
		}
		for _, t := range tl {
			ap, err := netip.ParseAddrPort(t.addr)
			if err != nil {
				return nil, fmt.Errorf("readiness: listener %q: %s address %q: %w", l.Name, t.scheme, t.addr, err)
			}
			if ap = selfAddr(ap); drops(ap) {
				continue
			}
			roots, name, err := selfTrust(a.pathFor(t.cert))
			if err != nil {
				return nil, fmt.Errorf("readiness: listener %q: %w", l.Name, err)
			}
			// A DoH target without a path asks /dns-query, the server's default too.
			ps = append(ps, probe{listener: l.Name, target: t.scheme + "://" + ap.String() + t.path, roots: roots, name: name})
		}
	}
	return ps, nil
}

// selfAddr is where to reach a listener bound to ap from this host: the
// loopback address for a wildcard.
func selfAddr(ap netip.AddrPort) netip.AddrPort {
	switch ip := ap.Addr(); {
	case ip.Is4() && ip.IsUnspecified():
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), ap.Port())
	case ip.IsUnspecified():
		return netip.AddrPortFrom(netip.IPv6Loopback(), ap.Port())
	}
	return ap
}

// selfTrust makes a pool that trusts the listener's own certificate (the
// leaf of certFile) and a name it carries: the probe checks that the
// listener answers, and verifying against itself keeps TLS honest
// without the CA, which the server need not have.
func selfTrust(certFile string) (*x509.CertPool, string, error) {
	pemBytes, err := os.ReadFile(certFile)
	if err != nil {
		return nil, "", fmt.Errorf("reading certificate: %w", err)
	}
	var leaf *x509.Certificate
	for rest := pemBytes; leaf == nil; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			return nil, "", fmt.Errorf("certificate %s holds no PEM CERTIFICATE block", certFile)
		}
		if b.Type == "CERTIFICATE" {
			if leaf, err = x509.ParseCertificate(b.Bytes); err != nil {
				return nil, "", fmt.Errorf("parsing certificate %s: %w", certFile, err)
			}
		}
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	switch {
	case len(leaf.DNSNames) > 0:
		return pool, leaf.DNSNames[0], nil
	case len(leaf.IPAddresses) > 0:
		return pool, leaf.IPAddresses[0].String(), nil
	}
	return nil, "", fmt.Errorf("certificate %s names no DNS name or IP address (subjectAltName)", certFile)
}

// awaitAnswers sends the readiness query to every probe, again after each
// failure, until all have answered; the error names the first that did
// not by ctx's deadline.
func awaitAnswers(ctx context.Context, ps []probe) error {
	q := readyQuery()
	for _, p := range ps {
		u, err := upstream.New(p.target, upstream.Options{RootCAs: p.roots, ServerName: p.name, Timeout: probeTimeout, Conns: 1})
		if err != nil {
			return fmt.Errorf("readiness: listener %q: %w", p.listener, err)
		}
		for {
			qctx, cancel := context.WithTimeout(ctx, probeTimeout)
			_, err = upstream.Exchange(qctx, u, q)
			cancel()
			if err == nil || ctx.Err() != nil {
				break
			}
			select {
			case <-ctx.Done():
			case <-time.After(50 * time.Millisecond):
			}
		}
		u.Close()
		if err != nil {
			return fmt.Errorf("readiness: listener %q did not answer a query to %s: %w", p.listener, p.target, err)
		}
	}
	return nil
}

// notify tells systemd the service's state (READY=1, RELOADING=1,
// STOPPING=1) when it runs under a Type=notify unit (NOTIFY_SOCKET set);
// without one it does nothing.
func notify(a *app, state string) {
	if _, err := daemon.SdNotify(false, state); err != nil {
		a.log.Warn("telling systemd the service state", "state", state, "err", err)
	}
}
