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

// TestXdohToXdohOverDoTAndDoQ: one xdoh forwards to another over DoQ (one
// rule) and DoT (the default), certificates checked against the second
// one's CA; its query log shows each query arriving over the transport its
// rule names, and the first one's clients get the answers over Do53.
func TestXdohToXdohOverDoTAndDoQ(t *testing.T) {
	dir := t.TempDir()
	ca, cert, key := writePKI(t, dir)
	backAddr, dotAddr, doqAddr, frontAddr := freeAddr(t), freeAddr(t), freeAddr(t), freeAddr(t)
	qlog := filepath.Join(dir, "back.log")
	zone, err := filepath.Abs(filepath.Join("demo", "aws.example.internal.zone"))
	if err != nil {
		t.Fatal(err)
	}
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	back := write("back.yaml", fmt.Sprintf(`listeners:
  - name: back
    protocols: [do53, dot, doq]
    do53: [%q]
    dot: {address: %q, cert: %s, key: %s}
    doq: {address: %q, cert: %s, key: %s}
zones: [{name: aws.example.internal, file: %s}]
querylog: {path: %s}
`, backAddr, dotAddr, cert, key, doqAddr, cert, key, zone, qlog))
	front := write("front.yaml", fmt.Sprintf(`listeners:
  - {name: front, protocols: [do53], do53: [%q]}
rules:
  - {name: over-doq, domain: ipv6.aws.example.internal, type: forward, targets: ["quic://%s"], ca_file: %s, tls_server_name: localhost}
default: {targets: ["tls://%s"], ca_file: %s, tls_server_name: localhost}
cache: {enabled: false}
`, frontAddr, doqAddr, ca, dotAddr, ca))
	startXdoh(t, backAddr, "-c", back)
	startXdoh(t, frontAddr, "-c", front)
	for _, q := range []struct {
		name  string
		qtype uint16
		want  string
	}{
		{"ipv6.aws.example.internal.", dns.TypeAAAA, "fd00:2::10"}, // DoQ
		{"ipv4.aws.example.internal.", dns.TypeA, "10.2.1.10"},     // DoT
		{"www.aws.example.internal.", dns.TypeA, "10.2.1.10"},      // DoT, CNAME
	} {
		for _, net := range []string{"udp", "tcp"} {
			r, _, err := (&dns.Client{Net: net, Timeout: 5 * time.Second}).Exchange(new(dns.Msg).SetQuestion(q.name, q.qtype), frontAddr)
			if err != nil || r.Rcode != dns.RcodeSuccess || len(r.Answer) == 0 || !strings.Contains(r.Answer[len(r.Answer)-1].String(), q.want) {
				t.Fatalf("%s %s over %s through the front xdoh: %v %v", q.name, dns.TypeToString[q.qtype], net, r, err)
			}
		}
	}
	want := map[string]string{"ipv6.aws.example.internal": "DoQ", "ipv4.aws.example.internal": "DoT", "www.aws.example.internal": "DoT"}
	for end := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		log, _ := os.ReadFile(qlog)
		ok := true
		for name, tr := range want {
			found := false
			for _, line := range strings.Split(string(log), "\n") {
				if strings.Contains(line, `"`+name) && strings.Contains(line, `"transport":"`+tr+`"`) {
					found = true
				}
			}
			ok = ok && found
		}
		if ok {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("the back xdoh's query log does not show %v:\n%s", want, log)
		}
	}
}
