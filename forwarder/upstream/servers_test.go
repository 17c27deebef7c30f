package upstream

import (
	"testing"

	"github.com/miekg/dns"

	"xdoh/forwarder/upstream/upstreamtest"
)

// The test servers are in upstreamtest, shared with its contract suite.

func makeQuery(t testing.TB, name string, id uint16) []byte {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, dns.TypeA)
	m.Id = id
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// checkAnswer unpacks resp and checks ID, question and the answer address.
func checkAnswer(t testing.TB, resp []byte, name string, id uint16) {
	t.Helper()
	m := new(dns.Msg)
	if err := m.Unpack(resp); err != nil {
		t.Fatalf("unpacking response for %s: %v", name, err)
	}
	if m.Id != id {
		t.Errorf("%s: response ID %#x, want %#x", name, m.Id, id)
	}
	if len(m.Question) != 1 || m.Question[0].Name != name {
		t.Fatalf("%s: response question %v", name, m.Question)
	}
	if len(m.Answer) != 1 {
		t.Fatalf("%s: %d answers, want 1", name, len(m.Answer))
	}
	a, ok := m.Answer[0].(*dns.A)
	if !ok || !a.A.Equal(upstreamtest.IPFor(name)) {
		t.Errorf("%s: answer %v, want %v", name, m.Answer[0], upstreamtest.IPFor(name))
	}
}
