// Package upstream exchanges DNS messages with one upstream resolver, over
// DNS-over-HTTPS (RFC 8484), DNS over TLS (RFC 7858), DNS over QUIC (RFC
// 9250) or classic DNS (Do53, UDP with TCP fallback, or TCP only).
// Choosing among upstreams, health and failover live in the package that
// uses it.
//
// # DoH
//
// The DoH client speaks HTTP/2 itself on top of golang.org/x/net/http2's
// Framer and hpack; it does not use net/http. A [DoH] upstream keeps
// Options.Conns TLS connections to its target, dialled lazily by the first
// query that needs one (or all at once in the background by New with
// Options.Prewarm; Close cancels those dials), and gives each query to the
// usable connection with the fewest queries on it (pool.go). Each
// connection has exactly two goroutines:
//
//   - The writer owns every write. Callers put their request on a bounded
//     queue; the writer takes the first one and then everything else that
//     is queued at that moment, assigns stream IDs, encodes HEADERS and DATA
//     (END_STREAM) of every request into one bufio.Writer, adds the control
//     frames the reader asked for (SETTINGS ACK, PING ACK, WINDOW_UPDATE,
//     RST_STREAM) and its own PING, and flushes once. A query's HEADERS and
//     DATA therefore never leave as two TLS records, and under load many
//     queries share one record and one write system call. TCP_NODELAY is
//     set.
//     The header block is precomputed per connection: the first request
//     inserts :authority, :path, content-type and accept into the server's
//     HPACK dynamic table, later ones refer to them with one byte each, and
//     only content-length is encoded per request. With Options.Method GET
//     (RFC 8484 4.1) a request is one HEADERS frame that ends its stream
//     (CONTINUATION frames past the server's frame size), no DATA and no
//     flow control: :authority and accept are indexed the same way, and
//     :path, the target's path with ?dns= and the query in base64url
//     without padding, is encoded per request into the writer's reused
//     header buffer, as a literal that the server does not index. Either
//     way the query goes with ID 0 (an HTTP cache can then serve GETs of
//     one question alike) and the answer gets the caller's ID back.
//     One exception to the writer writing: a Submit on a connection with
//     nothing in flight, while the writer is idle, writes its request
//     itself (the same batch code, under the writer's mutex), which saves a
//     lone query one goroutine hand-off; see writeInline.
//     Under TLS the connection reads and writes its socket with raw system
//     calls and parks in the runtime's poller when the socket is not ready
//     ([rawConn]): the runtime's syscall bookkeeping, which net.TCPConn pays
//     on every call, woke the runtime's monitor thread each time the process
//     came back from idle, and on a shared virtual machine those wake-ups
//     cost more than the queries.
//   - The reader demultiplexes frames by stream ID to the waiting callers
//     (a map guarded by the connection mutex), collects each response's
//     :status, content-type and body and has doh.go's RFC 8484 rules judge
//     them (200, application/dns-message, at most 65535 bytes, as soon as
//     each is known), and handles the connection-level frames: SETTINGS
//     (MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE,
//     HEADER_TABLE_SIZE), PING, GOAWAY, RST_STREAM and WINDOW_UPDATE. It
//     notes when it last read a frame.
//
// Keepalive: a connection sends a PING with random payload with its
// handshake, whenever nothing has been read from it for
// Options.PingInterval (default 15s), and at once when one of its streams
// times out, since a server that stops answering streams usually stops
// answering everything. At most one PING is outstanding; the writer's timer
// watches it. If its ACK does not come within Options.PingTimeout (default
// 2s, at most Timeout), the connection is shut down like a broken one: its
// streams fail with [ErrConnClosed] and are retried once, and the next
// query dials a replacement. The ACKs' round trips feed [DoH.RTT], a
// moving average over all connections of the target.
//
// Flow control: the client advertises a 1 MiB stream window and a 16 MiB
// connection window and returns credit with WINDOW_UPDATE once half of a
// window has been consumed. On the send side the writer honours the
// server's connection window (requests wait in order when it is exhausted)
// and splits DATA at the server's MAX_FRAME_SIZE.
//
// Streams are bounded by the server's MAX_CONCURRENT_STREAMS and by
// maxStreamsPerConn; a query beyond the limit waits for a free stream until
// its deadline (below). When a query times out or is cancelled, its stream
// is reset with CANCEL. A GOAWAY marks the connection draining: streams
// above the last stream ID fail with [ErrGoAway] and are retried once on a
// fresh connection. A connection that breaks fails all of its streams at
// once with [ErrConnClosed] (also retried once) and is re-dialled by the
// next query.
//
// One way in: [DoH.Submit] does not block. A request is put on a ready
// connection's queue with a timer (time.AfterFunc) as its deadline, and the
// connection's reader calls the caller's callback with the answer; the
// timer, a GOAWAY or a broken connection call it with the error (after the
// one retry on a fresh connection). No goroutine, context or channel is
// spent per query. When no connection can take it (dialling, every stream
// busy), the request waits in the pool's bounded FIFO wait queue, still
// under its own timer, and the next dial to complete or stream to free up
// takes it in order (pool.go); a full queue fails it at once with
// [ErrBusy]. A caller that wants to block wraps Submit with [Exchange]:
// one implementation of the job, so that there is no blocking twin to keep
// in step with it.
//
// Failed dials to a target back off: 50ms after the first failure, doubling
// up to 2s, each delay spread by ±20% at random so that many clients that
// lost a target together do not redial it in lockstep. Meanwhile a query
// that finds no connection fails at once with the last dial error, as do
// the queries waiting for a dial that fails when no other connection or
// dial can take them. A successful dial resets it.
//
// # Do53
//
// UDP: Options.Conns connected UDP sockets per target (opened on first use)
// are shared by all queries. Each query gets a random ID on the wire,
// re-rolled until no other query in flight on its socket has it, and is
// registered with its socket (a map under a mutex, at most 1024 queries per
// socket; beyond that on all sockets Submit fails with [ErrBusy]). The
// caller writes its datagram itself; one reader goroutine per socket hands
// each datagram to the query with its ID if the question matches too, and
// drops anything else (late, unsolicited, spoofed or garbage), so the query
// keeps waiting for its real answer. A socket retires after 65536 queries,
// so that its source port does not stay predictable, and is closed once its
// last queries have had their time. A read or send error such as an ICMP
// port unreachable fails the socket's queries and the socket, which the
// next query replaces (a send can pick up the ICMP error meant for the
// queries before it: they hear it at once, not at their deadline). A
// truncated (TC) answer is asked again over TCP. Sockets and connections
// are read and written with raw system calls, as DoH's are.
//
// TCP (tcp:// targets and the TC retry) reuses up to Options.Conns
// connections per target with pipelining (RFC 7766): many queries in
// flight on a connection, answers matched by ID and question in any order.
// Each connection has a writer goroutine, which writes the length-framed
// queries that piled up since its last write with one system call, and a
// reader goroutine. Connections are pooled like DoH's (the least busy
// slot's, another slot's connection used while one dials, the same jittered
// backoff, prewarmed by Options.Prewarm for tcp:// targets) and closed after
// 10s without queries. A connection that breaks, by error, by the server
// closing it or by idling out under a racing query, fails its queries with
// [ErrConnClosed]; they are retried once on a fresh connection.
//
// DNS cookies (RFC 7873 5.1, 5.3): each Do53 upstream has a client cookie
// of 8 random octets, drawn when it is created (so a new one with each
// process start and reload), and remembers the server cookie of the last valid answer
// (an atomic pointer to an immutable value: queries read it without a lock
// or an allocation; a new server cookie costs one allocation). A query that
// has an OPT record gets a COOKIE option with both when Submit copies it;
// one without OPT is sent as it is, since adding OPT would change the answer
// the client gets, and one that carries a COOKIE of its own keeps it (the
// forwarder strips every client option, so only a direct caller's). An
// answer to a query with our cookie whose COOKIE is malformed or does not
// echo our client cookie is dropped like one with the wrong question: it is
// a spoof or misdirected, and the query keeps waiting for the real one. An
// answer without COOKIE is accepted (the upstream does not do cookies). A
// BADCOOKIE answer with a valid cookie is asked once more with the server
// cookie it brought, within the query's timeout; a second BADCOOKIE is the
// answer. Answers keep their COOKIE: the forwarder strips hop-by-hop
// options itself.
//
// # DoT
//
// A tls:// target is a [Do53] upstream whose TCP connections run TLS: DoT
// is Do53-over-TCP framing on a TLS stream (RFC 7858), so it takes the TCP
// path above unchanged — persistent connections, pipelining, answers by ID
// in any order, the pool, reconnection, deadlines, prewarming — with one
// dial that adds the handshake. There is one connection manager for both,
// not two. Certificates are verified as DoH's are (tlsConfig: the system
// roots or Options.CAFile / RootCAs, the target's host or
// Options.ServerName, TLS 1.2 or later), with ALPN "dot" (RFC 7858 has
// none; a server that picks none is accepted) and one TLS session cache
// per upstream, so that its later connections resume a session. DoT never
// falls back to UDP, and its queries carry no DNS cookie: the TLS stream
// is authenticated already. A message whose length has arrived must
// follow within the timeout (for TCP too): a length that lies ends the
// connection instead of holding it.
//
// # DoQ
//
// A quic:// target is a [DoQ] upstream on github.com/quic-go/quic-go:
// Options.Conns QUIC connections (ALPN "doq", TLS as DoT's, no 0-RTT,
// since a query in early data can be replayed) in the same pool as the
// others, each query on a bidirectional stream of its own: the 2-octet
// length, the query with ID 0 (RFC 9250 4.2.1; the caller's ID is put
// back in the answer) and the stream's FIN. The caller's goroutine opens
// the stream and writes it without blocking; beyond the server's stream
// limit the query waits in the pool's queue while one goroutine per
// connection waits for the server's MAX_STREAMS (OpenStreamSync, with the
// first waiting query's deadline). quic-go calls back when the server's
// side of a stream has ended (FIN or reset), and the connection's one
// reader goroutine then reads the answer, which must be the whole stream:
// anything else (two messages, a short one, a non-zero ID) is a protocol
// error (RFC 9250 4.3.3) that fails the query with [ErrBadResponse] and
// closes the connection with DOQ_PROTOCOL_ERROR. An answer without FIN is
// never read and times out. No goroutine waits per query. A timeout or
// Cancel cancels the stream both ways with DOQ_REQUEST_CANCELLED. The
// connection's QUIC idle timeout is 30s, with keep-alives well within it
// (Options.PingInterval, at most 15s); when it ends (idle timeout on a
// silent path, the server closing it), its queries fail with
// [ErrConnClosed] and are retried once, and the next query dials anew.
// Each connection has its own UDP socket, which reports ICMP errors, so
// that a closed port fails the dial at once.
//
// [Do53.Submit] does not block either: the query is registered on a socket
// with a callback and sent from the caller's goroutine; the socket's
// reader, the query's one timer or the socket's failure completes it, and a
// TC answer or a broken connection moves it to a TCP connection the same
// way. While no TCP connection is open the query waits in the TCP pool's
// wait queue for the dial, as DoH's do; a TCP connection with 1024 queries
// in flight fails more with [ErrBusy] at once, as a socket does.
//
// # Addresses
//
// A DoH, DoT or DoQ target named by host is resolved by the system
// resolver at each dial, so a changed address is picked up by the next
// connection; with Options.Bootstrap its connections go to those
// addresses instead and nothing is resolved (endpoint.go). Either way a
// dial tries the addresses in order, each with its share of the dial's
// time, and the host name is what TLS verifies.
//
// # Files
//
//   - upstream.go: the Upstream interface, Exchange, Options, errors, New.
//   - doh.go: the DoH upstream, its dials and Close, and the RFC 8484 rules
//     (what a response's status, content type and body mean for DNS).
//   - doh_submit.go: DoH.Submit and a request's life, from queue to callback.
//   - doh_conn.go, doh_writer.go, doh_reader.go, doh_hpack.go: one HTTP/2
//     connection, by the goroutine that runs the code; they report status,
//     content type and body, and doh.go judges them.
//   - do53.go: the Do53 upstream (and DoT, newDoT), its UDP sockets and
//     TCP or TLS connections.
//   - do53_query.go: Do53.Submit and a query's life, UDP to TCP to callback.
//   - do53_cookie.go: a Do53 upstream's DNS cookies.
//   - doq.go: the DoQ upstream, its QUIC connections and their reader;
//     doq_query.go: DoQ.Submit and a query's life on its stream.
//   - pool.go: the connection pool and its wait queue; backoff.go: dial
//     backoff; endpoint.go: the addresses a dial tries; rawconn.go:
//     sockets read and written with raw system calls;
//     wire.go: checks of a response against its query.
package upstream

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
)

