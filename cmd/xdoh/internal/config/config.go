// Package config reads and validates xdoh's YAML configuration. Decoding is
// strict (unknown keys are errors), durations are written as Go durations
// ("2s", "24h"), and every validation error names the field it is about,
// e.g. `rules[1].targets[0]: …`. Relative file names are resolved against the
// directory of the config file.
package config

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
	"go.yaml.in/yaml/v3"
)

// Config is the whole file.
type Config struct {
	Listeners []Listener `yaml:"listeners"`
	Zones     []Zone     `yaml:"zones"`
	Rules     []Rule     `yaml:"rules"`
	Default   *Group     `yaml:"default"`
	Cache     Cache      `yaml:"cache"`
	Upstream  Upstream   `yaml:"upstream"`
	Metrics   Metrics    `yaml:"metrics"`
	QueryLog  QueryLog   `yaml:"querylog"`
	Control   Control    `yaml:"control"`
	// Procs is GOMAXPROCS, the number of CPUs running xdoh's goroutines at
	// once; 0 (the default) is automatic: see cmd/xdoh/internal/procs.
	// Read at start only.
	Procs int `yaml:"procs"`
	// NSID is the name xdoh gives when a client asks with an EDNS NSID
	// option (RFC 5001): any text of at most 128 octets, or "hostname" for
	// the machine's host name; empty (the default): none is given.
	NSID string `yaml:"nsid"`
	// Cookies configures DNS server cookies (RFC 7873).
	Cookies Cookies `yaml:"cookies"`
	// ShutdownTimeout bounds how long SIGTERM waits for queries in
	// flight to be answered before xdoh exits (default 5s).
	ShutdownTimeout Duration `yaml:"shutdown_timeout"`
	// RRL configures response-rate limiting of UDP answers.
	RRL RRL `yaml:"rrl"`

	dir string // directory of the file, for relative paths
}

// NSIDBytes is the NSID to return: the configured text, or the host name
// for "hostname"; nil when none is configured.
func (c *Config) NSIDBytes() ([]byte, error) {
	switch c.NSID {
	case "":
		return nil, nil
	case "hostname":
		h, err := os.Hostname()
		if err != nil {
			return nil, fmt.Errorf("nsid: reading the host name: %w", err)
		}
		if len(h) > maxNSID {
			h = h[:maxNSID]
		}
		return []byte(h), nil
	}
	return []byte(c.NSID), nil
}

// DefaultShutdownTimeout is shutdown_timeout's default.
const DefaultShutdownTimeout = 5 * time.Second

// ShutdownGrace is how long a shutdown drains queries in flight.
func (c *Config) ShutdownGrace() time.Duration {
	if c.ShutdownTimeout == 0 {
		return DefaultShutdownTimeout
	}
	return c.ShutdownTimeout.D()
}

// maxNSID bounds the NSID, so that it fits beside any answer that fits.
const maxNSID = 128

// Cookies configures DNS server cookies (RFC 7873) in RFC 9018's format,
// which BIND and Knot share: a fleet given the same secret accepts each
// other's cookies.
type Cookies struct {
	Enabled *bool `yaml:"enabled"` // default true
	// Secret is 32 hex digits (128 bits), the same on every instance of a
	// fleet. Empty: a random secret, kept until the process ends (a
	// reload keeps it).
	Secret string `yaml:"secret"`
	// Rotate is how often a new key is derived from Secret, at the same
	// moment on every instance: at least 1h; default 24h. "0s" uses the
	// secret as it is, as BIND's cookie-secret does.
	Rotate *Duration `yaml:"rotate"`
	// Require answers a UDP query that has a client cookie but no valid
	// server cookie with BADCOOKIE and a fresh cookie (RFC 7873 5.2.3).
	Require bool `yaml:"require"`
}

// On reports whether server cookies are given.
func (c Cookies) On() bool { return c.Enabled == nil || *c.Enabled }

// RotateEvery is the rotation period (0: never).
func (c Cookies) RotateEvery() time.Duration {
	if c.Rotate == nil {
		return 24 * time.Hour
	}
	return c.Rotate.D()
}

// SecretBytes is the configured secret, or this process's random one.
func (c Cookies) SecretBytes() [16]byte {
	var s [16]byte
	if c.Secret == "" {
		return processSecret()
	}
	hex.Decode(s[:], []byte(c.Secret)) // validated
	return s
}

// processSecret is the cookie secret of a process that has none
// configured: one for the process's life, so that a reload keeps
// clients' cookies valid.
var processSecret = sync.OnceValue(func() [16]byte {
	var s [16]byte
	if _, err := rand.Read(s[:]); err != nil {
		panic("reading random bytes for the cookie secret: " + err.Error())
	}
	return s
})

// RRL configures response-rate limiting (forwarder.RRL): answers over UDP
// beyond a rate per client prefix are dropped, or every Slip-th of them
// sent empty with TC set. TCP, DoT, DoH and DoQ, queries with a valid
// server cookie and Exempt prefixes are never limited.
type RRL struct {
	Enabled bool `yaml:"enabled"` // default false
	// ResponsesPerSecond is the rate of NOERROR answers per prefix
	// (needed when enabled).
	ResponsesPerSecond float64 `yaml:"responses_per_second"`
	// NXDomainsPerSecond and ErrorsPerSecond are the rates of NXDOMAIN and
	// of error answers (FORMERR, SERVFAIL, NOTIMP, REFUSED, BADCOOKIE), in
	// buckets of their own; 0: ResponsesPerSecond.
	NXDomainsPerSecond float64 `yaml:"nxdomains_per_second"`
	ErrorsPerSecond    float64 `yaml:"errors_per_second"`
	// Burst is how many answers of each kind a prefix may get at once
	// (default: one second of responses_per_second).
	Burst int `yaml:"burst"`
	// Slip: every Slip-th limited answer goes out empty with TC set, so a
	// real client retries over TCP; 0 never, 1 always (default 2).
	Slip *int `yaml:"slip"`
	// IPv4Prefix and IPv6Prefix group clients (default 24 and 56).
	IPv4Prefix int `yaml:"ipv4_prefix"`
	IPv6Prefix int `yaml:"ipv6_prefix"`
	// Exempt lists CIDRs or addresses never limited.
	Exempt []string `yaml:"exempt"`
	// Entries is how many prefixes are tracked at once (default 65536,
	// about 48 octets each, allocated at start).
	Entries int `yaml:"entries"`
}

