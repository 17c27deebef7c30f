package gnet

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/miekg/dns"

	"xdoh/forwarder"
)

// TestUDPMissAfterStop: a miss still resolving when the engine stops is not
// sent on the engine's fd (closed, its number possibly reused by then); it
// is dropped and counted, and no datagram reaches the client from anywhere.
func TestUDPMissAfterStop(t *testing.T) {
	f, err := forwarder.New(forwarder.Config{
		Default: []forwarder.Target{{Up: &slowExchanger{addr: startUpstream(t), delay: 300 * time.Millisecond}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	s := start(t, Config{Name: "t", Addrs: []string{freePort(t, "127.0.0.1")}}, f)
	addr := s.Addrs()[0]
	// Unconnected: it would see a reply from any source port.
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ua, _ := net.ResolveUDPAddr("udp", addr)
	q, _ := new(dns.Msg).SetQuestion("late.example.com.", dns.TypeA).Pack()
	if _, err := c.WriteTo(q, ua); err != nil {
		t.Fatal(err)
	}
	for s.Stats().UDPQueries == 0 {
		time.Sleep(time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := s.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	// Take the freed descriptor numbers with sockets of our own: a reply
	// sent on the old fd would now leave from one of them.
	for range 16 {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer pc.Close()
	}
	_ = c.SetReadDeadline(time.Now().Add(600 * time.Millisecond))
	if n, from, err := c.ReadFrom(make([]byte, 512)); err == nil {
		t.Fatalf("got a %d-byte reply from %v after Stop, sent on a reused descriptor", n, from)
	}
	for deadline := time.Now().Add(2 * time.Second); s.Stats().UDPReplyDrops == 0; {
		if time.Now().After(deadline) {
			t.Fatalf("stats %+v: the reply after Stop was not dropped", s.Stats())
		}
		time.Sleep(5 * time.Millisecond)
	}
}
