package scripts

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestNoCompiledBinaryTracked: a compiled `podium` binary committed at the
// root would weigh megabytes in every clone. Build output belongs in bin/,
// which .gitignore covers, as it covers ./podium.
func TestNoCompiledBinaryTracked(t *testing.T) {
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("git", "-C", root, "ls-files", "-z").Output()
	if err != nil {
		t.Fatalf("git ls-files: %v", err)
	}
	files := strings.Split(strings.TrimRight(string(out), "\x00"), "\x00")
	if len(files) < 50 {
		t.Fatalf("git lists only %d files; the check would check nothing", len(files))
	}
	for _, f := range files {
		fh, err := os.Open(filepath.Join(root, f))
		if err != nil {
			continue // deleted in the work tree
		}
		head := make([]byte, 4)
		n, _ := fh.Read(head)
		fh.Close()
		if bytes.Equal(head[:n], []byte("\x7fELF")) {
			t.Errorf("%s is a compiled binary; remove it (git rm --cached) and ignore it", f)
		}
	}
	for _, built := range []string{"podium", "bin/podium"} {
		if err := exec.Command("git", "-C", root, "check-ignore", "-q", built).Run(); err != nil {
			t.Errorf("git check-ignore %s: %v; .gitignore must cover build output", built, err)
		}
	}
}
