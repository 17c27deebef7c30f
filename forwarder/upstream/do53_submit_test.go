package upstream

import (
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"xdoh/forwarder/upstream/upstreamtest"
)

// Tests of Do53.Submit beyond the contract that every Upstream meets
// (upstreamtest.RunContract, run by contract_test.go). They reuse the
// bookkeeping of doh_submit_test.go (asyncBurst, expect, settled): every
// callback must come exactly once, within its timeout plus submitSlack,
// with the expected outcome.

// do53Burst is an asyncBurst whose queries go to a Do53 upstream.
type do53Burst struct {
	*asyncBurst
	u *Do53
}

func newDo53Burst(t testing.TB, u *Do53, n int, name func(i int) string) *do53Burst {
	t.Helper()
	return &do53Burst{asyncBurst: newAsyncBurst(t, nil, n, name), u: u}
}

// callback returns query i's done. It records the first call, counts any
// further one, and then runs then (if not nil) on the callback's goroutine.
func (b *do53Burst) callback(i int, then func(resp []byte, err error)) func([]byte, error) {
	c := &b.calls[i]
	return func(resp []byte, err error) {
		if c.calls.Add(1) > 1 {
			b.extra.Add(1)
			return
		}
		c.took = time.Since(c.start)
		c.resp, c.err = resp, err
		if then != nil {
			then(resp, err)
		}
		b.pending.Done()
	}
}

// submit sends query i with timeout and then scribbles over the caller's
// copy of the query: Submit must have copied it. Safe for concurrent use
// with distinct i.
func (b *do53Burst) submit(i int, timeout time.Duration) {
	c := &b.calls[i]
	c.start = time.Now()
	b.u.Submit(c.query, timeout, b.callback(i, nil))
	for j := range c.query {
		c.query[j] = 0xFF
	}
}

// submitAll submits every query, from goroutines goroutines at once.
func (b *do53Burst) submitAll(timeout time.Duration, goroutines int) {
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			for i := g; i < len(b.calls); i += goroutines {
				b.submit(i, timeout)
			}
		})
	}
	wg.Wait()
}

// check is asyncBurst.check for a Do53 target.
func (b *do53Burst) check(t testing.TB, timeout time.Duration, want func(name string) expect) {
	t.Helper()
	bad, ok := 0, 0
	var sample error
	for i := range b.calls {
		c := &b.calls[i]
		if c.err == nil {
			ok++
		} else if sample == nil {
			sample = c.err
		}
		if p := c.problem(want(c.name), timeout, b.u.target); p != "" {
			if bad < 5 {
				t.Errorf("%s: %s", c.name, p)
			}
			bad++
		}
	}
	if bad > 5 {
		t.Errorf("... %d problems in all", bad)
	}
	t.Logf("%d queries, %d answered, slowest callback after %v (timeout %v); first error: %v", len(b.calls), ok, b.slowest(), timeout, sample)
}

func (b *do53Burst) slowest() time.Duration {
	var s time.Duration
	for i := range b.calls {
		s = max(s, b.calls[i].took)
	}
	return s
}

// warmDo53 opens every UDP socket of u unless it is TCP only, and connects
// every TCP slot (for a UDP target, where truncated answers go), so that
// Submit finds them ready.
func warmDo53(t testing.TB, u *Do53) {
	t.Helper()
	if !u.tcpOnly {
		for i := range u.udp {
			if _, err := u.udpConn(i); err != nil {
				t.Fatal(err)
			}
		}
	}
	waitFor(t, "every TCP connection up", func() bool {
		u.tcp.prewarm() // again after a failed dial
		for i := range u.tcp.slots {
			if u.tcp.usable(&u.tcp.slots[i]) == nil {
				return false
			}
		}
		return true
	})
}

