package config

import (
	"fmt"
	"path/filepath"
	"time"

	"github.com/podium-edge/podium/waitroom"
)

// Defaults of a waiting room, one place each.
const (
	// DefaultWaitingRoomRefresh is how often the waiting page reloads
	// itself (and Retry-After for API clients): often enough that a
	// visitor sees the position fall, rarely enough that 20,000 waiting
	// visitors cost 4,000 requests a second, not 20,000.
	DefaultWaitingRoomRefresh = 5 * time.Second
	MinWaitingRoomRefresh     = time.Second
	MaxWaitingRoomRefresh     = time.Minute
	// DefaultWaitingRoomSession is how long an admission lasts when the
	// room sets no session: time to choose seats and pay.
	DefaultWaitingRoomSession = 10 * time.Minute
	DefaultWaitingRoomEpoch   = 1
)

// WaitingRoom is one waiting room (issue 18): a fair queue in front of the
// paths it guards, letting admit_per_second new visitors in.
type WaitingRoom struct {
	// Name labels the room in its cookie (podium_wr_NAME), metrics and
	// the admin API: 1 to 64 letters, digits, "_" or "-", unique.
	Name string `yaml:"name"`
	// Paths are the guarded paths in the route syntax ("/games/*/buy"),
	// matched on the room form (waitroom.AppendRoomForm).
	Paths []string `yaml:"paths"`
	// AdmitPerSecond is how many new visitors are let in a second; > 0.
	AdmitPerSecond float64 `yaml:"admit_per_second"`
	// MaxActive, when > 0, bounds the visitors admitted at once on this
	// edge; an admission lasts Session. Zero: no bound.
	MaxActive int `yaml:"max_active"`
	// Session is an admission's lifetime; required with max_active, else
	// zero means DefaultWaitingRoomSession.
	Session Duration `yaml:"session"`
	// OpensAt (RFC 3339), when set, is the opening: visitors who come
	// before it are shuffled into a pre-queue. Empty: open already.
	OpensAt string `yaml:"opens_at"`
	// KeyFile is the signing key file (waitroom.LoadKeys), relative to the
	// config file's directory; validation rewrites it to the path it read,
	// so /config shows what a reload will read. Read again on every load.
	KeyFile string `yaml:"key_file"`
	// Refresh is the waiting page's reload interval, 1s..60s; zero means
	// DefaultWaitingRoomRefresh.
	Refresh Duration `yaml:"refresh"`
	// Epoch is bound into every token: raising it refuses every older
	// one (a new sale under the same name). Zero means 1.
	Epoch uint32 `yaml:"epoch"`

	patterns []waitroom.Pattern
	keys     *waitroom.Keys
	opensAt  time.Time
}

// Patterns are the compiled Paths.
func (w *WaitingRoom) Patterns() []waitroom.Pattern { return w.patterns }

// Keys are the keys read from KeyFile when the config was loaded.
func (w *WaitingRoom) Keys() *waitroom.Keys { return w.keys }

// OpensAtTime is the parsed OpensAt; the zero time when unset.
func (w *WaitingRoom) OpensAtTime() time.Time { return w.opensAt }

