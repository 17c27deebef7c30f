package zone

import (
	"strings"
	"testing"
)

func TestDigest(t *testing.T) {
	const head = "$ORIGIN z.example.\n$TTL 300\n@ IN SOA ns hostmaster 1 7200 900 1209600 300\n@ IN NS ns\nns IN A 192.0.2.53\n"
	parse := func(body string) [32]byte {
		t.Helper()
		z, err := Parse("z.example.", strings.NewReader(head+body), "test")
		if err != nil {
			t.Fatal(err)
		}
		return z.Digest()
	}
	base := parse("www IN A 192.0.2.1\nwww IN A 192.0.2.2\nmail IN A 192.0.2.3\n")
	for _, tc := range []struct {
		name, body string
		same       bool
	}{
		{"same records, other order", "mail IN A 192.0.2.3\nwww IN A 192.0.2.2\nwww IN A 192.0.2.1\n", true},
		{"an address changed", "www IN A 192.0.2.1\nwww IN A 192.0.2.9\nmail IN A 192.0.2.3\n", false},
		{"a TTL changed", "www 60 IN A 192.0.2.1\nwww 60 IN A 192.0.2.2\nmail IN A 192.0.2.3\n", false},
		{"a record removed", "www IN A 192.0.2.1\nwww IN A 192.0.2.2\n", false},
	} {
		if got := parse(tc.body) == base; got != tc.same {
			t.Errorf("%s: digest equal %v, want %v", tc.name, got, tc.same)
		}
	}
}
