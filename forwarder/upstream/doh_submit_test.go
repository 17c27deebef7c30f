package upstream

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/net/http2"

	"xdoh/datapath/tlsconf"
	"xdoh/forwarder/upstream/upstreamtest"
)

// Tests of DoH.Submit beyond the contract that every Upstream meets
// (upstreamtest.RunContract, run by contract_test.go).

// submitSlack is how late after its timeout a callback may come: timer and
// goroutine scheduling on a loaded machine under the race detector.
const submitSlack = 400 * time.Millisecond

// asyncCall is one Submit and what its callback got.
type asyncCall struct {
	name  string
	id    uint16
	query []byte
	start time.Time
	calls atomic.Int32
	took  time.Duration
	resp  []byte
	err   error
}

// asyncBurst tracks many Submits to one upstream: every callback must come
// exactly once.
type asyncBurst struct {
	u       Upstream
	calls   []asyncCall
	pending sync.WaitGroup
	extra   atomic.Int32 // callbacks after the first, all queries together
}

// newAsyncBurst prepares n queries for u, named by name(i) and carrying
// distinct IDs.
func newAsyncBurst(t testing.TB, u Upstream, n int, name func(i int) string) *asyncBurst {
	t.Helper()
	b := &asyncBurst{u: u, calls: make([]asyncCall, n)}
	for i := range b.calls {
		c := &b.calls[i]
		c.name, c.id = name(i), uint16(0x8000+i*7)
		c.query = makeQuery(t, c.name, c.id)
	}
	b.pending.Add(n)
	return b
}

func numberedNames(prefix string) func(int) string {
	return func(i int) string { return fmt.Sprintf("%s%d.example.", prefix, i) }
}

// submit sends query i with timeout and then scribbles over the caller's
// copy of the query: Submit must have copied it. Safe for concurrent use
// with distinct i.
func (b *asyncBurst) submit(i int, timeout time.Duration) Canceler {
	c := &b.calls[i]
	c.start = time.Now()
	h := b.u.Submit(c.query, timeout, func(resp []byte, err error) {
		if c.calls.Add(1) > 1 {
			b.extra.Add(1)
			return
		}
		c.took = time.Since(c.start)
		c.resp, c.err = resp, err
		b.pending.Done()
	})
	for j := range c.query {
		c.query[j] = 0xFF
	}
	return h
}

// wait waits at most within for every callback's first call.
func (b *asyncBurst) wait(t testing.TB, within time.Duration) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		b.pending.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(within):
		var missing []string
		for i := range b.calls {
			if b.calls[i].calls.Load() == 0 {
				missing = append(missing, b.calls[i].name)
			}
		}
		t.Fatalf("%d of %d callbacks not called within %v, e.g. %v",
			len(missing), len(b.calls), within, missing[:min(len(missing), 5)])
	}
}

// deadline is when the last query's timeout ends.
func (b *asyncBurst) deadline(timeout time.Duration) time.Time {
	var last time.Time
	for i := range b.calls {
		if s := b.calls[i].start; s.After(last) {
			last = s
		}
	}
	return last.Add(timeout)
}

// settled collects the bursts of parallel subtests, so that their parent
// waits once for every deadline to pass before checking that no callback
// came twice.
type settled struct {
	mu     sync.Mutex
	bursts map[string]*asyncBurst
	last   time.Time
}

func (s *settled) add(t testing.TB, b *asyncBurst, timeout time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.bursts == nil {
		s.bursts = make(map[string]*asyncBurst)
	}
	s.bursts[t.Name()] = b
	if d := b.deadline(timeout); d.After(s.last) {
		s.last = d
	}
}

func (s *settled) check(t testing.TB) {
	t.Helper()
	time.Sleep(time.Until(s.last.Add(50 * time.Millisecond)))
	for name, b := range s.bursts {
		if n := b.extra.Load(); n != 0 {
			t.Errorf("%s: %d callbacks called more than once", name, n)
		}
	}
}

func (b *asyncBurst) checkOnce(t testing.TB) {
	t.Helper()
	if n := b.extra.Load(); n != 0 {
		t.Errorf("%d callbacks called more than once", n)
	}
}

// expect says what a query's callback must get.
type expect struct {
	answer bool   // the test servers' answer, with the query's ID
	maybe  bool   // either that answer or the error below
	is     error  // else an error wrapping this (nil: any error)
	text   string // and mentioning this
}

var answered = expect{answer: true}

func always(e expect) func(string) expect { return func(string) expect { return e } }

