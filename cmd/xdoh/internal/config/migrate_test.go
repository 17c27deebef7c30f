package config

import (
	"strings"
	"testing"
)

func TestCheckMigration(t *testing.T) {
	l := func(name string, protos ...string) Listener { return Listener{Name: name, Protocols: protos} }
	tests := []struct {
		name      string
		old, next []Listener
		wantErr   string
	}{
		{"do53 to do53+doh", []Listener{l("in", "do53")}, []Listener{l("in", "do53", "doh")}, ""},
		{"do53+doh to doh", []Listener{l("in", "do53", "doh")}, []Listener{l("in", "doh")}, ""},
		{"do53 straight to doh", []Listener{l("in", "do53")}, []Listener{l("in", "doh")}, `listeners[0].protocols: "in" cannot go from [do53] straight to [doh]`},
		{"implicit do53 straight to doh-fips", []Listener{l("in")}, []Listener{l("in", "doh-fips")}, "[do53, doh-fips]"},
		{"doh straight back to do53", []Listener{l("in", "doh")}, []Listener{l("in", "do53")}, "cannot go from [doh] straight to [do53]"},
		{"doh-fips back to do53", []Listener{l("x", "do53"), l("in", "doh-fips")}, []Listener{l("x", "do53"), l("in")}, "listeners[1].protocols"},
		{"doh to doh-fips", []Listener{l("in", "doh")}, []Listener{l("in", "doh-fips")}, ""},
		{"do53 straight to dot", []Listener{l("in", "do53")}, []Listener{l("in", "dot")}, "[do53, dot]"},
		{"do53 straight to doq+dot-fips", []Listener{l("in", "do53")}, []Listener{l("in", "doq", "dot-fips")}, "[do53, dot-fips]"},
		{"doq straight back to do53", []Listener{l("in", "doq")}, []Listener{l("in", "do53")}, "cannot go from [doq] straight to [do53]"},
		{"do53+dot to dot+doq", []Listener{l("in", "do53", "dot")}, []Listener{l("in", "dot", "doq")}, ""},
		{"do53 to do53+dot+doq", []Listener{l("in", "do53")}, []Listener{l("in", "do53", "dot", "doq")}, ""},
		{"new listener with doh only", []Listener{l("in", "do53")}, []Listener{l("in", "do53"), l("new", "doh")}, ""},
		{"removed listener", []Listener{l("in", "do53"), l("gone", "doh")}, []Listener{l("in", "do53")}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := CheckMigration(&Config{Listeners: tt.old}, &Config{Listeners: tt.next})
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tt.wantErr != "" && err == nil:
				t.Fatalf("no error, want %q", tt.wantErr)
			case tt.wantErr != "" && !strings.Contains(err.Error(), tt.wantErr):
				t.Fatalf("error %q, want it to contain %q", err, tt.wantErr)
			}
		})
	}
}

func TestSelectValidation(t *testing.T) {
	base := "listeners: [{name: a, do53: [\"127.0.0.1:53\"]}]\n"
	tests := []struct{ name, yaml, want string }{
		{"ok", "rules: [{name: r, domain: example.com, type: forward, targets: [\"127.0.0.1\"], policy: fastest, hedge: 20ms, health: {fail_after: 2, probe_interval: 1s}}]\n", ""},
		{"bad policy", "rules: [{name: r, domain: example.com, type: forward, targets: [\"127.0.0.1\"], policy: random}]\n", "rules[0].policy"},
		{"bad hedge", "default: {targets: [\"127.0.0.1\"], hedge: soon}\n", "default.hedge"},
		{"bad probe name", "default: {targets: [\"127.0.0.1\"], health: {probe_name: \"a..b\"}}\n", "default.health.probe_name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(base+tt.yaml), t.TempDir())
			if tt.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want %q", err, tt.want)
			}
		})
	}
}
