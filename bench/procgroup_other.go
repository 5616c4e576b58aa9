//go:build !unix

package bench

import "os/exec"

// ownProcessGroup does nothing where there are no process groups: the
// comparison pins and measures processes through taskset and /proc, which
// only Linux has, so on other systems it builds but does not run.
func ownProcessGroup(cmd *exec.Cmd) {}

// signalGroup ends cmd's process alone: there is no group to signal and no
// SIGTERM to send, so a stop is a kill.
func signalGroup(cmd *exec.Cmd, kill bool) { _ = cmd.Process.Kill() }
