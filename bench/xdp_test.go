//go:build linux

package bench

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/miekg/dns"

	"xdoh/datapath/xsk/xsktest"
)

// serveDNSIn answers every query on addr:53 inside namespace ns with
// NOERROR and one A record, until the test ends.
func serveDNSIn(t *testing.T, ns, addr string) {
	t.Helper()
	var c net.PacketConn
	err := xsktest.In(ns, func() (err error) {
		c, err = net.ListenPacket("udp", net.JoinHostPort(addr, "53"))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	go func() {
		buf := make([]byte, 2048)
		out := make([]byte, 0, 2048)
		for {
			n, from, err := c.ReadFrom(buf)
			if err != nil {
				return
			}
			var m dns.Msg
			if m.Unpack(buf[:n]) != nil || len(m.Question) != 1 {
				continue
			}
			r := new(dns.Msg).SetReply(&m)
			r.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: m.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(10, 2, 1, 10)}}
			if b, err := r.PackBuffer(out); err == nil {
				_, _ = c.WriteTo(b, from)
			}
		}
	}()
}

// TestXDP runs --xdp from the client namespace of a veth pair against a
// DNS server in the other, over IPv4 and IPv6, in a closed loop with a
// count and an open loop at a rate, sending from one queue or both:
// every answer comes back through the AF_XDP sockets (the kernel's
// socket layer never sees one: the program steers them all, whichever
// queue they arrive on), NOERROR, and the counts add up.
func TestXDP(t *testing.T) {
	p := xsktest.NewPair(t, 2)
	serveDNSIn(t, p.ServerNS, p.Server4)
	serveDNSIn(t, p.ServerNS, p.Server6)
	q := listSourceOf(t, fooFile(t))
	for _, c := range []struct {
		name   string
		target string
		cfg    Config
		check  func(t *testing.T, rep *Report)
	}{
		{"ipv4 closed loop, both queues send", p.Server4, Config{Outstanding: 64, Count: 20000, Clients: 2}, func(t *testing.T, rep *Report) {
			if rep.Sent != 20000 || rep.Answered != 20000 {
				t.Errorf("sent %d answered %d, want 20000 each", rep.Sent, rep.Answered)
			}
		}},
		{"ipv6 closed loop", "[" + p.Server6 + "]:53", Config{Outstanding: 64, Count: 20000}, func(t *testing.T, rep *Report) {
			if rep.Sent != 20000 || rep.Answered != 20000 {
				t.Errorf("sent %d answered %d, want 20000 each", rep.Sent, rep.Answered)
			}
		}},
		{"ipv4 open loop", "udp://" + p.Server4 + ":53", Config{Rate: 2000, Limit: 2 * time.Second}, func(t *testing.T, rep *Report) {
			// The schedule's 4000 queries, sent or counted unsent (a
			// late stop on a busy machine may add a few); the rate the
			// box achieves is the benchmark's business, not this test's,
			// so the rate is one a loaded box keeps up with under -race.
			if n := rep.Sent + rep.Unsent; n < 3960 || n > 4200 {
				t.Errorf("sent %d, unsent %d at 2000 q/s for 2 s", rep.Sent, rep.Unsent)
			}
			if rep.Answered < rep.Sent*8/10 {
				t.Errorf("%d of %d answered", rep.Answered, rep.Sent)
			}
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := c.cfg
			cfg.Target, cfg.XDP, cfg.Source, cfg.Timeout = c.target, p.ClientIf, q, time.Second
			var rep *Report
			err := xsktest.In(p.ClientNS, func() (err error) {
				rep, err = Run(context.Background(), cfg)
				return err
			})
			if err != nil {
				t.Fatalf("%v (report %+v)", err, rep)
			}
			if want := max(c.cfg.Clients, 1); rep.Transport != "udp-xdp" || rep.Settings.Clients != want {
				t.Errorf("transport %q with %d sending sockets, want udp-xdp with %d", rep.Transport, rep.Settings.Clients, want)
			}
			checkSane(t, rep)
			c.check(t, rep)
		})
	}
}

// echoDNSIn answers every query on addr:53 inside namespace ns with the
// query itself, flagged as a response: a server that allocates nothing,
// so that an allocation count sees only the rig's.
func echoDNSIn(t *testing.T, ns, addr string) {
	t.Helper()
	var c *net.UDPConn
	err := xsktest.In(ns, func() (err error) {
		c, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(addr), 53)))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			buf[2] |= 0x80
			_, _ = c.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
}

// TestXDPNoAllocs: a closed-loop round of the AF_XDP loop (a batch out,
// its answers in) allocates nothing.
func TestXDPNoAllocs(t *testing.T) {
	p := xsktest.NewPair(t, 2)
	echoDNSIn(t, p.ServerNS, p.Server4)
	q := listSourceOf(t, fooFile(t))
	cfg := Config{Target: p.Server4, XDP: p.ClientIf, Source: q, Timeout: 2 * time.Second, Clients: 1}
	var tr *xdpTransport
	err := xsktest.In(p.ClientNS, func() (err error) {
		tr, err = newXDP(&cfg)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	ph := &phase{cfg: &cfg, src: q, outstanding: udpBatch, stop: make(chan struct{}), rec: newRecorder(time.Now())}
	l := tr.loops(ph)[0]
	w := l.workers[0]
	timeout := int64(cfg.Timeout)
	round := func() {
		if !w.sendBatch() {
			t.Fatal("no batch sent with every ID free")
		}
		for w.inflight.Load() > 0 {
			moved := false
			for _, s := range l.socks {
				moved = l.receive(s) || moved
			}
			now := ph.rec.now()
			w.scan(now, timeout) // a lost reply ends the round, as a timeout
			w.rt.flush()
			if !moved {
				l.park(now, now)
			}
		}
	}
	round() // the first second's timeline entry
	if a := testing.AllocsPerRun(100, round); a != 0 {
		t.Errorf("%v allocations per round of %d queries", a, udpBatch)
	}
	if c := ph.rec.c; c.answered < 100*udpBatch || c.malformed != 0 {
		t.Errorf("answered %d, malformed %d, timeouts %d", c.answered, c.malformed, c.timeouts)
	}
}
