package upstreamtest

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// Stats are counters from BIND's statistics channel (JSON, StatsURL),
// relative to a baseline taken at the end of StartBIND: the readiness probes
// are not included, so right after StartBIND all query counters are 0.
//
// BIND 9.18 has no DoH/HTTP-specific counter: a DoH query is counted exactly
// like a Do53-over-TCP query (QueriesTCP, RequestsTCP). See the package
// documentation for how a test proves DoH (QueryLog + connection address).
type Stats struct {
	QueriesUDP  uint64 // nsstats "QryUDP": queries received over UDP
	QueriesTCP  uint64 // nsstats "QryTCP": queries received over TCP-based transports — Do53/TCP AND DoH
	RequestsTCP uint64 // nsstats "ReqTCP": TCP-based requests (all opcodes) — Do53/TCP AND DoH
	Requests    uint64 // nsstats "Requestv4" + "Requestv6": all requests, any transport
	Responses   uint64 // nsstats "Response"
	PadOpt      uint64 // nsstats "PadOpt": requests with an EDNS padding option (client-dependent)
	// TCPAccepts is sockstats "TCP4Accept" + "TCP6Accept": accepted TCP
	// connections on ANY named socket, including the statistics channel:
	// every Stats call itself adds exactly 1 (it uses a new connection).
	TCPAccepts uint64

	// NSStats and SockStats hold every counter of the JSON sections
	// "nsstats" and "sockstats" (relative to the baseline, except the
	// gauges "UDP4Active"/"TCP4Active"/...; counters BIND does not print
	// because they are 0 are absent).
	NSStats   map[string]uint64
	SockStats map[string]uint64
}

// Sub returns s - old for every counter (for deltas between two Stats calls).
func (s Stats) Sub(old Stats) Stats {
	return Stats{
		QueriesUDP:  s.QueriesUDP - old.QueriesUDP,
		QueriesTCP:  s.QueriesTCP - old.QueriesTCP,
		RequestsTCP: s.RequestsTCP - old.RequestsTCP,
		Requests:    s.Requests - old.Requests,
		Responses:   s.Responses - old.Responses,
		PadOpt:      s.PadOpt - old.PadOpt,
		TCPAccepts:  s.TCPAccepts - old.TCPAccepts,
		NSStats:     subMap(s.NSStats, old.NSStats),
		SockStats:   subMap(s.SockStats, old.SockStats),
	}
}

func (s Stats) String() string {
	return fmt.Sprintf("QryUDP=%d QryTCP=%d ReqTCP=%d Requests=%d Responses=%d PadOpt=%d TCPAccepts=%d",
		s.QueriesUDP, s.QueriesTCP, s.RequestsTCP, s.Requests, s.Responses, s.PadOpt, s.TCPAccepts)
}

// rawStats is the part of /json/v1 that Stats uses.
type rawStats struct {
	NSStats   map[string]uint64 `json:"nsstats"`
	SockStats map[string]uint64 `json:"sockstats"`
}

func newStatsClient() *http.Client {
	return &http.Client{
		Timeout: 3 * time.Second,
		// One fresh connection per fetch: keeps TCPAccepts predictable and
		// leaves no idle connection to a stopped named behind.
		Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil},
	}
}

func fetchStats(c *http.Client, url string) (rawStats, error) {
	var raw rawStats
	resp, err := c.Get(url)
	if err != nil {
		return raw, fmt.Errorf("statistics channel: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return raw, fmt.Errorf("statistics channel: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return raw, fmt.Errorf("statistics channel: %s", resp.Status)
	}
	if err := json.Unmarshal(body, &raw); err != nil {
		return raw, fmt.Errorf("statistics channel: decoding JSON: %w", err)
	}
	if raw.NSStats == nil {
		raw.NSStats = map[string]uint64{}
	}
	if raw.SockStats == nil {
		raw.SockStats = map[string]uint64{}
	}
	return raw, nil
}

// Stats returns the statistics-channel counters relative to the end of
// StartBIND (see Stats type). It fails the test if the channel is unreachable.
func (b *BIND) Stats(t testing.TB) Stats {
	t.Helper()
	raw, err := fetchStats(newStatsClient(), b.StatsURL)
	if err != nil {
		t.Fatalf("upstreamtest: %v\n--- named.log (tail) ---\n%s", err, b.LogTail(20))
	}
	b.mu.Lock()
	base := b.baseline
	b.mu.Unlock()
	ns := subMap(raw.NSStats, base.NSStats)
	sock := subMap(raw.SockStats, base.SockStats)
	return Stats{
		QueriesUDP:  ns["QryUDP"],
		QueriesTCP:  ns["QryTCP"],
		RequestsTCP: ns["ReqTCP"],
		Requests:    ns["Requestv4"] + ns["Requestv6"],
		Responses:   ns["Response"],
		PadOpt:      ns["PadOpt"],
		TCPAccepts:  sock["TCP4Accept"] + sock["TCP6Accept"],
		NSStats:     ns,
		SockStats:   sock,
	}
}

// subMap subtracts counters. Gauges (sockstats "*Active", e.g. "TCP4Active":
// sockets open right now) are kept as they are.
func subMap(now, old map[string]uint64) map[string]uint64 {
	out := make(map[string]uint64, len(now))
	for k, v := range now {
		if strings.HasSuffix(k, "Active") {
			out[k] = v
			continue
		}
		out[k] = v - old[k]
	}
	return out
}
