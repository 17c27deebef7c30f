package main

import (
	"strings"
	"testing"

	"xdoh/cmd/xdoh/internal/config"
)

// TestRunFlagsLayer: command-line flags override the file's settings, and a
// bad value is caught by the config's validation with the field's name.
func TestRunFlagsLayer(t *testing.T) {
	f, err := parseRunFlags([]string{"--listen", "127.0.0.1:5300", "--upstream", "https://127.0.0.1:8443/dns-query",
		"--ca-file", "ca.pem", "--no-cache", "--conns", "4"})
	if err != nil {
		t.Fatal(err)
	}
	cfg := &config.Config{}
	f.layer(cfg)
	if cfg.Upstream.Conns != 4 {
		t.Errorf("upstream.conns = %d, want 4", cfg.Upstream.Conns)
	}
	if cfg.Cache.Enabled == nil || *cfg.Cache.Enabled {
		t.Errorf("cache.enabled = %v, want false", cfg.Cache.Enabled)
	}
	if cfg.Default == nil || len(cfg.Default.Targets) != 1 || cfg.Default.CAFile != "ca.pem" {
		t.Errorf("default = %+v", cfg.Default)
	}
	if len(cfg.Listeners) != 1 || cfg.Listeners[0].Do53[0] != "127.0.0.1:5300" {
		t.Errorf("listeners = %+v", cfg.Listeners)
	}

	f, err = parseRunFlags([]string{"--listen", "127.0.0.1:5300", "--upstream", "127.0.0.1:5301", "--conns", "-2"})
	if err != nil {
		t.Fatal(err)
	}
	cfg = &config.Config{}
	f.layer(cfg)
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "upstream.conns") {
		t.Fatalf("--conns -2: error %v, want one naming upstream.conns", err)
	}
}
