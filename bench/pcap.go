package bench

import (
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"
	"github.com/miekg/dns"
)

// pcapSource replays the DNS queries of a capture: the UDP datagrams to
// port 53 that parse as DNS queries, in order, each at its offset from the
// first one. Everything else in the capture is skipped.
type pcapSource struct {
	qs      [][]byte
	offsets []time.Duration
	desc    string
}

// NewPcapSource reads the DNS queries (UDP, destination port 53) of a pcap
// or pcapng file.
func NewPcapSource(path string) (Timed, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("opening pcap: %w", err)
	}
	defer f.Close()
	s, err := readPcap(f, path)
	if err != nil {
		return nil, err
	}
	return s, nil
}

// packetReader is what pcapgo's pcap and pcapng readers have in common.
type packetReader interface {
	ReadPacketData() ([]byte, gopacket.CaptureInfo, error)
	LinkType() layers.LinkType
}

func readPcap(f *os.File, path string) (*pcapSource, error) {
	var r packetReader
	if pr, err := pcapgo.NewReader(f); err == nil {
		r = pr
	} else {
		if _, serr := f.Seek(0, io.SeekStart); serr != nil {
			return nil, fmt.Errorf("reading pcap %s: %w", path, serr)
		}
		ng, ngErr := pcapgo.NewNgReader(f, pcapgo.DefaultNgReaderOptions)
		if ngErr != nil {
			return nil, fmt.Errorf("reading pcap %s: not a pcap (%v) nor pcapng (%v) file", path, err, ngErr)
		}
		r = ng
	}
	s := &pcapSource{desc: "pcap " + path}
	var first time.Time
	packets := 0
	for {
		data, ci, err := r.ReadPacketData()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("reading pcap %s after %d packets: %w", path, packets, err)
		}
		packets++
		q := dnsQuery(data, r.LinkType())
		if q == nil {
			continue
		}
		if len(s.qs) == 0 {
			first = ci.Timestamp
		}
		s.qs = append(s.qs, q)
		s.offsets = append(s.offsets, max(ci.Timestamp.Sub(first), 0))
	}
	if len(s.qs) == 0 {
		return nil, fmt.Errorf("pcap %s: %w: none of its %d packets is a DNS query over UDP to port 53", path, ErrNoQueries, packets)
	}
	return s, nil
}

// dnsQuery returns a copy of the DNS query (ID 0) in a captured frame, or
// nil if it holds none.
func dnsQuery(data []byte, lt layers.LinkType) []byte {
	p := gopacket.NewPacket(data, lt, gopacket.DecodeOptions{Lazy: true, NoCopy: true})
	udp, ok := p.Layer(layers.LayerTypeUDP).(*layers.UDP)
	if !ok || udp.DstPort != 53 {
		return nil
	}
	pl := udp.Payload
	if len(pl) < 12 || len(pl) > MaxQuery {
		return nil
	}
	var m dns.Msg
	if m.Unpack(pl) != nil || m.Response || len(m.Question) != 1 {
		return nil
	}
	q := append([]byte(nil), pl...)
	q[0], q[1] = 0, 0
	return q
}

func (s *pcapSource) Next(seq uint64, _ *rand.Rand, buf []byte) ([]byte, bool) {
	if seq >= uint64(len(s.qs)) {
		return nil, false
	}
	q := s.qs[seq]
	return buf[:copy(buf[:len(q)], q)], true
}
func (s *pcapSource) Len() uint64                     { return uint64(len(s.qs)) }
func (s *pcapSource) String() string                  { return s.desc }
func (s *pcapSource) Offset(seq uint64) time.Duration { return s.offsets[seq] }
