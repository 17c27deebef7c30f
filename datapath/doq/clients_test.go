package doq

import (
	"context"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"xdoh/datapath/internal/pipetest"
)

// TestKdig queries the server with kdig +quic, verifying the certificate
// against the test CA. It needs a kdig built with QUIC (libngtcp2); it
// skips with one that is not.
func TestKdig(t *testing.T) {
	kdig, err := exec.LookPath("kdig")
	if err != nil {
		t.Skip("kdig not on PATH (Debian package knot-dnsutils)")
	}
	log := &pipetest.Log{}
	s := start(t, Config{}, pipetest.Forwarder(t, &pipetest.Upstream{}, log))
	caFile, _, _, err := pki(t).WriteFiles(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(s.Addr().String())
	for _, tt := range []struct{ qname, want string }{{pipetest.LocalA, pipetest.LocalIP}, {"www.example.org", pipetest.UpstreamIP}} {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		args := []string{"@127.0.0.1", "-p", port, "+quic", "+tls-ca=" + caFile, "+tls-hostname=localhost", "+timeout=5", "+retry=0", tt.qname, "A"}
		out, err := exec.CommandContext(ctx, kdig, args...).CombinedOutput() // killed by PID when ctx ends
		cancel()
		if err != nil && !strings.Contains(string(out), "(QUIC)") && strings.Contains(string(out), "(TCP)") {
			// Debian 12's kdig 3.2 takes +quic but, built without libngtcp2,
			// queries over TCP instead.
			t.Skipf("kdig was built without QUIC: it fell back to TCP:\n%s", out)
		}
		if err != nil {
			t.Fatalf("kdig %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		for _, w := range []string{"(QUIC)", "NOERROR", tt.want} {
			if !strings.Contains(string(out), w) {
				t.Errorf("kdig output lacks %q:\n%s", w, out)
			}
		}
	}
	if seen := log.Seen(); len(seen) != 2 || seen[0] != "DoQ" {
		t.Errorf("query log transports %v, want DoQ twice", seen)
	}
}