// check checks every callback against want and its timing against timeout.
func (b *asyncBurst) check(t testing.TB, timeout time.Duration, want func(name string) expect) {
	t.Helper()
	bad := 0
	var slowest time.Duration
	var sample error
	for i := range b.calls {
		c := &b.calls[i]
		slowest = max(slowest, c.took)
		if sample == nil {
			sample = c.err
		}
		if p := c.problem(want(c.name), timeout, b.u.String()); p != "" {
			if bad < 5 {
				t.Errorf("%s: %s", c.name, p)
			}
			bad++
		}
	}
	if bad > 5 {
		t.Errorf("... %d problems in all", bad)
	}
	t.Logf("%d queries, slowest callback after %v (timeout %v); first error: %v", len(b.calls), slowest, timeout, sample)
}

func (c *asyncCall) problem(e expect, timeout time.Duration, target string) string {
	if c.took > timeout+submitSlack {
		return fmt.Sprintf("callback after %v, timeout %v (error %v)", c.took, timeout, c.err)
	}
	if e.answer || e.maybe && c.err == nil {
		if c.err != nil {
			return fmt.Sprintf("error %v, want an answer", c.err)
		}
		return answerProblem(c.resp, c.name, c.id)
	}
	switch {
	case c.err == nil:
		return "answered, want an error"
	case c.resp != nil:
		return fmt.Sprintf("a response along with error %v", c.err)
	case e.is != nil && !errors.Is(c.err, e.is):
		return fmt.Sprintf("error %v, want %v", c.err, e.is)
	case e.text != "" && !strings.Contains(c.err.Error(), e.text):
		return fmt.Sprintf("error %v, want one mentioning %q", c.err, e.text)
	case !strings.Contains(c.err.Error(), target):
		return fmt.Sprintf("error %q does not name the target", c.err)
	case errors.Is(c.err, ErrTimeout) && c.took < timeout*9/10:
		return fmt.Sprintf("timed out after %v, before its timeout %v", c.took, timeout)
	}
	return ""
}

// answerProblem is checkAnswer for many answers: it describes what is wrong
// with resp, or returns "".
func answerProblem(resp []byte, name string, id uint16) string {
	m := new(dns.Msg)
	if err := m.Unpack(resp); err != nil {
		return fmt.Sprintf("unpacking response: %v", err)
	}
	if m.Id != id {
		return fmt.Sprintf("response ID %#x, want %#x", m.Id, id)
	}
	if len(m.Question) != 1 || m.Question[0].Name != name {
		return fmt.Sprintf("response question %v", m.Question)
	}
	if len(m.Answer) != 1 {
		return fmt.Sprintf("%d answers, want 1", len(m.Answer))
	}
	if a, ok := m.Answer[0].(*dns.A); !ok || !a.A.Equal(upstreamtest.IPFor(name)) {
		return fmt.Sprintf("answer %v, want %v", m.Answer[0], upstreamtest.IPFor(name))
	}
	return ""
}

// warmUp connects every slot of u, so that Submit takes the fast path.
func warmUp(t testing.TB, u *DoH) {
	t.Helper()
	waitFor(t, "every connection up", func() bool {
		u.pool.prewarm() // again after a failed dial
		for i := range u.pool.slots {
			if u.pool.usable(&u.pool.slots[i]) == nil {
				return false
			}
		}
		return true
	})
}

func TestDoHSubmitAnswer(t *testing.T) {
	srv := upstreamtest.StartDoHServer(t, true)
	u := newTestDoH(t, srv.URL+"/dns-query", Options{Conns: 1})
	// A query of 40 KB: DATA frames of at most 16 KB each.
	big := new(dns.Msg)
	big.SetQuestion("MiXeD.example.", dns.TypeA)
	big.Id = 0xBEEF
	txt := &dns.TXT{Hdr: dns.RR_Header{Name: "MiXeD.example.", Rrtype: dns.TypeTXT, Class: dns.ClassINET}}
	for range 160 {
		txt.Txt = append(txt.Txt, strings.Repeat("x", 250))
	}
	big.Extra = append(big.Extra, txt)
	bigQuery, err := big.Pack()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		warm  bool
		query []byte
	}{
		{name: "no connection yet"}, // waits in the pool's queue for the dial
		{name: "connection ready", warm: true},
		{name: "query over several DATA frames", warm: true, query: bigQuery},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.warm {
				warmUp(t, u)
			}
			q := tt.query
			if q == nil {
				q = makeQuery(t, "MiXeD.example.", 0xBEEF)
			}
			type result struct {
				resp []byte
				err  error
			}
			got := make(chan result, 2)
			u.Submit(q, 0, func(resp []byte, err error) { got <- result{resp, err} })
			r := <-got
			if r.err != nil {
				t.Fatal(r.err)
			}
			checkAnswer(t, r.resp, "MiXeD.example.", 0xBEEF)
			if q[0] != 0xBE || q[1] != 0xEF {
				t.Error("Submit modified the caller's query")
			}
			select {
			case r := <-got:
				t.Fatalf("second callback: %v", r.err)
			case <-time.After(20 * time.Millisecond):
			}
		})
	}
}

