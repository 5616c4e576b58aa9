//go:build !linux

package consultest

import "syscall"

// agentProcAttr is the default elsewhere: no parent-death signal exists
// outside Linux, so an agent may outlive a test binary killed without its
// Cleanup.
func agentProcAttr() *syscall.SysProcAttr { return nil }
