package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"xdoh/forwarder/upstream/upstreamtest"
)

// kdigCookie is kdig's line for a client cookie and an RFC 9018 server
// cookie (version 1, three reserved octets, timestamp, hash).
var kdigCookie = regexp.MustCompile(`;; COOKIE: [0-9A-F]{16}01000000[0-9A-F]{24}\n`)

// TestCookiesAndNSIDRealClients: the xdoh binary, configured with an NSID
// and with server cookies required, answers dig and kdig over UDP, TCP and
// (kdig) DoH: each client sends a cookie, gets BADCOOKIE over UDP the first
// time, retries with the server cookie as RFC 7873 has it, and gets the
// answer, the NSID and a cookie it reports as good.
func TestCookiesAndNSIDRealClients(t *testing.T) {
	bind := upstreamtest.StartBIND(t, upstreamtest.BINDOptions{})
	dir := t.TempDir()
	pkiCA, cert, key := writePKI(t, dir)
	addr, dohAddr := freeAddr(t), freeAddr(t)
	cfg := filepath.Join(dir, "xdoh.yaml")
	text := fmt.Sprintf(`nsid: edge-7
cookies: {secret: 00112233445566778899aabbccddeeff, require: true}
listeners:
  - name: inbound
    protocols: [do53, doh]
    do53: [%q]
    doh: {address: %q, path: /dns-query, cert: %s, key: %s}
rules:
  - {name: onprem, domain: example.com, type: forward, targets: [%q], ca_file: %s}
`, addr, dohAddr, cert, key, bind.DoHURL, bind.CAFile)
	if err := os.WriteFile(cfg, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	startXdoh(t, addr, "-c", cfg)
	host, port := hostPort(t, addr)
	_, dohPort := hostPort(t, dohAddr)
	runs := []struct {
		tool string
		args []string
	}{
		{"dig", []string{"+notcp", "+cookie", "+nsid"}},
		{"dig", []string{"+tcp", "+cookie", "+nsid"}},
		{"kdig", []string{"+notcp", "+cookie", "+badcookie", "+nsid"}},
		{"kdig", []string{"+tcp", "+cookie", "+badcookie", "+nsid"}},
		{"kdig", []string{"+https=/dns-query", "+tls-ca=" + pkiCA, "+tls-hostname=localhost", "+cookie", "+nsid", "-p", dohPort}},
	}
	for _, r := range runs {
		if _, err := exec.LookPath(r.tool); err != nil {
			t.Logf("%s not installed; .ci/run installs it", r.tool)
			continue
		}
		args := append([]string{"@" + host, "-p", port}, r.args...)
		args = append(args, "foo.example.com", "A")
		out, err := exec.Command(r.tool, args...).CombinedOutput()
		s := string(out)
		if err != nil {
			t.Fatalf("%s %v: %v\n%s", r.tool, r.args, err, s)
		}
		name := r.tool + " " + strings.Join(r.args, " ")
		if !strings.Contains(s, "172.16.0.10") || !strings.Contains(s, "NOERROR") {
			t.Errorf("%s: no answer\n%s", name, s)
		}
		if !strings.Contains(s, `"edge-7"`) {
			t.Errorf("%s: no NSID edge-7\n%s", name, s)
		}
		// dig judges the cookie itself ("(good)": it echoes dig's client
		// cookie); kdig prints it: client and RFC 9018 server cookie.
		if r.tool == "dig" && !strings.Contains(s, "(good)") || r.tool == "kdig" && !kdigCookie.MatchString(s) {
			t.Errorf("%s: no good server cookie\n%s", name, s)
		}
		udp := !strings.Contains(name, "+tcp") && !strings.Contains(name, "+https")
		if udp && !strings.Contains(strings.ToLower(s), "badcookie") {
			t.Errorf("%s: no BADCOOKIE first over UDP (cookies.require)\n%s", name, s)
		}
	}
}
