package waitroom

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
)

// FileStore is a Store in files: one append-only file per key (room,
// epoch and opening) under Dir, a line "ms w_ms w_tb" per checkpoint. Each Append is
// one write(2) on an O_APPEND descriptor, so a crash loses at most the
// line being written; no fsync, since a lost last checkpoint only means
// the restarted gate re-admits from a moment earlier.
//
// Two processes may share Dir (an edge handing over to its successor with
// SO_REUSEPORT): their lines interleave whole, and Load keeps the
// checkpoints that move the watermark forward, which is the later
// writer's view at each point.
//
// Dir is the edge's own: the store creates it 0700 and refuses, with an
// error, a Dir that is not a directory (a symlink included), is owned by
// another user or is writable by group or others, since whoever can write
// the history decides who is admitted. Its files are opened with
// O_NOFOLLOW, so a symlink planted in Dir is refused too.
//
// It is safe for concurrent use; do not copy it after first use. Close
// releases its files.
type FileStore struct {
	Dir string
	// Log, when set, hears of a torn last line that Load ignored.
	Log *slog.Logger

	mu    sync.Mutex // guards files and dirOK
	files map[string]*os.File
	dirOK bool // Dir was made or checked
}

var (
	_ Store     = (*FileStore)(nil)
	_ compacter = (*FileStore)(nil)
)

// path is key's file: the key with "/" as "." and anything else
// unsafe in a file name escaped.
func (s *FileStore) path(key string) string {
	return filepath.Join(s.Dir, url.PathEscape(strings.ReplaceAll(key, "/", "."))+".log")
}

// Append implements Store.
func (s *FileStore) Append(key string, c Checkpoint) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.files[key]
	if f == nil {
		if err := s.checkDir(); err != nil {
			return err
		}
		var err error
		if f, err = os.OpenFile(s.path(key), os.O_RDWR|os.O_APPEND|os.O_CREATE|oNoFollow, 0o600); err != nil {
			return fmt.Errorf("waitroom: admission history: %w", err)
		}
		if err := s.cutTornTail(f); err != nil {
			f.Close()
			return err
		}
		if s.files == nil {
			s.files = map[string]*os.File{}
		}
		s.files[key] = f
	}
	var b [64]byte
	if _, err := f.Write(appendCheckpoint(b[:0], c)); err != nil {
		return fmt.Errorf("waitroom: appending to %s: %w", f.Name(), err)
	}
	return nil
}

// appendCheckpoint appends c's line, "ms w_ms w_tb\n".
func appendCheckpoint(line []byte, c Checkpoint) []byte {
	line = strconv.AppendInt(line, c.Ms, 10)
	line = append(line, ' ')
	line = strconv.AppendInt(line, c.W.Ms, 10)
	line = append(line, ' ')
	line = strconv.AppendUint(line, c.W.TB, 10)
	return append(line, '\n')
}

// Compact replaces key's history file with keep, whole: written to a new
// file (0600, made with O_EXCL in Dir) and renamed over the old one, so a
// crash leaves the old history or the new one. The gate calls it once it
// has dropped as many checkpoints as it keeps, so the file stays within
// about twice the claim window's checkpoints (review 18, 10). A process
// sharing Dir (a handover, see above) that appends to the old file after
// the rename appends to an unlinked file: those checkpoints are lost,
// which costs what a crash costs, a restart re-admitting from a moment
// earlier.
func (s *FileStore) Compact(key string, keep []Checkpoint) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.checkDir(); err != nil {
		return err
	}
	path := s.path(key)
	buf := make([]byte, 0, 48*len(keep))
	for _, c := range keep {
		buf = appendCheckpoint(buf, c)
	}
	if err := replaceFile(s.Dir, ".history-*", path, buf); err != nil {
		return fmt.Errorf("waitroom: compacting admission history %s: %w", path, err)
	}
	// The open descriptor is the old file's: the next Append opens the
	// new one (O_NOFOLLOW, as ever).
	if old := s.files[key]; old != nil {
		old.Close()
		delete(s.files, key)
	}
	return nil
}

