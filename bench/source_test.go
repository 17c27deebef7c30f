package bench

import (
	"errors"
	"math"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"
	"github.com/miekg/dns"
)

func names(n int) []Question {
	qs := make([]Question, n)
	for i := range qs {
		qs[i] = Question{Name: "n" + strings.Repeat("x", i%3) + itoa3(i) + ".example.com.", Type: dns.TypeA}
	}
	return qs
}

func itoa3(i int) string {
	return string([]byte{'0' + byte(i/100%10), '0' + byte(i/10%10), '0' + byte(i%10)})
}

func unpack(t *testing.T, b []byte) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	if err := m.Unpack(b); err != nil {
		t.Fatalf("unpacking %x: %v", b, err)
	}
	return m
}

func TestZipfDistribution(t *testing.T) {
	tests := []struct {
		name string
		n    int
		s    float64
	}{
		{"s=0.9 over 100", 100, 0.9},
		{"s=1.2 over 1000", 1000, 1.2},
		{"s=2 over 10", 10, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			qs := names(tt.n)
			z, err := newZipfSource(qs, tt.s, "test")
			if err != nil {
				t.Fatal(err)
			}
			index := map[string]int{}
			for i, q := range qs {
				index[q.Name] = i
			}
			const draws = 200_000
			counts := make([]int, tt.n)
			rng := rand.New(rand.NewPCG(1, 2))
			var buf [MaxQuery]byte
			for seq := range uint64(draws) {
				q, ok := z.Next(seq, rng, buf[:])
				if !ok {
					t.Fatal("zipf source ended")
				}
				counts[index[unpack(t, q).Question[0].Name]]++
			}
			h := 0.0
			for k := 1; k <= tt.n; k++ {
				h += math.Pow(float64(k), -tt.s)
			}
			// The top ranks carry the most weight: check them against
			// the exact probabilities within 5 standard deviations.
			for k := 1; k <= min(5, tt.n); k++ {
				p := math.Pow(float64(k), -tt.s) / h
				want := p * draws
				sd := math.Sqrt(draws * p * (1 - p))
				if got := float64(counts[k-1]); math.Abs(got-want) > 5*sd+1 {
					t.Errorf("rank %d: %v draws, want %.0f ± %.0f", k, got, want, 5*sd)
				}
			}
			// Popularity falls with rank.
			if counts[0] <= counts[tt.n-1] {
				t.Errorf("rank 1 drawn %d times, rank %d %d times", counts[0], tt.n, counts[tt.n-1])
			}
		})
	}
}

func TestZipfRejectsBadExponent(t *testing.T) {
	for _, s := range []float64{0, -1, math.NaN(), math.Inf(1)} {
		if _, err := newZipfSource(names(3), s, "x"); err == nil {
			t.Errorf("exponent %v accepted", s)
		}
	}
}

func TestRandomSub(t *testing.T) {
	tests := []struct {
		name   string
		domain string
		qtype  uint16
	}{
		{"A under example.com", "example.com", dns.TypeA},
		{"AAAA under a deeper domain", "a.b.example.org.", dns.TypeAAAA},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := NewRandomSubSource(tt.domain, tt.qtype)
			if err != nil {
				t.Fatal(err)
			}
			rng := rand.New(rand.NewPCG(3, 4))
			var buf [MaxQuery]byte
			const draws = 20_000
			seen := map[string]bool{}
			charCount := map[byte]int{}
			suffix := "." + dns.Fqdn(tt.domain)
			for seq := range uint64(draws) {
				q, _ := s.Next(seq, rng, buf[:])
				m := unpack(t, q)
				if m.Question[0].Qtype != tt.qtype {
					t.Fatalf("type %d, want %d", m.Question[0].Qtype, tt.qtype)
				}
				name := m.Question[0].Name
				label, rest, _ := strings.Cut(name, ".")
				if "."+rest != suffix || len(label) != randomLabelLen {
					t.Fatalf("name %q, want a %d-character label under %s", name, randomLabelLen, tt.domain)
				}
				seen[label] = true
				for i := range len(label) {
					charCount[label[i]]++
				}
			}
			if len(seen) < draws-1 {
				t.Errorf("%d distinct labels in %d draws: not random enough to bust a cache", len(seen), draws)
			}
			// Every character is used about equally often.
			want := float64(draws*randomLabelLen) / float64(len(labelChars))
			for i := range len(labelChars) {
				if got := float64(charCount[labelChars[i]]); math.Abs(got-want) > 0.1*want {
					t.Errorf("character %q used %v times, want about %.0f", labelChars[i], got, want)
				}
			}
		})
	}
}

func TestRandomSubNoAllocs(t *testing.T) {
	s, err := NewRandomSubSource("example.com", dns.TypeA)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(5, 6))
	var buf [MaxQuery]byte
	if a := testing.AllocsPerRun(1000, func() { s.Next(0, rng, buf[:]) }); a != 0 {
		t.Errorf("%v allocations per query", a)
	}
}

