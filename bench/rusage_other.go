//go:build !unix

package bench

import "os"

// cpuUse is empty where getrusage(2) does not exist: the generator's own
// cost is then reported as zero, and its figures without it.
type cpuUse struct{}

func rusage() cpuUse { return cpuUse{} }

func generatorCost(a, b cpuUse, requests int64) GeneratorCost {
	return GeneratorCost{PID: os.Getpid()}
}
