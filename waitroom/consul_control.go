package waitroom

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
)

// A coordinated room's admin control (pause, resume, close, rate) is the
// room's, not one edge's: an operator who closes a sold-out room on one
// edge closes it on all. It lives under Prefix/<room>/<epoch>/control (the
// history is a folder deeper, by opening), as JSON; any edge's admin API writes it,
// every edge follows it with a blocking query, and while the room is not
// open its leader holds the watermark (SetHeld), so a pause earns no
// burst on resume on any edge.

// controlKey is the room's control in KV: by room and epoch, as the state
// dir's control file, not by opening, so a sold-out room stays closed when
// its opens_at is edited.
func (c *Coordinator) controlKey() string {
	return fmt.Sprintf("%s/%s/%d/control", strings.TrimSuffix(c.cfg.Prefix, "/"), c.gate.cfg.Room, c.gate.cfg.Epoch)
}

// SaveControl writes the room's control for every edge.
func (c *Coordinator) SaveControl(ctx context.Context, ctl Control) error {
	b, err := json.Marshal(ctl)
	if err != nil {
		return fmt.Errorf("waitroom: room %s: encoding the control: %w", c.gate.cfg.Room, err)
	}
	if _, err := c.cfg.Client.KV().Put(&api.KVPair{Key: c.controlKey(), Value: b}, (&api.WriteOptions{}).WithContext(ctx)); err != nil {
		return fmt.Errorf("waitroom: room %s: sharing the control through Consul: %w", c.gate.cfg.Room, err)
	}
	return nil
}

func parseControl(b []byte) (Control, error) {
	var ctl Control
	if err := json.Unmarshal(b, &ctl); err != nil {
		return ctl, fmt.Errorf("not a room control: %w", err)
	}
	switch ctl.Status {
	case "open", "paused", "closed":
	default:
		return ctl, fmt.Errorf("not a room control: status %q, want open, paused or closed", ctl.Status)
	}
	if ctl.Rate < 0 || ctl.Rate > 1e6 {
		return ctl, fmt.Errorf("not a room control: rate %v", ctl.Rate)
	}
	return ctl, nil
}

// WatchControl calls apply with the room's shared control each time it is
// written, until ctx ends. Consul unreachable: it retries, and the edge
// keeps the control it has.
func (c *Coordinator) WatchControl(ctx context.Context, apply func(Control)) {
	c.watchKey(ctx, c.controlKey(), "control", controlWait, func(pair *api.KVPair) {
		ctl, err := parseControl(pair.Value)
		if err != nil {
			c.log.Warn("waiting room: ignored a shared control that does not parse", "key", c.controlKey(), "error", err.Error())
			return
		}
		apply(ctl)
	})
}

// controlWait bounds how long an edge may miss a control change: its
// watch reads the key again at least this often. In a stress run (10 runs
// of the proxy tests beside two CPU hogs) one edge did not see a rate
// change in 30 s once, its blocking query not woken; the cause is not
// found, so the watch no longer relies on the wake-up alone. A read every
// few seconds per room and edge costs the agent nothing.
const controlWait = 5 * time.Second

// SetHeld holds the room's watermark while held (the room paused or
// closed): as leader this edge moves it no further and saves no budget;
// ticking alone, likewise.
func (c *Coordinator) SetHeld(held bool) { c.held.Store(held) }
