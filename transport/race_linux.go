//go:build linux && !portable && race

package transport

import (
	"runtime"
	"syscall"
	"unsafe"
)

// The edge's raw sendto/recvfrom/writev (see upstreamConn, clientConn)
// bypass syscall.Write and syscall.Read, which tell the race detector that
// what a goroutine did before sending on a socket happens before what the
// reader does after receiving. These restore that in race builds, with the
// same annotations on the same variable: syscall.Write to fd -1 merges the
// release before it fails; a zero-length syscall.Read on the socket
// acquires; the buffers are marked read and written as syscall's are.

func raceSend(p []byte) {
	_, _ = syscall.Write(-1, nil)
	if len(p) > 0 {
		runtime.RaceReadRange(unsafe.Pointer(unsafe.SliceData(p)), len(p))
	}
}

func raceRecv(fd uintptr, p []byte) {
	if len(p) > 0 {
		runtime.RaceWriteRange(unsafe.Pointer(unsafe.SliceData(p)), len(p))
	}
	_, _ = syscall.Read(int(fd), nil)
}
