package tcp

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// TestTCPClientThatDoesNotRead: a client pipelining queries without reading
// the answers is disconnected once its backlog passes the bound, instead of
// growing the server's memory with everything it sends (found in review: 293
// MB of heap for 38 MB of queries).
func TestTCPClientThatDoesNotRead(t *testing.T) {
	s := startServer(t, Config{Name: "t", Addrs: []string{freePort(t, "127.0.0.1")}})
	addr := s.Addrs()[0]
	batch := pipeline("aws.example.internal.", dns.TypeANY, 10000)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// The client's receive buffer keeps its default size. Shrunk to 4 KiB
	// it made the client's kernel prune data it had already advertised
	// window for; the server's ACKs then fell outside the (zero) window and
	// were dropped unread, the client's queries stalled in retransmission
	// backoff, and the server rightly closed the silent connection as idle
	// (CI, under load).
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	before := ms.HeapInuse
	// ~4 s alone; much longer under -race with every package testing at
	// once. The deadline is per batch: a slow server is fine, a server that
	// stops reading without closing is not.
	var werr error
	for range 100 { // up to 1M queries, ~40 MB
		_ = c.SetWriteDeadline(time.Now().Add(30 * time.Second))
		if _, werr = c.Write(batch); werr != nil {
			break
		}
	}
	if werr == nil {
		t.Fatal("the server kept reading queries from a client that never reads answers")
	}
	if ne, ok := werr.(net.Error); ok && ne.Timeout() {
		t.Fatalf("the server neither read nor closed for 30 s: %v (server: %+v)", werr, s.Stats())
	}
	runtime.GC()
	runtime.ReadMemStats(&ms)
	if grew := int64(ms.HeapInuse) - int64(before); grew > 64<<20 {
		t.Fatalf("server heap grew by %d MB", grew>>20)
	}
	if st := s.Stats(); st.TCPBacklogClosed == 0 {
		t.Fatalf("backlog close not counted: %+v", st)
	}
	// The write fails because the server is gone (a reset or a broken
	// pipe), not by timing out. That the close is itself a reset, not a FIN,
	// shows in TestTCPIdleWithUnreadAnswers, where the client stops writing.
	if !errors.Is(werr, syscall.ECONNRESET) && !errors.Is(werr, syscall.EPIPE) {
		t.Fatalf("write after the backlog close: %v, want a reset", werr)
	}
}

// TestTCPIdleWithUnreadAnswers: a client that sends queries, reads none of
// the answers and goes quiet is reset at the idle timeout. A FIN would queue
// behind the answers it does not read and never arrive; the kernel would
// hold them until its retries ran out. (An idle client with nothing unread
// gets a FIN: TestTCPLimits.)
func TestTCPIdleWithUnreadAnswers(t *testing.T) {
	s := startServer(t, Config{Name: "t", Addrs: []string{freePort(t, "127.0.0.1")}, TCPIdleTimeout: time.Second})
	// ~600 KB of answers: more than the client's window.
	c := dialAndSend(t, s, pipeline("ipv4.aws.example.internal.", dns.TypeA, 10000))
	// Wait for the idle close before reading anything.
	for s.Stats().TCPIdleClosed == 0 {
		if !waitUntil(t, time.Now().Add(20*time.Second)) {
			t.Fatalf("no idle close: %+v", s.Stats())
		}
	}
	var got int
	buf := make([]byte, 64<<10)
	for {
		n, err := c.Read(buf)
		got += n
		if err == nil {
			continue
		}
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("after the idle close the client read %d bytes, then %v; want a reset", got, err)
		}
		break
	}
	if st := s.Stats(); st.TCPQueries != 10000 || st.TCPBacklogClosed != 0 {
		t.Fatalf("stats %+v, want 10000 queries and no backlog close", st)
	}
}

// waitUntil sleeps a little and reports whether deadline is still ahead.
func waitUntil(t *testing.T, deadline time.Time) bool {
	t.Helper()
	time.Sleep(50 * time.Millisecond)
	return time.Now().Before(deadline)
}

// TestTCPIdleSlowReader: a client that stopped sending but still reads its
// answers, slowly, gets all of them and then a FIN at the idle timeout; a
// client that sent half a length prefix is closed at the idle timeout too
// (found in review: the partial byte had kept it open for good).
func TestTCPIdleSlowReader(t *testing.T) {
	s := startServer(t, Config{Name: "t", Addrs: []string{freePort(t, "127.0.0.1")}, TCPIdleTimeout: time.Second})
	t.Run("slow reader", func(t *testing.T) {
		const n = 15000 // ~900 KB of answers: more than the socket buffers hold
		c := dialAndSend(t, s, pipeline("ipv4.aws.example.internal.", dns.TypeA, n))
		// 16 KiB every 100 ms: about 6 s for all of it, well past the
		// idle timeout.
		var got []byte
		buf := make([]byte, 16<<10)
		for {
			time.Sleep(100 * time.Millisecond)
			k, err := c.Read(buf)
			got = append(got, buf[:k]...)
			if err != nil {
				if err != io.EOF {
					t.Fatalf("after %d bytes: %v, want EOF after all the answers", len(got), err)
				}
				break
			}
		}
		answers := 0
		for len(got) >= 2 {
			l := int(binary.BigEndian.Uint16(got))
			if len(got) < 2+l {
				break
			}
			got = got[2+l:]
			answers++
		}
		if answers != n || len(got) != 0 {
			t.Fatalf("read %d answers (and %d stray bytes) before EOF, want %d", answers, len(got), n)
		}
	})
	t.Run("partial frame", func(t *testing.T) {
		c, err := net.Dial("tcp", s.Addrs()[0])
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write([]byte{0}); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err != io.EOF {
			t.Fatalf("read: %v, want EOF at the idle timeout", err)
		}
	})
}

// pipeline is n copies of the TCP-framed query for name and qtype.
func pipeline(name string, qtype uint16, n int) []byte {
	q, _ := new(dns.Msg).SetQuestion(name, qtype).Pack()
	frame := binary.BigEndian.AppendUint16(nil, uint16(len(q)))
	frame = append(frame, q...)
	return bytes.Repeat(frame, n)
}

// dialAndSend connects to s and writes b, with a 30 s deadline on the
// connection.
func dialAndSend(t *testing.T, s *Server, b []byte) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", s.Addrs()[0])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.Write(b); err != nil {
		t.Fatal(err)
	}
	return c
}
