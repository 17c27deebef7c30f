// Package querylog writes one record per DNS query off the hot path: JSON
// lines with the Route 53 Resolver query-log field names (plus xdoh's own
// fields), and optionally dnstap CLIENT_QUERY/CLIENT_RESPONSE messages over
// Frame Streams to a collector socket or a file.
//
// Log copies the query and response wire into a pooled record and hands it to
// one writer goroutine through a bounded queue; it never blocks. When the
// queue is full the record is dropped and counted. The writer parses the wire
// with miekg/dns, formats, and writes through a buffered writer that is
// flushed whenever the queue runs empty and at least every 100 ms.
//
// A JSON line (one per query, fields in this order; query_timestamp is UTC
// to the second as in Route 53, latency_us carries the precision):
//
//	{"version":"1.100000","account_id":"","region":"","vpc_id":"",
//	 "query_timestamp":"2026-11-26T22:00:00Z","query_name":"foo.example.com.",
//	 "query_type":"A","query_class":"IN","rcode":"NOERROR",
//	 "answers":[{"Rdata":"172.16.0.10","Type":"A","Class":"IN"}],
//	 "srcaddr":"127.0.0.1","srcport":"53211","transport":"UDP",
//	 "srcids":{"resolver_endpoint":"edge"},"rule":"onprem",
//	 "target":"https://127.0.0.1:8443/dns-query","upstream_transport":"DoH",
//	 "cache_hit":false,"latency_us":812}
//
// query_name keeps the case the client sent, in presentation format with
// the trailing dot. With no reply, rcode is "" and answers is []; srcids is
// {} when the entry names no listener.
package querylog

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// ErrClosed is returned by Reopen after Close.
var ErrClosed = errors.New("querylog: logger closed")

const (
	defaultBuffer = 4096
	flushInterval = 100 * time.Millisecond
	// maxPooledBuf bounds the wire buffer a pooled record keeps: a record
	// that carried a large TCP/DoH response gives its buffer back to the GC.
	maxPooledBuf = 16 << 10
)

// Entry is one query as the pipeline saw it. Log copies what it needs:
// Query and Response may alias buffers that are reused after Log returns.
type Entry struct {
	Time     time.Time // when the query arrived; zero: Log uses time.Now
	Query    []byte    // client query wire
	Response []byte    // response wire sent to the client; nil: no reply
	Client   netip.AddrPort

	Transport string // client transport: "UDP" "TCP" "DoH" "DoH-FIPS" "DoT" "DoT-FIPS" "DoQ"
	Listener  string // listener name, logged as srcids.resolver_endpoint

	Rule              string // matched rule name ("" if none)
	Target            string // upstream target used ("" if answered locally)
	UpstreamTransport string // how the target was reached: "UDP" "TCP" "DoH" …
	CacheHit          bool
	Latency           time.Duration // arrival to response
}

// Config says where records go. At least one of Path/Stdout, DnstapSocket
// and DnstapFile must be set.
type Config struct {
	Path       string  // JSON-lines file (appended); "-" means stdout
	Stdout     bool    // JSON lines to stdout (Path must be "" or "-")
	Buffer     int     // queue length in records; 0 means 4096
	SampleRate float64 // fraction of queries logged; 0 or 1 means all

	DnstapSocket string // unix socket of a Frame Streams dnstap collector
	DnstapFile   string // Frame Streams dnstap file (truncated on open)
	Identity     string // dnstap identity
}

// Stats are the Logger's counters since New.
type Stats struct {
	Logged        uint64 // records written to every output without error
	Dropped       uint64 // records dropped because the queue was full (or Log after Close)
	SampledOut    uint64 // queries skipped by SampleRate
	WriteErrors   uint64 // records (or flushes) an output failed to write
	DnstapDropped uint64 // dnstap frames dropped: collector down or too slow
}

// sink is one output the writer goroutine feeds. Only the writer goroutine
// calls its methods.
type sink interface {
	write(r *record) error
	flush() error
	reopen() error
	close() error
}

// record is a Logger-owned copy of an Entry.
type record struct {
	e   Entry // Query and Response alias buf
	buf []byte
}

// Logger queues entries and writes them from one goroutine.
type Logger struct {
	queue chan *record
	pool  sync.Pool
	rate  float64 // in (0, 1) when sampling, else 1

	seen          atomic.Uint64 // Log calls while sampling
	dropped       atomic.Uint64
	logged        atomic.Uint64
	writeErrors   atomic.Uint64
	dnstapDropped atomic.Uint64
	closed        atomic.Bool

	sinks     []sink
	reopenReq chan chan error
	quit      chan struct{}
	done      chan struct{}
	closeOnce sync.Once
	closeErr  error // set by the writer before done is closed
}

// New opens the configured outputs and starts the writer goroutine.
func New(cfg Config) (*Logger, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	l := newLogger(cfg)
	var sinks []sink
	fail := func(err error) (*Logger, error) {
		for _, s := range sinks {
			s.close()
		}
		return nil, err
	}
	switch {
	case cfg.Path != "" && cfg.Path != "-":
		s, err := openJSONFile(cfg.Path)
		if err != nil {
			return fail(fmt.Errorf("querylog.path: %w", err))
		}
		sinks = append(sinks, s)
	case cfg.Path == "-" || cfg.Stdout:
		sinks = append(sinks, newJSONStdout())
	}
	if cfg.DnstapFile != "" {
		s, err := openDnstapFile(cfg.DnstapFile, cfg.Identity)
		if err != nil {
			return fail(fmt.Errorf("querylog.dnstap_file: %w", err))
		}
		sinks = append(sinks, s)
	}
	if cfg.DnstapSocket != "" {
		sinks = append(sinks, newDnstapSocket(cfg.DnstapSocket, cfg.Identity, cfg.Buffer, &l.dnstapDropped))
	}
	l.start(sinks)
	return l, nil
}

