package dnsmsg

import (
	"testing"

	"github.com/miekg/dns"
)

func wire(t *testing.T, name string) []byte {
	t.Helper()
	b := make([]byte, 256)
	n, err := dns.PackDomainName(dns.Fqdn(name), b, 0, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	return AppendLower(nil, b[:n])
}

func TestInZone(t *testing.T) {
	for _, tc := range []struct {
		name, zone string
		want       bool
	}{
		{"example.com", "example.com", true},
		{"www.example.com", "example.com", true},
		{"a.b.example.com", "example.com", true},
		{"WWW.Example.COM", "example.com", true},
		{"xexample.com", "example.com", false}, // a suffix, not at a label boundary
		{"example.com", "www.example.com", false},
		{"example.org", "example.com", false},
		{"anything.example", ".", true},
		{".", ".", true},
		{".", "com", false},
		{"com", "example.com", false},
	} {
		if got := InZone(wire(t, tc.name), wire(t, tc.zone)); got != tc.want {
			t.Errorf("InZone(%s, %s) = %v, want %v", tc.name, tc.zone, got, tc.want)
		}
	}
	// One label "x\x07example\x03com" under the root: its wire form ends
	// with example.com's, but not at a label boundary.
	zone := wire(t, "example.com")
	trick := append([]byte{byte(len(zone))}, 'x')
	trick = append(append(trick, zone[:len(zone)-1]...), 0)
	if _, _, err := dns.UnpackDomainName(trick, 0); err != nil {
		t.Fatal(err)
	}
	if InZone(trick, zone) {
		t.Error("a name whose one label ends like example.com is in example.com")
	}
}

func TestKeyFields(t *testing.T) {
	m := new(dns.Msg).SetQuestion("WWW.example.com.", dns.TypeAAAA)
	m.SetEdns0(1232, true)
	m.CheckingDisabled = true
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	var q Query
	if err := Parse(b, &q); err != nil {
		t.Fatal(err)
	}
	q.Subnet = []byte{0, 1, 24, 0, 192, 0, 2}
	key := AppendKey(nil, &q)
	name, qt, qc, flags, sub, ok := KeyFields(key)
	if !ok || string(name) != string(wire(t, "www.example.com")) || qt != dns.TypeAAAA || qc != dns.ClassINET ||
		flags != KeyOPT|KeyDO|KeyCD|KeyRD || string(sub) != string(q.Subnet) {
		t.Errorf("KeyFields = %q %d %d %b %v %v", name, qt, qc, flags, sub, ok)
	}
	for _, bad := range [][]byte{nil, key[:len(name)+3], append(append([]byte(nil), key...), 1)} {
		if _, _, _, _, _, ok := KeyFields(bad); ok {
			t.Errorf("KeyFields(%q) ok", bad)
		}
	}
}
