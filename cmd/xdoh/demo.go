package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"embed"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"xdoh/cmd/xdoh/internal/config"
	"xdoh/datapath/doh"
	"xdoh/datapath/tlsconf"
	"xdoh/forwarder"
	"xdoh/forwarder/rules"
	"xdoh/forwarder/zone"
)

//go:embed demo/*.zone
var demoFiles embed.FS

// startDemo starts the seed's on-premises resolver in-process: a DoH server on
// a free loopback port, with a CA generated now, authoritative for example.com.
// It returns the config of the xdoh edge in front of it: Do53 on
// 127.0.0.1:5300, the local zone aws.example.internal, and a forward rule for
// example.com over DoH to the on-prem resolver, trusting only the demo CA.
func startDemo(log *slog.Logger) (*config.Config, func(), error) {
	dir, err := os.MkdirTemp("", "xdoh-demo-")
	if err != nil {
		return nil, nil, fmt.Errorf("demo: making a work directory: %w", err)
	}
	cleanup := func() { _ = os.RemoveAll(dir) }
	fail := func(err error) (*config.Config, func(), error) {
		cleanup()
		return nil, nil, fmt.Errorf("demo: %w", err)
	}

	pki, err := tlsconf.NewPKI("127.0.0.1", "localhost")
	if err != nil {
		return fail(err)
	}
	caFile, _, _, err := pki.WriteFiles(dir)
	if err != nil {
		return fail(err)
	}
	for _, n := range []string{"aws.example.internal.zone", "example.com.zone"} {
		b, _ := demoFiles.ReadFile("demo/" + n)
		if err := os.WriteFile(filepath.Join(dir, n), b, 0o644); err != nil {
			return fail(err)
		}
	}

	// The on-prem resolver: its own pipeline with one local zone, behind DoH.
	b, _ := demoFiles.ReadFile("demo/example.com.zone")
	z, err := zone.Parse("example.com.", bytes.NewReader(b), "example.com.zone")
	if err != nil {
		return fail(err)
	}
	onprem, err := forwarder.New(forwarder.Config{Rules: []forwarder.Rule{{Name: "onprem-zone", Domain: "example.com.", Type: rules.Zone, Zone: z}}})
	if err != nil {
		return fail(err)
	}
	srv, err := doh.New(doh.Config{Name: "onprem", Addr: "127.0.0.1:0", Path: "/dns-query", TLS: pkiTLS(pki)}, onprem)
	if err != nil {
		return fail(err)
	}
	if err := srv.Start(); err != nil {
		return fail(err)
	}
	url := fmt.Sprintf("https://%s/dns-query", srv.Addr())
	log.Info("demo: on-prem DoH resolver for example.com started", "url", url, "ca", caFile)

	cfg := &config.Config{
		Listeners: []config.Listener{{Name: "demo", Protocols: []string{"do53"}, Do53: []string{"127.0.0.1:5300"}}},
		Zones:     []config.Zone{{Name: "aws.example.internal", File: "aws.example.internal.zone"}},
		Rules:     []config.Rule{{Name: "onprem", Domain: "example.com", Type: "forward", Targets: []string{url}, CAFile: "ca.pem"}},
	}
	cfg.SetDir(dir)
	log.Info("demo: try", "local zone", "dig @127.0.0.1 -p 5300 ipv4.aws.example.internal", "forwarded over DoH", "dig @127.0.0.1 -p 5300 foo.example.com AAAA")
	return cfg, func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		cleanup()
	}, nil
}

func pkiTLS(p *tlsconf.PKI) *tls.Config {
	return &tls.Config{Certificates: []tls.Certificate{p.Cert}, MinVersion: tls.VersionTLS12}
}