func TestParseQueryFile(t *testing.T) {
	tests := []struct {
		name    string
		text    string
		want    int
		wantErr string
	}{
		{"names and types", "a.example.com A\nb.example.com AAAA\n; comment\n\nc.example.com\n", 3, ""},
		{"empty", "", 0, "no queries"},
		{"only comments", "# x\n; y\n", 0, "no queries"},
		{"bad type", "a.example.com BOGUS\n", 0, `unknown query type "BOGUS"`},
		{"too many fields", "a.example.com A extra\n", 0, "want \"name [type]\""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			qs, err := ParseQueryFile(strings.NewReader(tt.text), "q.txt")
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || len(qs) != tt.want {
				t.Fatalf("%d queries, err %v; want %d", len(qs), err, tt.want)
			}
		})
	}
}

// writePcap writes Ethernet frames: UDP datagrams to dstPort with the
// payloads given.
func writePcap(t *testing.T, path string, frames []pcapFrame) {
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
	t0 := time.Unix(1700000000, 0)
	for _, fr := range frames {
		eth := &layers.Ethernet{SrcMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, DstMAC: net.HardwareAddr{2, 0, 0, 0, 0, 2}, EthernetType: layers.EthernetTypeIPv4}
		ip := &layers.IPv4{Version: 4, TTL: 64, SrcIP: net.IP{192, 0, 2, 1}, DstIP: net.IP{192, 0, 2, 53}}
		buf := gopacket.NewSerializeBuffer()
		opts := gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}
		var err error
		if fr.tcp {
			ip.Protocol = layers.IPProtocolTCP
			tcp := &layers.TCP{SrcPort: 40000, DstPort: layers.TCPPort(fr.dstPort), SYN: true, Window: 1000}
			_ = tcp.SetNetworkLayerForChecksum(ip)
			err = gopacket.SerializeLayers(buf, opts, eth, ip, tcp, gopacket.Payload(fr.payload))
		} else {
			ip.Protocol = layers.IPProtocolUDP
			udp := &layers.UDP{SrcPort: 40000, DstPort: layers.UDPPort(fr.dstPort)}
			_ = udp.SetNetworkLayerForChecksum(ip)
			err = gopacket.SerializeLayers(buf, opts, eth, ip, udp, gopacket.Payload(fr.payload))
		}
		if err != nil {
			t.Fatal(err)
		}
		data := buf.Bytes()
		ci := gopacket.CaptureInfo{Timestamp: t0.Add(fr.at), CaptureLength: len(data), Length: len(data)}
		if err := w.WritePacket(ci, data); err != nil {
			t.Fatal(err)
		}
	}
}

type pcapFrame struct {
	at      time.Duration
	dstPort uint16
	tcp     bool
	payload []byte
}

func packed(t *testing.T, name string, qtype uint16, response bool) []byte {
	t.Helper()
	m := new(dns.Msg).SetQuestion(name, qtype)
	m.Id = 4242
	m.Response = response
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// testPcap writes a capture with n DNS queries 10ms apart among packets
// that are not queries, and returns its path.
func testPcap(t *testing.T, n int) string {
	t.Helper()
	var frames []pcapFrame
	for i := range n {
		at := time.Duration(i) * 10 * time.Millisecond
		frames = append(frames,
			pcapFrame{at: at, dstPort: 53, payload: packed(t, "foo.example.com.", dns.TypeA, false)},
			pcapFrame{at: at + time.Millisecond, dstPort: 123, payload: []byte("not dns at all, ntp")},
			pcapFrame{at: at + 2*time.Millisecond, dstPort: 53, payload: packed(t, "foo.example.com.", dns.TypeA, true)}, // a response
			pcapFrame{at: at + 3*time.Millisecond, dstPort: 53, tcp: true, payload: []byte{0, 1, 2}},
			pcapFrame{at: at + 4*time.Millisecond, dstPort: 53, payload: []byte("garbage to port 53")},
		)
	}
	path := filepath.Join(t.TempDir(), "q.pcap")
	writePcap(t, path, frames)
	return path
}

func TestPcapSource(t *testing.T) {
	s, err := NewPcapSource(testPcap(t, 7))
	if err != nil {
		t.Fatal(err)
	}
	if s.Len() != 7 {
		t.Fatalf("%d queries, want 7", s.Len())
	}
	var buf [MaxQuery]byte
	for seq := range uint64(7) {
		q, ok := s.Next(seq, nil, buf[:])
		if !ok {
			t.Fatalf("query %d missing", seq)
		}
		m := unpack(t, q)
		if m.Response || m.Question[0].Name != "foo.example.com." || m.Id != 0 {
			t.Errorf("query %d: %v", seq, m)
		}
		if got, want := s.Offset(seq), time.Duration(seq)*10*time.Millisecond; got != want {
			t.Errorf("query %d at %v, want %v", seq, got, want)
		}
	}
	if _, ok := s.Next(7, nil, buf[:]); ok {
		t.Error("source did not end after its queries")
	}
}

func TestPcapWithoutDNS(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nodns.pcap")
	writePcap(t, path, []pcapFrame{{dstPort: 123, payload: []byte("ntp")}, {dstPort: 53, tcp: true, payload: []byte{1}}})
	_, err := NewPcapSource(path)
	if !errors.Is(err, ErrNoQueries) {
		t.Fatalf("err %v, want ErrNoQueries", err)
	}
}
