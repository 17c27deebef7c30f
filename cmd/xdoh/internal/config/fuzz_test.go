package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzParse: any bytes as a config file are accepted or refused with an
// error, never a panic; the same bytes always get the same verdict; a
// refusal after the YAML decoded names where (a field path, or the YAML
// decoder's line); and an accepted config can be reloaded over itself
// (CheckMigration allows a config to follow itself).
func FuzzParse(f *testing.F) {
	dir := f.TempDir()
	for _, name := range []string{"cert.pem", "key.pem", "ca.pem", "example.zone"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("x"), 0o600); err != nil {
			f.Fatal(err)
		}
	}
	f.Add([]byte(strings.ReplaceAll(fullConfig, "KEYFILE", "key.pem")))
	f.Add([]byte(base))
	f.Add([]byte("listeners:\n  - name: a\n    do53: [\"127.0.0.1:5300\"]\ncookies: {secret: 000102030405060708090a0b0c0d0e0f, rotate: 0s, require: true}\nnsid: edge-1\n"))
	f.Add([]byte("listeners:\n  - name: x\n    protocols: [doq, dot]\n    dot: {address: 127.0.0.1, cert: cert.pem, key: key.pem}\n    doq: {address: 127.0.0.1:8853, cert: cert.pem, key: key.pem}\n"))
	f.Add([]byte("rules:\n  - {name: r, domain: example.com, type: forward, targets: [\"quic://127.0.0.1:853\"], ecs: add, ecs_prefix: {ipv4: 24, ipv6: 56}}\n"))
	f.Add([]byte("a: &a [*a]\n"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := Parse(b, dir)
		_, again := Parse(b, dir)
		if (err == nil) != (again == nil) || err != nil && err.Error() != again.Error() {
			t.Fatalf("two verdicts on the same bytes: %v / %v", err, again)
		}
		if err != nil {
			if msg := err.Error(); msg == "" {
				t.Fatal("an empty error")
			} else if !strings.Contains(msg, ":") && !strings.Contains(msg, "no listeners") {
				t.Fatalf("error %q says nowhere what is wrong", msg)
			}
			return
		}
		if err := CheckMigration(c, c); err != nil {
			t.Fatalf("an accepted config cannot follow itself: %v", err)
		}
	})
}