// cutTornTail truncates f after its last newline when its last line has
// none (the edge stopped while writing it): appended after it, the next
// line would merge with the torn one into a line that is not a checkpoint
// ("20 6" + "30 8 0\n" is "20 630 8 0"; review 18, 3).
func (s *FileStore) cutTornTail(f *os.File) error {
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("waitroom: admission history: %w", err)
	}
	end := st.Size()
	var buf [512]byte
	for off := end; off > 0; {
		n := min(off, int64(len(buf)))
		off -= n
		if _, err := f.ReadAt(buf[:n], off); err != nil {
			return fmt.Errorf("waitroom: reading %s: %w", f.Name(), err)
		}
		i := bytes.LastIndexByte(buf[:n], '\n')
		if i < 0 {
			if off == 0 {
				return s.truncate(f, 0, end)
			}
			continue
		}
		if cut := off + int64(i) + 1; cut != end {
			return s.truncate(f, cut, end)
		}
		return nil
	}
	return nil
}

// truncate cuts f to cut bytes (of end), logging what it cut.
func (s *FileStore) truncate(f *os.File, cut, end int64) error {
	if s.Log != nil {
		s.Log.Warn("waiting room history: cut a torn last line (the edge stopped while writing it)", "file", f.Name(), "bytes", end-cut)
	}
	if err := f.Truncate(cut); err != nil {
		return fmt.Errorf("waitroom: cutting the torn last line of %s: %w", f.Name(), err)
	}
	return nil
}

// Load implements Store. A last line without its newline (torn by a
// crash) is ignored and logged, and so is any other line that is not a
// checkpoint: a history that cannot be read whole must not stop the edge
// from starting, and what is lost is at most a moment of admissions.
func (s *FileStore) Load(key string) ([]Checkpoint, error) {
	s.mu.Lock()
	err := s.checkDir()
	s.mu.Unlock()
	if err != nil {
		return nil, err
	}
	path := s.path(key)
	data, err := s.readFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("waitroom: reading admission history: %w", err)
	}
	var h []Checkpoint
	for n := 1; len(data) > 0; n++ {
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			if s.Log != nil {
				s.Log.Warn("waiting room history: ignored a torn last line (the edge stopped while writing it)", "file", path, "line", n)
			}
			break
		}
		line := data[:i]
		data = data[i+1:]
		c, ok := parseCheckpoint(line)
		if !ok {
			if s.Log != nil {
				s.Log.Warn("waiting room history: skipped a line that is not a checkpoint (want \"ms w_ms w_tb\")", "file", path, "line", n, "text", string(line))
			}
			continue
		}
		if len(h) > 0 && !h[len(h)-1].W.Before(c.W) {
			continue // another writer's older view; see FileStore
		}
		h = append(h, c)
	}
	return h, nil
}

// readFile reads path, refusing a symlink.
func (s *FileStore) readFile(path string) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|oNoFollow, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(f)
}

// checkDir makes Dir (0700) if it is missing and refuses it unless it is
// a directory of this process's user that group and others cannot write.
// The caller holds s.mu.
func (s *FileStore) checkDir() error {
	if s.dirOK {
		return nil
	}
	if s.Dir == "" {
		return errors.New("waitroom: no state dir: set waiting_room_state_dir")
	}
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return fmt.Errorf("waitroom: state dir: %w", err)
	}
	fi, err := os.Lstat(s.Dir)
	if err != nil {
		return fmt.Errorf("waitroom: state dir: %w", err)
	}
	switch {
	case !fi.IsDir():
		return fmt.Errorf("waitroom: state dir %s: is not a directory (a symlink?); name a directory of the edge's own", s.Dir)
	case fi.Mode().Perm()&0o022 != 0:
		return fmt.Errorf("waitroom: state dir %s: mode %v lets group or others write it (they could plant an admission history); chmod 700 it", s.Dir, fi.Mode().Perm())
	}
	if err := checkOwner(s.Dir, fi); err != nil {
		return err
	}
	s.dirOK = true
	return nil
}