// Faults of servers and the network, each met by our client and by the
// reference client on net/http and http2.Transport (refDoH, as subtests
// "ours" and "reference"): both must end every query by its deadline, and
// with the same class of error unless the case says why the reference
// legitimately differs (ref). The checks of the server afterwards are of
// our connection handling and run for ours only.
func TestDoHSubmitFaults(t *testing.T) {
	const timeout = 300 * time.Millisecond
	// A server that answers nothing on connection 1 from stream 21 on,
	// and with fault at stream 21 itself; other connections answer.
	faultAt21 := func(fault func(fc *upstreamtest.FakeConn, id uint32, q *dns.Msg)) func(*upstreamtest.FakeConn, int, uint32, *dns.Msg) {
		return func(fc *upstreamtest.FakeConn, conn int, id uint32, q *dns.Msg) {
			switch {
			case conn == 1 && id == 21:
				fault(fc, id, q)
			case conn == 1 && id > 21:
			default:
				fc.Respond(id, q)
			}
		}
	}
	wantConns := func(f *upstreamtest.FakeH2, lo, hi int32) func(*testing.T) {
		return func(t *testing.T) {
			if n := f.NConn.Load(); n < lo || n > hi {
				t.Errorf("%d connections, want %d to %d", n, lo, hi)
			}
		}
	}
	otherCA, err := tlsconf.NewPKI("127.0.0.1", "localhost")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		// start starts the server and returns the target, the options and
		// a check of the server afterwards (may be nil).
		start func(t *testing.T) (url string, opts Options, after func(*testing.T))
		warm  bool // every connection up before the burst
		n     int
		qname func(i int) string // default q<i>.example.
		want  func(qname string) expect
		// ref, if set, is what the reference must get instead of want,
		// and refWhy says why it may differ.
		ref    func(qname string) expect
		refWhy string
	}{
		{
			name: "connection refused",
			start: func(t *testing.T) (string, Options, func(*testing.T)) {
				return "https://" + upstreamtest.ClosedPort(t) + "/dns-query", Options{}, nil
			},
			want: always(expect{text: "connection refused"}),
		},
		{
			name: "TCP accepted, TLS never answered",
			start: func(t *testing.T) (string, Options, func(*testing.T)) {
				return upstreamtest.StartTCPSink(t, false).URL(), Options{}, nil
			},
			want: always(expect{is: ErrTimeout}),
		},
		{
			name: "TCP reset at accept",
			start: func(t *testing.T) (string, Options, func(*testing.T)) {
				return upstreamtest.StartTCPSink(t, true).URL(), Options{}, nil
			},
			want:   always(expect{text: "dialing"}),
			ref:    always(expect{}),
			refWhy: "the same failure in net/http's words, which do not say dialing",
		},
		{
			name: "streams never answered",
			start: func(t *testing.T) (string, Options, func(*testing.T)) {
				f := upstreamtest.StartFakeH2(t, nil, func(*upstreamtest.FakeConn, int, uint32, *dns.Msg) {})
				return f.URL(), Options{Conns: 1}, wantConns(f, 1, 1) // PINGs are answered
			},
			warm: true,
			want: always(expect{is: ErrTimeout}),
		},
		{
			name: "GOAWAY mid-burst, one connection",
			start: func(t *testing.T) (string, Options, func(*testing.T)) {
				f := upstreamtest.StartFakeH2(t, nil, faultAt21(func(fc *upstreamtest.FakeConn, id uint32, q *dns.Msg) {
					fc.GoAway(id, http2.ErrCodeNo)
					fc.Respond(id, q)
				}))
				return f.URL(), Options{Conns: 1}, wantConns(f, 2, 2)
			},
			warm: true,
			n:    60,
			want: always(answered),
		},
		{
			name: "GOAWAY mid-burst, two connections",
			start: func(t *testing.T) (string, Options, func(*testing.T)) {
				f := upstreamtest.StartFakeH2(t, nil, faultAt21(func(fc *upstreamtest.FakeConn, id uint32, q *dns.Msg) {
					fc.GoAway(id, http2.ErrCodeNo)
					fc.Respond(id, q)
				}))
				return f.URL(), Options{Conns: 2}, wantConns(f, 2, 3)
			},
			warm: true,
			n:    80,
			want: always(answered),
		},
		{
			// Graceful shutdown: streams in flight are still answered.
			name: "GOAWAY with the last stream ID possible",
			start: func(t *testing.T) (string, Options, func(*testing.T)) {
				f := upstreamtest.StartFakeH2(t, nil, func(fc *upstreamtest.FakeConn, conn int, id uint32, q *dns.Msg) {
					if conn == 1 && id == 21 {
						fc.GoAway(1<<31-1, http2.ErrCodeNo)
					}
					fc.Respond(id, q)
				})
				return f.URL(), Options{Conns: 1}, wantConns(f, 1, 2)
			},
			warm: true,
			n:    60,
			want: always(answered),
		},
		{
			name: "query larger than the server's stream window",
			start: func(t *testing.T) (string, Options, func(*testing.T)) {
				f := upstreamtest.StartFakeH2(t, []http2.Setting{{ID: http2.SettingInitialWindowSize, Val: 20}},
					func(fc *upstreamtest.FakeConn, conn int, id uint32, q *dns.Msg) { fc.Respond(id, q) })
				return f.URL(), Options{Conns: 1}, wantConns(f, 1, 1)
			},
			warm:   true,
			want:   always(expect{is: ErrBadQuery, text: "stream window"}),
			ref:    always(expect{maybe: true, is: ErrTimeout}),
			refWhy: "ours waits for the server's SETTINGS and sends a query's DATA with its HEADERS or not at all, so it refuses one the server's window can never take; http2.Transport sends its first requests before the server's SETTINGS arrive, with the default window, and waits for more window for later ones",
		},
		{
			name: "GOAWAY on every connection",
			start: func(t *testing.T) (string, Options, func(*testing.T)) {
				f := upstreamtest.StartFakeH2(t, nil, func(fc *upstreamtest.FakeConn, conn int, id uint32, q *dns.Msg) {
					fc.GoAway(0, http2.ErrCodeNo)
				})
				return f.URL(), Options{Conns: 1}, nil
			},
			warm:   true,
			want:   always(expect{is: ErrConnClosed}),
			ref:    always(expect{}),
			refWhy: "ours retries a query once and then fails it; http2.Transport retries up to 6 times with a backoff of 1s and more, so the deadline usually ends it (ErrTimeout), or its last GOAWAY",
		},
		{
			name: "RST_STREAM",
			start: func(t *testing.T) (string, Options, func(*testing.T)) {
				var reqs atomic.Int32
				f := upstreamtest.StartFakeH2(t, nil, func(fc *upstreamtest.FakeConn, conn int, id uint32, q *dns.Msg) {
					reqs.Add(1)
					fc.RST(id, http2.ErrCodeInternal)
				})
				return f.URL(), Options{Conns: 1}, func(t *testing.T) {
					wantConns(f, 1, 1)(t)
					if n := reqs.Load(); n != 40 {
						t.Errorf("server saw %d requests, want 40: a reset stream is not retried", n)
					}
				}
			},
			warm: true,
			want: always(expect{is: ErrStreamReset}),
		},
		{
			name: "REFUSED_STREAM once per query",
			start: func(t *testing.T) (string, Options, func(*testing.T)) {
				var seen sync.Map
				var reqs atomic.Int32
				f := upstreamtest.StartFakeH2(t, nil, func(fc *upstreamtest.FakeConn, conn int, id uint32, q *dns.Msg) {
					reqs.Add(1)
					if _, again := seen.LoadOrStore(q.Question[0].Name, true); !again {
						fc.RST(id, http2.ErrCodeRefusedStream)
						return
					}
					fc.Respond(id, q)
				})
				return f.URL(), Options{Conns: 1}, func(t *testing.T) {
					wantConns(f, 1, 1)(t)
					if n := reqs.Load(); n != 80 {
						t.Errorf("server saw %d requests, want 80: each query retried once", n)
					}
				}
			},
			warm: true,
			want: always(answered),
		},
		{
			name: "connection reset mid-burst",
			start: func(t *testing.T) (string, Options, func(*testing.T)) {
				f := upstreamtest.StartFakeH2(t, nil, faultAt21(func(fc *upstreamtest.FakeConn, id uint32, q *dns.Msg) { fc.ResetTCP() }))
				return f.URL(), Options{Conns: 2}, wantConns(f, 2, 3)
			},
			warm:   true,
			n:      60,
			want:   always(answered),
			ref:    always(expect{maybe: true, is: ErrConnClosed}),
			refWhy: "ours retries a query whose connection broke once on another; http2.Transport retries only requests it has not sent yet",
		},
		{
			name: "HTTP 404 with a DNS body",
			start: func(t *testing.T) (string, Options, func(*testing.T)) {
				return fakeH2Responding(t, func(q *dns.Msg) (int, string, []byte) {
					return 404, upstreamtest.DNSMessage, upstreamtest.MustPack(upstreamtest.AnswerFor(q))
				}), Options{}, nil
			},
			warm: true,
			want: always(expect{is: ErrBadResponse, text: "404"}),
		},
		{
			name: "wrong content type",
			start: func(t *testing.T) (string, Options, func(*testing.T)) {
				return fakeH2Responding(t, func(q *dns.Msg) (int, string, []byte) {
					return 200, "application/json", upstreamtest.MustPack(upstreamtest.AnswerFor(q))
				}), Options{}, nil
			},
			warm: true,
			want: always(expect{is: ErrBadResponse, text: "content-type"}),
		},
		{
			name: "content type with parameters",
			start: func(t *testing.T) (string, Options, func(*testing.T)) {
				return fakeH2Responding(t, func(q *dns.Msg) (int, string, []byte) {
					return 200, "Application/DNS-Message; charset=binary", upstreamtest.MustPack(upstreamtest.AnswerFor(q))
				}), Options{}, nil
			},
			warm: true,
			want: always(answered),
		},
		{
			name: "no content type",
			start: func(t *testing.T) (string, Options, func(*testing.T)) {
				return fakeH2Responding(t, func(q *dns.Msg) (int, string, []byte) {
					return 200, "", upstreamtest.MustPack(upstreamtest.AnswerFor(q))
				}), Options{}, nil
			},
			warm: true,
			want: always(expect{is: ErrBadResponse}),
		},
		{
			name: "body larger than a DNS message",
			start: func(t *testing.T) (string, Options, func(*testing.T)) {
				return fakeH2Responding(t, func(q *dns.Msg) (int, string, []byte) {
					return 200, upstreamtest.DNSMessage, append(upstreamtest.MustPack(upstreamtest.AnswerFor(q)), make([]byte, maxResponseSize)...)
				}), Options{}, nil
			},
			warm: true,
			n:    8,
			want: always(expect{is: ErrBadResponse, text: "exceeds"}),
		},
		{
			name: "empty body",
			start: func(t *testing.T) (string, Options, func(*testing.T)) {
				return fakeH2Responding(t, func(q *dns.Msg) (int, string, []byte) {
					return 200, upstreamtest.DNSMessage, nil
				}), Options{}, nil
			},
			warm: true,
			want: always(expect{is: ErrBadResponse}),
		},
		{
			name: "HTTP 500",
			start: func(t *testing.T) (string, Options, func(*testing.T)) {
				return upstreamtest.StartDoHServer(t, true).URL + "/dns-query", Options{}, nil
			},
			warm:  true,
			qname: func(int) string { return "status500.example." },
			want:  always(expect{is: ErrBadResponse, text: "500"}),
		},
		{
			name: "non-DNS body",
			start: func(t *testing.T) (string, Options, func(*testing.T)) {
				return upstreamtest.StartDoHServer(t, true).URL + "/dns-query", Options{}, nil
			},
			warm:  true,
			qname: func(int) string { return "garbage.example." },
			want:  always(expect{is: ErrBadResponse}),
		},
		{
			name: "good and bad answers interleaved on one connection",
			start: func(t *testing.T) (string, Options, func(*testing.T)) {
				srv := upstreamtest.StartDoHServer(t, true)
				return srv.URL + "/dns-query", Options{Conns: 1}, func(t *testing.T) {
					if n := srv.Conns.Load(); n != 1 {
						t.Errorf("%d connections, want 1", n)
					}
				}
			},
			warm: true,
			n:    100,
			qname: func(i int) string {
				return [...]string{"ok%d.example.", "status500.example.", "garbage.example.",
					"texttype.example.", "otherquestion.example.", "slow.example."}[i%6]
			},
			want: func(name string) expect {
				switch name {
				case "status500.example.", "garbage.example.", "texttype.example.", "otherquestion.example.":
					return expect{is: ErrBadResponse}
				case "slow.example.":
					return expect{is: ErrTimeout}
				}
				return answered
			},
		},
		{
			// The reader and the timer race for every query.
			name: "answers around the deadline",
			start: func(t *testing.T) (string, Options, func(*testing.T)) {
				late := upstreamtest.NewLater()
				var n atomic.Int64
				f := upstreamtest.StartFakeH2(t, nil, func(fc *upstreamtest.FakeConn, conn int, id uint32, q *dns.Msg) {
					delay := timeout - 30*time.Millisecond + time.Duration(n.Add(1)%61)*time.Millisecond
					late.AfterFunc(delay, func() {
						fc.Respond(id, q)
					})
				})
				t.Cleanup(late.Wait)
				return f.URL(), Options{Conns: 1}, wantConns(f, 1, 1)
			},
			warm: true,
			n:    100,
			want: always(expect{maybe: true, is: ErrTimeout}),
		},
		{
			name: "untrusted CA",
			start: func(t *testing.T) (string, Options, func(*testing.T)) {
				return upstreamtest.StartDoHServer(t, true).URL + "/dns-query", Options{RootCAs: otherCA.Pool}, nil
			},
			want: always(expect{text: "certificate"}),
		},
		{
			name: "wrong certificate name",
			start: func(t *testing.T) (string, Options, func(*testing.T)) {
				return upstreamtest.StartDoHServer(t, true).URL + "/dns-query", Options{ServerName: "wrong.example"}, nil
			},
			want: always(expect{text: "certificate"}),
		},
	}
	clients := []struct {
		name string
		new  func(t *testing.T, url string, opts Options, warm bool) Upstream
	}{
		{"ours", func(t *testing.T, url string, opts Options, warm bool) Upstream {
			u := newTestDoH(t, url, opts)
			if warm {
				warmUp(t, u)
			}
			return u
		}},
		// The reference dials with its first query: not warmed up.
		{"reference", func(t *testing.T, url string, opts Options, _ bool) Upstream { return newRefDoH(t, url, opts) }},
	}
	var all settled
	t.Run("group", func(t *testing.T) {
		for _, tt := range tests {
			for _, cl := range clients {
				t.Run(tt.name+"/"+cl.name, func(t *testing.T) {
					t.Parallel()
					url, opts, after := tt.start(t)
					opts.Timeout = 2 * time.Second // Submit's timeout is the shorter one
					u := cl.new(t, url, opts, tt.warm)
					want := tt.want
					if _, ok := u.(*refDoH); ok {
						after = nil
						if tt.ref != nil {
							t.Logf("the reference may differ: %s", tt.refWhy)
							want = tt.ref
						}
					}
					runFaultBurst(t, u, tt.n, tt.qname, timeout, want, &all)
					if after != nil {
						after(t)
					}
				})
			}
		}
	})
	all.check(t)
}

