package forwarder

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// Regression (review): the client leading a coalesced exchange goes away
// (a DoH stream reset cancels its context); the others waiting on the same
// name still get the upstream's answer.
func TestLeaderCancelDoesNotFailWaiters(t *testing.T) {
	up := newSwitchable(300, 200*time.Millisecond)
	f, err := New(Config{Default: []Target{{Up: up}}})
	if err != nil {
		t.Fatal(err)
	}
	leaderCtx, cancelLeader := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		f.ServeDNS(leaderCtx, &Request{Msg: query(t, "co.example.com.", dns.TypeA, false), Transport: TransportDoH}, nil)
	}()
	time.Sleep(30 * time.Millisecond) // the leader's exchange is in flight
	var waiter *dns.Msg
	wg.Add(1)
	go func() {
		defer wg.Done()
		waiter = serve(t, f, query(t, "co.example.com.", dns.TypeA, false), TransportUDP)
	}()
	time.Sleep(30 * time.Millisecond)
	cancelLeader()
	wg.Wait()
	if waiter.Rcode != dns.RcodeSuccess || len(waiter.Answer) != 1 {
		t.Fatalf("waiter got %v after the leader went away", waiter)
	}
	if f.Stats().Coalesced != 1 {
		t.Fatalf("coalesced %d, want 1", f.Stats().Coalesced)
	}
}
