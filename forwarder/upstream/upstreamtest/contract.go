package upstreamtest

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/net/http2"
)

// Upstream is the interface RunContract tests: upstream.Upstream, restated
// here because the upstream package's own tests import this package, which
// therefore must not import it. (upstream.Canceler is an alias of
// interface{ Cancel() }, so an upstream.Upstream is an Upstream.)
type Upstream interface {
	Submit(query []byte, timeout time.Duration, done func(resp []byte, err error)) interface{ Cancel() }
	Close() error
	String() string
}

// Transport is what RunContract starts servers for.
type Transport int

const (
	DoH Transport = iota // HTTP/2 over TLS: a FakeH2
	UDP                  // UDP, TCP on a truncated answer: a Do53Fault
	TCP                  // TCP only: a Do53Fault
	DoT                  // DNS over TLS: a Do53Fault behind TLS (StartDoTFault)
	DoQ                  // DNS over QUIC: a DoQServer
)

func (tr Transport) String() string { return [...]string{"DoH", "UDP", "TCP", "DoT", "DoQ"}[tr] }

// Target is what RunContract asks the factory to build an upstream for.
type Target struct {
	URL     string         // as upstream.New takes it
	RootCAs *x509.CertPool // DoH, DoT, DoQ: the server's CA
	Timeout time.Duration  // Options.Timeout
	Conns   int            // Options.Conns
}

// Errors are the sentinels of the package under test.
type Errors struct {
	Timeout, Closed, BadQuery error
	Retryable                 func(error) bool
}

// contractSlack is how late after its timeout a callback may come: timer
// and goroutine scheduling on a loaded machine under the race detector.
const contractSlack = 400 * time.Millisecond

// RunContract runs the contract of Upstream.Submit against the upstreams
// that newUpstream builds, in the manner of golang.org/x/net/nettest's
// TestConn: the same cases for every transport. The servers are started
// here and behave by query name: "hold…" is read and not answered (until
// the case releases it), "break…" breaks the connection that carries it,
// each time (DoH: GOAWAY below its stream; UDP: truncated, then the TCP
// connection closed; TCP: the connection closed), "once…" does so the
// first time only, anything else is answered with AnswerFor (over UDP,
// "tc…" is truncated and so answered over TCP). (DoT: the TCP cases behind
// TLS; DoQ: "break…" closes the QUIC connection.) Every error must name the
// target (String). Close must be idempotent; RunContract closes every
// upstream it builds.
func RunContract(t *testing.T, tr Transport, errs Errors, newUpstream func(t *testing.T, tg Target) Upstream) {
	c := &contract{tr: tr, errs: errs, newUpstream: newUpstream}
	t.Run("Answers", c.answers)
	t.Run("NoGoroutinePerQuery", c.noGoroutinePerQuery)
	t.Run("DoneSubmits", c.doneSubmits)
	t.Run("CloseInFlight", c.closeInFlight)
	t.Run("NoGoroutineAfterClose", c.noGoroutineAfterClose)
	t.Run("Refused", c.refused)
	t.Run("RetriedOnce", c.retriedOnce)
	t.Run("Timeout", c.timeout)
	t.Run("BadQuery", c.badQuery)
	t.Run("BIND", c.bind)
}

type contract struct {
	tr          Transport
	errs        Errors
	newUpstream func(t *testing.T, tg Target) Upstream
}

// server is the contract's server for one case.
type server struct {
	url     string
	roots   *x509.CertPool
	clients func() int // connections, or UDP sockets, seen

	mu    sync.Mutex
	tries map[string]int // queries received per name
	held  []func()       // answers of "hold" queries, in arrival order
}

