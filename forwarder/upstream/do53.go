package upstream

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Limits of the Do53 client.
const (
	maxInflightPerConn = 1024             // waiting queries per UDP socket or TCP connection
	udpSockMaxUses     = 1 << 16          // queries after which a UDP socket gets a new source port
	udpReadBuffer      = 1 << 20          // SO_RCVBUF asked for; the kernel may cap it
	tcpIdleTimeout     = 10 * time.Second // a TCP connection without queries is closed
	maxPooledSendBuf   = 4096             // larger UDP send buffers are not pooled
	// maxDeliverUnwritten bounds the answers a TCP reader delivers before
	// it writes out the queries they queued, when answers keep coming.
	maxDeliverUnwritten = 64
)

var (
	errIdle    = fmt.Errorf("%w: idle", ErrConnClosed)
	errRetired = fmt.Errorf("%w: socket retired", ErrConnClosed)
)

// Do53 is a classic DNS upstream: UDP with a retry over TCP when the answer
// is truncated, or TCP only; or, with a TLS configuration, DNS over TLS
// (RFC 7858), which is TCP only's framing and connections with TLS in
// between (newDoT). See the package documentation for the design.
//
// Each Do53 has its own DNS client cookie (RFC 7873), 8 octets from
// crypto/rand drawn when it is created, so a new one with every process
// start (and every reload, which builds its upstreams anew): RFC 7873
// allows a random client cookie per server, and one server's cookie then
// tells nothing about our queries to another. EDNS queries carry it with
// the server cookie the upstream last returned; see the package
// documentation. A DoT upstream sends no cookie: see addCookie.
type Do53 struct {
	target      string
	addr        netip.AddrPort // UDP; the zero value for DoT
	dialAddr    string         // host:port of TCP or TLS connections
	ep          *endpoint      // where they go
	over        string         // "TCP" or "TLS", for errors
	tlsConf     *tls.Config    // DoT: connections run TLS; nil: plain TCP
	tcpOnly     bool
	timeout     time.Duration
	dialTime    time.Duration
	idleTimeout time.Duration // TCP; a test hook
	maxInflight int           // per socket or connection; a test hook
	udpMaxUses  int           // queries per UDP socket; a test hook

	clientCookie [clientCookieLen]byte     // random, fixed; the head of every cookie
	cookie       atomic.Pointer[cookieOpt] // the COOKIE option data queries carry

	udp     []atomic.Pointer[dnsConn]
	udpNext atomic.Uint32
	tcp     connPool[dnsConn, *dnsConn]
	bufs    sync.Pool // *[]byte, UDP send buffers

	ctx    context.Context // cancelled by Close; parent of dials
	cancel context.CancelFunc
	wg     sync.WaitGroup // dial, reader and writer goroutines

	mu     sync.Mutex
	closed bool
	live   map[*dnsConn]struct{} // every open socket and connection
	isDone atomic.Bool
}

var _ Upstream = (*Do53)(nil)

// waiter is one query waiting for its response on a dnsConn. It is in the
// connection's map while it waits; whoever removes it from the map under the
// connection's mutex (reader, shutdown, or the query's timer or Cancel
// giving up) completes it, and only the first two hand it back to its
// query (landed).
type waiter struct {
	query     []byte // the caller's query, for matching the question
	id        uint16 // ID on the wire
	cookie    bool   // query carries our client cookie: an answer's COOKIE must echo it
	badCookie bool   // resp is a BADCOOKIE with a valid cookie (set by deliver)
	resp      []byte
	err       error
	async     *asyncQuery // the Submit it belongs to
}

func newDo53(target string, addr netip.AddrPort, tcpOnly bool, opts Options) *Do53 {
	ep := &endpoint{host: addr.Addr().String(), port: addr.Port()}
	return newDo53Over(target, addr, addr.String(), ep, tcpOnly, nil, opts)
}

// newDoT builds a DNS-over-TLS upstream (RFC 7858, RFC 8310) for
// "tls://host[:port]" (rest is what follows the scheme; default port
// 853): the Do53 client's TCP connections with TLS in between, and
// nothing else, so that DoT has every property of Do53 over TCP —
// pipelining, answers matched by ID in any order, the bounded pool,
// reconnection, deadlines — and no second connection manager. It never
// uses UDP, and its queries carry no DNS cookie (see addCookie).
func newDoT(target, rest string, opts Options) (*Do53, error) {
	dialAddr, host, err := parseHostPort(rest, "853")
	if err != nil {
		return nil, err
	}
	conf, err := tlsConfig(opts, host, "dot")
	if err != nil {
		return nil, err
	}
	ep, err := newEndpoint(dialAddr, opts.Bootstrap)
	if err != nil {
		return nil, err
	}
	return newDo53Over(target, netip.AddrPort{}, dialAddr, ep, true, conf, opts), nil
}

