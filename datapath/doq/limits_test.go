package doq

import (
	"context"
	"crypto/tls"
	"net"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"xdoh/datapath/internal/pipetest"
)

// dialFrom connects from a UDP socket on the loopback address from.
func dialFrom(t *testing.T, s *Server, from string) (*quic.Conn, error) {
	t.Helper()
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP(from)})
	if err != nil {
		t.Fatal(err)
	}
	tr := &quic.Transport{Conn: udp}
	t.Cleanup(func() { tr.Close(); udp.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := tr.Dial(ctx, s.Addr(), &tls.Config{RootCAs: pki(t).Pool, ServerName: "localhost", NextProtos: []string{ALPN}}, &quic.Config{})
	if err == nil {
		t.Cleanup(func() { c.CloseWithError(0, "") })
	}
	return c, err
}

// TestMaxConnsPerClient: past MaxConnsPerClient from one address a
// connection is refused at its first packet and counted apart from
// MaxConns; another address still gets in, and a closed connection frees
// its client's slot.
func TestMaxConnsPerClient(t *testing.T) {
	s := start(t, Config{MaxConnsPerClient: 1}, pipetest.Forwarder(t, &pipetest.Upstream{}, nil))
	first := mustDial(t, s)
	if _, err := dialFrom(t, s, "127.0.0.1"); err == nil {
		t.Fatal("a second connection from 127.0.0.1 was accepted")
	}
	waitFor(t, "the counters", func() bool { st := s.Stats(); return st.RefusedPerClient >= 1 && st.Refused == 0 })
	c, err := dialFrom(t, s, "127.0.0.2")
	if err != nil {
		t.Fatalf("from 127.0.0.2: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := exchange(ctx, c, pipetest.Query(t, pipetest.LocalA, 0)); err != nil {
		t.Fatal(err)
	}
	first.CloseWithError(0, "")
	waitFor(t, "one connection", func() bool { return s.Stats().Open == 1 })
	if _, err := dialFrom(t, s, "127.0.0.1"); err != nil {
		t.Fatalf("after a close: %v", err)
	}
}

// TestHandshakeStalls (slowloris): a client whose first packet arrives
// and nothing after it holds its slot only until HandshakeTimeout, and is
// counted in HandshakeTimeouts. A relay passes the client's first
// datagram to the server and drops the rest, both ways.
func TestHandshakeStalls(t *testing.T) {
	s := start(t, Config{HandshakeTimeout: 300 * time.Millisecond, MaxConns: 1}, pipetest.Forwarder(t, &pipetest.Upstream{}, nil))
	relay, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer relay.Close()
	go func() {
		buf := make([]byte, 2048)
		n, _, err := relay.ReadFrom(buf)
		if err != nil {
			return
		}
		relay.WriteTo(buf[:n], s.Addr())
		for {
			if _, _, err := relay.ReadFrom(buf); err != nil {
				return
			}
		}
	}()
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	tr := &quic.Transport{Conn: udp}
	defer func() { tr.Close(); udp.Close() }()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	go tr.Dial(ctx, relay.LocalAddr(), &tls.Config{RootCAs: pki(t).Pool, ServerName: "localhost", NextProtos: []string{ALPN}}, &quic.Config{})
	waitFor(t, "the stalled handshake to hold the only slot", func() bool { return s.Stats().Open == 1 })
	waitFor(t, "HandshakeTimeouts 1", func() bool { st := s.Stats(); return st.HandshakeTimeouts == 1 && st.Open == 0 })
	// The slot is free again.
	c := mustDial(t, s)
	ctx2, cancel2 := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel2()
	if _, err := exchange(ctx2, c, pipetest.Query(t, pipetest.LocalA, 0)); err != nil {
		t.Fatal(err)
	}
}
