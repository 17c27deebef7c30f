package rules

import (
	"testing"

	"github.com/miekg/dns"
)

func wire(t testing.TB, name string) []byte {
	t.Helper()
	buf := make([]byte, 256)
	n, err := dns.PackDomainName(dns.Fqdn(name), buf, 0, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	return buf[:n]
}

func TestMatchMostSpecificWins(t *testing.T) {
	tab, err := New([]Rule{
		{Name: "onprem", Domain: "example.com", Type: Forward},
		{Name: "keep-local", Domain: "Sys.Example.COM.", Type: System},
		{Name: "ads", Domain: "ads.example.com", Type: Block},
		{Name: "zone", Domain: "aws.example.internal", Type: Zone},
	})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		q    string
		want string // rule name, "" for none
	}{
		{"apex of forward rule", "example.com", "onprem"},
		{"below forward rule", "foo.example.com", "onprem"},
		{"system exempts subtree", "a.b.sys.example.com", "keep-local"},
		{"system apex", "sys.example.com", "keep-local"},
		{"label boundary respected", "notexample.com", ""},
		{"label boundary respected 2", "xsys.example.com", "onprem"},
		{"block rule", "tracker.ads.example.com", "ads"},
		{"zone", "ipv4.aws.example.internal", "zone"},
		{"unmatched", "example.org", ""},
		{"root", ".", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := tab.Match(wire(t, tt.q))
			got := ""
			if r != nil {
				got = r.Name
			}
			if got != tt.want {
				t.Fatalf("Match(%q) = %q, want %q", tt.q, got, tt.want)
			}
		})
	}
}

func TestRootRuleMatchesAll(t *testing.T) {
	tab, err := New([]Rule{{Name: "all", Domain: ".", Type: Forward}, {Name: "c", Domain: "com", Type: System}})
	if err != nil {
		t.Fatal(err)
	}
	if r := tab.Match(wire(t, "example.org")); r == nil || r.Name != "all" {
		t.Fatalf("got %v, want all", r)
	}
	if r := tab.Match(wire(t, "example.com")); r == nil || r.Name != "c" {
		t.Fatalf("got %v, want c", r)
	}
}

func TestNewErrors(t *testing.T) {
	tests := []struct {
		name  string
		rules []Rule
	}{
		{"duplicate domain", []Rule{{Name: "a", Domain: "example.com"}, {Name: "b", Domain: "EXAMPLE.com."}}},
		{"bad domain", []Rule{{Name: "a", Domain: "exa..mple.com"}}},
		{"label too long", []Rule{{Name: "a", Domain: string(make([]byte, 70)) + ".com"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := New(tt.rules); err == nil {
				t.Fatal("want error")
			}
		})
	}
}

func BenchmarkMatch(b *testing.B) {
	tab, _ := New([]Rule{{Name: "a", Domain: "example.com", Type: Forward}, {Name: "b", Domain: "sys.example.com", Type: System}})
	q := wire(b, "a.b.c.d.example.org")
	b.ReportAllocs()
	for b.Loop() {
		tab.Match(q)
	}
}