// start starts the server for the contract's transport.
func (c *contract) start(t *testing.T) *server {
	s := &server{tries: make(map[string]int)}
	// act counts a try of q and says what to do with it: answer, hold (the
	// answer goes to s.held) or break.
	act := func(q *dns.Msg, answer func()) (brk bool) {
		name := q.Question[0].Name
		s.mu.Lock()
		defer s.mu.Unlock()
		s.tries[name]++
		switch {
		case strings.HasPrefix(name, "hold"):
			s.held = append(s.held, answer)
			return false
		case strings.HasPrefix(name, "break"):
			return true
		case strings.HasPrefix(name, "once"):
			if s.tries[name] == 1 {
				return true
			}
		}
		answer()
		return false
	}
	switch c.tr {
	case DoH:
		f := StartFakeH2(t, nil, func(fc *FakeConn, _ int, id uint32, q *dns.Msg) {
			if act(q, func() { fc.Respond(id, q) }) {
				fc.GoAway(max(id, 2)-2, http2.ErrCodeNo) // id and above: not processed
			}
		})
		s.url, s.roots, s.clients = f.URL(), PKI(t).Pool, func() int { return int(f.NConn.Load()) }
	case DoQ:
		f := StartDoQServer(t, DoQServerOptions{}, func(r *DoQQuery) {
			if act(r.Msg, func() { r.Answer(AnswerFor(r.Msg)) }) {
				r.Conn.CloseWithError(0, "")
			}
		})
		s.url, s.roots, s.clients = f.URL(), PKI(t).Pool, func() int { return int(f.NConn.Load()) }
	case DoT:
		f := StartDoTFault(t, func(f *Do53Fault, conn int, q *dns.Msg) TCPAction {
			nc := f.Conn(conn)
			if act(q, func() { WriteFrame(nc, MustPack(AnswerFor(q))) }) {
				return TCPClose
			}
			return TCPIgnore
		})
		s.url, s.roots, s.clients = f.Target(true), PKI(t).Pool, func() int { return int(f.TCPConns()) }
	default:
		onTCP := func(f *Do53Fault, conn int, q *dns.Msg) TCPAction {
			nc := f.Conn(conn)
			if act(q, func() { WriteFrame(nc, MustPack(AnswerFor(q))) }) {
				return TCPClose
			}
			return TCPIgnore
		}
		onUDP := func(q *dns.Msg, reply func([]byte)) {
			name := q.Question[0].Name
			if strings.HasPrefix(name, "break") || strings.HasPrefix(name, "once") || strings.HasPrefix(name, "tc") {
				m := new(dns.Msg).SetReply(q)
				m.Truncated = true // to TCP, which acts on it
				reply(MustPack(m))
				return
			}
			act(q, func() { reply(MustPack(AnswerFor(q))) })
		}
		f := StartDo53Fault(t, onUDP, onTCP)
		s.url = f.Target(c.tr == TCP)
		s.clients = func() int { return int(f.TCPConns()) }
		if c.tr == UDP {
			s.clients = f.UDPClients
		}
	}
	return s
}

// upstream builds an upstream for s (nil: where nothing listens).
func (c *contract) upstream(t *testing.T, s *server, timeout time.Duration) Upstream {
	tg := Target{Timeout: timeout, Conns: 2}
	switch {
	case s != nil:
		tg.URL, tg.RootCAs = s.url, s.roots
	case c.tr == DoH:
		tg.URL, tg.RootCAs = "https://"+ClosedPort(t)+"/dns-query", PKI(t).Pool
	case c.tr == UDP:
		tg.URL = ClosedUDPPort(t)
	case c.tr == DoT:
		tg.URL, tg.RootCAs = "tls://"+ClosedPort(t), PKI(t).Pool
	case c.tr == DoQ:
		tg.URL, tg.RootCAs = "quic://"+ClosedUDPPort(t), PKI(t).Pool
	default:
		tg.URL = "tcp://" + ClosedPort(t)
	}
	u := c.newUpstream(t, tg)
	t.Cleanup(func() { u.Close() })
	return u
}

func (s *server) triesOf(name string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tries[name]
}

func (s *server) holding() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.held)
}

// release answers the held queries, the last first.
func (s *server) release() {
	s.mu.Lock()
	held := s.held
	s.held = nil
	s.mu.Unlock()
	for i := len(held) - 1; i >= 0; i-- {
		held[i]()
	}
}

// call is one Submit and what its callback got.
type call struct {
	name  string
	id    uint16
	query []byte
	start time.Time
	calls atomic.Int32
	took  time.Duration
	resp  []byte
	err   error
}

// burst tracks Submits to one upstream: every callback must come exactly
// once.
type burst struct {
	u       Upstream
	calls   []call
	pending sync.WaitGroup
	extra   atomic.Int32 // callbacks after the first, all queries together
}

func newBurst(t *testing.T, u Upstream, n int, name func(i int) string) *burst {
	b := &burst{u: u, calls: make([]call, n)}
	for i := range b.calls {
		c := &b.calls[i]
		c.name, c.id = name(i), uint16(0x8000+i*7)
		m := new(dns.Msg).SetQuestion(c.name, dns.TypeA)
		m.Id = c.id
		c.query = MustPack(m)
	}
	b.pending.Add(n)
	return b
}

func names(prefix string) func(int) string {
	return func(i int) string { return fmt.Sprintf("%s%d.example.", prefix, i) }
}

