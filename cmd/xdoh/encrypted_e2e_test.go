package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/quic-go/quic-go"

	"xdoh/cmd/xdoh/internal/config"
	"xdoh/datapath/tlsconf"
)

// TestDoTAndDoQListeners: one listener serving do53, dot and doq from the
// binary; kdig +tls and a DoQ client (kdig +quic when it was built with
// QUIC, else quic-go) get answers, and the query log shows DoT and DoQ.
func TestDoTAndDoQListeners(t *testing.T) {
	dir := t.TempDir()
	ca, cert, key := writePKI(t, dir)
	addr, dotAddr, doqAddr := freeAddr(t), freeAddr(t), freeAddr(t)
	qlog := filepath.Join(dir, "query.log")
	zone, err := filepath.Abs(filepath.Join("demo", "aws.example.internal.zone"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "xdoh.yaml")
	text := fmt.Sprintf(`listeners:
  - name: inbound
    protocols: [do53, dot, doq]
    do53: [%q]
    dot: {address: %q, cert: %s, key: %s, max_pipeline: 32}
    doq: {address: %q, cert: %s, key: %s, max_streams: 32}
zones: [{name: aws.example.internal, file: %s}]
querylog: {path: %s}
`, addr, dotAddr, cert, key, doqAddr, cert, key, zone, qlog)
	if err := os.WriteFile(cfg, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	startXdoh(t, addr, "-c", cfg)

	// DoT with kdig.
	if _, err := exec.LookPath("kdig"); err != nil {
		t.Skip("kdig not installed; .ci/run installs it")
	}
	host, port := hostPort(t, dotAddr)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	kout, err := exec.CommandContext(ctx, "kdig", "@"+host, "-p", port, "+tls", "+tls-ca="+ca, "+tls-hostname=localhost",
		"+timeout=5", "+retry=0", "ipv4.aws.example.internal", "A").CombinedOutput()
	if err != nil || !strings.Contains(string(kout), "10.2.1.10") || !strings.Contains(string(kout), ";; TLS session") {
		t.Fatalf("kdig +tls: %v\n%s", err, kout)
	}

	// DoQ with a quic-go client (this kdig may lack QUIC: see datapath/doq).
	pem, err := os.ReadFile(ca)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	qc, err := quic.DialAddr(ctx, doqAddr, &tls.Config{RootCAs: pool, ServerName: "localhost", NextProtos: []string{"doq"}}, nil)
	if err != nil {
		t.Fatalf("DoQ dial: %v", err)
	}
	defer qc.CloseWithError(0, "")
	st, err := qc.OpenStreamSync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	q, _ := new(dns.Msg).SetQuestion("ipv4.aws.example.internal.", dns.TypeA).Pack()
	q[0], q[1] = 0, 0 // RFC 9250: ID 0
	st.Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(q))), q...))
	st.Close()
	st.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(st)
	if err != nil || len(b) < 2 {
		t.Fatalf("DoQ answer: %v (%d octets)", err, len(b))
	}
	m := new(dns.Msg)
	if err := m.Unpack(b[2:]); err != nil || len(m.Answer) != 1 || !strings.Contains(m.Answer[0].String(), "10.2.1.10") {
		t.Fatalf("DoQ answer %v: %v", m, err)
	}

	// The query log says how each query came.
	for end := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		log, _ := os.ReadFile(qlog)
		if strings.Contains(string(log), `"transport":"DoT"`) && strings.Contains(string(log), `"transport":"DoQ"`) {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("query log lacks DoT or DoQ:\n%s", log)
		}
	}
}

// TestDoTAndDoQCertificateReload: a reload with the same settings reads
// the certificate files again; new DoT and DoQ handshakes get the new
// certificate, and the servers are not rebuilt.
func TestDoTAndDoQCertificateReload(t *testing.T) {
	dir := t.TempDir()
	_, cert, key := writePKI(t, dir)
	dotAddr, doqAddr := freeAddr(t), freeAddr(t)
	text := fmt.Sprintf(`listeners:
  - {name: edge, protocols: [dot, doq], dot: {address: %q, cert: %s, key: %s}, doq: {address: %q, cert: %s, key: %s}}
default: {targets: ["127.0.0.1:9"]}
`, dotAddr, cert, key, doqAddr, cert, key)
	load := func() (*config.Config, error) { return config.Parse([]byte(text), dir) }
	cfg, err := load()
	if err != nil {
		t.Fatal(err)
	}
	a := newApp(slog.New(slog.DiscardHandler), load)
	if err := a.start(cfg); err != nil {
		t.Fatal(err)
	}
	defer a.stop()
	before := a.listeners["edge"].dot
	second, err := tlsconf.NewPKI("127.0.0.1", "localhost")
	if err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := second.WriteFiles(dir); err != nil {
		t.Fatal(err)
	}
	if err := a.reload(); err != nil {
		t.Fatal(err)
	}
	if a.listeners["edge"].dot != before {
		t.Error("the DoT server was rebuilt for a certificate reload")
	}
	conf := &tls.Config{RootCAs: second.Pool, ServerName: "localhost", NextProtos: []string{"dot"}}
	c, err := tls.Dial("tcp", dotAddr, conf)
	if err != nil {
		t.Fatalf("DoT handshake trusting only the new CA: %v", err)
	}
	c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conf = &tls.Config{RootCAs: second.Pool, ServerName: "localhost", NextProtos: []string{"doq"}}
	qc, err := quic.DialAddr(ctx, doqAddr, conf, nil)
	if err != nil {
		t.Fatalf("DoQ handshake trusting only the new CA: %v", err)
	}
	qc.CloseWithError(0, "")
}
