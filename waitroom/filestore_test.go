package waitroom

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestFileStoreTornThenAppend: a history whose last line was torn by a
// crash takes the next process's appends on a line of their own, so the
// process after that loads every whole checkpoint (review 18, 3: "20 6"
// then "30 8 0" made "20 630 8 0", and the edge no longer started).
func TestFileStoreTornThenAppend(t *testing.T) {
	for _, torn := range []string{"20 6", "2"} {
		t.Run(fmt.Sprintf("%q", torn), func(t *testing.T) {
			dir := t.TempDir()
			file := filepath.Join(dir, "final.1.log")
			if err := os.WriteFile(file, []byte("10 5 7\n"+torn), 0o600); err != nil {
				t.Fatal(err)
			}
			var logged strings.Builder
			s := &FileStore{Dir: dir, Log: newTestLog(&logged)}
			if err := s.Append("final/1", Checkpoint{Ms: 30, W: Place{Ms: 8}}); err != nil {
				t.Fatal(err)
			}
			s.Close()
			data, _ := os.ReadFile(file)
			if got, want := string(data), "10 5 7\n30 8 0\n"; got != want {
				t.Errorf("file after the append = %q, want %q", got, want)
			}
			got, err := (&FileStore{Dir: dir}).Load("final/1")
			if want := []Checkpoint{{Ms: 10, W: Place{Ms: 5, TB: 7}}, {Ms: 30, W: Place{Ms: 8}}}; err != nil || fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("Load = %v, %v; want %v", got, err, want)
			}
			if !strings.Contains(logged.String(), "torn last line") {
				t.Errorf("the cut was not logged: %q", logged.String())
			}
		})
	}
	// Only a torn line: the file is emptied, then appended to.
	dir := t.TempDir()
	file := filepath.Join(dir, "final.1.log")
	os.WriteFile(file, []byte("10 5"), 0o600)
	s := &FileStore{Dir: dir}
	if err := s.Append("final/1", Checkpoint{Ms: 30, W: Place{Ms: 8}}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if data, _ := os.ReadFile(file); string(data) != "30 8 0\n" {
		t.Errorf("a file of one torn line after the append = %q, want %q", data, "30 8 0\n")
	}
}