// done returns query i's callback, which records the first call, counts
// any further one, and runs then (if not nil) on its goroutine.
func (b *burst) done(i int, then func(err error)) func([]byte, error) {
	c := &b.calls[i]
	return func(resp []byte, err error) {
		if c.calls.Add(1) > 1 {
			b.extra.Add(1)
			return
		}
		c.took = time.Since(c.start)
		c.resp, c.err = resp, err
		if then != nil {
			then(err)
		}
		b.pending.Done()
	}
}

// submit sends query i and then scribbles over the caller's copy of it:
// Submit must have copied it.
func (b *burst) submit(i int, timeout time.Duration, then func(err error)) {
	c := &b.calls[i]
	c.start = time.Now()
	b.u.Submit(c.query, timeout, b.done(i, then))
	for j := range c.query {
		c.query[j] = 0xFF
	}
}

// submitAll submits every query from goroutines goroutines.
func (b *burst) submitAll(timeout time.Duration, goroutines int) {
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			for i := g; i < len(b.calls); i += goroutines {
				b.submit(i, timeout, nil)
			}
		})
	}
	wg.Wait()
}

// wait waits at most within for every callback's first call.
func (b *burst) wait(t *testing.T, within time.Duration) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		b.pending.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(within):
		n := 0
		for i := range b.calls {
			if b.calls[i].calls.Load() == 0 {
				n++
			}
		}
		t.Fatalf("%d of %d callbacks not called within %v", n, len(b.calls), within)
	}
}

// once checks, after every query's deadline has passed, that no callback
// came twice.
func (b *burst) once(t *testing.T, timeout time.Duration) {
	t.Helper()
	var last time.Time
	for i := range b.calls {
		if s := b.calls[i].start; s.After(last) {
			last = s
		}
	}
	time.Sleep(time.Until(last.Add(timeout + 50*time.Millisecond)))
	if n := b.extra.Load(); n != 0 {
		t.Errorf("%d callbacks called more than once", n)
	}
}

// check checks every call with problem, reporting the first five.
func (b *burst) check(t *testing.T, problem func(c *call) string) {
	t.Helper()
	bad := 0
	for i := range b.calls {
		p := problem(&b.calls[i])
		if err := b.calls[i].err; p == "" && err != nil && !strings.Contains(err.Error(), b.u.String()) {
			p = fmt.Sprintf("error %q does not name the target", err)
		}
		if p != "" {
			if bad < 5 {
				t.Errorf("%s: %s", b.calls[i].name, p)
			}
			bad++
		}
	}
	if bad > 5 {
		t.Errorf("... %d problems in all", bad)
	}
}

// answered is a problem func: the call must have AnswerFor its query, with
// its ID.
func answered(c *call) string {
	if c.err != nil {
		return fmt.Sprintf("error %v, want an answer", c.err)
	}
	m := new(dns.Msg)
	if err := m.Unpack(c.resp); err != nil {
		return fmt.Sprintf("unpacking response: %v", err)
	}
	if m.Id != c.id || len(m.Question) != 1 || m.Question[0].Name != c.name {
		return fmt.Sprintf("response ID %#x, question %v; want %#x, %s", m.Id, m.Question, c.id, c.name)
	}
	if len(m.Answer) != 1 {
		return fmt.Sprintf("%d answers, want 1", len(m.Answer))
	}
	if a, ok := m.Answer[0].(*dns.A); !ok || !a.A.Equal(IPFor(c.name)) {
		return fmt.Sprintf("answer %v, want %v", m.Answer[0], IPFor(c.name))
	}
	return ""
}

// failed returns a problem func: the call must have an error wrapping
// want (nil: any error), and no response, within within.
func failed(want error, within time.Duration) func(c *call) string {
	return func(c *call) string {
		switch {
		case c.err == nil:
			return "answered, want an error"
		case c.resp != nil:
			return fmt.Sprintf("a response along with error %v", c.err)
		case want != nil && !errors.Is(c.err, want):
			return fmt.Sprintf("error %v, want %v", c.err, want)
		case c.took > within:
			return fmt.Sprintf("error after %v, want it within %v (%v)", c.took, within, c.err)
		}
		return ""
	}
}

