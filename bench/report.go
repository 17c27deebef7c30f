// Package bench is `xdoh bench`: a DNS load generator for sizing a
// resolver, xdoh or any other. It sends queries over Do53 (UDP through
// batched sockets, TCP pipelined), DoT, DoH and DoQ, in a closed loop (a
// number of queries outstanding, as dnsperf) or an open loop at a fixed
// rate (latency measured from each query's scheduled send time, so that a
// stall is not hidden: no coordinated omission), and reports achieved
// rate, latency percentiles from an HDR histogram, RCODEs, timeouts and
// bytes, live once a second and at the end, as text and JSON (Report),
// which the command also plots.
//
// Why two ways to send: UDP is the rig's own (udp.go), since a load
// generator must outrun the server it measures: one sender and one
// receiver goroutine per socket, sendmmsg/recvmmsg batches, the query's
// ID is its index in the socket's table of queries in flight, and nothing
// is allocated per query. TCP, DoT, DoH (POST, or GET with Config.Get)
// and DoQ go through xdoh's own upstream clients (forwarder/upstream,
// client.go), so that the rig exercises the code the forwarder runs. With
// Config.XDP, Do53 over
// UDP goes through AF_XDP (xdp.go, transport "udp-xdp"), as kxdpgun sends:
// a socket on every receive queue with datapath/xsk's rings, the first
// Clients of them sending, one thread per sending socket; frames built
// from headers laid out once, and bpf/'s xdp_bench steering the target's
// replies back; the slot table and matching are the UDP path's.
//
// Queries come from a Source (source.go, pcap.go): a dnsperf query file,
// looped; the same names drawn with Zipf popularity; random labels under
// a domain (cache busting); or the UDP port 53 queries of a capture, at
// its own timing. Each worker counts into a tally of its own and flushes
// it into the phase's recorder (record.go) once per batch.
package bench

import "time"

// Report is the result of one run: what `--json FILE` writes and `xdoh
// bench compare A.json B.json` reads. Latencies are in milliseconds.
type Report struct {
	Target    string    `json:"target"`    // as given: "udp://127.0.0.1:53", "https://…/dns-query"
	Transport string    `json:"transport"` // udp, udp-xdp, tcp, tls, https-post, https-get, quic
	Started   time.Time `json:"started"`
	Seconds   float64   `json:"seconds"` // from the first send to the last answer or timeout
	Settings  Settings  `json:"settings"`

	Sent     uint64 `json:"sent"`
	Answered uint64 `json:"answered"`
	Timeouts uint64 `json:"timeouts"` // no answer within Settings.Timeout
	Errors   uint64 `json:"errors"`   // send or connection errors, malformed answers
	// Malformed counts the datagrams or messages among Errors that were
	// no answer to a query in flight: not DNS, a wrong ID or question, or
	// too late (after the query's timeout).
	Malformed uint64 `json:"malformed"`
	// Unsent counts the queries of an open loop that the rig could not
	// send at all (every ID or slot in flight): offered but not Sent.
	Unsent uint64 `json:"unsent"`
	// FirstError is the first send or connection error, for the
	// diagnosis of a run without answers.
	FirstError string `json:"first_error,omitempty"`
	BytesSent  uint64 `json:"bytes_sent"`
	BytesRecv  uint64 `json:"bytes_received"`
	// QPS is answered queries per second over Seconds.
	QPS float64 `json:"qps"`
	// Rcodes counts answers by RCODE name ("NOERROR", "NXDOMAIN", …).
	Rcodes map[string]uint64 `json:"rcodes"`

	Latency Latency `json:"latency"`
	// Spectrum is the latency percentile spectrum: the latency at each of
	// a fixed set of percentiles (HDR histogram), for plots and compare.
	Spectrum []Quantile `json:"spectrum"`
	// Timeline has one entry per second of the run, for QPS and loss over
	// time.
	Timeline []Second `json:"timeline"`
	// Steps holds one report per rate of a ramp (--ramp), in order; empty
	// otherwise.
	Steps []Step `json:"steps,omitempty"`
}

// Settings are the knobs the run was made with.
type Settings struct {
	Queries     string  `json:"queries"`     // the query source: a file, "random-sub example.com", "zipf FILE", "pcap FILE"
	Clients     int     `json:"clients"`     // -c: connections or sockets
	Outstanding int     `json:"outstanding"` // -q: closed loop, queries in flight (0: open loop)
	Rate        float64 `json:"rate"`        // -Q: open loop, queries per second (0: closed loop)
	Timeout     float64 `json:"timeout_s"`   // -t
	Limit       float64 `json:"limit_s"`     // -l (0: none)
	Count       uint64  `json:"count"`       // -n (0: none)
}

// Latency is the summary of the answered queries' latencies.
type Latency struct {
	Mean float64 `json:"mean_ms"`
	P50  float64 `json:"p50_ms"`
	P90  float64 `json:"p90_ms"`
	P99  float64 `json:"p99_ms"`
	P999 float64 `json:"p99_9_ms"`
	Max  float64 `json:"max_ms"`
}

// Quantile is the latency at one percentile (0–100).
type Quantile struct {
	Percentile float64 `json:"percentile"`
	Ms         float64 `json:"ms"`
}

// Second is one second of the run.
type Second struct {
	T        int     `json:"t"` // seconds since the start
	Sent     uint64  `json:"sent"`
	Answered uint64  `json:"answered"`
	Timeouts uint64  `json:"timeouts"`
	P50      float64 `json:"p50_ms"`
	P99      float64 `json:"p99_ms"`
}

// Step is one rate of a ramp.
type Step struct {
	Rate     float64 `json:"rate"` // offered queries per second
	QPS      float64 `json:"qps"`  // answered per second
	Loss     float64 `json:"loss"` // share of queries without an answer, 0–1
	Latency  Latency `json:"latency"`
	Exceeded bool    `json:"exceeded"` // latency or loss crossed the ramp's limit here
}