// Upstream exchanges DNS messages with one target.
type Upstream interface {
	// Submit sends query (wire format, carrying the client's ID) and does
	// not block: done is called exactly once, with the response in wire
	// format carrying that same ID or with the error, within timeout (at
	// most Options.Timeout; 0 or less: Options.Timeout). done must not
	// block; the response is its to keep. query is copied before Submit
	// returns. The result abandons the query (nil if done has been called
	// already); see [DoH.Submit] and [Do53.Submit].
	Submit(query []byte, timeout time.Duration, done func(resp []byte, err error)) Canceler
	Close() error
	String() string // the target as configured
}

// Canceler abandons a submitted query; see [DoH.Submit] and [Do53.Submit].
// (An alias of the interface literal, so that a consumer's own alias of it
// is the same type.)
type Canceler = interface{ Cancel() }

// Exchange is Submit for a caller that blocks (health probes, the query
// command): it waits for the answer or the end of ctx, whose deadline is
// the query's timeout (without one, the upstream's). When ctx ends first
// the query is cancelled and the error wraps ctx.Err() (and ErrTimeout
// for a deadline).
func Exchange(ctx context.Context, u Upstream, query []byte) ([]byte, error) {
	if ctx.Err() != nil {
		return nil, fmt.Errorf("upstream %s: %w", u, ctxErr(ctx, "before sending"))
	}
	var timeout time.Duration
	if dl, ok := ctx.Deadline(); ok {
		timeout = max(time.Until(dl), 1) // 0 would be the upstream's timeout
	}
	type result struct {
		resp []byte
		err  error
	}
	ch := make(chan result, 1)
	c := u.Submit(query, timeout, func(resp []byte, err error) { ch <- result{resp, err} })
	select {
	case r := <-ch:
		if dl, ok := ctx.Deadline(); ok && errors.Is(r.err, ErrTimeout) && !time.Now().Before(dl) {
			// The query's timer, armed with ctx's deadline, beat ctx's.
			r.err = fmt.Errorf("%w (%w)", r.err, context.DeadlineExceeded)
		}
		return r.resp, r.err
	case <-ctx.Done():
		if c != nil {
			c.Cancel()
		}
		return nil, fmt.Errorf("upstream %s: %w", u, ctxErr(ctx, "waiting for response"))
	}
}

