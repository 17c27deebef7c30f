package config

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// referenceDoc is the configuration reference, relative to this package.
var referenceDoc = filepath.Join("..", "..", "..", "..", "docs", "configuration.md")

// configKey is one key of the YAML config: its full path
// ("listeners[].tcp.idle_timeout") and the type a reader writes there.
type configKey struct {
	path, typ string
}

// configKeys lists every key under t (a struct type) by its yaml tags:
// inline structs add their keys to the parent's, a pointer is its element,
// a slice of structs adds "[]" to its path, a map of structs ".*", and a
// struct or a list or map of them adds its own keys after its row. An
// untagged exported field has yaml's default name, the lowercased field
// name; "-" and unexported fields are not keys.
func configKeys(t reflect.Type, prefix string) []configKey {
	var keys []configKey
	for f := range t.Fields() {
		if !f.IsExported() {
			continue
		}
		name, opts, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "-" {
			continue
		}
		ft := deref(f.Type)
		if slices.Contains(strings.Split(opts, ","), "inline") {
			keys = append(keys, configKeys(ft, prefix)...)
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		path := prefix + name
		keys = append(keys, configKey{path, typeName(ft)})
		switch {
		case ft.Kind() == reflect.Struct:
			keys = append(keys, configKeys(ft, path+".")...)
		case ft.Kind() == reflect.Slice && deref(ft.Elem()).Kind() == reflect.Struct:
			keys = append(keys, configKeys(deref(ft.Elem()), path+"[].")...)
		case ft.Kind() == reflect.Map && deref(ft.Elem()).Kind() == reflect.Struct:
			keys = append(keys, configKeys(deref(ft.Elem()), path+".*.")...)
		}
	}
	return keys
}

func deref(t reflect.Type) reflect.Type {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	return t
}

var durationType = reflect.TypeFor[Duration]()

// typeName is how the reference names a Go type in its type column.
func typeName(t reflect.Type) string {
	t = deref(t)
	switch {
	case t == durationType:
		return "duration"
	case t.Kind() == reflect.Slice:
		return "list of " + plural(typeName(t.Elem()))
	case t.Kind() == reflect.Map:
		return "map of " + plural(typeName(t.Elem()))
	}
	switch t.Kind() {
	case reflect.Struct:
		return "mapping"
	case reflect.String:
		return "string"
	case reflect.Bool:
		return "bool"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "integer"
	case reflect.Float32, reflect.Float64:
		return "number"
	}
	return t.Kind().String()
}

func plural(s string) string {
	if strings.HasSuffix(s, "s") {
		return s
	}
	return s + "s"
}

// referenceRow matches a row of a key table: | `path` | type | ...
var referenceRow = regexp.MustCompile("^\\|\\s*`([^`]+)`\\s*\\|\\s*([^|]+?)\\s*\\|")

// documentedKeys reads the rows of the key tables in a reference: tables
// whose header's first cell is "key". Each row must be a key and a type.
func documentedKeys(text string) (keys []configKey, problems []string) {
	inTable := false
	for i, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		switch {
		case !strings.HasPrefix(line, "|"):
			inTable = false
		case !inTable:
			cells := strings.Split(line, "|")
			inTable = len(cells) > 2 && strings.TrimSpace(cells[1]) == "key"
		case strings.HasPrefix(line, "|--") || strings.HasPrefix(line, "| --") || strings.HasPrefix(line, "|:-"):
		default:
			m := referenceRow.FindStringSubmatch(line)
			if m == nil {
				problems = append(problems, fmt.Sprintf("line %d: a key table row must start | `full.key.path` | type |, not %q", i+1, line))
				continue
			}
			keys = append(keys, configKey{m[1], m[2]})
		}
	}
	return keys, problems
}

// compareKeys reports what doc (the documented keys) lacks, has in excess
// or types differently from want (the struct's keys), one line each.
func compareKeys(want, doc []configKey) []string {
	var problems []string
	wantType := map[string]string{}
	for _, k := range want {
		wantType[k.path] = k.typ
	}
	docType := map[string]string{}
	for _, k := range doc {
		if _, dup := docType[k.path]; dup {
			problems = append(problems, fmt.Sprintf("`%s` is documented twice", k.path))
		}
		docType[k.path] = k.typ
		switch typ, ok := wantType[k.path]; {
		case !ok:
			problems = append(problems, fmt.Sprintf("`%s` is documented but the config has no such key: remove its row", k.path))
		case typ != k.typ:
			problems = append(problems, fmt.Sprintf("`%s` is documented as %q but is %q", k.path, k.typ, typ))
		}
	}
	for _, k := range want {
		if _, ok := docType[k.path]; !ok {
			problems = append(problems, fmt.Sprintf("`%s` (%s) is missing: add a row | `%s` | %s | default | meaning |", k.path, k.typ, k.path, k.typ))
		}
	}
	return problems
}

// TestReferenceMatchesConfig: docs/configuration.md documents exactly the
// keys config.Config decodes, with their types, so that neither can drift
// from the other.
func TestReferenceMatchesConfig(t *testing.T) {
	b, err := os.ReadFile(referenceDoc)
	if err != nil {
		t.Fatal(err)
	}
	doc, problems := documentedKeys(string(b))
	problems = append(problems, compareKeys(configKeys(reflect.TypeFor[Config](), ""), doc)...)
	if len(problems) > 0 {
		t.Errorf("%s does not match config.Config:\n%s", referenceDoc, strings.Join(problems, "\n"))
	}
}