// newDo53Over builds a Do53 upstream whose stream connections go to ep
// (dialAddr), over TLS with tlsConf if it is not nil.
func newDo53Over(target string, addr netip.AddrPort, dialAddr string, ep *endpoint, tcpOnly bool, tlsConf *tls.Config, opts Options) *Do53 {
	over := "TCP"
	if tlsConf != nil {
		over = "TLS"
	}
	u := &Do53{
		target:      target,
		addr:        addr,
		dialAddr:    dialAddr,
		ep:          ep,
		over:        over,
		tlsConf:     tlsConf,
		tcpOnly:     tcpOnly,
		timeout:     opts.Timeout,
		dialTime:    max(2*opts.Timeout, time.Second),
		idleTimeout: tcpIdleTimeout,
		maxInflight: maxInflightPerConn,
		udpMaxUses:  udpSockMaxUses,
		udp:         make([]atomic.Pointer[dnsConn], opts.Conns),
		live:        make(map[*dnsConn]struct{}),
	}
	c := newCookie()
	u.clientCookie = [clientCookieLen]byte(c.data())
	u.cookie.Store(c)
	u.ctx, u.cancel = context.WithCancel(context.Background())
	u.bufs.New = func() any {
		b := make([]byte, 0, 512)
		return &b
	}
	u.tcp = connPool[dnsConn, *dnsConn]{
		slots: make([]poolSlot[dnsConn], opts.Conns),
		what:  over + " connection to " + dialAddr, dialed: dialAddr + " over " + over,
		maxWait: opts.MaxWait,
		spawn:   u.spawn, done: u.wg.Done, dial: u.dialTCP, closed: u.isDone.Load,
	}
	if opts.Prewarm {
		if tcpOnly {
			u.tcp.prewarm()
		} else {
			for i := range u.udp {
				u.udpConn(i) // no network I/O: a socket and connect(2)
			}
		}
	}
	return u
}

// String returns the target as configured.
func (u *Do53) String() string { return u.target }

// Close stops dialling, fails the queries waiting for a TCP connection and
// those on every socket and connection with ErrClosed, closes them and
// waits for their goroutines to end.
func (u *Do53) Close() error {
	u.mu.Lock()
	if u.closed {
		u.mu.Unlock()
		return nil
	}
	u.closed = true
	u.isDone.Store(true)
	conns := make([]*dnsConn, 0, len(u.live))
	for c := range u.live {
		conns = append(conns, c)
	}
	u.mu.Unlock()
	u.tcp.failAll(ErrClosed)
	u.cancel()
	for _, c := range conns {
		c.shutdown(ErrClosed)
	}
	u.wg.Wait()
	return nil
}

// failSend ends UDP socket c after a send failed with an ICMP error (port
// or host unreachable) that the kernel kept for the socket and this send
// picked up instead of the reader: the queries that caused it wait on c too,
// and must hear it now rather than at their deadlines. Other send errors
// concern only the query being sent.
func (c *dnsConn) failSend(err error) {
	for _, icmp := range []error{syscall.ECONNREFUSED, syscall.EHOSTUNREACH, syscall.ENETUNREACH, syscall.EHOSTDOWN} {
		if errors.Is(err, icmp) {
			c.shutdown(fmt.Errorf("sending to %s over UDP: %w", c.u.addr, err))
			return
		}
	}
}

// sendUDP sends query with w's wire ID on socket c, where w is registered.
func (u *Do53) sendUDP(c *dnsConn, w *waiter, query []byte) error {
	bp := u.bufs.Get().(*[]byte)
	msg := append((*bp)[:0], query...)
	binary.BigEndian.PutUint16(msg, w.id)
	_, err := c.nc.Write(msg)
	if cap(msg) <= maxPooledSendBuf {
		*bp = msg
		u.bufs.Put(bp)
	}
	return err
}

// registerUDP registers w on the next socket round-robin, or on the
// following ones if that one is full.
func (u *Do53) registerUDP(w *waiter, query []byte) (*dnsConn, error) {
	n := len(u.udp)
	first := int(u.udpNext.Add(1))
	for j := range n {
		for range 2 { // a socket that died since udpConn looked is replaced once
			c, err := u.udpConn((first + j) % n)
			if err != nil {
				return nil, err
			}
			err = c.register(w, query)
			if err == nil {
				return c, nil
			}
			if errors.Is(err, ErrBusy) {
				break
			}
		}
	}
	return nil, fmt.Errorf("%w: %d sockets with %d queries each", ErrBusy, n, u.maxInflight)
}