func TestDo53SubmitAnswer(t *testing.T) {
	srv := upstreamtest.StartDo53Server(t)
	tests := []struct {
		name    string
		target  string
		qname   string
		answers int // 1: the standard answer, checked by checkAnswer
	}{
		{name: "UDP", target: "udp://" + srv.Addr, qname: "a.example.", answers: 1},
		{name: "bare address", target: srv.Addr, qname: "MiXeD.example.", answers: 1},
		{name: "TCP only", target: "tcp://" + srv.Addr, qname: "c.example.", answers: 1},
		{name: "truncated over UDP, retried over TCP", target: srv.Addr, qname: "big.example.", answers: 40},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u := newTestDo53(t, tt.target, Options{Conns: 1})
			for _, state := range []string{"cold", "warm"} { // no socket or connection yet, then one
				type result struct {
					resp []byte
					err  error
				}
				got := make(chan result, 2)
				q := makeQuery(t, tt.qname, 0xBEEF)
				u.Submit(q, time.Second, func(resp []byte, err error) { got <- result{resp, err} })
				var r result
				select {
				case r = <-got:
				case <-time.After(5 * time.Second):
					t.Fatalf("%s: no callback", state)
				}
				if r.err != nil {
					t.Fatalf("%s: %v", state, r.err)
				}
				if q[0] != 0xBE || q[1] != 0xEF {
					t.Errorf("%s: Submit modified the caller's query", state)
				}
				m := new(dns.Msg)
				if err := m.Unpack(r.resp); err != nil {
					t.Fatalf("%s: %v", state, err)
				}
				if m.Id != 0xBEEF || m.Truncated || len(m.Answer) != tt.answers {
					t.Errorf("%s: ID %#x TC %v, %d answers; want 0xbeef, false, %d", state, m.Id, m.Truncated, len(m.Answer), tt.answers)
				}
				if tt.answers == 1 {
					checkAnswer(t, r.resp, tt.qname, 0xBEEF)
				}
				select {
				case r := <-got:
					t.Fatalf("%s: second callback: %v", state, r.err)
				case <-time.After(20 * time.Millisecond):
				}
			}
		})
	}
}

// The ID on the wire is random, not the caller's; the answer carries the
// caller's again.
func TestDo53SubmitRandomWireID(t *testing.T) {
	const n = 200
	for _, tcp := range []bool{false, true} {
		t.Run(map[bool]string{false: "UDP", true: "TCP"}[tcp], func(t *testing.T) {
			var mu sync.Mutex
			wire := map[string]uint16{}
			record := func(q *dns.Msg) {
				mu.Lock()
				wire[q.Question[0].Name] = q.Id
				mu.Unlock()
			}
			f := upstreamtest.StartDo53Fault(t,
				func(q *dns.Msg, reply func([]byte)) { record(q); upstreamtest.UDPAnswer(q, reply) },
				func(_ *upstreamtest.Do53Fault, _ int, q *dns.Msg) upstreamtest.TCPAction {
					record(q)
					return upstreamtest.TCPAnswer
				})
			target := f.Target(tcp)
			u := newTestDo53(t, target, Options{Conns: 1})
			b := newDo53Burst(t, u, n, numberedNames("id"))
			b.submitAll(time.Second, 1)
			b.wait(t, 6*time.Second)
			b.check(t, time.Second, always(answered))
			b.checkOnce(t)
			mu.Lock()
			defer mu.Unlock()
			same := 0
			for i := range b.calls {
				c := &b.calls[i]
				if id, ok := wire[c.name]; !ok {
					t.Fatalf("%s never reached the server", c.name)
				} else if id == c.id {
					same++
				}
			}
			if same > 3 { // 200/65536 expected by chance
				t.Errorf("%d of %d queries went out with the caller's ID, want random IDs", same, n)
			}
		})
	}
}

// With sockets and connections ready, queries in flight cost no goroutine,
// and answers are matched in any order.
func TestDo53SubmitNoGoroutinePerQuery(t *testing.T) {
	const n = 200
	tests := []struct {
		name   string
		tcp    bool   // TCP only
		prefix string // "tc": truncated over UDP, so over TCP
	}{
		// UDP and TCP are the contract's (NoGoroutinePerQuery).
		{name: "truncated over UDP, then TCP", prefix: "tc"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var mu sync.Mutex
			var held []func()
			hold := func(answer func()) {
				mu.Lock()
				held = append(held, answer)
				mu.Unlock()
			}
			f := upstreamtest.StartDo53Fault(t,
				func(q *dns.Msg, reply func([]byte)) {
					if strings.HasPrefix(q.Question[0].Name, "tc") {
						upstreamtest.UDPTruncate(q, reply)
						return
					}
					hold(func() { upstreamtest.UDPAnswer(q, reply) })
				},
				func(f *upstreamtest.Do53Fault, conn int, q *dns.Msg) upstreamtest.TCPAction {
					nc := f.Conn(conn)
					hold(func() { upstreamtest.WriteFrame(nc, upstreamtest.MustPack(upstreamtest.AnswerFor(q))) })
					return upstreamtest.TCPIgnore
				})
			target := f.Target(tt.tcp)
			u := newTestDo53(t, target, Options{Conns: 1, Timeout: 10 * time.Second})
			warmDo53(t, u)
			b := newDo53Burst(t, u, n, numberedNames(tt.prefix))
			before := runtime.NumGoroutine()
			b.submitAll(0, 1)
			waitFor(t, "every query at the server", func() bool {
				mu.Lock()
				defer mu.Unlock()
				return len(held) == n
			})
			if d := runtime.NumGoroutine() - before; d > 5 {
				t.Errorf("%d more goroutines with %d queries in flight, want none per query", d, n)
			}
			mu.Lock()
			for i := len(held) - 1; i >= 0; i-- { // last asked, first answered
				held[i]()
			}
			mu.Unlock()
			b.wait(t, 10*time.Second)
			b.check(t, u.timeout, always(answered))
			b.checkOnce(t)
		})
	}
}

