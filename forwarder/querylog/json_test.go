package querylog

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

var t0 = time.Date(2026, 11, 26, 22, 0, 0, 123456789, time.UTC)

func pack(t testing.TB, m *dns.Msg) []byte {
	t.Helper()
	b, err := m.Pack()
	if err != nil {
		t.Fatalf("packing %v: %v", m.Question, err)
	}
	return b
}

func newQuery(name string, qtype uint16) *dns.Msg {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.Id = 0x1234
	return m
}

func newReply(t testing.TB, q *dns.Msg, rcode int, rrs ...string) *dns.Msg {
	t.Helper()
	r := new(dns.Msg)
	r.SetRcode(q, rcode)
	for _, s := range rrs {
		rr, err := dns.NewRR(s)
		if err != nil {
			t.Fatalf("parsing %q: %v", s, err)
		}
		r.Answer = append(r.Answer, rr)
	}
	return r
}

func TestAppendRecordFields(t *testing.T) {
	const head = `{"version":"1.100000","account_id":"","region":"","vpc_id":"","query_timestamp":"2026-11-26T22:00:00Z",`
	tests := []struct {
		name     string
		query    *dns.Msg
		rcode    int
		answers  []string
		noReply  bool
		client   netip.AddrPort
		entry    Entry // Transport, Listener, Rule, … (Time, wire and Client are filled in)
		wantTail string
	}{
		{
			name:    "A over UDP",
			query:   newQuery("foo.example.com.", dns.TypeA),
			answers: []string{"foo.example.com. 60 IN A 172.16.0.10"},
			client:  netip.MustParseAddrPort("127.0.0.1:53211"),
			entry: Entry{Transport: "UDP", Listener: "edge", Rule: "onprem", Target: "https://127.0.0.1:8443/dns-query",
				UpstreamTransport: "DoH", Latency: 812 * time.Microsecond},
			wantTail: `"query_name":"foo.example.com.","query_type":"A","query_class":"IN","rcode":"NOERROR",` +
				`"answers":[{"Rdata":"172.16.0.10","Type":"A","Class":"IN"}],"srcaddr":"127.0.0.1","srcport":"53211",` +
				`"transport":"UDP","srcids":{"resolver_endpoint":"edge"},"rule":"onprem","target":"https://127.0.0.1:8443/dns-query",` +
				`"upstream_transport":"DoH","cache_hit":false,"latency_us":812}`,
		},
		{
			name:  "AAAA over TCP, cache hit, v6 client, case kept",
			query: newQuery("Six.Example.COM.", dns.TypeAAAA),
			answers: []string{
				"Six.Example.COM. 300 IN AAAA 2001:db8::1",
				"Six.Example.COM. 300 IN AAAA 2001:db8::2",
			},
			client: netip.MustParseAddrPort("[2001:db8::99]:40000"),
			entry:  Entry{Transport: "TCP", Listener: "inbound", Rule: "onprem", CacheHit: true, Latency: 3 * time.Microsecond},
			wantTail: `"query_name":"Six.Example.COM.","query_type":"AAAA","query_class":"IN","rcode":"NOERROR",` +
				`"answers":[{"Rdata":"2001:db8::1","Type":"AAAA","Class":"IN"},{"Rdata":"2001:db8::2","Type":"AAAA","Class":"IN"}],` +
				`"srcaddr":"2001:db8::99","srcport":"40000","transport":"TCP","srcids":{"resolver_endpoint":"inbound"},` +
				`"rule":"onprem","target":"","upstream_transport":"","cache_hit":true,"latency_us":3}`,
		},
		{
			name:  "CNAME chain over DoH, v4-mapped client unmapped",
			query: newQuery("www.example.com.", dns.TypeA),
			answers: []string{
				"www.example.com. 60 IN CNAME web.example.net.",
				"web.example.net. 60 IN A 192.0.2.7",
			},
			client: netip.MustParseAddrPort("[::ffff:10.1.2.3]:443"),
			entry: Entry{Transport: "DoH", Listener: "inbound", Rule: "onprem", Target: "https://192.0.2.53/dns-query",
				UpstreamTransport: "DoH", Latency: 1500 * time.Microsecond},
			wantTail: `"query_name":"www.example.com.","query_type":"A","query_class":"IN","rcode":"NOERROR",` +
				`"answers":[{"Rdata":"web.example.net.","Type":"CNAME","Class":"IN"},{"Rdata":"192.0.2.7","Type":"A","Class":"IN"}],` +
				`"srcaddr":"10.1.2.3","srcport":"443","transport":"DoH","srcids":{"resolver_endpoint":"inbound"},` +
				`"rule":"onprem","target":"https://192.0.2.53/dns-query","upstream_transport":"DoH","cache_hit":false,"latency_us":1500}`,
		},
		{
			name:   "NXDOMAIN over DoH-FIPS",
			query:  newQuery("nope.example.com.", dns.TypeTXT),
			rcode:  dns.RcodeNameError,
			client: netip.MustParseAddrPort("192.0.2.1:5353"),
			entry:  Entry{Transport: "DoH-FIPS", Listener: "fips", Rule: "block-nope"},
			wantTail: `"query_name":"nope.example.com.","query_type":"TXT","query_class":"IN","rcode":"NXDOMAIN","answers":[],` +
				`"srcaddr":"192.0.2.1","srcport":"5353","transport":"DoH-FIPS","srcids":{"resolver_endpoint":"fips"},` +
				`"rule":"block-nope","target":"","upstream_transport":"","cache_hit":false,"latency_us":0}`,
		},
		{
			name:    "no reply, no listener, no client",
			query:   newQuery("slow.example.com.", dns.TypeMX),
			noReply: true,
			entry:   Entry{Transport: "UDP"},
			wantTail: `"query_name":"slow.example.com.","query_type":"MX","query_class":"IN","rcode":"","answers":[],` +
				`"srcaddr":"","srcport":"","transport":"UDP","srcids":{},"rule":"","target":"","upstream_transport":"","cache_hit":false,"latency_us":0}`,
		},
		{
			name:   "unknown type; names in presentation format, then JSON-escaped",
			query:  newQuery(`we"ird\\name.example.`, 65280),
			rcode:  dns.RcodeRefused,
			client: netip.MustParseAddrPort("192.0.2.1:1"),
			entry:  Entry{Transport: "UDP", Listener: "a\"b\n", Rule: "r\\1"},
			wantTail: `"query_name":"we\\\"ird\\\\name.example.","query_type":"TYPE65280","query_class":"IN","rcode":"REFUSED","answers":[],` +
				`"srcaddr":"192.0.2.1","srcport":"1","transport":"UDP","srcids":{"resolver_endpoint":"a\"b\n"},` +
				`"rule":"r\\1","target":"","upstream_transport":"","cache_hit":false,"latency_us":0}`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := tt.entry
			e.Time = t0
			e.Client = tt.client
			e.Query = pack(t, tt.query)
			if !tt.noReply {
				e.Response = pack(t, newReply(t, tt.query, tt.rcode, tt.answers...))
			}
			got := string(appendRecord(nil, &e))
			want := head + tt.wantTail + "\n"
			if got != want {
				t.Errorf("line:\n got %s want %s", got, want)
			}
			var v map[string]any
			if err := json.Unmarshal([]byte(got), &v); err != nil {
				t.Fatalf("not JSON: %v", err)
			}
			if _, ok := v["answers"].([]any); !ok {
				t.Errorf("answers is %T, want an array", v["answers"])
			}
		})
	}
}

