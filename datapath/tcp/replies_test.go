package tcp

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"xdoh/forwarder"
	"xdoh/internal/dnsmsg"
)

// heldHandler answers nothing at once: every query is "sent upstream" and its
// done callback held until release, which completes them all from one
// goroutine, the way a DoH connection's reader completes a whole read.
// A query for "busy." is answered at once, but only after the test closes
// unbusy: it keeps the event loop busy for as long as the test wants.
type heldHandler struct {
	mu   sync.Mutex
	held []func()

	busy   chan struct{} // a "busy." query has the loop
	unbusy chan struct{} // lets it go
}

func (h *heldHandler) Answer(r *forwarder.Request, out []byte) ([]byte, bool) {
	var q dnsmsg.Query
	if dnsmsg.Parse(r.Msg, &q) != nil || string(q.Name) != "\x04busy\x00" {
		return nil, false
	}
	h.busy <- struct{}{}
	<-h.unbusy
	return dnsmsg.AppendError(out[:0], r.Msg, &q, dnsmsg.RcodeRefused), true
}

func (h *heldHandler) Resolve(r *forwarder.Request, _ []byte, done func([]byte)) ([]byte, bool) {
	var q dnsmsg.Query
	if err := dnsmsg.Parse(r.Msg, &q); err != nil {
		return nil, true
	}
	resp := dnsmsg.AppendError(nil, r.Msg, &q, dnsmsg.RcodeNXDomain) // copied: r.Msg is the loop's
	h.mu.Lock()
	h.held = append(h.held, func() { done(resp) })
	h.mu.Unlock()
	return nil, false
}

// release completes every held query and returns how many.
func (h *heldHandler) release() int {
	h.mu.Lock()
	held := h.held
	h.held = nil
	h.mu.Unlock()
	for _, f := range held {
		f()
	}
	return len(held)
}

func (h *heldHandler) waitHeld(t *testing.T, n int) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		h.mu.Lock()
		k := len(h.held)
		h.mu.Unlock()
		if k == n {
			return
		}
	}
	t.Fatalf("server took fewer than %d queries upstream", n)
}

// TestTCPUpstreamAnswersBatched: answers that complete while the event loop
// is busy leave in one write, not one each; every one arrives; and the
// pipeline slots come back, so round after round of a full pipeline never
// sees SERVFAIL.
func TestTCPUpstreamAnswersBatched(t *testing.T) {
	h := &heldHandler{busy: make(chan struct{}), unbusy: make(chan struct{})}
	const pipeline = 100
	s := start(t, Config{Name: "t", Addrs: []string{freePort(t, "127.0.0.1")}, Loops: 1, MaxTCPPipeline: pipeline}, h)
	addr := s.Addrs()[0]
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		_ = s.Stop(ctx)
	})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	other, err := net.Dial("tcp", addr) // same loop: there is one
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	busyQ, _ := new(dns.Msg).SetQuestion("busy.", dns.TypeA).Pack()
	busyQ = append(binary.BigEndian.AppendUint16(nil, uint16(len(busyQ))), busyQ...)

	const rounds = 5
	for round := range rounds {
		var buf []byte
		for i := range pipeline {
			m := new(dns.Msg).SetQuestion("q.example.", dns.TypeA)
			m.Id = uint16(round*pipeline + i)
			b, _ := m.Pack()
			buf = binary.BigEndian.AppendUint16(buf, uint16(len(b)))
			buf = append(buf, b...)
		}
		if _, err := c.Write(buf); err != nil {
			t.Fatal(err)
		}
		h.waitHeld(t, pipeline)
		if _, err := other.Write(busyQ); err != nil {
			t.Fatal(err)
		}
		<-h.busy // the loop is inside Answer until unbusy
		before := s.replyFlushes.Load()
		if n := h.release(); n != pipeline {
			t.Fatalf("round %d: released %d", round, n)
		}
		h.unbusy <- struct{}{}
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		seen := map[uint16]bool{}
		for range pipeline {
			var l [2]byte
			if _, err := io.ReadFull(c, l[:]); err != nil {
				t.Fatalf("round %d after %d answers: %v", round, len(seen), err)
			}
			b := make([]byte, binary.BigEndian.Uint16(l[:]))
			if _, err := io.ReadFull(c, b); err != nil {
				t.Fatal(err)
			}
			r := new(dns.Msg)
			if err := r.Unpack(b); err != nil {
				t.Fatalf("round %d: answer does not parse: %v", round, err)
			}
			if r.Rcode != dns.RcodeNameError {
				t.Fatalf("round %d id %d: rcode %s, want NXDOMAIN (SERVFAIL: pipeline slots leaked)", round, r.Id, dns.RcodeToString[r.Rcode])
			}
			if int(r.Id)/pipeline != round || seen[r.Id] {
				t.Fatalf("round %d: unexpected or repeated id %d", round, r.Id)
			}
			seen[r.Id] = true
		}
		if w := s.replyFlushes.Load() - before; w != 1 {
			t.Fatalf("round %d: %d answers queued while the loop was busy took %d writes, want 1", round, pipeline, w)
		}
	}
	if st := s.Stats(); st.TCPPipelineFull != 0 {
		t.Fatalf("pipeline full %d times: slots not given back", st.TCPPipelineFull)
	}
}
