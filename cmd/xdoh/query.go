package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/miekg/dns"

	"xdoh/forwarder/upstream"
)

// queryArgs is what `xdoh query` was asked.
type queryArgs struct {
	server  string // host or host:port
	name    string
	qtype   uint16
	tcp     bool
	dohURL  string
	caFile  string
	timeout time.Duration
}

func parseQueryArgs(args []string) (*queryArgs, error) {
	q := &queryArgs{server: "127.0.0.1", qtype: dns.TypeA, timeout: 5 * time.Second}
	var pos []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		value := func() (string, error) {
			if k := strings.IndexByte(a, '='); k >= 0 {
				return a[k+1:], nil
			}
			if i+1 >= len(args) {
				return "", usagef("%s needs a value", a)
			}
			i++
			return args[i], nil
		}
		var err error
		switch flagName := strings.SplitN(strings.TrimLeft(a, "-"), "=", 2)[0]; {
		case !strings.HasPrefix(a, "-"):
			if strings.HasPrefix(a, "@") {
				q.server = a[1:]
			} else {
				pos = append(pos, a)
			}
		case flagName == "tcp":
			q.tcp = true
		case flagName == "doh":
			q.dohURL, err = value()
		case flagName == "ca-file":
			q.caFile, err = value()
		case flagName == "timeout":
			var v string
			if v, err = value(); err == nil {
				q.timeout, err = time.ParseDuration(v)
			}
		default:
			return nil, usagef("unknown flag %s", a)
		}
		if err != nil {
			return nil, usagef("%s: %v", a, err)
		}
	}
	switch len(pos) {
	case 1:
	case 2:
		t, ok := dns.StringToType[strings.ToUpper(pos[1])]
		if !ok {
			return nil, usagef("unknown query type %q", pos[1])
		}
		q.qtype = t
	default:
		return nil, usagef("want [@server[:port]] NAME [TYPE]")
	}
	q.name = dns.Fqdn(pos[0])
	if _, ok := dns.IsDomainName(q.name); !ok {
		return nil, usagef("%q is not a domain name", pos[0])
	}
	if _, _, err := net.SplitHostPort(q.server); err != nil {
		q.server = net.JoinHostPort(strings.Trim(q.server, "[]"), "53")
	}
	return q, nil
}

// cmdQuery is a small dig: it prints the answer, rcode, flags and the transport used.
func cmdQuery(args []string, out io.Writer) error {
	q, err := parseQueryArgs(args)
	if err != nil {
		return err
	}
	m := new(dns.Msg)
	m.SetQuestion(q.name, q.qtype)
	m.SetEdns0(1232, false)

	ctx, cancel := context.WithTimeout(context.Background(), q.timeout)
	defer cancel()
	start := time.Now()
	var resp *dns.Msg
	var transport string
	switch {
	case q.dohURL != "":
		transport = "DoH " + q.dohURL
		up, err := upstream.New(q.dohURL, upstream.Options{CAFile: q.caFile, Timeout: q.timeout})
		if err != nil {
			return err
		}
		defer up.Close()
		wire, err := m.Pack()
		if err != nil {
			return fmt.Errorf("packing query: %w", err)
		}
		b, err := upstream.Exchange(ctx, up, wire)
		if err != nil {
			return fmt.Errorf("querying %s: %w", q.dohURL, err)
		}
		resp = new(dns.Msg)
		if err := resp.Unpack(b); err != nil {
			return fmt.Errorf("unpacking response: %w", err)
		}
	default:
		net := "udp"
		if q.tcp {
			net = "tcp"
		}
		c := &dns.Client{Net: net, Timeout: q.timeout}
		resp, _, err = c.ExchangeContext(ctx, m, q.server)
		if err == nil && resp.Truncated && !q.tcp {
			fmt.Fprintln(out, ";; truncated over UDP, retrying over TCP")
			net = "tcp"
			c.Net = net
			resp, _, err = c.ExchangeContext(ctx, m, q.server)
		}
		if err != nil {
			return fmt.Errorf("querying %s over %s: %w", q.server, net, err)
		}
		transport = strings.ToUpper(net) + " " + q.server
	}
	rtt := time.Since(start)
	fmt.Fprintln(out, resp.String())
	fmt.Fprintf(out, ";; TRANSPORT: %s\n;; RCODE: %s\n;; Query time: %s\n", transport, dns.RcodeToString[resp.Rcode], rtt.Round(10*time.Microsecond))
	if resp.Rcode != dns.RcodeSuccess && resp.Rcode != dns.RcodeNameError {
		return fmt.Errorf("server answered %s", dns.RcodeToString[resp.Rcode])
	}
	return nil
}
