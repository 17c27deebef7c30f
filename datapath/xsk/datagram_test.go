package xsk

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"
)

// TestDatagram builds datagrams of both families and checks them with
// Parse and the reference checksum.
func TestDatagram(t *testing.T) {
	for _, c := range []struct {
		name     string
		src, dst netip.Addr
		payload  int
	}{
		{"ipv4", client4, server4, 40},
		{"ipv4 odd", client4, server4, 41},
		{"ipv6", client6, server6, 40},
		{"ipv6 odd", client6, server6, 57},
	} {
		t.Run(c.name, func(t *testing.T) {
			d, err := NewDatagram(macClient, macServer, c.src, c.dst, 53)
			if err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 2048)
			payload := dnsQuery(t, "example.com")
			payload = append(payload, make([]byte, c.payload-len(payload))...)
			for i := range buf {
				buf[i] = 0xa5 // garbage a previous packet left
			}
			copy(buf[d.Len():], payload)
			n := d.Build(buf, 40123, len(payload))
			if n != d.Len()+len(payload) {
				t.Fatalf("Build returned %d, want %d", n, d.Len()+len(payload))
			}
			f := buf[:n]
			v, ok := Parse(f)
			if !ok {
				t.Fatalf("Parse rejects the datagram % x", f)
			}
			if got, want := v.Client(f), netip.AddrPortFrom(c.src, 40123); got != want {
				t.Errorf("source %v, want %v", got, want)
			}
			if got, want := v.Server(f), netip.AddrPortFrom(c.dst, 53); got != want {
				t.Errorf("destination %v, want %v", got, want)
			}
			if !bytes.Equal(v.Payload(f), payload) || !bytes.Equal(f[:6], macServer[:]) || !bytes.Equal(f[6:12], macClient[:]) {
				t.Errorf("payload or MACs wrong: % x", f)
			}
			// The UDP checksum over the pseudo-header and the datagram is
			// 0xffff when right; so is the IPv4 header's.
			var pseudo []byte
			if v.IPv6 {
				pseudo = append(pseudo, f[v.L3Off+8:v.L3Off+40]...)
			} else {
				if s := refSum(f[v.L3Off : v.L3Off+20]); s != 0xffff {
					t.Errorf("IPv4 header checksum: sum %#x", s)
				}
				pseudo = append(pseudo, f[v.L3Off+12:v.L3Off+20]...)
			}
			pseudo = append(pseudo, 0, protoUDP)
			pseudo = binary.BigEndian.AppendUint16(pseudo, uint16(n-v.L4Off))
			if s := refSum(append(pseudo, f[v.L4Off:]...)); s != 0xffff {
				t.Errorf("UDP checksum: sum %#x", s)
			}
		})
	}
	if _, err := NewDatagram(macClient, macServer, client4, server6, 53); err == nil {
		t.Error("mixed families: no error")
	}
	d, _ := NewDatagram(macClient, macServer, client4, server4, 53)
	if n := d.Build(make([]byte, 60), 1, 40); n != 0 {
		t.Errorf("Build into a short buffer returned %d", n)
	}
	buf := make([]byte, 2048)
	if a := testing.AllocsPerRun(100, func() { d.Build(buf, 1, 40) }); a != 0 {
		t.Errorf("Build allocates %v", a)
	}
}