func (c *Config) validate() error {
	if c.Stdout && c.Path != "" && c.Path != "-" {
		return fmt.Errorf("querylog.stdout: set together with querylog.path %q; choose one", c.Path)
	}
	if c.Buffer < 0 {
		return fmt.Errorf("querylog.buffer: %d is negative", c.Buffer)
	}
	if !(c.SampleRate >= 0 && c.SampleRate <= 1) { // also rejects NaN
		return fmt.Errorf("querylog.sample_rate: %v is outside [0, 1]", c.SampleRate)
	}
	if c.Path == "" && !c.Stdout && c.DnstapSocket == "" && c.DnstapFile == "" {
		return errors.New("querylog: no output: set querylog.path, querylog.stdout, querylog.dnstap_socket or querylog.dnstap_file")
	}
	return nil
}

// newLogger builds a Logger without outputs; start attaches them.
func newLogger(cfg Config) *Logger {
	n := cfg.Buffer
	if n == 0 {
		n = defaultBuffer
	}
	rate := cfg.SampleRate
	if rate == 0 {
		rate = 1
	}
	l := &Logger{
		queue:     make(chan *record, n),
		rate:      rate,
		reopenReq: make(chan chan error),
		quit:      make(chan struct{}),
		done:      make(chan struct{}),
	}
	l.pool.New = func() any { return &record{buf: make([]byte, 0, 1024)} }
	return l
}

func (l *Logger) start(sinks []sink) {
	l.sinks = sinks
	go l.run()
}

// Log queues e for writing. It never blocks: when the queue is full the
// entry is dropped and counted. It is safe for concurrent use; e is not
// retained.
func (l *Logger) Log(e *Entry) {
	if l.rate < 1 {
		// Deterministic sampling: the n-th call is kept when floor(n*rate)
		// steps, so exactly floor(n*rate) of the first n calls are kept.
		n := l.seen.Add(1)
		if uint64(float64(n)*l.rate) == uint64(float64(n-1)*l.rate) {
			return
		}
	}
	if l.closed.Load() {
		l.dropped.Add(1)
		return
	}
	r := l.pool.Get().(*record)
	r.e = *e
	if r.e.Time.IsZero() {
		r.e.Time = time.Now()
	}
	nq := len(e.Query)
	r.buf = append(append(r.buf[:0], e.Query...), e.Response...)
	r.e.Query = r.buf[:nq:nq]
	if e.Response != nil {
		r.e.Response = r.buf[nq:]
	}
	select {
	case l.queue <- r:
	default:
		l.dropped.Add(1)
		l.release(r)
	}
}

func (l *Logger) release(r *record) {
	if cap(r.buf) > maxPooledBuf {
		r.buf = nil
	}
	r.e = Entry{}
	l.pool.Put(r)
}

// Reopen closes and reopens the output files, for SIGHUP after logrotate
// moved them. A dnstap file still at its path is continued, not truncated:
// its Frame Stream goes on (see dnstapFile).
// Records queued meanwhile wait; Log does not block.
func (l *Logger) Reopen() error {
	ch := make(chan error, 1)
	select {
	case l.reopenReq <- ch:
		return <-ch
	case <-l.done:
		return ErrClosed
	}
}

// Close stops accepting entries, writes everything queued, flushes and
// closes the outputs. Later calls return the first call's result.
func (l *Logger) Close() error {
	l.closeOnce.Do(func() {
		l.closed.Store(true)
		close(l.quit)
		<-l.done
		// A Log that raced with Close may have queued after the writer's
		// final drain: count it rather than lose it silently.
		for {
			select {
			case r := <-l.queue:
				l.dropped.Add(1)
				l.release(r)
				continue
			default:
			}
			break
		}
	})
	return l.closeErr
}

// Stats returns the counters.
func (l *Logger) Stats() Stats {
	s := Stats{
		Logged:        l.logged.Load(),
		Dropped:       l.dropped.Load(),
		WriteErrors:   l.writeErrors.Load(),
		DnstapDropped: l.dnstapDropped.Load(),
	}
	if l.rate < 1 {
		n := l.seen.Load()
		s.SampledOut = n - uint64(float64(n)*l.rate)
	}
	return s
}

// run is the writer goroutine.
func (l *Logger) run() {
	defer close(l.done)
	tick := time.NewTicker(flushInterval)
	defer tick.Stop()
	for {
		select {
		case r := <-l.queue:
			l.write(r)
			if len(l.queue) == 0 {
				l.flush()
			}
		case <-tick.C:
			l.flush()
		case ch := <-l.reopenReq:
			l.flush()
			var errs []error
			for _, s := range l.sinks {
				errs = append(errs, s.reopen())
			}
			ch <- errors.Join(errs...)
		case <-l.quit:
			for {
				select {
				case r := <-l.queue:
					l.write(r)
					continue
				default:
				}
				break
			}
			l.flush()
			var errs []error
			for _, s := range l.sinks {
				errs = append(errs, s.close())
			}
			l.closeErr = errors.Join(errs...)
			return
		}
	}
}

func (l *Logger) write(r *record) {
	ok := true
	for _, s := range l.sinks {
		if err := s.write(r); err != nil {
			ok = false
		}
	}
	if ok {
		l.logged.Add(1)
	} else {
		l.writeErrors.Add(1)
	}
	l.release(r)
}

func (l *Logger) flush() {
	for _, s := range l.sinks {
		if err := s.flush(); err != nil {
			l.writeErrors.Add(1)
		}
	}
}
