package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"xdoh/cmd/xdoh/internal/config"
	"xdoh/datapath/tlsconf"
)

// exampleConfig is deploy/xdoh.example.yaml, relative to this package.
var exampleConfig = filepath.Join("..", "..", "deploy", "xdoh.example.yaml")

// copyExample copies the example config and the files it names (ca.pem,
// zones/) into a new directory and returns the config's path there.
func copyExample(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	deploy := filepath.Dir(exampleConfig)
	for _, name := range []string{"xdoh.example.yaml", "ca.pem", "zones/aws.example.internal.zone"} {
		b, err := os.ReadFile(filepath.Join(deploy, name))
		if err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return filepath.Join(dir, "xdoh.example.yaml")
}

// runCheck runs `xdoh check -c path` and returns its exit code and output.
func runCheck(t *testing.T, path string) (int, string) {
	t.Helper()
	out, err := exec.Command(xdohBin, "check", "-c", path).CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode(), string(out)
	} else if err != nil {
		t.Fatal(err)
	}
	return 0, string(out)
}

// TestExampleConfig: deploy/xdoh.example.yaml sets every top-level key of
// config.Config (each section non-empty), every listener protocol and
// every listener section, and `xdoh check` passes on it once its
// listeners' certificate files exist (and names them while they do not).
func TestExampleConfig(t *testing.T) {
	path := copyExample(t)

	t.Run("without certificates", func(t *testing.T) {
		code, out := runCheck(t, path)
		if code != 2 {
			t.Fatalf("exit %d, want 2 (the cert files do not exist yet)\n%s", code, out)
		}
		for _, field := range []string{"listeners[0].doh.cert", "listeners[0].doh.key", "listeners[0].dot.cert", "listeners[0].doq.key"} {
			if !strings.Contains(out, field) {
				t.Errorf("output lacks %s:\n%s", field, out)
			}
		}
	})

	tlsDir := filepath.Join(filepath.Dir(path), "tls")
	if err := os.Mkdir(tlsDir, 0o755); err != nil {
		t.Fatal(err)
	}
	pki, err := tlsconf.NewPKI("127.0.0.1", "localhost")
	if err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := pki.WriteFiles(tlsDir); err != nil {
		t.Fatal(err)
	}

	t.Run("check passes", func(t *testing.T) {
		code, out := runCheck(t, path)
		if code != 0 || !strings.Contains(out, "OK") {
			t.Fatalf("exit %d, want 0 and OK\n%s", code, out)
		}
	})

	t.Run("every section", func(t *testing.T) {
		raw, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		var top map[string]any
		if err := yaml.Unmarshal(raw, &top); err != nil {
			t.Fatal(err)
		}
		cfg, err := config.Load(path)
		if err != nil {
			t.Fatal(err)
		}
		v := reflect.ValueOf(*cfg)
		for i := range v.NumField() {
			f := v.Type().Field(i)
			key := yamlKey(f)
			if key == "" {
				continue
			}
			if _, ok := top[key]; !ok {
				t.Errorf("the example does not set the top-level key %q", key)
				continue
			}
			switch f.Type.Kind() {
			case reflect.Struct, reflect.Slice, reflect.Pointer, reflect.Map:
				if v.Field(i).IsZero() {
					t.Errorf("the example's %q section is empty", key)
				}
			}
		}

		set := map[string]bool{} // listener keys set by some listener
		for _, l := range top["listeners"].([]any) {
			for k := range l.(map[string]any) {
				set[k] = true
			}
		}
		for f := range reflect.TypeFor[config.Listener]().Fields() {
			if key := yamlKey(f); key != "" && !set[key] {
				t.Errorf("no listener of the example sets listeners[].%s", key)
			}
		}
		protos := map[string]bool{}
		for _, l := range cfg.Listeners {
			for _, p := range l.Protocols {
				protos[p] = true
			}
		}
		for _, p := range []string{"do53", "doh", "dot", "doq"} {
			if !protos[p] {
				t.Errorf("no listener of the example serves %s", p)
			}
		}
	})
}

// yamlKey is a struct field's YAML key: "" for a field that is not a key
// of its own (unexported, "-", or inline).
func yamlKey(f reflect.StructField) string {
	name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
	if !f.IsExported() || name == "-" {
		return ""
	}
	return name
}
