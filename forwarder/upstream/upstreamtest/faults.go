package upstreamtest

// Do53 fault servers (Do53Fault, TCPDNSServer) and network faults
// (TCPSink, ClosedPort, ClosedUDPPort), on loopback port 0.

import (
	"crypto/tls"
	"encoding/binary"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// TCPDNSServer is a raw RFC 7766 server for fault injection. For every
// query on connection conn (counting from 1) it asks onQuery what to do.
type TCPDNSServer struct {
	NConn   atomic.Int32 // connections accepted
	ln      net.Listener
	onQuery func(conn int, q *dns.Msg) TCPAction
	wg      sync.WaitGroup
	mu      sync.Mutex
	open    []net.Conn
}

// TCPAction is what a TCPDNSServer does with a query.
type TCPAction int

const (
	TCPAnswer TCPAction = iota // AnswerFor the query
	TCPIgnore                  // read, never answer
	TCPClose                   // close the connection without answering
)

// StartTCPDNSServer starts a TCPDNSServer, stopped at the end of the test.
func StartTCPDNSServer(t testing.TB, onQuery func(conn int, q *dns.Msg) TCPAction) *TCPDNSServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return startTCPDNSServer(t, ln, onQuery)
}

func startTCPDNSServer(t testing.TB, ln net.Listener, onQuery func(conn int, q *dns.Msg) TCPAction) *TCPDNSServer {
	s := &TCPDNSServer{ln: ln, onQuery: onQuery}
	s.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.open = append(s.open, c)
			s.mu.Unlock()
			idx := int(s.NConn.Add(1))
			s.wg.Go(func() { s.serve(c, idx) })
		}
	})
	t.Cleanup(func() {
		ln.Close()
		s.mu.Lock()
		for _, c := range s.open {
			c.Close()
		}
		s.mu.Unlock()
		s.wg.Wait()
	})
	return s
}

// Addr is the server's address.
func (s *TCPDNSServer) Addr() string { return s.ln.Addr().String() }

// Conn returns the server's end of connection idx (from 1).
func (s *TCPDNSServer) Conn(idx int) net.Conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.open[idx-1]
}

func (s *TCPDNSServer) serve(c net.Conn, idx int) {
	defer c.Close()
	for {
		var l [2]byte
		if _, err := io.ReadFull(c, l[:]); err != nil {
			return
		}
		b := make([]byte, binary.BigEndian.Uint16(l[:]))
		if _, err := io.ReadFull(c, b); err != nil {
			return
		}
		q := new(dns.Msg)
		if q.Unpack(b) != nil || len(q.Question) != 1 {
			return
		}
		switch s.onQuery(idx, q) {
		case TCPIgnore:
			continue
		case TCPClose:
			return
		}
		WriteFrame(c, MustPack(AnswerFor(q)))
	}
}

// WriteFrame writes msg with its RFC 1035 length prefix.
func WriteFrame(nc net.Conn, msg []byte) {
	nc.Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(msg))), msg...))
}

// Do53Fault is a Do53 server for fault injection on one loopback port: a
// raw UDP responder and, unless its handler is nil, a TCPDNSServer.
type Do53Fault struct {
	Addr       string
	UDPQueries atomic.Int32
	TCPQueries atomic.Int32
	tcp        atomic.Pointer[TCPDNSServer] // nil without TCP
	tls        bool                         // DoT (StartDoTFault)

	mu      sync.Mutex
	sources map[string]bool // UDP client sockets seen
}

// UDPHandler handles one query that came over UDP: it calls reply with
// each datagram to send back, now or later from any goroutine, or never.
type UDPHandler func(q *dns.Msg, reply func(msg []byte))

// TCPHandler is TCPDNSServer's onQuery, with the server for f.Conn.
type TCPHandler func(f *Do53Fault, conn int, q *dns.Msg) TCPAction

// UDPAnswer answers with AnswerFor(q).
func UDPAnswer(q *dns.Msg, reply func([]byte)) { reply(MustPack(AnswerFor(q))) }

// UDPIgnore never answers.
func UDPIgnore(*dns.Msg, func([]byte)) {}

// UDPTruncate answers names starting with "tc" with an empty TC answer,
// the others fully.
func UDPTruncate(q *dns.Msg, reply func([]byte)) {
	if !strings.HasPrefix(q.Question[0].Name, "tc") {
		UDPAnswer(q, reply)
		return
	}
	m := new(dns.Msg)
	m.SetReply(q)
	m.Truncated = true
	reply(MustPack(m))
}

// TCPAnswerAll answers every TCP query.
func TCPAnswerAll(*Do53Fault, int, *dns.Msg) TCPAction { return TCPAnswer }

// TCPIgnoreAll answers no TCP query.
func TCPIgnoreAll(*Do53Fault, int, *dns.Msg) TCPAction { return TCPIgnore }

