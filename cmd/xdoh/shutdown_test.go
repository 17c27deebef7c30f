package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// slowUpstream is a Do53 server on loopback (UDP and TCP) that answers
// every A query with 192.0.2.1 after delay: fault injection for queries
// that are still in flight when xdoh is told to stop. received counts the
// queries it got.
func slowUpstream(t *testing.T, delay time.Duration) (addr string, received *atomic.Int64) {
	t.Helper()
	received = new(atomic.Int64)
	h := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		received.Add(1)
		time.Sleep(delay)
		m := new(dns.Msg).SetReply(r)
		if len(r.Question) == 1 && r.Question[0].Qtype == dns.TypeA {
			rr, _ := dns.NewRR(r.Question[0].Name + " 300 IN A 192.0.2.1")
			m.Answer = append(m.Answer, rr)
		}
		_ = w.WriteMsg(m)
	})
	addr = freeAddr(t)
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		pc.Close()
		t.Fatal(err)
	}
	us := &dns.Server{PacketConn: pc, Handler: h}
	ts := &dns.Server{Listener: ln, Handler: h}
	go us.ActivateAndServe()
	go ts.ActivateAndServe()
	t.Cleanup(func() { _ = us.Shutdown(); _ = ts.Shutdown() })
	return addr, received
}

// TestSIGTERMDrains: queries in flight to a slow upstream when SIGTERM
// arrives get their answers, over UDP, over TCP alone (whose listener
// cannot stop taking queries without closing its connections, so it closes
// last) and both, before xdoh exits on its own. With a shutdown_timeout
// shorter than the upstream's delay, xdoh exits at the deadline without
// waiting for them.
func TestSIGTERMDrains(t *testing.T) {
	for _, tc := range []struct {
		name     string
		protos   []string
		delay    time.Duration
		timeout  string
		answered bool
	}{
		{"udp", []string{"udp"}, 1500 * time.Millisecond, "6s", true},
		{"tcp", []string{"tcp"}, 1500 * time.Millisecond, "6s", true},
		{"udp+tcp", []string{"udp", "tcp"}, 1500 * time.Millisecond, "6s", true},
		{"deadline", []string{"udp", "tcp"}, 8 * time.Second, "300ms", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			drainRun(t, tc.protos, tc.delay, tc.timeout, tc.answered)
		})
	}
}

func drainRun(t *testing.T, protos []string, delay time.Duration, timeout string, wantAnswered bool) {
	up, received := slowUpstream(t, delay)
	dir := t.TempDir()
	addr := freeAddr(t)
	cfgPath := filepath.Join(dir, "x.yaml")
	text := fmt.Sprintf(`listeners: [{name: in, do53: [%q]}]
default: {targets: [%q], timeout: 9s}
upstream: {query_timeout: 9s}
shutdown_timeout: %s
`, addr, up, timeout)
	if err := os.WriteFile(cfgPath, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(xdohBin, "run", "-c", cfgPath)
	stderr := &syncBuffer{}
	cmd.Stderr = stderr
	exited, waitErr := startProc(t, cmd)
	// Ready: an AXFR over UDP is answered FORMERR at once, without the
	// upstream.
	probe := new(dns.Msg).SetQuestion("probe.invalid.", dns.TypeAXFR)
	for deadline := time.Now().Add(10 * time.Second); ; {
		if _, _, err := (&dns.Client{Timeout: 200 * time.Millisecond}).Exchange(probe, addr); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("xdoh did not start\n%s", stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}

	const perProto = 10
	type result struct {
		proto, name string
		err         error
		rcode       int
		answers     int
	}
	results := make(chan result, len(protos)*perProto)
	var wg sync.WaitGroup
	for _, proto := range protos {
		for i := range perProto {
			wg.Add(1)
			go func() {
				defer wg.Done()
				name := fmt.Sprintf("q%d-%s.drain.example.", i, proto)
				m := new(dns.Msg).SetQuestion(name, dns.TypeA)
				r, _, err := (&dns.Client{Net: proto, Timeout: 12 * time.Second}).Exchange(m, addr)
				res := result{proto: proto, name: name, err: err}
				if r != nil {
					res.rcode, res.answers = r.Rcode, len(r.Answer)
				}
				results <- res
			}()
		}
	}
	// Every query has reached the upstream: all are in flight.
	sent := int64(len(protos) * perProto)
	for deadline := time.Now().Add(5 * time.Second); received.Load() < sent; {
		if time.Now().After(deadline) {
			t.Fatalf("the upstream got %d of %d queries", received.Load(), sent)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if !wantAnswered {
		// Past shutdown_timeout xdoh exits without the upstream's answers.
		select {
		case <-exited:
		case <-time.After(delay - time.Second):
			t.Fatalf("xdoh still runs with queries in flight past shutdown_timeout %s\n%s", timeout, stderr.String())
		}
		wg.Wait()
		return
	}
	wg.Wait()
	close(results)
	answered := 0
	for r := range results {
		if r.err != nil || r.rcode != dns.RcodeSuccess || r.answers != 1 {
			t.Errorf("%s %s: err %v rcode %d answers %d: a query in flight at SIGTERM was not answered", r.proto, r.name, r.err, r.rcode, r.answers)
			continue
		}
		answered++
	}
	t.Logf("in flight at SIGTERM: %d, answered: %d", sent, answered)
	select {
	case <-exited:
		if err := waitErr(); err != nil {
			t.Errorf("xdoh exited with %v\n%s", err, stderr.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("xdoh did not exit after draining\n%s", stderr.String())
	}
}
