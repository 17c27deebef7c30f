package bench

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// Source yields the queries of a run. Senders call Next concurrently, each
// with its own random generator, so a Source keeps no mutable state: the
// queries are packed once, up front, and Next only copies (or, for
// random-sub, writes a fresh label into) bytes the caller owns.
type Source interface {
	// Next writes query number seq (counted from 0 over the whole run)
	// into buf, with ID 0, and returns it; ok is false once a finite
	// source is exhausted. It must not allocate.
	Next(seq uint64, rng *rand.Rand, buf []byte) (q []byte, ok bool)
	// Len is the number of queries of a finite source (a pcap), 0 for
	// one that never ends (a query file loops, as dnsperf's does).
	Len() uint64
	// String describes the source for Settings.Queries.
	String() string
}

// Timed is a Source whose queries have their own send times (a pcap):
// Offset is query seq's time from the start of the run.
type Timed interface {
	Source
	Offset(seq uint64) time.Duration
}

// MaxQuery is the largest query a Source yields.
const MaxQuery = 512

// ErrNoQueries: a query file or pcap holds no query.
var ErrNoQueries = errors.New("no queries")

// Question is one line of a query file.
type Question struct {
	Name string
	Type uint16
}

// packQuery packs a query for q with RD and EDNS0 (1232 octets), as
// dnsperf sends by default with -e; ID 0.
func packQuery(q Question) ([]byte, error) {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(q.Name), q.Type)
	m.Id = 0
	m.SetEdns0(1232, false)
	b, err := m.Pack()
	if err != nil {
		return nil, fmt.Errorf("packing %s %s: %w", q.Name, dns.TypeToString[q.Type], err)
	}
	if len(b) > MaxQuery {
		return nil, fmt.Errorf("query for %s is %d octets, more than %d", q.Name, len(b), MaxQuery)
	}
	return b, nil
}

// ParseQueryFile reads dnsperf's query file format: "name type" per line
// (type defaults to A), blank lines and lines starting with ';' or '#'
// ignored.
func ParseQueryFile(r io.Reader, what string) ([]Question, error) {
	var qs []Question
	sc := bufio.NewScanner(r)
	line := 0
	for sc.Scan() {
		line++
		s := strings.TrimSpace(sc.Text())
		if s == "" || s[0] == ';' || s[0] == '#' {
			continue
		}
		f := strings.Fields(s)
		if len(f) > 2 {
			return nil, fmt.Errorf("%s:%d: want \"name [type]\", got %q", what, line, s)
		}
		q := Question{Name: dns.Fqdn(f[0]), Type: dns.TypeA}
		if _, ok := dns.IsDomainName(q.Name); !ok {
			return nil, fmt.Errorf("%s:%d: %q is not a domain name", what, line, f[0])
		}
		if len(f) == 2 {
			t, ok := dns.StringToType[strings.ToUpper(f[1])]
			if !ok {
				return nil, fmt.Errorf("%s:%d: unknown query type %q", what, line, f[1])
			}
			q.Type = t
		}
		qs = append(qs, q)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading %s: %w", what, err)
	}
	if len(qs) == 0 {
		return nil, fmt.Errorf("%s: %w", what, ErrNoQueries)
	}
	return qs, nil
}

// readQueryFile opens and parses a query file.
func readQueryFile(path string) ([]Question, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("opening query file: %w", err)
	}
	defer f.Close()
	return ParseQueryFile(f, path)
}

// listSource loops over packed queries in order.
type listSource struct {
	qs   [][]byte
	desc string
}

// NewListSource loops over the queries of a dnsperf-format file, in order.
func NewListSource(path string) (Source, error) {
	qs, err := readQueryFile(path)
	if err != nil {
		return nil, err
	}
	return newListSource(qs, path)
}

func newListSource(qs []Question, desc string) (*listSource, error) {
	s := &listSource{desc: desc}
	for _, q := range qs {
		b, err := packQuery(q)
		if err != nil {
			return nil, err
		}
		s.qs = append(s.qs, b)
	}
	return s, nil
}

