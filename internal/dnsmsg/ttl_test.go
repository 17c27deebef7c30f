package dnsmsg

import (
	"testing"

	"github.com/miekg/dns"
)

// response packs a reply to name/qtype with the given sections.
func response(t *testing.T, name string, qtype uint16, rcode int, an, ns, extra []string, edns bool) ([]byte, int) {
	t.Helper()
	m := new(dns.Msg)
	m.SetReply(newQuery(name, qtype))
	m.Rcode = rcode
	m.Compress = true
	for _, s := range an {
		m.Answer = append(m.Answer, rr(t, s))
	}
	for _, s := range ns {
		m.Ns = append(m.Ns, rr(t, s))
	}
	for _, s := range extra {
		m.Extra = append(m.Extra, rr(t, s))
	}
	if edns {
		m.SetEdns0(1232, true)
	}
	b := pack(t, m)
	return b, HeaderLen + len(wireName(t, name)) + 4
}

func TestMinTTL(t *testing.T) {
	tests := []struct {
		name    string
		rcode   int
		qtype   uint16
		an, ns  []string
		extra   []string
		want    uint32
		wantAny bool
	}{
		{name: "smallest answer", qtype: dns.TypeA, an: []string{"x.example. 300 IN A 192.0.2.1", "x.example. 60 IN A 192.0.2.2", "x.example. 120 IN A 192.0.2.3"}, want: 60, wantAny: true},
		{name: "authority counts", qtype: dns.TypeA, an: []string{"x.example. 300 IN A 192.0.2.1"}, ns: []string{"example. 30 IN NS ns.example."}, want: 30, wantAny: true},
		{name: "additional ignored", qtype: dns.TypeA, an: []string{"x.example. 300 IN A 192.0.2.1"}, extra: []string{"ns.example. 5 IN A 192.0.2.53"}, want: 300, wantAny: true},
		{name: "zero TTL", qtype: dns.TypeA, an: []string{"x.example. 0 IN A 192.0.2.1", "x.example. 60 IN A 192.0.2.2"}, want: 0, wantAny: true},
		{name: "NXDOMAIN, SOA MINIMUM below SOA TTL", rcode: dns.RcodeNameError, qtype: dns.TypeA, ns: []string{"example. 3600 IN SOA ns.example. host.example. 1 7200 900 1209600 300"}, want: 300, wantAny: true},
		{name: "NXDOMAIN, SOA TTL below MINIMUM", rcode: dns.RcodeNameError, qtype: dns.TypeA, ns: []string{"example. 100 IN SOA ns.example. host.example. 1 7200 900 1209600 300"}, want: 100, wantAny: true},
		{name: "NODATA with SOA", qtype: dns.TypeAAAA, ns: []string{"example. 900 IN SOA ns.example. host.example. 1 7200 900 1209600 600"}, want: 600, wantAny: true},
		{name: "SOA in the answer is not clamped", qtype: dns.TypeSOA, an: []string{"example. 3600 IN SOA ns.example. host.example. 1 7200 900 1209600 300"}, want: 3600, wantAny: true},
		{name: "no records", qtype: dns.TypeA, want: 0, wantAny: false},
		{name: "only OPT", qtype: dns.TypeA, want: 0, wantAny: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			msg, qend := response(t, "x.example.", tt.qtype, tt.rcode, tt.an, tt.ns, tt.extra, true)
			got, ok := MinTTL(msg, qend)
			if got != tt.want || ok != tt.wantAny {
				t.Errorf("MinTTL = %d, %v; want %d, %v", got, ok, tt.want, tt.wantAny)
			}
		})
	}
}

func TestAgeTTLs(t *testing.T) {
	tests := []struct {
		name       string
		age, floor uint32
		want       []uint32 // answer, authority, additional A, in order
	}{
		{name: "no age", age: 0, floor: 0, want: []uint32{300, 60, 3600, 120}},
		{name: "age 50", age: 50, floor: 0, want: []uint32{250, 10, 3550, 70}},
		{name: "age past some TTLs", age: 100, floor: 0, want: []uint32{200, 0, 3500, 20}},
		{name: "floor", age: 100, floor: 30, want: []uint32{200, 30, 3500, 30}},
		{name: "age equals TTL", age: 300, floor: 0, want: []uint32{0, 0, 3300, 0}},
		{name: "huge age", age: 1 << 31, floor: 1, want: []uint32{1, 1, 1, 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			msg, qend := response(t, "x.example.", dns.TypeA, 0,
				[]string{"x.example. 300 IN A 192.0.2.1", "x.example. 60 IN A 192.0.2.2"},
				[]string{"example. 3600 IN NS ns.example."},
				[]string{"ns.example. 120 IN A 192.0.2.53"}, true)
			AgeTTLs(msg, qend, tt.age, tt.floor)
			var m dns.Msg
			if err := m.Unpack(msg); err != nil {
				t.Fatal(err)
			}
			var got []uint32
			var opt *dns.OPT
			for _, r := range append(append(m.Answer, m.Ns...), m.Extra...) {
				if o, ok := r.(*dns.OPT); ok {
					opt = o
					continue
				}
				got = append(got, r.Header().Ttl)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("TTLs %v, want %v", got, tt.want)
			}
			for i := range got {
				if got[i] != tt.want[i] {
					t.Errorf("TTLs %v, want %v", got, tt.want)
					break
				}
			}
			if opt == nil || !opt.Do() || opt.UDPSize() != 1232 || opt.ExtendedRcode() != 0 || opt.Version() != 0 {
				t.Errorf("OPT changed: %v", opt)
			}
		})
	}
}

func TestAgeTTLsStopsAtBrokenRecord(t *testing.T) {
	msg, qend := response(t, "x.example.", dns.TypeA, 0,
		[]string{"x.example. 300 IN A 192.0.2.1", "x.example. 300 IN A 192.0.2.2"}, nil, nil, false)
	cut := msg[:len(msg)-2] // the second record's RDATA is incomplete
	AgeTTLs(cut, qend, 100, 0)
	rr, err := ReadRR(cut, qend)
	if err != nil || rr.TTL != 200 {
		t.Fatalf("first record TTL %d, %v; want 200", rr.TTL, err)
	}
	if _, err := ReadRR(cut, rr.End); err != ErrTruncated {
		t.Errorf("second record: %v, want ErrTruncated", err)
	}
}