func validRoomName(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for _, c := range []byte(s) {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// validateWaitingRooms checks each room, fills its defaults, compiles its
// paths and reads its key file. dir is the config file's directory, which
// a relative key_file is read from ("" when the config did not come from a
// file: relative to the working directory).
func (c *Edge) validateWaitingRooms(v *validator) {
	if d := c.WaitingRoomStateDir; d != "" && !filepath.IsAbs(d) && v.dir != "" {
		c.WaitingRoomStateDir = filepath.Join(v.dir, d)
	}
	if len(c.WaitingRooms) > 0 && c.WaitingRoomStateDir == "" {
		v.addf("waiting_rooms", "need waiting_room_state_dir: a directory of this edge's own (such as /var/lib/podium/waitroom) for each room's admission history; the edge creates it 0700")
	}
	names := map[string]bool{}
	paths := map[string]string{} // pattern -> room, to refuse one path in two rooms
	for i := range c.WaitingRooms {
		w := &c.WaitingRooms[i]
		key := fmt.Sprintf("waiting_rooms[%d]", i)
		if !validRoomName(w.Name) {
			v.addf(key+".name", "must be 1 to 64 letters, digits, _ or - (it names the room's cookie, metrics and admin URL), got %q", w.Name)
		} else if names[w.Name] {
			v.addf(key+".name", "%q is used by an earlier room; names must be unique", w.Name)
		}
		names[w.Name] = true
		if len(w.Paths) == 0 {
			v.addf(key+".paths", "must list at least one path to guard, such as /api/games/*/buy")
		}
		w.patterns = w.patterns[:0:0]
		for j, s := range w.Paths {
			pat, err := waitroom.ParsePattern(s)
			if err != nil {
				v.addf(fmt.Sprintf("%s.paths[%d]", key, j), "%v", err)
				continue
			}
			if other, ok := paths[pat.RoomForm()]; ok {
				v.addf(fmt.Sprintf("%s.paths[%d]", key, j), "%q is already guarded by room %q; a path belongs to one room", s, other)
			}
			paths[pat.RoomForm()] = w.Name
			w.patterns = append(w.patterns, pat)
		}
		if !(w.AdmitPerSecond > 0) || w.AdmitPerSecond > 1e6 {
			v.addf(key+".admit_per_second", "must be a number of visitors a second, > 0 and at most 1000000, got %g", w.AdmitPerSecond)
		}
		if w.MaxActive < 0 {
			v.addf(key+".max_active", "must be >= 0 (0 means no bound), got %d", w.MaxActive)
		}
		switch {
		case w.Session < 0:
			v.addf(key+".session", "must be > 0, got %s", w.Session)
		case w.MaxActive > 0 && w.Session == 0:
			v.addf(key+".max_active", "needs session: how long one admission lasts, such as 10m")
		case w.Session == 0:
			w.Session = Duration(DefaultWaitingRoomSession)
		case w.Session.D() < time.Second:
			v.addf(key+".session", "must be at least 1s, got %s", w.Session)
		}
		w.opensAt = time.Time{}
		if w.OpensAt != "" {
			t, err := time.Parse(time.RFC3339, w.OpensAt)
			if err != nil {
				v.addf(key+".opens_at", "must be an RFC 3339 time such as 2024-07-26T10:00:00Z, got %q", w.OpensAt)
			}
			w.opensAt = t
		}
		if w.Refresh == 0 {
			w.Refresh = Duration(DefaultWaitingRoomRefresh)
		}
		if w.Refresh.D() < MinWaitingRoomRefresh || w.Refresh.D() > MaxWaitingRoomRefresh {
			v.addf(key+".refresh", "must be %s..%s, got %s", MinWaitingRoomRefresh, MaxWaitingRoomRefresh, w.Refresh)
		} else if w.Session.D() >= time.Second && w.Session.D() < 2*w.Refresh.D() {
			// A visitor let in claims the admission on their next visit,
			// up to 1.25 refreshes later; the claim lasts the session (at
			// most 5 minutes). Shorter, and nearly every place passed is
			// spent before its visitor comes back.
			v.addf(key+".session", "must be at least twice refresh (%s): a visitor let in comes back up to 1.25 refreshes later to claim it, got %s", w.Refresh, w.Session)
		}
		if w.Epoch == 0 {
			w.Epoch = DefaultWaitingRoomEpoch
		}
		w.keys = nil
		if w.KeyFile == "" {
			v.addf(key+".key_file", "is required: the file of the room's signing keys (\"id <64 hex>\" and \"sign 1 <64 hex>\" lines, e.g. from openssl rand -hex 32)")
			continue
		}
		if !filepath.IsAbs(w.KeyFile) && v.dir != "" {
			w.KeyFile = filepath.Join(v.dir, w.KeyFile)
		}
		keys, err := waitroom.LoadKeys(w.KeyFile)
		if err != nil {
			v.addf(key+".key_file", "%v", err)
			continue
		}
		w.keys = keys
	}
}
