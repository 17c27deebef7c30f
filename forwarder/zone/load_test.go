package zone

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const header = `$ORIGIN aws.example.internal.
$TTL 300
@     IN SOA ns1 hostmaster 1 7200 900 1209600 60
@     IN NS  ns1
ns1   IN A   10.2.0.53
`

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name    string
		origin  string
		text    string
		wantErr error    // sentinel, nil for parser errors
		wantIn  []string // substrings of the message
	}{
		{
			name: "syntax error", text: header + "bad IN A 10.2.0.300\n",
			wantIn: []string{"db.test", "line: 6", "10.2.0.300"},
		},
		{
			name: "missing SOA", text: "$ORIGIN aws.example.internal.\n@ 300 IN NS ns1\nns1 300 IN A 10.2.0.53\n",
			wantErr: ErrMissingSOA, wantIn: []string{"db.test", "aws.example.internal."},
		},
		{
			name: "empty file", text: "",
			wantErr: ErrMissingSOA,
		},
		{
			name: "missing NS at apex", text: "$ORIGIN aws.example.internal.\n@ 300 IN SOA ns1 hostmaster 1 7200 900 1209600 60\n",
			wantErr: ErrMissingNS,
		},
		{
			name: "SOA below apex", text: header + "sub IN SOA ns1 hostmaster 1 7200 900 1209600 60\n",
			wantErr: ErrSOA, wantIn: []string{"db.test:6:", "sub.aws.example.internal."},
		},
		{
			name: "second SOA", text: header + "@ IN SOA ns1 hostmaster 2 7200 900 1209600 60\n",
			wantErr: ErrSOA, wantIn: []string{"db.test:6:"},
		},
		{
			name: "record outside the origin", text: header + "ipv4 IN A 10.2.1.10\nwww.example.com. IN A 192.0.2.1\n",
			wantErr: ErrOutOfZone, wantIn: []string{"db.test:7:", "www.example.com."},
		},
		{
			name: "$ORIGIN moved outside", text: header + "$ORIGIN example.com.\nwww IN A 192.0.2.1\n",
			wantErr: ErrOutOfZone, wantIn: []string{"db.test:7:"},
		},
		{
			name: "last line without newline", text: header + "x.example.com. IN A 192.0.2.1",
			wantErr: ErrOutOfZone, wantIn: []string{"db.test:6:"},
		},
		{
			name: "CNAME beside A", text: header + "www IN A 10.2.1.10\n\n; note\nwww IN CNAME ipv4\n",
			wantErr: ErrCNAMEConflict, wantIn: []string{"db.test:9:", "www.aws.example.internal.", "beside A"},
		},
		{
			name: "A beside CNAME", text: header + "www IN CNAME ipv4\nwww IN A 10.2.1.10\n",
			wantErr: ErrCNAMEConflict, wantIn: []string{"db.test:7:", "A at www.aws.example.internal. beside a CNAME"},
		},
		{
			name: "two CNAMEs", text: header + "www IN CNAME ipv4\nwww IN CNAME ipv6\n",
			wantErr: ErrCNAMEConflict, wantIn: []string{"db.test:7:", "second CNAME"},
		},
		{
			name: "CNAME at apex", text: header + "@ IN CNAME elsewhere.example.com.\n",
			wantErr: ErrCNAMEConflict, wantIn: []string{"db.test:6:"},
		},
		{
			name: "data below a delegation", text: header + "host.sub IN TXT \"hidden\"\nsub IN NS ns.sub\nns.sub IN A 10.2.5.5\n",
			wantErr: ErrOccluded, wantIn: []string{"db.test:6:", "host.sub.aws.example.internal. TXT", "sub.aws.example.internal."},
		},
		{
			name: "data beside a delegation", text: header + "sub IN NS ns.sub\nsub IN MX 10 mail\n",
			wantErr: ErrOccluded, wantIn: []string{"db.test:7:", "sub.aws.example.internal. MX"},
		},
		{
			name: "nested delegation", text: header + "sub IN NS ns.sub\ndeep.sub IN NS ns.sub\n",
			wantErr: ErrOccluded, wantIn: []string{"db.test:7:", "deep.sub.aws.example.internal. NS"},
		},
		{
			name: "class CH", text: header + "txt CH TXT \"x\"\n",
			wantErr: ErrUnsupported, wantIn: []string{"db.test:6:", "class CH"},
		},
		{
			name: "wildcard NS", text: header + "*.w IN NS ns1\n",
			wantErr: ErrUnsupported, wantIn: []string{"db.test:6:"},
		},
		{
			name: "$INCLUDE refused", text: header + "$INCLUDE /etc/passwd\n",
			wantIn: []string{"db.test", "line: 6"},
		},
		{
			name: "empty origin", origin: "-", text: header,
			wantErr: ErrOrigin,
		},
		{
			name: "invalid origin", origin: "a..b", text: header,
			wantErr: ErrOrigin,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			origin := "aws.example.internal."
			switch tt.origin {
			case "":
			case "-":
				origin = ""
			default:
				origin = tt.origin
			}
			z, err := Parse(origin, strings.NewReader(tt.text), "db.test")
			if err == nil {
				t.Fatalf("Parse succeeded (origin %q), want an error", z.Origin())
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("error %q does not wrap %q", err, tt.wantErr)
			}
			for _, s := range tt.wantIn {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not contain %q", err, s)
				}
			}
		})
	}
}

func TestParseAccepts(t *testing.T) {
	tests := []struct {
		name string
		text string
	}{
		{name: "duplicate records merged", text: header + "ipv4 IN A 10.2.1.10\nipv4 IN A 10.2.1.10\n"},
		{name: "duplicate SOA", text: header + "@ IN SOA ns1 hostmaster 1 7200 900 1209600 60\n"},
		{name: "glue and DS at a delegation", text: header + "sub IN NS sub\nsub IN A 10.2.5.5\nsub IN DS 60485 5 1 2BB183AF5F22588179A53B0A98631FAD1A292118\n"},
		{name: "AAAA glue below a delegation", text: header + "sub IN NS ns.sub\nns.sub IN AAAA fd00::53\n"},
		{name: "multi-line SOA", text: "$ORIGIN aws.example.internal.\n@ 300 IN SOA ns1 hostmaster (\n 1 ; serial\n 7200 900 1209600 60 )\n@ 300 IN NS ns1\n"},
		{name: "upper-case owners", text: header + "WWW IN A 10.2.1.10\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := Parse("aws.example.internal", strings.NewReader(tt.text), "db.test"); err != nil {
				t.Fatalf("Parse: %v", err)
			}
		})
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.zone")
	if err := os.WriteFile(bad, []byte(header+"out.example.com. IN A 192.0.2.1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		path    string
		wantErr error
		wantIn  string
	}{
		{name: "good", path: testZoneFile},
		{name: "missing file", path: filepath.Join(dir, "nope.zone"), wantErr: fs.ErrNotExist, wantIn: "nope.zone"},
		{name: "error names file and line", path: bad, wantErr: ErrOutOfZone, wantIn: bad + ":6:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			z, err := Load("aws.example.internal.", tt.path)
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("Load: %v", err)
				}
				if z.Origin() != "aws.example.internal." {
					t.Errorf("Origin() = %q", z.Origin())
				}
				return
			}
			if !errors.Is(err, tt.wantErr) || !strings.Contains(err.Error(), tt.wantIn) {
				t.Fatalf("Load error = %v, want %v containing %q", err, tt.wantErr, tt.wantIn)
			}
		})
	}
}
