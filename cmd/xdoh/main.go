// Command xdoh is the edge DNS forwarder: one binary with the subcommands
//
//	xdoh run   -c xdoh.yaml | --listen ADDR --upstream URL [--ca-file F] [--no-cache] | --demo
//	xdoh check -c xdoh.yaml
//	xdoh ctl   -s /run/xdoh.sock stats | cache flush|dump ... | upstreams | upstream drain|undrain T | reload
//	xdoh reload -s /run/xdoh.sock   (xdoh ctl reload)
//	xdoh query [@server[:port]] NAME [TYPE] [--tcp] [--doh URL] [--ca-file F]
//	xdoh bench [-d FILE | --random-sub D | --pcap F] [-c N] [-q N | -Q QPS] [-l S] TARGET
//	xdoh version
//
// It is the composition root: it reads the config, builds the forwarder
// pipeline, the upstreams and zones, and starts the datapaths. Everything else
// lives in packages. Under systemd (deploy/systemd/xdoh.service, Type=notify)
// it sends READY=1 once every listener answers queries (ready.go).
package main

import (
	"errors"
	"fmt"
	"os"
)

// usageError marks command-line and config errors: exit status 2.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// usagef makes a usageError.
func usagef(format string, a ...any) error { return usageError{fmt.Errorf(format, a...)} }

const usage = `xdoh — edge DNS forwarder (Do53/DoH in, DoH/Do53 out)

usage:
  xdoh run   [-c FILE] [--listen IP:PORT]... [--upstream URL]... [--ca-file F] [--no-cache] [--demo]
  xdoh check -c FILE
  xdoh ctl   -s SOCKET | -c FILE COMMAND   operator commands on the control socket:
             stats | cache flush [NAME [TYPE]] | cache dump [NAME] | upstreams |
             upstream drain|undrain TARGET | reload
  xdoh reload -s SOCKET | -c FILE      (xdoh ctl reload; also: kill -HUP)
  xdoh query [@server[:port]] NAME [TYPE] [--tcp] [--doh URL] [--ca-file F] [--timeout D]
  xdoh bench [-d FILE | --random-sub D | --pcap F] [-c N] [-q N | -Q QPS] [-l S] [--json F] TARGET
  xdoh version
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "run":
		err = cmdRun(os.Args[2:])
	case "check":
		err = cmdCheck(os.Args[2:], os.Stdout)
	case "query":
		err = cmdQuery(os.Args[2:], os.Stdout)
	case "bench":
		err = cmdBench(os.Args[2:], os.Stdout, os.Stderr)
	case "ctl":
		err = cmdCtl(os.Args[2:], os.Stdout)
	case "reload":
		err = cmdReload(os.Args[2:], os.Stdout)
	case "version":
		err = cmdVersion(os.Stdout)
	case "-h", "--help", "help":
		fmt.Print(usage)
		return
	default:
		err = usagef("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "xdoh %s: %v\n", os.Args[1], err)
		os.Exit(exitStatus(err))
	}
}

// exitStatus is the exit status for a command's error: 2 for usage
// errors, 1 for the rest, 0 for none.
func exitStatus(err error) int {
	switch ue := (usageError{}); {
	case err == nil:
		return 0
	case errors.As(err, &ue):
		return 2
	default:
		return 1
	}
}
