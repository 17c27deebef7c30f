package querylog

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	dnstap "github.com/dnstap/golang-dnstap"
	"github.com/miekg/dns"
	"google.golang.org/protobuf/proto"
)

// readDnstapFile reads a Frame Streams file back with dnstap's reader.
func readDnstapFile(t *testing.T, path string) []*dnstap.Dnstap {
	t.Helper()
	in, err := dnstap.NewFrameStreamInputFromFilename(path)
	if err != nil {
		t.Fatalf("opening %s: %v", path, err)
	}
	frames := make(chan []byte, 1024)
	go func() {
		in.ReadInto(frames)
		close(frames)
	}()
	return decodeFrames(t, frames)
}

func decodeFrames(t *testing.T, frames <-chan []byte) []*dnstap.Dnstap {
	t.Helper()
	var out []*dnstap.Dnstap
	for f := range frames {
		m := new(dnstap.Dnstap)
		if err := proto.Unmarshal(f, m); err != nil {
			t.Fatalf("frame %d: %v", len(out), err)
		}
		out = append(out, m)
	}
	return out
}

func TestDnstapFileRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "query.tap")
	l, err := New(Config{DnstapFile: path, Identity: "edge-1"})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		transport string
		client    string
		want      dnstap.SocketProtocol
		family    dnstap.SocketFamily
	}{
		{"UDP", "192.0.2.10:53000", dnstap.SocketProtocol_UDP, dnstap.SocketFamily_INET},
		{"TCP", "[2001:db8::10]:53001", dnstap.SocketProtocol_TCP, dnstap.SocketFamily_INET6},
		{"DoH", "[::ffff:192.0.2.11]:53002", dnstap.SocketProtocol_DOH, dnstap.SocketFamily_INET},
		{"DoH-FIPS", "192.0.2.12:53003", dnstap.SocketProtocol_DOH, dnstap.SocketFamily_INET},
	}
	for i, tt := range tests {
		e := entry(t, fmt.Sprintf("t%d.Example.com.", i))
		e.Transport = tt.transport
		e.Client = netip.MustParseAddrPort(tt.client)
		e.Latency = 1500 * time.Microsecond
		l.Log(e)
	}
	noReply := entry(t, "noreply.example.com.")
	noReply.Response = nil
	l.Log(noReply)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}

	msgs := readDnstapFile(t, path)
	if len(msgs) != 2*len(tests)+1 {
		t.Fatalf("%d dnstap messages, want %d", len(msgs), 2*len(tests)+1)
	}
	for i, tt := range tests {
		name := fmt.Sprintf("t%d.Example.com.", i)
		ap := netip.MustParseAddrPort(tt.client)
		for j, typ := range []dnstap.Message_Type{dnstap.Message_CLIENT_QUERY, dnstap.Message_CLIENT_RESPONSE} {
			d := msgs[2*i+j]
			m := d.GetMessage()
			if string(d.GetIdentity()) != "edge-1" || string(d.GetVersion()) != "xdoh" || d.GetType() != dnstap.Dnstap_MESSAGE {
				t.Errorf("%s: identity %q version %q type %v", name, d.GetIdentity(), d.GetVersion(), d.GetType())
			}
			if m.GetType() != typ || m.GetSocketProtocol() != tt.want || m.GetSocketFamily() != tt.family {
				t.Errorf("%s: type %v protocol %v family %v, want %v %v %v", name,
					m.GetType(), m.GetSocketProtocol(), m.GetSocketFamily(), typ, tt.want, tt.family)
			}
			if ip, _ := netip.AddrFromSlice(m.GetQueryAddress()); ip != ap.Addr().Unmap() || m.GetQueryPort() != uint32(ap.Port()) {
				t.Errorf("%s: query address %v port %d, want %v", name, ip, m.GetQueryPort(), ap)
			}
			if m.GetQueryTimeSec() != uint64(t0.Unix()) || m.GetQueryTimeNsec() != uint32(t0.Nanosecond()) {
				t.Errorf("%s: query time %d.%09d", name, m.GetQueryTimeSec(), m.GetQueryTimeNsec())
			}
			wire := m.GetQueryMessage()
			if typ == dnstap.Message_CLIENT_RESPONSE {
				wire = m.GetResponseMessage()
				rt := t0.Add(1500 * time.Microsecond)
				if m.GetResponseTimeSec() != uint64(rt.Unix()) || m.GetResponseTimeNsec() != uint32(rt.Nanosecond()) {
					t.Errorf("%s: response time %d.%09d", name, m.GetResponseTimeSec(), m.GetResponseTimeNsec())
				}
			}
			var dm dns.Msg
			if err := dm.Unpack(wire); err != nil || len(dm.Question) != 1 || dm.Question[0].Name != name {
				t.Errorf("%s: %v message: %v %v", name, typ, err, dm.Question)
			}
		}
	}
	last := msgs[len(msgs)-1].GetMessage()
	if last.GetType() != dnstap.Message_CLIENT_QUERY || last.ResponseMessage != nil {
		t.Errorf("no-reply entry: %v", last)
	}
}

func TestDnstapFileReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "query.tap")
	l, err := New(Config{DnstapFile: path})
	if err != nil {
		t.Fatal(err)
	}
	l.Log(entry(t, "one.example.com."))
	waitLogged(t, l, 1)
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	if err := l.Reopen(); err != nil {
		t.Fatal(err)
	}
	l.Log(entry(t, "two.example.com."))
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ path, name string }{{path + ".1", "one.example.com."}, {path, "two.example.com."}} {
		msgs := readDnstapFile(t, tc.path)
		if len(msgs) != 2 {
			t.Fatalf("%s: %d messages, want 2", tc.path, len(msgs))
		}
		var dm dns.Msg
		if err := dm.Unpack(msgs[0].GetMessage().GetQueryMessage()); err != nil || dm.Question[0].Name != tc.name {
			t.Errorf("%s: %v %v, want %s", tc.path, err, dm.Question, tc.name)
		}
	}
}

func TestDnstapSocket(t *testing.T) {
	dir, err := os.MkdirTemp("", "qlt") // short: unix socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "tap.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	// One collector connection, read with dnstap's bidirectional input.
	// (FrameStreamSockInput.ReadInto spins on Accept errors once the
	// listener is closed, so it does not suit a test.)
	frames := make(chan []byte, 64)
	collectorDone := make(chan struct{})
	defer func() { ln.Close(); <-collectorDone }()
	go func() {
		defer close(collectorDone)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		in, err := dnstap.NewFrameStreamInputTimeout(c, true, 5*time.Second)
		if err != nil {
			t.Errorf("collector handshake: %v", err)
			return
		}
		in.ReadInto(frames)
	}()

	l, err := New(Config{DnstapSocket: sock, Identity: "edge-sock"})
	if err != nil {
		t.Fatal(err)
	}
	e := entry(t, "sock.example.com.")
	e.Transport = "DoH"
	l.Log(e)

	var got []*dnstap.Dnstap
	timeout := time.After(5 * time.Second)
	for len(got) < 2 {
		select {
		case f := <-frames:
			m := new(dnstap.Dnstap)
			if err := proto.Unmarshal(f, m); err != nil {
				t.Fatal(err)
			}
			got = append(got, m)
		case <-timeout:
			t.Fatalf("got %d frames from the collector, want 2 (stats %+v)", len(got), l.Stats())
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	for _, d := range got {
		m := d.GetMessage()
		if string(d.GetIdentity()) != "edge-sock" || m.GetSocketProtocol() != dnstap.SocketProtocol_DOH {
			t.Errorf("identity %q protocol %v", d.GetIdentity(), m.GetSocketProtocol())
		}
	}
	wire := got[0].GetMessage().GetQueryMessage()
	if !bytes.Equal(wire, e.Query) {
		t.Errorf("query message differs")
	}
	if s := l.Stats(); s.DnstapDropped != 0 || s.Logged != 1 {
		t.Errorf("stats %+v", s)
	}
}

// TestDnstapSocketDown: with no collector, frames are dropped and counted,
// the JSON log is unaffected, and Close does not hang.
func TestDnstapSocketDown(t *testing.T) {
	dir := t.TempDir()
	l, err := New(Config{DnstapSocket: filepath.Join(dir, "absent.sock"), Path: filepath.Join(dir, "q.log")})
	if err != nil {
		t.Fatal(err)
	}
	for range 10 {
		l.Log(entry(t, "down.example.com."))
	}
	done := make(chan error)
	go func() { done <- l.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close hung with the collector down")
	}
	if s := l.Stats(); s.Logged != 10 || s.DnstapDropped != 20 {
		t.Errorf("stats %+v, want Logged 10 DnstapDropped 20", s)
	}
	if n := len(readLines(t, filepath.Join(dir, "q.log"))); n != 10 {
		t.Errorf("%d JSON lines, want 10", n)
	}
}
