package querylog

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/miekg/dns"
)

// queryNames reads a dnstap file back with golang-dnstap and returns the
// names of its CLIENT_QUERY messages in order.
func queryNames(t *testing.T, path string) []string {
	t.Helper()
	var names []string
	for _, m := range readDnstapFile(t, path) {
		if q := m.GetMessage().GetQueryMessage(); q != nil {
			var dm dns.Msg
			if err := dm.Unpack(q); err != nil {
				t.Fatal(err)
			}
			names = append(names, dm.Question[0].Name)
		}
	}
	return names
}

// TestDnstapFileAppends: a restart (a new Logger) and a SIGHUP without
// rotation (Reopen) continue the file's stream; nothing written before is
// lost, and both golang-dnstap and BIND's dnstap-read (when installed)
// read every record as one stream.
func TestDnstapFileAppends(t *testing.T) {
	path := filepath.Join(t.TempDir(), "query.tap")
	l, err := New(Config{DnstapFile: path})
	if err != nil {
		t.Fatal(err)
	}
	l.Log(entry(t, "one.example.com."))
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	first, _ := os.ReadFile(path)
	l, err = New(Config{DnstapFile: path}) // a restart
	if err != nil {
		t.Fatal(err)
	}
	l.Log(entry(t, "two.example.com."))
	waitLogged(t, l, 1)
	if err := l.Reopen(); err != nil { // SIGHUP, file not rotated
		t.Fatal(err)
	}
	l.Log(entry(t, "three.example.com."))
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	all, _ := os.ReadFile(path)
	if !bytes.HasPrefix(all, first[:len(first)-len(fsStop)]) {
		t.Fatal("the records written before the restart were rewritten")
	}
	want := "one.example.com. two.example.com. three.example.com."
	if got := strings.Join(queryNames(t, path), " "); got != want {
		t.Errorf("golang-dnstap reads %q, want %q", got, want)
	}
	if bytes.Count(all, fsStart()) != 1 || !bytes.HasSuffix(all, fsStop) {
		t.Errorf("the file is not one stream: %d STARTs, ends in STOP %v", bytes.Count(all, fsStart()), bytes.HasSuffix(all, fsStop))
	}
	if _, err := exec.LookPath("dnstap-read"); err != nil {
		t.Log("dnstap-read not installed: BIND's reader not checked")
		return
	}
	out, err := exec.Command("dnstap-read", path).CombinedOutput()
	if err != nil {
		t.Fatalf("dnstap-read: %v\n%s", err, out)
	}
	for _, n := range strings.Fields(want) {
		if !strings.Contains(string(out), strings.TrimSuffix(n, ".")+"/IN/A") {
			t.Errorf("dnstap-read does not show %s:\n%s", n, out)
		}
	}
}

// TestDnstapFileAfterCrash: a file whose writer died mid-frame is cut back
// to its last whole frame and continued; a file that is not a dnstap
// stream is refused, untouched.
func TestDnstapFileAfterCrash(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "query.tap")
	l, err := New(Config{DnstapFile: path})
	if err != nil {
		t.Fatal(err)
	}
	l.Log(entry(t, "one.example.com."))
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	// No STOP and half a frame, as a killed writer leaves it.
	b = append(b[:len(b)-len(fsStop)], 0, 0, 0, 200, 1, 2, 3)
	if err := os.WriteFile(path, b, 0o640); err != nil {
		t.Fatal(err)
	}
	l, err = New(Config{DnstapFile: path})
	if err != nil {
		t.Fatal(err)
	}
	l.Log(entry(t, "two.example.com."))
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(queryNames(t, path), " "); got != "one.example.com. two.example.com." {
		t.Errorf("after a crash: reads %q", got)
	}

	other := filepath.Join(dir, "notes.txt")
	if err := os.WriteFile(other, []byte("not dnstap\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	if _, err := New(Config{DnstapFile: other}); err == nil || !strings.Contains(err.Error(), "does not start a dnstap Frame Stream") {
		t.Errorf("a foreign file: %v", err)
	}
	if b, _ := os.ReadFile(other); string(b) != "not dnstap\n" {
		t.Errorf("a foreign file was changed: %q", b)
	}
}