// TestConfigKeysWalker checks the walker itself on a struct with every
// shape it handles, and the comparison on small documents.
func TestConfigKeysWalker(t *testing.T) {
	type leaf struct {
		N int `yaml:"n"`
	}
	type shared struct {
		S string `yaml:"s"`
	}
	type top struct {
		A      string           `yaml:"a"`
		P      *leaf            `yaml:"p"`
		L      []leaf           `yaml:"l"`
		LP     []*leaf          `yaml:"lp"`
		M      map[string]leaf  `yaml:"m"`
		MS     map[string]int   `yaml:"ms"`
		In     shared           `yaml:",inline"`
		D      *Duration        `yaml:"d"`
		F      float64          `yaml:"f"`
		B      *bool            `yaml:"b"`
		Strs   []string         `yaml:"strs"`
		Plain  int              // yaml's default name: "plain"
		Hidden int              `yaml:"-"`
		priv   int              // not a key
		Nested struct{ X leaf } `yaml:"nested"`
	}
	_ = top{}.priv
	got := configKeys(reflect.TypeFor[top](), "")
	want := []configKey{
		{"a", "string"}, {"p", "mapping"}, {"p.n", "integer"},
		{"l", "list of mappings"}, {"l[].n", "integer"},
		{"lp", "list of mappings"}, {"lp[].n", "integer"},
		{"m", "map of mappings"}, {"m.*.n", "integer"},
		{"ms", "map of integers"},
		{"s", "string"}, {"d", "duration"}, {"f", "number"}, {"b", "bool"},
		{"strs", "list of strings"}, {"plain", "integer"},
		{"nested", "mapping"}, {"nested.x", "mapping"}, {"nested.x.n", "integer"},
	}
	if !slices.Equal(got, want) {
		t.Fatalf("configKeys:\n got %v\nwant %v", got, want)
	}

	tests := []struct {
		name, doc string
		problems  []string // substrings, one per problem, in order
	}{
		{"exact", "| key | type | default | meaning |\n|---|---|---|---|\n| `a` | string | — | x |\n| `p` | mapping | — | x |\n| `p.n` | integer | 0 | x |\n", nil},
		{"missing", "| key | type |\n|---|---|\n| `a` | string |\n| `p` | mapping |\n", []string{"`p.n` (integer) is missing"}},
		{"extra", "| key | type |\n|---|---|\n| `a` | string |\n| `p` | mapping |\n| `p.n` | integer |\n| `p.m` | integer |\n", []string{"`p.m` is documented but the config has no such key"}},
		{"wrong type", "| key | type |\n|---|---|\n| `a` | integer |\n| `p` | mapping |\n| `p.n` | integer |\n", []string{"`a` is documented as \"integer\" but is \"string\""}},
		{"twice", "| key | type |\n|---|---|\n| `a` | string |\n| `a` | string |\n| `p` | mapping |\n| `p.n` | integer |\n", []string{"`a` is documented twice"}},
		{"malformed row", "| key | type |\n|---|---|\n| a | string |\n| `p` | mapping |\n| `p.n` | integer |\n", []string{"line 3: a key table row", "`a` (string) is missing"}},
		{"other tables ignored", "| limit | value |\n|---|---|\n| `zzz` | 1 |\n\n| key | type |\n|---|---|\n| `a` | string |\n| `p` | mapping |\n| `p.n` | integer |\n", nil},
	}
	type small struct {
		A string `yaml:"a"`
		P leaf   `yaml:"p"`
	}
	keys := configKeys(reflect.TypeFor[small](), "")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			doc, problems := documentedKeys(tt.doc)
			problems = append(problems, compareKeys(keys, doc)...)
			if len(problems) != len(tt.problems) {
				t.Fatalf("problems %q, want %d like %q", problems, len(tt.problems), tt.problems)
			}
			for i, p := range tt.problems {
				if !strings.Contains(problems[i], p) {
					t.Errorf("problem %d = %q, want it to contain %q", i, problems[i], p)
				}
			}
		})
	}
}

// yamlBlock matches a fenced yaml block in Markdown, its indentation
// (a block inside a list item) and its body.
var yamlBlock = regexp.MustCompile("(?ms)^([ \t]*)```yaml\n(.*?)^[ \t]*```")

// TestDocsYAMLDecodes: every yaml block in the README and docs/ decodes
// strictly as a config, so that no page shows a key xdoh does not have.
func TestDocsYAMLDecodes(t *testing.T) {
	root := filepath.Join("..", "..", "..", "..")
	pages, err := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	pages = append(pages, filepath.Join(root, "README.md"))
	blocks := 0
	for _, page := range pages {
		b, err := os.ReadFile(page)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range yamlBlock.FindAllSubmatchIndex(b, -1) {
			blocks++
			indent := string(b[m[2]:m[3]])
			var body strings.Builder
			for line := range strings.Lines(string(b[m[4]:m[5]])) {
				body.WriteString(strings.TrimPrefix(line, indent))
			}
			if _, err := decode([]byte(body.String()), ""); err != nil {
				line := 1 + strings.Count(string(b[:m[0]]), "\n")
				t.Errorf("%s:%d: the yaml block does not decode as a config: %v", page, line, err)
			}
		}
	}
	if blocks == 0 {
		t.Fatal("no yaml blocks found: the pattern or the paths are wrong")
	}
}
