package bench

import (
	"fmt"
	"os"
	"testing"
)

// childEnv makes the test binary act as `podium bench ...`, so the compare
// harness can start its upstream and generator children from a test
// without building cmd/podium.
const childEnv = "PODIUM_BENCH_TEST_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "1" {
		os.Exit(childMain(os.Args[1:]))
	}
	os.Exit(m.Run())
}

func childMain(args []string) int {
	if len(args) < 2 || args[0] != "bench" {
		fmt.Fprintf(os.Stderr, "test child: want bench run|upstream, got %q\n", args)
		return 2
	}
	var err error
	switch args[1] {
	case "run":
		err = RunCommand(args[2:], os.Stdout, os.Stderr)
	case "upstream":
		err = UpstreamCommand(args[2:], os.Stderr)
	default:
		err = fmt.Errorf("unknown command %q", args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "test child:", err)
		return 1
	}
	return 0
}
