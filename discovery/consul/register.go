package consul

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
)

// Registration defaults, one place each.
const (
	DefaultCheckPath = "/ping"
	// DefaultCheckInterval is Consul's floor: the agent runs any shorter
	// interval every second (and logs "check has interval below minimum").
	DefaultCheckInterval = time.Second
	DefaultCheckTimeout  = 500 * time.Millisecond
	// DefaultCheckFall is how many failed checks in a row turn an instance
	// critical (Consul's failures_before_critical; HAProxy's fall, and the
	// edge's own healthcheck.fall). With Consul's default of 1, a single
	// check that timed out while the host was busy took the instance out
	// of every edge at once: on a loaded machine two origins timed out in
	// the same second, the only third was restarting, and the demo's edge
	// answered 503 "no healthy ticket service instance" for a second. A
	// dead instance now goes critical after three checks (about 3 s at the
	// 1 s interval); the edges meanwhile retry its refused connections
	// elsewhere and their own prober takes it out.
	DefaultCheckFall = 3
	// DefaultDeregisterCriticalAfter removes an instance whose check has
	// been critical this long (a process that died without deregistering).
	// Consul reaps at most every 30 s and never sooner than 1 m, so smaller
	// values behave as 1 m.
	DefaultDeregisterCriticalAfter = time.Minute
	// DefaultKeepAliveInterval is how often a Service checks that the agent
	// still holds its registration (see Registration.KeepAliveInterval).
	DefaultKeepAliveInterval = time.Second
)

// Registration describes one service instance to put into the local agent.
// The zero value of each optional field takes the default named beside it.
//
// A Registration is a plain value and may be copied.
type Registration struct {
	// Name is the service name, e.g. "podium-origin". Required.
	Name string
	// ID is unique among the agent's services. Empty means Name-Addr-Port,
	// which is unique for every listener on one host.
	ID string
	// Addr is the address other hosts dial (an IP, not a wildcard). Required.
	Addr string
	// Port is the service port. Required.
	Port int
	// Tags and Meta are registered as given. Meta "weight" is read by the
	// Watcher (MetaWeight).
	Tags []string
	Meta map[string]string
	// CheckPath is the HTTP path the agent polls at http://Addr:Port; a 2xx
	// is passing, 429 warning, anything else critical. Empty means
	// DefaultCheckPath.
	CheckPath string
	// CheckInterval and CheckTimeout time the agent's check. Zero means
	// DefaultCheckInterval and DefaultCheckTimeout.
	CheckInterval time.Duration
	CheckTimeout  time.Duration
	// CheckFall is how many failed checks in a row turn the instance
	// critical. Zero means DefaultCheckFall.
	CheckFall int
	// DeregisterCriticalAfter: zero means DefaultDeregisterCriticalAfter.
	DeregisterCriticalAfter time.Duration
	// KeepAliveInterval is how often the handle asks the agent whether it
	// still holds the registration and registers again if not, the way
	// fabio's own registration does: an agent that restarts without its
	// data dir (a plain `consul agent -dev`, a replaced node) has forgotten
	// every service. Zero means DefaultKeepAliveInterval; negative disables it.
	KeepAliveInterval time.Duration
	// Logger: nil means slog.Default().
	Logger *slog.Logger
}

// Service is a registered instance. Its methods are safe for concurrent use;
// a Service must not be copied.
type Service struct {
	client *api.Client
	reg    *api.AgentServiceRegistration
	log    *slog.Logger

	stopKeep context.CancelFunc
	keepDone chan struct{}

	mu     sync.Mutex // serialises MarkCritical and Deregister
	closed bool       // Deregister succeeded
}

// Register puts r into the agent behind client and returns its handle. The
// instance starts critical and turns passing once the agent's first HTTP
// check succeeds (within about one CheckInterval), so no edge is sent to a
// port that is not answering yet.
//
// ctx bounds the registration request and also the keep-alive, which runs
// in the background until ctx is done or MarkCritical or Deregister is
// called: pass the server's lifetime context, not a short timeout.
// Cancelling ctx does not deregister: call Deregister for that.
func Register(ctx context.Context, client *api.Client, r Registration) (*Service, error) {
	if client == nil {
		return nil, errors.New("consul: register: nil client")
	}
	if r.Name == "" || r.Addr == "" || r.Port <= 0 || r.Port > 65535 {
		return nil, fmt.Errorf("consul: register: need a service name, an address and a port in 1..65535 (got name %q, addr %q, port %d)", r.Name, r.Addr, r.Port)
	}
	if r.CheckFall < 0 {
		return nil, fmt.Errorf("consul: register %s: check fall %d: want a positive number of failed checks, or 0 for %d", r.Name, r.CheckFall, DefaultCheckFall)
	}
	if ip := net.ParseIP(r.Addr); ip != nil && ip.IsUnspecified() {
		return nil, fmt.Errorf("consul: register %s: address %s is a wildcard that other hosts cannot dial; register the interface address instead", r.Name, r.Addr)
	}
	hostPort := net.JoinHostPort(r.Addr, strconv.Itoa(r.Port))
	id := cmp.Or(r.ID, r.Name+"-"+r.Addr+"-"+strconv.Itoa(r.Port))
	check := &api.AgentServiceCheck{
		CheckID: "service:" + id,
		Name:    r.Name + " " + cmp.Or(r.CheckPath, DefaultCheckPath),
		HTTP: (&url.URL{
			Scheme: "http",
			Host:   hostPort,
			Path:   cmp.Or(r.CheckPath, DefaultCheckPath),
		}).String(),
		Method:                         "GET",
		Interval:                       cmp.Or(r.CheckInterval, DefaultCheckInterval).String(),
		Timeout:                        cmp.Or(r.CheckTimeout, DefaultCheckTimeout).String(),
		FailuresBeforeCritical:         cmp.Or(r.CheckFall, DefaultCheckFall),
		DeregisterCriticalServiceAfter: cmp.Or(r.DeregisterCriticalAfter, DefaultDeregisterCriticalAfter).String(),
	}
	s := &Service{
		client: client,
		log:    cmp.Or(r.Logger, slog.Default()).With("service", r.Name, "id", id),
		reg: &api.AgentServiceRegistration{
			ID:      id,
			Name:    r.Name,
			Address: r.Addr,
			Port:    r.Port,
			Tags:    slices.Clone(r.Tags),
			Meta:    maps.Clone(r.Meta),
			Check:   check,
		},
		keepDone: make(chan struct{}),
	}
	if err := s.register(ctx, ""); err != nil {
		return nil, err
	}
	keepCtx, cancel := context.WithCancel(ctx)
	s.stopKeep = cancel
	if every := cmp.Or(r.KeepAliveInterval, DefaultKeepAliveInterval); every > 0 {
		go s.keepAlive(keepCtx, every)
	} else {
		close(s.keepDone)
	}
	return s, nil
}

