package upstream

import (
	"bytes"
	"context"
	"encoding/binary"
	"runtime"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"xdoh/forwarder/upstream/upstreamtest"
)

// FuzzDoHResponse: whatever bytes a DoH server sends back on a query's
// connection (frames, broken frames, HPACK garbage, a body that is not the
// answer), Exchange returns within its deadline with an answer to the query
// (header and question) or an error, never panics, and Close leaves no goroutine behind. The
// server writes the input after reading the query (stream 1 of a fresh
// connection) and closes the connection.
func FuzzDoHResponse(f *testing.F) {
	fz := newResponseFuzzer(f)
	for _, seed := range dohResponseSeeds(f, fz.answer) {
		f.Add(seed.wire)
	}
	f.Fuzz(func(t *testing.T, data []byte) { fz.exchange(t, data) })
}

// TestDoHResponseSeeds: the fuzzer's seeds end as they should, so that it
// starts from both sides: answers in every shape are taken, faults are
// errors.
func TestDoHResponseSeeds(t *testing.T) {
	fz := newResponseFuzzer(t)
	for _, seed := range dohResponseSeeds(t, fz.answer) {
		t.Run(seed.name, func(t *testing.T) {
			if err := fz.exchange(t, seed.wire); (err == nil) != seed.ok {
				t.Fatalf("Exchange: %v; want an answer: %v", err, seed.ok)
			}
		})
	}
}

type responseFuzzer struct {
	srv           *upstreamtest.FakeH2
	wire          atomic.Pointer[[]byte] // what the server sends back
	q             *dns.Msg
	query, answer []byte
}

func newResponseFuzzer(t testing.TB) *responseFuzzer {
	t.Helper()
	fz := &responseFuzzer{q: new(dns.Msg).SetQuestion("fuzz.example.com.", dns.TypeA)}
	fz.q.Id = 0 // DoH queries go out with ID 0 (RFC 8484 4.1)
	var err error
	if fz.query, err = fz.q.Pack(); err != nil {
		t.Fatal(err)
	}
	if fz.answer, err = upstreamtest.AnswerFor(fz.q).Pack(); err != nil {
		t.Fatal(err)
	}
	fz.srv = upstreamtest.StartFakeH2(t, nil, func(fc *upstreamtest.FakeConn, _ int, _ uint32, _ *dns.Msg) {
		fc.Write(*fz.wire.Load())
		fc.Close()
	})
	return fz
}

