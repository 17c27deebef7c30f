package doq

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
	"testing/iotest"
)

// FuzzReadQuery: readQuery accepts a stream exactly when it holds one
// message of at least a header, with ID 0, and nothing after it; and
// returns that message. The stream is read in small pieces.
func FuzzReadQuery(f *testing.F) {
	q := make([]byte, 14)
	f.Add(append([]byte{0, 14}, q...))
	f.Add(append(append([]byte{0, 14}, q...), 0, 14))
	f.Add([]byte{0, 14, 0, 1})
	f.Add([]byte{0})
	f.Add([]byte{})
	f.Add(append([]byte{0, 12, 0x12, 0x34}, make([]byte, 10)...))
	f.Fuzz(func(t *testing.T, in []byte) {
		var buf []byte
		msg, err := readQuery(iotest.HalfReader(bytes.NewReader(in)), &buf)
		ok := len(in) >= 2 && len(in) == 2+int(binary.BigEndian.Uint16(in)) &&
			len(in)-2 >= headerLen && in[2] == 0 && in[3] == 0
		var pe protocolError
		switch {
		case ok && err != nil:
			t.Fatalf("readQuery(%x) = %v, want the message", in, err)
		case ok && !bytes.Equal(msg, in[2:]):
			t.Fatalf("readQuery(%x) = %x, want %x", in, msg, in[2:])
		case !ok && !errors.As(err, &pe):
			t.Fatalf("readQuery(%x) = %x, %v; want a protocol error", in, msg, err)
		}
	})
}
