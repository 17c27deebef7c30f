package bpf

import (
	"encoding/binary"
	"net/netip"
	"regexp"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
)

// TestReasonNames checks the names are distinct label values whose prefix is
// the verdict.
func TestReasonNames(t *testing.T) {
	label := regexp.MustCompile(`^(redirect|tx|pass_[a-z0-9_]+|drop_[a-z0-9_]+)$`)
	seen := map[string]bool{}
	for r := range NumReasons {
		s := r.String()
		if !label.MatchString(s) || seen[s] {
			t.Errorf("reason %d: name %q is not a new label value", r, s)
		}
		seen[s] = true
		if r.verdict() == xdpDrop != strings.HasPrefix(s, "drop_") {
			t.Errorf("%s: verdict %d", s, r.verdict())
		}
	}
	if s := NumReasons.String(); s != "reason(14)" {
		t.Errorf("NumReasons.String() = %q", s)
	}
}

// TestSpec checks the committed object against the Go side (no kernel needed).
func TestSpec(t *testing.T) {
	spec, err := loadXdp()
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]struct {
		typ        ebpf.MapType
		key, value uint32
		max        uint32
	}{
		xdpMapListeners: {ebpf.Hash, 20, 8, MaxListeners},
		xdpMapAcl4:      {ebpf.LPMTrie, 12, 4, MaxACLEntries},
		xdpMapAcl6:      {ebpf.LPMTrie, 24, 4, MaxACLEntries},
		xdpMapXsks:      {ebpf.XSKMap, 4, 4, DefaultQueues},
		xdpMapCounters:  {ebpf.PerCPUArray, 4, 8, uint32(NumReasons)},
	} {
		m := spec.Maps[name]
		if m == nil {
			t.Errorf("no map %s", name)
			continue
		}
		if m.Type != want.typ || m.KeySize != want.key || m.ValueSize != want.value || m.MaxEntries != want.max {
			t.Errorf("%s: %s key %d value %d max %d, want %s key %d value %d max %d",
				name, m.Type, m.KeySize, m.ValueSize, m.MaxEntries, want.typ, want.key, want.value, want.max)
		}
	}
	if p := spec.Programs[xdpProgXdpDns]; p == nil || p.Type != ebpf.XDP {
		t.Errorf("program %s: %v", xdpProgXdpDns, p)
	}
}

func TestCompile(t *testing.T) {
	allow := []netip.Prefix{pfx("10.0.0.0/8"), pfx("fd00::/8")}
	for _, tt := range []struct {
		name string
		ls   []Listener
		err  string // "" for none
	}{
		{"ok", testListeners, ""},
		{"none", nil, ""},
		{"no address", []Listener{{ID: 1}}, "listeners[0]: address invalid AddrPort: need an IP address and a port"},
		{"port 0", []Listener{{ID: 1, Addr: ap("0.0.0.0:0")}}, "need an IP address and a port"},
		{"twice", []Listener{{ID: 1, Addr: ap("0.0.0.0:53")}, {ID: 2, Addr: ap("0.0.0.0:53")}}, "listeners[1]: address 0.0.0.0:53 is given twice"},
		{"twice, once v4-mapped", []Listener{{ID: 1, Addr: ap("192.0.2.1:53")}, {ID: 2, Addr: ap("[::ffff:192.0.2.1]:53")}}, "listeners[1]: address 192.0.2.1:53 is given twice"},
		{"shared id, same ACL", []Listener{
			{ID: 1, Addr: ap("0.0.0.0:53"), Allow: allow, ACLDrop: true},
			{ID: 1, Addr: ap("[::]:53"), Allow: []netip.Prefix{pfx("fd00::1/8"), pfx("10.0.0.0/8"), pfx("10.0.0.0/8")}, ACLDrop: true},
		}, ""},
		{"shared id, other allow list", []Listener{
			{ID: 1, Addr: ap("0.0.0.0:53"), Allow: allow, ACLDrop: true},
			{ID: 1, Addr: ap("[::]:53"), Allow: allow[:1], ACLDrop: true},
		}, "listeners[1]: id 1 has another allow list or ACL action than listeners[0]"},
		{"shared id, other action", []Listener{
			{ID: 1, Addr: ap("0.0.0.0:53"), Allow: allow, ACLDrop: true},
			{ID: 1, Addr: ap("[::]:53"), Allow: allow},
		}, "id 1 has another allow list or ACL action"},
		{"bad prefix", []Listener{{ID: 1, Addr: ap("0.0.0.0:53"), Allow: []netip.Prefix{{}}}}, "listeners[0].allow: [0]: "},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := compile(tt.ls)
			switch {
			case tt.err == "" && err != nil:
				t.Errorf("error %v", err)
			case tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)):
				t.Errorf("error %v, want one with %q", err, tt.err)
			}
		})
	}
}

// TestCompileLayout pins the key layouts doc.go describes.
func TestCompileLayout(t *testing.T) {
	tb, err := compile([]Listener{
		{ID: 0x01020304, Addr: ap("192.0.2.1:53"), Allow: []netip.Prefix{pfx("10.1.2.3/8")}, ACLDrop: true},
		{ID: 7, Addr: ap("[::]:853"), Allow: []netip.Prefix{pfx("fd00::/8")}, Answers: true},
		{ID: 9, Addr: ap("[::1]:53")},
	})
	if err != nil {
		t.Fatal(err)
	}
	k4 := xdpListenerKey{Port: hton16(53), Family: 4, Addr: [16]byte{10: 0xff, 11: 0xff, 12: 192, 13: 0, 14: 2, 15: 1}}
	k6 := xdpListenerKey{Port: hton16(853), Family: 6}
	if v := tb.listeners[k4]; v != (xdpListenerValue{Id: 0x01020304, Flags: flagACLDrop | flagACL}) {
		t.Errorf("listeners[%+v] = %+v", k4, v)
	}
	if v, ok := tb.listeners[k6]; !ok || v != (xdpListenerValue{Id: 7, Flags: flagACL | flagAnswers}) {
		t.Errorf("listeners[%+v] = %+v", k6, v)
	}
	k61 := xdpListenerKey{Port: hton16(53), Family: 6, Addr: [16]byte{15: 1}}
	if v, ok := tb.listeners[k61]; !ok || v != (xdpListenerValue{Id: 9}) {
		t.Errorf("listeners[%+v] = %+v", k61, v)
	}
	a4 := xdpAcl4Key{Prefixlen: 40, Id: hton32(0x01020304), Addr: [4]byte{10}}
	if _, ok := tb.acl4[a4]; !ok || len(tb.acl4) != 1 {
		t.Errorf("acl4 = %+v, want only %+v", tb.acl4, a4)
	}
	a6 := xdpAcl6Key{Prefixlen: 40, Id: hton32(7), Addr: [16]byte{0xfd}}
	if _, ok := tb.acl6[a6]; !ok || len(tb.acl6) != 1 {
		t.Errorf("acl6 = %+v, want only %+v", tb.acl6, a6)
	}
	if b := binary.NativeEndian.AppendUint16(nil, k4.Port); b[0] != 0 || b[1] != 53 {
		t.Errorf("port bytes %v in memory, want network order", b)
	}
	if b := binary.NativeEndian.AppendUint32(nil, a4.Id); b[0] != 1 || b[3] != 4 {
		t.Errorf("id bytes %v in memory, want network order", b)
	}
}