// StartDo53Fault starts the servers; nil onUDP ignores every datagram, nil
// onTCP leaves the TCP port closed (connection refused).
func StartDo53Fault(t testing.TB, onUDP UDPHandler, onTCP TCPHandler) *Do53Fault {
	t.Helper()
	if onUDP == nil {
		onUDP = UDPIgnore
	}
	f := &Do53Fault{sources: make(map[string]bool)}
	var pc net.PacketConn
	if onTCP == nil {
		var err error
		if pc, err = net.ListenPacket("udp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
	} else {
		var ln net.Listener
		pc, ln = listenUDPAndTCP(t)
		f.tcp.Store(startTCPDNSServer(t, ln, func(conn int, q *dns.Msg) TCPAction {
			f.TCPQueries.Add(1)
			return onTCP(f, conn, q)
		}))
	}
	f.Addr = pc.LocalAddr().String()
	serveUDP(t, pc, func(q *dns.Msg, from net.Addr, reply func([]byte)) {
		f.UDPQueries.Add(1)
		f.mu.Lock()
		f.sources[from.String()] = true
		f.mu.Unlock()
		onUDP(q, reply)
	})
	return f
}

// Target is the fault server as a Do53 target: UDP (with TCP on TC) or
// TCP only; a DoT one's is tls://.
func (f *Do53Fault) Target(tcp bool) string {
	if f.tls {
		return "tls://" + f.Addr
	}
	if tcp {
		return "tcp://" + f.Addr
	}
	return f.Addr
}

// Conn returns the server's end of TCP connection idx (from 1).
func (f *Do53Fault) Conn(idx int) net.Conn { return f.tcp.Load().Conn(idx) }

// UDPClients returns how many distinct client sockets sent queries over
// UDP.
func (f *Do53Fault) UDPClients() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.sources)
}

// TCPConns returns how many TCP connections the server accepted.
func (f *Do53Fault) TCPConns() int32 { return f.tcp.Load().NConn.Load() }

// TCPReset makes the close that follows TCPClose a reset (RST).
func TCPReset(f *Do53Fault, conn int) TCPAction {
	nc := f.Conn(conn)
	if tc, ok := nc.(*tls.Conn); ok {
		nc = tc.NetConn()
	}
	nc.(*net.TCPConn).SetLinger(0)
	return TCPClose
}

// FailTCPAt answers on every connection but the first, which holds queries
// unanswered until the nth, and then dies by fault (TCPClose, or TCPReset
// if reset).
func FailTCPAt(n int32, reset bool) TCPHandler {
	var seen atomic.Int32
	return func(f *Do53Fault, conn int, q *dns.Msg) TCPAction {
		switch {
		case conn > 1:
			return TCPAnswer
		case seen.Add(1) < n:
			return TCPIgnore
		case reset:
			return TCPReset(f, conn)
		}
		return TCPClose
	}
}

// TCPSink accepts TCP connections and then either holds them without a
// byte read or written, or resets them at once.
type TCPSink struct {
	Accepted atomic.Int32
	ln       net.Listener
}

// StartTCPSink starts a TCPSink that resets what it accepts if reset.
func StartTCPSink(t testing.TB, reset bool) *TCPSink {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &TCPSink{ln: ln}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var held []net.Conn
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.Accepted.Add(1)
			if reset {
				c.(*net.TCPConn).SetLinger(0)
				c.Close()
				continue
			}
			mu.Lock()
			held = append(held, c)
			mu.Unlock()
		}
	})
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
		for _, c := range held {
			c.Close()
		}
	})
	return s
}

// Addr is the sink's address.
func (s *TCPSink) Addr() string { return s.ln.Addr().String() }

// URL is the sink as a DoH target.
func (s *TCPSink) URL() string { return "https://" + s.Addr() + "/dns-query" }

// ClosedPort returns a loopback address where no TCP socket listens.
func ClosedPort(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// ClosedUDPPort returns a loopback address where no UDP socket listens.
func ClosedUDPPort(t testing.TB) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := pc.LocalAddr().String()
	pc.Close()
	return addr
}

// Later runs a fault server's delayed replies and lets a test's cleanup
// wait for them. A reply asked for once Wait has begun is dropped: the
// test is over, and a WaitGroup must not grow while it is waited on.
type Later struct {
	mu   sync.Mutex
	wg   sync.WaitGroup
	done bool
}

// NewLater returns a Later; register its Wait with t.Cleanup where the
// replies must have finished (before the server's own cleanup, as a rule).
func NewLater() *Later { return &Later{} }

// AfterFunc runs f after d, unless Wait has begun.
func (l *Later) AfterFunc(d time.Duration, f func()) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.done {
		return
	}
	l.wg.Add(1)
	time.AfterFunc(d, func() {
		defer l.wg.Done()
		f()
	})
}

// Wait stops new replies and waits for those under way.
func (l *Later) Wait() {
	l.mu.Lock()
	l.done = true
	l.mu.Unlock()
	l.wg.Wait()
}
