package querylog

import (
	"bufio"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/miekg/dns"
)

// formatVersion is the Route 53 Resolver query-log version the field names
// follow, spelled as Route 53 writes it.
const formatVersion = "1.100000"

// jsonSink writes one JSON object per line.
type jsonSink struct {
	path string   // "" for a writer that is not reopened (stdout, tests)
	f    *os.File // the open file when path != ""
	w    io.Writer
	bw   *bufio.Writer
	line []byte
	fmt  formatter
}

var _ sink = (*jsonSink)(nil)

func openJSONFile(path string) (*jsonSink, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return nil, err
	}
	s := newJSONWriter(f)
	s.path, s.f = path, f
	return s, nil
}

func newJSONStdout() *jsonSink { return newJSONWriter(os.Stdout) }

func newJSONWriter(w io.Writer) *jsonSink {
	return &jsonSink{w: w, bw: bufio.NewWriterSize(w, 64<<10), line: make([]byte, 0, 1024)}
}

func (s *jsonSink) write(r *record) error {
	s.line = s.fmt.append(s.line[:0], &r.e)
	if _, err := s.bw.Write(s.line); err != nil {
		s.bw.Reset(s.w) // a bufio.Writer's error is sticky; start clean
		return err
	}
	return nil
}

func (s *jsonSink) flush() error {
	if err := s.bw.Flush(); err != nil {
		s.bw.Reset(s.w)
		return err
	}
	return nil
}

func (s *jsonSink) reopen() error {
	if s.path == "" {
		return nil
	}
	s.flush()
	f, err := os.OpenFile(s.path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return err // keep writing to the old file rather than nowhere
	}
	old := s.f
	s.f, s.w = f, f
	s.bw.Reset(f)
	return old.Close()
}

func (s *jsonSink) close() error {
	err := s.bw.Flush()
	if s.f != nil {
		if cerr := s.f.Close(); err == nil {
			err = cerr
		}
	}
	return err
}

// formatter turns records into JSON lines, reusing its messages and the
// formatted timestamp of the last second it saw.
type formatter struct {
	qm, rm dns.Msg
	sec    int64
	ts     []byte
}

// appendRecord formats one record with a fresh formatter (tests, fuzzing).
func appendRecord(b []byte, e *Entry) []byte {
	var f formatter
	return f.append(b, e)
}

// append appends e as one JSON line (with the newline). Query and Response
// are parsed here, off the hot path. Fields a message does not have
// (unparsable query, no response) are empty strings; answers is never null.
func (f *formatter) append(b []byte, e *Entry) []byte {
	var q, resp *dns.Msg
	if len(e.Query) > 0 {
		q = &f.qm
		*q = dns.Msg{}
		_ = q.Unpack(e.Query) // keep whatever parsed
	}
	if len(e.Response) >= 12 { // at least a header: its rcode is real
		resp = &f.rm
		*resp = dns.Msg{}
		_ = resp.Unpack(e.Response)
	}
	var question *dns.Question
	switch {
	case q != nil && len(q.Question) > 0:
		question = &q.Question[0]
	case resp != nil && len(resp.Question) > 0:
		question = &resp.Question[0]
	}

	b = append(b, `{"version":"`+formatVersion+`","account_id":"","region":"","vpc_id":"","query_timestamp":"`...)
	if sec := e.Time.Unix(); sec != f.sec || f.ts == nil {
		f.sec = sec
		f.ts = e.Time.UTC().AppendFormat(f.ts[:0], "2006-01-02T15:04:05Z")
	}
	b = append(b, f.ts...)
	b = append(b, `","query_name":`...)
	if question != nil {
		b = appendString(b, question.Name)
		b = append(b, `,"query_type":`...)
		b = appendString(b, dns.Type(question.Qtype).String())
		b = append(b, `,"query_class":`...)
		b = appendString(b, dns.Class(question.Qclass).String())
	} else {
		b = append(b, `"","query_type":"","query_class":""`...)
	}
	b = append(b, `,"rcode":`...)
	if resp != nil {
		b = appendString(b, rcodeString(resp.Rcode))
	} else {
		b = append(b, `""`...)
	}
	b = append(b, `,"answers":[`...)
	if resp != nil {
		for i, rr := range resp.Answer {
			if i > 0 {
				b = append(b, ',')
			}
			h := rr.Header()
			b = append(b, `{"Rdata":`...)
			b = appendRdata(b, rr)
			b = append(b, `,"Type":`...)
			b = appendString(b, dns.Type(h.Rrtype).String())
			b = append(b, `,"Class":`...)
			b = appendString(b, dns.Class(h.Class).String())
			b = append(b, '}')
		}
	}
	b = append(b, `],"srcaddr":"`...)
	if e.Client.IsValid() {
		b = e.Client.Addr().Unmap().AppendTo(b)
		b = append(b, `","srcport":"`...)
		b = strconv.AppendUint(b, uint64(e.Client.Port()), 10)
		b = append(b, '"')
	} else {
		b = append(b, `","srcport":""`...)
	}
	b = append(b, `,"transport":`...)
	b = appendString(b, e.Transport)
	b = append(b, `,"srcids":{`...)
	if e.Listener != "" {
		b = append(b, `"resolver_endpoint":`...)
		b = appendString(b, e.Listener)
	}
	b = append(b, `},"rule":`...)
	b = appendString(b, e.Rule)
	b = append(b, `,"target":`...)
	b = appendString(b, e.Target)
	b = append(b, `,"upstream_transport":`...)
	b = appendString(b, e.UpstreamTransport)
	b = append(b, `,"cache_hit":`...)
	b = strconv.AppendBool(b, e.CacheHit)
	b = append(b, `,"latency_us":`...)
	b = strconv.AppendInt(b, e.Latency.Microseconds(), 10)
	return append(b, "}\n"...)
}

// appendRdata appends rr's rdata in presentation format as a JSON string:
// by hand for the common types, else what miekg/dns prints after the header.
func appendRdata(b []byte, rr dns.RR) []byte {
	switch rr := rr.(type) {
	case *dns.A:
		if a, ok := netip.AddrFromSlice(rr.A); ok {
			b = append(b, '"')
			b = a.Unmap().AppendTo(b)
			return append(b, '"')
		}
	case *dns.AAAA:
		if len(rr.AAAA) == net.IPv6len {
			b = append(b, '"')
			b = netip.AddrFrom16([16]byte(rr.AAAA)).AppendTo(b)
			return append(b, '"')
		}
	case *dns.CNAME:
		return appendString(b, rr.Target)
	case *dns.PTR:
		return appendString(b, rr.Ptr)
	case *dns.NS:
		return appendString(b, rr.Ns)
	}
	return appendString(b, strings.TrimPrefix(rr.String(), rr.Header().String()))
}

func rcodeString(rc int) string {
	if s, ok := dns.RcodeToString[rc]; ok {
		return s
	}
	return "RCODE" + strconv.Itoa(rc)
}

const hexDigits = "0123456789abcdef"

// appendString appends s as a JSON string. Like encoding/json it replaces
// each invalid UTF-8 byte with U+FFFD and escapes U+2028 and U+2029; unlike
// it, it leaves <, > and & alone (log lines are not HTML).
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
		default:
			i += size
			continue
		}
		i += size
		start = i
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