// Faults of servers and the network, and answers that are not answers.
func TestDo53SubmitFaults(t *testing.T) {
	const timeout = 400 * time.Millisecond
	tests := []struct {
		name string
		// start starts the server and returns the target, the options and
		// a check of the server afterwards (may be nil).
		start  func(t *testing.T) (target string, opts Options, after func(*testing.T))
		warm   bool               // sockets and connections up before the burst
		n      int                // default 40
		qname  func(i int) string // default q<i>.example.
		prompt bool               // every callback well before the timeout
		want   func(qname string) expect
	}{
		{
			name: "UDP black hole",
			start: func(t *testing.T) (string, Options, func(*testing.T)) {
				f := upstreamtest.StartDo53Fault(t, upstreamtest.UDPIgnore, nil)
				return f.Addr, Options{}, wantQueries(f, 40, 0)
			},
			want: always(expect{is: ErrTimeout}),
		},
		{
			name: "TCP accepted, nothing read",
			start: func(t *testing.T) (string, Options, func(*testing.T)) {
				return "tcp://" + upstreamtest.StartTCPSink(t, false).Addr(), Options{}, nil
			},
			want: always(expect{is: ErrTimeout}),
		},
		{
			name: "TCP queries read, never answered",
			start: func(t *testing.T) (string, Options, func(*testing.T)) {
				f := upstreamtest.StartDo53Fault(t, nil, upstreamtest.TCPIgnoreAll)
				return "tcp://" + f.Addr, Options{}, wantQueries(f, 0, 40)
			},
			want: always(expect{is: ErrTimeout}),
		},
		{
			name: "UDP port unreachable",
			start: func(t *testing.T) (string, Options, func(*testing.T)) {
				return upstreamtest.ClosedUDPPort(t), Options{}, nil
			},
			prompt: true,
			want:   always(expect{text: "refused"}),
		},
		{
			name: "UDP port unreachable, one at a time",
			start: func(t *testing.T) (string, Options, func(*testing.T)) {
				return upstreamtest.ClosedUDPPort(t), Options{}, nil
			},
			n:      1,
			prompt: true,
			want:   always(expect{text: "refused"}),
		},
		{
			name: "TCP connection refused",
			start: func(t *testing.T) (string, Options, func(*testing.T)) {
				return "tcp://" + upstreamtest.ClosedPort(t), Options{}, nil
			},
			prompt: true,
			want:   always(expect{text: "refused"}),
		},
		{
			name: "TCP reset at accept",
			start: func(t *testing.T) (string, Options, func(*testing.T)) {
				return "tcp://" + upstreamtest.StartTCPSink(t, true).Addr(), Options{}, nil
			},
			prompt: true,
			want:   always(expect{}), // the dial's error, or ErrConnClosed
		},
		{
			name: "TC over UDP, answered over TCP",
			start: func(t *testing.T) (string, Options, func(*testing.T)) {
				f := upstreamtest.StartDo53Fault(t, upstreamtest.UDPTruncate, upstreamtest.TCPAnswerAll)
				return f.Addr, Options{}, wantQueries(f, 60, 30)
			},
			n:     60,
			qname: func(i int) string { return [...]string{"tc%d.example.", "udp%d.example."}[i%2] },
			want:  always(answered),
		},
		{
			name: "TC over UDP, TCP connection ready",
			start: func(t *testing.T) (string, Options, func(*testing.T)) {
				f := upstreamtest.StartDo53Fault(t, upstreamtest.UDPTruncate, upstreamtest.TCPAnswerAll)
				return f.Addr, Options{Conns: 1}, func(t *testing.T) {
					wantQueries(f, 40, 40)(t)
					wantTCPConns(f, 1)(t)
				}
			},
			warm:  true,
			qname: func(i int) string { return fmt.Sprintf("tc%d.example.", i) },
			want:  always(answered),
		},
		{
			name: "TC over UDP, TCP never answered",
			start: func(t *testing.T) (string, Options, func(*testing.T)) {
				f := upstreamtest.StartDo53Fault(t, upstreamtest.UDPTruncate, upstreamtest.TCPIgnoreAll)
				return f.Addr, Options{}, wantQueries(f, 40, 40)
			},
			qname: func(i int) string { return fmt.Sprintf("tc%d.example.", i) },
			want:  always(expect{is: ErrTimeout}), // one deadline for both legs
		},
		{
			name: "TC over UDP, TCP refused",
			start: func(t *testing.T) (string, Options, func(*testing.T)) {
				return upstreamtest.StartDo53Fault(t, upstreamtest.UDPTruncate, nil).Addr, Options{}, nil
			},
			qname:  func(i int) string { return fmt.Sprintf("tc%d.example.", i) },
			prompt: true,
			want:   always(expect{text: "refused"}),
		},
		{
			name: "TCP connection reset with queries in flight",
			start: func(t *testing.T) (string, Options, func(*testing.T)) {
				f := upstreamtest.StartDo53Fault(t, nil, upstreamtest.FailTCPAt(20, true))
				return "tcp://" + f.Addr, Options{Conns: 1}, wantTCPConns(f, 2)
			},
			n:    60,
			want: always(answered),
		},
		{
			name: "TCP connection closed with queries in flight",
			start: func(t *testing.T) (string, Options, func(*testing.T)) {
				f := upstreamtest.StartDo53Fault(t, nil, upstreamtest.FailTCPAt(20, false))
				return "tcp://" + f.Addr, Options{Conns: 1}, wantTCPConns(f, 2)
			},
			n:    60,
			want: always(answered),
		},
		{
			name: "TC over UDP, TCP connection reset with queries in flight",
			start: func(t *testing.T) (string, Options, func(*testing.T)) {
				f := upstreamtest.StartDo53Fault(t, upstreamtest.UDPTruncate, upstreamtest.FailTCPAt(20, true))
				return f.Addr, Options{Conns: 1}, wantTCPConns(f, 2)
			},
			n:     60,
			qname: func(i int) string { return fmt.Sprintf("tc%d.example.", i) },
			want:  always(answered),
		},
		{
			name: "spoofed UDP answers first",
			start: func(t *testing.T) (string, Options, func(*testing.T)) {
				return upstreamtest.SpoofingUDPServer(t), Options{Conns: 1}, nil
			},
			n:    100,
			want: always(answered),
		},
		{
			name: "only spoofed UDP answers",
			start: func(t *testing.T) (string, Options, func(*testing.T)) {
				f := upstreamtest.StartDo53Fault(t, func(q *dns.Msg, reply func([]byte)) {
					for _, m := range upstreamtest.Spoofs(q) {
						reply(m)
					}
				}, nil)
				return f.Addr, Options{Conns: 1}, nil
			},
			want: always(expect{is: ErrTimeout}),
		},
		{
			name: "spoofed TCP answers first",
			start: func(t *testing.T) (string, Options, func(*testing.T)) {
				f := upstreamtest.StartDo53Fault(t, nil, func(f *upstreamtest.Do53Fault, conn int, q *dns.Msg) upstreamtest.TCPAction {
					for _, m := range upstreamtest.Spoofs(q) {
						upstreamtest.WriteFrame(f.Conn(conn), m)
					}
					return upstreamtest.TCPAnswer
				})
				return "tcp://" + f.Addr, Options{Conns: 1}, wantTCPConns(f, 1)
			},
			n:    100,
			want: always(answered),
		},
		{
			name: "only spoofed TCP answers",
			start: func(t *testing.T) (string, Options, func(*testing.T)) {
				f := upstreamtest.StartDo53Fault(t, nil, func(f *upstreamtest.Do53Fault, conn int, q *dns.Msg) upstreamtest.TCPAction {
					for _, m := range upstreamtest.Spoofs(q) {
						upstreamtest.WriteFrame(f.Conn(conn), m)
					}
					return upstreamtest.TCPIgnore
				})
				return "tcp://" + f.Addr, Options{Conns: 1}, wantTCPConns(f, 1)
			},
			want: always(expect{is: ErrTimeout}),
		},
		{
			name: "good, spoofed and silent interleaved on one socket",
			start: func(t *testing.T) (string, Options, func(*testing.T)) {
				f := upstreamtest.StartDo53Fault(t, func(q *dns.Msg, reply func([]byte)) {
					switch name := q.Question[0].Name; {
					case strings.HasPrefix(name, "spoof"):
						for _, m := range upstreamtest.Spoofs(q) {
							reply(m)
						}
					case strings.HasPrefix(name, "ok"):
						upstreamtest.UDPAnswer(q, reply)
					}
				}, nil)
				return f.Addr, Options{Conns: 1}, nil
			},
			n:     90,
			qname: func(i int) string { return [...]string{"ok%d.example.", "spoof%d.example.", "silent%d.example."}[i%3] },
			want: func(name string) expect {
				if strings.HasPrefix(name, "ok") {
					return answered
				}
				return expect{is: ErrTimeout}
			},
		},
		{
			// The reader and the timer race for every query.
			name: "UDP answers around the deadline",
			start: func(t *testing.T) (string, Options, func(*testing.T)) {
				var k atomic.Int64
				late := upstreamtest.NewLater()
				t.Cleanup(late.Wait)
				f := upstreamtest.StartDo53Fault(t, func(q *dns.Msg, reply func([]byte)) {
					late.AfterFunc(timeout-30*time.Millisecond+time.Duration(k.Add(1)%61)*time.Millisecond, func() {
						upstreamtest.UDPAnswer(q, reply)
					})
				}, nil)
				return f.Addr, Options{Conns: 1}, nil
			},
			n:    100,
			want: always(expect{maybe: true, is: ErrTimeout}),
		},
		{
			// The UDP reader moving a query to TCP races its timer.
			name: "truncated UDP answers around the deadline, TCP ready",
			start: func(t *testing.T) (string, Options, func(*testing.T)) {
				var k atomic.Int64
				late := upstreamtest.NewLater()
				t.Cleanup(late.Wait)
				f := upstreamtest.StartDo53Fault(t, func(q *dns.Msg, reply func([]byte)) {
					late.AfterFunc(timeout-10*time.Millisecond+time.Duration(k.Add(1)%200)*100*time.Microsecond, func() {
						upstreamtest.UDPTruncate(q, reply)
					})
				}, upstreamtest.TCPAnswerAll)
				return f.Addr, Options{Conns: 1}, nil
			},
			warm:  true,
			n:     300,
			qname: func(i int) string { return fmt.Sprintf("tc%d.example.", i) },
			want:  always(expect{maybe: true, is: ErrTimeout}),
		},
		{
			name: "TCP answers around the deadline",
			start: func(t *testing.T) (string, Options, func(*testing.T)) {
				var k atomic.Int64
				late := upstreamtest.NewLater()
				f := upstreamtest.StartDo53Fault(t, nil, func(f *upstreamtest.Do53Fault, conn int, q *dns.Msg) upstreamtest.TCPAction {
					nc := f.Conn(conn)
					late.AfterFunc(timeout-30*time.Millisecond+time.Duration(k.Add(1)%61)*time.Millisecond, func() {
						upstreamtest.WriteFrame(nc, upstreamtest.MustPack(upstreamtest.AnswerFor(q)))
					})
					return upstreamtest.TCPIgnore
				})
				t.Cleanup(late.Wait) // before the server's cleanup closes nc
				return "tcp://" + f.Addr, Options{Conns: 1}, wantTCPConns(f, 1)
			},
			n:    100,
			want: always(expect{maybe: true, is: ErrTimeout}),
		},
	}
	var all settled
	t.Run("group", func(t *testing.T) {
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				t.Parallel()
				target, opts, after := tt.start(t)
				opts.Timeout = 5 * time.Second // Submit's timeout is the shorter one
				u := newTestDo53(t, target, opts)
				if tt.warm {
					warmDo53(t, u)
				}
				n := tt.n
				if n == 0 {
					n = 40
				}
				qname := tt.qname
				if qname == nil {
					qname = numberedNames("q")
				}
				b := newDo53Burst(t, u, n, func(i int) string {
					s := qname(i)
					if strings.Contains(s, "%d") {
						s = fmt.Sprintf(s, i)
					}
					return s
				})
				b.submitAll(timeout, 2)
				b.wait(t, timeout+5*time.Second)
				b.check(t, timeout, tt.want)
				if s := b.slowest(); tt.prompt && s > timeout/2 {
					t.Errorf("slowest callback after %v, want all well before the timeout %v", s, timeout)
				}
				all.add(t, b.asyncBurst, timeout)
				if after != nil {
					after(t)
				}
			})
		}
	})
	all.check(t)
}

