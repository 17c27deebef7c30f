package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"xdoh/bench"
	"xdoh/forwarder/upstream/upstreamtest"
)

// TestReloadUnderLoad: `xdoh bench` sends 3000 q/s for 10 s (open loop)
// of forwarded names (BIND over DoH behind them), local-zone names and a
// local NXDOMAIN, while xdoh gets 20 SIGHUPs spread over the run, every
// other one with a changed zone. Every query is answered (none lost, none
// SERVFAIL), and the forwarded answers stay cached across all 20 reloads:
// BIND sees each forwarded name once.
func TestReloadUnderLoad(t *testing.T) {
	const reloads = 20
	var corp strings.Builder
	corp.WriteString("$TTL 300\n@ IN SOA ns hostmaster 1 3600 600 86400 300\n@ IN NS ns\nns IN A 127.0.0.1\n")
	var queries strings.Builder
	for i := range 20 {
		fmt.Fprintf(&corp, "n%d IN A 192.0.2.%d\n", i, i+1)
		fmt.Fprintf(&queries, "n%d.corp.example A\n", i)
	}
	for i := range 5 {
		fmt.Fprintf(&queries, "h%d.local.example A\n", i)
	}
	queries.WriteString("nx.local.example A\n")
	bind := upstreamtest.StartBIND(t, upstreamtest.BINDOptions{QueryLog: true, Zones: map[string]string{"corp.example.": corp.String()}})

	dir := t.TempDir()
	addr := freeAddr(t)
	writeZone := func(v int) {
		t.Helper()
		var z strings.Builder
		fmt.Fprintf(&z, "$ORIGIN local.example.\n$TTL 300\n@ IN SOA ns hostmaster %d 7200 900 1209600 300\n@ IN NS ns\nns IN A 10.0.0.53\nv%d IN A 10.9.9.9\n", v, v)
		for i := range 5 {
			fmt.Fprintf(&z, "h%d IN A 10.0.1.%d\n", i, i+1)
		}
		if err := os.WriteFile(filepath.Join(dir, "local.zone"), []byte(z.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	writeZone(0)
	cfgPath := filepath.Join(dir, "x.yaml")
	text := fmt.Sprintf(`listeners: [{name: in, do53: [%q]}]
zones: [{name: local.example, file: local.zone}]
rules:
  - {name: corp, domain: corp.example, type: forward, targets: [%q], ca_file: %s}
`, addr, bind.DoHURL, bind.CAFile)
	if err := os.WriteFile(cfgPath, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	stderr := startXdoh(t, addr, "-c", cfgPath)
	pid, err := strconv.Atoi(xdohPID(t, stderr))
	if err != nil {
		t.Fatal(err)
	}

	q := writeFile(t, "q.txt", queries.String())
	js := filepath.Join(t.TempDir(), "run.json")
	const seconds = 10
	done := make(chan struct{})
	go func() {
		defer close(done)
		// 20 SIGHUPs from the 0.5th second to the 9.5th, every other one
		// with a new zone serial and record.
		time.Sleep(500 * time.Millisecond)
		for i := 1; i <= reloads; i++ {
			if i%2 == 0 {
				writeZone(i)
			}
			if err := syscall.Kill(pid, syscall.SIGHUP); err != nil {
				t.Error(err)
				return
			}
			time.Sleep(seconds * time.Second / (reloads + 2))
		}
	}()
	out, err, _ := runBench(t, "-d", q, "-Q", "3000", "-l", strconv.Itoa(seconds), "-c", "4", "--json", js, addr)
	<-done
	if err != nil {
		t.Fatalf("bench: %v\n%s", err, out)
	}
	data, err := os.ReadFile(js)
	if err != nil {
		t.Fatal(err)
	}
	var rep bench.Report
	if err := json.Unmarshal(data, &rep); err != nil {
		t.Fatal(err)
	}
	// Every SIGHUP was applied (reloads are serial; the last may still run).
	for deadline := time.Now().Add(10 * time.Second); strings.Count(stderr.String(), "msg=reloaded") < reloads; {
		if time.Now().After(deadline) {
			t.Fatalf("%d reloads logged, want %d\n%s", strings.Count(stderr.String(), "msg=reloaded"), reloads, stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	lost := int64(rep.Sent) - int64(rep.Answered)
	t.Logf("20 SIGHUPs under load: sent %d, answered %d, lost %d, timeouts %d, errors %d, unsent %d, rcodes %v, %.0f q/s",
		rep.Sent, rep.Answered, lost, rep.Timeouts, rep.Errors, rep.Unsent, rep.Rcodes, rep.QPS)
	if rep.Sent < 1000 || lost != 0 || rep.Timeouts != 0 || rep.Errors != 0 || rep.Rcodes["SERVFAIL"] != 0 {
		t.Errorf("queries lost across reloads: sent %d, answered %d, timeouts %d, errors %d, rcodes %v (first error %q)",
			rep.Sent, rep.Answered, rep.Timeouts, rep.Errors, rep.Rcodes, rep.FirstError)
	}
	if rep.Rcodes["NXDOMAIN"] == 0 || rep.Rcodes["NOERROR"] == 0 {
		t.Errorf("rcodes %v: want local NXDOMAINs and NOERRORs", rep.Rcodes)
	}
	// The cache stayed: each forwarded name reached BIND once.
	per := map[string]int{}
	for _, e := range bind.QueryLog(t) {
		if strings.HasSuffix(strings.ToLower(e.Name), ".corp.example") {
			per[strings.ToLower(e.Name)]++
		}
	}
	for i := range 20 {
		if n := per[fmt.Sprintf("n%d.corp.example", i)]; n != 1 {
			t.Errorf("BIND saw n%d.corp.example %d times over %d reloads, want once (cached throughout)", i, n, reloads)
		}
	}
}
