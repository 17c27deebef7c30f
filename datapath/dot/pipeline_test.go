package dot

import (
	"bufio"
	"fmt"
	"strings"
	"testing"
	"time"

	"xdoh/datapath/internal/pipetest"
)

// TestPipelining: 100 queries written back to back in one write on one
// connection are all answered, and the ones a slow upstream holds up are
// overtaken by those behind them (RFC 7766 6.2.1.1).
func TestPipelining(t *testing.T) {
	up := &pipetest.Upstream{Delay: func(name string) time.Duration {
		if strings.HasPrefix(name, "slow") {
			return 300 * time.Millisecond
		}
		return 0
	}}
	s := start(t, Config{}, pipetest.Forwarder(t, up, nil))
	c := dial(t, s)
	const n = 100
	var batch []byte
	for i := range n {
		name := fmt.Sprintf("q%d.example.org", i)
		if i%10 == 0 {
			name = "slow" + name
		}
		batch = append(batch, frame(pipetest.Query(t, name, uint16(i)))...)
	}
	if _, err := c.Write(batch); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	seen := map[uint16]bool{}
	var order []uint16
	for range n {
		m := readAnswer(t, br)
		if seen[m.Id] {
			t.Fatalf("ID %d answered twice", m.Id)
		}
		seen[m.Id] = true
		order = append(order, m.Id)
	}
	// The slow ones (IDs 0, 10, …) come last.
	for i, id := range order[:n-10] {
		if id%10 == 0 {
			t.Fatalf("slow query %d answered at position %d, before fast ones: order %v", id, i, order)
		}
	}
	if st := s.Stats(); st.Queries != n || st.Answers != n {
		t.Errorf("stats %+v, want %d queries and answers", st, n)
	}
}

// TestMaxPipeline: with MaxPipeline 4 and every answer from a slow
// upstream, the reader pauses (counted) and every query is still answered.
func TestMaxPipeline(t *testing.T) {
	up := &pipetest.Upstream{Delay: func(string) time.Duration { return 100 * time.Millisecond }}
	s := start(t, Config{MaxPipeline: 4}, pipetest.Forwarder(t, up, nil))
	c := dial(t, s)
	const n = 12
	var batch []byte
	for i := range n {
		batch = append(batch, frame(pipetest.Query(t, fmt.Sprintf("p%d.example.org", i), uint16(i)))...)
	}
	begin := time.Now()
	if _, err := c.Write(batch); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	for range n {
		readAnswer(t, br)
	}
	// 12 queries, 4 at a time, 100ms each: at least 3 rounds.
	if d := time.Since(begin); d < 250*time.Millisecond {
		t.Errorf("answered in %v: more than 4 were in flight at once", d)
	}
	if st := s.Stats(); st.PipelineFull == 0 {
		t.Errorf("PipelineFull = 0, want the reader to have paused")
	}
}
