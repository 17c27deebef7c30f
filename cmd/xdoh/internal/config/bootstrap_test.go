package config

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestBootstrap(t *testing.T) {
	tests := []struct {
		name  string
		yaml  string // after base
		want  []string
		count int // joined errors; 0: none expected
	}{
		{name: "rule and default", yaml: "rules:\n  - {name: r, domain: a.example, type: forward, targets: [\"https://dns.corp.example/dns-query\", \"tls://dot.corp.example:8853\", \"quic://doq.corp.example\"], bootstrap: [10.0.0.53, \"2001:db8::53\"]}\ndefault:\n  targets: [\"https://dns.example/dns-query\"]\n  bootstrap: [192.0.2.1]\n"},
		{name: "not an IP", yaml: "rules:\n  - {name: r, domain: a.example, type: forward, targets: [\"https://dns.corp.example/dns-query\"], bootstrap: [10.0.0.53, dns.example, \"10.0.0.54:53\"]}\n",
			want: []string{`rules[0].bootstrap[1]: "dns.example" is not an IP address`, `rules[0].bootstrap[2]: "10.0.0.54:53" is not an IP address`}, count: 2},
		{name: "zone, wildcard, multicast, twice", yaml: "default:\n  targets: [\"tls://dns.example\"]\n  bootstrap: [\"fe80::1%eth0\", 0.0.0.0, 224.0.0.1, 192.0.2.1, \"::ffff:192.0.2.1\"]\n",
			want: []string{`default.bootstrap[0]: "fe80::1%eth0" is not an IP address`, `default.bootstrap[1]: "0.0.0.0" cannot be dialled`, `default.bootstrap[2]: "224.0.0.1" cannot be dialled`, `default.bootstrap[4]: "::ffff:192.0.2.1" is listed twice`}, count: 4},
		{name: "target by IP", yaml: "rules:\n  - {name: r, domain: a.example, type: forward, targets: [\"https://dns.corp.example/dns-query\", \"https://10.0.0.1/dns-query\"], bootstrap: [10.0.0.53]}\n",
			want: []string{`rules[0].bootstrap: applies only to https://, tls:// and quic:// targets named by host, and rules[0].targets[1] "https://10.0.0.1/dns-query" is not one`}, count: 1},
		{name: "Do53 target", yaml: "default:\n  targets: [\"udp://10.0.0.1\"]\n  bootstrap: [10.0.0.53]\n",
			want: []string{`default.bootstrap: applies only to`, `default.targets[0] "udp://10.0.0.1"`}, count: 1},
		{name: "system rule", yaml: "rules:\n  - {name: r, domain: a.example, type: system, bootstrap: [10.0.0.53]}\n",
			want: []string{"rules[0].bootstrap: a system rule sends nothing upstream of its own"}, count: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse([]byte(base+tt.yaml), "")
			if tt.count == 0 {
				if err != nil {
					t.Fatalf("Parse: %v", err)
				}
				if c.Default == nil || len(c.Default.Bootstrap) == 0 {
					t.Fatalf("default.bootstrap not read: %+v", c.Default)
				}
				return
			}
			if err == nil {
				t.Fatalf("accepted: %+v", c)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			n := 1
			var joined interface{ Unwrap() []error }
			if errors.As(err, &joined) {
				n = len(joined.Unwrap())
			}
			if n != tt.count {
				t.Errorf("%d errors, want %d: %v", n, tt.count, err)
			}
		})
	}
}

func TestTargetHost(t *testing.T) {
	for target, want := range map[string]string{
		"https://dns.example.internal/dns-query":      "dns.example.internal",
		"https://dns.example.internal:8443/dns-query": "dns.example.internal",
		"https://10.0.0.1/dns-query":                  "",
		"https://[2001:db8::1]:443/dns-query":         "",
		"tls://dot.example":                           "dot.example",
		"tls://dot.example:8853":                      "dot.example",
		"tls://2001:db8::1":                           "",
		"tls://[2001:db8::1]:853":                     "",
		"quic://doq.example":                          "doq.example",
		"quic://127.0.0.1:8853":                       "",
		"udp://10.0.0.1":                              "",
		"10.0.0.1:53":                                 "",
	} {
		if got := TargetHost(target); got != want {
			t.Errorf("TargetHost(%q) = %q, want %q", target, got, want)
		}
	}
	if got := BootstrapAddrs([]string{"10.0.0.1", "::ffff:10.0.0.2", "2001:db8::1"}); !slices.Equal(got, []netip.Addr{
		netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("2001:db8::1")}) {
		t.Errorf("BootstrapAddrs = %v", got)
	}
}

