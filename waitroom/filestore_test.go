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

// TestFileStoreStateDir: the store makes its directory 0700 and refuses
// one that group or others can write, one owned by another user, a
// symlink for the directory and a symlink planted for a history file
// (review 18, 13: whoever writes the history decides who is admitted).
func TestFileStoreStateDir(t *testing.T) {
	c := Checkpoint{Ms: 30, W: Place{Ms: 8}}
	base := t.TempDir()

	made := filepath.Join(base, "made", "here")
	if err := (&FileStore{Dir: made}).Append("final/1", c); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(made); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("made state dir: %v, %v; want mode 0700", fi.Mode().Perm(), err)
	}

	open := filepath.Join(base, "open")
	os.Mkdir(open, 0o700)
	os.Chmod(open, 0o770)
	link := filepath.Join(base, "link")
	os.Symlink(made, link)
	planted := filepath.Join(base, "planted")
	os.Mkdir(planted, 0o700)
	os.Symlink(filepath.Join(made, "final.1.log"), filepath.Join(planted, "final.1.log"))
	cases := []struct{ name, dir, want string }{
		{"group-writable", open, "lets group or others write it"},
		{"dir a symlink", link, "is not a directory"},
		{"history a symlink", planted, "symbolic links"},
	}
	if os.Geteuid() == 0 {
		other := filepath.Join(base, "other")
		os.Mkdir(other, 0o700)
		if err := os.Chown(other, 65534, 65534); err != nil {
			t.Fatal(err)
		}
		cases = append(cases, struct{ name, dir, want string }{"another user's", other, "owned by uid 65534"})
	} else {
		t.Log("not root: the other owner's directory is not made")
	}
	for _, tc := range cases {
		s := &FileStore{Dir: tc.dir}
		_, lerr := s.Load("final/1")
		aerr := s.Append("final/1", c)
		for _, err := range []error{lerr, aerr} {
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("%s: Load, Append errors %v, %v; want both to say %q", tc.name, lerr, aerr, tc.want)
				break
			}
		}
	}
	if data, _ := os.ReadFile(filepath.Join(made, "final.1.log")); string(data) != "30 8 0\n" {
		t.Errorf("the symlink's target was written: %q", data)
	}
}

// TestFileStoreControl: a control saved comes back; none saved is none;
// a file that is not a control is an error naming it.
func TestFileStoreControl(t *testing.T) {
	dir := t.TempDir()
	s := &FileStore{Dir: dir}
	if _, ok, err := s.LoadControl("final/1"); ok || err != nil {
		t.Fatalf("nothing saved: %v, %v", ok, err)
	}
	want := Control{Status: "closed", Rate: 7.5, ConfigRate: 2}
	if err := s.SaveControl("final/1", want); err != nil {
		t.Fatal(err)
	}
	if got, ok, err := s.LoadControl("final/1"); !ok || err != nil || got != want {
		t.Errorf("LoadControl = %+v, %v, %v; want %+v", got, ok, err, want)
	}
	if _, ok, _ := s.LoadControl("final/2"); ok {
		t.Error("another epoch's control loaded")
	}
	os.WriteFile(filepath.Join(dir, "final.1.control"), []byte("sold 1 2\n"), 0o600)
	if _, _, err := s.LoadControl("final/1"); err == nil || !strings.Contains(err.Error(), "final.1.control: not a room control") {
		t.Errorf("a bad control: %v", err)
	}
}
