package dot

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"
)

// FuzzReadFrame: the framing reader returns exactly the messages a
// straightforward reading of the length prefixes gives, and never more
// than the input holds.
func FuzzReadFrame(f *testing.F) {
	f.Add([]byte{0, 12, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12})
	f.Add([]byte{0, 3, 1, 2, 3})
	f.Add([]byte{0x01, 0xf4, 1, 2})
	f.Add([]byte{0})
	f.Add([]byte{0xff, 0xff})
	f.Add(append(append([]byte{0, 12}, make([]byte, 12)...), append([]byte{0, 13}, make([]byte, 13)...)...))
	f.Fuzz(func(t *testing.T, in []byte) {
		br := bufio.NewReaderSize(bytes.NewReader(in), 16)
		var buf []byte
		rest := in
		for {
			whole := frameBuffered(br)
			msg, err := readFrame(br, &buf)
			// The reference reading.
			var want []byte
			var wantErr error
			switch {
			case len(rest) == 0:
				wantErr = io.EOF
			case len(rest) < 2:
				wantErr = io.ErrUnexpectedEOF
			case int(binary.BigEndian.Uint16(rest)) < headerLen:
				wantErr = errShortMessage
			case len(rest) < 2+int(binary.BigEndian.Uint16(rest)):
				wantErr = io.ErrUnexpectedEOF
			default:
				n := int(binary.BigEndian.Uint16(rest))
				want, rest = rest[2:2+n], rest[2+n:]
			}
			if !errors.Is(err, wantErr) && !(wantErr == nil && err == nil) {
				t.Fatalf("readFrame error %v, want %v", err, wantErr)
			}
			if err != nil {
				return
			}
			if !bytes.Equal(msg, want) {
				t.Fatalf("readFrame = %x, want %x", msg, want)
			}
			if whole && len(msg) > 16 {
				t.Fatalf("frameBuffered said a %d-octet message was buffered in a 16-octet buffer", len(msg))
			}
		}
	})
}
