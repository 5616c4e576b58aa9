package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/podium-edge/podium/bench"
)

// runBench dispatches `podium bench run|compare|upstream|waitroom`. Each subcommand
// parses its own flag.FlagSet; -h returns flag.ErrHelp.
func runBench(args []string) error {
	usage := func() {
		fmt.Fprint(os.Stderr, `usage: podium bench <command> [flags]

commands:
  run       load one scenario against a target (podium bench run -target URL -scenario ticket-drop)
  compare   run the side-by-side comparison: direct, Podium, HAProxy, nginx (what make bench calls)
  upstream  serve the synthetic fixed-response upstream (podium bench upstream -listen 127.0.0.1:9101)
  waitroom  the waiting room's load test and cost figure against an edge it starts (scripts/bench-waitroom.sh)

Run "podium bench <command> -h" for its flags.
`)
	}
	if len(args) == 0 {
		usage()
		return flag.ErrHelp
	}
	switch args[0] {
	case "run":
		return bench.RunCommand(args[1:], os.Stdout, os.Stderr)
	case "compare":
		return bench.CompareCommand(args[1:], os.Stdout, os.Stderr)
	case "upstream":
		return bench.UpstreamCommand(args[1:], os.Stderr)
	case "waitroom":
		return bench.WaitroomCommand(args[1:], os.Stdout, os.Stderr)
	case "-h", "-help", "--help", "help":
		usage()
		return flag.ErrHelp
	}
	usage()
	return fmt.Errorf("unknown bench command %q", args[0])
}
