package upstream

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"xdoh/forwarder/upstream/upstreamtest"
)

// BenchmarkDoTExchange: one query at a time over a warm DoT connection to
// an in-process TLS server (upstreamtest.StartDoTFault).
func BenchmarkDoTExchange(b *testing.B) {
	f := upstreamtest.StartDoTFault(b, upstreamtest.TCPAnswerAll)
	benchExchange(b, f.Target(true))
}

// BenchmarkDoQExchange: one query at a time, each on a new stream of a
// warm QUIC connection to an in-process quic-go server.
func BenchmarkDoQExchange(b *testing.B) {
	s := upstreamtest.StartDoQServer(b, upstreamtest.DoQServerOptions{}, nil)
	benchExchange(b, s.URL())
}

// BenchmarkDoTSubmit and BenchmarkDoQSubmit: 64 queries in flight.
func BenchmarkDoTSubmit(b *testing.B) {
	f := upstreamtest.StartDoTFault(b, upstreamtest.TCPAnswerAll)
	benchSubmit(b, f.Target(true))
}

// BenchmarkDo53TCPSubmit: 64 queries in flight over one Do53 TCP
// connection, submitted from the benchmark's goroutine.
func BenchmarkDo53TCPSubmit(b *testing.B) {
	f := upstreamtest.StartDo53Fault(b, nil, upstreamtest.TCPAnswerAll)
	benchSubmit(b, f.Target(true))
}

// BenchmarkDo53TCPClosedLoop: 64 queries in flight over one Do53 TCP
// connection, each answer's callback submitting the next query, as a
// load generator's closed loop does.
func BenchmarkDo53TCPClosedLoop(b *testing.B) {
	f := upstreamtest.StartDo53Fault(b, nil, upstreamtest.TCPAnswerAll)
	u := benchUpstream(b, f.Target(true))
	q := makeQuery(b, "bench.example.", 0x1234)
	const inflight = 64
	answered := make(chan struct{}, inflight)
	var stop atomic.Bool
	var submitted, failed atomic.Int64
	var done func(resp []byte, err error)
	submit := func() {
		submitted.Add(1)
		u.Submit(q, 0, done)
	}
	done = func(resp []byte, err error) {
		if err != nil {
			failed.Add(1)
		}
		if !stop.Load() {
			submit()
		}
		answered <- struct{}{}
	}
	b.ReportAllocs()
	for range inflight {
		submit()
	}
	consumed := int64(0)
	for b.Loop() {
		<-answered
		consumed++
	}
	stop.Store(true)
	for ; consumed < submitted.Load(); consumed++ { // the queries still in flight
		<-answered
	}
	if n := failed.Load(); n > 0 {
		b.Fatalf("%d queries failed", n)
	}
}

func BenchmarkDoQSubmit(b *testing.B) {
	s := upstreamtest.StartDoQServer(b, upstreamtest.DoQServerOptions{}, nil)
	benchSubmit(b, s.URL())
}

func benchUpstream(b *testing.B, target string) Upstream {
	u, err := New(target, Options{RootCAs: upstreamtest.PKI(b).Pool, Conns: 1, Timeout: 10 * time.Second})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { u.Close() })
	if _, err := Exchange(context.Background(), u, makeQuery(b, "warm.example.", 1)); err != nil {
		b.Fatal(err)
	}
	return u
}

func benchExchange(b *testing.B, target string) {
	u := benchUpstream(b, target)
	q := makeQuery(b, "bench.example.", 1)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Exchange(context.Background(), u, q); err != nil {
			b.Fatal(err)
		}
	}
}

func benchSubmit(b *testing.B, target string) {
	submitInFlight(b, benchUpstream(b, target), makeQuery(b, "bench.example.", 0x1234))
}

// submitInFlight submits q to u once per benchmark iteration, keeping 64
// queries in flight, and fails if any query failed.
func submitInFlight(b *testing.B, u Upstream, q []byte) {
	const inflight = 64
	sem := make(chan struct{}, inflight)
	var failed atomic.Int64
	var firstErr atomic.Pointer[error]
	done := func(resp []byte, err error) {
		if err != nil {
			failed.Add(1)
			firstErr.CompareAndSwap(nil, &err)
		}
		<-sem
	}
	b.ReportAllocs()
	for b.Loop() {
		sem <- struct{}{}
		u.Submit(q, 0, done)
	}
	for range inflight {
		sem <- struct{}{}
	}
	if n := failed.Load(); n > 0 {
		b.Fatalf("%d queries failed, first: %v", n, *firstErr.Load())
	}
}