func TestAppendRecordGarbage(t *testing.T) {
	e := Entry{Time: t0, Query: []byte{1, 2, 3}, Response: []byte{0xff}, Transport: "UDP"}
	got := string(appendRecord(nil, &e))
	if !json.Valid([]byte(got)) || !strings.Contains(got, `"query_name":"","query_type":"","query_class":"","rcode":"","answers":[]`) {
		t.Errorf("garbage wire: %s", got)
	}
}

func TestAppendString(t *testing.T) {
	for _, s := range []string{
		"", "plain", `q"uote`, `back\slash`, "tab\tnl\ncr\r", "\x00\x01\x1f\x7f", "ünïcødé", "\u2028\u2029",
		"bad\xffutf8\xc3", "<html>&amp;", "emoji 🦊",
	} {
		got := appendString(nil, s)
		var back string
		if err := json.Unmarshal(got, &back); err != nil {
			t.Errorf("appendString(%q) = %s: %v", s, got, err)
			continue
		}
		want, _ := json.Marshal(s)
		var wantBack string
		json.Unmarshal(want, &wantBack)
		if back != wantBack {
			t.Errorf("appendString(%q) decodes to %q, encoding/json's to %q", s, back, wantBack)
		}
	}
}

func FuzzAppendString(f *testing.F) {
	for _, s := range []string{"", "a\"b", "\xff\xfe", "\u2028", "\x00", "é"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got := appendString(nil, s)
		var back string
		if err := json.Unmarshal(got, &back); err != nil {
			t.Fatalf("appendString(%q) = %s: %v", s, got, err)
		}
		want, _ := json.Marshal(s)
		var wantBack string
		json.Unmarshal(want, &wantBack)
		if back != wantBack {
			t.Fatalf("appendString(%q) decodes to %q, encoding/json's to %q", s, back, wantBack)
		}
	})
}