// Options configure an upstream. The zero value is usable.
type Options struct {
	CAFile     string         // PEM file: trust only this CA instead of the system roots
	RootCAs    *x509.CertPool // alternative to CAFile (tests, demo); CAFile wins if both set
	ServerName string         // TLS name to verify (DoH, DoT, DoQ); default: host of the target
	Timeout    time.Duration  // cap per query (default 2s); Submit's timeout may be shorter
	Conns      int            // connections (Do53: UDP sockets and TCP connections) per target (default 2)
	// MaxWait (DoH, DoT, DoQ, Do53 over TCP) bounds the queries that wait
	// for a connection or a free stream when every connection is full or
	// still dialling (default 4096); beyond it Submit fails with ErrBusy.
	MaxWait int

	// PingInterval (DoH): idle time after which a connection is checked
	// with an HTTP/2 PING (default 15s; negative: only after a stream
	// timed out). DoQ: the QUIC keep-alive period, at most half the idle
	// timeout (negative: that).
	PingInterval time.Duration
	// PingTimeout (DoH): how long a PING may wait for its ACK before the
	// connection is given up (default 2s, at most Timeout).
	PingTimeout time.Duration
	// Method (DoH) is MethodPOST (the default, also for "") or
	// MethodGET: the query in the URL, ?dns= base64url (RFC 8484 4.1).
	// Either way the query goes with ID 0, which makes GET answers
	// cacheable by HTTP caches, and the answer gets the caller's ID back.
	// Other targets take only "" or MethodPOST.
	Method string
	// Bootstrap (DoH, DoT, DoQ targets named by host) are the addresses
	// the target's connections are dialled at instead of resolving its
	// host, so that a forwarder need not resolve its own upstream's name
	// through itself. The host stays the TLS server name, what the
	// certificate is verified for and DoH's :authority. Each dial starts
	// with the next address in turn (the connections spread over them)
	// and tries the others in order if it fails. Empty: the host is
	// resolved by the system resolver at each dial.
	Bootstrap []netip.Addr
	// Prewarm makes New start dialling all Conns connections in the
	// background (DoH, DoT, DoQ and TCP-only Do53), so that the first queries do not
	// wait for handshakes. New still neither blocks nor fails on the
	// network; dial errors surface in the queries' callbacks.
	Prewarm bool
}

