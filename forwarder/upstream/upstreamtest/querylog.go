package upstreamtest

import (
	"net/netip"
	"os"
	"strings"
	"testing"
)

// QueryLogEntry is one parsed line of BIND 9.18's query log:
//
//	26-Nov-2026 21:47:13.078 client @0x7f0e604eec98 127.0.0.1#39581 (foo.example.com): query: foo.example.com IN A +E(0)T (127.0.0.1)
type QueryLogEntry struct {
	Client netip.AddrPort // client address and source port ("127.0.0.1#39581")
	Name   string         // query name as logged (no trailing dot)
	Class  string         // "IN", "CH", ...
	Type   string         // "A", "AAAA", ...
	Flags  string         // e.g. "+", "+E(0)T", "-E(0)TDC": '+'/'-' = RD, E(n) = EDNS version n, T = TCP-based, D = DO, C = CD, S = signed, K = COOKIE without a valid server cookie, V = with a valid one
	// TCP is true when Flags has "T": the query came over a TCP-based
	// transport. BIND 9.18 sets it for Do53/TCP and for DoH alike.
	TCP  bool
	Dest string // local address the query was received on ("127.0.0.1"), without port
	Line string // the raw line
}

// ParseQueryLogLine parses one query log line; ok is false for other lines.
func ParseQueryLogLine(line string) (e QueryLogEntry, ok bool) {
	e.Line = line
	ci := strings.Index(line, "client @")
	qi := strings.Index(line, "): query: ")
	if ci < 0 || qi < ci {
		return e, false
	}
	// "client @0xPTR ADDR#PORT (NAME" ; the view name may follow ADDR#PORT.
	head := strings.Fields(line[ci:qi])
	if len(head) < 3 {
		return e, false
	}
	addr := head[2]
	h := strings.LastIndexByte(addr, '#')
	if h < 0 {
		return e, false
	}
	ap, err := netip.ParseAddrPort(joinHostPort(addr[:h], addr[h+1:]))
	if err != nil {
		return e, false
	}
	e.Client = ap
	rest := strings.Fields(line[qi+len("): query: "):])
	if len(rest) < 5 {
		return e, false
	}
	e.Name, e.Class, e.Type, e.Flags = rest[0], rest[1], rest[2], rest[3]
	e.Dest = strings.TrimSuffix(strings.TrimPrefix(rest[4], "("), ")")
	f := e.Flags
	if i := strings.Index(f, "E("); i >= 0 {
		if j := strings.IndexByte(f[i:], ')'); j >= 0 {
			f = f[:i] + f[i+j+1:]
		}
	}
	e.TCP = strings.Contains(f, "T")
	return e, true
}

func joinHostPort(host, port string) string {
	if strings.Contains(host, ":") {
		return "[" + host + "]:" + port
	}
	return host + ":" + port
}

// isProbe reports whether a query log line belongs to StartBIND's readiness
// probes ("id.server CH TXT").
func isProbe(line string) bool {
	return strings.Contains(line, "): query: id.server CH TXT ")
}

// QueryLogLines returns the query log lines written so far (Dir/query.log),
// without StartBIND's readiness probes ("id.server CH TXT"). BIND writes
// the line when it starts processing the query, i.e. before it sends the
// answer, so a line for an answered query is always present. It fails the
// test if BINDOptions.QueryLog was not set.
func (b *BIND) QueryLogLines(t testing.TB) []string {
	t.Helper()
	if !b.queryLog {
		t.Fatal("upstreamtest: QueryLogLines needs BINDOptions.QueryLog")
	}
	data, err := os.ReadFile(b.qlogFile)
	if err != nil && !os.IsNotExist(err) {
		t.Fatalf("upstreamtest: reading query log: %v", err)
	}
	var out []string
	for _, l := range strings.Split(string(data), "\n") {
		if l == "" || isProbe(l) {
			continue
		}
		out = append(out, l)
	}
	return out
}

// QueryLog returns QueryLogLines parsed (lines that do not parse are skipped).
func (b *BIND) QueryLog(t testing.TB) []QueryLogEntry {
	t.Helper()
	var out []QueryLogEntry
	for _, l := range b.QueryLogLines(t) {
		if e, ok := ParseQueryLogLine(l); ok {
			out = append(out, e)
		}
	}
	return out
}
