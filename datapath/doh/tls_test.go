package doh

import (
	"bufio"
	"bytes"
	"context"
	"crypto/fips140"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"xdoh/datapath/tlsconf"
	"xdoh/forwarder"
)

func mustPKI(t testing.TB) *tlsconf.PKI {
	t.Helper()
	pki, err := tlsconf.NewPKI("127.0.0.1", "localhost")
	if err != nil {
		t.Fatal(err)
	}
	return pki
}

// handshake opens a TLS connection trusting only pool, offering h2 and
// whatever conf adds, and returns its state.
func handshake(addr string, pool *x509.CertPool, conf *tls.Config) (tls.ConnectionState, error) {
	if conf == nil {
		conf = &tls.Config{}
	}
	conf = conf.Clone()
	conf.RootCAs, conf.NextProtos = pool, []string{"h2"}
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, conf)
	if err != nil {
		return tls.ConnectionState{}, err
	}
	defer c.Close()
	return c.ConnectionState(), nil
}

// servedLeaf returns the leaf certificate the server at addr presents to a
// client trusting pool.
func servedLeaf(t *testing.T, addr string, pool *x509.CertPool) []byte {
	t.Helper()
	st, err := handshake(addr, pool, nil)
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	return st.PeerCertificates[0].Raw
}

// postQuery sends one POST query and returns the response, body read.
func postQuery(t *testing.T, c *http.Client, url string) (*http.Response, []byte) {
	t.Helper()
	resp, err := c.Post(url, mediaType, bytes.NewReader(query(t, "example.com.", dns.TypeA, nil)))
	if err != nil {
		t.Fatalf("POST: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading body: %v", err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status = %s (%q), want 200", resp.Status, body)
	}
	return resp, body
}

func TestReloadCertificate(t *testing.T) {
	first, second := mustPKI(t), mustPKI(t)
	dir := t.TempDir()
	_, certFile, keyFile, err := first.WriteFiles(dir)
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{Name: "test", Addr: "127.0.0.1:0", CertFile: certFile, KeyFile: keyFile}, answerHandler(t))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if err := s.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
	addr := s.Addr().String()
	url := "https://" + addr + "/dns-query"
	firstLeaf, secondLeaf := first.Cert.Certificate[0], second.Cert.Certificate[0]

	// An HTTP/2 connection made before the rotation, by a client that
	// trusts only the first CA.
	old := newClient(t, first)
	if resp, _ := postQuery(t, old, url); !bytes.Equal(resp.TLS.PeerCertificates[0].Raw, firstLeaf) {
		t.Fatal("before the rotation: not the first certificate")
	}

	if _, _, _, err := second.WriteFiles(dir); err != nil {
		t.Fatal(err)
	}
	if err := s.ReloadCertificate(); err != nil {
		t.Fatalf("ReloadCertificate: %v", err)
	}
	if !bytes.Equal(servedLeaf(t, addr, second.Pool), secondLeaf) {
		t.Error("after the rotation: new handshakes do not get the second certificate")
	}
	if _, err := handshake(addr, first.Pool, nil); err == nil {
		t.Error("after the rotation: a client trusting only the first CA still completes a new handshake")
	}
	// The old connection carries on with the certificate it was made with;
	// a new one would fail verification.
	if resp, _ := postQuery(t, old, url); !bytes.Equal(resp.TLS.PeerCertificates[0].Raw, firstLeaf) {
		t.Error("the connection made before the rotation changed certificate")
	}

	// Broken files: an error naming the file, and the second certificate
	// stays.
	tests := []struct {
		name     string
		cert     []byte // nil: leave the file alone
		key      []byte
		wantFile string
	}{
		{name: "key file not a key", key: []byte("not a key\n"), wantFile: keyFile},
		{name: "key of another certificate", key: first.KeyPEM, wantFile: keyFile},
		{name: "empty certificate file", cert: []byte{}, key: second.KeyPEM, wantFile: certFile},
		{name: "certificate file holds a key", cert: second.KeyPEM, key: second.KeyPEM, wantFile: certFile},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.cert != nil {
				if err := os.WriteFile(certFile, tt.cert, 0o644); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { os.WriteFile(certFile, second.CertPEM, 0o644) })
			}
			if err := os.WriteFile(keyFile, tt.key, 0o600); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.WriteFile(keyFile, second.KeyPEM, 0o600) })
			err := s.ReloadCertificate()
			if err == nil || !strings.Contains(err.Error(), tt.wantFile) {
				t.Fatalf("ReloadCertificate = %v, want an error naming %s", err, tt.wantFile)
			}
			if !bytes.Equal(servedLeaf(t, addr, second.Pool), secondLeaf) {
				t.Error("a failed reload changed the certificate served")
			}
		})
	}
	t.Run("missing file", func(t *testing.T) {
		moved := filepath.Join(dir, "moved.key")
		if err := os.Rename(keyFile, moved); err != nil {
			t.Fatal(err)
		}
		defer os.Rename(moved, keyFile)
		if err := s.ReloadCertificate(); err == nil || !strings.Contains(err.Error(), keyFile) {
			t.Fatalf("ReloadCertificate = %v, want an error naming %s", err, keyFile)
		}
	})

	// Files repaired: back to the first certificate.
	if _, _, _, err := first.WriteFiles(dir); err != nil {
		t.Fatal(err)
	}
	if err := s.ReloadCertificate(); err != nil {
		t.Fatalf("ReloadCertificate: %v", err)
	}
	if !bytes.Equal(servedLeaf(t, addr, first.Pool), firstLeaf) {
		t.Error("after rotating back: not the first certificate")
	}
}

