package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"testing"
	"time"

	"xdoh/cmd/xdoh/internal/config"
	"xdoh/forwarder"
	"xdoh/forwarder/upstream"
	"xdoh/forwarder/upstream/upstreamtest"
)

// TestPipelineSharesUpstreams: a pipeline built beside a running one
// shares the clients of the targets whose settings are the same (the CA
// file's contents included), makes new ones for the others, and a client
// is closed when the last pipeline using it closes, not before.
func TestPipelineSharesUpstreams(t *testing.T) {
	dir := t.TempDir()
	ca, _, _ := writePKI(t, dir)
	pem, err := os.ReadFile(ca)
	if err != nil {
		t.Fatal(err)
	}
	// Nothing listens on these loopback ports: the clients are made but
	// their dials fail, which is all this test needs.
	const doh, do53a, do53b = "https://127.0.0.1:1/dns-query", "127.0.0.1:2", "127.0.0.1:3"
	build := func(corp, def string, prev *pipeline, reg *upstreams) *pipeline {
		t.Helper()
		cfg, err := config.Parse(fmt.Appendf(nil, `listeners: [{name: in, do53: ["127.0.0.1:0"]}]
rules:
  - {name: corp, domain: corp.example, type: forward, targets: [%q], ca_file: %s}
  - {name: twin, domain: twin.example, type: forward, targets: [%q]}
default: {targets: [%q]}
`, corp, ca, def, def), dir)
		if err != nil {
			t.Fatal(err)
		}
		p, err := buildPipeline(cfg, nil, forwarder.NewCounters("in"), nil, nil, prev, nil, reg)
		if err != nil {
			t.Fatal(err)
		}
		if len(p.ups) != 3 {
			t.Fatalf("%d upstreams, want 3", len(p.ups))
		}
		return p
	}
	closed := func(u upstream.Upstream) bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := upstream.Exchange(ctx, u, []byte("\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00\x01"))
		return errors.Is(err, upstream.ErrClosed)
	}

	reg := &upstreams{}
	p1 := build(doh, do53a, nil, reg)
	if p1.dialled != 3 || p1.kept != 0 || reg.len() != 3 {
		t.Fatalf("start: dialled %d, kept %d, %d open; want 3, 0, 3", p1.dialled, p1.kept, reg.len())
	}
	if p1.ups[1] == p1.ups[2] {
		t.Errorf("two rules with the same target share a client: each should have its own")
	}

	// Unchanged: the same clients; closing the old pipeline closes none.
	p2 := build(doh, do53a, p1, reg)
	if p2.kept != 3 || p2.dialled != 0 {
		t.Errorf("unchanged: kept %d, dialled %d; want 3, 0", p2.kept, p2.dialled)
	}
	for i := range p1.ups {
		if p1.ups[i] != p2.ups[i] {
			t.Errorf("unchanged: upstream %d is a new client", i)
		}
	}
	old := append([]upstream.Upstream(nil), p1.ups...)
	p1.close()
	for i, u := range old {
		if closed(u) {
			t.Errorf("upstream %d closed with the old pipeline while the new one uses it", i)
		}
	}

	// The default's target changes: new clients for it, the corp rule's stays.
	p3 := build(doh, do53b, p2, reg)
	if p3.kept != 1 || p3.dialled != 2 || p3.ups[0] != p2.ups[0] {
		t.Errorf("changed target: kept %d, dialled %d, corp shared %v; want 1, 2, true", p3.kept, p3.dialled, p3.ups[0] == p2.ups[0])
	}
	old = append(old[:0], p2.ups...)
	p2.close()
	if closed(old[0]) {
		t.Errorf("the corp rule's upstream closed though p3 uses it")
	}
	for _, i := range []int{1, 2} {
		if !closed(old[i]) {
			t.Errorf("upstream %d (old target) still open after its last pipeline closed", i)
		}
	}
	if reg.len() != 3 {
		t.Errorf("%d clients open, want 3", reg.len())
	}

	// The CA file changes under the same path: the corp rule dials again.
	if err := os.WriteFile(ca, append([]byte("# renewed\n"), pem...), 0o644); err != nil {
		t.Fatal(err)
	}
	p4 := build(doh, do53b, p3, reg)
	if p4.ups[0] == p3.ups[0] || p4.kept != 2 || p4.dialled != 1 {
		t.Errorf("changed CA file: kept %d, dialled %d, corp shared %v; want 2, 1, false", p4.kept, p4.dialled, p4.ups[0] == p3.ups[0])
	}
	old = append(old[:0], p3.ups...)
	p3.close()
	if !closed(old[0]) {
		t.Errorf("the corp rule's upstream with the old CA is still open")
	}
	p4.close()
	if reg.len() != 0 {
		t.Errorf("%d clients open after every pipeline closed, want 0", reg.len())
	}
}

// TestUpstreamConnections: the registry reports the connections open to
// each DoH target, summed over the clients that share it (each rule has
// its own), as xdoh_upstream_connections shows them; here BIND 9.18 over
// DoH with upstream.conns 2 and two rules: four.
func TestUpstreamConnections(t *testing.T) {
	b := upstreamtest.StartBIND(t, upstreamtest.BINDOptions{})
	cfg, err := config.Parse(fmt.Appendf(nil, `listeners: [{name: in, do53: ["127.0.0.1:0"]}]
rules:
  - {name: a, domain: a.example, type: forward, targets: [%[1]q], ca_file: %[2]s}
  - {name: b, domain: b.example, type: forward, targets: [%[1]q], ca_file: %[2]s}
upstream: {conns: 2}
`, b.DoHURL, b.CAFile), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	reg := &upstreams{}
	p, err := buildPipeline(cfg, nil, forwarder.NewCounters("in"), nil, nil, nil, nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	defer p.close()
	deadline := time.Now().Add(10 * time.Second)
	for reg.connections()[b.DoHURL] != 4 { // prewarmed: no query needed
		if time.Now().After(deadline) {
			t.Fatalf("connections %v, want 4 to %s", reg.connections(), b.DoHURL)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if n := len(reg.connections()); n != 1 {
		t.Errorf("connections %v: want only the DoH target", reg.connections())
	}
}

// TestPipelineInflightBound: each target's wait queue gets the in-flight
// bound, the default one (forwarder.DefaultMaxInflight) when the config
// sets none, not the upstream library's own default.
func TestPipelineInflightBound(t *testing.T) {
	for _, tc := range []struct {
		upstream string
		want     int
	}{
		{"", forwarder.DefaultMaxInflight},
		{"upstream: {max_inflight: 100}\n", 100},
	} {
		// Nothing listens on these ports: the clients are made, their
		// dials fail, which is all this test needs.
		cfg, err := config.Parse([]byte(`listeners: [{name: in, do53: ["127.0.0.1:0"]}]
rules:
  - {name: corp, domain: corp.example, type: forward, targets: ["https://127.0.0.1:1/dns-query", "127.0.0.1:2"]}
`+tc.upstream), t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		p, err := buildPipeline(cfg, nil, forwarder.NewCounters("in"), nil, nil, nil, nil, &upstreams{})
		if err != nil {
			t.Fatal(err)
		}
		if len(p.upKeys) != 2 {
			t.Errorf("%q: %d upstream keys, want 2", tc.upstream, len(p.upKeys))
		}
		for _, k := range p.upKeys {
			if k.maxWait != tc.want {
				t.Errorf("%q: %s waits for at most %d queries, want %d", tc.upstream, k.target, k.maxWait, tc.want)
			}
		}
		p.close()
	}
}
