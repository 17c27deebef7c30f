package zone

import (
	"os"
	"strings"
	"testing"

	"github.com/miekg/dns"
)

// FuzzParse feeds zone text to Parse and, when it loads, asks the zone about
// every name it holds and a few it does not. Neither may panic.
func FuzzParse(f *testing.F) {
	seed, err := os.ReadFile(testZoneFile)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(string(seed))
	f.Add(header)
	f.Add(header + "*.w IN CNAME *.w\n")
	f.Add(header + "a IN CNAME b\nb IN CNAME c\nc IN CNAME a\n")
	f.Add(header + "sub IN NS ns.sub\nns.sub IN A 10.2.5.5\nx IN CNAME y.sub\n")
	f.Add(header + "a\\.b IN A 10.0.0.1\n\\@ IN TXT x\n")
	f.Add(header + "d IN DNAME x.d\nl IN DNAME a-long-label-that-makes-every-name-grow.example.net.\nin IN DNAME d\n")
	f.Add("$ORIGIN aws.example.internal.\n@ IN SOA ns1 hostmaster ( 1 2 3\n")
	f.Add("")
	types := []uint16{dns.TypeA, dns.TypeAAAA, dns.TypeCNAME, dns.TypeNS, dns.TypeDS, dns.TypeANY, dns.TypeTXT, dns.TypeDNAME}
	f.Fuzz(func(t *testing.T, text string) {
		z, err := Parse("aws.example.internal.", strings.NewReader(text), "fuzz")
		if err != nil {
			return
		}
		names := []string{"aws.example.internal.", "nx.aws.example.internal.", "x.y.aws.example.internal.", "example.com."}
		for name := range z.nodes {
			names = append(names, name, "q."+name)
		}
		for _, name := range names {
			for _, qt := range types {
				resp := z.Answer(new(dns.Msg).SetQuestion(name, qt))
				if resp.Rcode == dns.RcodeSuccess && !resp.Authoritative && len(resp.Ns) == 0 {
					t.Fatalf("%s %s: non-authoritative answer without a referral", name, dns.TypeToString[qt])
				}
			}
		}
	})
}
