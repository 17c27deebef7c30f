package dnsmsg

import (
	"testing"

	"github.com/miekg/dns"
)

func TestMaxUDPSize(t *testing.T) {
	tests := []struct {
		name string
		edns bool
		size uint16
		want int
	}{
		{"no EDNS", false, 0, 512},
		{"EDNS below 512", true, 100, 512},
		{"EDNS 1232", true, 1232, 1232},
		{"EDNS 4096", true, 4096, 4096},
		{"EDNS 65535 capped", true, 65535, MaxUDPSize},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := new(dns.Msg).SetQuestion("example.com.", dns.TypeA)
			if tt.edns {
				m.SetEdns0(tt.size, false)
			}
			b, _ := m.Pack()
			var q Query
			if err := Parse(b, &q); err != nil {
				t.Fatal(err)
			}
			if got := q.MaxUDPSize(); got != tt.want {
				t.Fatalf("MaxUDPSize = %d, want %d", got, tt.want)
			}
		})
	}
}