// DoH request methods, for Options.Method.
const (
	MethodPOST = "POST"
	MethodGET  = "GET"
)

// Defaults for Options.
const (
	DefaultTimeout      = 2 * time.Second
	DefaultConns        = 2
	DefaultMaxWait      = 4096
	DefaultPingInterval = 15 * time.Second
	DefaultPingTimeout  = 2 * time.Second
)

// Errors given to Submit's callbacks (and returned by Exchange), to be
// tested with errors.Is. The errors wrap these with details.
var (
	// ErrTimeout: the query did not complete before its deadline
	// (Submit's timeout, at most Options.Timeout).
	ErrTimeout = errors.New("upstream timed out")
	// ErrBadResponse: the upstream answered with something that is not a DNS
	// response to the query (HTTP status, content type, size, ID, question).
	ErrBadResponse = errors.New("bad response from upstream")
	// ErrBadQuery: the query is too short or too long to be sent.
	ErrBadQuery = errors.New("query cannot be sent")
	// ErrConnClosed: the connection carrying the query broke or went away
	// before the answer came. The query may be retried on another connection.
	ErrConnClosed = errors.New("upstream connection closed")
	// ErrGoAway: the server sent GOAWAY and did not process the stream. It
	// wraps ErrConnClosed, so it is retryable too.
	ErrGoAway = fmt.Errorf("%w: server sent GOAWAY", ErrConnClosed)
	// ErrRefused: the server reset the stream with REFUSED_STREAM, so it did
	// not process it; retryable.
	ErrRefused = errors.New("upstream refused the stream")
	// ErrStreamReset: the server reset the stream with another error code.
	ErrStreamReset = errors.New("upstream reset the stream")
	// ErrClosed: the upstream was closed before the query completed, or
	// Submit was called after Close.
	ErrClosed = errors.New("upstream is closed")
	// ErrBusy: every socket or connection of a Do53 target already has the
	// maximum number of queries in flight, or the queue of queries waiting
	// for a connection is full. It is not retryable on the same target.
	ErrBusy = errors.New("too many queries in flight to upstream")
)

