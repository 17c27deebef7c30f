package upstream

import (
	"cmp"
	"encoding/binary"
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

	"xdoh/forwarder/upstream/upstreamtest"
)

// Tests of Do53.Submit. The contract is DoH.Submit's, so these reuse the
// bookkeeping of doh_async_test.go (asyncBurst, expect, settled): every
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

// do53Fault is a Do53 server for fault injection on one loopback port: a
// raw UDP responder and, unless its handler is nil, a tcpDNSServer.
type do53Fault struct {
	addr       string
	udpQueries atomic.Int32
	tcpQueries atomic.Int32
	tcp        atomic.Pointer[tcpDNSServer] // nil without TCP
}

// udpHandler handles one query that came over UDP: it calls reply with
// each datagram to send back, now or later from any goroutine, or never.
type udpHandler func(q *dns.Msg, reply func(msg []byte))

// tcpHandler is tcpDNSServer's onQuery, with the server for f.conn.
type tcpHandler func(f *do53Fault, conn int, q *dns.Msg) tcpAction

func udpAnswer(q *dns.Msg, reply func([]byte)) { reply(mustPack(answerFor(q))) }

func udpIgnore(*dns.Msg, func([]byte)) {}

// udpTruncate answers names starting with "tc" with an empty TC answer,
// the others fully.
func udpTruncate(q *dns.Msg, reply func([]byte)) {
	if !strings.HasPrefix(q.Question[0].Name, "tc") {
		udpAnswer(q, reply)
		return
	}
	m := new(dns.Msg)
	m.SetReply(q)
	m.Truncated = true
	reply(mustPack(m))
}

func tcpAnswerAll(*do53Fault, int, *dns.Msg) tcpAction { return tcpAnswer }

func tcpIgnoreAll(*do53Fault, int, *dns.Msg) tcpAction { return tcpIgnore }

// mustPack packs the test servers' own messages, which always pack (an
// error would show as an unanswered query).
func mustPack(m *dns.Msg) []byte {
	out, _ := m.Pack()
	return out
}

// spoofs are what an off-path attacker or a confused server sends before
// the real answer to q: its ID with another question, a neighbour's ID, and
// garbage.
func spoofs(q *dns.Msg) [][]byte {
	wrongID := answerFor(q)
	wrongID.Id = q.Id + 1
	other := q.Copy()
	other.Question[0].Name = "spoofed.example."
	return [][]byte{mustPack(wrongID), mustPack(answerFor(other)), {1, 2, 3}}
}

// startDo53Fault starts the servers; nil onUDP ignores every datagram, nil
// onTCP leaves the TCP port closed (connection refused).
func startDo53Fault(t testing.TB, onUDP udpHandler, onTCP tcpHandler) *do53Fault {
	t.Helper()
	if onUDP == nil {
		onUDP = udpIgnore
	}
	f := &do53Fault{}
	var pc net.PacketConn
	for range 10 {
		var err error
		if onTCP == nil {
			if pc, err = net.ListenPacket("udp", "127.0.0.1:0"); err != nil {
				t.Fatal(err)
			}
			break
		}
		srv := startTCPDNSServer(t, func(conn int, q *dns.Msg) tcpAction {
			f.tcpQueries.Add(1)
			return onTCP(f, conn, q)
		})
		if pc, err = net.ListenPacket("udp", srv.ln.Addr().String()); err == nil {
			f.tcp.Store(srv)
			break
		}
		// The UDP port of this TCP listener is taken: try another one (the
		// spare TCP server stops at cleanup).
	}
	if pc == nil {
		t.Fatal("no loopback port free for both UDP and TCP in 10 tries")
	}
	f.addr = pc.LocalAddr().String()
	serveUDP(t, pc, func(q *dns.Msg, reply func([]byte)) {
		f.udpQueries.Add(1)
		onUDP(q, reply)
	})
	return f
}

// target is the fault server as a Do53 target: UDP (with TCP on TC) or
// TCP only.
func (f *do53Fault) target(tcp bool) string {
	if tcp {
		return "tcp://" + f.addr
	}
	return f.addr
}

