//go:build unix

package waitroom

import (
	"fmt"
	"io/fs"
	"os"
	"syscall"
)

// oNoFollow makes an open fail on a symlink.
const oNoFollow = syscall.O_NOFOLLOW

// checkOwner refuses a state dir owned by another user than the
// process's effective one.
func checkOwner(dir string, fi fs.FileInfo) error {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	if uid := os.Geteuid(); int(st.Uid) != uid {
		return fmt.Errorf("waitroom: state dir %s: owned by uid %d, not the edge's uid %d; name a directory of the edge's own", dir, st.Uid, uid)
	}
	return nil
}