// fakeH2Responding starts a FakeH2 that answers every request with what
// respond returns, and returns its URL.
func fakeH2Responding(t *testing.T, respond func(q *dns.Msg) (status int, contentType string, body []byte)) string {
	return upstreamtest.StartFakeH2(t, nil, func(fc *upstreamtest.FakeConn, _ int, id uint32, q *dns.Msg) {
		status, contentType, body := respond(q)
		fc.RespondWith(id, status, contentType, body)
	}).URL()
}

// runFaultBurst submits n queries (default 40) named by qname (default
// q<i>.example.; a %d in it is replaced by i) with timeout, and checks each
// callback against want.
func runFaultBurst(t *testing.T, u Upstream, n int, qname func(int) string, timeout time.Duration, want func(string) expect, all *settled) {
	t.Helper()
	if n == 0 {
		n = 40
	}
	if qname == nil {
		qname = numberedNames("q")
	}
	b := newAsyncBurst(t, u, n, func(i int) string {
		s := qname(i)
		if strings.Contains(s, "%d") {
			s = fmt.Sprintf(s, i)
		}
		return s
	})
	for i := range n {
		b.submit(i, timeout)
	}
	b.wait(t, timeout+5*time.Second)
	b.check(t, timeout, want)
	all.add(t, b, timeout)
}

