package upstream

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/miekg/dns"
)

func TestDo53(t *testing.T) {
	srv := startDo53Server(t)
	tests := []struct {
		name    string
		target  string
		qname   string
		answers int
	}{
		{name: "UDP", target: "udp://" + srv.addr, qname: "a.example.", answers: 1},
		{name: "bare address", target: srv.addr, qname: "b.example.", answers: 1},
		{name: "TCP only", target: "tcp://" + srv.addr, qname: "c.example.", answers: 1},
		{name: "truncated over UDP, retried over TCP", target: srv.addr, qname: "big.example.", answers: 40},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u, err := New(tt.target, Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer u.Close()
			resp, err := u.Exchange(context.Background(), makeQuery(t, tt.qname, 0xABCD))
			if err != nil {
				t.Fatal(err)
			}
			m := new(dns.Msg)
			if err := m.Unpack(resp); err != nil {
				t.Fatal(err)
			}
			if m.Id != 0xABCD || m.Truncated || len(m.Answer) != tt.answers {
				t.Errorf("ID %#x TC %v, %d answers; want 0xabcd, false, %d", m.Id, m.Truncated, len(m.Answer), tt.answers)
			}
			if tt.answers == 1 {
				checkAnswer(t, resp, tt.qname, 0xABCD)
			}
		})
	}
}

func TestDo53IgnoresMismatchedDatagrams(t *testing.T) {
	addr := spoofingUDPServer(t)
	u, err := New(addr, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	for i := range 5 {
		resp, err := u.Exchange(context.Background(), makeQuery(t, "real.example.", uint16(i)))
		if err != nil {
			t.Fatal(err)
		}
		checkAnswer(t, resp, "real.example.", uint16(i))
	}
}

func TestDo53Timeout(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0") // never answers
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	u, err := New(pc.LocalAddr().String(), Options{Timeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	start := time.Now()
	_, err = u.Exchange(context.Background(), makeQuery(t, "a.example.", 1))
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("error %v, want ErrTimeout", err)
	}
	if el := time.Since(start); el > 400*time.Millisecond {
		t.Errorf("returned after %v", el)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	u2, _ := New(pc.LocalAddr().String(), Options{Timeout: 5 * time.Second})
	start = time.Now()
	_, err = u2.Exchange(ctx, makeQuery(t, "a.example.", 1))
	if !errors.Is(err, ErrTimeout) || time.Since(start) > 300*time.Millisecond {
		t.Fatalf("error %v after %v, want ErrTimeout after about 50ms", err, time.Since(start))
	}

	ctx, cancel = context.WithCancel(context.Background())
	time.AfterFunc(30*time.Millisecond, cancel)
	_, err = u2.Exchange(ctx, makeQuery(t, "a.example.", 1))
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("error %v, want context.Canceled", err)
	}
}

func BenchmarkDo53UDPExchange(b *testing.B) {
	srv := startDo53Server(b)
	u, err := New(srv.addr, Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer u.Close()
	q := makeQuery(b, "bench.example.", 1)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := u.Exchange(context.Background(), q); err != nil {
			b.Fatal(err)
		}
	}
}
