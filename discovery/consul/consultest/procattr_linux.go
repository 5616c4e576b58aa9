package consultest

import "syscall"

// agentProcAttr puts the agent in a process group of its own, so that a ^C
// aimed at `go test` does not reach it before Cleanup stops it in order,
// and has the kernel send it SIGTERM when the test binary dies without
// running Cleanup (a -timeout panic, a SIGKILL).
func agentProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
}
