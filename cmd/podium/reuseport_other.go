//go:build !unix

package main

import "syscall"

// reusePortControl does nothing where SO_REUSEPORT does not exist: the
// edge still starts with the default reuse_port: true, and a second edge
// on the same port fails to bind with "address already in use", which says
// what happened. The zero-downtime handover needs a Unix kernel.
func reusePortControl(network, address string, c syscall.RawConn) error { return nil }
