package doh

import (
	"context"
	"crypto/tls"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"xdoh/datapath/tlsconf"
)

// TestKdig queries the server with a real DoH client, kdig from Knot DNS
// (Debian knot-dnsutils), by POST and by GET.
func TestKdig(t *testing.T) {
	kdig, err := exec.LookPath("kdig")
	if err != nil {
		t.Skip("kdig not on PATH (Debian package knot-dnsutils)")
	}
	pki, err := tlsconf.NewPKI("127.0.0.1", "localhost")
	if err != nil {
		t.Fatal(err)
	}
	caFile, _, _, err := pki.WriteFiles(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{Name: "test", Addr: "127.0.0.1:0", TLS: &tls.Config{Certificates: []tls.Certificate{pki.Cert}}}, answerHandler(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
	_, port, err := net.SplitHostPort(s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		extra []string
		qname string
		want  []string
	}{
		{name: "POST", qname: "example.com", want: []string{"(HTTP/2-POST)", "(status: 200)", "status: NOERROR", "192.0.2.1", "192.0.2.2"}},
		{name: "GET", extra: []string{"+https-get"}, qname: "example.com", want: []string{"(HTTP/2-GET)", "status: NOERROR", "192.0.2.1"}},
		{name: "NXDOMAIN", qname: "nx.example.com", want: []string{"status: NXDOMAIN", "SOA"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			args := append([]string{"@127.0.0.1", "-p", port, "+https=/dns-query",
				"+tls-ca=" + caFile, "+tls-hostname=localhost", "+timeout=5", "+retry=0"}, tt.extra...)
			args = append(args, tt.qname, "A")
			cmd := exec.CommandContext(ctx, kdig, args...) // killed by PID when ctx ends
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("kdig %s: %v\n%s", strings.Join(args, " "), err, out)
			}
			for _, w := range tt.want {
				if !strings.Contains(string(out), w) {
					t.Errorf("kdig output lacks %q:\n%s", w, out)
				}
			}
		})
	}
}