// conn returns the server's end of TCP connection idx (from 1).
func (f *do53Fault) conn(idx int) net.Conn {
	srv := f.tcp.Load()
	srv.mu.Lock()
	defer srv.mu.Unlock()
	return srv.open[idx-1]
}

// writeFrame writes msg with its RFC 1035 length prefix.
func writeFrame(nc net.Conn, msg []byte) {
	nc.Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(msg))), msg...))
}

// tcpReset makes the close that follows tcpClose a reset (RST).
func tcpReset(f *do53Fault, conn int) tcpAction {
	f.conn(conn).(*net.TCPConn).SetLinger(0)
	return tcpClose
}

// failTCPAt answers on every connection but the first, which holds queries
// unanswered until the nth, and then dies by fault (tcpClose or tcpReset).
func failTCPAt(n int32, reset bool) tcpHandler {
	var seen atomic.Int32
	return func(f *do53Fault, conn int, q *dns.Msg) tcpAction {
		switch {
		case conn > 1:
			return tcpAnswer
		case seen.Add(1) < n:
			return tcpIgnore
		case reset:
			return tcpReset(f, conn)
		}
		return tcpClose
	}
}

// closedUDPPort returns a loopback address where no UDP socket listens.
func closedUDPPort(t testing.TB) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := pc.LocalAddr().String()
	pc.Close()
	return addr
}

func TestDo53SubmitAnswer(t *testing.T) {
	srv := startDo53Server(t)
	tests := []struct {
		name    string
		target  string
		qname   string
		answers int // 1: the standard answer, checked by checkAnswer
	}{
		{name: "UDP", target: "udp://" + srv.addr, qname: "a.example.", answers: 1},
		{name: "bare address", target: srv.addr, qname: "MiXeD.example.", answers: 1},
		{name: "TCP only", target: "tcp://" + srv.addr, qname: "c.example.", answers: 1},
		{name: "truncated over UDP, retried over TCP", target: srv.addr, qname: "big.example.", answers: 40},
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

// Many Submits at once, from several goroutines, against the miekg/dns
// server: every one answered once with its own ID and name, each query
// sent once, on at most Conns sockets or connections.
func TestDo53SubmitConcurrent(t *testing.T) {
	const n, timeout = 300, 3 * time.Second
	tests := []struct {
		name  string
		tcp   bool
		conns int
		warm  bool
	}{
		{name: "UDP, two sockets", conns: 2},
		{name: "UDP, one socket, warm", conns: 1, warm: true},
		{name: "TCP, connections ready", tcp: true, conns: 2, warm: true},
		{name: "TCP, cold start", tcp: true, conns: 2}, // queries wait in the pool's queue for the dials
	}
	var all settled
	t.Run("group", func(t *testing.T) {
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				t.Parallel()
				srv := startDo53Server(t)
				target, network := srv.addr, "udp"
				if tt.tcp {
					target, network = "tcp://"+srv.addr, "tcp"
				}
				u := newTestDo53(t, target, Options{Conns: tt.conns, Timeout: 10 * time.Second})
				if tt.warm {
					warmDo53(t, u)
				}
				b := newDo53Burst(t, u, n, numberedNames("c"))
				b.submitAll(timeout, 4)
				b.wait(t, timeout+5*time.Second)
				b.check(t, timeout, always(answered))
				all.add(t, b.asyncBurst, timeout)
				if got, want := srv.queries.Load(), int64(n); got != want {
					t.Errorf("server saw %d queries, want %d: each sent once", got, want)
				}
				if got := srv.clients(network); got > tt.conns {
					t.Errorf("server saw %d %s client sockets, want at most %d", got, network, tt.conns)
				}
			})
		}
	})
	all.check(t)
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
			f := startDo53Fault(t,
				func(q *dns.Msg, reply func([]byte)) { record(q); udpAnswer(q, reply) },
				func(_ *do53Fault, _ int, q *dns.Msg) tcpAction { record(q); return tcpAnswer })
			target := f.target(tcp)
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
		{name: "UDP", prefix: "g"},
		{name: "TCP", tcp: true, prefix: "g"},
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
			f := startDo53Fault(t,
				func(q *dns.Msg, reply func([]byte)) {
					if strings.HasPrefix(q.Question[0].Name, "tc") {
						udpTruncate(q, reply)
						return
					}
					hold(func() { udpAnswer(q, reply) })
				},
				func(f *do53Fault, conn int, q *dns.Msg) tcpAction {
					nc := f.conn(conn)
					hold(func() { writeFrame(nc, mustPack(answerFor(q))) })
					return tcpIgnore
				})
			target := f.target(tt.tcp)
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

