package main

// The systemd integration: the unit in deploy/systemd passes
// systemd-analyze verify, and the process sends READY=1 only when its
// listeners answer, RELOADING=1/READY=1 around a SIGHUP and STOPPING=1 on
// SIGTERM.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"xdoh/datapath/xsk/xsktest"
	"xdoh/forwarder/upstream"
)

// TestSystemdUnitVerifies runs systemd-analyze verify on the unit and its
// XDP drop-in, with /usr/bin/xdoh pointing at the binary under test (verify
// checks that ExecStart's program exists). Any message fails the test: an
// unknown directive or system call is only a warning to systemd.
func TestSystemdUnitVerifies(t *testing.T) {
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Skip("systemd-analyze not installed; .ci/run installs systemd")
	}
	unit, err := os.ReadFile("../../deploy/systemd/xdoh.service")
	if err != nil {
		t.Fatal(err)
	}
	dropIn, err := os.ReadFile("../../deploy/systemd/xdoh.service.d/xdp.conf")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(unit), "ExecStart=/usr/bin/xdoh run") {
		t.Fatal("the unit does not start /usr/bin/xdoh run")
	}
	verify := func(dropIn string) string {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "xdoh.service"), []byte(strings.ReplaceAll(string(unit), "/usr/bin/xdoh", xdohBin)), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Mkdir(filepath.Join(dir, "xdoh.service.d"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "xdoh.service.d", "xdp.conf"), []byte(dropIn), 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command("systemd-analyze", "verify", "--man=no", filepath.Join(dir, "xdoh.service")).CombinedOutput()
		if err != nil {
			return fmt.Sprintf("%v\n%s", err, out)
		}
		return string(out)
	}
	if out := verify(string(dropIn)); out != "" {
		t.Fatalf("systemd-analyze verify:\n%s", out)
	}
	// The drop-in is read: a bad line in it is reported.
	if out := verify(string(dropIn) + "SystemCallFilter=no_such_call\n"); !strings.Contains(out, "no_such_call") {
		t.Fatalf("systemd-analyze verify did not read the drop-in:\n%s", out)
	}
}

// TestSystemdNotify runs xdoh with NOTIFY_SOCKET on a socket of the test's
// and a listener of every transport: when READY=1 arrives, each must answer
// a query at the first try, and /readyz must say ready.
func TestSystemdNotify(t *testing.T) {
	dir := t.TempDir()
	ca, cert, key := writePKI(t, dir)
	addr, dohAddr, dotAddr, doqAddr, metricsAddr := freeAddr(t), freeAddr(t), freeAddr(t), freeAddr(t), freeAddr(t)
	zone, err := filepath.Abs(filepath.Join("demo", "aws.example.internal.zone"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "xdoh.yaml")
	text := fmt.Sprintf(`listeners:
  - name: inbound
    protocols: [do53, doh, dot, doq]
    do53: [%q]
    doh: {address: %q, path: /q, cert: %s, key: %s}
    dot: {address: %q, cert: %s, key: %s}
    doq: {address: %q, cert: %s, key: %s}
zones: [{name: aws.example.internal, file: %s}]
metrics: {address: %q}
`, addr, dohAddr, cert, key, dotAddr, cert, key, doqAddr, cert, key, zone, metricsAddr)
	if err := os.WriteFile(cfg, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	stderr := &syncBuffer{}
	sockPath := filepath.Join(dir, "notify.sock")
	sock, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sockPath, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer sock.Close()
	next := func(want string) {
		t.Helper()
		buf := make([]byte, 4096)
		_ = sock.SetReadDeadline(time.Now().Add(20 * time.Second))
		n, err := sock.Read(buf)
		if err != nil {
			t.Fatalf("waiting for %s from xdoh: %v\n%s", want, err, stderr.String())
		}
		if got := string(buf[:n]); got != want {
			t.Fatalf("xdoh sent %q, want %q", got, want)
		}
	}

	cmd := exec.Command(xdohBin, "run", "-c", cfg)
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+sockPath)
	cmd.Stderr = stderr
	exited, waitErr := startProc(t, cmd)

	next("READY=1")
	// The process's own readiness queries were answered over every
	// transport before it said so.
	resp, err := http.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	for _, tr := range []string{"UDP", "TCP", "DoH", "DoT", "DoQ"} {
		re := regexp.MustCompile(fmt.Sprintf(`(?m)^xdoh_responses_total\{listener="inbound",rcode="FORMERR",transport=%q\} [1-9]`, tr))
		if !re.Match(metrics) {
			t.Errorf("at READY=1 the metrics count no FORMERR answer (the readiness query's) over %s", tr)
		}
	}
	if t.Failed() {
		t.Fatalf("metrics:\n%s", grepLines(string(metrics), "xdoh_responses_total"))
	}
	pem, err := os.ReadFile(ca)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	queryAll(t, addr, dohAddr, dotAddr, doqAddr, roots)
	resp, err = http.Get("http://" + metricsAddr + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/readyz after READY=1: %s", resp.Status)
	}

	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	next("RELOADING=1")
	next("READY=1")
	for end := time.Now().Add(5 * time.Second); !strings.Contains(stderr.String(), "msg=reloaded"); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(end) { // stderr comes through a pipe, after READY=1
			t.Fatalf("no reload in the log:\n%s", stderr.String())
		}
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	next("STOPPING=1")
	select {
	case <-exited:
		if err := waitErr(); err != nil {
			t.Fatalf("xdoh exited: %v\n%s", err, stderr.String())
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("xdoh did not stop\n%s", stderr.String())
	}
}

// queryAll asks each listener once for a name of the local zone; every
// one must answer with its address.
func queryAll(t *testing.T, addr, dohAddr, dotAddr, doqAddr string, roots *x509.CertPool) {
	t.Helper()
	m := new(dns.Msg).SetQuestion("ipv4.aws.example.internal.", dns.TypeA)
	wire, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	check := func(how string, r *dns.Msg, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", how, err)
		}
		if len(r.Answer) != 1 || !strings.Contains(r.Answer[0].String(), "10.2.1.10") {
			t.Fatalf("%s answered:\n%v", how, r)
		}
	}
	for _, c := range []*dns.Client{
		{Net: "udp", Timeout: 2 * time.Second},
		{Net: "tcp", Timeout: 2 * time.Second},
	} {
		r, _, err := c.Exchange(m, addr)
		check(c.Net, r, err)
	}
	dot := &dns.Client{Net: "tcp-tls", Timeout: 2 * time.Second}
	dot.TLSConfig = &tls.Config{RootCAs: roots, ServerName: "localhost"}
	r, _, err := dot.Exchange(m, dotAddr)
	check("dot", r, err)
	for _, target := range []string{"https://" + dohAddr + "/q", "quic://" + doqAddr} {
		u, err := upstream.New(target, upstream.Options{RootCAs: roots, ServerName: "localhost", Timeout: 2 * time.Second, Conns: 1})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		b, err := upstream.Exchange(ctx, u, wire)
		cancel()
		u.Close()
		r := new(dns.Msg)
		if err == nil {
			err = r.Unpack(b)
		}
		check(target, r, err)
	}
}

// unitCaps is the AmbientCapabilities of a unit file's text.
func unitCaps(text string) []string {
	var caps []string
	for _, l := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(l, "AmbientCapabilities="); ok {
			caps = append(caps, strings.Fields(v)...)
		}
	}
	return caps
}

