package proxy

import (
	"context"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/podium-edge/podium/config"
	"github.com/podium-edge/podium/discovery/consul"
	"github.com/podium-edge/podium/waitroom"
)

// Waiting rooms over many edges (issue 18, "Many edges"): with
// waiting_room_store.consul, each room's gate loads the shared history
// from Consul and a waitroom.Coordinator runs beside it, so every edge
// admits from one queue at one rate. Set at start; a change needs a
// restart (state.go).

// roomConsul is the waiting rooms' Consul side of a Proxy: nil for the
// state dir.
type roomConsul struct {
	client *api.Client
	edgeID string
	prefix string
}

// newRoomConsul builds it from cfg, or returns nil when the rooms keep
// their state in the state dir.
func newRoomConsul(cfg *config.Edge) (*roomConsul, error) {
	s := cfg.WaitingRoomStore
	cs := cfg.Discovery.Consul
	if !s.Consul || cs == nil {
		return nil, nil
	}
	client, err := consul.Config{Address: cs.Address, Token: cs.Token, Datacenter: cs.Datacenter}.NewClient()
	if err != nil {
		return nil, fmt.Errorf("waiting_room_store: %w", err)
	}
	id := s.EdgeID
	if id == "" {
		host, err := os.Hostname()
		if err != nil {
			return nil, fmt.Errorf("waiting_room_store: no edge_id set and no host name to make one: %w", err)
		}
		_, port, _ := net.SplitHostPort(cfg.Listen)
		id = host + ":" + port
	}
	return &roomConsul{client: client, edgeID: id, prefix: s.Prefix}, nil
}

// gateStore is the Store the rooms' gates load their history from.
func (p *Proxy) gateStore() waitroom.Store {
	if p.roomConsul != nil {
		return &waitroom.ConsulHistory{Client: p.roomConsul.client, Prefix: p.roomConsul.prefix}
	}
	return p.roomStore
}

// coordinator gives rt's gate a Coordinator when the rooms are
// coordinated through Consul; startCoordinator runs it. Its leader
// advances the shared watermark, so the room's own ticker leaves the
// gate alone (tickRoom).
func (p *Proxy) coordinator(rt *roomRuntime) error {
	if p.roomConsul == nil {
		return nil
	}
	c, err := waitroom.NewCoordinator(waitroom.CoordinatorConfig{
		Client: p.roomConsul.client, EdgeID: p.roomConsul.edgeID, Prefix: p.roomConsul.prefix, Log: p.log,
	}, rt.gate)
	if err != nil {
		return err
	}
	rt.coord = c
	return nil
}

// startCoordinator runs rt's Coordinator, if any, until rt is stopped or
// the proxy closes. Close does not wait for it: it touches no file (its
// gate's store is Consul's), and it marks this edge's key closed on the
// way out. The caller holds roomsMu.
func (p *Proxy) startCoordinator(rt *roomRuntime) {
	if rt.coord == nil || p.bg.Err() != nil {
		return
	}
	ctx, cancel := context.WithCancel(p.bg)
	prev := rt.stop
	rt.stop = func() {
		cancel()
		if prev != nil {
			prev()
		}
	}
	go rt.coord.Run(ctx) // recovers its own loops' panics
	go rt.coord.WatchControl(ctx, func(c waitroom.Control) { p.sharedControl(rt, c) })
}

// sharedControl applies a control an admin API wrote for the room's every
// edge (this one's included), and saves it in the state dir like one made
// here, so a restart while Consul is away keeps it.
func (p *Proxy) sharedControl(rt *roomRuntime, c waitroom.Control) {
	if err := rt.applyControl(c, p.clock.NowMs()); err != nil {
		p.log.Warn("waiting room: ignored the shared control", "room", rt.name, "error", err.Error())
		return
	}
	p.log.Info("waiting room: the room's shared control applied", "room", rt.name, "status", c.Status, "admit_per_second", rt.gate.Rate())
	if err := p.saveControl(rt); err != nil {
		p.log.Error("waiting room: the shared control holds on this edge until it restarts: saving it failed", "room", rt.name, "error", err.Error())
	}
}

// shareControl writes rt's control for every edge of a coordinated room;
// nil for a room of one edge.
func (p *Proxy) shareControl(ctx context.Context, rt *roomRuntime) error {
	if rt.coord == nil {
		return nil
	}
	return rt.coord.SaveControl(ctx, rt.control())
}

// shareControlTimeout bounds the admin API's write of a room's control to
// Consul: an operator pausing a room is told at once when the other edges
// cannot hear it.
const shareControlTimeout = 3 * time.Second