// udpConn returns the socket of slot i, opening a new one if the slot is
// empty, its socket died or retired.
func (u *Do53) udpConn(i int) (*dnsConn, error) {
	slot := &u.udp[i]
	if c := slot.Load(); c != nil && !c.closing.Load() {
		return c, nil
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.closed {
		return nil, ErrClosed
	}
	if c := slot.Load(); c != nil && !c.closing.Load() {
		return c, nil
	}
	nc, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(u.addr))
	if err != nil {
		return nil, fmt.Errorf("opening UDP socket to %s: %w", u.addr, err)
	}
	nc.SetReadBuffer(udpReadBuffer) // best effort: bursts of answers
	c := newDNSConn(u, newRawConn(nc), false)
	u.live[c] = struct{}{}
	u.wg.Add(1)
	go c.readUDP()
	slot.Store(c)
	return c, nil
}

// spawn accounts for a pool dial goroutine; false once closed.
func (u *Do53) spawn() bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.closed {
		return false
	}
	u.wg.Add(1)
	return true
}

// dialTCP dials, registers and starts one TCP (or, for DoT, TLS)
// connection for the pool.
func (u *Do53) dialTCP() (*dnsConn, error) {
	ctx, cancel := context.WithTimeout(u.ctx, u.dialTime)
	var nc net.Conn
	var err error
	if u.tlsConf != nil {
		nc, _, err = dialTLS(ctx, u.ep, u.tlsConf, nil)
	} else {
		nc, err = u.ep.dialTCP(ctx)
		if err == nil {
			nc = newRawConn(nc)
		}
	}
	cancel()
	if err != nil {
		return nil, err
	}
	c := newDNSConn(u, nc, true)
	if c.raw != nil {
		c.raw.readIdle = c.readIdle
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.closed {
		nc.Close()
		return nil, ErrClosed
	}
	u.live[c] = struct{}{}
	u.wg.Add(2)
	go c.readTCP()
	go c.writeTCP()
	return c, nil
}

func (c *dnsConn) usable() bool { return !c.closing.Load() }

// load is the queries waiting on the connection: the pool gives the next
// query to the least loaded one, which is also the one whose reader has
// just delivered answers, so that the queries their callbacks submit go
// out in that reader's write (see readTCP).
func (c *dnsConn) load() int32 { return c.inflight.Load() }

func (u *Do53) removeConn(c *dnsConn) {
	u.mu.Lock()
	delete(u.live, c)
	u.mu.Unlock()
}

// dnsConn is a pooled UDP socket (one reader goroutine; callers write their
// datagrams themselves) or TCP connection (a reader and a writer goroutine,
// RFC 7766 framing and pipelining; see do53_tcp.go). Responses are matched
// to waiters by ID and question.
type dnsConn struct {
	u          *Do53
	nc         net.Conn
	raw        *rawConn // nc if it is one (not TLS): it can be written without waiting
	tcp        bool
	closing    atomic.Bool   // takes no new queries: dead or retired
	quit       chan struct{} // closed by shutdown
	wake       chan struct{} // TCP, cap 1: pending has data
	inflight   atomic.Int32  // len(waiters), for the pool's pick
	delivering atomic.Bool   // TCP: the reader delivers buffered answers and writes out when done

	mu       sync.Mutex
	dead     bool
	err      error // why it died
	waiters  map[uint16]*waiter
	uses     int       // UDP: queries so far
	pending  []byte    // TCP: framed queries not yet handed to the socket
	lastUsed time.Time // TCP: when the last waiter left
	writing  bool      // TCP: the reader or the writer owns out and writes it

	// TCP, owned by whoever set writing: the batch being written and how
	// much of it the socket has taken.
	out    []byte
	outOff int

	delivered int // TCP, reader-owned: answers delivered since the reader last wrote out
}

func newDNSConn(u *Do53, nc net.Conn, tcp bool) *dnsConn {
	raw, _ := nc.(*rawConn)
	return &dnsConn{
		u:        u,
		nc:       nc,
		raw:      raw,
		tcp:      tcp,
		quit:     make(chan struct{}),
		wake:     make(chan struct{}, 1),
		waiters:  make(map[uint16]*waiter, 64),
		lastUsed: time.Now(),
	}
}

// register gives w a random ID not in use on c and adds it to the waiters;
// over TCP it also queues the framed query for the writer (the caller then
// signals it). It fails with ErrBusy when c is full, and with c's error
// (retryable) when c is dead.
func (c *dnsConn) register(w *waiter, query []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.dead {
		return c.err
	}
	if len(c.waiters) >= c.u.maxInflight {
		return ErrBusy
	}
	for { // the runtime's ChaCha8 source: unpredictable IDs
		w.id = uint16(rand.Uint32())
		if _, taken := c.waiters[w.id]; !taken {
			break
		}
	}
	w.query, w.resp, w.err = query, nil, nil
	c.waiters[w.id] = w
	c.inflight.Store(int32(len(c.waiters)))
	if c.tcp {
		c.pending = binary.BigEndian.AppendUint16(c.pending, uint16(len(query)))
		c.pending = append(c.pending, query...)
		binary.BigEndian.PutUint16(c.pending[len(c.pending)-len(query):], w.id)
		return nil
	}
	c.uses++
	if c.uses == c.u.udpMaxUses {
		// Give later queries a fresh source port; the queries in flight
		// have at most the query timeout left.
		c.closing.Store(true)
		time.AfterFunc(c.u.timeout, func() { c.shutdown(errRetired) })
	}
	return nil
}

// signal wakes the writer for a query just queued, unless the reader is
// delivering answers: it writes out what was queued meanwhile when done.
func (c *dnsConn) signal() {
	if !c.delivering.Load() {
		c.wakeWriter()
	}
}

// wakeWriter wakes the writer.
func (c *dnsConn) wakeWriter() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// withdraw removes w from c if it is still waiting there: then the caller
// completes it. False: the reader or shutdown has it, or it was never here.
func (c *dnsConn) withdraw(w *waiter) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.waiters[w.id] == w {
		c.removeLocked(w.id)
		return true
	}
	return false
}