// An expired open stream is reset, and its connection stays in use.
func TestDoHSubmitExpiryResetsStream(t *testing.T) {
	srv := upstreamtest.StartDoHServer(t, true)
	u := newTestDoH(t, srv.URL+"/dns-query", Options{Conns: 1})
	warmUp(t, u)
	b := newAsyncBurst(t, u, 1, func(int) string { return "slow.example." })
	b.submit(0, 100*time.Millisecond)
	b.wait(t, 5*time.Second)
	b.check(t, 100*time.Millisecond, always(expect{is: ErrTimeout}))
	select {
	case <-srv.Canceled: // the server saw our RST_STREAM
	case <-time.After(5 * time.Second):
		t.Fatal("server request not cancelled: no RST_STREAM")
	}
	b = newAsyncBurst(t, u, 3, numberedNames("after"))
	for i := range b.calls {
		b.submit(i, 0)
	}
	b.wait(t, 5*time.Second)
	b.check(t, u.timeout, always(answered))
	if n := srv.Conns.Load(); n != 1 {
		t.Errorf("%d connections, want 1", n)
	}
}

// A stream that timed out makes its connection suspect: the PING that
// follows goes unanswered, the connection is replaced, and a query sent to
// it meanwhile is retried on the new one.
func TestDoHSubmitTimeoutReplacesSilentConnection(t *testing.T) {
	f := upstreamtest.StartFakeH2(t, nil, func(fc *upstreamtest.FakeConn, conn int, id uint32, q *dns.Msg) {
		if conn > 1 {
			fc.Respond(id, q)
		}
	})
	f.SetAckPing(func(conn, n int) bool { return conn > 1 || n == 1 })
	u := newTestDoH(t, f.URL(), Options{Conns: 1, Timeout: 300 * time.Millisecond, PingTimeout: 50 * time.Millisecond,
		PingInterval: -1, Prewarm: true})
	waitFor(t, "handshake PING answered", func() bool { return u.RTT() > 0 })

	stuck := newAsyncBurst(t, u, 1, func(int) string { return "stuck.example." })
	stuck.submit(0, 0)
	stuck.wait(t, 5*time.Second)
	stuck.check(t, u.timeout, always(expect{is: ErrTimeout}))

	next := newAsyncBurst(t, u, 5, numberedNames("next"))
	for i := range next.calls {
		next.submit(i, 0)
	}
	next.wait(t, 5*time.Second)
	next.check(t, u.timeout, always(answered))
	if n := f.NConn.Load(); n != 2 {
		t.Errorf("%d connections, want 2: the silent one must be replaced", n)
	}
}