// SlipEvery is the configured slip (default 2).
func (r RRL) SlipEvery() int {
	if r.Slip == nil {
		return 2
	}
	return *r.Slip
}

// Listener is one inbound endpoint.
type Listener struct {
	Name      string   `yaml:"name"`
	Protocols []string `yaml:"protocols"` // do53 | doh | doh-fips | dot | dot-fips | doq; empty means do53
	Do53      []string `yaml:"do53"`      // "IP:port" for UDP and TCP
	DoH       *DoH     `yaml:"doh"`       // for protocol doh or doh-fips
	DoT       *DoT     `yaml:"dot"`       // for protocol dot or dot-fips
	DoQ       *DoQ     `yaml:"doq"`       // for protocol doq
	// Allow is the source ACL (the security-group analog): CIDRs or single
	// addresses. Empty allows everyone. Others get ACLAction.
	Allow     []string `yaml:"allow"`
	ACLAction string   `yaml:"acl_action"` // refuse (REFUSED, default) | drop
	TCP       TCP      `yaml:"tcp"`
	// UDPSockets is the number of SO_REUSEPORT sockets per address that
	// Do53 over UDP is served on, each by its own recvmmsg/sendmmsg loop
	// (datapath/udp; default GOMAXPROCS/2, at least 1).
	UDPSockets int `yaml:"udp_sockets"`
	// XDP steers the listener's Do53 UDP packets into AF_XDP sockets on
	// the named interfaces (datapath/xsk); TCP and whatever the XDP program
	// passes still reach the kernel sockets. Absent or mode off: sockets only.
	XDP *XDP `yaml:"xdp"`
}

// XDP is a listener's XDP/AF_XDP datapath.
type XDP struct {
	// Mode is auto (native, else generic, else the socket path with one log
	// line saying why), native, generic or off. Empty means auto.
	Mode       string   `yaml:"mode"`
	Interfaces []string `yaml:"interfaces"`
	// KernelCache is the in-kernel answer tier: hot cached answers sent
	// back by the XDP program itself. auto (the default) runs it on
	// interfaces attached in native mode; on also in generic mode; off.
	KernelCache string `yaml:"kernel_cache"`
	// KernelCacheEntries sizes its map (default 4096, at most 65536; about
	// 1.4 KiB each, preallocated per interface).
	KernelCacheEntries int `yaml:"kernel_cache_entries"`
	// KernelCacheMaxAnswer is the largest answer it holds, in bytes
	// (default 512, at most 1232).
	KernelCacheMaxAnswer int `yaml:"kernel_cache_max_answer"`
	// KernelCacheHits is how many cache hits within a second make an
	// answer hot enough for it (default 8).
	KernelCacheHits int `yaml:"kernel_cache_hits"`
	// Affinity is auto (the default: each queue's loop follows the CPU
	// whose softirq fills its ring, see xsk.AffinityAuto) or off.
	Affinity string `yaml:"affinity"`
}

// XDPMode is the listener's XDP mode: "off" without an xdp section.
func (l *Listener) XDPMode() string {
	switch {
	case l.XDP == nil:
		return "off"
	case l.XDP.Mode == "":
		return "auto"
	}
	return l.XDP.Mode
}

// DoH is an inbound DNS-over-HTTPS server (HTTP/2).
type DoH struct {
	Address string `yaml:"address"`
	Path    string `yaml:"path"`
	Cert    string `yaml:"cert"`
	Key     string `yaml:"key"`
	// MaxStreams is SETTINGS_MAX_CONCURRENT_STREAMS: queries one
	// connection may have in flight (default 256).
	MaxStreams int `yaml:"max_streams"`
	// IdleTimeout closes a connection with nothing in flight that sent
	// nothing for this long, with GOAWAY (default 2m).
	IdleTimeout Duration `yaml:"idle_timeout"`
	// MaxConns bounds open connections (default 1000).
	MaxConns int `yaml:"max_conns"`
	// MaxResetsPerSecond is the rapid-reset bound (CVE-2023-44487): the
	// streams with a query in flight a client may reset a second, on
	// average, with a burst of ten seconds' worth; past it the connection
	// gets GOAWAY ENHANCE_YOUR_CALM (default 100).
	MaxResetsPerSecond int `yaml:"max_resets_per_second"`
	// MaxBodySize bounds a query, POST body or decoded GET parameter, in
	// octets; larger gets 413 (default and most 65535).
	MaxBodySize int `yaml:"max_body_size"`
	// MaxHeaderBytes bounds a request's header list, the GET URL included;
	// larger gets 431 (default: room for a GET of max_body_size, plus 8 KiB).
	MaxHeaderBytes int        `yaml:"max_header_bytes"`
	Conn           ConnLimits `yaml:",inline"`
}

// ConnLimits are the per-connection abuse limits every stream listener
// (DoT, DoH, DoQ) shares.
type ConnLimits struct {
	// MaxConnsPerClient bounds the open connections from one client
	// address (default 64).
	MaxConnsPerClient int `yaml:"max_conns_per_client"`
	// HandshakeTimeout bounds the TLS handshake (DoH: and the HTTP/2
	// preface, and a header block) (defaults: DoT and DoH 10s, DoQ 5s).
	HandshakeTimeout Duration `yaml:"handshake_timeout"`
	// ReadTimeout bounds the arrival of one query once it has started
	// (DoH: from HEADERS to the last DATA; DoQ: a stream's query and FIN)
	// (defaults: DoT and DoQ 10s, DoH 30s).
	ReadTimeout Duration `yaml:"read_timeout"`
	// WriteTimeout bounds one write to the client: one that reads none of
	// its answers for this long is cut off (default 10s).
	WriteTimeout Duration `yaml:"write_timeout"`
}

// DoT is an inbound DNS-over-TLS server (RFC 7858).
type DoT struct {
	Address string `yaml:"address"` // IP:port, or IP for port 853
	Cert    string `yaml:"cert"`
	Key     string `yaml:"key"`
	// IdleTimeout closes a connection with nothing in flight that sent
	// nothing for this long (default 2m).
	IdleTimeout Duration `yaml:"idle_timeout"`
	// MaxConns bounds open connections; more are closed at once (default 1000).
	MaxConns int `yaml:"max_conns"`
	// MaxPipeline bounds the queries one connection may have waiting for
	// upstream; past it the connection is not read (default 128).
	MaxPipeline int        `yaml:"max_pipeline"`
	Conn        ConnLimits `yaml:",inline"`
}