// wantQueries checks how many queries reached f over UDP and over TCP.
func wantQueries(f *upstreamtest.Do53Fault, udp, tcp int32) func(*testing.T) {
	return func(t *testing.T) {
		if u, c := f.UDPQueries.Load(), f.TCPQueries.Load(); u != udp || c != tcp {
			t.Errorf("server saw %d queries over UDP and %d over TCP, want %d and %d", u, c, udp, tcp)
		}
	}
}

// wantConns checks how many TCP connections f accepted.
func wantTCPConns(f *upstreamtest.Do53Fault, n int32) func(*testing.T) {
	return func(t *testing.T) {
		if c := f.TCPConns(); c != n {
			t.Errorf("%d TCP connections, want %d", c, n)
		}
	}
}

// Beyond maxInflight queries on every socket or connection, Submit fails
// with ErrBusy at once; the queries in flight are not disturbed.
func TestDo53SubmitBusy(t *testing.T) {
	const timeout = 300 * time.Millisecond
	for _, tcp := range []bool{false, true} {
		t.Run(map[bool]string{false: "UDP", true: "TCP"}[tcp], func(t *testing.T) {
			f := upstreamtest.StartDo53Fault(t, upstreamtest.UDPIgnore, upstreamtest.TCPIgnoreAll)
			target := f.Target(tcp)
			u := newTestDo53(t, target, Options{Conns: 1, Timeout: 5 * time.Second})
			u.maxInflight = 2
			warmDo53(t, u)
			b := newDo53Burst(t, u, 3, numberedNames("busy"))
			b.submit(0, timeout)
			b.submit(1, timeout)
			waitFor(t, "two queries at the server", func() bool { return f.UDPQueries.Load()+f.TCPQueries.Load() == 2 })
			b.submit(2, timeout)
			b.wait(t, timeout+5*time.Second)
			b.check(t, timeout, func(name string) expect {
				if name == "busy2.example." {
					return expect{is: ErrBusy}
				}
				return expect{is: ErrTimeout}
			})
			if took := b.calls[2].took; took > timeout/2 {
				t.Errorf("ErrBusy after %v, want at once", took)
			}
			time.Sleep(time.Until(b.deadline(timeout).Add(50 * time.Millisecond)))
			b.checkOnce(t)
		})
	}
}

