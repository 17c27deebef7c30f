package forwarder

import (
	"net/netip"
	"time"

	"xdoh/forwarder/querylog"
	"xdoh/internal/dnsmsg"
)

// Transport is how a query reached xdoh (or how xdoh reached an upstream).
type Transport uint8

// Transports, named as in the Route 53 Resolver query log.
const (
	TransportUDP Transport = iota + 1
	TransportTCP
	TransportDoH
	TransportDoHFIPS
	TransportDoT     // DNS over TLS (RFC 7858)
	TransportDoTFIPS // DoT restricted to FIPS 140-3 approved TLS
	TransportDoQ     // DNS over QUIC (RFC 9250)
)

func (t Transport) String() string {
	switch t {
	case TransportUDP:
		return "UDP"
	case TransportTCP:
		return "TCP"
	case TransportDoH:
		return "DoH"
	case TransportDoHFIPS:
		return "DoH-FIPS"
	case TransportDoT:
		return "DoT"
	case TransportDoTFIPS:
		return "DoT-FIPS"
	case TransportDoQ:
		return "DoQ"
	}
	return "unknown"
}

// Request is one client query on its way through the pipeline. A datapath
// fills Msg, Transport, Client and Listener; the forwarder parses Msg into Q.
// Msg must stay valid until the response has been produced.
type Request struct {
	Msg       []byte
	Transport Transport
	Client    netip.AddrPort
	Listener  string
	// Received is when the datapath read the query, the start of its
	// latency and of its upstream deadline. A datapath that reads queries
	// in batches sets it once per batch; zero: Answer reads the clock.
	Received time.Time

	// Q is the parsed view of Msg, filled by the forwarder.
	Q dnsmsg.Query

	rule      *Rule      // the rule Answer matched, for Resolve (nil: default targets)
	owner     *Forwarder // the pipeline that answered (a reload may swap in another)
	start     time.Time  // when the pipeline took the query
	target    string     // the upstream that answered, for the query log
	cacheHit  bool
	cookie    cookieVerdict  // what the query's COOKIE option held
	badCookie bool           // answered BADCOOKIE (Cookies' require)
	subnet    [20]byte       // room for Q.Subnet
	ecsScope  uint8          // scope prefix of the answer's client subnet, for the client's ECS echo
	lidx      int            // the listener's slot in Counters
	logEntry  querylog.Entry // reused for the query log
}

// CacheHit says whether Answer answered r from the cache.
func (r *Request) CacheHit() bool { return r.cacheHit }

// ValidCookie says whether the query carried a valid server cookie of
// ours (RFC 7873): its source address is the client's, and a rate limit
// may let it through.
func (r *Request) ValidCookie() bool { return r.cookie == cookieValidServer }

// MaxResponseSize is the largest response the client can take over its
// transport: the EDNS UDP size (at least 512) for UDP, 65535 otherwise.
func (r *Request) MaxResponseSize() int {
	if r.Transport != TransportUDP {
		return 65535
	}
	return r.Q.MaxUDPSize()
}