// Failure reasons, Reason's answers, for counting failures by kind.
const (
	ReasonTimeout     = "timeout"
	ReasonBusy        = "busy"
	ReasonConnClosed  = "connection_closed"
	ReasonRefused     = "refused_stream"
	ReasonReset       = "stream_reset"
	ReasonBadResponse = "bad_response"
	ReasonBadQuery    = "bad_query"
	ReasonClosed      = "closed"
	ReasonOther       = "other"
)

// Reasons lists every reason Reason gives, in a fixed order.
var Reasons = [...]string{ReasonTimeout, ReasonBusy, ReasonConnClosed, ReasonRefused, ReasonReset, ReasonBadResponse, ReasonBadQuery, ReasonClosed, ReasonOther}

// Reason names the kind of a failed exchange's error, by index into
// Reasons: ReasonOther for an error none of the above wraps (a dial or TLS
// error that ended before any query went out, for one).
func Reason(err error) int {
	switch {
	case errors.Is(err, ErrTimeout):
		return 0
	case errors.Is(err, ErrBusy):
		return 1
	case errors.Is(err, ErrConnClosed):
		return 2
	case errors.Is(err, ErrRefused):
		return 3
	case errors.Is(err, ErrStreamReset):
		return 4
	case errors.Is(err, ErrBadResponse):
		return 5
	case errors.Is(err, ErrBadQuery):
		return 6
	case errors.Is(err, ErrClosed):
		return 7
	}
	return 8
}

// Retryable reports whether err means the upstream did not process the query
// and it is safe and useful to send it again on a fresh connection.
func Retryable(err error) bool {
	return errors.Is(err, ErrConnClosed) || errors.Is(err, ErrRefused)
}