// DoQ is an inbound DNS-over-QUIC server (RFC 9250).
type DoQ struct {
	Address string `yaml:"address"` // UDP IP:port, or IP for port 853
	Cert    string `yaml:"cert"`
	Key     string `yaml:"key"`
	// IdleTimeout ends a connection without traffic (default 2m).
	IdleTimeout Duration `yaml:"idle_timeout"`
	// MaxConns bounds connections, handshakes included (default 1000).
	MaxConns int `yaml:"max_conns"`
	// MaxStreams bounds the queries (streams) one connection may have
	// open at once (default 100).
	MaxStreams int        `yaml:"max_streams"`
	Conn       ConnLimits `yaml:",inline"`
}

// DefaultEncryptedPort is DoT's and DoQ's port (RFC 7858, RFC 9250).
const DefaultEncryptedPort = 853

// EncryptedAddr returns a dot or doq address with its port: 853 when the
// address is a bare IP.
func EncryptedAddr(a string) (netip.AddrPort, error) {
	if ip, err := netip.ParseAddr(a); err == nil {
		return netip.AddrPortFrom(ip, DefaultEncryptedPort), nil
	}
	return netip.ParseAddrPort(a)
}

// TCP tunes Do53 over TCP.
type TCP struct {
	IdleTimeout Duration `yaml:"idle_timeout"`
	MaxConns    int      `yaml:"max_conns"`
	// MaxConnsPerClient bounds the connections from one client address
	// (default 64).
	MaxConnsPerClient int `yaml:"max_conns_per_client"`
	MaxPipeline       int `yaml:"max_pipeline"`
	// Loops is the number of gnet event loops serving TCP (datapath/tcp);
	// default GOMAXPROCS/2, at least 1. More loops answer more cache hits
	// in parallel; fewer batch forwarded queries better.
	Loops int `yaml:"loops"`
}

// Zone is a local authoritative zone from an RFC 1035 file.
type Zone struct {
	Name string `yaml:"name"`
	File string `yaml:"file"`
}

// Rule maps a domain to an action.
type Rule struct {
	Name    string   `yaml:"name"`
	Domain  string   `yaml:"domain"`
	Type    string   `yaml:"type"` // forward | system | block
	Targets []string `yaml:"targets"`
	CAFile  string   `yaml:"ca_file"`
	// TLSServerName is the name the certificate of a tls://, https:// or
	// quic:// target must carry, instead of the target's host.
	TLSServerName string `yaml:"tls_server_name"`
	// Bootstrap lists the IP addresses that the rule's https://, tls://
	// and quic:// targets named by host are dialled at, instead of
	// resolving the host (which stays the TLS name and DoH's :authority):
	// see CheckSelfResolution for when they are needed.
	Bootstrap []string `yaml:"bootstrap"`
	// Method is how https:// targets get their queries: post (the
	// default) or get (RFC 8484 4.1, ?dns= base64url).
	Method  string   `yaml:"method"`
	Timeout Duration `yaml:"timeout"`
	Select  Select   `yaml:",inline"`
	Subnet  Subnet   `yaml:",inline"`
}

// Group is the default target group.
type Group struct {
	Targets []string `yaml:"targets"`
	CAFile  string   `yaml:"ca_file"`
	// TLSServerName is the name the certificate of a tls://, https:// or
	// quic:// target must carry, instead of the target's host.
	TLSServerName string `yaml:"tls_server_name"`
	// Bootstrap lists the IP addresses that the default https://, tls://
	// and quic:// targets named by host are dialled at, instead of
	// resolving the host (which stays the TLS name and DoH's :authority):
	// see CheckSelfResolution for when they are needed.
	Bootstrap []string `yaml:"bootstrap"`
	// Method is how https:// targets get their queries: post (the
	// default) or get (RFC 8484 4.1, ?dns= base64url).
	Method  string   `yaml:"method"`
	Timeout Duration `yaml:"timeout"`
	Select  Select   `yaml:",inline"`
	Subnet  Subnet   `yaml:",inline"`
}

// Subnet is what a forward rule (or the default) sends upstream of its
// clients' addresses: EDNS Client Subnet (RFC 7871).
type Subnet struct {
	// ECS is strip (the default: nothing, for privacy), pass (a client's
	// own option) or add (the client's subnet, cut to ECSPrefix).
	ECS       string    `yaml:"ecs"`
	ECSPrefix ECSPrefix `yaml:"ecs_prefix"`
}

// ECSPrefix is add's source prefix lengths (default 24 and 56).
type ECSPrefix struct {
	IPv4 int `yaml:"ipv4"`
	IPv6 int `yaml:"ipv6"`
}

// Select is how a rule (or default) chooses among its targets.
type Select struct {
	Policy string `yaml:"policy"` // ordered (default) | round_robin | fastest
	// Hedge: send a slow query to a second target too. "off", a
	// duration ("20ms"), or empty for adaptive (the target's p95 latency).
	Hedge  string `yaml:"hedge"`
	Health Health `yaml:"health"`
}

// Health tunes passive and active health checks.
type Health struct {
	FailAfter     int      `yaml:"fail_after"`     // consecutive failures → down (default 3)
	RecoverAfter  int      `yaml:"recover_after"`  // consecutive probe successes → up (default 2)
	ProbeName     string   `yaml:"probe_name"`     // default "."
	ProbeInterval Duration `yaml:"probe_interval"` // default 5s
}

// Cache configures the response cache.
type Cache struct {
	Enabled     *bool    `yaml:"enabled"` // default true
	Entries     int      `yaml:"entries"`
	MaxBytes    int64    `yaml:"max_bytes"`   // bound on stored bytes (default entries × 512)
	ServeStale  Duration `yaml:"serve_stale"` // RFC 8767 window after expiry (0: off)
	MinTTL      Duration `yaml:"min_ttl"`
	MaxTTL      Duration `yaml:"max_ttl"`
	ServFailTTL Duration `yaml:"servfail_ttl"`
}

// On reports whether the cache is enabled.
func (c Cache) On() bool { return c.Enabled == nil || *c.Enabled }

// Upstream holds settings shared by every target.
type Upstream struct {
	QueryTimeout Duration `yaml:"query_timeout"` // whole budget per client query
	Timeout      Duration `yaml:"timeout"`       // default per-attempt timeout
	MaxInflight  int      `yaml:"max_inflight"`  // queries upstream at once; also each target's wait queue
	Conns        int      `yaml:"conns"`         // DoH connections per target
}