// A query whose connection breaks or goes away is sent again once (the
// package documentation, and complete's request.retried), however the
// retry finds the pool: with no other connection ready it waits in the
// pool's queue for a dial, and is not retried again from there.
func TestDoHSubmitRetriedOnce(t *testing.T) {
	tests := []struct {
		name  string
		conns int
		fault func(fc *upstreamtest.FakeConn)
	}{
		{name: "GOAWAY, other connection ready", conns: 2, fault: func(fc *upstreamtest.FakeConn) { fc.GoAway(0, http2.ErrCodeNo) }},
		{name: "GOAWAY, retry waits for a dial", conns: 1, fault: func(fc *upstreamtest.FakeConn) { fc.GoAway(0, http2.ErrCodeNo) }},
		{name: "connection reset, other connection ready", conns: 2, fault: (*upstreamtest.FakeConn).ResetTCP},
		{name: "connection reset, retry waits for a dial", conns: 1, fault: (*upstreamtest.FakeConn).ResetTCP},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var sends atomic.Int32
			f := upstreamtest.StartFakeH2(t, nil, func(fc *upstreamtest.FakeConn, conn int, id uint32, q *dns.Msg) {
				sends.Add(1)
				tt.fault(fc)
			})
			u := newTestDoH(t, f.URL(), Options{Conns: tt.conns})
			warmUp(t, u)
			b := newAsyncBurst(t, u, 1, func(int) string { return "twice.example." })
			b.submit(0, time.Second)
			b.wait(t, 5*time.Second)
			b.check(t, time.Second, always(expect{is: ErrConnClosed}))
			if n := sends.Load(); n != 2 {
				t.Errorf("query sent %d times over %d connections, want 2: the first try and one retry", n, f.NConn.Load())
			}
		})
	}
}

