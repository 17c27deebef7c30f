package xsk

import (
	"testing"
	"time"

	"xdoh/datapath/xsk/xsktest"
)

// TestServerKicksDeferredReplies: with one-query batches, a hit followed
// at once by a query that gets no reply (drop). The hit's reply is queued
// without a kick (the drop already waits on the RX ring) and the drop's
// batch has no reply of its own: the loop must kick before it parks, or the
// reply stays on the TX ring (copy mode sends only on a kick).
func TestServerKicksDeferredReplies(t *testing.T) {
	p := xsktest.NewPair(t, 1)
	startServer(t, p, Config{Name: "t", Addrs: serverAddrs(p), Interfaces: []string{p.ServerIf}, Mode: ModeGeneric, Batch: 1},
		&testHandler{listener: "t"})
	c := dialServer(t, p, "udp4", p.Server4)
	buf := make([]byte, 4096)
	lost := 0
	for i := range 20 {
		c.Write(packA(uint16(i), "h.hit."))
		c.Write(packA(1000, "d.drop."))
		if _, _, err := readReply(c, buf, 200*time.Millisecond); err != nil {
			lost++
		}
	}
	if lost > 0 {
		t.Errorf("%d of 20 hits unanswered within 200 ms", lost)
	}
}