// exchange sends the query through a new client to the server, which
// replies with wire; it checks the outcome and returns Exchange's error.
func (fz *responseFuzzer) exchange(t *testing.T, wire []byte) error {
	fz.wire.Store(&wire)
	before := runtime.NumGoroutine()
	u := newTestDoH(t, fz.srv.URL(), Options{Conns: 1, Timeout: 2 * time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	start := time.Now()
	resp, err := Exchange(ctx, u, fz.query)
	if el := time.Since(start); el > 4*time.Second {
		t.Fatalf("Exchange took %v, past its 3 s deadline", el)
	}
	if err == nil {
		// The package vouches for the header and the question (see
		// checkResponse); the records are the forwarder's to walk
		// (dnsmsg.CheckResponse).
		qd, rcode := binary.BigEndian.Uint16(resp[4:]), resp[3]&0xF
		switch {
		case len(resp) < len(fz.query) && !(len(resp) >= headerLen && qd == 0 && rcode != 0):
			t.Fatalf("Exchange returned %d bytes: %x", len(resp), resp)
		case resp[2]&0x80 == 0 || resp[2]&0x78 != fz.query[2]&0x78:
			t.Fatalf("Exchange returned a message that is not a response to a query: %x", resp[:4])
		case qd == 0 && rcode != 0: // an error without the question
		case qd != 1 || !bytes.EqualFold(resp[headerLen:len(fz.query)], fz.query[headerLen:]):
			t.Fatalf("Exchange returned an answer to another question: %x", resp)
		}
		if resp[0] != 0 || resp[1] != 0 {
			t.Fatalf("Exchange returned ID %x, want the query's 0", resp[:2])
		}
	}
	u.Close()
	for deadline := time.Now().Add(3 * time.Second); runtime.NumGoroutine() > before; {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines after Close, %d before the client", runtime.NumGoroutine(), before)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return err
}

type responseSeed struct {
	name string
	wire []byte
	ok   bool // Exchange answers
}

// dohResponseSeeds are server replies to stream 1: good ones in several
// shapes and the faults the package handles.
func dohResponseSeeds(t testing.TB, answer []byte) []responseSeed {
	t.Helper()
	var seeds []responseSeed
	build := func(name string, ok bool, write func(fr *http2.Framer, hdr func(fields ...string) []byte) error) {
		var buf bytes.Buffer
		fr := http2.NewFramer(&buf, nil)
		var hb bytes.Buffer
		enc := hpack.NewEncoder(&hb)
		hdr := func(fields ...string) []byte {
			hb.Reset()
			for i := 0; i+1 < len(fields); i += 2 {
				_ = enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
			}
			return append([]byte(nil), hb.Bytes()...)
		}
		if err := write(fr, hdr); err != nil {
			t.Fatal(err)
		}
		seeds = append(seeds, responseSeed{name, buf.Bytes(), ok})
	}
	okHdr := []string{":status", "200", "content-type", upstreamtest.DNSMessage}
	build("answer", true, func(fr *http2.Framer, hdr func(...string) []byte) error {
		if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hdr(okHdr...), EndHeaders: true}); err != nil {
			return err
		}
		return fr.WriteData(1, true, answer)
	})
	// Headers in HEADERS and CONTINUATION, the body in two DATA frames,
	// a PING, a WINDOW_UPDATE and SETTINGS in between.
	build("split", true, func(fr *http2.Framer, hdr func(...string) []byte) error {
		block := hdr(":status", "200", "content-type", upstreamtest.DNSMessage, "cache-control", "max-age=60")
		if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block[:3]}); err != nil {
			return err
		}
		if err := fr.WriteContinuation(1, true, block[3:]); err != nil {
			return err
		}
		if err := fr.WritePing(false, [8]byte{1}); err != nil {
			return err
		}
		if err := fr.WriteData(1, false, answer[:10]); err != nil {
			return err
		}
		if err := fr.WriteWindowUpdate(0, 1000); err != nil {
			return err
		}
		if err := fr.WriteSettings(http2.Setting{ID: http2.SettingMaxFrameSize, Val: 1 << 14}); err != nil {
			return err
		}
		return fr.WriteData(1, true, answer[10:])
	})
	build("trailers", true, func(fr *http2.Framer, hdr func(...string) []byte) error {
		if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hdr(okHdr...), EndHeaders: true}); err != nil {
			return err
		}
		if err := fr.WriteData(1, false, answer); err != nil {
			return err
		}
		return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hdr("x-trailer", "1"), EndHeaders: true, EndStream: true})
	})
	build("HTTP 500", false, func(fr *http2.Framer, hdr func(...string) []byte) error {
		return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hdr(":status", "500"), EndHeaders: true, EndStream: true})
	})
	build("text/html", false, func(fr *http2.Framer, hdr func(...string) []byte) error {
		if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hdr(":status", "200", "content-type", "text/html"), EndHeaders: true}); err != nil {
			return err
		}
		return fr.WriteData(1, true, []byte("<html>not dns</html>"))
	})
	build("not DNS", false, func(fr *http2.Framer, hdr func(...string) []byte) error {
		if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hdr(okHdr...), EndHeaders: true}); err != nil {
			return err
		}
		return fr.WriteData(1, true, bytes.Repeat([]byte{0xff}, 40))
	})
	// content-length must match the body (RFC 9113 8.1.1).
	clen := strconv.Itoa(len(answer))
	for _, c := range []struct {
		name string
		ok   bool
		clen []string
	}{
		{"content-length", true, []string{clen}},
		{"content-length twice", true, []string{clen, clen}},
		{"content-length short", false, []string{"5"}},
		{"content-length long", false, []string{strconv.Itoa(len(answer) + 1)}},
		{"content-length negative", false, []string{"-5"}},
		{"content-length not a number", false, []string{"0x1d"}},
		{"content-length two values", false, []string{clen, "5"}},
	} {
		build(c.name, c.ok, func(fr *http2.Framer, hdr func(...string) []byte) error {
			fields := okHdr
			for _, v := range c.clen {
				fields = append(fields[:len(fields):len(fields)], "content-length", v)
			}
			if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hdr(fields...), EndHeaders: true}); err != nil {
				return err
			}
			if err := fr.WriteData(1, false, answer[:7]); err != nil {
				return err
			}
			return fr.WriteData(1, true, answer[7:])
		})
	}
	build("RST_STREAM", false, func(fr *http2.Framer, _ func(...string) []byte) error {
		return fr.WriteRSTStream(1, http2.ErrCodeRefusedStream)
	})
	build("GOAWAY", false, func(fr *http2.Framer, _ func(...string) []byte) error {
		return fr.WriteGoAway(0, http2.ErrCodeNo, []byte("bye"))
	})
	build("other stream", false, func(fr *http2.Framer, hdr func(...string) []byte) error {
		if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: hdr(okHdr...), EndHeaders: true}); err != nil {
			return err
		}
		return fr.WriteData(3, true, answer)
	})
	build("bad HPACK", false, func(fr *http2.Framer, _ func(...string) []byte) error {
		return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: []byte{0xff, 0xff, 0xff, 0xff}, EndHeaders: true})
	})
	seeds = append(seeds, responseSeed{"16 MB frame", []byte{0xff, 0xff, 0xff, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01}, false})
	return seeds
}
