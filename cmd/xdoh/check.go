package main

import (
	"crypto/fips140"
	"flag"
	"fmt"
	"io"

	"xdoh/cmd/xdoh/internal/config"
	"xdoh/datapath/doh"
)

// cmdCheck validates a config file, including that its zones load.
func cmdCheck(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	path := fs.String("c", "", "config file")
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	if *path == "" {
		return fmt.Errorf("%w: -c FILE is required", errUsage)
	}
	cfg, err := config.Load(*path)
	if err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	if _, err := loadZones(cfg); err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	for i, l := range cfg.Listeners {
		if protos, _ := l.ProtocolSet(); protos["doh-fips"] && !fips140.Enabled() {
			return fmt.Errorf("%w: listeners[%d].protocols: doh-fips needs Go's FIPS 140-3 mode: run with GODEBUG=fips140=on", errUsage, i)
		}
	}
	fmt.Fprintf(out, "%s: OK (%d listeners, %d zones, %d rules); %s\n", *path, len(cfg.Listeners), len(cfg.Zones), len(cfg.Rules), doh.FIPSStatus())
	return nil
}
