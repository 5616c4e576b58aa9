package config

import "strings"

// WaitingRoomStore is where the waiting rooms keep their admission state.
// The zero value is the state dir (waiting_room_state_dir): right for one
// edge. With Consul set, every edge of the fleet runs each room as one
// queue through the Consul agent of discovery.consul (waitroom.Coordinator):
// one rate over all edges, admission in arrival order across them.
type WaitingRoomStore struct {
	// Consul coordinates the rooms through discovery.consul's agent;
	// that section must be set.
	Consul bool `yaml:"consul"`
	// EdgeID names this edge among the others: unique, and the same
	// across its restarts. Empty means the host name and the listen
	// port ("host:8080"), which a successor that takes the same listener
	// over (reuse_port) shares, as it should.
	EdgeID string `yaml:"edge_id"`
	// Prefix is the KV folder of the rooms; empty means
	// waitroom.DefaultConsulPrefix (podium/waitroom).
	Prefix string `yaml:"prefix"`
}

func (c *Edge) validateWaitingRoomStore(v *validator) {
	s := c.WaitingRoomStore
	if s.Consul && c.Discovery.Consul == nil {
		v.addf("waiting_room_store.consul", "needs discovery.consul: the rooms coordinate through that Consul agent (or drop waiting_room_store.consul to keep the state in waiting_room_state_dir, for one edge)")
	}
	if !s.Consul && (s.EdgeID != "" || s.Prefix != "") {
		v.addf("waiting_room_store", "edge_id and prefix apply to consul: true only")
	}
	if strings.ContainsAny(s.EdgeID, " \t\r\n") || len(s.EdgeID) > 128 {
		v.addf("waiting_room_store.edge_id", "must be at most 128 characters without spaces, got %q", s.EdgeID)
	}
	if p := s.Prefix; p != "" && (strings.HasPrefix(p, "/") || strings.ContainsAny(p, " \t\r\n") || strings.Contains(p, "//")) {
		v.addf("waiting_room_store.prefix", "must be a Consul KV folder such as podium/waitroom (no leading /, no spaces, no empty segment), got %q", p)
	}
}
