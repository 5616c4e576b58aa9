package waitroom

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
)

// FileStore is a Store in files: one append-only file per key (room and
// epoch) under Dir, a line "ms w_ms w_tb" per checkpoint. Each Append is
// one write(2) on an O_APPEND descriptor, so a crash loses at most the
// line being written; no fsync, since a lost last checkpoint only means
// the restarted gate re-admits from a moment earlier.
//
// Two processes may share Dir (an edge handing over to its successor with
// SO_REUSEPORT): their lines interleave whole, and Load keeps the
// checkpoints that move the watermark forward, which is the later
// writer's view at each point.
//
// It is safe for concurrent use; do not copy it after first use. Close
// releases its files.
type FileStore struct {
	Dir string
	// Log, when set, hears of a torn last line that Load ignored.
	Log *slog.Logger

	mu    sync.Mutex // guards files
	files map[string]*os.File
}

var _ Store = (*FileStore)(nil)

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
		if err := os.MkdirAll(s.Dir, 0o700); err != nil {
			return fmt.Errorf("waitroom: state dir: %w", err)
		}
		var err error
		if f, err = os.OpenFile(s.path(key), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600); err != nil {
			return fmt.Errorf("waitroom: admission history: %w", err)
		}
		if s.files == nil {
			s.files = map[string]*os.File{}
		}
		s.files[key] = f
	}
	var b [64]byte
	line := strconv.AppendInt(b[:0], c.Ms, 10)
	line = append(line, ' ')
	line = strconv.AppendInt(line, c.W.Ms, 10)
	line = append(line, ' ')
	line = strconv.AppendUint(line, c.W.TB, 10)
	line = append(line, '\n')
	if _, err := f.Write(line); err != nil {
		return fmt.Errorf("waitroom: appending to %s: %w", f.Name(), err)
	}
	return nil
}

// Load implements Store. A last line without its newline (torn by a
// crash) is ignored and logged; any other bad line is an error naming the
// file and line.
func (s *FileStore) Load(key string) ([]Checkpoint, error) {
	path := s.path(key)
	data, err := os.ReadFile(path)
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
			return nil, fmt.Errorf("waitroom: %s:%d: not a checkpoint (want \"ms w_ms w_tb\"): %q", path, n, line)
		}
		if len(h) > 0 && !h[len(h)-1].W.Before(c.W) {
			continue // another writer's older view; see FileStore
		}
		h = append(h, c)
	}
	return h, nil
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
