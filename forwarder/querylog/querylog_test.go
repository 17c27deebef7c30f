package querylog

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// logLine is the subset of a JSON line the tests look at.
type logLine struct {
	QueryName string `json:"query_name"`
	Transport string `json:"transport"`
	Rcode     string `json:"rcode"`
	SrcPort   string `json:"srcport"`
	Answers   []struct {
		Rdata, Type, Class string
	} `json:"answers"`
}

func readLines(t *testing.T, path string) []logLine {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []logLine
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var l logLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("%s: line %d: %v: %s", path, len(out)+1, err, sc.Bytes())
		}
		out = append(out, l)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// entry builds an Entry for name with an A answer.
func entry(t testing.TB, name string) *Entry {
	q := newQuery(name, dns.TypeA)
	r := newReply(t, q, dns.RcodeSuccess, name+" 60 IN A 192.0.2.1")
	return &Entry{
		Time:      t0,
		Query:     pack(t, q),
		Response:  pack(t, r),
		Client:    netip.MustParseAddrPort("192.0.2.10:53000"),
		Transport: "UDP",
		Listener:  "edge",
	}
}

func TestConfigErrors(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"no output", Config{}, "querylog: no output"},
		{"stdout and path", Config{Stdout: true, Path: filepath.Join(dir, "q.log")}, "querylog.stdout:"},
		{"negative buffer", Config{Stdout: true, Buffer: -1}, "querylog.buffer:"},
		{"rate above one", Config{Stdout: true, SampleRate: 1.5}, "querylog.sample_rate:"},
		{"negative rate", Config{Stdout: true, SampleRate: -0.1}, "querylog.sample_rate:"},
		{"unwritable path", Config{Path: filepath.Join(dir, "missing", "q.log")}, "querylog.path:"},
		{"unwritable dnstap file", Config{DnstapFile: filepath.Join(dir, "missing", "q.tap")}, "querylog.dnstap_file:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, err := New(tt.cfg)
			if err == nil {
				l.Close()
				t.Fatalf("New(%+v) succeeded", tt.cfg)
			}
			if !strings.HasPrefix(err.Error(), tt.want) {
				t.Errorf("New: %v, want prefix %q", err, tt.want)
			}
		})
	}
}

func TestLogTransportsToFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "query.log")
	l, err := New(Config{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	transports := []string{"UDP", "TCP", "DoH", "DoH-FIPS"}
	for i, tr := range transports {
		e := entry(t, fmt.Sprintf("q%d.example.com.", i))
		e.Transport = tr
		l.Log(e)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	lines := readLines(t, path)
	if len(lines) != len(transports) {
		t.Fatalf("%d lines, want %d", len(lines), len(transports))
	}
	for i, tr := range transports {
		if lines[i].Transport != tr || lines[i].QueryName != fmt.Sprintf("q%d.example.com.", i) {
			t.Errorf("line %d: %+v, want transport %s", i, lines[i], tr)
		}
	}
	if s := l.Stats(); s.Logged != 4 || s.Dropped != 0 || s.WriteErrors != 0 {
		t.Errorf("stats %+v", s)
	}
}

// TestLogCopiesBuffers reuses the caller's buffers right after each Log, as
// the datapaths do, and checks every line still has its own query.
func TestLogCopiesBuffers(t *testing.T) {
	path := filepath.Join(t.TempDir(), "query.log")
	l, err := New(Config{Path: path, Buffer: 1000})
	if err != nil {
		t.Fatal(err)
	}
	qbuf := make([]byte, 0, 512)
	rbuf := make([]byte, 0, 512)
	const n = 500
	for i := range n {
		e := entry(t, fmt.Sprintf("name%d.example.com.", i))
		qbuf = append(qbuf[:0], e.Query...)
		rbuf = append(rbuf[:0], e.Response...)
		e.Query, e.Response = qbuf, rbuf
		l.Log(e)
		for j := range qbuf { // clobber, as the next packet would
			qbuf[j] = 0xff
		}
		for j := range rbuf {
			rbuf[j] = 0xff
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	lines := readLines(t, path)
	if len(lines) != n {
		t.Fatalf("%d lines, want %d (stats %+v)", len(lines), n, l.Stats())
	}
	for i, ln := range lines {
		want := fmt.Sprintf("name%d.example.com.", i)
		if ln.QueryName != want || ln.Rcode != "NOERROR" || len(ln.Answers) != 1 || ln.Answers[0].Rdata != "192.0.2.1" {
			t.Fatalf("line %d: %+v, want %s with its answer", i, ln, want)
		}
	}
}

// blockingWriter blocks every Write until release is closed, and says when
// the first Write started.
type blockingWriter struct {
	entered chan struct{}
	release chan struct{}
	once    sync.Once
	mu      sync.Mutex
	data    []byte
}

func newBlockingWriter() *blockingWriter {
	return &blockingWriter{entered: make(chan struct{}), release: make(chan struct{})}
}

func (w *blockingWriter) Write(p []byte) (int, error) {
	w.once.Do(func() { close(w.entered) })
	<-w.release
	w.mu.Lock()
	defer w.mu.Unlock()
	w.data = append(w.data, p...)
	return len(p), nil
}

func TestFullQueueDropsAndCounts(t *testing.T) {
	w := newBlockingWriter()
	l := newLogger(Config{Buffer: 1})
	l.start([]sink{newJSONWriter(w)})

	l.Log(entry(t, "first.example.com.")) // taken by the writer, which then blocks flushing it
	<-w.entered
	start := time.Now()
	for i := range 10 { // one fits the queue, nine are dropped
		l.Log(entry(t, fmt.Sprintf("more%d.example.com.", i)))
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("Log blocked for %v", d)
	}
	if s := l.Stats(); s.Dropped != 9 {
		t.Errorf("dropped %d, want 9", s.Dropped)
	}
	close(w.release)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	s := l.Stats()
	if s.Logged != 2 || s.Dropped != 9 {
		t.Errorf("stats %+v, want Logged 2 Dropped 9", s)
	}
	if got := strings.Count(string(w.data), "\n"); got != 2 {
		t.Errorf("%d lines written, want 2", got)
	}
}

func TestSampling(t *testing.T) {
	tests := []struct {
		rate      float64
		n         int
		wantKept  uint64
		wantSkips uint64
	}{
		{0, 1000, 1000, 0},
		{1, 1000, 1000, 0},
		{0.1, 10000, 1000, 9000},
		{0.25, 1000, 250, 750},
		{0.001, 999, 0, 999},
		{0.3, 7, 2, 5},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.rate), func(t *testing.T) {
			l := newLogger(Config{SampleRate: tt.rate, Buffer: tt.n})
			l.start([]sink{newJSONWriter(io.Discard)})
			e := entry(t, "s.example.com.")
			for range tt.n {
				l.Log(e)
			}
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			s := l.Stats()
			if s.Logged != tt.wantKept || s.SampledOut != tt.wantSkips || s.Dropped != 0 {
				t.Errorf("stats %+v, want Logged %d SampledOut %d", s, tt.wantKept, tt.wantSkips)
			}
		})
	}
}

func TestReopenAfterRename(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "query.log")
	l, err := New(Config{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	l.Log(entry(t, "before.example.com."))
	waitLogged(t, l, 1)
	if err := os.Rename(path, path+".1"); err != nil { // logrotate
		t.Fatal(err)
	}
	l.Log(entry(t, "moved.example.com.")) // still goes to the renamed file
	waitLogged(t, l, 2)
	if err := l.Reopen(); err != nil {
		t.Fatal(err)
	}
	l.Log(entry(t, "after.example.com."))
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	old, cur := readLines(t, path+".1"), readLines(t, path)
	if len(old) != 2 || old[0].QueryName != "before.example.com." || old[1].QueryName != "moved.example.com." {
		t.Errorf("rotated file: %+v", old)
	}
	if len(cur) != 1 || cur[0].QueryName != "after.example.com." {
		t.Errorf("new file: %+v", cur)
	}
	if err := l.Reopen(); !errors.Is(err, ErrClosed) {
		t.Errorf("Reopen after Close: %v, want ErrClosed", err)
	}
}

func waitLogged(t *testing.T, l *Logger, n uint64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for l.Stats().Logged < n {
		if time.Now().After(deadline) {
			t.Fatalf("logged %d, want %d", l.Stats().Logged, n)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestCloseDrains(t *testing.T) {
	path := filepath.Join(t.TempDir(), "query.log")
	l, err := New(Config{Path: path, Buffer: 5000})
	if err != nil {
		t.Fatal(err)
	}
	e := entry(t, "drain.example.com.")
	for range 5000 {
		l.Log(e)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if got := len(readLines(t, path)); got != 5000 {
		t.Errorf("%d lines after Close, want 5000 (stats %+v)", got, l.Stats())
	}
	l.Log(e) // after Close: dropped, no panic
	if s := l.Stats(); s.Logged != 5000 || s.Dropped != 1 {
		t.Errorf("stats %+v", s)
	}
	if err := l.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// TestFlushWhenIdle checks a lone record reaches the file without Close.
func TestFlushWhenIdle(t *testing.T) {
	path := filepath.Join(t.TempDir(), "query.log")
	l, err := New(Config{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	l.Log(entry(t, "idle.example.com."))
	deadline := time.Now().Add(2 * time.Second)
	for {
		b, _ := os.ReadFile(path)
		if strings.Contains(string(b), "idle.example.com.") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("record not flushed")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }

func TestWriteErrorsCounted(t *testing.T) {
	l := newLogger(Config{})
	l.start([]sink{newJSONWriter(failingWriter{})})
	for range 3 {
		l.Log(entry(t, "e.example.com."))
	}
	l.Close()
	if s := l.Stats(); s.WriteErrors == 0 || s.Logged+s.WriteErrors < 3 {
		t.Errorf("stats %+v, want write errors", s)
	}
}

func TestConcurrentLog(t *testing.T) {
	path := filepath.Join(t.TempDir(), "query.log")
	l, err := New(Config{Path: path, Buffer: 256, SampleRate: 0.5})
	if err != nil {
		t.Fatal(err)
	}
	const workers, per = 8, 2000
	var wg sync.WaitGroup
	for w := range workers {
		e := entry(t, fmt.Sprintf("w%d.example.com.", w))
		wg.Add(1)
		go func() {
			defer wg.Done()
			orig := e.Query
			buf := make([]byte, 0, 512)
			for range per {
				buf = append(buf[:0], orig...) // the next packet lands in the same buffer
				e.Query = buf
				l.Log(e)
				clear(buf)
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for range 20 {
			if err := l.Reopen(); err != nil {
				t.Error(err)
			}
			_ = l.Stats()
		}
	}()
	wg.Wait()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	s := l.Stats()
	if s.SampledOut != workers*per/2 || s.Logged+s.Dropped != workers*per/2 {
		t.Errorf("stats %+v: want SampledOut %d and Logged+Dropped %d", s, workers*per/2, workers*per/2)
	}
	lines := readLines(t, path)
	if uint64(len(lines)) != s.Logged {
		t.Errorf("%d lines, stats say %d logged", len(lines), s.Logged)
	}
	for i, ln := range lines {
		if !strings.HasPrefix(ln.QueryName, "w") || !strings.HasSuffix(ln.QueryName, ".example.com.") {
			t.Fatalf("line %d: query name %q: buffer reuse leaked into the log", i, ln.QueryName)
		}
	}
}

// TestLogAllocs checks the caller's side of Log allocates nothing once the
// pool is warm: the writer is not running, the test drains the queue.
func TestLogAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("sync.Pool drops items under -race")
	}
	l := newLogger(Config{Buffer: 16})
	e := entry(t, "alloc.example.com.")
	allocs := testing.AllocsPerRun(1000, func() {
		l.Log(e)
		l.release(<-l.queue)
	})
	if allocs != 0 {
		t.Errorf("Log allocates %v times per call", allocs)
	}
}

func BenchmarkLog(b *testing.B) {
	e := entry(b, "bench.example.com.")
	e.Rule, e.Target, e.UpstreamTransport = "onprem", "https://192.0.2.53/dns-query", "DoH"

	// enqueue: Log's own cost (copy into a pooled record, queue send),
	// with the benchmark standing in for the writer.
	b.Run("enqueue", func(b *testing.B) {
		l := newLogger(Config{Buffer: 16})
		b.ReportAllocs()
		for b.Loop() {
			l.Log(e)
			l.release(<-l.queue)
		}
	})

	// pipeline: Log from parallel callers with the real writer formatting
	// to io.Discard; allocs/op include the writer's parsing, and what it
	// cannot keep up with is dropped.
	b.Run("pipeline", func(b *testing.B) {
		l := newLogger(Config{})
		l.start([]sink{newJSONWriter(io.Discard)})
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				l.Log(e)
			}
		})
		l.Close()
		s := l.Stats()
		b.ReportMetric(float64(s.Dropped)/float64(s.Dropped+s.Logged), "dropped/op")
	})
}

// BenchmarkFormat is the writer's cost per record: parse query and
// response, append the JSON line.
func BenchmarkFormat(b *testing.B) {
	e := entry(b, "bench.example.com.")
	var line []byte
	b.ReportAllocs()
	for b.Loop() {
		line = appendRecord(line[:0], e)
	}
}