func parseCheckpoint(line []byte) (Checkpoint, bool) {
	f := strings.Fields(string(line))
	if len(f) != 3 {
		return Checkpoint{}, false
	}
	ms, err1 := strconv.ParseInt(f[0], 10, 64)
	wms, err2 := strconv.ParseInt(f[1], 10, 64)
	tb, err3 := strconv.ParseUint(f[2], 10, 64)
	if err1 != nil || err2 != nil || err3 != nil {
		return Checkpoint{}, false
	}
	return Checkpoint{Ms: ms, W: Place{Ms: wms, TB: tb}}, true
}

// Close closes the files Append opened; a later Append opens them again.
func (s *FileStore) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	for k, f := range s.files {
		errs = append(errs, f.Close())
		delete(s.files, k)
	}
	return errors.Join(errs...)
}

// Control is what an operator set on a room through the admin API, kept
// beside its history so that a restarted edge keeps a sold-out room
// closed (review 18, 11).
type Control struct {
	// Status is "open", "paused" or "closed".
	Status string `json:"status"`
	// Rate is the admit_per_second the admin API set; zero when it set
	// none. It holds while the config's admit_per_second is still
	// ConfigRate: an edited config wins.
	Rate       float64 `json:"rate"`
	ConfigRate float64 `json:"config_rate"`
	// MarksClearedMs is when an admin's resume last dropped the room's
	// sold-out marks (Unix ms): an edge that has not dropped them since
	// does. Shared through Consul only; the state dir does not keep it
	// (the marks are not kept either).
	MarksClearedMs int64 `json:"marks_cleared_ms,omitempty"`
}

// controlPath is key's control file.
func (s *FileStore) controlPath(key string) string {
	return strings.TrimSuffix(s.path(key), ".log") + ".control"
}

// SaveControl records c for key (a room and epoch), replacing what was
// there whole: written to a new file and renamed over the old, so a crash
// leaves the old control or the new one.
func (s *FileStore) SaveControl(key string, c Control) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.checkDir(); err != nil {
		return err
	}
	path := s.controlPath(key)
	line := fmt.Appendf(nil, "%s %s %s\n", c.Status, strconv.FormatFloat(c.Rate, 'g', -1, 64), strconv.FormatFloat(c.ConfigRate, 'g', -1, 64))
	if err := replaceFile(s.Dir, ".control-*", path, line); err != nil {
		return fmt.Errorf("waitroom: saving room control %s: %w", path, err)
	}
	return nil
}

// replaceFile replaces path with data whole: written to a new file in dir
// (named by pattern, 0600 as os.CreateTemp makes it), synced, and renamed
// over path, so a crash leaves the old file or the new one, never half.
func replaceFile(dir, pattern, path string, data []byte) error {
	f, err := os.CreateTemp(dir, pattern)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		os.Remove(f.Name())
	}
	return err
}

// LoadControl returns key's control, and false when none was saved.
func (s *FileStore) LoadControl(key string) (Control, bool, error) {
	s.mu.Lock()
	err := s.checkDir()
	s.mu.Unlock()
	if err != nil {
		return Control{}, false, err
	}
	path := s.controlPath(key)
	data, err := s.readFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return Control{}, false, nil
	}
	if err != nil {
		return Control{}, false, fmt.Errorf("waitroom: reading room control: %w", err)
	}
	f := strings.Fields(string(data))
	var c Control
	var err1, err2 error
	if len(f) == 3 {
		c.Status = f[0]
		c.Rate, err1 = strconv.ParseFloat(f[1], 64)
		c.ConfigRate, err2 = strconv.ParseFloat(f[2], 64)
	}
	if len(f) != 3 || err1 != nil || err2 != nil || c.Status != "open" && c.Status != "paused" && c.Status != "closed" {
		return Control{}, false, fmt.Errorf("waitroom: %s: not a room control (want \"open|paused|closed rate config_rate\"): %q; fix or remove it", path, data)
	}
	return c, true, nil
}
