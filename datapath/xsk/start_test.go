package xsk

import (
	"testing"
	"time"

	"xdoh/datapath/xsk/xsktest"
)

// TestServerStartFailureReturns: Start failing on a later interface undoes
// the first one and returns. (Each outbox goroutine starts with its loop:
// closing a loop waits for it, and once waited for one never started.)
func TestServerStartFailureReturns(t *testing.T) {
	p := xsktest.NewPair(t, 1)
	errc := make(chan error, 1)
	go func() {
		errc <- inServerNS(p.ServerNS, func() error {
			s, err := New(Config{Name: "t", Addrs: serverAddrs(p), Interfaces: []string{p.ServerIf, "nosuch0"}, Mode: ModeGeneric}, &testHandler{})
			if err != nil {
				return err
			}
			return s.Start()
		})
	}()
	select {
	case err := <-errc:
		if err == nil {
			t.Fatal("Start succeeded with a missing interface")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Start did not return within 5 s")
	}
}

// TestServerStartInNetns: Start works from a thread that entered the
// server's netns with setns (xsktest.In): the queue count comes from
// ETHTOOL_GCHANNELS, which follows the thread's netns, not from sysfs, which
// shows the netns it was mounted in.
func TestServerStartInNetns(t *testing.T) {
	p := xsktest.NewPair(t, 1)
	var s *Server
	err := xsktest.In(p.ServerNS, func() (err error) {
		if s, err = New(Config{Name: "t", Addrs: serverAddrs(p), Interfaces: []string{p.ServerIf}, Mode: ModeGeneric}, &testHandler{}); err != nil {
			return err
		}
		return s.Start()
	})
	if err != nil {
		t.Fatal(err)
	}
	stopServer(t, s)
}