// New parses target: "https://host[:port]/path" → DoH (RFC 8484);
// "udp://ip[:port]", "ip[:port]" or "[v6]:port" → Do53 UDP with TCP retry on TC;
// "tcp://ip[:port]" → Do53 over TCP only; "tls://host[:port]" → DoT
// (RFC 7858); "quic://host[:port]" → DoQ (RFC 9250). Default ports 443 /
// 53 / 853 / 853.
// A DoH target without a path uses /dns-query. New does no network I/O
// itself; with Options.Prewarm it starts dialling in the background.
// Errors say what was wrong with which target ("upstream \"x\": …").
func New(target string, opts Options) (Upstream, error) {
	u, err := newUpstream(target, opts)
	if err != nil {
		return nil, fmt.Errorf("upstream %q: %w", target, err)
	}
	return u, nil
}

func newUpstream(target string, opts Options) (Upstream, error) {
	if opts.Timeout < 0 {
		return nil, fmt.Errorf("negative timeout %v", opts.Timeout)
	}
	if opts.Timeout == 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.Conns < 0 {
		return nil, fmt.Errorf("negative number of connections %d", opts.Conns)
	}
	if opts.Conns == 0 {
		opts.Conns = DefaultConns
	}
	if opts.MaxWait < 0 {
		return nil, fmt.Errorf("negative wait queue bound %d", opts.MaxWait)
	}
	if opts.MaxWait == 0 {
		opts.MaxWait = DefaultMaxWait
	}
	if opts.PingInterval == 0 {
		opts.PingInterval = DefaultPingInterval
	}
	if opts.PingTimeout < 0 {
		return nil, fmt.Errorf("negative ping timeout %v", opts.PingTimeout)
	}
	if opts.PingTimeout == 0 {
		opts.PingTimeout = DefaultPingTimeout
	}
	opts.PingTimeout = min(opts.PingTimeout, opts.Timeout)
	scheme, rest, found := strings.Cut(target, "://")
	if !found {
		scheme, rest = "udp", target
	}
	switch opts.Method {
	case "", MethodPOST:
	case MethodGET:
		if !strings.EqualFold(scheme, "https") {
			return nil, fmt.Errorf("method GET is for DoH (https://) targets only")
		}
	default:
		return nil, fmt.Errorf("method %q: want GET or POST", opts.Method)
	}
	switch strings.ToLower(scheme) {
	case "https":
		return newDoH(target, opts)
	case "udp", "tcp":
		if len(opts.Bootstrap) > 0 {
			return nil, errors.New("bootstrap addresses are for https, tls and quic targets named by host")
		}
		ap, err := parseIPPort(rest, 53)
		if err != nil {
			return nil, err
		}
		return newDo53(target, ap, strings.EqualFold(scheme, "tcp"), opts), nil
	case "tls":
		return newDoT(target, rest, opts)
	case "quic":
		return newDoQ(target, rest, opts)
	default:
		return nil, fmt.Errorf("unsupported scheme %q (want https, tls, quic, udp or tcp)", scheme)
	}
}

// parseHostPort accepts "host", "host:port", "v6" and "[v6]:port" (a
// DoT or DoQ target without its scheme) and returns the address to dial
// and the host, the default TLS server name.
func parseHostPort(s string, defPort string) (dialAddr, host string, err error) {
	if s == "" {
		return "", "", errors.New("missing host")
	}
	if strings.ContainsAny(s, "/?#@") {
		return "", "", fmt.Errorf("unexpected path, query or user info in %q", s)
	}
	host, port := s, defPort
	if a, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(s, "["), "]")); err == nil {
		host = a.String()
	} else if strings.Contains(s, ":") {
		if host, port, err = net.SplitHostPort(s); err != nil {
			return "", "", fmt.Errorf("parsing address %q: %w", s, err)
		}
		if _, err := parsePort(port); err != nil {
			return "", "", err
		}
	}
	if host == "" {
		return "", "", fmt.Errorf("missing host in %q", s)
	}
	if a, err := netip.ParseAddr(host); err == nil && a.Zone() != "" {
		return "", "", fmt.Errorf("zoned address %q not supported", host)
	}
	return net.JoinHostPort(host, port), host, nil
}