// gatedConn holds writes until its gate is open.
type gatedConn struct {
	net.Conn
	gate <-chan struct{}
}

func (c *gatedConn) Write(p []byte) (int, error) {
	<-c.gate
	return c.Conn.Write(p)
}

// Queries waiting for a dial must not fail because the new connection went
// away before they were handed to it: none of them was sent, and there is
// time to dial again. (The old blocking path failed every one of them at
// once with "connection to …: upstream connection closed".)
//
// Unforced, this happens when the first waiter sent gets GOAWAY, or the
// server drops the fresh connection, before the others are handed out.
// Here the order is forced: the dial is held before its TLS handshake until
// the queries wait, and the slot's mutex keeps it from publishing the
// connection until the server has closed it.
func TestDoHSubmitDialWaitersSurviveDeadConnection(t *testing.T) {
	f := upstreamtest.StartFakeH2(t, nil, func(fc *upstreamtest.FakeConn, conn int, id uint32, q *dns.Msg) { fc.Respond(id, q) })
	u := newTestDoH(t, f.URL(), Options{Conns: 1, Timeout: 2 * time.Second})
	gate := make(chan struct{})
	var dials atomic.Int32
	u.wrapConn = func(nc net.Conn) net.Conn {
		if dials.Add(1) == 1 {
			return &gatedConn{Conn: nc, gate: gate}
		}
		return nc
	}
	const n = 20
	b := newAsyncBurst(t, u, n, numberedNames("w"))
	for i := range n {
		b.submit(i, 0)
	}
	waitFor(t, "queries waiting for the dial", func() bool { return u.pool.nwait.Load() == n })

	slot := &u.pool.slots[0]
	slot.mu.Lock()
	close(gate)
	var conn *h2Conn
	waitFor(t, "connection up", func() bool {
		u.mu.Lock()
		defer u.mu.Unlock()
		for c := range u.conns {
			conn = c
		}
		return conn != nil
	})
	f.CloseConn(1) // the server drops the fresh connection
	waitFor(t, "connection closed", conn.closing.Load)
	slot.mu.Unlock()

	b.wait(t, 5*time.Second)
	b.check(t, u.timeout, always(answered))
	if n := f.NConn.Load(); n != 2 {
		t.Errorf("%d connections, want 2", n)
	}
}