// QueryLog configures the query log (JSON lines with Route 53 Resolver field
// names) and its dnstap output.
type QueryLog struct {
	Path         string  `yaml:"path"`   // file, reopened on SIGHUP; "-" for stdout
	Buffer       int     `yaml:"buffer"` // entries queued before dropping (default 4096)
	SampleRate   float64 `yaml:"sample_rate"`
	DnstapSocket string  `yaml:"dnstap_socket"`
	DnstapFile   string  `yaml:"dnstap_file"`
}

// On reports whether any query-log output is configured.
func (q QueryLog) On() bool { return q.Path != "" || q.DnstapSocket != "" || q.DnstapFile != "" }

// Control configures the control socket of `xdoh ctl` and `xdoh reload`.
// Read at start only: a reload that changes it is refused.
type Control struct {
	Socket string `yaml:"socket"` // unix socket path; empty: off
	// Mode is the socket's permission bits, in octal ("0660"; default
	// "0600"): who may connect, since connecting needs write permission.
	// The owner keeps read and write.
	Mode string `yaml:"mode"`
	// Group, a group name or numeric ID, owns the socket (default: the
	// process's), so that with mode "0660" an operators' group can use it.
	Group string `yaml:"group"`
}

// FileMode is the socket's permission bits (Mode, validated).
func (c Control) FileMode() os.FileMode {
	if c.Mode == "" {
		return 0o600
	}
	m, _ := strconv.ParseUint(c.Mode, 8, 32)
	return os.FileMode(m)
}

// Metrics configures the Prometheus endpoint (/metrics, /healthz, /readyz).
type Metrics struct {
	Address string `yaml:"address"` // "127.0.0.1:9153"; empty: off
}

// checkSubnet validates a client-subnet policy.
func checkSubnet(f string, s Subnet, bad func(field, format string, a ...any)) {
	switch s.ECS {
	case "", "strip", "pass", "add":
	default:
		bad(f+".ecs", "%q is not one of strip, pass, add", s.ECS)
	}
	if s.ECSPrefix != (ECSPrefix{}) && s.ECS != "add" {
		bad(f+".ecs_prefix", "only ecs: add uses it")
	}
	if p := s.ECSPrefix.IPv4; p < 0 || p > 32 {
		bad(f+".ecs_prefix.ipv4", "%d is not between 1 and 32", p)
	}
	if p := s.ECSPrefix.IPv6; p < 0 || p > 128 {
		bad(f+".ecs_prefix.ipv6", "%d is not between 1 and 128", p)
	}
}

// Duration is a time.Duration written as "1.5s".
type Duration time.Duration

// UnmarshalYAML reads a Go duration string.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	var s string
	if err := n.Decode(&s); err != nil {
		return fmt.Errorf("line %d: want a duration such as \"2s\"", n.Line)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("line %d: %q is not a duration such as \"2s\"", n.Line, s)
	}
	*d = Duration(v)
	return nil
}

