package main

import (
	"flag"
	"fmt"
	"io"

	"xdoh/cmd/xdoh/internal/config"
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
	fmt.Fprintf(out, "%s: OK (%d listeners, %d zones, %d rules)\n", *path, len(cfg.Listeners), len(cfg.Zones), len(cfg.Rules))
	return nil
}
