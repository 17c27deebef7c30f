package xsk

import (
	"bytes"
	"testing"
)

// FuzzFrame feeds random frames to Parse. Whatever parses must answer
// cleanly: echoing the payload in place (Reply with n = PayloadLen) gives a
// frame no longer than the query without its padding, with valid
// checksums, that parses back with the addresses swapped; and BuildReply
// from the saved header gives the same bytes in another buffer.
func FuzzFrame(f *testing.F) {
	for _, q := range []query{
		{},
		{v6: true},
		{vlans: []uint16{0x8100}},
		{v6: true, vlans: []uint16{0x88a8, 0x8100}},
		{payload: make([]byte, 12), pad: 6},
		{v6: true, pad: 3, junkSums: true},
		{tos: 0xff, flags: 0x4000},
		{flags: 0x2000},
		{vlans: []uint16{0x8100, 0x8100, 0x8100}},
	} {
		f.Add(q.build(f))
	}
	f.Add([]byte{})
	f.Add(make([]byte, 60))

	f.Fuzz(func(t *testing.T, frame []byte) {
		v, ok := Parse(frame)
		if !ok {
			return
		}
		if v.End > len(frame) || v.PayloadOff+v.PayloadLen != v.End || v.PayloadLen < 12 ||
			v.L3Off >= v.L4Off || v.L4Off+8 != v.PayloadOff || v.PayloadOff > MaxHeader {
			t.Fatalf("inconsistent View %+v for a %d-byte frame", v, len(frame))
		}
		in := append([]byte{}, frame...)
		h := SaveHeader(frame, v)

		// In place, in a buffer exactly as long as the frame: the echo
		// must fit.
		buf := append([]byte{}, frame...)
		n := Reply(buf, v, v.PayloadLen)
		if n != v.End {
			t.Fatalf("Reply = %d, want %d (frame %d bytes)", n, v.End, len(frame))
		}
		checkReply(t, in, buf[:n], in[v.PayloadOff:v.End])
		if !bytes.Equal(buf[n:], in[n:]) {
			t.Fatal("Reply wrote past the reply")
		}

		// From the saved header, into a buffer cut to the reply's size.
		other := make([]byte, n)
		if m := BuildReply(other, &h, in[v.PayloadOff:v.End]); m != n || !bytes.Equal(other, buf[:n]) {
			t.Fatalf("BuildReply = %d % x\nReply = %d % x", m, other[:m], n, buf[:n])
		}
		if m := BuildReply(other[:n-1], &h, in[v.PayloadOff:v.End]); m != 0 {
			t.Fatalf("BuildReply into a buffer one byte short = %d", m)
		}
	})
}
