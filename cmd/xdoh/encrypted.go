package main

import (
	"context"
	"fmt"
	"net"
	"time"

	"xdoh/cmd/xdoh/internal/config"
	"xdoh/datapath/doq"
	"xdoh/datapath/dot"
)

// encServer is a DoT or DoQ server as the app runs it.
type encServer interface {
	Start() error
	Shutdown(context.Context) error
	ReloadCertificate() error
	Addr() net.Addr
}

var (
	_ encServer = (*dot.Server)(nil)
	_ encServer = (*doq.Server)(nil)
)

// encKind is what the app knows of one of the DoT and DoQ datapaths: how
// to build it from a listener's config, when a reload must rebuild it, and
// where it lives in a listener.
type encKind struct {
	name string
	// key is "" when the listener does not serve this protocol; a change
	// of key rebuilds the server, the same key reloads its certificate.
	key   func(l config.Listener, protos map[string]bool) string
	addr  func(l config.Listener) string
	build func(a *app, l config.Listener, protos map[string]bool) (encServer, error)
	slot  func(l *listener) *encServer
}

var encKinds = []*encKind{
	{
		name: "dot",
		key: func(l config.Listener, protos map[string]bool) string {
			if l.DoT == nil || !protos["dot"] && !protos["dot-fips"] {
				return ""
			}
			return fmt.Sprint(*l.DoT, protos["dot-fips"])
		},
		addr: func(l config.Listener) string {
			if l.DoT == nil {
				return ""
			}
			ap, _ := config.EncryptedAddr(l.DoT.Address) // validated
			return ap.String()
		},
		build: func(a *app, l config.Listener, protos map[string]bool) (encServer, error) {
			ap, _ := config.EncryptedAddr(l.DoT.Address)
			s, err := dot.New(dot.Config{
				Name: l.Name, Addr: ap.String(), FIPS: protos["dot-fips"],
				CertFile: a.pathFor(l.DoT.Cert), KeyFile: a.pathFor(l.DoT.Key), ErrorLog: a.log,
				IdleTimeout: time.Duration(l.DoT.IdleTimeout), MaxConns: l.DoT.MaxConns, MaxPipeline: l.DoT.MaxPipeline,
				MaxConnsPerClient: l.DoT.Conn.MaxConnsPerClient, HandshakeTimeout: l.DoT.Conn.HandshakeTimeout.D(),
				ReadTimeout: l.DoT.Conn.ReadTimeout.D(), WriteTimeout: l.DoT.Conn.WriteTimeout.D(),
			}, a.sw)
			if err != nil {
				return nil, fmt.Errorf("listener %q: dot: %w", l.Name, err)
			}
			return s, nil
		},
		slot: func(l *listener) *encServer { return &l.dot },
	},
	{
		name: "doq",
		key: func(l config.Listener, protos map[string]bool) string {
			if l.DoQ == nil || !protos["doq"] {
				return ""
			}
			return fmt.Sprint(*l.DoQ)
		},
		addr: func(l config.Listener) string {
			if l.DoQ == nil {
				return ""
			}
			ap, _ := config.EncryptedAddr(l.DoQ.Address)
			return ap.String()
		},
		build: func(a *app, l config.Listener, _ map[string]bool) (encServer, error) {
			ap, _ := config.EncryptedAddr(l.DoQ.Address)
			s, err := doq.New(doq.Config{
				Name: l.Name, Addr: ap.String(),
				CertFile: a.pathFor(l.DoQ.Cert), KeyFile: a.pathFor(l.DoQ.Key), ErrorLog: a.log,
				IdleTimeout: time.Duration(l.DoQ.IdleTimeout), MaxConns: l.DoQ.MaxConns, MaxStreams: l.DoQ.MaxStreams,
				MaxConnsPerClient: l.DoQ.Conn.MaxConnsPerClient, HandshakeTimeout: l.DoQ.Conn.HandshakeTimeout.D(),
				StreamReadTimeout: l.DoQ.Conn.ReadTimeout.D(), WriteTimeout: l.DoQ.Conn.WriteTimeout.D(),
			}, a.sw)
			if err != nil {
				return nil, fmt.Errorf("listener %q: doq: %w", l.Name, err)
			}
			return s, nil
		},
		slot: func(l *listener) *encServer { return &l.doq },
	},
}

// encChange is what a reload does to one listener's DoT or DoQ server.
type encChange struct {
	kind *encKind
	next encServer // a new server (nil: keep the running one, or none)
	// rebind: next takes the running one's address, so it starts at
	// commit, after that one is shut down.
	rebind bool
	stop   bool // shut the running one down at commit
}

// prepareEnc works out the change of one kind for cur going to l: the same
// settings reload the certificate; other settings build a new server,
// started now unless it needs the running one's address.
func (a *app) prepareEnc(k *encKind, cur *listener, l config.Listener, protos, curProtos map[string]bool) (encChange, error) {
	c := encChange{kind: k}
	running := *k.slot(cur)
	want := k.key(l, protos)
	switch {
	case want == "":
		c.stop = running != nil
	case running != nil && want == k.key(cur.cfg, curProtos):
		if err := running.ReloadCertificate(); err != nil {
			return c, fmt.Errorf("listener %q: %w", l.Name, err)
		}
	default:
		c.stop = running != nil
		c.rebind = running != nil && k.addr(cur.cfg) == k.addr(l)
		s, err := k.build(a, l, protos) // certificate loaded and checked here
		if err != nil {
			return c, err
		}
		if !c.rebind {
			if err := s.Start(); err != nil {
				return c, fmt.Errorf("listener %q: %s: %w", l.Name, k.name, err)
			}
		}
		c.next = s
	}
	return c, nil
}

// abort shuts down a server prepare started for a reload that failed.
func (c *encChange) abort() {
	if c.next != nil && !c.rebind {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = c.next.Shutdown(ctx)
		cancel()
	}
}

// commit stops the running server the change replaces and puts the new one
// in its place.
func (c *encChange) commit(a *app, cur *listener, name string) error {
	slot := c.kind.slot(cur)
	if c.stop {
		stopEnc(slot)
	}
	if c.next == nil {
		return nil
	}
	if c.rebind {
		if err := c.next.Start(); err != nil {
			return fmt.Errorf("listener %q: %s: %w", name, c.kind.name, err)
		}
	}
	*slot = c.next
	tr := c.kind.name
	if s, ok := c.next.(*dot.Server); ok && s.FIPS() {
		tr = "dot-fips"
	}
	a.log.Info("listening", "listener", name, "transport", tr, "addr", c.next.Addr().String())
	return nil
}

// stopEnc shuts down the server in slot, if any.
func stopEnc(slot *encServer) {
	if *slot == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = (*slot).Shutdown(ctx)
	*slot = nil
}