// D returns the value as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// Load reads, decodes and validates a file.
func Load(path string) (*Config, error) {
	c, err := Read(path)
	if err != nil {
		return nil, err
	}
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// Read reads and decodes a file without validating it, for callers that
// change it first (command-line flags layered over the file) and validate
// after.
func Read(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading config: %w", err)
	}
	c, err := decode(b, filepath.Dir(path))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// Parse decodes and validates YAML; dir resolves relative paths.
func Parse(b []byte, dir string) (*Config, error) {
	c, err := decode(b, dir)
	if err != nil {
		return nil, err
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return c, nil
}

func decode(b []byte, dir string) (*Config, error) {
	var doc yaml.Node
	if yaml.Unmarshal(b, &doc) == nil { // a syntax error is the strict decoder's to report
		if err := checkRemoved(&doc); err != nil {
			return nil, err
		}
	}
	c := &Config{dir: dir}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(c); err != nil && !errors.Is(err, io.EOF) { // an empty file fails validation later
		return nil, fmt.Errorf("decoding YAML: %w", err)
	}
	return c, nil
}

// removedListenerKeys are listener settings xdoh no longer has, with what to
// do instead. Strict decoding alone would reject one as "field udp_engine not
// found in type config.Listener", naming neither the listener nor why.
var removedListenerKeys = map[string]string{
	"udp_engine": "removed, recvmmsg is the only Do53 UDP datapath now (udp_sockets still sets its sockets); delete the setting",
}

// checkRemoved reports every removed key in doc, each naming its field.
func checkRemoved(doc *yaml.Node) error {
	if doc.Kind != yaml.DocumentNode || len(doc.Content) == 0 || doc.Content[0].Kind != yaml.MappingNode {
		return nil
	}
	var listeners *yaml.Node
	top := doc.Content[0].Content
	for i := 0; i+1 < len(top); i += 2 {
		if top[i].Value == "listeners" {
			listeners = top[i+1]
		}
	}
	if listeners == nil || listeners.Kind != yaml.SequenceNode {
		return nil
	}
	var errs []error
	for i, l := range listeners.Content {
		if l.Kind != yaml.MappingNode {
			continue
		}
		for j := 0; j+1 < len(l.Content); j += 2 {
			k := l.Content[j]
			if why, ok := removedListenerKeys[k.Value]; ok {
				errs = append(errs, fmt.Errorf("listeners[%d].%s: line %d: %s", i, k.Value, k.Line, why))
			}
		}
	}
	return errors.Join(errs...)
}

// SetDir sets the directory relative paths are resolved against.
func (c *Config) SetDir(dir string) { c.dir = dir }

// Path resolves a file name from the config.
func (c *Config) Path(p string) string {
	if p == "" || filepath.IsAbs(p) || c.dir == "" {
		return p
	}
	return filepath.Join(c.dir, p)
}

// Validate checks every field and returns all problems at once, joined, each
// naming its field.
func (c *Config) Validate() error {
	var errs []error
	bad := func(field, format string, a ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, a...)))
	}
	if len(c.Listeners) == 0 {
		bad("listeners", "at least one listener is needed")
	}
	if c.Procs < 0 || c.Procs > 1024 {
		bad("procs", "%d is not between 0 (automatic) and 1024", c.Procs)
	}
	if d := c.ShutdownTimeout.D(); d < 0 || d > 10*time.Minute {
		bad("shutdown_timeout", "%v is not between 0s (the default, 5s) and 10m", d)
	}
	if len(c.NSID) > maxNSID {
		bad("nsid", "%d octets; at most %d", len(c.NSID), maxNSID)
	}
	if b, err := hex.DecodeString(c.Cookies.Secret); c.Cookies.Secret != "" && (err != nil || len(b) != 16) {
		bad("cookies.secret", "want 32 hex digits (128 bits)")
	}
	if r := c.Cookies.RotateEvery(); r != 0 && r < time.Hour {
		bad("cookies.rotate", "%v: at least 1h (a cookie lives an hour), or 0s for never", r)
	}
	c.checkRRL(bad)
	if m, err := strconv.ParseUint(c.Control.Mode, 8, 32); c.Control.Mode != "" && (err != nil || m > 0o777 || m&0o600 != 0o600) {
		bad("control.mode", "%q: want octal permission bits that keep the owner's read and write, such as \"0600\" or \"0660\"", c.Control.Mode)
	}
	if c.Control.Socket == "" && (c.Control.Mode != "" || c.Control.Group != "") {
		bad("control.socket", "is empty, yet control.mode or control.group is set")
	}
	// unique checks that a section's names are set and distinct.
	unique := func(section string) func(i int, name string) {
		seen := map[string]int{}
		return func(i int, name string) {
			field := fmt.Sprintf("%s[%d].name", section, i)
			if name == "" {
				bad(field, "is empty")
			} else if j, dup := seen[name]; dup {
				bad(field, "%q is already the name of %s[%d]", name, section, j)
			} else {
				seen[name] = i
			}
		}
	}
	listenerName := unique("listeners")
	for i, l := range c.Listeners {
		f := fmt.Sprintf("listeners[%d]", i)
		listenerName(i, l.Name)
		protos, err := l.ProtocolSet()
		if err != nil {
			bad(f+".protocols", "%v", err)
		}
		switch {
		case err != nil:
			// Which sections are needed depends on the protocols.
		case protos["do53"]:
			if len(l.Do53) == 0 {
				bad(f+".do53", "protocol do53 needs at least one address")
			}
		case len(l.Do53) > 0:
			bad(f+".do53", "addresses given but do53 is not in protocols")
		}
		for j, a := range l.Do53 {
			if _, err := netip.ParseAddrPort(a); err != nil {
				bad(fmt.Sprintf("%s.do53[%d]", f, j), "%q is not IP:port (IPv6 as [::1]:53)", a)
			}
		}
		https := protos["doh"] || protos["doh-fips"]
		switch {
		case err != nil:
		case !https:
			if l.DoH != nil {
				bad(f+".doh", "doh section given but neither doh nor doh-fips is in protocols")
			}
		default:
			if l.DoH == nil {
				bad(f+".doh", "protocol doh/doh-fips needs a doh section (address, cert, key)")
			} else {
				if _, err := netip.ParseAddrPort(l.DoH.Address); err != nil {
					bad(f+".doh.address", "%q is not IP:port", l.DoH.Address)
				}
				if l.DoH.Path != "" && !strings.HasPrefix(l.DoH.Path, "/") {
					bad(f+".doh.path", "%q must start with /", l.DoH.Path)
				}
				if l.DoH.MaxStreams < 0 || l.DoH.MaxStreams > 1<<16 {
					bad(f+".doh.max_streams", "%d is outside 0..65536 (0: default 256)", l.DoH.MaxStreams)
				}
				if l.DoH.IdleTimeout < 0 {
					bad(f+".doh.idle_timeout", "%v is negative", time.Duration(l.DoH.IdleTimeout))
				}
				for _, lim := range []limit{{"max_conns", l.DoH.MaxConns}, {"max_resets_per_second", l.DoH.MaxResetsPerSecond}, {"max_header_bytes", l.DoH.MaxHeaderBytes}} {
					if lim.v < 0 || lim.v > 1<<20 {
						bad(f+".doh."+lim.name, "%d is outside 0..1048576 (0: default)", lim.v)
					}
				}
				if n := l.DoH.MaxBodySize; n != 0 && (n < 12 || n > 65535) {
					bad(f+".doh.max_body_size", "%d is outside 12..65535 (0: default 65535)", n)
				}
				checkConnLimits(f+".doh", l.DoH.Conn, bad)
				for _, kf := range []struct{ name, path string }{{"cert", l.DoH.Cert}, {"key", l.DoH.Key}} {
					if kf.path == "" {
						bad(f+".doh."+kf.name, "is empty")
					} else if _, err := os.Stat(c.Path(kf.path)); err != nil {
						bad(f+".doh."+kf.name, "%v", err)
					}
				}
			}
		}
		if err == nil {
			var dt DoT
			if l.DoT != nil {
				dt = *l.DoT
			}
			var dq DoQ
			if l.DoQ != nil {
				dq = *l.DoQ
			}
			for _, e := range []encrypted{
				{"dot", "dot/dot-fips", protos["dot"] || protos["dot-fips"], l.DoT != nil, dt.Address, dt.Cert, dt.Key, dt.IdleTimeout,
					[]limit{{"max_conns", dt.MaxConns}, {"max_pipeline", dt.MaxPipeline}}, dt.Conn},
				{"doq", "doq", protos["doq"], l.DoQ != nil, dq.Address, dq.Cert, dq.Key, dq.IdleTimeout,
					[]limit{{"max_conns", dq.MaxConns}, {"max_streams", dq.MaxStreams}}, dq.Conn},
			} {
				c.checkEncrypted(f+"."+e.section, e, bad)
				if e.wanted && e.present {
					checkConnLimits(f+"."+e.section, e.conn, bad)
				}
			}
		}
		for j, a := range l.Allow {
			if _, err := ParsePrefix(a); err != nil {
				bad(fmt.Sprintf("%s.allow[%d]", f, j), "%v", err)
			}
		}
		switch l.ACLAction {
		case "", "refuse", "drop":
		default:
			bad(f+".acl_action", "%q is not one of refuse, drop", l.ACLAction)
		}
		if l.UDPSockets < 0 || l.UDPSockets > 256 {
			bad(f+".udp_sockets", "%d is not between 0 (default) and 256", l.UDPSockets)
		}
		if l.XDP != nil {
			switch l.XDP.Mode {
			case "", "auto", "native", "generic", "off":
			default:
				bad(f+".xdp.mode", "%q is not one of auto, native, generic, off", l.XDP.Mode)
			}
			if l.XDPMode() != "off" {
				if len(l.XDP.Interfaces) == 0 {
					bad(f+".xdp.interfaces", "mode %s needs at least one interface", l.XDPMode())
				}
				if len(l.Do53) == 0 {
					bad(f+".xdp", "XDP carries Do53 over UDP: the listener has no do53 addresses")
				}
			}
			switch l.XDP.KernelCache {
			case "", "auto", "on", "off":
			default:
				bad(f+".xdp.kernel_cache", "%q is not one of auto, on, off", l.XDP.KernelCache)
			}
			switch l.XDP.Affinity {
			case "", "auto", "off":
			default:
				bad(f+".xdp.affinity", "%q is not one of auto, off", l.XDP.Affinity)
			}
			if n := l.XDP.KernelCacheEntries; n < 0 || n > 65536 {
				bad(f+".xdp.kernel_cache_entries", "%d is not between 0 (default) and 65536", n)
			}
			if n := l.XDP.KernelCacheMaxAnswer; n != 0 && (n < 64 || n > 1232) {
				bad(f+".xdp.kernel_cache_max_answer", "%d is not between 64 and 1232 (0: default 512)", n)
			}
			if n := l.XDP.KernelCacheHits; n < 0 || n > 1000000 {
				bad(f+".xdp.kernel_cache_hits", "%d is not between 0 (default) and 1000000", n)
			}
			seen := map[string]bool{}
			for j, name := range l.XDP.Interfaces {
				switch {
				case name == "" || len(name) > 15 || strings.ContainsAny(name, "/ \t"):
					bad(fmt.Sprintf("%s.xdp.interfaces[%d]", f, j), "%q is not an interface name", name)
				case seen[name]:
					bad(fmt.Sprintf("%s.xdp.interfaces[%d]", f, j), "%q is listed twice", name)
				}
				seen[name] = true
			}
		}
		if l.TCP.Loops < 0 || l.TCP.Loops > 256 {
			bad(f+".tcp.loops", "%d is not between 0 (default) and 256", l.TCP.Loops)
		}
		if l.TCP.MaxConnsPerClient < 0 || l.TCP.MaxConnsPerClient > 1<<20 {
			bad(f+".tcp.max_conns_per_client", "%d is outside 0..1048576 (0: default 64)", l.TCP.MaxConnsPerClient)
		}
		if l.TCP.MaxConns < 0 || l.TCP.MaxPipeline < 0 || l.TCP.IdleTimeout < 0 {
			bad(f+".tcp", "limits must not be negative")
		}
	}
	domains := map[string]string{}
	claim := func(field, domain string) {
		d := strings.ToLower(dns.Fqdn(domain))
		if _, ok := dns.IsDomainName(d); !ok || domain == "" {
			bad(field, "%q is not a domain name", domain)
			return
		}
		if prev, dup := domains[d]; dup {
			bad(field, "%q is already used by %s", domain, prev)
			return
		}
		domains[d] = field
	}
	for i, z := range c.Zones {
		f := fmt.Sprintf("zones[%d]", i)
		claim(f+".name", z.Name)
		if z.File == "" {
			bad(f+".file", "is empty")
		} else if _, err := os.Stat(c.Path(z.File)); err != nil {
			bad(f+".file", "%v", err)
		}
	}
	ruleName := unique("rules")
	for i, r := range c.Rules {
		f := fmt.Sprintf("rules[%d]", i)
		ruleName(i, r.Name)
		claim(f+".domain", r.Domain)
		switch r.Type {
		case "forward":
			if len(r.Targets) == 0 {
				bad(f+".targets", "a forward rule needs at least one target")
			}
		case "system", "block":
			if len(r.Targets) > 0 {
				bad(f+".targets", "a %s rule takes no targets", r.Type)
			}
			if r.Method != "" {
				bad(f+".method", "a %s rule sends nothing upstream of its own", r.Type)
			}
			if len(r.Bootstrap) > 0 {
				bad(f+".bootstrap", "a %s rule sends nothing upstream of its own", r.Type)
			}
			if r.Subnet != (Subnet{}) {
				bad(f+".ecs", "a %s rule sends nothing upstream of its own (system names use default's)", r.Type)
			}
		default:
			bad(f+".type", "%q is not one of forward, system, block", r.Type)
		}
		c.checkTargets(f, r.Targets, r.CAFile, r.TLSServerName, r.Method, r.Bootstrap, bad)
		checkSelect(f, r.Select, bad)
		checkSubnet(f, r.Subnet, bad)
		if r.Timeout < 0 {
			bad(f+".timeout", "must not be negative")
		}
	}
	if c.Default != nil {
		if len(c.Default.Targets) == 0 {
			bad("default.targets", "a default section needs at least one target")
		}
		c.checkTargets("default", c.Default.Targets, c.Default.CAFile, c.Default.TLSServerName, c.Default.Method, c.Default.Bootstrap, bad)
		checkSelect("default", c.Default.Select, bad)
		checkSubnet("default", c.Default.Subnet, bad)
		if c.Default.Timeout < 0 {
			bad("default.timeout", "must not be negative")
		}
	}
	for _, d := range []struct {
		field string
		v     Duration
	}{
		{"cache.min_ttl", c.Cache.MinTTL}, {"cache.max_ttl", c.Cache.MaxTTL}, {"cache.servfail_ttl", c.Cache.ServFailTTL},
		{"upstream.query_timeout", c.Upstream.QueryTimeout}, {"upstream.timeout", c.Upstream.Timeout},
	} {
		if d.v < 0 {
			bad(d.field, "must not be negative")
		}
	}
	if c.Cache.Entries < 0 {
		bad("cache.entries", "must not be negative")
	}
	if c.Cache.MaxBytes < 0 {
		bad("cache.max_bytes", "must not be negative")
	}
	if c.Cache.ServeStale < 0 {
		bad("cache.serve_stale", "must not be negative")
	}
	if c.Cache.MaxTTL > 0 && c.Cache.MinTTL > c.Cache.MaxTTL {
		bad("cache.min_ttl", "%v is above cache.max_ttl %v", c.Cache.MinTTL.D(), c.Cache.MaxTTL.D())
	}
	if c.QueryLog.Buffer < 0 {
		bad("querylog.buffer", "must not be negative")
	}
	if c.QueryLog.SampleRate < 0 || c.QueryLog.SampleRate > 1 {
		bad("querylog.sample_rate", "%v is not between 0 and 1", c.QueryLog.SampleRate)
	}
	if c.Metrics.Address != "" {
		if _, err := netip.ParseAddrPort(c.Metrics.Address); err != nil {
			bad("metrics.address", "%q is not IP:port", c.Metrics.Address)
		}
	}
	if c.Upstream.MaxInflight < 0 {
		bad("upstream.max_inflight", "must not be negative")
	}
	if c.Upstream.Conns < 0 {
		bad("upstream.conns", "must not be negative")
	}
	if c.Upstream.QueryTimeout > 0 && c.Upstream.Timeout > c.Upstream.QueryTimeout {
		bad("upstream.timeout", "%v is longer than upstream.query_timeout %v", c.Upstream.Timeout.D(), c.Upstream.QueryTimeout.D())
	}
	return errors.Join(errs...)
}