// Submit refuses at once, on the caller's goroutine, what it cannot send.
func TestDo53SubmitRefusedAtOnce(t *testing.T) {
	srv := startDo53Server(t)
	for _, tcp := range []bool{false, true} {
		target := srv.addr
		if tcp {
			target = "tcp://" + srv.addr
		}
		t.Run(map[bool]string{false: "UDP", true: "TCP"}[tcp], func(t *testing.T) {
			u := newTestDo53(t, target, Options{})
			tests := []struct {
				name  string
				query []byte
				close bool
				want  error
			}{
				{name: "nil query", want: ErrBadQuery},
				{name: "shorter than a header", query: make([]byte, 11), want: ErrBadQuery},
				{name: "longer than a DNS message", query: make([]byte, 65536), want: ErrBadQuery},
				{name: "after Close", query: makeQuery(t, "late.example.", 1), close: true, want: ErrClosed},
			}
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					if tt.close {
						u.Close()
					}
					var calls atomic.Int32
					var got error
					u.Submit(tt.query, time.Second, func(resp []byte, err error) {
						if calls.Add(1) == 1 {
							got = err
						}
					})
					if n := calls.Load(); n != 1 || !errors.Is(got, tt.want) {
						t.Fatalf("%d calls with %v before Submit returned, want one with %v", n, got, tt.want)
					}
					if !strings.Contains(got.Error(), target) {
						t.Errorf("error %q does not name the target", got)
					}
					time.Sleep(20 * time.Millisecond)
					if n := calls.Load(); n != 1 {
						t.Errorf("%d calls, want 1", n)
					}
				})
			}
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
				f := startDo53Fault(t, udpIgnore, nil)
				return f.addr, Options{}, wantQueries(f, 40, 0)
			},
			want: always(expect{is: ErrTimeout}),
		},
		{
			name: "TCP accepted, nothing read",
			start: func(t *testing.T) (string, Options, func(*testing.T)) {
				return "tcp://" + startTCPSink(t, false).ln.Addr().String(), Options{}, nil
			},
			want: always(expect{is: ErrTimeout}),
		},
		{
			name: "TCP queries read, never answered",
			start: func(t *testing.T) (string, Options, func(*testing.T)) {
				f := startDo53Fault(t, nil, tcpIgnoreAll)
				return "tcp://" + f.addr, Options{}, wantQueries(f, 0, 40)
			},
			want: always(expect{is: ErrTimeout}),
		},
		{
			name: "UDP port unreachable",
			start: func(t *testing.T) (string, Options, func(*testing.T)) {
				return closedUDPPort(t), Options{}, nil
			},
			prompt: true,
			want:   always(expect{text: "refused"}),
		},
		{
			name: "UDP port unreachable, one at a time",
			start: func(t *testing.T) (string, Options, func(*testing.T)) {
				return closedUDPPort(t), Options{}, nil
			},
			n:      1,
			prompt: true,
			want:   always(expect{text: "refused"}),
		},
		{
			name: "TCP connection refused",
			start: func(t *testing.T) (string, Options, func(*testing.T)) {
				return "tcp://" + closedPort(t), Options{}, nil
			},
			prompt: true,
			want:   always(expect{text: "refused"}),
		},
		{
			name: "TCP reset at accept",
			start: func(t *testing.T) (string, Options, func(*testing.T)) {
				return "tcp://" + startTCPSink(t, true).ln.Addr().String(), Options{}, nil
			},
			prompt: true,
			want:   always(expect{}), // the dial's error, or ErrConnClosed
		},
		{
			name: "TC over UDP, answered over TCP",
			start: func(t *testing.T) (string, Options, func(*testing.T)) {
				f := startDo53Fault(t, udpTruncate, tcpAnswerAll)
				return f.addr, Options{}, wantQueries(f, 60, 30)
			},
			n:     60,
			qname: func(i int) string { return [...]string{"tc%d.example.", "udp%d.example."}[i%2] },
			want:  always(answered),
		},
		{
			name: "TC over UDP, TCP connection ready",
			start: func(t *testing.T) (string, Options, func(*testing.T)) {
				f := startDo53Fault(t, udpTruncate, tcpAnswerAll)
				return f.addr, Options{Conns: 1}, func(t *testing.T) {
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
				f := startDo53Fault(t, udpTruncate, tcpIgnoreAll)
				return f.addr, Options{}, wantQueries(f, 40, 40)
			},
			qname: func(i int) string { return fmt.Sprintf("tc%d.example.", i) },
			want:  always(expect{is: ErrTimeout}), // one deadline for both legs
		},
		{
			name: "TC over UDP, TCP refused",
			start: func(t *testing.T) (string, Options, func(*testing.T)) {
				return startDo53Fault(t, udpTruncate, nil).addr, Options{}, nil
			},
			qname:  func(i int) string { return fmt.Sprintf("tc%d.example.", i) },
			prompt: true,
			want:   always(expect{text: "refused"}),
		},
		{
			name: "TCP connection reset with queries in flight",
			start: func(t *testing.T) (string, Options, func(*testing.T)) {
				f := startDo53Fault(t, nil, failTCPAt(20, true))
				return "tcp://" + f.addr, Options{Conns: 1}, wantTCPConns(f, 2)
			},
			n:    60,
			want: always(answered),
		},
		{
			name: "TCP connection closed with queries in flight",
			start: func(t *testing.T) (string, Options, func(*testing.T)) {
				f := startDo53Fault(t, nil, failTCPAt(20, false))
				return "tcp://" + f.addr, Options{Conns: 1}, wantTCPConns(f, 2)
			},
			n:    60,
			want: always(answered),
		},
		{
			name: "TC over UDP, TCP connection reset with queries in flight",
			start: func(t *testing.T) (string, Options, func(*testing.T)) {
				f := startDo53Fault(t, udpTruncate, failTCPAt(20, true))
				return f.addr, Options{Conns: 1}, wantTCPConns(f, 2)
			},
			n:     60,
			qname: func(i int) string { return fmt.Sprintf("tc%d.example.", i) },
			want:  always(answered),
		},
		{
			name: "spoofed UDP answers first",
			start: func(t *testing.T) (string, Options, func(*testing.T)) {
				return spoofingUDPServer(t), Options{Conns: 1}, nil
			},
			n:    100,
			want: always(answered),
		},
		{
			name: "only spoofed UDP answers",
			start: func(t *testing.T) (string, Options, func(*testing.T)) {
				f := startDo53Fault(t, func(q *dns.Msg, reply func([]byte)) {
					for _, m := range spoofs(q) {
						reply(m)
					}
				}, nil)
				return f.addr, Options{Conns: 1}, nil
			},
			want: always(expect{is: ErrTimeout}),
		},
		{
			name: "spoofed TCP answers first",
			start: func(t *testing.T) (string, Options, func(*testing.T)) {
				f := startDo53Fault(t, nil, func(f *do53Fault, conn int, q *dns.Msg) tcpAction {
					for _, m := range spoofs(q) {
						writeFrame(f.conn(conn), m)
					}
					return tcpAnswer
				})
				return "tcp://" + f.addr, Options{Conns: 1}, wantTCPConns(f, 1)
			},
			n:    100,
			want: always(answered),
		},
		{
			name: "only spoofed TCP answers",
			start: func(t *testing.T) (string, Options, func(*testing.T)) {
				f := startDo53Fault(t, nil, func(f *do53Fault, conn int, q *dns.Msg) tcpAction {
					for _, m := range spoofs(q) {
						writeFrame(f.conn(conn), m)
					}
					return tcpIgnore
				})
				return "tcp://" + f.addr, Options{Conns: 1}, wantTCPConns(f, 1)
			},
			want: always(expect{is: ErrTimeout}),
		},
		{
			name: "good, spoofed and silent interleaved on one socket",
			start: func(t *testing.T) (string, Options, func(*testing.T)) {
				f := startDo53Fault(t, func(q *dns.Msg, reply func([]byte)) {
					switch name := q.Question[0].Name; {
					case strings.HasPrefix(name, "spoof"):
						for _, m := range spoofs(q) {
							reply(m)
						}
					case strings.HasPrefix(name, "ok"):
						udpAnswer(q, reply)
					}
				}, nil)
				return f.addr, Options{Conns: 1}, nil
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
				var late sync.WaitGroup
				t.Cleanup(late.Wait)
				f := startDo53Fault(t, func(q *dns.Msg, reply func([]byte)) {
					late.Add(1)
					time.AfterFunc(timeout-30*time.Millisecond+time.Duration(k.Add(1)%61)*time.Millisecond, func() {
						defer late.Done()
						udpAnswer(q, reply)
					})
				}, nil)
				return f.addr, Options{Conns: 1}, nil
			},
			n:    100,
			want: always(expect{maybe: true, is: ErrTimeout}),
		},
		{
			// The UDP reader moving a query to TCP races its timer.
			name: "truncated UDP answers around the deadline, TCP ready",
			start: func(t *testing.T) (string, Options, func(*testing.T)) {
				var k atomic.Int64
				var late sync.WaitGroup
				t.Cleanup(late.Wait)
				f := startDo53Fault(t, func(q *dns.Msg, reply func([]byte)) {
					late.Add(1)
					time.AfterFunc(timeout-10*time.Millisecond+time.Duration(k.Add(1)%200)*100*time.Microsecond, func() {
						defer late.Done()
						udpTruncate(q, reply)
					})
				}, tcpAnswerAll)
				return f.addr, Options{Conns: 1}, nil
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
				var late sync.WaitGroup
				f := startDo53Fault(t, nil, func(f *do53Fault, conn int, q *dns.Msg) tcpAction {
					nc := f.conn(conn)
					late.Add(1)
					time.AfterFunc(timeout-30*time.Millisecond+time.Duration(k.Add(1)%61)*time.Millisecond, func() {
						defer late.Done()
						writeFrame(nc, mustPack(answerFor(q)))
					})
					return tcpIgnore
				})
				t.Cleanup(late.Wait) // before the server's cleanup closes nc
				return "tcp://" + f.addr, Options{Conns: 1}, wantTCPConns(f, 1)
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
func wantQueries(f *do53Fault, udp, tcp int32) func(*testing.T) {
	return func(t *testing.T) {
		if u, c := f.udpQueries.Load(), f.tcpQueries.Load(); u != udp || c != tcp {
			t.Errorf("server saw %d queries over UDP and %d over TCP, want %d and %d", u, c, udp, tcp)
		}
	}
}

// wantConns checks how many TCP connections f accepted.
func wantTCPConns(f *do53Fault, n int32) func(*testing.T) {
	return func(t *testing.T) {
		if c := f.tcp.Load().nconn.Load(); c != n {
			t.Errorf("%d TCP connections, want %d", c, n)
		}
	}
}

func TestDo53SubmitTimeout(t *testing.T) {
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
	var all settled
	t.Run("group", func(t *testing.T) {
		for _, tt := range tests {
			for _, tcp := range []bool{false, true} {
				t.Run(tt.name+map[bool]string{false: ", UDP", true: ", TCP"}[tcp], func(t *testing.T) {
					t.Parallel()
					f := startDo53Fault(t, udpIgnore, tcpIgnoreAll)
					target := f.target(tcp)
					u := newTestDo53(t, target, Options{Conns: 1, Timeout: tt.option})
					u.dialTime = 10 * time.Second // a loaded machine must not fail the warm-up dial
					warmDo53(t, u)
					b := newDo53Burst(t, u, 5, numberedNames("t"))
					b.submitAll(tt.timeout, 1)
					b.wait(t, tt.want+5*time.Second)
					b.check(t, tt.want, always(expect{is: ErrTimeout}))
					all.add(t, b.asyncBurst, tt.want)
				})
			}
		}
	})
	all.check(t)
}

// Beyond maxInflight queries on every socket or connection, Submit fails
// with ErrBusy at once; the queries in flight are not disturbed.
func TestDo53SubmitBusy(t *testing.T) {
	const timeout = 300 * time.Millisecond
	for _, tcp := range []bool{false, true} {
		t.Run(map[bool]string{false: "UDP", true: "TCP"}[tcp], func(t *testing.T) {
			f := startDo53Fault(t, udpIgnore, tcpIgnoreAll)
			target := f.target(tcp)
			u := newTestDo53(t, target, Options{Conns: 1, Timeout: 5 * time.Second})
			u.maxInflight = 2
			warmDo53(t, u)
			b := newDo53Burst(t, u, 3, numberedNames("busy"))
			b.submit(0, timeout)
			b.submit(1, timeout)
			waitFor(t, "two queries at the server", func() bool { return f.udpQueries.Load()+f.tcpQueries.Load() == 2 })
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
				f := startDo53Fault(t, udpTruncate, func(f *do53Fault, conn int, q *dns.Msg) tcpAction {
					if tt.reset {
						return tcpReset(f, conn)
					}
					return tcpClose
				})
				target := "tcp://" + f.addr
				if tt.udp {
					target = f.addr
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
				if n := f.tcpQueries.Load(); n != 2 {
					t.Errorf("query sent %d times over TCP (%d connections), want 2: the first try and one retry", n, f.tcp.Load().nconn.Load())
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
	srv := startDo53Server(t)
	u := newTestDo53(t, srv.addr, Options{Conns: 1, Timeout: 2 * time.Second})
	u.udpMaxUses = 10
	b := newDo53Burst(t, u, 100, numberedNames("retire"))
	b.submitAll(time.Second, 2)
	b.wait(t, 6*time.Second)
	b.check(t, time.Second, always(answered))
	b.checkOnce(t)
	if got := srv.clients("udp"); got != 10 {
		t.Errorf("server saw %d UDP client sockets, want 10 (10 queries each)", got)
	}
}

// A TCP connection that idles out just as a query is sent on it (errIdle)
// is like a broken one: the query is retried on a fresh connection.
func TestDo53SubmitTCPIdleCloseRace(t *testing.T) {
	f := startDo53Fault(t, nil, tcpAnswerAll)
	u := newTestDo53(t, "tcp://"+f.addr, Options{Conns: 1, Timeout: 2 * time.Second})
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
	t.Logf("%d connections for %d queries", f.tcp.Load().nconn.Load(), rounds)
}

// done may call Submit again from whichever goroutine runs it: a socket's
// reader, a timer, whoever fails the connection, the caller.
func TestDo53SubmitFromCallback(t *testing.T) {
	tests := []struct {
		name    string
		start   func(t *testing.T) string // target
		qname   string
		bad     bool // queries too short
		timeout time.Duration
		want    expect
		// firstOnly: only the first query must meet want, the others must
		// fail: the kernel rate-limits ICMP errors globally
		// (icmp_msgs_per_sec), and tests in parallel send them too.
		firstOnly bool
	}{
		{name: "answered over UDP", start: func(t *testing.T) string { return startDo53Fault(t, udpAnswer, nil).addr },
			want: answered},
		{name: "answered over TCP", start: func(t *testing.T) string { return "tcp://" + startDo53Fault(t, nil, tcpAnswerAll).addr },
			want: answered},
		{name: "truncated, answered over TCP", start: func(t *testing.T) string { return startDo53Fault(t, udpTruncate, tcpAnswerAll).addr },
			qname: "tc%d.example.", want: answered},
		{name: "timed out", start: func(t *testing.T) string { return startDo53Fault(t, udpIgnore, nil).addr },
			timeout: 20 * time.Millisecond, want: expect{is: ErrTimeout}},
		{name: "UDP port unreachable", start: func(t *testing.T) string { return closedUDPPort(t) }, want: expect{text: "refused"}, firstOnly: true},
		{name: "TCP connection closed", start: func(t *testing.T) string {
			return "tcp://" + startDo53Fault(t, nil, func(*do53Fault, int, *dns.Msg) tcpAction { return tcpClose }).addr
		}, want: expect{is: ErrConnClosed}},
		{name: "bad query", start: func(t *testing.T) string { return startDo53Fault(t, udpAnswer, nil).addr },
			bad: true, want: expect{is: ErrBadQuery}},
	}
	var all settled
	t.Run("group", func(t *testing.T) {
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				t.Parallel()
				u := newTestDo53(t, tt.start(t), Options{Conns: 1, Timeout: 5 * time.Second})
				timeout := cmp.Or(tt.timeout, 500*time.Millisecond)
				qname := cmp.Or(tt.qname, "chain%d.example.")
				const depth = 10
				b := newDo53Burst(t, u, depth, func(i int) string { return fmt.Sprintf(qname, i) })
				if tt.bad {
					for i := range b.calls {
						b.calls[i].query = b.calls[i].query[:5]
					}
				}
				var step func(i int)
				step = func(i int) {
					c := &b.calls[i]
					c.start = time.Now()
					u.Submit(c.query, timeout, b.callback(i, func([]byte, error) {
						if i+1 < depth {
							step(i + 1)
						}
					}))
				}
				step(0)
				b.wait(t, 5*time.Second)
				want := always(tt.want)
				if tt.firstOnly {
					first := fmt.Sprintf(qname, 0)
					want = func(name string) expect {
						if name == first {
							return tt.want
						}
						return expect{}
					}
				}
				b.check(t, timeout, want)
				all.add(t, b.asyncBurst, timeout)
			})
		}
	})
	all.check(t)
}

// Close with queries in flight: each callback is called exactly once, at
// Close and not at the queries' timeouts, and a Submit from a callback
// after Close is refused at once.
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
			name: "UDP queries in flight",
			start: func(t *testing.T) (string, func() bool) {
				f := startDo53Fault(t, udpIgnore, nil)
				return f.addr, func() bool { return f.udpQueries.Load() == n }
			},
			want: expect{is: ErrClosed},
		},
		{
			name: "TCP queries in flight",
			start: func(t *testing.T) (string, func() bool) {
				f := startDo53Fault(t, nil, tcpIgnoreAll)
				return "tcp://" + f.addr, func() bool { return f.tcpQueries.Load() == n }
			},
			warm: true,
			want: expect{is: ErrClosed},
		},
		{
			name: "truncated over UDP, in flight over TCP",
			start: func(t *testing.T) (string, func() bool) {
				f := startDo53Fault(t, udpTruncate, tcpIgnoreAll)
				return f.addr, func() bool { return f.tcpQueries.Load() == n }
			},
			warm: true,
			want: expect{is: ErrClosed},
		},
		{
			// The queries waited in the pool's queue for the dial before
			// they were sent.
			name: "TCP queries in flight after a cold start",
			start: func(t *testing.T) (string, func() bool) {
				f := startDo53Fault(t, nil, tcpIgnoreAll)
				return "tcp://" + f.addr, func() bool { return f.tcpQueries.Load() == n }
			},
			want: expect{is: ErrClosed},
		},
		{
			name: "TCP, waiting for the first dial",
			start: func(t *testing.T) (string, func() bool) {
				f := startDo53Fault(t, nil, tcpIgnoreAll)
				return "tcp://" + f.addr, func() bool { return true }
			},
			want: expect{is: ErrClosed},
		},
		{
			name: "answers arriving",
			start: func(t *testing.T) (string, func() bool) {
				var k, answers atomic.Int32
				var late sync.WaitGroup
				t.Cleanup(late.Wait)
				f := startDo53Fault(t, func(q *dns.Msg, reply func([]byte)) {
					late.Add(1)
					time.AfterFunc(time.Duration(k.Add(1)%40)*time.Millisecond, func() {
						defer late.Done()
						udpAnswer(q, reply)
						answers.Add(1)
					})
				}, nil)
				return f.addr, func() bool { return answers.Load() >= 30 }
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
				b := newDo53Burst(t, u, n, numberedNames("tc-inflight")) // truncated by udpTruncate
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
				srv := startDo53Server(t)
				target := srv.addr
				if tcp {
					target = "tcp://" + srv.addr
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

func TestDo53SubmitNoGoroutineLeak(t *testing.T) {
	// "ok" names are answered; "tc" names truncated over UDP and answered
	// over TCP; "slow" names never answered (timers); the first TCP query
	// for a "tcdrop" name closes its connection (retries).
	var seen sync.Map
	f := startDo53Fault(t,
		func(q *dns.Msg, reply func([]byte)) {
			if !strings.HasPrefix(q.Question[0].Name, "slow") {
				udpTruncate(q, reply)
			}
		},
		func(_ *do53Fault, _ int, q *dns.Msg) tcpAction {
			name := q.Question[0].Name
			switch {
			case strings.HasPrefix(name, "slow"):
				return tcpIgnore
			case strings.Contains(name, "drop"):
				if _, again := seen.LoadOrStore(name, true); !again {
					return tcpClose
				}
			}
			return tcpAnswer
		})
	before := runtime.NumGoroutine()
	for ti, target := range []string{f.addr, "tcp://" + f.addr} {
		u, err := New(target, Options{Conns: 2, Timeout: 300 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		d := u.(*Do53)
		for phase := range 2 { // cold, then warm
			b := newDo53Burst(t, d, 100, func(i int) string {
				switch {
				case i == 50:
					return fmt.Sprintf("tcdrop%d-%d.example.", ti, phase)
				case i%4 == 0:
					return fmt.Sprintf("slow%d.example.", i)
				case i%4 == 1:
					return fmt.Sprintf("tc%d.example.", i)
				}
				return fmt.Sprintf("ok%d.example.", i)
			})
			b.submitAll(0, 2)
			b.wait(t, 5*time.Second)
			b.check(t, d.timeout, func(name string) expect {
				if strings.HasPrefix(name, "slow") {
					return expect{is: ErrTimeout}
				}
				return answered
			})
			b.checkOnce(t)
		}
		// And Close with queries in flight.
		b := newDo53Burst(t, d, 20, numberedNames("slowclose"))
		b.submitAll(0, 1)
		if err := u.Close(); err != nil {
			t.Fatal(err)
		}
		b.wait(t, 5*time.Second)
		b.check(t, d.timeout, always(expect{}))
		b.checkOnce(t)
	}
	waitGoroutines(t, before)
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
			big.query = mustPack(bigQ)
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
	srv := startDo53Server(b)
	u := newTestDo53(b, srv.addr, Options{Timeout: 10 * time.Second})
	warmDo53(b, u)
	q := makeQuery(b, "bench.example.", 0x1234)
	const inflight = 64
	sem := make(chan struct{}, inflight)
	var failed atomic.Int64
	var firstErr atomic.Pointer[error]
	done := func(resp []byte, err error) {
		if err != nil {
			failed.Add(1)
			firstErr.CompareAndSwap(nil, &err)
		}
		<-sem
	}
	b.ReportAllocs()
	for b.Loop() {
		sem <- struct{}{}
		u.Submit(q, 0, done)
	}
	for range inflight {
		sem <- struct{}{}
	}
	if n := failed.Load(); n > 0 {
		b.Fatalf("%d queries failed, first: %v", n, *firstErr.Load())
	}
}