func TestReloadCertificateFromTLSConfig(t *testing.T) {
	pki := mustPKI(t)
	s, err := New(Config{Name: "test", Addr: "127.0.0.1:0", TLS: &tls.Config{Certificates: []tls.Certificate{pki.Cert}}}, answerHandler(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.ReloadCertificate(); err == nil || !strings.Contains(err.Error(), "Config.TLS") {
		t.Errorf("ReloadCertificate = %v, want an error saying the certificate comes from Config.TLS", err)
	}
}

// TestFIPSNeedsFIPSMode runs in the normal, non-FIPS test process.
func TestFIPSNeedsFIPSMode(t *testing.T) {
	if fips140.Enabled() {
		t.Skip("the test process runs in FIPS 140-3 mode")
	}
	pki := mustPKI(t)
	_, err := New(Config{Name: "fips", Addr: "127.0.0.1:0", FIPS: true, TLS: &tls.Config{Certificates: []tls.Certificate{pki.Cert}}}, answerHandler(t))
	if !errors.Is(err, tlsconf.ErrFIPSModeOff) {
		t.Fatalf("New with FIPS outside FIPS mode = %v, want %v", err, tlsconf.ErrFIPSModeOff)
	}
	for _, want := range []string{`"fips"`, "doh-fips and dot-fips need Go's FIPS 140-3 mode: run with GODEBUG=fips140=on (or only)"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	if got := tlsconf.FIPSStatus(); got != "FIPS 140-3 mode: off" {
		t.Errorf("tlsconf.FIPSStatus() = %q, want %q", got, "FIPS 140-3 mode: off")
	}
}

// The FIPS test runs this test binary again with GODEBUG=fips140=on. The
// child (TestFIPSChild) serves a FIPS listener and checks it with its own,
// FIPS-mode client; the parent, not in FIPS mode, checks that clients
// offering parameters outside the FIPS policy are turned away. (A FIPS-mode
// client would drop those parameters itself and prove nothing about the
// server.)
const (
	fipsChildEnv   = "XDOH_DOH_FIPS_CHILD" // a directory for the child's CA file
	fipsChildReady = "fips-child-ready "   // followed by the listening address
)

func TestFIPSMode(t *testing.T) {
	if fips140.Enabled() {
		t.Skip("the test process runs in FIPS 140-3 mode; the parent's checks need a non-FIPS client")
	}
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestFIPSChild$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), "GODEBUG=fips140=on", fipsChildEnv+"="+dir) // the last GODEBUG wins
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// The child's output, line by line; the address once it is ready.
	var output bytes.Buffer
	ready := make(chan string, 1)
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(&output, line)
			if addr, ok := strings.CutPrefix(line, fipsChildReady); ok {
				ready <- addr
			}
		}
	}()
	finish := func() {
		stdin.Close() // tells the child to stop
		<-copied
		if err := cmd.Wait(); err != nil {
			t.Errorf("FIPS child: %v\nstdout:\n%s\nstderr:\n%s", err, output.Bytes(), stderr.Bytes())
		} else if testing.Verbose() {
			t.Logf("FIPS child:\n%s", output.Bytes())
		}
	}
	var addr string
	select {
	case addr = <-ready:
	case <-copied:
		finish()
		t.Fatal("the FIPS child ended without serving")
	case <-ctx.Done():
		finish()
		t.Fatal("the FIPS child did not get ready in time")
	}
	defer finish()

	caPEM, err := os.ReadFile(filepath.Join(dir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		t.Fatal("child CA: no certificate")
	}

	tls12 := func(suite uint16) *tls.Config {
		return &tls.Config{MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{suite}}
	}
	tls13 := func(curve tls.CurveID) *tls.Config {
		return &tls.Config{MinVersion: tls.VersionTLS13, CurvePreferences: []tls.CurveID{curve}}
	}
	tests := []struct {
		name   string
		conf   *tls.Config
		wantOK bool
	}{
		{name: "TLS 1.2 ECDHE-ECDSA-AES128-GCM-SHA256", conf: tls12(tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256), wantOK: true},
		{name: "TLS 1.2 ECDHE-ECDSA-AES256-GCM-SHA384", conf: tls12(tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384), wantOK: true},
		{name: "TLS 1.2 ECDHE-ECDSA-CHACHA20-POLY1305", conf: tls12(tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305)},
		{name: "TLS 1.2 ECDHE-ECDSA-AES128-CBC-SHA256", conf: tls12(tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256)}, // Go's FIPS policy allows it, we do not
		{name: "TLS 1.2 ECDHE-ECDSA-AES128-CBC-SHA", conf: tls12(tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA)},
		{name: "TLS 1.2 over X25519 only", conf: &tls.Config{MaxVersion: tls.VersionTLS12, CurvePreferences: []tls.CurveID{tls.X25519}}},
		{name: "TLS 1.1", conf: &tls.Config{MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11}},
		{name: "TLS 1.3 P-256", conf: tls13(tls.CurveP256), wantOK: true},
		{name: "TLS 1.3 P-384", conf: tls13(tls.CurveP384), wantOK: true},
		{name: "TLS 1.3 SecP256r1MLKEM768", conf: tls13(tls.SecP256r1MLKEM768), wantOK: true},
		{name: "TLS 1.3 X25519MLKEM768", conf: tls13(tls.X25519MLKEM768), wantOK: true},
		{name: "TLS 1.3 X25519", conf: tls13(tls.X25519)},
		{name: "TLS 1.3 P-521", conf: tls13(tls.CurveP521)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, err := handshake(addr, pool, tt.conf)
			switch {
			case tt.wantOK && err != nil:
				t.Fatalf("handshake: %v", err)
			case !tt.wantOK && err == nil:
				t.Fatalf("handshake succeeded with %s, %s, %s; want it refused",
					tls.VersionName(st.Version), tls.CipherSuiteName(st.CipherSuite), st.CurveID)
			case !tt.wantOK:
				t.Logf("refused: %v", err)
			}
		})
	}

	// A default (non-FIPS) client over HTTP/2 gets an answer carrying the
	// transport the handler saw.
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true}
	defer tr.CloseIdleConnections()
	resp, body := postQuery(t, &http.Client{Transport: tr, Timeout: 10 * time.Second}, "https://"+addr+"/dns-query")
	if got := transportTXT(t, body); got != forwarder.TransportDoHFIPS.String() {
		t.Errorf("transport seen by the handler = %q, want %q", got, forwarder.TransportDoHFIPS)
	}
	t.Logf("default client: %s %s %s over %s", resp.Proto, tls.VersionName(resp.TLS.Version),
		tls.CipherSuiteName(resp.TLS.CipherSuite), resp.TLS.CurveID)
}