// A query whose TCP connection breaks is sent again once, on a fresh
// connection, and not a third time.
func TestDo53SubmitRetriedOnce(t *testing.T) {
	tests := []struct {
		name  string
		udp   bool // over UDP first, truncated there
		conns int
		reset bool
	}{
		{name: "closed, retry waits for a dial", conns: 1},
		{name: "closed, other connection ready", conns: 2},
		{name: "reset, retry waits for a dial", conns: 1, reset: true},
		{name: "reset, other connection ready", conns: 2, reset: true},
		{name: "truncated over UDP, then reset", udp: true, conns: 1, reset: true},
	}
	const timeout = time.Second
	var all settled
	t.Run("group", func(t *testing.T) {
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				t.Parallel()
				f := upstreamtest.StartDo53Fault(t, upstreamtest.UDPTruncate, func(f *upstreamtest.Do53Fault, conn int, q *dns.Msg) upstreamtest.TCPAction {
					if tt.reset {
						return upstreamtest.TCPReset(f, conn)
					}
					return upstreamtest.TCPClose
				})
				target := "tcp://" + f.Addr
				if tt.udp {
					target = f.Addr
				}
				u := newTestDo53(t, target, Options{Conns: tt.conns, Timeout: 5 * time.Second})
				if !tt.udp {
					warmDo53(t, u)
				}
				b := newDo53Burst(t, u, 1, func(int) string { return "tc-twice.example." })
				b.submit(0, timeout)
				b.wait(t, timeout+5*time.Second)
				b.check(t, timeout, always(expect{is: ErrConnClosed}))
				if s := b.slowest(); s > timeout/2 {
					t.Errorf("callback after %v, want at once", s)
				}
				if n := f.TCPQueries.Load(); n != 2 {
					t.Errorf("query sent %d times over TCP (%d connections), want 2: the first try and one retry", n, f.TCPConns())
				}
				all.add(t, b.asyncBurst, timeout)
			})
		}
	})
	all.check(t)
}