// Close with queries in flight: each callback is still called exactly
// once, at Close and not at the queries' timeouts. (Streams open at Close
// are the contract's case, CloseInFlight.)
func TestDoHSubmitCloseInFlight(t *testing.T) {
	const n, timeout = 100, 500 * time.Millisecond
	tests := []struct {
		name string
		// start returns the target, options and when the burst is where
		// the case wants it when Close comes.
		start func(t *testing.T) (url string, opts Options, ready func() bool)
		warm  bool
		want  expect
	}{
		{
			name: "waiting for a free stream",
			start: func(t *testing.T) (string, Options, func() bool) {
				var reqs atomic.Int32
				f := upstreamtest.StartFakeH2(t, []http2.Setting{{ID: http2.SettingMaxConcurrentStreams, Val: 4}},
					func(*upstreamtest.FakeConn, int, uint32, *dns.Msg) { reqs.Add(1) })
				return f.URL(), Options{Conns: 1}, func() bool { return reqs.Load() == 4 }
			},
			warm: true,
			want: expect{is: ErrClosed},
		},
		{
			name: "answers arriving",
			start: func(t *testing.T) (string, Options, func() bool) {
				late := upstreamtest.NewLater()
				var answers, reqs atomic.Int32
				f := upstreamtest.StartFakeH2(t, nil, func(fc *upstreamtest.FakeConn, conn int, id uint32, q *dns.Msg) {
					late.AfterFunc(time.Duration(reqs.Add(1)%40)*time.Millisecond, func() {
						fc.Respond(id, q)
						answers.Add(1)
					})
				})
				t.Cleanup(late.Wait)
				return f.URL(), Options{Conns: 2}, func() bool { return answers.Load() >= 30 }
			},
			warm: true,
			want: expect{maybe: true, is: ErrClosed},
		},
		{
			name: "waiting for a dial",
			start: func(t *testing.T) (string, Options, func() bool) {
				s := upstreamtest.StartTCPSink(t, false)
				return s.URL(), Options{Conns: 2}, func() bool { return s.Accepted.Load() == 2 }
			},
			want: expect{is: ErrClosed}, // Close fails the queue
		},
	}
	var all settled
	t.Run("group", func(t *testing.T) {
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				t.Parallel()
				url, opts, ready := tt.start(t)
				opts.Timeout = 10 * time.Second
				u := newTestDoH(t, url, opts)
				if tt.warm {
					warmUp(t, u)
				}
				b := newAsyncBurst(t, u, n, numberedNames("inflight"))
				for i := range n {
					b.submit(i, timeout)
				}
				waitFor(t, "queries in flight", ready)
				start := time.Now()
				u.Close()
				closeTook := time.Since(start)
				b.wait(t, 5*time.Second)
				if el := time.Since(start); el > timeout/2 {
					t.Errorf("last callback %v after Close (Close took %v), want them at Close", el, closeTook)
				}
				b.check(t, timeout, always(tt.want))
				for i := range b.calls {
					if errors.Is(b.calls[i].err, ErrTimeout) {
						t.Fatalf("%s: %v: want the error of Close, not of the timeout", b.calls[i].name, b.calls[i].err)
					}
				}
				all.add(t, b, timeout)
			})
		}
	})
	all.check(t)
}

// BenchmarkDoHSubmit keeps 64 queries in flight on one connection to the
// raw framer server (compare BenchmarkDoHExchangeFake, one at a time, and
// BenchmarkDoHExchangeParallel). Allocations include the in-process
// server's.
func BenchmarkDoHSubmit(b *testing.B) {
	f := upstreamtest.StartFakeH2(b, nil, func(fc *upstreamtest.FakeConn, conn int, id uint32, q *dns.Msg) { fc.Respond(id, q) })
	u := newTestDoH(b, f.URL(), Options{Conns: 1, Timeout: 10 * time.Second})
	warmUp(b, u)
	q := makeQuery(b, "bench.example.", 0x1234)
	submitInFlight(b, u, q)
}
