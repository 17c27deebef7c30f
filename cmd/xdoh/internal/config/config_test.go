package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// testDir makes a directory holding cert.pem, key.pem, ca.pem and
// example.zone, the files a config refers to.
func testDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, f := range []string{"cert.pem", "key.pem", "ca.pem", "example.zone"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

const fullConfig = `
listeners:
  - name: inbound
    protocols: [do53, doh]
    do53: ["127.0.0.1:5353", "[::1]:5353"]
    doh:
      address: 127.0.0.1:8443
      path: /dns-query
      cert: cert.pem
      key: KEYFILE
      max_conns: 500
      max_conns_per_client: 16
      max_resets_per_second: 50
      max_body_size: 4096
      max_header_bytes: 16384
      handshake_timeout: 3s
      read_timeout: 4s
      write_timeout: 5s
    tcp:
      idle_timeout: 30s
      max_conns: 100
      max_conns_per_client: 10
      max_pipeline: 8
      loops: 3
  - name: plain
    do53: ["0.0.0.0:53"]
zones:
  - name: corp.example
    file: example.zone
rules:
  - name: onprem
    domain: Internal.Example.
    type: forward
    targets: ["https://doh.internal.example/dns-query", "udp://10.0.0.2:53", "[2001:db8::1]:53"]
    ca_file: ca.pem
    timeout: 1500ms
  - name: aws
    domain: amazonaws.com
    type: system
  - name: ads
    domain: ads.example.net
    type: block
default:
  targets: ["https://1.1.1.1/dns-query", "9.9.9.9"]
  timeout: 2s
cache:
  enabled: false
  entries: 5000
  min_ttl: 5s
  max_ttl: 1h
  servfail_ttl: 2s
upstream:
  query_timeout: 4s
  timeout: 1s
  max_inflight: 1000
  conns: 4
`

func TestParseFull(t *testing.T) {
	dir := testDir(t)
	keyAbs := filepath.Join(dir, "key.pem")
	c, err := Parse([]byte(strings.ReplaceAll(fullConfig, "KEYFILE", keyAbs)), dir)
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if len(c.Listeners) != 2 {
		t.Fatalf("%d listeners", len(c.Listeners))
	}
	l := c.Listeners[0]
	if l.Name != "inbound" || len(l.Do53) != 2 || l.Do53[1] != "[::1]:5353" || l.DoH == nil || l.DoH.Address != "127.0.0.1:8443" || l.DoH.Path != "/dns-query" {
		t.Errorf("listener 0 = %+v (doh %+v)", l, l.DoH)
	}
	wantDoH := DoH{Address: "127.0.0.1:8443", Path: "/dns-query", Cert: "cert.pem", Key: keyAbs, MaxConns: 500, MaxResetsPerSecond: 50,
		MaxBodySize: 4096, MaxHeaderBytes: 16384,
		Conn: ConnLimits{MaxConnsPerClient: 16, HandshakeTimeout: Duration(3 * time.Second), ReadTimeout: Duration(4 * time.Second), WriteTimeout: Duration(5 * time.Second)}}
	if *l.DoH != wantDoH {
		t.Errorf("doh = %+v\nwant  %+v", *l.DoH, wantDoH)
	}
	if l.TCP.IdleTimeout.D() != 30*time.Second || l.TCP.MaxConns != 100 || l.TCP.MaxConnsPerClient != 10 || l.TCP.MaxPipeline != 8 || l.TCP.Loops != 3 {
		t.Errorf("tcp = %+v", l.TCP)
	}
	if p, err := l.ProtocolSet(); err != nil || len(p) != 2 || !p["do53"] || !p["doh"] {
		t.Errorf("protocols = %v, %v", p, err)
	}
	if p, err := c.Listeners[1].ProtocolSet(); err != nil || len(p) != 1 || !p["do53"] {
		t.Errorf("default protocols = %v, %v", p, err)
	}
	if got := c.Path(l.DoH.Cert); got != filepath.Join(dir, "cert.pem") {
		t.Errorf("relative cert resolves to %q", got)
	}
	if got := c.Path(l.DoH.Key); got != keyAbs {
		t.Errorf("absolute key resolves to %q", got)
	}
	if len(c.Zones) != 1 || c.Zones[0].Name != "corp.example" || c.Path(c.Zones[0].File) != filepath.Join(dir, "example.zone") {
		t.Errorf("zones = %+v", c.Zones)
	}
	if len(c.Rules) != 3 {
		t.Fatalf("%d rules", len(c.Rules))
	}
	r := c.Rules[0]
	if r.Type != "forward" || len(r.Targets) != 3 || r.Timeout.D() != 1500*time.Millisecond || r.CAFile != "ca.pem" {
		t.Errorf("rule 0 = %+v", r)
	}
	if c.Rules[1].Type != "system" || c.Rules[2].Type != "block" || c.Rules[2].Domain != "ads.example.net" {
		t.Errorf("rules 1, 2 = %+v, %+v", c.Rules[1], c.Rules[2])
	}
	if c.Default == nil || len(c.Default.Targets) != 2 || c.Default.Timeout.D() != 2*time.Second {
		t.Errorf("default = %+v", c.Default)
	}
	want := Cache{Entries: 5000, MinTTL: Duration(5 * time.Second), MaxTTL: Duration(time.Hour), ServFailTTL: Duration(2 * time.Second)}
	got := c.Cache
	got.Enabled = nil
	if got != want || c.Cache.On() {
		t.Errorf("cache = %+v (on %v), want %+v, off", c.Cache, c.Cache.On(), want)
	}
	if c.Upstream != (Upstream{QueryTimeout: Duration(4 * time.Second), Timeout: Duration(time.Second), MaxInflight: 1000, Conns: 4}) {
		t.Errorf("upstream = %+v", c.Upstream)
	}
}

func TestCacheOnByDefault(t *testing.T) {
	c, err := Parse([]byte("listeners: [{name: a, do53: [\"127.0.0.1:53\"]}]\n"), "")
	if err != nil {
		t.Fatal(err)
	}
	if !c.Cache.On() || c.Default != nil {
		t.Errorf("cache on %v, default %+v", c.Cache.On(), c.Default)
	}
}

// base is a minimal valid config that error cases extend.
const base = `
listeners:
  - name: a
    do53: ["127.0.0.1:53"]
`

func TestParseErrors(t *testing.T) {
	dir := testDir(t)
	tests := []struct {
		name  string
		yaml  string
		want  []string // substrings of the error
		count int      // number of joined errors (0: don't check)
	}{
		{name: "empty file", yaml: "", want: []string{"listeners:"}, count: 1},
		{name: "only a comment", yaml: "# nothing\n", want: []string{"listeners:"}, count: 1},
		{name: "unknown top-level key", yaml: base + "listners: []\n", want: []string{"listners"}},
		{name: "unknown nested key", yaml: "listeners:\n  - name: a\n    do53: [\"127.0.0.1:53\"]\n    adress: x\n", want: []string{"adress"}},
		{name: "unknown cache key", yaml: base + "cache:\n  ttl: 5s\n", want: []string{"ttl"}},
		{name: "removed udp_engine", yaml: base + "    udp_engine: mmsg\n", want: []string{"listeners[0].udp_engine: line 5: removed, recvmmsg is the only Do53 UDP datapath", "delete the setting"}, count: 1},
		{name: "removed udp_engine in two listeners", yaml: base + "    udp_engine: gnet\n  - name: b\n    do53: [\"127.0.0.1:54\"]\n    udp_sockets: 2\n    udp_engine: gnet\n", want: []string{"listeners[0].udp_engine: line 5:", "listeners[1].udp_engine: line 9:"}, count: 2},
		{name: "bad duration", yaml: base + "upstream:\n  timeout: 5 seconds\n", want: []string{`"5 seconds"`, "duration"}},
		{name: "control mode not octal", yaml: base + "control: {socket: x.sock, mode: \"0689\"}\n", want: []string{"control.mode", `"0689"`}, count: 1},
		{name: "control mode without owner rw", yaml: base + "control: {socket: x.sock, mode: \"0460\"}\n", want: []string{"control.mode"}, count: 1},
		{name: "control mode too wide", yaml: base + "control: {socket: x.sock, mode: \"1777\"}\n", want: []string{"control.mode"}, count: 1},
		{name: "control group without socket", yaml: base + "control: {group: ops}\n", want: []string{"control.socket: is empty"}, count: 1},
		{name: "duration as a mapping", yaml: base + "cache:\n  min_ttl: {a: 1}\n", want: []string{"duration"}},
		{name: "number as a duration", yaml: base + "cache:\n  max_ttl: 30\n", want: []string{`"30"`, "duration"}},
		{name: "string for an int", yaml: base + "cache:\n  entries: many\n", want: []string{"many"}},
		{name: "listener without a name", yaml: "listeners:\n  - do53: [\"127.0.0.1:53\"]\n", want: []string{"listeners[0].name"}, count: 1},
		{name: "duplicate listener names", yaml: base + "  - name: a\n    do53: [\"127.0.0.1:54\"]\n", want: []string{"listeners[1].name", `"a"`, "listeners[0]"}, count: 1},
		{name: "bad do53 address", yaml: "listeners:\n  - name: a\n    do53: [\"127.0.0.1:53\", \"localhost:53\"]\n", want: []string{"listeners[0].do53[1]", "localhost:53"}, count: 1},
		{name: "do53 without port", yaml: "listeners:\n  - name: a\n    do53: [\"::1\"]\n", want: []string{"listeners[0].do53[0]"}, count: 1},
		{name: "unknown protocol", yaml: "listeners:\n  - name: a\n    protocols: [do53, doh3]\n    do53: [\"127.0.0.1:53\"]\n", want: []string{"listeners[0].protocols", `"doh3"`}, count: 1},
		{name: "dot without section", yaml: "listeners:\n  - name: a\n    protocols: [do53, dot]\n    do53: [\"127.0.0.1:53\"]\n", want: []string{"listeners[0].dot: protocol dot/dot-fips needs a dot section"}, count: 1},
		{name: "doq section without doq", yaml: "listeners:\n  - name: a\n    do53: [\"127.0.0.1:53\"]\n    doq: {address: \"127.0.0.1\", cert: c, key: k}\n", want: []string{"listeners[0].doq: doq section given but doq is not in protocols"}, count: 1},
		{name: "dot fields", yaml: "listeners:\n  - name: a\n    protocols: [dot-fips]\n    dot: {address: \"localhost:853\", cert: missing.pem, max_pipeline: -1}\n", want: []string{"listeners[0].dot.address", "listeners[0].dot.cert", "listeners[0].dot.key: is empty", "listeners[0].dot.max_pipeline"}, count: 4},
		{name: "dot with dot-fips", yaml: "listeners:\n  - name: a\n    protocols: [dot, dot-fips]\n", want: []string{"listeners[0].protocols", "dot and dot-fips cannot be used together"}, count: 1},
		{name: "protocol twice", yaml: "listeners:\n  - name: a\n    protocols: [do53, do53]\n    do53: [\"127.0.0.1:53\"]\n", want: []string{"listeners[0].protocols", "twice"}, count: 1},
		{name: "doh-fips without section", yaml: "listeners:\n  - name: a\n    protocols: [doh-fips]\n", want: []string{"listeners[0].doh:", "doh-fips"}, count: 1},
		{name: "doh with doh-fips", yaml: "listeners:\n  - name: a\n    protocols: [doh, doh-fips]\n    doh: {address: \"127.0.0.1:443\", cert: cert.pem, key: key.pem}\n", want: []string{"listeners[0].protocols", "cannot be used together"}, count: 1},
		{name: "bad allow entry", yaml: "listeners:\n  - name: a\n    do53: [\"127.0.0.1:53\"]\n    allow: [10.0.0.0/8, nonsense]\n", want: []string{"listeners[0].allow[1]"}, count: 1},
		{name: "negative procs", yaml: "procs: -1\nlisteners:\n  - name: a\n    do53: [\"127.0.0.1:53\"]\n", want: []string{"procs: -1 is not between"}, count: 1},
		{name: "cookie secret not hex", yaml: "cookies:\n  secret: xyz\nlisteners:\n  - name: a\n    do53: [\"127.0.0.1:53\"]\n", want: []string{"cookies.secret: want 32 hex digits"}, count: 1},
		{name: "cookie secret short", yaml: "cookies:\n  secret: 0011\nlisteners:\n  - name: a\n    do53: [\"127.0.0.1:53\"]\n", want: []string{"cookies.secret: want 32 hex digits"}, count: 1},
		{name: "cookie rotation too quick", yaml: "cookies:\n  rotate: 10m\nlisteners:\n  - name: a\n    do53: [\"127.0.0.1:53\"]\n", want: []string{"cookies.rotate: 10m0s: at least 1h"}, count: 1},
		{name: "rrl enabled without a rate", yaml: base + "rrl: {enabled: true}\n", want: []string{"rrl.responses_per_second: is needed when rrl is enabled"}, count: 1},
		{name: "rrl fields", yaml: base + "rrl: {enabled: true, responses_per_second: -1, nxdomains_per_second: -2, burst: -1, slip: 11, ipv4_prefix: 33, ipv6_prefix: 129, entries: 10, exempt: [10.0.0.0/8, nonsense]}\n",
			want: []string{"rrl.responses_per_second: -1", "rrl.nxdomains_per_second: -2", "rrl.burst: -1", "rrl.slip: 11", "rrl.ipv4_prefix: 33", "rrl.ipv6_prefix: 129", "rrl.entries: 10", "rrl.exempt[1]"}, count: 8},
		{name: "rrl fields checked while off", yaml: base + "rrl: {slip: -1}\n", want: []string{"rrl.slip: -1"}, count: 1},
		{name: "rrl with the kernel cache on", yaml: base + "    xdp: {interfaces: [eth0], kernel_cache: on}\nrrl: {enabled: true, responses_per_second: 5}\n", want: []string{"listeners[0].xdp.kernel_cache: on: answers the XDP program sends itself would escape rrl"}, count: 1},
		{name: "ecs mode", yaml: "listeners:\n  - name: a\n    do53: [\"127.0.0.1:53\"]\nrules:\n  - name: r\n    domain: example.com\n    type: forward\n    targets: [\"udp://127.0.0.1:53\"]\n    ecs: geo\n", want: []string{`rules[0].ecs: "geo" is not one of strip, pass, add`}, count: 1},
		{name: "ecs prefix without add", yaml: "listeners:\n  - name: a\n    do53: [\"127.0.0.1:53\"]\ndefault:\n  targets: [\"udp://127.0.0.1:53\"]\n  ecs: pass\n  ecs_prefix: {ipv4: 20}\n", want: []string{"default.ecs_prefix: only ecs: add uses it"}, count: 1},
		{name: "ecs prefix range", yaml: "listeners:\n  - name: a\n    do53: [\"127.0.0.1:53\"]\ndefault:\n  targets: [\"udp://127.0.0.1:53\"]\n  ecs: add\n  ecs_prefix: {ipv4: 33, ipv6: 129}\n", want: []string{"default.ecs_prefix.ipv4: 33 is not between 1 and 32", "default.ecs_prefix.ipv6: 129 is not between 1 and 128"}, count: 2},
		{name: "ecs on a block rule", yaml: "listeners:\n  - name: a\n    do53: [\"127.0.0.1:53\"]\nrules:\n  - name: r\n    domain: example.com\n    type: block\n    ecs: add\n", want: []string{"rules[0].ecs: a block rule sends nothing upstream"}, count: 1},
		{name: "nsid too long", yaml: "nsid: " + strings.Repeat("x", 129) + "\nlisteners:\n  - name: a\n    do53: [\"127.0.0.1:53\"]\n", want: []string{"nsid: 129 octets; at most 128"}, count: 1},
		{name: "bad xdp mode", yaml: base + "    xdp: {mode: turbo, interfaces: [eth0]}\n", want: []string{"listeners[0].xdp.mode", `"turbo"`}, count: 1},
		{name: "xdp without interfaces", yaml: base + "    xdp: {mode: native}\n", want: []string{"listeners[0].xdp.interfaces", "native"}, count: 1},
		{name: "xdp auto by default needs interfaces", yaml: base + "    xdp: {}\n", want: []string{"listeners[0].xdp.interfaces", "auto"}, count: 1},
		{name: "xdp interface twice", yaml: base + "    xdp: {interfaces: [eth0, eth0]}\n", want: []string{"listeners[0].xdp.interfaces[1]", "twice"}, count: 1},
		{name: "xdp bad interface name", yaml: base + "    xdp: {interfaces: [\"a/b\"]}\n", want: []string{"listeners[0].xdp.interfaces[0]"}, count: 1},
		{name: "bad kernel_cache", yaml: base + "    xdp: {interfaces: [eth0], kernel_cache: yes}\n", want: []string{"listeners[0].xdp.kernel_cache:", `"yes"`}, count: 1},
		{name: "bad affinity", yaml: base + "    xdp: {interfaces: [eth0], affinity: cpu0}\n", want: []string{"listeners[0].xdp.affinity:", `"cpu0"`}, count: 1},
		{name: "kernel_cache_entries too many", yaml: base + "    xdp: {interfaces: [eth0], kernel_cache_entries: 2000000}\n", want: []string{"listeners[0].xdp.kernel_cache_entries"}, count: 1},
		{name: "kernel_cache_max_answer too big", yaml: base + "    xdp: {interfaces: [eth0], kernel_cache_max_answer: 1500}\n", want: []string{"listeners[0].xdp.kernel_cache_max_answer", "1232"}, count: 1},
		{name: "kernel_cache_hits negative", yaml: base + "    xdp: {interfaces: [eth0], kernel_cache_hits: -1}\n", want: []string{"listeners[0].xdp.kernel_cache_hits"}, count: 1},
		{name: "bad acl action", yaml: "listeners:\n  - name: a\n    do53: [\"127.0.0.1:53\"]\n    acl_action: ignore\n", want: []string{"listeners[0].acl_action"}, count: 1},
		{name: "bad sample rate", yaml: "listeners:\n  - name: a\n    do53: [\"127.0.0.1:53\"]\nquerylog: {path: q.log, sample_rate: 2}\n", want: []string{"querylog.sample_rate"}, count: 1},
		{name: "do53 protocol without addresses", yaml: "listeners:\n  - name: a\n    protocols: [do53]\n", want: []string{"listeners[0].do53"}, count: 1},
		{name: "do53 addresses without the protocol", yaml: "listeners:\n  - name: a\n    protocols: [doh]\n    do53: [\"127.0.0.1:53\"]\n    doh: {address: \"127.0.0.1:443\", cert: cert.pem, key: key.pem}\n", want: []string{"listeners[0].do53:"}, count: 1},
		{name: "doh without section", yaml: "listeners:\n  - name: a\n    protocols: [doh]\n", want: []string{"listeners[0].doh:"}, count: 1},
		{name: "doh section without the protocol", yaml: base + "    doh: {address: \"127.0.0.1:443\", cert: cert.pem, key: key.pem}\n", want: []string{"listeners[0].doh:"}, count: 1},
		{name: "doh bad address", yaml: "listeners:\n  - name: a\n    protocols: [doh]\n    doh: {address: \":443\", cert: cert.pem, key: key.pem}\n", want: []string{"listeners[0].doh.address"}, count: 1},
		{name: "doh relative path", yaml: "listeners:\n  - name: a\n    protocols: [doh]\n    doh: {address: \"127.0.0.1:443\", path: dns-query, cert: cert.pem, key: key.pem}\n", want: []string{"listeners[0].doh.path"}, count: 1},
		{name: "doh max_streams too large", yaml: "listeners:\n  - name: a\n    protocols: [doh]\n    doh: {address: \"127.0.0.1:443\", cert: cert.pem, key: key.pem, max_streams: 100000}\n", want: []string{"listeners[0].doh.max_streams"}, count: 1},
		{name: "doh negative idle_timeout", yaml: "listeners:\n  - name: a\n    protocols: [doh]\n    doh: {address: \"127.0.0.1:443\", cert: cert.pem, key: key.pem, idle_timeout: -1s}\n", want: []string{"listeners[0].doh.idle_timeout"}, count: 1},
		{name: "doh missing cert file", yaml: "listeners:\n  - name: a\n    protocols: [doh]\n    doh: {address: \"127.0.0.1:443\", cert: nope.pem, key: key.pem}\n", want: []string{"listeners[0].doh.cert", "nope.pem"}, count: 1},
		{name: "doh empty key", yaml: "listeners:\n  - name: a\n    protocols: [doh]\n    doh: {address: \"127.0.0.1:443\", cert: cert.pem}\n", want: []string{"listeners[0].doh.key"}, count: 1},
		{name: "doh abuse limits", yaml: "listeners:\n  - name: a\n    protocols: [doh]\n    doh: {address: \"127.0.0.1:443\", cert: cert.pem, key: key.pem, max_conns: -1, max_conns_per_client: -2, max_resets_per_second: -1, max_body_size: 70000, max_header_bytes: -1, handshake_timeout: -1s, read_timeout: -1s, write_timeout: -1s}\n",
			want: []string{"listeners[0].doh.max_conns:", "listeners[0].doh.max_conns_per_client", "listeners[0].doh.max_resets_per_second", "listeners[0].doh.max_body_size", "listeners[0].doh.max_header_bytes", "listeners[0].doh.handshake_timeout", "listeners[0].doh.read_timeout", "listeners[0].doh.write_timeout"}, count: 8},
		{name: "dot and doq abuse limits", yaml: "listeners:\n  - name: a\n    protocols: [dot, doq]\n    dot: {address: \"127.0.0.1:853\", cert: cert.pem, key: key.pem, max_conns_per_client: -1, handshake_timeout: -1s}\n    doq: {address: \"127.0.0.1:853\", cert: cert.pem, key: key.pem, max_conns_per_client: -1, write_timeout: -1s}\n",
			want: []string{"listeners[0].dot.max_conns_per_client", "listeners[0].dot.handshake_timeout", "listeners[0].doq.max_conns_per_client", "listeners[0].doq.write_timeout"}, count: 4},
		{name: "negative tcp max_conns_per_client", yaml: base + "    tcp: {max_conns_per_client: -1}\n", want: []string{"listeners[0].tcp.max_conns_per_client"}, count: 1},
		{name: "too many tcp loops", yaml: base + "    tcp: {loops: 1000}\n", want: []string{"listeners[0].tcp.loops"}, count: 1},
		{name: "negative tcp limit", yaml: base + "    tcp: {max_conns: -1}\n", want: []string{"listeners[0].tcp"}, count: 1},
		{name: "zone file missing", yaml: base + "zones:\n  - name: corp.example\n    file: missing.zone\n", want: []string{"zones[0].file", "missing.zone"}, count: 1},
		{name: "zone file empty", yaml: base + "zones:\n  - name: corp.example\n", want: []string{"zones[0].file"}, count: 1},
		{name: "zone name empty", yaml: base + "zones:\n  - file: example.zone\n", want: []string{"zones[0].name"}, count: 1},
		{name: "duplicate zones", yaml: base + "zones:\n  - {name: corp.example, file: example.zone}\n  - {name: CORP.example., file: example.zone}\n", want: []string{"zones[1].name", "zones[0].name"}, count: 1},
		{name: "bad rule type", yaml: base + "rules:\n  - {name: r, domain: a.example, type: recurse}\n", want: []string{"rules[0].type", `"recurse"`}, count: 1},
		{name: "empty rule type", yaml: base + "rules:\n  - {name: r, domain: a.example}\n", want: []string{"rules[0].type"}, count: 1},
		{name: "forward without targets", yaml: base + "rules:\n  - {name: r, domain: a.example, type: forward}\n", want: []string{"rules[0].targets"}, count: 1},
		{name: "block with targets", yaml: base + "rules:\n  - {name: r, domain: a.example, type: block, targets: [\"1.1.1.1\"]}\n", want: []string{"rules[0].targets"}, count: 1},
		{name: "bad second target of second rule", yaml: base + "rules:\n  - {name: r0, domain: a.example, type: forward, targets: [\"1.1.1.1\"]}\n  - {name: r1, domain: b.example, type: forward, targets: [\"ftp://x\", \"8.8.8.8\"]}\n", want: []string{"rules[1].targets[0]", "ftp"}, count: 1},
		{name: "rule name empty", yaml: base + "rules:\n  - {domain: a.example, type: system}\n", want: []string{"rules[0].name"}, count: 1},
		{name: "duplicate rule names", yaml: base + "rules:\n  - {name: r, domain: a.example, type: system}\n  - {name: r, domain: b.example, type: system}\n", want: []string{"rules[1].name", "rules[0]"}, count: 1},
		{name: "duplicate domains, case and dot", yaml: base + "rules:\n  - {name: r0, domain: Example.COM, type: system}\n  - {name: r1, domain: example.com., type: block}\n", want: []string{"rules[1].domain", "rules[0].domain"}, count: 1},
		{name: "rule domain taken by a zone", yaml: base + "zones:\n  - {name: corp.example, file: example.zone}\nrules:\n  - {name: r, domain: corp.example, type: system}\n", want: []string{"rules[0].domain", "zones[0].name"}, count: 1},
		{name: "rule domain empty", yaml: base + "rules:\n  - {name: r, type: system}\n", want: []string{"rules[0].domain"}, count: 1},
		{name: "rule domain invalid", yaml: base + "rules:\n  - {name: r, domain: \"a..b\", type: system}\n", want: []string{"rules[0].domain"}, count: 1},
		{name: "rule ca_file missing", yaml: base + "rules:\n  - {name: r, domain: a.example, type: forward, targets: [\"1.1.1.1\"], ca_file: none.pem}\n", want: []string{"rules[0].ca_file"}, count: 1},
		{name: "rule timeout negative", yaml: base + "rules:\n  - {name: r, domain: a.example, type: forward, targets: [\"1.1.1.1\"], timeout: -1s}\n", want: []string{"rules[0].timeout"}, count: 1},
		{name: "default bad target", yaml: base + "default:\n  targets: [\"1.1.1.1\", \"https://dns.google\"]\n", want: []string{"default.targets[1]", "path"}, count: 1},
		{name: "default without targets", yaml: base + "default:\n  timeout: 1s\n", want: []string{"default.targets"}, count: 1},
		{name: "default negative timeout", yaml: base + "default:\n  targets: [\"1.1.1.1\"]\n  timeout: -2s\n", want: []string{"default.timeout"}, count: 1},
		{name: "tls_server_name with a Do53 target", yaml: base + "rules:\n  - {name: r, domain: a.example, type: forward, targets: [\"tls://1.1.1.1\", \"udp://1.1.1.1\"], tls_server_name: dns.example}\n", want: []string{"rules[0].tls_server_name", "rules[0].targets[1]"}, count: 1},
		{name: "default tls_server_name not a name", yaml: base + "default:\n  targets: [\"quic://1.1.1.1\"]\n  tls_server_name: \"a b\"\n", want: []string{"default.tls_server_name"}, count: 1},
		{name: "method with a Do53 target", yaml: base + "rules:\n  - {name: r, domain: a.example, type: forward, targets: [\"https://10.0.0.54/dns-query\", \"udp://1.1.1.1\"], method: get}\n", want: []string{"rules[0].method", "rules[0].targets[1]"}, count: 1},
		{name: "method unknown", yaml: base + "rules:\n  - {name: r, domain: a.example, type: forward, targets: [\"https://10.0.0.54/dns-query\"], method: put}\n", want: []string{"rules[0].method", `"put"`, "post, get"}, count: 1},
		{name: "method on a system rule", yaml: base + "rules:\n  - {name: r, domain: a.example, type: system, method: get}\n", want: []string{"rules[0].method", "system"}, count: 1},
		{name: "default method upper case", yaml: base + "default:\n  targets: [\"https://10.0.0.54/dns-query\"]\n  method: GET\n", want: []string{"default.method", `"GET"`}, count: 1},
		{name: "default ca_file missing", yaml: base + "default:\n  targets: [\"1.1.1.1\"]\n  ca_file: /nonexistent/ca.pem\n", want: []string{"default.ca_file"}, count: 1},
		{name: "cache min above max", yaml: base + "cache:\n  min_ttl: 2h\n  max_ttl: 1h\n", want: []string{"cache.min_ttl", "cache.max_ttl"}, count: 1},
		{name: "cache negative min", yaml: base + "cache:\n  min_ttl: -5s\n", want: []string{"cache.min_ttl"}, count: 1},
		{name: "cache negative servfail", yaml: base + "cache:\n  servfail_ttl: -5s\n", want: []string{"cache.servfail_ttl"}, count: 1},
		{name: "cache negative entries", yaml: base + "cache:\n  entries: -1\n", want: []string{"cache.entries"}, count: 1},
		{name: "upstream timeout above budget", yaml: base + "upstream:\n  query_timeout: 2s\n  timeout: 3s\n", want: []string{"upstream.timeout", "upstream.query_timeout"}, count: 1},
		{name: "upstream negative query_timeout", yaml: base + "upstream:\n  query_timeout: -1s\n", want: []string{"upstream.query_timeout"}, count: 1},
		{name: "upstream negative inflight", yaml: base + "upstream:\n  max_inflight: -1\n", want: []string{"upstream.max_inflight"}, count: 1},
		{name: "upstream negative conns", yaml: base + "upstream:\n  conns: -3\n", want: []string{"upstream.conns"}, count: 1},
		{
			name: "several at once",
			yaml: "listeners:\n  - name: a\n    do53: [\"nope\"]\nrules:\n  - {name: r, domain: a.example, type: forward, targets: [\"ftp://x\"]}\ncache:\n  entries: -1\n",
			want: []string{"listeners[0].do53[0]", "rules[0].targets[0]", "cache.entries"}, count: 3,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse([]byte(tt.yaml), dir)
			if err == nil {
				t.Fatalf("accepted: %+v", c)
			}
			if c != nil {
				t.Error("returned a config with the error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if tt.count > 0 {
				var joined interface{ Unwrap() []error }
				n := 1
				if errors.As(err, &joined) {
					n = len(joined.Unwrap())
				}
				if n != tt.count {
					t.Errorf("%d errors, want %d: %v", n, tt.count, err)
				}
			}
		})
	}
}

func TestLoad(t *testing.T) {
	dir := testDir(t)
	good := filepath.Join(dir, "xdoh.yaml")
	if err := os.WriteFile(good, []byte(base+"zones:\n  - {name: corp.example, file: example.zone}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load(good)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if got := c.Path(c.Zones[0].File); got != filepath.Join(dir, "example.zone") {
		t.Errorf("zone file resolves to %q", got)
	}

	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("listeners: []\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(bad); err == nil || !strings.Contains(err.Error(), bad) || !strings.Contains(err.Error(), "listeners") {
		t.Errorf("Load(bad) = %v, want the file and the field", err)
	}
	if _, err := Load(filepath.Join(dir, "absent.yaml")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Load(absent) = %v, want ErrNotExist", err)
	}
}

func TestCheckTarget(t *testing.T) {
	tests := []struct {
		target string
		ok     bool
		want   string // substring of the error
	}{
		{target: "https://dns.google/dns-query", ok: true},
		{target: "https://[2001:db8::1]:8443/dns-query", ok: true},
		{target: "https://1.1.1.1/dns-query{?dns}", ok: true},
		{target: "https://dns.google", want: "path"},
		{target: "https://dns.google:443", want: "path"},
		{target: "https:///dns-query", want: "host"},
		{target: "https://:443/dns-query", want: "host"},
		{target: "https://dns google/x", want: "URL"},
		{target: "ftp://1.1.1.1", want: `"ftp"`},
		{target: "tls://1.1.1.1", ok: true},
		{target: "tls://dns.example:8853", ok: true},
		{target: "tls://[2001:db8::1]:853", ok: true},
		{target: "tls://2001:db8::1", ok: true},
		{target: "quic://dns.example", ok: true},
		{target: "quic://127.0.0.1:8853", ok: true},
		{target: "tls://", want: "host[:port]"},
		{target: "tls://dns.example/dns-query", want: "host[:port]"},
		{target: "quic://1.1.1.1:0", want: "port"},
		{target: "quic://1.1.1.1:99999", want: "port"},
		{target: "quic://1.1.1.1:", want: "port"},
		{target: "tls://dns example", want: "host"},
		{target: "tls://a..b", want: "neither"},
		{target: "TLS://1.1.1.1", want: `"TLS"`},
		{target: "1.1.1.1", ok: true},
		{target: "1.1.1.1:5353", ok: true},
		{target: "2001:db8::1", ok: true},
		{target: "[2001:db8::1]:53", ok: true},
		{target: "[2001:db8::1]", want: "neither"},
		{target: "udp://9.9.9.9", ok: true},
		{target: "tcp://[::1]:53", ok: true},
		{target: "udp://", want: "neither"},
		{target: "1.1.1.1:0", want: "port 0"},
		{target: "1.1.1.1:99999", want: "neither"},
		{target: "dns.google", want: "neither"},
		{target: "dns.google:53", want: "neither"},
		{target: "", want: "neither"},
	}
	for _, tt := range tests {
		t.Run(tt.target, func(t *testing.T) {
			err := CheckTarget(tt.target)
			if tt.ok {
				if err != nil {
					t.Errorf("CheckTarget = %v, want nil", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("CheckTarget = %v, want an error mentioning %q", err, tt.want)
			}
		})
	}
}

func TestTLSServerName(t *testing.T) {
	c, err := Parse([]byte(base+"rules:\n  - {name: r, domain: a.example, type: forward, targets: [\"tls://10.0.0.53\", \"https://10.0.0.54/dns-query\", \"quic://10.0.0.55\"], tls_server_name: dns.corp.example}\ndefault:\n  targets: [\"tls://9.9.9.9\"]\n  tls_server_name: dns.quad9.net\n"), "")
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Rules[0].TLSServerName; got != "dns.corp.example" {
		t.Errorf("rules[0].tls_server_name = %q", got)
	}
	if got := c.Default.TLSServerName; got != "dns.quad9.net" {
		t.Errorf("default.tls_server_name = %q", got)
	}
}

func TestMethod(t *testing.T) {
	c, err := Parse([]byte(base+"rules:\n  - {name: r, domain: a.example, type: forward, targets: [\"https://10.0.0.54/dns-query\"], method: get}\n  - {name: p, domain: b.example, type: forward, targets: [\"https://10.0.0.54/dns-query\"], method: post}\ndefault:\n  targets: [\"https://10.0.0.55/dns-query\"]\n"), "")
	if err != nil {
		t.Fatal(err)
	}
	if c.Rules[0].Method != "get" || c.Rules[1].Method != "post" || c.Default.Method != "" {
		t.Errorf("methods %q %q, default %q; want get, post and none", c.Rules[0].Method, c.Rules[1].Method, c.Default.Method)
	}
}

func TestDurationUnmarshal(t *testing.T) {
	c, err := Parse([]byte(base+"upstream:\n  timeout: 1m30s\n  query_timeout: \"2m\"\n"), "")
	if err != nil {
		t.Fatal(err)
	}
	if c.Upstream.Timeout.D() != 90*time.Second || c.Upstream.QueryTimeout.D() != 2*time.Minute {
		t.Errorf("durations = %v, %v", c.Upstream.Timeout.D(), c.Upstream.QueryTimeout.D())
	}
}

// TestCookies: the secret as configured, or one random secret for the
// process (the same at each call, so a reload keeps it); rotation 24h by
// default, "0s" for never.
func TestCookies(t *testing.T) {
	c, err := Parse([]byte(base+"cookies:\n  secret: 000102030405060708090a0b0c0d0e0f\n  rotate: 0s\n"), "")
	if err != nil {
		t.Fatal(err)
	}
	if s := c.Cookies.SecretBytes(); s != [16]byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15} || c.Cookies.RotateEvery() != 0 || !c.Cookies.On() {
		t.Errorf("secret %x, rotate %v, on %v", s, c.Cookies.RotateEvery(), c.Cookies.On())
	}
	d, err := Parse([]byte(base), "")
	if err != nil {
		t.Fatal(err)
	}
	a, b := d.Cookies.SecretBytes(), d.Cookies.SecretBytes()
	if a != b || a == [16]byte{} || d.Cookies.RotateEvery() != 24*time.Hour {
		t.Errorf("random secrets %x and %x, rotate %v", a, b, d.Cookies.RotateEvery())
	}
}

func TestNSIDBytes(t *testing.T) {
	host, _ := os.Hostname()
	for _, tc := range []struct{ nsid, want string }{{"", ""}, {"edge-1", "edge-1"}, {"hostname", host}} {
		c := &Config{NSID: tc.nsid}
		got, err := c.NSIDBytes()
		if err != nil || string(got) != tc.want || (tc.want == "") != (got == nil) {
			t.Errorf("nsid %q: %q, %v; want %q", tc.nsid, got, err, tc.want)
		}
	}
}

// TestRRL: the rrl section as written, off by default, slip 2 unless
// given (0 is never).
func TestRRL(t *testing.T) {
	c, err := Parse([]byte(base), "")
	if err != nil {
		t.Fatal(err)
	}
	if c.RRL.Enabled || c.RRL.SlipEvery() != 2 {
		t.Errorf("default rrl %+v, slip %d", c.RRL, c.RRL.SlipEvery())
	}
	c, err = Parse([]byte(base+"rrl:\n  enabled: true\n  responses_per_second: 5\n  nxdomains_per_second: 2.5\n  burst: 20\n  slip: 0\n  ipv4_prefix: 32\n  ipv6_prefix: 64\n  exempt: [192.0.2.0/24, \"2001:db8::1\"]\n"), "")
	if err != nil {
		t.Fatal(err)
	}
	r := c.RRL
	if !r.Enabled || r.ResponsesPerSecond != 5 || r.NXDomainsPerSecond != 2.5 || r.Burst != 20 || r.SlipEvery() != 0 || r.IPv4Prefix != 32 || r.IPv6Prefix != 64 || len(r.Exempt) != 2 {
		t.Errorf("rrl %+v, slip %d", r, r.SlipEvery())
	}
}

// TestControlMode: the socket's mode defaults to 0600 and takes octal text.
func TestControlMode(t *testing.T) {
	for _, tc := range []struct {
		yaml string
		want os.FileMode
	}{
		{"control: {socket: x.sock}\n", 0o600},
		{"control: {socket: x.sock, mode: \"0660\", group: \"0\"}\n", 0o660},
		{"control: {socket: x.sock, mode: \"666\"}\n", 0o666},
		{"control: {socket: x.sock, mode: 0640}\n", 0o640}, // unquoted: the same digits
	} {
		c, err := Parse([]byte("listeners: [{name: a, do53: [\"127.0.0.1:53\"]}]\n"+tc.yaml), "")
		if err == nil {
			err = c.Validate()
		}
		if err != nil {
			t.Fatalf("%q: %v", tc.yaml, err)
		}
		if got := c.Control.FileMode(); got != tc.want {
			t.Errorf("%q: mode %o, want %o", tc.yaml, got, tc.want)
		}
	}
}
