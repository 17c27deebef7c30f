package upstream

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Limits of the DoH client.
const (
	maxStreamsPerConn = 256        // our own cap on concurrent streams per connection
	maxResponseSize   = 65535      // largest DNS message
	streamRecvWindow  = 1 << 20    // SETTINGS_INITIAL_WINDOW_SIZE we advertise
	connRecvWindow    = 1 << 24    // connection receive window after our WINDOW_UPDATE
	maxClientStreamID = 1<<31 - 1  // last usable client stream ID
	writeBufSize      = 32 << 10   // bufio.Writer per connection
	readBufSize       = 16 << 10   // bufio.Reader per connection
	maxHeaderBlock    = 16384 - 64 // precomputed header block must fit one HEADERS frame
)

// DoH is a DNS-over-HTTPS upstream (RFC 8484, POST or GET) over HTTP/2
// connections it manages itself. See the package documentation for the
// design.
type DoH struct {
	target    string
	dialAddr  string // host:port
	ep        *endpoint
	authority string
	path      string
	tlsConf   *tls.Config
	timeout   time.Duration
	dialTime  time.Duration
	pingEvery time.Duration // idle time before a keepalive PING; <= 0: none
	pingWait  time.Duration // time for a PING ACK
	rtt       atomic.Int64  // EWMA of PING round trips, ns; 0 before the first
	pool      connPool[h2Conn, *h2Conn]
	hdr       headerBlocks // hdr.get: GET requests, no DATA

	ctx    context.Context // cancelled by Close; parent of dials
	cancel context.CancelFunc
	wg     sync.WaitGroup // dial, reader and writer goroutines

	mu     sync.Mutex
	closed bool
	conns  map[*h2Conn]struct{} // every live connection, draining ones included
	isDone atomic.Bool

	// Test hooks.
	wrapConn    func(net.Conn) net.Conn // wraps the TCP connection under TLS
	maxStreamID uint32
}

var _ Upstream = (*DoH)(nil)

func newDoH(target string, opts Options) (*DoH, error) {
	dialAddr, authority, path, host, err := parseDoHURL(target)
	if err != nil {
		return nil, err
	}
	conf, err := tlsConfig(opts, host, "h2")
	if err != nil {
		return nil, err
	}
	ep, err := newEndpoint(dialAddr, opts.Bootstrap)
	if err != nil {
		return nil, err
	}
	hdr, err := newHeaderBlocks(authority, path, opts.Method == MethodGET)
	if err != nil {
		return nil, err
	}
	d := &DoH{
		target:      target,
		dialAddr:    dialAddr,
		ep:          ep,
		authority:   authority,
		path:        path,
		tlsConf:     conf,
		timeout:     opts.Timeout,
		dialTime:    max(2*opts.Timeout, time.Second),
		pingEvery:   opts.PingInterval,
		pingWait:    opts.PingTimeout,
		hdr:         hdr,
		conns:       make(map[*h2Conn]struct{}),
		maxStreamID: maxClientStreamID,
	}
	d.ctx, d.cancel = context.WithCancel(context.Background())
	d.pool = connPool[h2Conn, *h2Conn]{
		slots: make([]poolSlot[h2Conn], opts.Conns),
		what:  "connection to " + dialAddr, dialed: dialAddr,
		maxWait: opts.MaxWait,
		spawn:   d.spawn, done: d.wg.Done, dial: d.dialOne, closed: d.isDone.Load,
	}
	if opts.Prewarm {
		d.pool.prewarm()
	}
	return d, nil
}

// String returns the target as configured.
func (d *DoH) String() string { return d.target }

// RTT returns the smoothed round-trip time of HTTP/2 PINGs to the target
// (an exponentially weighted moving average, weight 1/4 for the newest
// sample), or 0 before the first PING has been answered. Every connection
// sends a PING with its handshake, when idle and after a stream timed out.
func (d *DoH) RTT() time.Duration { return time.Duration(d.rtt.Load()) }

func (d *DoH) recordRTT(sample time.Duration) {
	for {
		old := d.rtt.Load()
		v := int64(sample)
		if old != 0 {
			v = old + (v-old)/4
		}
		if v <= 0 {
			v = 1 // 0 means "no sample"
		}
		if d.rtt.CompareAndSwap(old, v) {
			return
		}
	}
}

// request is one query on its way through a connection. Its state field is
// guarded by the mutex of the connection it is queued on; the reader owns
// the response fields while the stream is open. Whoever finishes it (state
// stDone, under that mutex) hands it to complete.
type request struct {
	d     *DoH
	query []byte // copy of the caller's query with ID 0
	cb    func(resp []byte, err error)
	timer *time.Timer // AfterFunc that expires the request on its connection

	deadline time.Time
	qid      [2]byte // the caller's ID; query carries 0
	retried  bool
	conn     atomic.Pointer[h2Conn]  // the connection it was queued on (Cancel)
	retry    atomic.Pointer[request] // the request that retries it (Cancel)
	node     *waitNode[*h2Conn]      // its place in the pool's wait queue, once it waits

	state reqState
	id    uint32 // stream ID once sent
	resp  []byte
	err   error

	// Reader-owned while the stream is open.
	gotHeaders bool
	clen       int    // the response's content-length, -1 without one; set with gotHeaders
	recvd      uint32 // stream bytes consumed since the last stream WINDOW_UPDATE
}

type reqState uint8

const (
	stIdle      reqState = iota
	stQueued             // on the writer's queue
	stSent               // stream open, in the connection's stream map
	stDone               // finished; being completed
	stAbandoned          // the caller gave up or it timed out; nobody completes it
)

