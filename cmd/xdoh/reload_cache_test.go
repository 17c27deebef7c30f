package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"xdoh/forwarder/upstream/upstreamtest"
)

// TestReloadKeepsCache: a reload keeps the cached answers whose rule or
// zone did not change. BIND's query log counts what reached the upstream:
// an unchanged reload sends nothing new; a changed forward rule re-asks
// only the names under it; a changed zone answers its new data at once
// while the forwarded names stay cached; a change of the cache settings
// starts an empty cache (documented).
func TestReloadKeepsCache(t *testing.T) {
	zone := func(origin string) string {
		return fmt.Sprintf("$TTL 300\n@ IN SOA ns.%[1]s hostmaster.%[1]s 1 3600 600 86400 300\n@ IN NS ns.%[1]s\nns IN A 127.0.0.1\na1 IN A 192.0.2.1\na2 IN A 192.0.2.2\n", origin)
	}
	bind := upstreamtest.StartBIND(t, upstreamtest.BINDOptions{QueryLog: true, Zones: map[string]string{
		"corp.example.": zone("corp.example."), "other.example.": zone("other.example."),
	}})
	dir := t.TempDir()
	addr := freeAddr(t)
	sock := filepath.Join(dir, "x.sock")
	cfgPath := filepath.Join(dir, "x.yaml")
	write := func(corpTarget string, localAddr string, entries int) {
		t.Helper()
		z := "$ORIGIN local.example.\n$TTL 300\n@ IN SOA ns hostmaster 1 7200 900 1209600 300\n@ IN NS ns\nns IN A 10.0.0.53\nwww IN A " + localAddr + "\n"
		if err := os.WriteFile(filepath.Join(dir, "local.zone"), []byte(z), 0o644); err != nil {
			t.Fatal(err)
		}
		text := fmt.Sprintf(`listeners: [{name: in, do53: [%q]}]
zones: [{name: local.example, file: local.zone}]
rules:
  - {name: corp, domain: corp.example, type: forward, targets: [%q], ca_file: %s}
default: {targets: [%q], ca_file: %s}
cache: {entries: %d}
control: {socket: %s}
`, addr, corpTarget, bind.CAFile, bind.DoHURL, bind.CAFile, entries, sock)
		if err := os.WriteFile(cfgPath, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	reload := func() {
		t.Helper()
		if out, err := exec.Command(xdohBin, "reload", "-s", sock).CombinedOutput(); err != nil {
			t.Fatalf("reload: %v\n%s", err, out)
		}
	}
	forwarded := []string{"a1.corp.example.", "a2.corp.example.", "a1.other.example.", "a2.other.example."}
	ask := func(name string) string {
		t.Helper()
		m := new(dns.Msg).SetQuestion(name, dns.TypeA)
		r, _, err := (&dns.Client{Timeout: 3 * time.Second}).Exchange(m, addr)
		if err != nil || r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
			t.Fatalf("%s: %v %v", name, err, r)
		}
		return r.Answer[0].(*dns.A).A.String()
	}
	askAll := func() {
		for _, n := range forwarded {
			ask(n)
		}
	}
	// counts waits until BIND has logged at least want[name] A queries for
	// each name, then returns every forwarded name's count.
	counts := func(want map[string]int) map[string]int {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			got := map[string]int{}
			for _, e := range bind.QueryLog(t) {
				if e.Type == "A" {
					got[strings.ToLower(e.Name)+"."]++
				}
			}
			ok := true
			for n, w := range want {
				ok = ok && got[n] >= w
			}
			if ok {
				return got
			}
			if time.Now().After(deadline) {
				t.Fatalf("BIND logged %v, want at least %v", got, want)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	expect := func(step string, want map[string]int) {
		t.Helper()
		got := counts(want)
		for _, n := range forwarded {
			if got[n] != want[n] {
				t.Errorf("%s: BIND saw %d queries for %s, want %d", step, got[n], n, want[n])
			}
		}
	}

	write(bind.DoHURL, "10.0.0.1", 1000)
	startXdoh(t, addr, "-c", cfgPath)
	askAll()
	askAll()
	if got := ask("www.local.example."); got != "10.0.0.1" {
		t.Fatalf("local zone: %s", got)
	}
	want := map[string]int{"a1.corp.example.": 1, "a2.corp.example.": 1, "a1.other.example.": 1, "a2.other.example.": 1}
	expect("warm-up", want)

	// The same config: every answer stays cached.
	for range 3 {
		reload()
	}
	askAll()
	expect("unchanged reloads", want)

	// The corp rule reaches BIND over Do53 instead of DoH: its names are
	// asked again, the default's are not.
	write(bind.Do53Addr, "10.0.0.1", 1000)
	reload()
	askAll()
	want["a1.corp.example."], want["a2.corp.example."] = 2, 2
	expect("corp rule changed", want)

	// The zone changes: its new address answers at once (a kept local
	// answer would be the old one); the forwarded names stay cached.
	write(bind.Do53Addr, "10.0.0.2", 1000)
	reload()
	if got := ask("www.local.example."); got != "10.0.0.2" {
		t.Errorf("after the zone changed: www.local.example. is %s, want 10.0.0.2", got)
	}
	askAll()
	expect("zone changed", want)

	// Other cache settings: a new, empty cache.
	write(bind.Do53Addr, "10.0.0.2", 2000)
	reload()
	askAll()
	for _, n := range forwarded {
		want[n]++
	}
	expect("cache settings changed", want)
}