// transportHandler answers every query with a TXT record holding the
// transport the request arrived by.
var transportHandler = funcHandler{fn: func(r *forwarder.Request, out []byte) []byte {
	req := new(dns.Msg)
	if err := req.Unpack(r.Msg); err != nil {
		return nil
	}
	resp := new(dns.Msg).SetReply(req)
	resp.Answer = []dns.RR{&dns.TXT{
		Hdr: dns.RR_Header{Name: req.Question[0].Name, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 60},
		Txt: []string{r.Transport.String()},
	}}
	b, err := resp.PackBuffer(out[:cap(out)])
	if err != nil {
		return nil
	}
	return b
}}

func transportTXT(t *testing.T, wire []byte) string {
	t.Helper()
	m := new(dns.Msg)
	if err := m.Unpack(wire); err != nil {
		t.Fatalf("unpacking response: %v", err)
	}
	if len(m.Answer) != 1 {
		t.Fatalf("response has %d answers, want 1:\n%v", len(m.Answer), m)
	}
	txt, ok := m.Answer[0].(*dns.TXT)
	if !ok || len(txt.Txt) != 1 {
		t.Fatalf("answer %v, want one TXT string", m.Answer[0])
	}
	return txt.Txt[0]
}

// TestFIPSChild is the FIPS-mode half of TestFIPSMode; on its own it skips.
func TestFIPSChild(t *testing.T) {
	dir := os.Getenv(fipsChildEnv)
	if dir == "" {
		t.Skip("runs only as TestFIPSMode's child process")
	}
	if !fips140.Enabled() {
		t.Fatal("child started without FIPS 140-3 mode")
	}
	status := tlsconf.FIPSStatus()
	if !strings.HasPrefix(status, "FIPS 140-3 mode: on (GODEBUG=fips140=on") {
		t.Errorf("tlsconf.FIPSStatus() = %q, want it to say on", status)
	}
	t.Log(status)

	pki := mustPKI(t)
	_, certFile, keyFile, err := pki.WriteFiles(dir)
	if err != nil {
		t.Fatal(err)
	}
	s, err := New(Config{Name: "fips", Addr: "127.0.0.1:0", FIPS: true, CertFile: certFile, KeyFile: keyFile}, transportHandler)
	if err != nil {
		t.Fatalf("New with FIPS in FIPS mode: %v", err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	}()
	addr := s.Addr().String()

	// A TLS 1.3 client in this (FIPS-mode) process.
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pki.Pool, MinVersion: tls.VersionTLS13}, ForceAttemptHTTP2: true}
	defer tr.CloseIdleConnections()
	resp, body := postQuery(t, &http.Client{Transport: tr, Timeout: 10 * time.Second}, "https://"+addr+"/dns-query")
	if resp.TLS.Version != tls.VersionTLS13 || resp.ProtoMajor != 2 {
		t.Errorf("got %s over %s, want HTTP/2 over TLS 1.3", resp.Proto, tls.VersionName(resp.TLS.Version))
	}
	if got := transportTXT(t, body); got != forwarder.TransportDoHFIPS.String() {
		t.Errorf("transport seen by the handler = %q, want %q", got, forwarder.TransportDoHFIPS)
	}
	if st := s.Stats(); st.OK != 1 {
		t.Errorf("Stats().OK = %d, want 1", st.OK)
	}
	// A failed reload keeps the certificate; the parent's handshakes below
	// show it is still served.
	if err := os.WriteFile(certFile, []byte("garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := s.ReloadCertificate(); err == nil {
		t.Error("ReloadCertificate of a garbage file succeeded")
	}

	// Serve the parent until it closes stdin.
	fmt.Printf("%s%s\n", fipsChildReady, addr)
	io.Copy(io.Discard, os.Stdin)
	st := s.Stats()
	t.Logf("stats: %+v", st)
	if st.HandshakeErrors == 0 {
		t.Error("no handshake errors counted, though the parent's refused handshakes should be")
	}
}
