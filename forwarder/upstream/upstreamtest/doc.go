// Package upstreamtest holds what the tests of package upstream and its
// users share: test servers on loopback port 0 (servers.go: an RFC 8484
// server on net/http and a miekg/dns server; fakeh2.go: FakeH2, a raw
// HTTP/2 server for fault injection; faults.go: Do53Fault, TCPDNSServer,
// TCPSink, closed ports), RunContract, the contract suite that every
// upstream.Upstream must pass whatever its transport (contract.go), and a
// real BIND.
//
// It does not import package upstream, whose own tests import it:
// RunContract takes the interface it tests and the error sentinels as
// arguments.
//
// # BIND
//
// StartBIND starts a real BIND 9.18 (`named`, Debian package bind9) as the
// on-premises DoH resolver for integration tests, the way
// net/http/httptest starts HTTP servers.
//
//	b := upstreamtest.StartBIND(t, upstreamtest.BINDOptions{QueryLog: true})
//	// b.DoHURL   https://127.0.0.1:PORT/dns-query  (HTTP/2 only, cert from b.CAFile)
//	// b.Do53Addr 127.0.0.1:PORT                    (UDP and TCP)
//	// b.DoTAddr  127.0.0.1:PORT                    (DNS over TLS, the same certificate)
//	before := b.Stats(t)
//	... send queries ...
//	d := b.Stats(t).Sub(before)
//
// Each call gets its own named process (own process group, stopped with
// SIGTERM, then SIGKILL after 5 s, in t.Cleanup; Pdeathsig SIGKILL in case the
// test binary dies first), its own temporary directory
// (BIND.Dir: named.conf, zone files, ca.pem/server.pem/server.key, named.log,
// query.log) and its own free loopback ports. Only 127.0.0.1 is used.
// StartBIND skips the test when named is not installed.
//
// # How named is run
//
// `named -f -n 1 -L DIR/named.log -c DIR/named.conf`: foreground, one worker
// thread (the CI box has 2 cores). -f rather than -g because -g ignores the
// config's logging statement ("not using config file logging statement for
// logging due to -g option"), so a separate query log file would be
// impossible; -L makes named write its early messages and fatal
// configuration errors to named.log (with -f alone they would go to syslog,
// which does not exist here, and be lost). Anything named prints to
// stdout/stderr goes to DIR/named.stderr.
//
// No -u is needed when running as root (named then simply keeps running as
// root; no file it needs is outside DIR apart from /etc/bind/bind.keys, which
// is world-readable). The Debian AppArmor profile /etc/apparmor.d/usr.sbin.named
// would forbid reading DIR under /tmp, but AppArmor is not enabled in this
// kernel; if it is on elsewhere, the failure message points at it.
//
// BIND does NOT exit when a listening port is taken: it logs "address in use"
// / "creating IPv4 interface lo failed; interface ignored" / "couldn't
// allocate statistics channel" and keeps running. StartBIND therefore scans
// named.log for those messages, and it also checks that the server answering
// on the ports is its own named (a random server-id, read back with an
// "id.server CH TXT" query over UDP and over DoH: BIND sets SO_REUSEPORT, so a
// second named could silently share a port). On a port conflict it retries
// with new ports, up to 3 attempts.
//
// Readiness: until "id.server CH TXT" returns the server-id over UDP
// (miekg/dns) and over DoH (net/http, HTTP/2 POST, RootCAs = the private CA),
// the statistics channel answers and named.log says "all zones loaded"; then
// every configured zone must have logged "zone NAME/IN: loaded serial", else
// StartBIND fails (BIND would keep running and answer SERVFAIL for a broken
// zone). Startup takes about 0.15–0.3 s on the 2-core CI box; the limit is
// 10 s. These probe
// queries are excluded from Stats (which is relative to a baseline taken at
// the end of StartBIND) and from QueryLogLines/QueryLog.
//
// # What proves that a query reached BIND 9.18 over DoH
//
// Measured on BIND 9.18.49 (Debian 12) with kdig +https and plain kdig:
//
//   - Statistics channel (JSON, /json/v1): BIND 9.18 has NO DoH- or
//     HTTP-specific counter (neither in nsstats nor in sockstats; the
//     binary contains no such counter name). A DoH query moves exactly the same counters as a
//     Do53-over-TCP query: nsstats "QryTCP" +1 and "ReqTCP" +1 (plus
//     "Requestv4", "Response", "QrySuccess", "QryAuthAns", ...), the traffic
//     histogram "dns-tcp-requests-sizes-received-ipv4", and sockstats
//     "TCP4Accept" +1 per new connection. "QryUDP" does not move. A UDP query
//     moves "QryUDP" +1 and not "QryTCP"/"ReqTCP". kdig pads DoH queries
//     (EDNS padding), which shows up as "PadOpt"; that is a property of the
//     client, not of DoH. Stats.QueriesTCP therefore means "TCP-based
//     transport: Do53/TCP, DoH or DoT".
//     Note that "TCP4Accept" also counts the statistics-channel connections
//     themselves: every Stats call adds exactly 1 (it uses a fresh
//     connection).
//   - Query log: 9.18 does not mark DoH either. The line is
//     `DATE TIME client @0xPTR 127.0.0.1#CLIENTPORT (NAME): query: NAME IN A +E(0)T (127.0.0.1)`;
//     the "T" flag means "TCP-based" and is printed for Do53/TCP (`+T`) and for
//     DoH (`+E(0)T` with EDNS) alike; a UDP query has no "T" (`+` / `+E(0)`).
//     dnstap would not help either: this build's dnstap protobuf only has the
//     socket protocols UDP and TCP.
//
// DoT is no different (measured with xdoh's DoT upstream, BIND 9.18.49):
// QryTCP +1 per query, TCP4Accept +1 per connection, and the query log
// line is `... query: foo.example.com IN A +T (127.0.0.1)`, the "T" of
// every TCP-based transport. A test proves pipelining over DoT by every
// query's log line naming the one local address of the client's one TLS
// connection, and TCP4Accept moving by 1 (plus 1 for the Stats call). BIND
// resumes TLS 1.3 sessions on its DoT listener.
//
// So a test proves "this query reached BIND over DoH" by combining:
// Stats delta QueriesTCP == n and QueriesUDP == 0 while the test itself sent
// no Do53/TCP query, and — stronger — a QueryLog entry with TCP == true whose
// Client equals the local address of the HTTP/2 connection the test used
// (net/http/httptrace GotConn → Conn.LocalAddr()); that connection went to
// the TLS+HTTP-only DoH port (BIND.DoHURL), which serves nothing but DoH.
package upstreamtest