// parseIPPort accepts "ip", "ip:port", "v6" and "[v6]:port".
func parseIPPort(s string, defPort uint16) (netip.AddrPort, error) {
	if s == "" {
		return netip.AddrPort{}, errors.New("missing address")
	}
	if strings.ContainsAny(s, "/?#") {
		return netip.AddrPort{}, fmt.Errorf("unexpected path or query in %q", s)
	}
	if a, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(s, "["), "]")); err == nil {
		if a.Zone() != "" {
			return netip.AddrPort{}, fmt.Errorf("zoned address %q not supported", s)
		}
		return netip.AddrPortFrom(a, defPort), nil
	}
	if !strings.Contains(s, ":") {
		return netip.AddrPort{}, fmt.Errorf("%q is not an IP address (Do53 targets must be IP literals)", s)
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("parsing address %q: %w", s, err)
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%q is not an IP address (Do53 targets must be IP literals)", host)
	}
	if a.Zone() != "" {
		return netip.AddrPort{}, fmt.Errorf("zoned address %q not supported", s)
	}
	p, err := parsePort(port)
	if err != nil {
		return netip.AddrPort{}, err
	}
	return netip.AddrPortFrom(a.Unmap(), p), nil
}

func parsePort(s string) (uint16, error) {
	p, err := strconv.ParseUint(s, 10, 16)
	if err != nil || p == 0 {
		return 0, fmt.Errorf("invalid port %q", s)
	}
	return uint16(p), nil
}

// parseDoHURL splits an https URL into the address to dial, the :authority,
// the :path and the default TLS server name.
func parseDoHURL(target string) (dialAddr, authority, path, host string, err error) {
	u, err := url.Parse(target)
	if err != nil {
		return "", "", "", "", fmt.Errorf("parsing URL: %w", err)
	}
	if u.User != nil {
		return "", "", "", "", errors.New("user info in URL not supported")
	}
	if u.Fragment != "" {
		return "", "", "", "", errors.New("fragment in URL not supported")
	}
	host = u.Hostname()
	if host == "" {
		return "", "", "", "", errors.New("missing host in URL")
	}
	port := u.Port()
	if port == "" {
		port = "443"
		authority = u.Host
		if strings.HasSuffix(authority, ":") { // "https://host:/x"
			authority = strings.TrimSuffix(authority, ":")
		}
	} else {
		if _, err := parsePort(port); err != nil {
			return "", "", "", "", err
		}
		authority = u.Host
	}
	if a, err := netip.ParseAddr(host); err == nil && a.Zone() != "" {
		return "", "", "", "", fmt.Errorf("zoned address %q not supported", host)
	}
	path = u.EscapedPath()
	if path == "" {
		path = "/dns-query"
	}
	if u.RawQuery != "" {
		path += "?" + u.RawQuery
	}
	return net.JoinHostPort(host, port), authority, path, host, nil
}

// tlsConfig builds the client TLS configuration for a DoH, DoT or DoQ
// target, whose connections share it: certificates verified against the
// system roots (or Options.CAFile / RootCAs) for Options.ServerName or
// else defaultName, the host of the target; TLS 1.2 or later; ALPN alpn
// ("h2", "dot", "doq"); and one session cache, so that every connection
// after the first resumes a session (an abbreviated handshake).
func tlsConfig(opts Options, defaultName, alpn string) (*tls.Config, error) {
	conf := &tls.Config{
		MinVersion:                  tls.VersionTLS12,
		NextProtos:                  []string{alpn},
		ServerName:                  defaultName,
		RootCAs:                     opts.RootCAs,
		ClientSessionCache:          tls.NewLRUClientSessionCache(32),
		DynamicRecordSizingDisabled: true, // one record per batch, not MSS-sized pieces
	}
	if opts.ServerName != "" {
		conf.ServerName = opts.ServerName
	}
	if opts.CAFile != "" {
		pem, err := os.ReadFile(opts.CAFile)
		if err != nil {
			return nil, fmt.Errorf("reading CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("CA file %s holds no PEM certificate", opts.CAFile)
		}
		conf.RootCAs = pool
	}
	return conf, nil
}

// ctxErr converts a finished context into the error Exchange returns.
func ctxErr(ctx context.Context, doing string) error {
	err := ctx.Err()
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%s: %w (%w)", doing, ErrTimeout, err)
	}
	return fmt.Errorf("%s: %w", doing, err)
}