// TestSystemdXDPCapabilities runs xdoh as an unprivileged user with the
// capabilities the unit and its XDP drop-in grant, on a veth in namespaces
// of the test's own with xdp mode native: it answers through AF_XDP. Then
// without each of the drop-in's capabilities in turn: the start fails.
func TestSystemdXDPCapabilities(t *testing.T) {
	for _, tool := range []string{"setpriv", "prlimit"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (util-linux)", tool)
		}
	}
	p := xsktest.NewPair(t, 1)
	unit, err := os.ReadFile("../../deploy/systemd/xdoh.service")
	if err != nil {
		t.Fatal(err)
	}
	dropIn, err := os.ReadFile("../../deploy/systemd/xdoh.service.d/xdp.conf")
	if err != nil {
		t.Fatal(err)
	}
	base, xdpCaps := unitCaps(string(unit)), unitCaps(string(dropIn))
	if len(base) == 0 || len(xdpCaps) == 0 {
		t.Fatalf("no AmbientCapabilities in the unit (%v) or the drop-in (%v)", base, xdpCaps)
	}
	// A directory the unprivileged user can read, with the binary in it.
	dir, err := os.MkdirTemp("", "xdoh-caps-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin, err := os.ReadFile(xdohBin)
	if err != nil {
		t.Fatal(err)
	}
	zone, err := os.ReadFile(filepath.Join("demo", "aws.example.internal.zone"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf(`listeners:
  - name: edge
    protocols: [do53]
    do53: ["%s:53"]
    xdp: {mode: native, interfaces: [%s]}
zones: [{name: aws.example.internal, file: zone}]
`, p.Server4, p.ServerIf)
	for name, b := range map[string][]byte{"xdoh": bin, "zone": zone, "xdoh.yaml": []byte(cfg)} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// run starts xdoh as nobody with caps; it returns the log once xdoh
	// is running or has exited, and whether it is running.
	run := func(t *testing.T, caps []string) (string, bool) {
		var set []string
		for _, c := range caps {
			set = append(set, "+"+strings.ToLower(strings.TrimPrefix(c, "CAP_")))
		}
		list := "-all," + strings.Join(set, ",")
		logFile := filepath.Join(t.TempDir(), "xdoh.log")
		// RLIMIT_MEMLOCK as systemd's default (8 MiB), below one UMEM.
		_, exited := startInNS(t, p.ServerNS, logFile, "prlimit", "--memlock=8388608:8388608", "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
			"--inh-caps="+list, "--ambient-caps="+list, "--bounding-set="+list, "--no-new-privs",
			filepath.Join(dir, "xdoh"), "run", "-c", filepath.Join(dir, "xdoh.yaml"))
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			log, _ := os.ReadFile(logFile)
			select {
			case <-exited:
				log, _ = os.ReadFile(logFile)
				return string(log), false
			default:
			}
			if strings.Contains(string(log), `msg="xdoh running"`) {
				return string(log), true
			}
			if time.Now().After(deadline) {
				t.Fatalf("xdoh neither ran nor exited within 20 s:\n%s", log)
			}
		}
	}

	t.Run("all", func(t *testing.T) { // its xdoh stops (and detaches) at the subtest's end
		log, ok := run(t, append(base, xdpCaps...))
		if !ok || !strings.Contains(log, `transport="do53 (udp) via af_xdp"`) {
			t.Fatalf("with %v xdoh does not serve through AF_XDP:\n%s", append(base, xdpCaps...), log)
		}
		if strings.Contains(log, "do53 sockets not steered") { // bpf.SteerReuseport needs CAP_BPF too
			t.Errorf("with %v xdoh cannot steer its Do53 sockets for restarts:\n%s", append(base, xdpCaps...), log)
		}
		var r *dns.Msg
		err := xsktest.In(p.ClientNS, func() error {
			var err error
			r, _, err = (&dns.Client{Timeout: 2 * time.Second}).Exchange(new(dns.Msg).SetQuestion("ipv4.aws.example.internal.", dns.TypeA), p.Server4+":53")
			return err
		})
		if err != nil || len(r.Answer) != 1 || !strings.Contains(r.Answer[0].String(), "10.2.1.10") {
			t.Fatalf("query through AF_XDP: %v %v", r, err)
		}
	})
	// What fails without each (the drop-in's comments say why it is there).
	why := map[string]string{
		"CAP_BPF":       "map create: operation not permitted",
		"CAP_PERFMON":   "load program: permission denied",
		"CAP_NET_ADMIN": "operation not permitted",
		"CAP_NET_RAW":   "creating AF_XDP socket: operation not permitted",
		"CAP_IPC_LOCK":  "registering the UMEM",
	}
	for i, c := range xdpCaps {
		t.Run("without "+c, func(t *testing.T) {
			caps := append(append([]string(nil), base...), xdpCaps[:i]...)
			caps = append(caps, xdpCaps[i+1:]...)
			log, ok := run(t, caps)
			if ok {
				t.Fatalf("xdoh started with xdp mode native without %s:\n%s", c, log)
			}
			if !strings.Contains(log, "xdp on "+p.ServerIf) || !strings.Contains(log, why[c]) {
				t.Fatalf("without %s xdoh failed, but not setting up XDP for want of it (%q):\n%s", c, why[c], log)
			}
			t.Log(tail(log, 1))
		})
	}
}

// TestAwaitAnswers: readiness waits for an answer, not for a bound socket:
// a UDP socket and a TCP listener that never answer hold it back until the
// deadline, and the error names the target; a server that answers (with
// the FORMERR xdoh gives the readiness query) passes.
func TestAwaitAnswers(t *testing.T) {
	srv := &dns.Server{Addr: "127.0.0.1:0", Net: "udp", Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		_ = w.WriteMsg(new(dns.Msg).SetRcode(r, dns.RcodeFormatError))
	})}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	go func() { _ = srv.ListenAndServe() }()
	<-started
	defer srv.Shutdown()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := awaitAnswers(ctx, []probe{{listener: "answers", target: "udp://" + srv.PacketConn.LocalAddr().String()}}); err != nil {
		t.Fatalf("awaitAnswers against a server that answers: %v", err)
	}

	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() { // accept and read, never answer
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = c.Read(make([]byte, 512)); time.Sleep(5 * time.Second) }()
		}
	}()
	for _, target := range []string{"udp://" + pc.LocalAddr().String(), "tcp://" + ln.Addr().String()} {
		t.Run(target[:3], func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
			defer cancel()
			start := time.Now()
			err := awaitAnswers(ctx, []probe{{listener: "silent", target: target}})
			if err == nil || !strings.Contains(err.Error(), target) || !strings.Contains(err.Error(), `"silent"`) {
				t.Fatalf("awaitAnswers = %v, want an error naming %s", err, target)
			}
			if d := time.Since(start); d < time.Second {
				t.Fatalf("gave up after %v, before the deadline", d)
			}
		})
	}
}