// Many queries at once, from several goroutines, cold and then warm: each
// callback once with the answer to its own query, each query sent once,
// over at most Conns connections or sockets.
func (c *contract) answers(t *testing.T) {
	s := c.start(t)
	u := c.upstream(t, s, 5*time.Second)
	for _, round := range []string{"cold", "warm"} {
		b := newBurst(t, u, 200, names(round))
		b.submitAll(0, 4)
		b.wait(t, 10*time.Second)
		b.check(t, answered)
		b.once(t, 0)
		for i := range b.calls {
			if n := s.triesOf(b.calls[i].name); n != 1 {
				t.Fatalf("%s: %s sent %d times, want once", round, b.calls[i].name, n)
			}
		}
	}
	if n := s.clients(); n > 2 {
		t.Errorf("%d client connections or sockets, want at most Conns (2)", n)
	}
}

// With a connection ready, queries in flight cost no goroutine, and
// answers are matched to their queries in any order.
func (c *contract) noGoroutinePerQuery(t *testing.T) {
	s := c.start(t)
	u := c.upstream(t, s, 10*time.Second)
	warm := newBurst(t, u, 2, names("warm"))
	warm.submitAll(0, 2)
	warm.wait(t, 5*time.Second)
	const n = 200
	b := newBurst(t, u, n, names("hold"))
	before := runtime.NumGoroutine()
	b.submitAll(0, 1)
	waitUntil(t, "every query at the server", func() bool { return s.holding() == n })
	if d := runtime.NumGoroutine() - before; d > 5 {
		t.Errorf("%d more goroutines with %d queries in flight, want none per query", d, n)
	}
	s.release()
	b.wait(t, 5*time.Second)
	b.check(t, answered)
	b.once(t, 0)
}

// done may call Submit again (a group chains its attempts that way) from
// whichever goroutine runs it: a reader, a timer, whoever fails a
// connection, the caller.
func (c *contract) doneSubmits(t *testing.T) {
	const depth = 10
	tests := []struct {
		name    string
		refused bool // nothing listens
		prefix  string
		bad     bool // queries too short
		timeout time.Duration
		problem func(c *call) string
	}{
		{name: "answered", prefix: "chain", problem: answered},
		{name: "answered over TCP after a truncated one over UDP", prefix: "tc", problem: answered},
		{name: "timed out", prefix: "hold", timeout: 30 * time.Millisecond, problem: failed(c.errs.Timeout, 30*time.Millisecond+contractSlack)},
		{name: "connection broken", prefix: "break", problem: failed(nil, contractSlack)},
		// The first query must be refused; later ones may time out
		// instead: the kernel rate-limits ICMP errors (icmp_msgs_per_sec).
		{name: "refused", refused: true, prefix: "chain", problem: failed(nil, time.Second+contractSlack)},
		{name: "bad query", prefix: "chain", bad: true, problem: failed(c.errs.BadQuery, contractSlack)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var s *server
			if !tt.refused {
				s = c.start(t)
			}
			u := c.upstream(t, s, 5*time.Second)
			timeout := tt.timeout
			if timeout == 0 {
				timeout = time.Second
			}
			b := newBurst(t, u, depth, names(tt.prefix))
			if tt.bad {
				for i := range b.calls {
					b.calls[i].query = b.calls[i].query[:5]
				}
			}
			var step func(i int)
			step = func(i int) {
				b.submit(i, timeout, func(error) {
					if i+1 < depth {
						step(i + 1)
					}
				})
			}
			step(0)
			b.wait(t, 5*time.Second)
			b.check(t, tt.problem)
			b.once(t, timeout)
		})
	}
}

// Close with queries in flight: each callback is called exactly once, at
// Close (with ErrClosed) and not at the queries' timeouts; a Submit from
// a callback, or after Close, is refused at once with ErrClosed.
func (c *contract) closeInFlight(t *testing.T) {
	const n, timeout = 100, time.Second
	s := c.start(t)
	u := c.upstream(t, s, 10*time.Second)
	b := newBurst(t, u, n, names("hold"))
	late := b.calls[0].query // scribbled over, but long enough
	var nestedBad atomic.Int32
	nested := func(error) {
		calls := 0
		u.Submit(late, 0, func(_ []byte, err error) {
			calls++
			if !errors.Is(err, c.errs.Closed) {
				nestedBad.Add(1)
			}
		})
		if calls != 1 {
			nestedBad.Add(1)
		}
	}
	for i := range n {
		b.submit(i, timeout, nested)
	}
	waitUntil(t, "queries in flight", func() bool { return s.holding() == n })
	start := time.Now()
	if err := u.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	b.wait(t, 5*time.Second)
	b.check(t, failed(c.errs.Closed, time.Since(b.calls[0].start)))
	if el := time.Since(start); el > timeout/2 {
		t.Errorf("last callback %v after Close, want them at Close", el)
	}
	if n := nestedBad.Load(); n != 0 {
		t.Errorf("%d Submits from callbacks after Close not refused at once with ErrClosed", n)
	}
	after := newBurst(t, u, 1, names("after"))
	after.submit(0, 0, nil)
	if after.calls[0].calls.Load() != 1 || !errors.Is(after.calls[0].err, c.errs.Closed) {
		t.Errorf("Submit after Close: %d calls before it returned, error %v; want one with ErrClosed", after.calls[0].calls.Load(), after.calls[0].err)
	}
	b.once(t, timeout)
}