func (s *listSource) Next(seq uint64, _ *rand.Rand, buf []byte) ([]byte, bool) {
	q := s.qs[seq%uint64(len(s.qs))]
	return buf[:copy(buf[:len(q)], q)], true
}
func (s *listSource) Len() uint64    { return 0 }
func (s *listSource) String() string { return s.desc }

// zipfSource draws the names of a query file with Zipf popularity: the
// k-th name (from 1, in file order) with probability proportional to
// 1/k^s. Any s > 0 works (math/rand's Zipf needs s > 1, and real query
// popularity is often near 1).
type zipfSource struct {
	listSource
	cdf []float64 // cdf[k] = P(rank ≤ k+1)
}

// NewZipfSource is a Zipf(s) draw over the names of a query file.
func NewZipfSource(path string, s float64) (Source, error) {
	qs, err := readQueryFile(path)
	if err != nil {
		return nil, err
	}
	return newZipfSource(qs, s, "zipf "+path)
}

func newZipfSource(qs []Question, s float64, desc string) (*zipfSource, error) {
	if !(s > 0) || math.IsInf(s, 0) {
		return nil, fmt.Errorf("zipf exponent %v: want a number above 0", s)
	}
	l, err := newListSource(qs, desc)
	if err != nil {
		return nil, err
	}
	z := &zipfSource{listSource: *l, cdf: make([]float64, len(qs))}
	sum := 0.0
	for k := range z.cdf {
		sum += math.Pow(float64(k+1), -s)
		z.cdf[k] = sum
	}
	for k := range z.cdf {
		z.cdf[k] /= sum
	}
	return z, nil
}

// rank draws a 0-based rank.
func (z *zipfSource) rank(rng *rand.Rand) int {
	u := rng.Float64()
	k := sort.SearchFloat64s(z.cdf, u)
	return min(k, len(z.cdf)-1)
}

func (z *zipfSource) Next(_ uint64, rng *rand.Rand, buf []byte) ([]byte, bool) {
	q := z.qs[z.rank(rng)]
	return buf[:copy(buf[:len(q)], q)], true
}

// randomSubSource asks for a fresh random label under a domain each time,
// so that no answer can come from a cache (cache busting, the "random
// subdomain" load of a water-torture attack).
type randomSubSource struct {
	tmpl    []byte // the query with randomLabelLen placeholder octets
	labelAt int
	desc    string
}

const (
	randomLabelLen = 12
	labelChars     = "abcdefghijklmnopqrstuvwxyz0123456789"
)

// NewRandomSubSource asks qtype for random 12-character labels under domain.
func NewRandomSubSource(domain string, qtype uint16) (Source, error) {
	domain = dns.Fqdn(domain)
	name := strings.Repeat("x", randomLabelLen) + "." + domain
	if domain == "." {
		name = strings.Repeat("x", randomLabelLen) + "."
	}
	if _, ok := dns.IsDomainName(name); !ok {
		return nil, fmt.Errorf("random-sub: %q is not a domain name", domain)
	}
	b, err := packQuery(Question{Name: name, Type: qtype})
	if err != nil {
		return nil, fmt.Errorf("random-sub: %w", err)
	}
	// The question starts right after the 12-octet header with the
	// length octet of the first label.
	return &randomSubSource{tmpl: b, labelAt: 13, desc: "random-sub " + domain}, nil
}

func (s *randomSubSource) Next(_ uint64, rng *rand.Rand, buf []byte) ([]byte, bool) {
	q := buf[:copy(buf[:len(s.tmpl)], s.tmpl)]
	label := q[s.labelAt : s.labelAt+randomLabelLen]
	v := rng.Uint64() // 36^12 < 2^64: one draw covers the label
	for i := range label {
		label[i] = labelChars[v%uint64(len(labelChars))]
		v /= uint64(len(labelChars))
	}
	return q, true
}
func (s *randomSubSource) Len() uint64    { return 0 }
func (s *randomSubSource) String() string { return s.desc }