// ID is the service ID the instance is registered under.
func (s *Service) ID() string { return s.reg.ID }

// register sends the registration. status, when not empty, is the check's
// initial status: a re-registration after the agent lost us carries the
// last status it reported, so a healthy instance does not drop out of the
// passing set for a check interval.
func (s *Service) register(ctx context.Context, status string) error {
	reg := *s.reg
	check := *reg.Check
	check.Status = status
	reg.Check = &check
	// ReplaceExistingChecks drops checks from an earlier registration under
	// the same ID (a restarted process reusing its ID) instead of keeping a
	// stale critical one that would hide the instance.
	opts := api.ServiceRegisterOpts{ReplaceExistingChecks: true}.WithContext(ctx)
	if err := s.client.Agent().ServiceRegisterOpts(&reg, opts); err != nil {
		return fmt.Errorf("consul: register %s: %w (is the agent running? scripts/consul.sh start)", reg.ID, err)
	}
	return nil
}

// keepAlive re-registers the service when the agent no longer knows it.
func (s *Service) keepAlive(ctx context.Context, every time.Duration) {
	defer close(s.keepDone)
	defer func() {
		if p := recover(); p != nil {
			s.log.Error("consul keep-alive panicked; registration no longer maintained", "panic", p)
		}
	}()
	t := time.NewTicker(every)
	defer t.Stop()
	lastStatus := ""
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		status, info, err := s.client.Agent().AgentHealthServiceByIDOpts(s.reg.ID, (&api.QueryOptions{}).WithContext(ctx))
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			if !failing {
				s.log.Warn("consul agent unreachable; will register again when it is back", "error", err)
				failing = true
			}
			continue
		}
		if info != nil {
			if failing {
				s.log.Info("consul agent reachable again; registration intact")
				failing = false
			}
			lastStatus = status
			continue
		}
		// Not found: the agent restarted without our registration.
		initial := ""
		if lastStatus == api.HealthPassing {
			initial = api.HealthPassing
		}
		if err := s.register(ctx, initial); err != nil {
			if !failing {
				s.log.Warn("consul re-registration failed; retrying", "error", err)
				failing = true
			}
			continue
		}
		failing = false
		s.log.Info("consul agent had lost the registration; registered again", "initial_status", cmp.Or(initial, api.HealthCritical))
	}
}

func (s *Service) stopKeepAlive() {
	s.stopKeep()
	<-s.keepDone
}

// MarkCritical takes the instance out of every watcher's passing set while
// the process keeps serving, so in-flight and already-routed requests can
// finish (the drain fabio issue #815 asks for). Call it on SIGTERM, wait for
// the edges to notice, then stop serving and Deregister.
//
// It puts the service into agent maintenance mode: the agent adds a critical
// check "_service_maintenance:<id>" at once, without waiting for the next run
// of the HTTP check, and /v1/health/service?passing stops returning the
// instance as soon as the agent has synced it to the servers: a watcher
// dropped it 3–37 ms after MarkCritical returned (TestRemoval, 4 runs),
// against 0.3–1 s (up to one CheckInterval plus the check's timeout) for a
// /ping that starts failing. Unlike deregistering, the instance remains
// visible to operators as "in maintenance" and the state survives an agent
// restart. It also stops the keep-alive, which would otherwise restore a
// passing registration.
func (s *Service) MarkCritical(ctx context.Context) error {
	s.stopKeepAlive()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	err := s.client.Agent().EnableServiceMaintenanceOpts(s.reg.ID, "podium: draining before shutdown", (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return fmt.Errorf("consul: mark %s critical: %w", s.reg.ID, err)
	}
	return nil
}

// Deregister removes the instance and its check from the agent and stops
// the keep-alive. It is idempotent.
func (s *Service) Deregister(ctx context.Context) error {
	s.stopKeepAlive()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	if err := s.client.Agent().ServiceDeregisterOpts(s.reg.ID, (&api.QueryOptions{}).WithContext(ctx)); err != nil {
		return fmt.Errorf("consul: deregister %s: %w", s.reg.ID, err)
	}
	s.closed = true
	return nil
}