// Every kind of query, cold and warm, then Close with queries in flight:
// no goroutine is left behind.
func (c *contract) noGoroutineAfterClose(t *testing.T) {
	const timeout = 300 * time.Millisecond
	s := c.start(t)
	before := runtime.NumGoroutine()
	u := c.upstream(t, s, timeout)
	for round := range 2 { // cold, then warm
		b := newBurst(t, u, 100, func(i int) string {
			return fmt.Sprintf("%s%d-%d.example.", [...]string{"ok", "hold", "once", "ok", "break"}[i%5], round, i)
		})
		b.submitAll(0, 2)
		b.wait(t, 5*time.Second)
		b.check(t, func(c *call) string {
			switch {
			case strings.HasPrefix(c.name, "hold"):
				return failed(nil, timeout+contractSlack)(c)
			case strings.HasPrefix(c.name, "break"):
				return failed(nil, timeout+contractSlack)(c)
			}
			return "" // answered, or caught by a break on its connection
		})
		b.once(t, timeout)
	}
	b := newBurst(t, u, 20, names("holdclose"))
	b.submitAll(0, 1)
	u.Close()
	b.wait(t, 5*time.Second)
	b.check(t, failed(nil, time.Second))
	deadline := time.Now().Add(3 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("goroutines: %d before, %d after Close\n%s", before, runtime.NumGoroutine(), buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Where nothing listens, queries fail well before their timeout. (Over UDP
// the first hears the ICMP port unreachable; the kernel rate-limits those,
// so later ones may have to wait for their timeout.)
func (c *contract) refused(t *testing.T) {
	const timeout = time.Second
	u := c.upstream(t, nil, timeout)
	b := newBurst(t, u, 20, names("refused"))
	b.submitAll(0, 1)
	b.wait(t, timeout+5*time.Second)
	first := &b.calls[0]
	b.check(t, func(cl *call) string {
		if cl == first || c.tr != UDP {
			return failed(nil, timeout/2)(cl)
		}
		return failed(nil, timeout+contractSlack)(cl)
	})
	if errors.Is(first.err, c.errs.Timeout) {
		t.Errorf("first query: %v, want the refusal", first.err)
	}
	b.once(t, timeout)
}

// A query whose connection breaks is sent once more, on a fresh
// connection, and no more: it fails with a retryable error at once, or is
// answered by the second try.
func (c *contract) retriedOnce(t *testing.T) {
	const timeout = time.Second
	for _, prefix := range []string{"break", "once"} {
		t.Run(prefix, func(t *testing.T) {
			s := c.start(t)
			u := c.upstream(t, s, 5*time.Second)
			b := newBurst(t, u, 1, names(prefix))
			b.submit(0, timeout, nil)
			b.wait(t, timeout+5*time.Second)
			cl := &b.calls[0]
			if prefix == "once" {
				b.check(t, answered)
			} else {
				b.check(t, failed(nil, timeout/2))
				if cl.err != nil && !c.errs.Retryable(cl.err) {
					t.Errorf("error %v is not retryable", cl.err)
				}
			}
			if n := s.triesOf(cl.name); n != 2 {
				t.Errorf("query sent %d times, want 2: the first try and one retry", n)
			}
			b.once(t, timeout)
		})
	}
}

// A query not answered ends with ErrTimeout at its timeout: Submit's, at
// most Options.Timeout, which a timeout of 0 or less means.
func (c *contract) timeout(t *testing.T) {
	tests := []struct {
		name    string
		option  time.Duration // Options.Timeout
		timeout time.Duration // Submit's
		want    time.Duration
	}{
		{name: "shorter than Options.Timeout", option: 2 * time.Second, timeout: 100 * time.Millisecond, want: 100 * time.Millisecond},
		{name: "zero: Options.Timeout", option: 150 * time.Millisecond, want: 150 * time.Millisecond},
		{name: "negative: Options.Timeout", option: 150 * time.Millisecond, timeout: -time.Second, want: 150 * time.Millisecond},
		{name: "capped by Options.Timeout", option: 150 * time.Millisecond, timeout: time.Hour, want: 150 * time.Millisecond},
		{name: "expired at once", option: 2 * time.Second, timeout: time.Nanosecond, want: time.Nanosecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := c.start(t)
			u := c.upstream(t, s, tt.option)
			warm := newBurst(t, u, 2, names("warm"))
			warm.submitAll(0, 2)
			warm.wait(t, 5*time.Second)
			b := newBurst(t, u, 5, names("hold"))
			b.submitAll(tt.timeout, 1)
			b.wait(t, tt.want+5*time.Second)
			b.check(t, func(cl *call) string {
				if p := failed(c.errs.Timeout, tt.want+contractSlack)(cl); p != "" {
					return p
				}
				if cl.took < tt.want*9/10 {
					return fmt.Sprintf("timed out after %v, before its timeout %v", cl.took, tt.want)
				}
				return ""
			})
			b.once(t, tt.want)
		})
	}
}

// What cannot be sent is refused at once, on the caller's goroutine.
func (c *contract) badQuery(t *testing.T) {
	s := c.start(t)
	u := c.upstream(t, s, time.Second)
	for _, q := range [][]byte{nil, make([]byte, 11), make([]byte, 65536)} {
		calls := 0
		var got error
		u.Submit(q, 0, func(_ []byte, err error) {
			calls++
			got = err
		})
		if calls != 1 || !errors.Is(got, c.errs.BadQuery) || !strings.Contains(got.Error(), u.String()) {
			t.Errorf("query of %d bytes: %d calls with %v before Submit returned, want one with ErrBadQuery naming the target", len(q), calls, got)
		}
	}
}

// The real thing: BIND 9.18, which must see every query over the
// transport.
func (c *contract) bind(t *testing.T) {
	if c.tr == DoQ {
		t.Skip("BIND 9.18 does not serve DNS over QUIC")
	}
	b := StartBIND(t, BINDOptions{})
	tg := Target{Timeout: 5 * time.Second, Conns: 2, URL: b.Do53Addr}
	switch c.tr {
	case DoH:
		tg.URL, tg.RootCAs = b.DoHURL, b.RootCAs()
	case DoT:
		tg.URL, tg.RootCAs = "tls://"+b.DoTAddr, b.RootCAs()
	case TCP:
		tg.URL = "tcp://" + b.Do53Addr
	}
	u := c.newUpstream(t, tg)
	t.Cleanup(func() { u.Close() })
	before := b.Stats(t)
	// Over DoH all at once, more than BIND's 100 streams per connection;
	// else at most 100 at a time: BIND runs one worker thread, and its UDP
	// buffer must not overflow.
	const n = 300
	inflight := 100
	if c.tr == DoH {
		inflight = n
	}
	bu := newBurst(t, u, n, func(int) string { return "foo.example.com." })
	sem := make(chan struct{}, inflight)
	for i := range n {
		sem <- struct{}{}
		bu.submit(i, 0, func(error) { <-sem })
	}
	bu.wait(t, 15*time.Second)
	bu.check(t, func(cl *call) string {
		if cl.err != nil {
			return cl.err.Error()
		}
		m := new(dns.Msg)
		if err := m.Unpack(cl.resp); err != nil {
			return err.Error()
		}
		if a, ok := firstA(m); m.Id != cl.id || !ok || a.String() != "172.16.0.10" {
			return fmt.Sprintf("ID %#x (want %#x), answer %v; want 172.16.0.10", m.Id, cl.id, m.Answer)
		}
		return ""
	})
	bu.once(t, 0)
	d := b.Stats(t).Sub(before)
	udp, tcp := uint64(0), uint64(n) // DoH and DoT count as TCP (see the package documentation)
	if c.tr == UDP {
		udp, tcp = n, 0
	}
	if d.QueriesUDP != udp || d.QueriesTCP != tcp {
		t.Errorf("BIND saw %d queries over UDP and %d over TCP, want %d and %d", d.QueriesUDP, d.QueriesTCP, udp, tcp)
	}
}

func firstA(m *dns.Msg) (net.IP, bool) {
	if len(m.Answer) != 1 {
		return nil, false
	}
	a, ok := m.Answer[0].(*dns.A)
	if !ok {
		return nil, false
	}
	return a.A, true
}

// waitUntil polls cond for at most 5 s.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting: %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}