// FuzzAppendRecord feeds arbitrary wire to the writer's parser: every line
// must be one valid JSON object.
func FuzzAppendRecord(f *testing.F) {
	q := newQuery("foo.example.com.", dns.TypeA)
	qb, _ := q.Pack()
	r := new(dns.Msg)
	r.SetReply(q)
	rr, _ := dns.NewRR("foo.example.com. 60 IN TXT \"a\\\"b\" \"\\255\"")
	r.Answer = append(r.Answer, rr)
	rb, _ := r.Pack()
	f.Add(qb, rb)
	f.Add(qb, []byte(nil))
	f.Add([]byte{}, []byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, query, response []byte) {
		e := Entry{Time: t0, Query: query, Response: response, Transport: "UDP"}
		line := appendRecord(nil, &e)
		if len(line) == 0 || line[len(line)-1] != '\n' || !json.Valid(line) {
			t.Fatalf("invalid line %q", line)
		}
	})
}

// TestAppendRdataFastPaths checks the hand-written rdata formatting matches
// miekg/dns's presentation format after a wire round trip.
func TestAppendRdataFastPaths(t *testing.T) {
	for _, s := range []string{
		"x. 60 IN A 192.0.2.1",
		"x. 60 IN A 0.0.0.0",
		"x. 60 IN AAAA 2001:db8::1",
		"x. 60 IN AAAA ::ffff:192.0.2.1",
		"x. 60 IN AAAA ::",
		`x. 60 IN CNAME a\.b.Example.com.`,
		`x. 60 IN CNAME we\"ird\\name\000.example.`,
		"x. 60 IN CNAME .",
		`x. 60 IN PTR host\032name.example.`,
		"x. 60 IN NS ns1.example.",
		`x. 60 IN TXT "a\"b" "\255"`,
		"x. 60 IN MX 10 mail.example.",
	} {
		rr, err := dns.NewRR(s)
		if err != nil {
			t.Fatalf("%q: %v", s, err)
		}
		m := new(dns.Msg)
		m.Answer = []dns.RR{rr}
		var back dns.Msg
		if err := back.Unpack(pack(t, m)); err != nil {
			t.Fatal(err)
		}
		rr = back.Answer[0]
		got := string(appendRdata(nil, rr))
		want := string(appendString(nil, strings.TrimPrefix(rr.String(), rr.Header().String())))
		if got != want {
			t.Errorf("%q: rdata %s, miekg/dns %s", s, got, want)
		}
	}
}