// UDP sockets retire after udpMaxUses queries, with queries in flight on
// them: those are still answered, later ones go out on a fresh socket.
func TestDo53SubmitUDPSocketsRetire(t *testing.T) {
	srv := upstreamtest.StartDo53Server(t)
	u := newTestDo53(t, srv.Addr, Options{Conns: 1, Timeout: 2 * time.Second})
	u.udpMaxUses = 10
	b := newDo53Burst(t, u, 100, numberedNames("retire"))
	b.submitAll(time.Second, 2)
	b.wait(t, 6*time.Second)
	b.check(t, time.Second, always(answered))
	b.checkOnce(t)
	if got := srv.Clients("udp"); got != 10 {
		t.Errorf("server saw %d UDP client sockets, want 10 (10 queries each)", got)
	}
}

// A TCP connection that idles out just as a query is sent on it (errIdle)
// is like a broken one: the query is retried on a fresh connection.
func TestDo53SubmitTCPIdleCloseRace(t *testing.T) {
	f := upstreamtest.StartDo53Fault(t, nil, upstreamtest.TCPAnswerAll)
	u := newTestDo53(t, "tcp://"+f.Addr, Options{Conns: 1, Timeout: 2 * time.Second})
	const idle = 20 * time.Millisecond
	u.idleTimeout = idle
	const rounds = 30
	b := newDo53Burst(t, u, rounds, numberedNames("idle"))
	for i := range rounds {
		b.submit(i, time.Second)
		// Wait for the answer, then about the idle timeout: the next query
		// races the writer closing the connection.
		waitFor(t, "answer", func() bool { return b.calls[i].calls.Load() > 0 })
		time.Sleep(idle - 2*time.Millisecond + time.Duration(i%5)*time.Millisecond)
	}
	b.wait(t, 5*time.Second)
	b.check(t, time.Second, always(answered))
	b.checkOnce(t)
	t.Logf("%d connections for %d queries", f.TCPConns(), rounds)
}