// checkRRL validates the rrl section (its fields even when it is off, so
// that a mistake shows before it is turned on).
func (c *Config) checkRRL(bad func(string, string, ...any)) {
	r := c.RRL
	const maxRate = 1e7
	if r.Enabled && r.ResponsesPerSecond == 0 {
		bad("rrl.responses_per_second", "is needed when rrl is enabled")
	}
	for _, f := range []struct {
		name string
		v    float64
	}{{"responses_per_second", r.ResponsesPerSecond}, {"nxdomains_per_second", r.NXDomainsPerSecond}, {"errors_per_second", r.ErrorsPerSecond}} {
		if !(f.v >= 0 && f.v <= maxRate) {
			bad("rrl."+f.name, "%v is not between 0 and %g", f.v, maxRate)
		}
	}
	if r.Burst < 0 || r.Burst > 1e7 {
		bad("rrl.burst", "%d is not between 0 (default) and 10000000", r.Burst)
	}
	if s := r.SlipEvery(); s < 0 || s > 10 {
		bad("rrl.slip", "%d is not between 0 (never) and 10", s)
	}
	if p := r.IPv4Prefix; p < 0 || p > 32 {
		bad("rrl.ipv4_prefix", "%d is not between 1 and 32 (0: default 24)", p)
	}
	if p := r.IPv6Prefix; p < 0 || p > 128 {
		bad("rrl.ipv6_prefix", "%d is not between 1 and 128 (0: default 56)", p)
	}
	if n := r.Entries; n != 0 && (n < 64 || n > 1<<24) {
		bad("rrl.entries", "%d is not between 64 and 16777216 (0: default 65536)", n)
	}
	for i, e := range r.Exempt {
		if _, err := ParsePrefix(e); err != nil {
			bad(fmt.Sprintf("rrl.exempt[%d]", i), "%v", err)
		}
	}
	if !r.Enabled {
		return
	}
	for i, l := range c.Listeners {
		if l.XDP != nil && l.XDP.KernelCache == "on" && l.XDPMode() != "off" {
			bad(fmt.Sprintf("listeners[%d].xdp.kernel_cache", i), "on: answers the XDP program sends itself would escape rrl; set auto or off (rrl turns auto off)")
		}
	}
}

