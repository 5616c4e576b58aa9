package bench

import (
	"bytes"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"sort"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// The shipped scenarios. They are compiled in so `podium bench run
// -scenario ticket-drop` works from any directory on a load tester's box.
//
//go:embed scenarios/*.yaml
var scenarioFS embed.FS

// Mode is how a stream paces its requests.
type Mode string

const (
	// ModeOpen sends on a schedule fixed in advance (the stream's Rate),
	// whatever the server does, and measures latency from each request's
	// intended send time. A server that stalls therefore shows up as
	// latency, not as fewer samples: coordinated omission corrected, as in
	// wrk2.
	ModeOpen Mode = "open"
	// ModeClosed runs Connections request loops as fast as the server
	// answers (plus Think between requests): maximum throughput.
	ModeClosed Mode = "closed"
)

// Op names a request kind of the ticket API (or a plain GET).
type Op string

const (
	OpGet    Op = "get"    // GET Path as given
	OpList   Op = "list"   // GET /api/games?limit=L[&sport=S]
	OpDetail Op = "detail" // GET /api/games/{id}
	OpBuy    Op = "buy"    // POST /api/games/{id}/buy with a unique Idempotency-Key and email
)

// Scenario is one load shape, loaded from YAML. The zero value is not
// runnable; Validate fills defaults and rejects what cannot run.
type Scenario struct {
	Name        string `yaml:"name" json:"name"`
	Description string `yaml:"description" json:"description,omitempty"`
	// Mode applies to every stream: open (fixed or ramping rate) or closed
	// (maximum throughput).
	Mode     Mode          `yaml:"mode" json:"mode"`
	Duration time.Duration `yaml:"duration" json:"duration"`
	// Timeout bounds one request; 0 means DefaultRequestTimeout.
	Timeout time.Duration `yaml:"timeout" json:"timeout"`
	// Games is the range of game ids that detail and buy requests draw from.
	Games GameRange `yaml:"games" json:"games"`
	// Sports is the pool list requests pick ?sport= from (with
	// SportFraction of them filtered); empty means never filtered.
	Sports        []string `yaml:"sports" json:"sports,omitempty"`
	SportFraction float64  `yaml:"sport_fraction" json:"sport_fraction,omitempty"`
	ListLimit     int      `yaml:"list_limit" json:"list_limit,omitempty"`
	Streams       []Stream `yaml:"streams" json:"streams"`
}

// GameRange is an inclusive range of game ids; ids start at 1.
type GameRange struct {
	First int `yaml:"first" json:"first"`
	Last  int `yaml:"last" json:"last"`
}

// Stream is one population of clients sharing a rate, a mix and a set of
// connections. Scenarios with several streams (mixed-abuse) report each
// stream apart, so the abusers' 429s do not hide the normal fans' latency.
type Stream struct {
	Name        string `yaml:"name" json:"name"`
	Connections int    `yaml:"connections" json:"connections"`
	// Clients is how many distinct client addresses the stream speaks for,
	// sent as X-Forwarded-For (the edge trusts it from loopback), taken
	// from 198.18.0.0/15, the range RFC 2544 reserves for benchmarks. 0
	// sends no X-Forwarded-For: every request is the generator's own IP.
	Clients int `yaml:"clients" json:"clients"`
	// Rate is the open-loop schedule; ignored in closed mode.
	Rate Rate `yaml:"rate" json:"rate"`
	// Think is the pause between two requests on one connection in closed
	// mode (a browsing fan reading the page). Open mode is paced by Rate.
	Think time.Duration `yaml:"think" json:"think"`
	Mix   []MixEntry    `yaml:"mix" json:"mix"`
}

// Rate is requests per second for the whole stream: Start rising linearly
// to Peak over Ramp, then Peak for the rest of the run. Ramp 0 means Peak
// from the first request.
type Rate struct {
	Start float64       `yaml:"start" json:"start"`
	Peak  float64       `yaml:"peak" json:"peak"`
	Ramp  time.Duration `yaml:"ramp" json:"ramp"`
}

// MixEntry is one request kind and its relative weight.
type MixEntry struct {
	Op     Op     `yaml:"op" json:"op"`
	Weight int    `yaml:"weight" json:"weight"`
	Path   string `yaml:"path" json:"path,omitempty"` // OpGet only
	// Quantity is the tickets per buy; 0 means 1.
	Quantity int `yaml:"quantity" json:"quantity,omitempty"`
	// Expect lists the error statuses (400-599) that are this request
	// kind's right answer in this scenario: a sold-out game's 409 in
	// buy-storm, an abuser's 429 in mixed-abuse. They are reported under
	// Expected, apart from errors. Empty: every status >= 400 is an error.
	Expect []int `yaml:"expect" json:"expect,omitempty"`
}

// expects says whether status is one m names in Expect.
func (m *MixEntry) expects(status int) bool {
	for _, s := range m.Expect {
		if s == status {
			return true
		}
	}
	return false
}

// Defaults.
const (
	DefaultRequestTimeout = 5 * time.Second
	DefaultListLimit      = 50
)

// Validate fills defaults and returns an error naming the first field that
// cannot run.
func (s *Scenario) Validate() error {
	if s.Name == "" {
		return errors.New("scenario has no name")
	}
	switch s.Mode {
	case "":
		s.Mode = ModeOpen
	case ModeOpen, ModeClosed:
	default:
		return fmt.Errorf("scenario %s: mode %q: want open or closed", s.Name, s.Mode)
	}
	if s.Duration <= 0 {
		return fmt.Errorf("scenario %s: duration must be positive", s.Name)
	}
	if s.Timeout == 0 {
		s.Timeout = DefaultRequestTimeout
	}
	if s.ListLimit == 0 {
		s.ListLimit = DefaultListLimit
	}
	if s.Games.First == 0 && s.Games.Last == 0 {
		s.Games = GameRange{First: 1, Last: 1}
	}
	if s.Games.First < 1 || s.Games.Last < s.Games.First {
		return fmt.Errorf("scenario %s: games %d-%d: ids start at 1 and last must be >= first", s.Name, s.Games.First, s.Games.Last)
	}
	if s.SportFraction < 0 || s.SportFraction > 1 {
		return fmt.Errorf("scenario %s: sport_fraction %v: want 0..1", s.Name, s.SportFraction)
	}
	if len(s.Streams) == 0 {
		return fmt.Errorf("scenario %s: no streams", s.Name)
	}
	seen := map[string]bool{}
	for i := range s.Streams {
		st := &s.Streams[i]
		if st.Name == "" {
			st.Name = fmt.Sprintf("stream%d", i+1)
		}
		if seen[st.Name] {
			return fmt.Errorf("scenario %s: stream name %q used twice", s.Name, st.Name)
		}
		seen[st.Name] = true
		where := fmt.Sprintf("scenario %s stream %s", s.Name, st.Name)
		if st.Connections <= 0 {
			return fmt.Errorf("%s: connections must be positive", where)
		}
		if st.Clients < 0 || st.Clients > 1<<17 {
			return fmt.Errorf("%s: clients %d: want 0..131072 (the size of 198.18.0.0/15)", where, st.Clients)
		}
		if s.Mode == ModeOpen {
			r := st.Rate
			if r.Peak <= 0 || r.Start < 0 || r.Ramp < 0 {
				return fmt.Errorf("%s: rate needs peak > 0, start >= 0, ramp >= 0", where)
			}
			if r.Ramp == 0 {
				st.Rate.Start = r.Peak
			}
		}
		if st.Think < 0 {
			return fmt.Errorf("%s: think must not be negative", where)
		}
		if len(st.Mix) == 0 {
			return fmt.Errorf("%s: empty mix", where)
		}
		for j := range st.Mix {
			m := &st.Mix[j]
			if m.Weight <= 0 {
				return fmt.Errorf("%s: mix %s: weight must be positive", where, m.Op)
			}
			for _, code := range m.Expect {
				if code < 400 || code > 599 {
					return fmt.Errorf("%s: mix %s: expect %d: list error statuses (400-599); 2xx and 3xx are never errors", where, m.Op, code)
				}
			}
			switch m.Op {
			case OpGet:
				if !strings.HasPrefix(m.Path, "/") {
					return fmt.Errorf("%s: mix get: path %q must start with /", where, m.Path)
				}
			case OpList, OpDetail:
			case OpBuy:
				if m.Quantity == 0 {
					m.Quantity = 1
				}
				if m.Quantity < 0 {
					return fmt.Errorf("%s: mix buy: quantity must be positive", where)
				}
			default:
				return fmt.Errorf("%s: mix op %q: want get, list, detail or buy", where, m.Op)
			}
		}
	}
	return nil
}

// ParseScenario decodes one scenario from YAML, rejecting unknown keys so a
// misspelt "conections" fails loudly instead of running with a default.
func ParseScenario(data []byte, source string) (*Scenario, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var s Scenario
	if err := dec.Decode(&s); err != nil {
		return nil, fmt.Errorf("parsing scenario %s: %w", source, err)
	}
	if err := s.Validate(); err != nil {
		return nil, fmt.Errorf("scenario %s: %w", source, err)
	}
	return &s, nil
}

// LoadScenario returns the shipped scenario called name, or, when name ends
// in .yaml or .yml, the scenario in that file.
func LoadScenario(name string) (*Scenario, error) {
	if strings.HasSuffix(name, ".yaml") || strings.HasSuffix(name, ".yml") {
		data, err := os.ReadFile(name)
		if err != nil {
			return nil, fmt.Errorf("reading scenario: %w", err)
		}
		return ParseScenario(data, name)
	}
	data, err := scenarioFS.ReadFile(path.Join("scenarios", name+".yaml"))
	if err != nil {
		return nil, fmt.Errorf("no shipped scenario %q (have %s); pass a .yaml file for your own", name, strings.Join(ScenarioNames(), ", "))
	}
	return ParseScenario(data, name)
}

// ScenarioNames lists the shipped scenarios.
func ScenarioNames() []string {
	entries, _ := fs.ReadDir(scenarioFS, "scenarios")
	var names []string
	for _, e := range entries {
		names = append(names, strings.TrimSuffix(e.Name(), ".yaml"))
	}
	sort.Strings(names)
	return names
}
