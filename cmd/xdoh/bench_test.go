package main

import (
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"

	"xdoh/bench"
	"xdoh/forwarder/upstream/upstreamtest"
)

// runBench runs `xdoh bench args…` in-process and returns its report
// text, error and exit status.
func runBench(t *testing.T, args ...string) (string, error, int) {
	t.Helper()
	var out, progress strings.Builder
	err := cmdBench(args, &out, &progress)
	return out.String(), err, exitStatus(err)
}

func writeFile(t *testing.T, name, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// closedUDPPort returns a loopback UDP address nobody listens on.
func closedUDPPort(t *testing.T) string {
	t.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := c.LocalAddr().String()
	c.Close()
	return addr
}

// garbageServer answers every datagram with reply(query).
func garbageServer(t *testing.T, reply func(q []byte) []byte) string {
	t.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	go func() {
		buf := make([]byte, 4096)
		for {
			n, from, err := c.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = c.WriteTo(reply(buf[:n]), from)
		}
	}()
	return c.LocalAddr().String()
}

func TestBenchErrors(t *testing.T) {
	q := writeFile(t, "q.txt", "foo.example.com A\n")
	empty := writeFile(t, "empty.txt", "; nothing\n")
	notPcap := writeFile(t, "x.pcap", "this is no capture")
	noDNS := filepath.Join(t.TempDir(), "nodns.pcap")
	writeNoDNSPcap(t, noDNS)
	unreachable := closedUDPPort(t)
	notDNS := garbageServer(t, func([]byte) []byte { return []byte("HTTP/1.1 400 Bad Request\r\n\r\n") })
	wrongID := garbageServer(t, func(q []byte) []byte {
		r := append([]byte(nil), q...)
		r[0] ^= 0x55 // another ID
		r[2] |= 0x80
		return r
	})
	tests := []struct {
		name       string
		args       []string
		wantErr    string
		wantStatus int
	}{
		{"no target", []string{"-d", q}, "want one TARGET", 2},
		{"unknown flag", []string{"--bogus", "-d", q, "127.0.0.1"}, "unknown flag --bogus", 2},
		{"flag without value", []string{"127.0.0.1", "-d"}, "-d needs a value", 2},
		{"bad number", []string{"-c", "zero", "-d", q, "127.0.0.1"}, "want a positive integer", 2},
		{"bad threads", []string{"-T", "0", "-d", q, "127.0.0.1"}, "want a positive integer", 2},
		{"bad seconds", []string{"-l", "-1", "-d", q, "127.0.0.1"}, "want seconds", 2},
		{"no source", []string{"127.0.0.1"}, "want exactly one query source", 2},
		{"two sources", []string{"-d", q, "--random-sub", "example.com", "127.0.0.1"}, "want exactly one query source", 2},
		{"zipf without file", []string{"--zipf", "1", "--random-sub", "example.com", "127.0.0.1"}, "--zipf needs -d FILE", 2},
		{"closed and open loop", []string{"-q", "5", "-Q", "100", "-d", q, "127.0.0.1"}, "exclude each other", 2},
		{"bad ramp", []string{"--ramp", "100:50:10", "-d", q, "127.0.0.1"}, "TO 50 is below FROM 100", 2},
		{"bad scheme", []string{"-d", q, "ftp://127.0.0.1"}, `unsupported scheme "ftp"`, 2},
		{"get without https", []string{"--get", "-d", q, "127.0.0.1"}, "--get is for https:// targets", 2},
		{"remote target", []string{"-d", q, "192.0.2.1:53"}, "is not on loopback", 2},
		{"remote name", []string{"-d", q, "https://dns.example/dns-query"}, "is not on loopback", 2},
		{"xdp no interface", []string{"--xdp", "nosuchif0", "-d", q, "127.0.0.1"}, "--xdp nosuchif0", 1},
		{"xdp over tcp", []string{"--xdp", "eth0", "-d", q, "tcp://127.0.0.1"}, "--xdp is for UDP targets", 2},
		{"missing query file", []string{"-d", "/nonexistent/q.txt", "127.0.0.1"}, "opening query file", 1},
		{"empty query file", []string{"-d", empty, "127.0.0.1"}, "no queries", 1},
		{"not a pcap", []string{"--pcap", notPcap, "127.0.0.1"}, "not a pcap", 1},
		{"pcap without DNS", []string{"--pcap", noDNS, "127.0.0.1"}, "none of its 2 packets is a DNS query", 1},
		{"unreachable", []string{"-d", q, "-l", "1", "-t", "0.3", unreachable}, "no answers from " + unreachable, 1},
		{"not DNS", []string{"-d", q, "-l", "1", "-t", "0.3", notDNS}, "were not answers to our queries", 1},
		{"wrong IDs", []string{"-d", q, "-l", "1", "-t", "0.3", wrongID}, "were not answers to our queries", 1},
		{"unreachable tcp", []string{"-d", q, "-l", "1", "-t", "0.3", "tcp://" + unreachable}, "connection refused", 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err, status := runBench(t, tt.args...)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err %v, want %q", err, tt.wantErr)
			}
			if status != tt.wantStatus {
				t.Errorf("exit status %d, want %d (err %v)", status, tt.wantStatus, err)
			}
		})
	}
}

