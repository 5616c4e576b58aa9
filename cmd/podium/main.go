// Command podium is the single Podium binary: the edge proxy, the ticket
// origin and the bench suite, chosen by the first argument.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

type subcommand struct {
	name    string
	summary string
	run     func(args []string) error
}

func subcommands() []subcommand {
	return []subcommand{
		{"edge", "run the edge reverse proxy (podium edge -config edge.yaml)", runEdge},
		{"origin", "run the ticket service (podium origin -h; podium origin migrate)", runOrigin},
		{"bench", "run load scenarios and peer comparisons (podium bench -h)", runBench},
		{"smoke", "check a running stack: /ping on edge and origins, one listing, one detail (podium smoke -h)", runSmoke},
		{"version", "print the version", func([]string) error { fmt.Println("podium", version); return nil }},
	}
}

func usage() {
	fmt.Fprintf(os.Stderr, "usage: podium <command> [flags]\n\ncommands:\n")
	for _, c := range subcommands() {
		fmt.Fprintf(os.Stderr, "  %-8s %s\n", c.name, c.summary)
	}
}

func main() {
	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}
	name, args := os.Args[1], os.Args[2:]
	for _, c := range subcommands() {
		if c.name != name {
			continue
		}
		err := c.run(args)
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "podium %s: %v\n", name, err)
			os.Exit(1)
		}
		return
	}
	if name == "-h" || name == "--help" || name == "help" {
		usage()
		return
	}
	fmt.Fprintf(os.Stderr, "podium: unknown command %q\n", name)
	usage()
	os.Exit(2)
}
