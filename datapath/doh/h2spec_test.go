package doh

import (
	"net"
	"os/exec"
	"regexp"
	"testing"
)

// TestH2spec runs h2spec (github.com/summerwind/h2spec; .ci/run installs
// it) against the server: every test of RFC 7540/9113 and HPACK it has
// must pass.
func TestH2spec(t *testing.T) {
	bin, err := exec.LookPath("h2spec")
	if err != nil {
		t.Skip("h2spec not installed: go install github.com/summerwind/h2spec/cmd/h2spec@v2.2.1+incompatible")
	}
	s, _ := startServer(t)
	_, port, _ := net.SplitHostPort(s.Addr().String())
	out, err := exec.Command(bin, "-h", "127.0.0.1", "-p", port, "-t", "-k", "-P", "/dns-query", "-o", "5").CombinedOutput()
	m := regexp.MustCompile(`(\d+) tests, (\d+) passed, (\d+) skipped, (\d+) failed`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("h2spec: %v, no summary in its output:\n%s", err, out)
	}
	if string(m[1]) != string(m[2]) {
		t.Errorf("h2spec: %s tests, %s passed, %s skipped, %s failed:\n%s", m[1], m[2], m[3], m[4], out)
	}
	t.Logf("h2spec: %s", m[0])
}