// TestBenchRefusesRemoteWithoutTraffic: the loopback check comes before
// the query source is even read, so nothing can be sent.
func TestBenchRefusesRemoteWithoutTraffic(t *testing.T) {
	_, err, status := runBench(t, "-d", "/nonexistent", "-Q", "1000000", "198.51.100.7")
	if status != 2 || err == nil || !strings.Contains(err.Error(), "--allow-remote") {
		t.Fatalf("status %d err %v", status, err)
	}
}

func TestBenchAgainstBIND(t *testing.T) {
	b := upstreamtest.StartBIND(t, upstreamtest.BINDOptions{})
	q := writeFile(t, "q.txt", "foo.example.com A\nfoo.example.com AAAA\n")
	js := filepath.Join(t.TempDir(), "r.json")
	out, err, _ := runBench(t, "-d", q, "-c", "2", "-q", "10", "-l", "1", "--json", js, b.Do53Addr)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for _, want := range []string{"Queries sent:", "Queries completed:", "NOERROR", "Queries per second:", "Latency (ms):"} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
	data, err := os.ReadFile(js)
	if err != nil {
		t.Fatal(err)
	}
	var rep bench.Report
	if err := json.Unmarshal(data, &rep); err != nil {
		t.Fatal(err)
	}
	if rep.Answered == 0 || rep.Rcodes["NOERROR"] != rep.Answered || rep.Settings.Clients != 2 || rep.Settings.Outstanding != 10 || len(rep.Timeline) == 0 {
		t.Errorf("report %+v", rep)
	}

	// TCP on one thread, profiled; GOMAXPROCS is restored afterwards.
	prof := filepath.Join(t.TempDir(), "cpu.prof")
	procs := runtime.GOMAXPROCS(0)
	out, err, _ = runBench(t, "-d", q, "-T", "1", "--cpuprofile", prof, "-n", "100", "tcp://"+b.Do53Addr)
	if err != nil || !strings.Contains(out, "Queries sent:         100") {
		t.Fatalf("TCP with -T 1 --cpuprofile: %v\n%s", err, out)
	}
	if st, err := os.Stat(prof); err != nil || st.Size() == 0 {
		t.Errorf("profile %s: %v", prof, err)
	}
	if p := runtime.GOMAXPROCS(0); p != procs {
		t.Errorf("GOMAXPROCS %d after -T 1, want %d again", p, procs)
	}

	// DoH GET with the CA, -n bound, and a plot.
	png := filepath.Join(t.TempDir(), "p.png")
	out, err, _ = runBench(t, "-d", q, "--get", "--ca-file", b.CAFile, "-n", "100", "--plot", png, b.DoHURL)
	if err != nil || !strings.Contains(out, "Queries sent:         100") {
		t.Fatalf("DoH GET with --plot: %v\n%s", err, out)
	}
	if st, err := os.Stat(png); err != nil || st.Size() < 10000 {
		t.Errorf("plot %s: %v", png, err)
	}

	// compare: a run against itself is the same (exit 0); against a run
	// with a tenth of its rate, worse (exit 1).
	slow := filepath.Join(t.TempDir(), "slow.json")
	if _, err, _ := runBench(t, "-d", q, "-Q", "200", "-l", "1", "--json", slow, b.Do53Addr); err != nil {
		t.Fatal(err)
	}
	if out, err, status := runBench(t, "compare", js, js); err != nil || status != 0 || !strings.Contains(out, "verdict") {
		t.Errorf("compare A A: %v (status %d)\n%s", err, status, out)
	}
	if out, err, status := runBench(t, "compare", js, slow); err == nil || status != 1 || !strings.Contains(out, "worse") {
		t.Errorf("compare fast slow: %v (status %d)\n%s", err, status, out)
	}
	if _, err, status := runBench(t, "compare", js); err == nil || status != 2 {
		t.Errorf("compare with one file: %v (status %d)", err, status)
	}
}

// writeNoDNSPcap writes a capture of two packets, neither a DNS query over
// UDP: an NTP datagram and a TCP segment to port 53.
func writeNoDNSPcap(t *testing.T, path string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w := pcapgo.NewWriter(f)
	if err := w.WriteFileHeader(65535, layers.LinkTypeEthernet); err != nil {
		t.Fatal(err)
	}
	for i, l4 := range []gopacket.SerializableLayer{
		&layers.UDP{SrcPort: 40000, DstPort: 123},
		&layers.TCP{SrcPort: 40000, DstPort: 53, SYN: true},
	} {
		eth := &layers.Ethernet{SrcMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, DstMAC: net.HardwareAddr{2, 0, 0, 0, 0, 2}, EthernetType: layers.EthernetTypeIPv4}
		ip := &layers.IPv4{Version: 4, TTL: 64, SrcIP: net.IP{192, 0, 2, 1}, DstIP: net.IP{192, 0, 2, 53}, Protocol: layers.IPProtocolUDP}
		if i == 1 {
			ip.Protocol = layers.IPProtocolTCP
		}
		buf := gopacket.NewSerializeBuffer()
		if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true}, eth, ip, l4, gopacket.Payload("payload")); err != nil {
			t.Fatal(err)
		}
		ci := gopacket.CaptureInfo{Timestamp: time.Unix(1700000000, int64(i)), CaptureLength: len(buf.Bytes()), Length: len(buf.Bytes())}
		if err := w.WritePacket(ci, buf.Bytes()); err != nil {
			t.Fatal(err)
		}
	}
}