// Close with queries in flight: each callback is called exactly once, at
// Close and not at the queries' timeouts, and a Submit from a callback
// after Close is refused at once. (UDP and TCP queries in flight, after a
// cold start, are the contract's case, CloseInFlight.)
func TestDo53SubmitCloseInFlight(t *testing.T) {
	const n, timeout = 100, 2 * time.Second
	tests := []struct {
		name string
		// start returns the target, and when the burst is where the case
		// wants it when Close comes.
		start func(t *testing.T) (target string, ready func() bool)
		warm  bool // sockets and connections up before the burst
		want  expect
	}{
		{
			name: "truncated over UDP, in flight over TCP",
			start: func(t *testing.T) (string, func() bool) {
				f := upstreamtest.StartDo53Fault(t, upstreamtest.UDPTruncate, upstreamtest.TCPIgnoreAll)
				return f.Addr, func() bool { return f.TCPQueries.Load() == n }
			},
			warm: true,
			want: expect{is: ErrClosed},
		},
		{
			name: "TCP, waiting for the first dial",
			start: func(t *testing.T) (string, func() bool) {
				f := upstreamtest.StartDo53Fault(t, nil, upstreamtest.TCPIgnoreAll)
				return "tcp://" + f.Addr, func() bool { return true }
			},
			want: expect{is: ErrClosed},
		},
		{
			name: "answers arriving",
			start: func(t *testing.T) (string, func() bool) {
				var k, answers atomic.Int32
				late := upstreamtest.NewLater()
				t.Cleanup(late.Wait)
				f := upstreamtest.StartDo53Fault(t, func(q *dns.Msg, reply func([]byte)) {
					late.AfterFunc(time.Duration(k.Add(1)%40)*time.Millisecond, func() {
						upstreamtest.UDPAnswer(q, reply)
						answers.Add(1)
					})
				}, nil)
				return f.Addr, func() bool { return answers.Load() >= 30 }
			},
			want: expect{maybe: true, is: ErrClosed},
		},
	}
	var all settled
	t.Run("group", func(t *testing.T) {
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				t.Parallel()
				target, ready := tt.start(t)
				u := newTestDo53(t, target, Options{Conns: 2, Timeout: 10 * time.Second})
				if tt.warm {
					warmDo53(t, u)
				}
				b := newDo53Burst(t, u, n, numberedNames("tc-inflight")) // truncated by upstreamtest.UDPTruncate
				var nested, nestedBad atomic.Int32
				late := makeQuery(t, "nested.example.", 7)
				for i := range n {
					c := &b.calls[i]
					c.start = time.Now()
					u.Submit(c.query, timeout, b.callback(i, func(_ []byte, err error) {
						if err == nil {
							return
						}
						// The upstream is closing: refused at once.
						var calls int
						u.Submit(late, 0, func(_ []byte, err error) {
							calls++
							if !errors.Is(err, ErrClosed) {
								nestedBad.Add(1)
							}
						})
						nested.Add(1)
						if calls != 1 {
							nestedBad.Add(1)
						}
					}))
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
				if nestedBad.Load() != 0 {
					t.Errorf("%d of %d Submits from callbacks after Close not refused at once with ErrClosed", nestedBad.Load(), nested.Load())
				}
				all.add(t, b.asyncBurst, timeout)
			})
		}
	})
	all.check(t)
}

// Close while other goroutines keep submitting: every callback still comes
// exactly once, with an answer or an error, and nothing hangs.
func TestDo53SubmitCloseWhileSubmitting(t *testing.T) {
	const perG, goroutines, timeout = 150, 4, time.Second
	var all settled
	t.Run("group", func(t *testing.T) {
		for _, tcp := range []bool{false, true} {
			t.Run(map[bool]string{false: "UDP", true: "TCP"}[tcp], func(t *testing.T) {
				t.Parallel()
				srv := upstreamtest.StartDo53Server(t)
				target := srv.Addr
				if tcp {
					target = "tcp://" + srv.Addr
				}
				u := newTestDo53(t, target, Options{Conns: 2, Timeout: 5 * time.Second})
				b := newDo53Burst(t, u, perG*goroutines, numberedNames("race"))
				var nAnswered atomic.Int32
				var wg sync.WaitGroup
				for g := range goroutines {
					wg.Go(func() {
						for i := g; i < len(b.calls); i += goroutines {
							c := &b.calls[i]
							c.start = time.Now()
							u.Submit(c.query, timeout, b.callback(i, func(_ []byte, err error) {
								if err == nil {
									nAnswered.Add(1)
								}
							}))
							if i%16 == 0 {
								runtime.Gosched()
							}
						}
					})
				}
				waitFor(t, "some answers", func() bool { return nAnswered.Load() >= 50 })
				u.Close()
				wg.Wait()
				b.wait(t, 5*time.Second)
				b.check(t, timeout, always(expect{maybe: true}))
				for i := range b.calls {
					if errors.Is(b.calls[i].err, ErrTimeout) {
						t.Errorf("%s: %v: nothing should time out", b.calls[i].name, b.calls[i].err)
					}
				}
				t.Logf("%d of %d answered", nAnswered.Load(), len(b.calls))
				all.add(t, b.asyncBurst, timeout)
			})
		}
	})
	all.check(t)
}