// TestCheckSelfResolution: a target named by host without bootstrap is
// refused exactly when the resolv.conf given points at one of the
// listeners' own port-53 addresses.
func TestCheckSelfResolution(t *testing.T) {
	dir := t.TempDir()
	const hostTarget = "rules:\n  - {name: r, domain: a.example, type: forward, targets: [\"https://dns.corp.example/dns-query\"]}\n"
	tests := []struct {
		name     string
		listen   string // the listener's do53 address
		resolv   string // resolv.conf text; "-": no file
		targets  string // rules and default
		selfWant string // substring of the error; "": accepted
	}{
		{name: "own address", listen: "127.0.0.1:53", resolv: "nameserver 127.0.0.1\n", targets: hostTarget,
			selfWant: `rules[0].targets[0]: "https://dns.corp.example/dns-query" is named by host, which the system resolver would resolve through xdoh itself (nameserver 127.0.0.1 of RESOLV is listeners[0].do53[0] "127.0.0.1:53"): set rules[0].bootstrap`},
		{name: "second nameserver", listen: "127.0.0.53:53", resolv: "search corp.example\nnameserver 192.0.2.1\nnameserver 127.0.0.53\noptions edns0\n", targets: hostTarget, selfWant: "nameserver 127.0.0.53 of"},
		{name: "wildcard listener, loopback nameserver", listen: "0.0.0.0:53", resolv: "nameserver 127.0.0.1\n", targets: hostTarget, selfWant: "rules[0].targets[0]"},
		{name: "v6 wildcard, v4 loopback", listen: "[::]:53", resolv: "nameserver 127.0.0.1\n", targets: hostTarget, selfWant: "rules[0].targets[0]"},
		{name: "v4 wildcard, v6 loopback", listen: "0.0.0.0:53", resolv: "nameserver ::1\n", targets: hostTarget},
		{name: "loopback listener, 0.0.0.0 nameserver", listen: "127.0.0.1:53", resolv: "nameserver 0.0.0.0\n", targets: hostTarget, selfWant: "nameserver 0.0.0.0"},
		{name: "missing resolv.conf is localhost", listen: "127.0.0.1:53", resolv: "-", targets: hostTarget, selfWant: "(by default: it is missing)"},
		{name: "empty resolv.conf is localhost", listen: "[::1]:53", resolv: "# nothing\n", targets: "default:\n  targets: [\"quic://doq.corp.example\"]\n", selfWant: `default.targets[0]: "quic://doq.corp.example" is named by host`},
		{name: "other port", listen: "127.0.0.1:5353", resolv: "nameserver 127.0.0.1\n", targets: hostTarget},
		{name: "other resolver", listen: "127.0.0.1:53", resolv: "nameserver 192.0.2.1\n", targets: hostTarget},
		{name: "other loopback", listen: "127.0.0.1:53", resolv: "nameserver 127.0.0.53\n", targets: hostTarget},
		{name: "bootstrap given", listen: "127.0.0.1:53", resolv: "nameserver 127.0.0.1\n",
			targets: "rules:\n  - {name: r, domain: a.example, type: forward, targets: [\"https://dns.corp.example/dns-query\"], bootstrap: [192.0.2.10]}\n"},
		{name: "targets by IP", listen: "127.0.0.1:53", resolv: "nameserver 127.0.0.1\n",
			targets: "default:\n  targets: [\"https://192.0.2.10/dns-query\", \"tls://192.0.2.11\", \"192.0.2.12\"]\n"},
		{name: "each target named", listen: "127.0.0.1:53", resolv: "nameserver 127.0.0.1\n",
			targets:  "rules:\n  - {name: r, domain: a.example, type: forward, targets: [\"tls://192.0.2.11\", \"tls://dot.corp.example\"]}\ndefault:\n  targets: [\"https://dns.corp.example/dns-query\"]\n",
			selfWant: "rules[0].targets[1]: \"tls://dot.corp.example\""},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resolv := filepath.Join(dir, "resolv.conf."+string(rune('a'+i)))
			if tt.resolv != "-" {
				if err := os.WriteFile(resolv, []byte(tt.resolv), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			c, err := Parse([]byte("listeners:\n  - name: a\n    do53: [\""+tt.listen+"\"]\n"+tt.targets), "")
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			err = c.CheckSelfResolution(resolv)
			if tt.selfWant == "" {
				if err != nil {
					t.Errorf("refused: %v", err)
				}
				return
			}
			want := strings.ReplaceAll(tt.selfWant, "RESOLV", resolv)
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("CheckSelfResolution = %v, want an error with %q", err, want)
			}
		})
	}
	t.Run("unreadable", func(t *testing.T) {
		c, err := Parse([]byte(base), "")
		if err != nil {
			t.Fatal(err)
		}
		if err := c.CheckSelfResolution(dir); err == nil || !strings.Contains(err.Error(), "reading the system resolver's configuration") {
			t.Errorf("a directory as resolv.conf: %v", err)
		}
	})
}