func (c *Config) checkTargets(f string, targets []string, caFile, serverName, method string, bootstrap []string, bad func(string, string, ...any)) {
	for j, t := range targets {
		if err := CheckTarget(t); err != nil {
			bad(fmt.Sprintf("%s.targets[%d]", f, j), "%v", err)
		} else if len(bootstrap) > 0 && TargetHost(t) == "" {
			bad(f+".bootstrap", "applies only to https://, tls:// and quic:// targets named by host, and %s.targets[%d] %q is not one", f, j, t)
		}
		scheme, _, _ := strings.Cut(t, "://")
		if serverName != "" && scheme != "tls" && scheme != "https" && scheme != "quic" {
			bad(f+".tls_server_name", "applies only to tls://, https:// and quic:// targets, and %s.targets[%d] %q is not one", f, j, t)
		}
		if method != "" && scheme != "https" {
			bad(f+".method", "applies only to https:// targets, and %s.targets[%d] %q is not one", f, j, t)
		}
	}
	switch method {
	case "", "post", "get":
	default:
		bad(f+".method", "%q is not one of post, get", method)
	}
	seen := map[netip.Addr]bool{}
	for j, b := range bootstrap {
		a, err := netip.ParseAddr(b)
		switch {
		case err != nil || a.Zone() != "":
			bad(fmt.Sprintf("%s.bootstrap[%d]", f, j), "%q is not an IP address", b)
		case a.IsUnspecified() || a.IsMulticast():
			bad(fmt.Sprintf("%s.bootstrap[%d]", f, j), "%q cannot be dialled", b)
		case seen[a.Unmap()]:
			bad(fmt.Sprintf("%s.bootstrap[%d]", f, j), "%q is listed twice", b)
		}
		seen[a.Unmap()] = true
	}
	if serverName != "" {
		if _, ok := dns.IsDomainName(serverName); !ok || strings.ContainsAny(serverName, " /:") {
			bad(f+".tls_server_name", "%q is not a host name", serverName)
		}
	}
	if caFile != "" {
		if _, err := os.Stat(c.Path(caFile)); err != nil {
			bad(f+".ca_file", "%v", err)
		}
	}
}

func checkSelect(f string, s Select, bad func(string, string, ...any)) {
	switch s.Policy {
	case "", "ordered", "round_robin", "fastest":
	default:
		bad(f+".policy", "%q is not one of ordered, round_robin, fastest", s.Policy)
	}
	if s.Hedge != "" && s.Hedge != "off" {
		if d, err := time.ParseDuration(s.Hedge); err != nil || d <= 0 {
			bad(f+".hedge", "%q is not off or a positive duration such as \"20ms\"", s.Hedge)
		}
	}
	if s.Health.FailAfter < 0 || s.Health.RecoverAfter < 0 || s.Health.ProbeInterval < 0 {
		bad(f+".health", "values must not be negative")
	}
	if s.Health.ProbeName != "" {
		if _, ok := dns.IsDomainName(s.Health.ProbeName); !ok {
			bad(f+".health.probe_name", "%q is not a domain name", s.Health.ProbeName)
		}
	}
}

// CheckTarget validates an upstream target's syntax: https://host[:port]/path
// for DoH, tls://host[:port] for DoT, quic://host[:port] for DoQ, or
// [udp://|tcp://]IP[:port] for Do53.
func CheckTarget(t string) error {
	if scheme, rest, _ := strings.Cut(t, "://"); scheme == "tls" || scheme == "quic" {
		return checkHostPort(t, rest)
	}
	if strings.HasPrefix(t, "https://") {
		u, err := url.Parse(t)
		if err != nil {
			return fmt.Errorf("%q is not a URL: %w", t, err)
		}
		if u.Host == "" || u.Hostname() == "" {
			return fmt.Errorf("%q has no host", t)
		}
		if u.Path == "" || u.Path[0] != '/' {
			return fmt.Errorf("%q has no path (usually /dns-query)", t)
		}
		return nil
	}
	if i := strings.Index(t, "://"); i >= 0 {
		switch t[:i] {
		case "udp", "tcp":
			t = t[i+3:]
		default:
			return fmt.Errorf("%q: scheme %q is not https, tls, quic, udp or tcp", t, t[:i])
		}
	}
	if _, err := netip.ParseAddr(t); err == nil {
		return nil
	}
	if ap, err := netip.ParseAddrPort(t); err == nil {
		if ap.Port() == 0 {
			return fmt.Errorf("%q: port 0 cannot be dialled", t)
		}
		return nil
	}
	return fmt.Errorf("%q is neither an https:// URL nor an IP address with optional port", t)
}