// dialOne dials, registers and starts one connection for the pool.
func (d *DoH) dialOne() (*h2Conn, error) {
	ctx, cancel := context.WithTimeout(d.ctx, d.dialTime)
	c, err := d.dialConn(ctx)
	cancel()
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		c.nc.Close()
		return nil, ErrClosed
	}
	d.conns[c] = struct{}{}
	c.start()
	return c, nil
}

// spawn accounts for a pool dial goroutine; false once closed.
func (d *DoH) spawn() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return false
	}
	d.wg.Add(1)
	return true
}

func (h *h2Conn) usable() bool { return !h.closing.Load() }

func (h *h2Conn) load() int32 { return h.inflight.Load() }

// dialConn connects, runs the TLS handshake (ALPN h2 required) and the
// HTTP/2 preface exchange; the returned connection is not started yet.
func (d *DoH) dialConn(ctx context.Context) (*h2Conn, error) {
	tc, sock, err := dialTLS(ctx, d.ep, d.tlsConf, d.wrapConn)
	if err != nil {
		return nil, err
	}
	if p := tc.ConnectionState().NegotiatedProtocol; p != "h2" {
		tc.NetConn().Close()
		return nil, fmt.Errorf("server did not negotiate HTTP/2 via ALPN (got %q)", p)
	}
	c := newH2Conn(d, tc)
	c.sock = sock
	if err := c.handshake(ctx); err != nil {
		tc.NetConn().Close()
		return nil, fmt.Errorf("HTTP/2 handshake: %w", err)
	}
	return c, nil
}

// dialTLS connects to ep over TCP (TCP_NODELAY, the socket read and
// written with raw system calls, wrapped by wrap if not nil) and runs the
// TLS handshake with conf, within ctx: the connection of a DoH or a DoT
// upstream. It returns the raw socket too (nil if it could not be made
// raw).
func dialTLS(ctx context.Context, ep *endpoint, conf *tls.Config, wrap func(net.Conn) net.Conn) (*tls.Conn, *rawConn, error) {
	raw, err := ep.dialTCP(ctx)
	if err != nil {
		return nil, nil, err
	}
	if tcp, ok := raw.(*net.TCPConn); ok {
		if err := tcp.SetNoDelay(true); err != nil {
			raw.Close()
			return nil, nil, fmt.Errorf("setting TCP_NODELAY: %w", err)
		}
	}
	raw = newRawConn(raw)
	sock, _ := raw.(*rawConn)
	if wrap != nil {
		raw = wrap(raw)
	}
	tc := tls.Client(raw, conf)
	if err := tc.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, nil, fmt.Errorf("TLS handshake: %w", err)
	}
	return tc, sock, nil
}

// Connections returns the number of connections open to the target,
// draining ones included.
func (d *DoH) Connections() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.conns)
}

// removeConn forgets a connection that has shut down.
func (d *DoH) removeConn(c *h2Conn) {
	d.mu.Lock()
	delete(d.conns, c)
	d.mu.Unlock()
}

// Close stops dialling, fails the queries waiting for a connection and
// those on every connection with ErrClosed, closes the connections and
// waits for their goroutines to end.
func (d *DoH) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	d.isDone.Store(true)
	conns := make([]*h2Conn, 0, len(d.conns))
	for c := range d.conns {
		conns = append(conns, c)
	}
	d.mu.Unlock()
	d.pool.failAll(ErrClosed)
	d.cancel()
	for _, c := range conns {
		c.shutdown(ErrClosed)
	}
	d.wg.Wait()
	return nil
}

// The rules of RFC 8484 for a response. The HTTP/2 connection reports a
// response's status, content type, content-length and body, and keeps
// HTTP/2's own rules (RFC 9113 8.1); what they mean for DNS is decided
// here. Every violation is ErrBadResponse: the server answered, but not
// with a DNS message, and the query is not retried.

// checkHeaders judges a final (not 1xx) response header block: only a 200
// with content type application/dns-message and, if it says one, a
// content-length that a DNS message can have is worth reading the body of.
// clen is the content-length, negative without a usable one.
func checkHeaders(status int, contentType string, clen int) error {
	switch {
	case status != 200:
		return fmt.Errorf("%w: HTTP status %d", ErrBadResponse, status)
	case !isDNSMessage(contentType):
		return fmt.Errorf("%w: content-type is not application/dns-message", ErrBadResponse)
	case clen > maxResponseSize:
		return fmt.Errorf("%w: content-length %d exceeds %d", ErrBadResponse, clen, maxResponseSize)
	}
	return nil
}

// isDNSMessage reports whether a content-type header is
// application/dns-message, parameters ignored.
func isDNSMessage(contentType string) bool {
	mt, _, _ := strings.Cut(contentType, ";")
	return strings.EqualFold(strings.TrimSpace(mt), dnsMessage)
}

// checkBodySize fails a body that has grown to n bytes beyond the largest
// DNS message, before it is read any further.
func checkBodySize(n int) error {
	if n > maxResponseSize {
		return fmt.Errorf("%w: body exceeds %d bytes", ErrBadResponse, maxResponseSize)
	}
	return nil
}

// checkBody judges a complete body: it must hold a message. Whether the
// message answers the query is checkResponse's to say, in complete.
func checkBody(body []byte) error {
	if len(body) == 0 {
		return fmt.Errorf("%w: empty body", ErrBadResponse)
	}
	return nil
}

// errDraining fails requests that reached a connection no longer taking new
// streams; they are retried elsewhere.
var errDraining = fmt.Errorf("%w: connection is draining", ErrConnClosed)
