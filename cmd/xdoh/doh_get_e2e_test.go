package main

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"xdoh/bench"
)

// TestDoHGetToXdoh: xdoh's own DoH listener answers xdoh's upstream DoH
// client sending GET, both from a forward rule with `method: get` (a
// client's Do53 query through one xdoh to the other's local zone, no
// cache, so that every query crosses) and from `xdoh bench --get`.
func TestDoHGetToXdoh(t *testing.T) {
	dir := t.TempDir()
	ca, cert, key := writePKI(t, dir)
	zone, err := filepath.Abs(filepath.Join("demo", "aws.example.internal.zone"))
	if err != nil {
		t.Fatal(err)
	}
	// The server: a local zone over Do53 and DoH.
	srvAddr, dohAddr := freeAddr(t), freeAddr(t)
	srvCfg := filepath.Join(dir, "server.yaml")
	if err := os.WriteFile(srvCfg, fmt.Appendf(nil, `listeners:
  - name: inbound
    protocols: [do53, doh]
    do53: [%q]
    doh: {address: %q, path: /dns-query, cert: %s, key: %s}
zones: [{name: aws.example.internal, file: %s}]
`, srvAddr, dohAddr, cert, key, zone), 0o644); err != nil {
		t.Fatal(err)
	}
	startXdoh(t, srvAddr, "-c", srvCfg)
	url := "https://" + dohAddr + "/dns-query"

	// The forwarder: the zone's names by DoH GET to the server.
	fwdAddr := freeAddr(t)
	fwdCfg := filepath.Join(dir, "forwarder.yaml")
	if err := os.WriteFile(fwdCfg, fmt.Appendf(nil, `listeners:
  - name: inbound
    do53: [%q]
rules:
  - {name: server, domain: aws.example.internal, type: forward, targets: [%q], ca_file: %s, method: get}
cache: {enabled: false}
`, fwdAddr, url, ca), 0o644); err != nil {
		t.Fatal(err)
	}
	startXdoh(t, fwdAddr, "-c", fwdCfg)
	c := &dns.Client{Timeout: 5 * time.Second}
	for i := range 20 {
		q := new(dns.Msg).SetQuestion("ipv4.aws.example.internal.", dns.TypeA)
		q.Id = uint16(0x7000 + i)
		r, _, err := c.Exchange(q, fwdAddr)
		if err != nil {
			t.Fatalf("query %d through the forwarder: %v", i, err)
		}
		if r.Id != q.Id || r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 || !r.Answer[0].(*dns.A).A.Equal(net.IPv4(10, 2, 1, 10)) {
			t.Fatalf("query %d through the forwarder (GET upstream): %v", i, r)
		}
	}

	// xdoh bench --get, closed loop, bounded by count.
	q := writeFile(t, "q.txt", "ipv4.aws.example.internal A\nipv6.aws.example.internal AAAA\n")
	js := filepath.Join(dir, "get.json")
	out, err, _ := runBench(t, "-d", q, "--get", "--ca-file", ca, "-c", "2", "-q", "20", "-n", "2000", "--json", js, url)
	if err != nil || !strings.Contains(out, "Queries sent:         2000") {
		t.Fatalf("xdoh bench --get: %v\n%s", err, out)
	}
	data, err := os.ReadFile(js)
	if err != nil {
		t.Fatal(err)
	}
	var rep bench.Report
	if err := json.Unmarshal(data, &rep); err != nil {
		t.Fatal(err)
	}
	if rep.Transport != "https-get" || rep.Answered != 2000 || rep.Rcodes["NOERROR"] != 2000 {
		t.Errorf("xdoh bench --get: transport %q, %d answered, rcodes %v; want https-get, 2000 NOERROR", rep.Transport, rep.Answered, rep.Rcodes)
	}
}
