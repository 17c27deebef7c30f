package upstream

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"
)

// rawPair returns a rawConn client and the server's end of a loopback TCP
// connection.
func rawPair(t *testing.T) (*rawConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type acc struct {
		c   *net.TCPConn
		err error
	}
	ch := make(chan acc, 1)
	go func() {
		c, err := ln.AcceptTCP()
		ch <- acc{c, err}
	}()
	nc, err := net.DialTCP("tcp", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	a := <-ch
	if a.err != nil {
		t.Fatal(a.err)
	}
	rc, ok := newRawConn(nc).(*rawConn)
	if !ok {
		t.Fatal("newRawConn did not wrap a TCP connection")
	}
	t.Cleanup(func() { rc.Close(); a.c.Close() })
	return rc, a.c
}

func TestRawConnTCPRoundTrip(t *testing.T) {
	rc, peer := rawPair(t)
	if n, err := rc.Write(nil); n != 0 || err != nil {
		t.Fatalf("Write(nil) = %d, %v", n, err)
	}
	if n, err := rc.Read(nil); n != 0 || err != nil {
		t.Fatalf("Read(nil) = %d, %v", n, err)
	}
	msg := []byte("query over a raw socket")
	if n, err := rc.Write(msg); n != len(msg) || err != nil {
		t.Fatalf("Write = %d, %v", n, err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(peer, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("peer read %q, %v", got, err)
	}
	// A Read parks until the answer arrives.
	go func() {
		time.Sleep(20 * time.Millisecond)
		peer.Write([]byte("answer"))
	}()
	buf := make([]byte, 64)
	n, err := rc.Read(buf)
	if err != nil || string(buf[:n]) != "answer" {
		t.Fatalf("Read = %q, %v", buf[:n], err)
	}
	peer.Close()
	if n, err := rc.Read(buf); n != 0 || err != io.EOF {
		t.Fatalf("Read after the peer closed = %d, %v; want 0, EOF", n, err)
	}
}

// A write far larger than the socket buffers parks whenever the socket is
// full and finishes once the peer has read everything, bytes intact.
func TestRawConnTCPLargeWrite(t *testing.T) {
	rc, peer := rawPair(t)
	big := make([]byte, 16<<20)
	for i := range big {
		big[i] = byte(i * 7)
	}
	got := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(peer)
		got <- b
	}()
	n, err := rc.Write(big)
	if n != len(big) || err != nil {
		t.Fatalf("Write = %d, %v; want %d, nil", n, err, len(big))
	}
	rc.Conn.(*net.TCPConn).CloseWrite()
	if b := <-got; !bytes.Equal(b, big) {
		t.Fatalf("peer got %d bytes, not the %d written", len(b), len(big))
	}
}

// Deadlines apply as on net.TCPConn: a parked Read or Write ends with a
// timeout, and a Write reports how much went out.
func TestRawConnTCPDeadlines(t *testing.T) {
	for _, tc := range []struct {
		name string
		op   func(rc *rawConn) (int, error)
	}{
		{"read", func(rc *rawConn) (int, error) {
			rc.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
			return rc.Read(make([]byte, 10))
		}},
		{"write to a peer that never reads", func(rc *rawConn) (int, error) {
			big := make([]byte, 64<<20) // before the deadline: under -race this takes a while
			rc.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
			return rc.Write(big)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rc, _ := rawPair(t)
			start := time.Now()
			n, err := tc.op(rc)
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("err = %v; want a deadline error", err)
			}
			var ne net.Error
			if !errors.As(err, &ne) || !ne.Timeout() {
				t.Errorf("err %v is not a net.Error with Timeout()", err)
			}
			if tc.name != "read" && (n == 0 || n >= 64<<20) {
				t.Errorf("Write reported %d bytes written; want some, not all", n)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("took %v", d)
			}
		})
	}
}

// TestRawConnSendQueueEmpty: true on a fresh connection and once the peer
// has read everything; false while written bytes wait for a peer that does
// not read (writeInline leaves such a connection to its writer).
func TestRawConnSendQueueEmpty(t *testing.T) {
	rc, peer := rawPair(t)
	if !rc.sendQueueEmpty() {
		t.Fatal("a fresh connection's send queue is not empty")
	}
	// A small receive buffer, so that what the peer's kernel holds (and
	// has acknowledged) is far less than the write.
	if err := peer.SetReadBuffer(16 << 10); err != nil {
		t.Fatal(err)
	}
	big := make([]byte, 64<<20) // before the deadline: under -race this takes a while
	_ = rc.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	n, _ := rc.Write(big) // fills both sockets' buffers
	if n == 0 {
		t.Fatal("nothing written before the deadline")
	}
	if rc.sendQueueEmpty() {
		t.Fatal("send queue empty with the peer not reading")
	}
	_ = rc.SetWriteDeadline(time.Time{})
	if _, err := io.CopyN(io.Discard, peer, int64(n)); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !rc.sendQueueEmpty() { // the last ACKs may lag the reads
		if time.Now().After(deadline) {
			t.Fatal("send queue not empty after the peer read everything")
		}
		time.Sleep(time.Millisecond)
	}
}

// Close wakes a parked Read; a reset from the peer is an error, not EOF.
func TestRawConnTCPCloseAndReset(t *testing.T) {
	t.Run("close", func(t *testing.T) {
		rc, _ := rawPair(t)
		errc := make(chan error, 1)
		go func() {
			_, err := rc.Read(make([]byte, 10))
			errc <- err
		}()
		time.Sleep(20 * time.Millisecond)
		rc.Close()
		select {
		case err := <-errc:
			if !errors.Is(err, net.ErrClosed) {
				t.Fatalf("Read = %v; want net.ErrClosed", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("Close did not wake the parked Read")
		}
		if _, err := rc.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Write after Close = %v; want net.ErrClosed", err)
		}
	})
	t.Run("reset", func(t *testing.T) {
		rc, peer := rawPair(t)
		peer.SetLinger(0)
		peer.Close()
		_, err := rc.Read(make([]byte, 10))
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("Read = %v; want ECONNRESET", err)
		}
		var oe *net.OpError
		if !errors.As(err, &oe) || oe.Op != "read" || oe.Addr == nil {
			t.Errorf("err %v is not a *net.OpError naming the read and the peer", err)
		}
	})
}

// A connected UDP socket: every datagram is one Read, an empty one is not
// the end of anything, writes from many goroutines at once each go out
// whole, and an ICMP port unreachable is the next Read's error.
func TestRawConnUDP(t *testing.T) {
	srv, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	nc, err := net.DialUDP("udp", nil, srv.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	rc, ok := newRawConn(nc).(*rawConn)
	if !ok {
		t.Fatal("newRawConn did not wrap a UDP socket")
	}
	defer rc.Close()

	const writers, each = 8, 20
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				msg := []byte{byte(w), byte(i), 'x', 'y', 'z'}
				if n, err := rc.Write(msg); n != len(msg) || err != nil {
					t.Errorf("Write = %d, %v", n, err)
					return
				}
			}
		}()
	}
	seen := map[[2]byte]bool{}
	buf := make([]byte, 64)
	srv.SetReadDeadline(time.Now().Add(5 * time.Second))
	for range writers * each {
		n, _, err := srv.ReadFromUDP(buf)
		if err != nil {
			t.Fatalf("server read: %v (got %d of %d datagrams)", err, len(seen), writers*each)
		}
		if n != 5 || string(buf[2:5]) != "xyz" {
			t.Fatalf("server got %q: not one whole datagram", buf[:n])
		}
		seen[[2]byte{buf[0], buf[1]}] = true
	}
	wg.Wait()
	if len(seen) != writers*each {
		t.Fatalf("%d distinct datagrams of %d", len(seen), writers*each)
	}

	client := rc.LocalAddr().(*net.UDPAddr)
	for _, d := range [][]byte{{}, []byte("answer")} {
		if _, err := srv.WriteToUDP(d, client); err != nil {
			t.Fatal(err)
		}
		n, err := rc.Read(buf)
		if err != nil || string(buf[:n]) != string(d) {
			t.Fatalf("Read = %q, %v; want %q, nil", buf[:n], err, d)
		}
	}

	srv.Close() // nobody listens: the kernel answers with port unreachable
	rc.Write([]byte("query"))
	rc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := rc.Read(buf); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("Read after an ICMP port unreachable = %v; want ECONNREFUSED", err)
	}
}