// TargetHost is the host name of an https://, tls:// or quic:// target
// (valid by CheckTarget) named by host, which is resolved to dial it; ""
// for a target given by IP address and for Do53 targets.
func TargetHost(t string) string {
	scheme, rest, _ := strings.Cut(t, "://")
	var host string
	switch scheme {
	case "https":
		u, err := url.Parse(t)
		if err != nil {
			return ""
		}
		host = u.Hostname()
	case "tls", "quic":
		if _, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(rest, "["), "]")); err == nil {
			return ""
		}
		u, err := url.Parse("x://" + rest)
		if err != nil {
			return ""
		}
		host = u.Hostname()
	default:
		return ""
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return ""
	}
	return host
}

// BootstrapAddrs parses a (validated) bootstrap list.
func BootstrapAddrs(bootstrap []string) []netip.Addr {
	var as []netip.Addr
	for _, b := range bootstrap {
		a, _ := netip.ParseAddr(b) // validated
		as = append(as, a.Unmap())
	}
	return as
}

// encrypted is a listener's dot or doq section, for checkEncrypted.
type encrypted struct {
	section, protos    string // "dot", "dot/dot-fips"
	wanted, present    bool   // in protocols; section given
	address, cert, key string
	idle               Duration
	limits             []limit
	conn               ConnLimits
}

// checkConnLimits checks a listener section's ConnLimits; f names the
// section.
func checkConnLimits(f string, l ConnLimits, bad func(field, format string, a ...any)) {
	if l.MaxConnsPerClient < 0 || l.MaxConnsPerClient > 1<<20 {
		bad(f+".max_conns_per_client", "%d is outside 0..1048576 (0: default 64)", l.MaxConnsPerClient)
	}
	for _, d := range []struct {
		name string
		v    Duration
	}{{"handshake_timeout", l.HandshakeTimeout}, {"read_timeout", l.ReadTimeout}, {"write_timeout", l.WriteTimeout}} {
		if d.v < 0 {
			bad(f+"."+d.name, "%v is negative", time.Duration(d.v))
		}
	}
}

type limit struct {
	name string
	v    int
}

// checkEncrypted checks a dot or doq section: it is given exactly when its
// protocol is listed, and its fields.
func (c *Config) checkEncrypted(f string, e encrypted, bad func(field, format string, a ...any)) {
	switch {
	case !e.wanted && e.present:
		bad(f, "%s section given but %s is not in protocols", e.section, e.protos)
	case e.wanted && !e.present:
		bad(f, "protocol %s needs a %s section (address, cert, key)", e.protos, e.section)
	case e.wanted:
		if _, err := EncryptedAddr(e.address); err != nil {
			bad(f+".address", "%q is not IP or IP:port", e.address)
		}
		if e.idle < 0 {
			bad(f+".idle_timeout", "%v is negative", time.Duration(e.idle))
		}
		for _, l := range e.limits {
			if l.v < 0 || l.v > 1<<20 {
				bad(f+"."+l.name, "%d is outside 0..1048576 (0: default)", l.v)
			}
		}
		for _, kf := range []struct{ name, path string }{{"cert", e.cert}, {"key", e.key}} {
			if kf.path == "" {
				bad(f+"."+kf.name, "is empty")
			} else if _, err := os.Stat(c.Path(kf.path)); err != nil {
				bad(f+"."+kf.name, "%v", err)
			}
		}
	}
}

// checkHostPort validates the host[:port] of a tls:// or quic:// target t.
func checkHostPort(t, hp string) error {
	if hp == "" || strings.ContainsAny(hp, "/?#@") {
		return fmt.Errorf("%q is not scheme://host[:port]", t)
	}
	if _, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(hp, "["), "]")); err == nil {
		return nil // an IPv6 address without brackets and port, too
	}
	u, err := url.Parse("x://" + hp)
	if err != nil {
		return fmt.Errorf("%q is not scheme://host[:port]: %w", t, err)
	}
	if p := u.Port(); p != "" || strings.HasSuffix(hp, ":") {
		if ap, err := netip.ParseAddrPort("0.0.0.0:" + p); err != nil || ap.Port() == 0 {
			return fmt.Errorf("%q: port %q is not 1 to 65535", t, p)
		}
	}
	host := u.Hostname()
	if _, err := netip.ParseAddr(host); err == nil {
		return nil
	}
	if _, ok := dns.IsDomainName(host); !ok || host == "" || strings.ContainsAny(host, " []:") {
		return fmt.Errorf("%q: %q is neither a host name nor an IP address", t, host)
	}
	return nil
}

// ProtocolSet returns the listener's protocols as a set, checking the names
// and the combinations Route 53 Resolver allows.
func (l Listener) ProtocolSet() (map[string]bool, error) {
	set := map[string]bool{}
	for _, p := range l.Protocols {
		switch p {
		case "do53", "doh", "doh-fips", "dot", "dot-fips", "doq":
		default:
			return nil, fmt.Errorf("%q is not one of do53, doh, doh-fips, dot, dot-fips, doq", p)
		}
		if set[p] {
			return nil, fmt.Errorf("%q is listed twice", p)
		}
		set[p] = true
	}
	if set["doh"] && set["doh-fips"] {
		return nil, errors.New("doh and doh-fips cannot be used together on one listener")
	}
	if set["dot"] && set["dot-fips"] {
		return nil, errors.New("dot and dot-fips cannot be used together on one listener")
	}
	if len(set) == 0 {
		set["do53"] = true
	}
	return set, nil
}

// ParsePrefix reads an ACL entry: a CIDR ("10.0.0.0/8", "fd00::/8") or a
// single address (a /32 or /128).
func ParsePrefix(s string) (netip.Prefix, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is neither a CIDR nor an IP address", s)
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}
