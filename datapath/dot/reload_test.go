package dot

import (
	"bytes"
	"crypto/tls"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"xdoh/datapath/internal/pipetest"
	"xdoh/datapath/tlsconf"
)

// TestReloadCertificate: new handshakes get the new certificate, a
// connection made before keeps working, and a broken file is refused with
// its name while the old certificate stays.
func TestReloadCertificate(t *testing.T) {
	first, err := tlsconf.NewPKI("localhost")
	if err != nil {
		t.Fatal(err)
	}
	second, err := tlsconf.NewPKI("localhost")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	_, certFile, keyFile, err := first.WriteFiles(dir)
	if err != nil {
		t.Fatal(err)
	}
	s := start(t, Config{CertFile: certFile, KeyFile: keyFile}, pipetest.Forwarder(t, &pipetest.Upstream{}, nil))
	leaf := func(p *tlsconf.PKI) (*tls.Conn, error) {
		return tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", s.Addr().String(),
			&tls.Config{RootCAs: p.Pool, ServerName: "localhost", NextProtos: []string{ALPN}})
	}
	old, err := leaf(first)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()

	if _, _, _, err := second.WriteFiles(dir); err != nil {
		t.Fatal(err)
	}
	if err := s.ReloadCertificate(); err != nil {
		t.Fatal(err)
	}
	c, err := leaf(second)
	if err != nil {
		t.Fatalf("handshake trusting the second CA after the reload: %v", err)
	}
	defer c.Close()
	if !bytes.Equal(c.ConnectionState().PeerCertificates[0].Raw, second.Cert.Certificate[0]) {
		t.Error("after the reload: not the second certificate")
	}
	old.Write(frame(pipetest.Query(t, pipetest.LocalA, 3)))
	if m := readAnswer(t, old); m.Id != 3 {
		t.Errorf("the connection from before the reload: answer ID %d, want 3", m.Id)
	}

	if err := os.WriteFile(certFile, []byte("garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := s.ReloadCertificate(); err == nil || !strings.Contains(err.Error(), certFile) {
		t.Fatalf("ReloadCertificate of a garbage file = %v, want an error naming %s", err, certFile)
	}
	if c, err := leaf(second); err != nil {
		t.Fatalf("after a failed reload the second certificate should stay: %v", err)
	} else {
		c.Close()
	}
}
