//go:build unix

package testport

import (
	"os"
	"path/filepath"
	"strconv"
	"syscall"
)

// claim takes an exclusive lock on a file named for the port in a
// directory every test process on the machine shares, and keeps it open
// until the process exits, when the kernel releases it. False when another
// process holds it.
func claim(port int) bool {
	dir := filepath.Join(os.TempDir(), "podium-testports")
	if err := os.MkdirAll(dir, 0o777); err != nil {
		return true // no shared directory: the bind check alone
	}
	f, err := os.OpenFile(filepath.Join(dir, strconv.Itoa(port)), os.O_CREATE|os.O_RDWR, 0o666)
	if err != nil {
		return true
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return false
	}
	held = append(held, f) // open for the life of the process
	return true
}

// held keeps the claimed lock files open (and reachable, so no finalizer
// closes them).
var held []*os.File