func (c *dnsConn) removeLocked(id uint16) {
	delete(c.waiters, id)
	c.inflight.Store(int32(len(c.waiters)))
	if len(c.waiters) == 0 && c.tcp {
		c.lastUsed = time.Now()
	}
}

// deliver hands msg to the waiter it answers. Messages that are too short,
// carry an ID nobody waits for (late, unsolicited or spoofed), a question
// other than the waiter's or, when the query carried our client cookie, a
// COOKIE option that is malformed or does not echo it are dropped; the
// waiter keeps waiting. A valid cookie's server cookie is learned.
func (c *dnsConn) deliver(msg []byte) {
	if len(msg) < headerLen {
		return
	}
	cookie, hasCookie := responseCookie(msg)
	id := binary.BigEndian.Uint16(msg)
	c.mu.Lock()
	w := c.waiters[id]
	if w == nil || checkResponse(w.query, msg) != nil || w.cookie && hasCookie && !c.u.cookieValid(cookie) {
		c.mu.Unlock()
		return
	}
	c.removeLocked(id)
	c.mu.Unlock()
	w.badCookie = false
	if w.cookie && hasCookie {
		c.u.learnCookie(cookie)
		w.badCookie = isBadCookie(msg)
	}
	w.resp = append([]byte(nil), msg...)
	w.async.landed()
}

// shutdown closes c and fails its waiters with err. It is idempotent.
func (c *dnsConn) shutdown(err error) {
	c.mu.Lock()
	if c.dead {
		c.mu.Unlock()
		return
	}
	c.dead, c.err = true, err
	c.closing.Store(true)
	victims := make([]*waiter, 0, len(c.waiters))
	for _, w := range c.waiters {
		victims = append(victims, w)
	}
	clear(c.waiters)
	c.inflight.Store(0)
	c.mu.Unlock()
	close(c.quit)
	c.nc.Close()
	for _, w := range victims {
		w.err = err
		w.async.landed()
	}
	c.u.removeConn(c)
	if c.tcp {
		c.u.tcp.kick() // a query waiting for the pool may need another connection
	}
}

// readUDP is the socket's only reader.
func (c *dnsConn) readUDP() {
	defer c.u.wg.Done()
	buf := make([]byte, maxResponseSize)
	for {
		n, err := c.nc.Read(buf)
		if err != nil {
			// ICMP errors such as "connection refused" end the socket too:
			// they concern every query to the target, and the next
			// query opens a new socket.
			c.shutdown(fmt.Errorf("reading from %s over UDP: %w", c.u.addr, err))
			return
		}
		c.deliver(buf[:n])
	}
}
