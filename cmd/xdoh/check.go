package main

import (
	"flag"
	"fmt"
	"io"

	"xdoh/cmd/xdoh/internal/config"
	"xdoh/datapath/tlsconf"
)

// cmdCheck validates a config file, including that its zones load.
func cmdCheck(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	path := fs.String("c", "", "config file")
	resolvConf := fs.String("resolv-conf", config.ResolvConf, "the system resolver's configuration, to refuse upstreams named by host that would resolve through xdoh itself")
	if err := fs.Parse(args); err != nil {
		return usagef("%v", err)
	}
	if *path == "" {
		return usagef("-c FILE is required")
	}
	cfg, err := config.Load(*path)
	if err != nil {
		return usagef("%v", err)
	}
	if err := cfg.CheckSelfResolution(*resolvConf); err != nil {
		return usagef("%v", err)
	}
	if _, err := loadZones(cfg); err != nil {
		return usagef("%v", err)
	}
	if err := checkFIPS(cfg); err != nil {
		return err
	}
	fmt.Fprintf(out, "%s: OK (%d listeners, %d zones, %d rules); %s\n", *path, len(cfg.Listeners), len(cfg.Zones), len(cfg.Rules), tlsconf.FIPSStatus())
	return nil
}
