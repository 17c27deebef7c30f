package udp

import (
	"encoding/binary"
	"errors"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"
)

// hitLoop is a loop on no socket (process never touches it) whose n receive
// slots hold the same query from 127.0.0.1:5353, already in the forwarder's
// cache.
func hitLoop(t testing.TB, n int) *loop {
	t.Helper()
	f, _ := newForwarder(t)
	l := newLoop(&socket{fd: -1}, f, "t", n, new(atomic.Bool))
	q, _ := new(dns.Msg).SetQuestion("hit.example.com.", dns.TypeA).Pack()
	for i := range n {
		copy(l.rxBufs[i*slotSize:], q)
		binary.BigEndian.PutUint16(l.rxBufs[i*slotSize:], uint16(i)) // ID
		l.rxHdrs[i].Len = uint32(len(q))
		l.rxHdrs[i].Hdr.Flags = 0
		l.rxHdrs[i].Hdr.Namelen = unix.SizeofSockaddrInet4
		name := l.rxNames[i*nameSize:]
		binary.NativeEndian.PutUint16(name, unix.AF_INET)
		binary.BigEndian.PutUint16(name[2:], 5353)
		copy(name[4:], []byte{127, 0, 0, 1})
	}
	// The first batch misses (its replies go nowhere: fd -1); wait for the
	// upstream answer to reach the cache.
	l.process(1)
	for deadline := time.Now().Add(3 * time.Second); f.Stats().CacheHits == 0; {
		if time.Now().After(deadline) {
			t.Fatal("the answer never reached the cache")
		}
		time.Sleep(5 * time.Millisecond)
		l.process(1)
	}
	return l
}

// TestProcessZeroAllocs: a batch of cache hits, from the receive slots to the
// send slots, allocates nothing.
func TestProcessZeroAllocs(t *testing.T) {
	const n = 32
	l := hitLoop(t, n)
	if k := l.process(n); k != n {
		t.Fatalf("process queued %d replies, want %d", k, n)
	}
	for k := range n {
		resp := l.txBufs[k*slotSize : k*slotSize+int(l.txIovs[k].Len)]
		r := new(dns.Msg)
		if err := r.Unpack(resp); err != nil || r.Id != uint16(k) || len(r.Answer) != 1 {
			t.Fatalf("slot %d: %v %v", k, r, err)
		}
		if th := l.txHdrs[k].Hdr; th.Name != &l.rxNames[k*nameSize] || th.Namelen != unix.SizeofSockaddrInet4 {
			t.Fatalf("slot %d: reply address not the sender's", k)
		}
	}
	if a := testing.AllocsPerRun(100, func() { l.process(n) }); a != 0 {
		t.Fatalf("%v allocations per batch of %d cache hits, want 0", a, n)
	}
}

// TestSystemAllocs sends 10,000 cache hits over loopback and counts every heap
// allocation in the process meanwhile. The client uses raw syscalls on a
// connected socket and preallocated buffers, so it allocates nothing itself.
// The wildcard bind adds IP_PKTINFO to every datagram, both ways.
func TestSystemAllocs(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	for _, bind := range []string{"127.0.0.1:0", "0.0.0.0:0"} {
		t.Run(bind, func(t *testing.T) { systemAllocs(t, bind) })
	}
}

func systemAllocs(t *testing.T, bind string) {
	f, _ := newForwarder(t)
	s := startServer(t, Config{Name: "t", Addrs: []string{bind}, Sockets: 2}, f)
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 2}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Connect(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}, Port: int(s.LocalAddrs()[0].Port())}); err != nil {
		t.Fatal(err)
	}
	q, _ := new(dns.Msg).SetQuestion("hit.example.com.", dns.TypeA).Pack()
	buf := make([]byte, 4096)
	// A read with SO_RCVTIMEO is not restarted after a signal (the runtime's
	// preemption SIGURG): retry on EINTR.
	roundTrip := func(window int, id uint16) bool {
		for i := range window {
			binary.BigEndian.PutUint16(q, id+uint16(i))
			for {
				_, err := unix.Write(fd, q)
				if err == nil {
					break
				}
				if !errors.Is(err, unix.EINTR) {
					return false
				}
			}
		}
		for range window {
			for {
				n, err := unix.Read(fd, buf)
				if err == nil && n >= 12 {
					break
				}
				if !errors.Is(err, unix.EINTR) {
					return false
				}
			}
		}
		return true
	}
	// Warm up: the miss, then hits until the runtime has the threads it needs.
	for i := range 50 {
		if !roundTrip(16, uint16(i*16)) {
			t.Fatal("warm-up query unanswered")
		}
	}
	if f.Stats().CacheHits == 0 {
		t.Fatal("no cache hits while warming up")
	}
	const total, window = 10000, 50
	before := settled(t, s)
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	for i := 0; i < total; i += window {
		if !roundTrip(window, uint16(i)) {
			t.Fatalf("reply lost after %d queries; stats %+v", i, s.Stats())
		}
	}
	runtime.ReadMemStats(&m1)
	after := settled(t, s)
	perQuery := float64(m1.Mallocs-m0.Mallocs) / total
	t.Logf("%d mallocs for %d hits (%.4f per query); %d batches (%.1f queries per recvmmsg)",
		m1.Mallocs-m0.Mallocs, total, perQuery, after.Batches-before.Batches,
		float64(after.Queries-before.Queries)/float64(after.Batches-before.Batches))
	if perQuery >= 0.05 {
		t.Fatalf("%.4f allocations per cache hit, want < 0.05", perQuery)
	}
	if after.Replies-before.Replies != total {
		t.Fatalf("stats %+v → %+v: want %d more replies", before, after, total)
	}
}

func BenchmarkLoopHit(b *testing.B) {
	const n = 32
	l := hitLoop(b, n)
	b.ReportAllocs()
	for b.Loop() {
		if l.process(n) != n {
			b.Fatal("not every query answered")
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/query")
}
