// Package upstream exchanges DNS messages with one upstream resolver, over
// DNS-over-HTTPS (RFC 8484) or classic DNS (Do53, UDP with TCP fallback, or
// TCP only). Choosing among upstreams, health and failover live in the
// package that uses it.
//
// # DoH
//
// The DoH client speaks HTTP/2 itself on top of golang.org/x/net/http2's
// Framer and hpack; it does not use net/http. A [DoH] upstream keeps
// Options.Conns TLS connections to its target, dialled lazily by the first
// Exchange that needs one, and spreads queries over them round-robin. Each
// connection has exactly two goroutines:
//
//   - The writer owns every write. Callers put their request on a bounded
//     queue; the writer takes the first one and then everything else that
//     is queued at that moment, assigns stream IDs, encodes HEADERS and DATA
//     (END_STREAM) of every request into one bufio.Writer, adds the control
//     frames the reader asked for (SETTINGS ACK, PING ACK, WINDOW_UPDATE,
//     RST_STREAM), and flushes once. A query's HEADERS and DATA therefore
//     never leave as two TLS records, and under load many queries share one
//     record and one write system call. TCP_NODELAY is set.
//     The header block is precomputed per connection: the first request
//     inserts :authority, :path, content-type and accept into the server's
//     HPACK dynamic table, later ones refer to them with one byte each, and
//     only content-length is encoded per request.
//   - The reader demultiplexes frames by stream ID to the waiting callers
//     (a map guarded by the connection mutex), checks :status and
//     content-type, collects the body (at most 65535 bytes), and handles the
//     connection-level frames: SETTINGS (MAX_CONCURRENT_STREAMS,
//     INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE, HEADER_TABLE_SIZE), PING,
//     GOAWAY, RST_STREAM and WINDOW_UPDATE.
//
// Flow control: the client advertises a 1 MiB stream window and a 16 MiB
// connection window and returns credit with WINDOW_UPDATE once half of a
// window has been consumed. On the send side the writer honours the
// server's connection window (requests wait in order when it is exhausted)
// and splits DATA at the server's MAX_FRAME_SIZE.
//
// Streams are bounded by the server's MAX_CONCURRENT_STREAMS and by
// maxStreamsPerConn; a caller beyond the limit waits for a free stream until
// its deadline. When a caller gives up, its stream is reset with CANCEL.
// A GOAWAY marks the connection draining: streams above the last stream ID
// fail with [ErrGoAway] and are retried once on a fresh connection. A
// connection that breaks fails all of its streams at once with
// [ErrConnClosed] (also retried once) and is re-dialled by the next Exchange,
// after a short backoff if dialling failed.
//
// # Do53
//
// UDP uses a connected socket per exchange, a random ID on the wire, ignores
// datagrams whose ID or question do not match, and retries over TCP when the
// answer is truncated. TCP uses RFC 7766 length framing, one connection per
// exchange.
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
	// Exchange sends query (wire format, carrying the client's ID) and returns the
	// response in wire format carrying that same ID. It does not retain query.
	// The returned slice is owned by the caller. It honours ctx's deadline.
	Exchange(ctx context.Context, query []byte) ([]byte, error)
	Close() error
	String() string // the target as configured
}

// Options configure an upstream. The zero value is usable.
type Options struct {
	CAFile     string         // PEM file: trust only this CA instead of the system roots
	RootCAs    *x509.CertPool // alternative to CAFile (tests, demo); CAFile wins if both set
	ServerName string         // TLS name to verify; default: host of the URL
	Timeout    time.Duration  // cap per exchange (default 2s); ctx deadline may be shorter
	Conns      int            // DoH: connections per target (default 2); queries spread over them
}

// Defaults for Options.
const (
	DefaultTimeout = 2 * time.Second
	DefaultConns   = 2
)

// Errors returned by Exchange, to be tested with errors.Is. The returned
// errors wrap these with details.
var (
	// ErrTimeout: the exchange did not complete before its deadline
	// (Options.Timeout or the context's, whichever is sooner).
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
	// ErrClosed: Exchange was called after Close.
	ErrClosed = errors.New("upstream is closed")
)

// Retryable reports whether err means the upstream did not process the query
// and it is safe and useful to send it again on a fresh connection.
func Retryable(err error) bool {
	return errors.Is(err, ErrConnClosed) || errors.Is(err, ErrRefused)
}

// New parses target: "https://host[:port]/path" → DoH (RFC 8484);
// "udp://ip[:port]", "ip[:port]" or "[v6]:port" → Do53 UDP with TCP retry on TC;
// "tcp://ip[:port]" → Do53 over TCP only. Default ports 443 / 53.
// A DoH target without a path uses /dns-query. New does no network I/O.
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
	scheme, rest, found := strings.Cut(target, "://")
	if !found {
		scheme, rest = "udp", target
	}
	switch strings.ToLower(scheme) {
	case "https":
		return newDoH(target, opts)
	case "udp", "tcp":
		ap, err := parseIPPort(rest, 53)
		if err != nil {
			return nil, err
		}
		return newDo53(target, ap, strings.EqualFold(scheme, "tcp"), opts), nil
	default:
		return nil, fmt.Errorf("unsupported scheme %q (want https, udp or tcp)", scheme)
	}
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

// tlsConfig builds the client TLS configuration for a DoH target.
func tlsConfig(opts Options, defaultName string) (*tls.Config, error) {
	conf := &tls.Config{
		MinVersion:                  tls.VersionTLS12,
		NextProtos:                  []string{"h2"},
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

// deadlineFor returns the deadline of one exchange: now+timeout, or ctx's
// deadline if that is sooner.
func deadlineFor(ctx context.Context, timeout time.Duration) time.Time {
	d := time.Now().Add(timeout)
	if cd, ok := ctx.Deadline(); ok && cd.Before(d) {
		return cd
	}
	return d
}

// ctxErr converts a finished context into the error Exchange returns.
func ctxErr(ctx context.Context, doing string) error {
	err := ctx.Err()
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%s: %w (%w)", doing, ErrTimeout, err)
	}
	return fmt.Errorf("%s: %w", doing, err)
}