// The real thing: BIND 9.18 over UDP, with a truncated answer retried over
// TCP, and over TCP only.
func TestDo53SubmitBIND(t *testing.T) {
	zone := upstreamtest.DefaultZoneExampleCom +
		"big IN TXT \"" + strings.Repeat("a", 250) + "\" \"" + strings.Repeat("b", 250) + "\" \"" + strings.Repeat("c", 250) + "\"\n"
	bind := upstreamtest.StartBIND(t, upstreamtest.BINDOptions{Zones: map[string]string{"example.com.": zone}})
	const n, inflight = 300, 100 // BIND runs one worker thread: do not overrun its UDP buffer
	for _, tt := range []struct {
		name     string
		target   string
		udp, tcp uint64 // queries BIND must see over each, for n A and one TXT
	}{
		{name: "UDP, TXT truncated", target: bind.Do53Addr, udp: n + 1, tcp: 1},
		{name: "TCP only", target: "tcp://" + bind.Do53Addr, udp: 0, tcp: n + 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			u := newTestDo53(t, tt.target, Options{Conns: 2, Timeout: 5 * time.Second})
			before := bind.Stats(t)
			b := newDo53Burst(t, u, n+1, func(i int) string {
				if i == n {
					return "big.example.com."
				}
				return "foo.example.com."
			})
			big := &b.calls[n]
			bigQ := new(dns.Msg)
			bigQ.SetQuestion("big.example.com.", dns.TypeTXT)
			bigQ.Id = big.id
			big.query = upstreamtest.MustPack(bigQ)
			sem := make(chan struct{}, inflight)
			for i := range b.calls {
				sem <- struct{}{}
				c := &b.calls[i]
				c.start = time.Now()
				u.Submit(c.query, 0, b.callback(i, func([]byte, error) { <-sem }))
			}
			b.wait(t, 15*time.Second)
			b.checkOnce(t)
			for i := range b.calls[:n] {
				c := &b.calls[i]
				if c.err != nil {
					t.Fatalf("query %d: %v", i, c.err)
				}
				m := new(dns.Msg)
				if err := m.Unpack(c.resp); err != nil {
					t.Fatalf("query %d: %v", i, err)
				}
				if m.Id != c.id || len(m.Answer) != 1 {
					t.Fatalf("query %d: ID %#x (want %#x), answer %v", i, m.Id, c.id, m.Answer)
				}
				if a, ok := m.Answer[0].(*dns.A); !ok || a.A.String() != "172.16.0.10" {
					t.Fatalf("query %d: answer %v, want 172.16.0.10", i, m.Answer[0])
				}
			}
			if big.err != nil {
				t.Fatalf("TXT query: %v", big.err)
			}
			m := new(dns.Msg)
			if err := m.Unpack(big.resp); err != nil {
				t.Fatal(err)
			}
			if m.Id != big.id || m.Truncated || len(m.Answer) != 1 {
				t.Fatalf("TXT: ID %#x (want %#x), TC %v, answer %v", m.Id, big.id, m.Truncated, m.Answer)
			}
			if txt, ok := m.Answer[0].(*dns.TXT); !ok || len(txt.Txt) != 3 || txt.Txt[2] != strings.Repeat("c", 250) {
				t.Fatalf("TXT answer %v, want the three strings of 250 bytes", m.Answer[0])
			}
			d := bind.Stats(t).Sub(before)
			t.Logf("stats delta: %v", d)
			if d.QueriesUDP != tt.udp || d.QueriesTCP != tt.tcp {
				t.Errorf("BIND saw %d queries over UDP and %d over TCP, want %d and %d", d.QueriesUDP, d.QueriesTCP, tt.udp, tt.tcp)
			}
		})
	}
}

// BenchmarkDo53Submit keeps 64 queries in flight over UDP to the miekg/dns
// server (compare BenchmarkDo53UDPExchange, one at a time, and
// BenchmarkDo53UDPExchangeParallel). Allocations include the in-process
// server's.
func BenchmarkDo53Submit(b *testing.B) {
	srv := upstreamtest.StartDo53Server(b)
	u := newTestDo53(b, srv.Addr, Options{Timeout: 10 * time.Second})
	warmDo53(b, u)
	q := makeQuery(b, "bench.example.", 0x1234)
	submitInFlight(b, u, q)
}
