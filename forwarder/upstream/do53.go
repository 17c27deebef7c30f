package upstream

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// Do53 is a classic DNS upstream: UDP with a retry over TCP when the answer
// is truncated, or TCP only.
type Do53 struct {
	target  string
	addr    netip.AddrPort
	tcpOnly bool
	timeout time.Duration
	closed  atomic.Bool
	bufs    sync.Pool // *[]byte of maxResponseSize, for UDP reads
}

var _ Upstream = (*Do53)(nil)

func newDo53(target string, addr netip.AddrPort, tcpOnly bool, opts Options) *Do53 {
	u := &Do53{target: target, addr: addr, tcpOnly: tcpOnly, timeout: opts.Timeout}
	u.bufs.New = func() any {
		b := make([]byte, maxResponseSize)
		return &b
	}
	return u
}

// String returns the target as configured.
func (u *Do53) String() string { return u.target }

// Close makes later exchanges fail; Do53 holds no connections between
// exchanges.
func (u *Do53) Close() error {
	u.closed.Store(true)
	return nil
}

// Exchange sends query with a random ID on the wire and returns the matching
// response carrying the query's ID.
func (u *Do53) Exchange(ctx context.Context, query []byte) ([]byte, error) {
	if len(query) < headerLen || len(query) > maxResponseSize {
		return nil, fmt.Errorf("upstream %s: %w: %d bytes", u.target, ErrBadQuery, len(query))
	}
	if u.closed.Load() {
		return nil, fmt.Errorf("upstream %s: %w", u.target, ErrClosed)
	}
	deadline := deadlineFor(ctx, u.timeout)
	id := uint16(rand.Uint32()) // runtime ChaCha8 source: unpredictable
	var resp []byte
	var err error
	if !u.tcpOnly {
		resp, err = u.exchangeUDP(ctx, query, id, deadline)
		if err == nil && resp[2]&0x02 != 0 { // TC
			resp = nil
		}
	}
	if err == nil && resp == nil {
		resp, err = u.exchangeTCP(ctx, query, id, deadline)
	}
	if err != nil {
		return nil, fmt.Errorf("upstream %s: %w", u.target, err)
	}
	resp[0], resp[1] = query[0], query[1]
	return resp, nil
}

// exchangeUDP sends query over a connected UDP socket and returns the first
// datagram that answers it; others (wrong ID or question) are ignored.
func (u *Do53) exchangeUDP(ctx context.Context, query []byte, id uint16, deadline time.Time) ([]byte, error) {
	conn, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(u.addr))
	if err != nil {
		return nil, fmt.Errorf("dialing %s over UDP: %w", u.addr, err)
	}
	defer conn.Close()
	if err := conn.SetDeadline(deadline); err != nil {
		return nil, fmt.Errorf("setting deadline: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	bp := u.bufs.Get().(*[]byte)
	defer u.bufs.Put(bp)
	buf := *bp
	msg := append(buf[:0], query...)
	binary.BigEndian.PutUint16(msg, id)
	if _, err := conn.Write(msg); err != nil {
		return nil, netError(ctx, "sending over UDP", err)
	}
	for {
		n, err := conn.Read(buf)
		if err != nil {
			return nil, netError(ctx, "reading over UDP", err)
		}
		resp := buf[:n]
		if n < headerLen || binary.BigEndian.Uint16(resp) != id || checkResponse(query, resp) != nil {
			continue // late, spoofed or garbage: keep waiting for ours
		}
		return append([]byte(nil), resp...), nil
	}
}

// exchangeTCP sends query over a new TCP connection with RFC 7766 framing.
func (u *Do53) exchangeTCP(ctx context.Context, query []byte, id uint16, deadline time.Time) ([]byte, error) {
	dctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	var dialer net.Dialer
	conn, err := dialer.DialContext(dctx, "tcp", u.addr.String())
	if err != nil {
		return nil, netError(ctx, "dialing over TCP", err)
	}
	defer conn.Close()
	if err := conn.SetDeadline(deadline); err != nil {
		return nil, fmt.Errorf("setting deadline: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	msg := make([]byte, 2+len(query))
	binary.BigEndian.PutUint16(msg, uint16(len(query)))
	copy(msg[2:], query)
	binary.BigEndian.PutUint16(msg[2:], id)
	if _, err := conn.Write(msg); err != nil {
		return nil, netError(ctx, "sending over TCP", err)
	}
	var l [2]byte
	if _, err := io.ReadFull(conn, l[:]); err != nil {
		return nil, netError(ctx, "reading length over TCP", err)
	}
	resp := make([]byte, binary.BigEndian.Uint16(l[:]))
	if _, err := io.ReadFull(conn, resp); err != nil {
		return nil, netError(ctx, "reading response over TCP", err)
	}
	if len(resp) < headerLen || binary.BigEndian.Uint16(resp) != id {
		return nil, fmt.Errorf("%w: ID mismatch over TCP", ErrBadResponse)
	}
	if err := checkResponse(query, resp); err != nil {
		return nil, err
	}
	return resp, nil
}

// netError says what was being done and maps deadlines to ErrTimeout and
// cancellation to the context's error.
func netError(ctx context.Context, doing string, err error) error {
	if ctx.Err() != nil {
		return ctxErr(ctx, doing)
	}
	if isTimeout(err) {
		return fmt.Errorf("%s: %w (%w)", doing, ErrTimeout, err)
	}
	return fmt.Errorf("%s: %w", doing, err)
}
