package dot

import (
	"context"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"xdoh/datapath/internal/pipetest"
)

// TestRealClients queries the server with kdig (Knot) and dig (BIND 9.18),
// both verifying the certificate against the test CA.
func TestRealClients(t *testing.T) {
	log := &pipetest.Log{}
	s := start(t, Config{}, pipetest.Forwarder(t, &pipetest.Upstream{}, log))
	caFile, _, _, err := pki(t).WriteFiles(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(s.Addr().String())
	tests := []struct {
		name, tool string
		args       []string
		want       []string
	}{
		{"kdig zone", "kdig", []string{"+tls", "+tls-ca=" + caFile, "+tls-hostname=localhost", pipetest.LocalA, "A"}, []string{";; TLS session", "NOERROR", pipetest.LocalIP}},
		{"kdig upstream", "kdig", []string{"+tls", "+tls-ca=" + caFile, "+tls-hostname=localhost", "www.example.org", "A"}, []string{"NOERROR", pipetest.UpstreamIP}},
		{"dig", "dig", []string{"+tls", "+tls-ca=" + caFile, "+tls-hostname=localhost", pipetest.LocalA, "A"}, []string{"NOERROR", pipetest.LocalIP, "(TLS)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path, err := exec.LookPath(tt.tool)
			if err != nil {
				t.Skipf("%s not on PATH", tt.tool)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			args := append([]string{"@127.0.0.1", "-p", port, "+timeout=5", "+retry=0"}, tt.args...)
			out, err := exec.CommandContext(ctx, path, args...).CombinedOutput() // killed by PID when ctx ends
			if err != nil {
				t.Fatalf("%s %s: %v\n%s", tt.tool, strings.Join(args, " "), err, out)
			}
			for _, w := range tt.want {
				if !strings.Contains(string(out), w) {
					t.Errorf("%s output lacks %q:\n%s", tt.tool, w, out)
				}
			}
		})
	}
	if seen := log.Seen(); len(seen) == 0 || seen[0] != "DoT" {
		t.Errorf("query log transports %v, want DoT", seen)
	}
}
