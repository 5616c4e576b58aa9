package proxy

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/podium-edge/podium/config"
	"github.com/podium-edge/podium/ratelimit"
	"github.com/podium-edge/podium/waitroom"
	"github.com/valyala/fasthttp"
)

// The waiting room (issue 18) in the edge: the proxy asks a room, as it
// asks the rate limiter, whether a request on a guarded path may go on.
// waitroom holds the tokens and the gate; this file holds what is the
// edge's: the cookie and header, the pages, the ticker, the admin
// controls, and the state that outlives a config reload.

const (
	// placeLifetime is how long a place token is good for: a queue longer
	// than this loses its visitors' places, so it is generous.
	placeLifetime = 6 * time.Hour
	// holdMargin is added to a room's refresh interval to hold its
	// watermark after start: a page that was due as the edge restarted
	// comes back within the interval, plus the time to reload it.
	holdMargin = time.Second
	// ewmaWindow is the time constant of the measured admission rate.
	ewmaWindow = 5 * time.Second
	// caughtUpMargin: a watermark within this of the settle bound has
	// passed everyone it may (the ticks and, coordinated, the leader's
	// round trip lag behind the bound by up to this).
	caughtUpMargin = 500 * time.Millisecond
	// waitRoomHeader carries the token for API clients, both ways.
	waitRoomHeader = "Podium-Waiting-Room"
	// cookiePrefix is followed by the room's name.
	cookiePrefix = "podium_wr_"
)

// Room statuses, as the admin API and the JSON answer name them.
const (
	roomOpen int32 = iota
	roomPaused
	roomClosed
)

var roomStatusNames = [...]string{"open", "paused", "closed"}

// wallClock is the waitroom.Clock of a running edge.
type wallClock struct{}

func (wallClock) NowMs() int64 { return time.Now().UnixMilli() }

// roomRuntime is what a room keeps across reloads that leave its name,
// epoch and opening alone: its gate (the queue), its status, the
// visitors inside it and the measured rate. It is safe for concurrent
// use and must not be copied.
type roomRuntime struct {
	name   string
	epoch  uint32
	opens  int64 // opens_at in Unix ms
	gate   *waitroom.Gate
	coord  *waitroom.Coordinator // nil unless coordinated through Consul (waitroom_consul.go)
	status atomic.Int32
	// configRateBits is the admit_per_second the runtime last applied
	// from a config (float64 bits: a reload writes it while the admin
	// API and the shared control's watch read it), so that a reload that
	// leaves it alone keeps a rate the admin API set.
	configRateBits atomic.Uint64
	// marksCleared is when (Unix ms) the admin API's resume last dropped
	// the sold-out marks: shared with the other edges in the control, so
	// they drop theirs too.
	marksCleared atomic.Int64
	// pause is the room's pauses, so that a place passed before one
	// keeps its claim for as long as the room was paused (setStatus).
	pause pauseClock

	ewma       atomic.Uint64 // float64 bits: places the watermark passed a second
	lastPassed float64       // the ticker's own; read and written only by tick
	lastTickMs int64

	lastErr atomic.Bool // the last Tick failed to record: logged once, on the transition

	// maxActive is the room's max_active (0: none), from the config in
	// force: tickRoom keeps the gate from passing more visitors than it
	// has room for.
	maxActive atomic.Int64

	mu sync.Mutex // guards active, pruneAt and reserved
	// active maps the identity hash of each admission still inside to
	// its expiry (Unix ms): one admission per identity at a time, so a
	// place token replayed (100 tabs, a script) during the claim window
	// gets its admission back instead of another one (review 18, 1).
	active map[[16]byte]int64
	// pruneAt is the size at which active is next pruned of expired
	// admissions when no max_active bounds it.
	pruneAt int
	// reserved are the places the watermark passed that may still claim
	// their admission, by the checkpoint that passed them, oldest first:
	// with max_active, each holds a place inside until it claims (fresh
	// activate) or its claim window ends.
	reserved []reservation
	stop     context.CancelFunc
	// soldOut are the games the origin said are sold out
	// (waitroom_soldout.go).
	soldOut soldOutMarks
}

// reservation is the places passed at one checkpoint that have not
// claimed yet.
type reservation struct {
	ms, untilMs int64 // the checkpoint's time; the end of its claim window
	n           float64
}

// roomState is a room as one config state sees it: the runtime, with
// that config's keys and settings.
type roomState struct {
	cfg      config.WaitingRoom
	room     *waitroom.Room
	rt       *roomRuntime
	cookie   string // podium_wr_NAME
	refresh  int64  // seconds
	maxAge   string // the place cookie's Max-Age
	session  time.Duration
	patterns []waitroom.Pattern
}

// roomPlan is the waiting rooms of a config, built but not yet in force,
// so that a reload that fails anywhere is rejected whole (review 18, 15):
// prepareRooms does everything that can fail and changes nothing running;
// commit cannot fail.
type roomPlan struct {
	rooms []*roomState
	next  map[string]*roomRuntime // the runtimes by name once committed
	// created are the runtimes of rooms that are new, or whose epoch or
	// opening changed: their tickers start at commit.
	created []*roomRuntime
	// rates are the kept runtimes whose admit_per_second the config
	// changes, with the new rate.
	rates map[*roomRuntime]float64
}

// prepareRooms builds the waiting rooms of cfg, reusing the runtime of
// each room whose name, epoch and opening are unchanged. It starts no
// ticker and changes no running room; commit the plan to put it in force.
func (p *Proxy) prepareRooms(cfg *config.Edge) (*roomPlan, error) {
	p.roomsMu.Lock()
	running := maps.Clone(p.rooms)
	p.roomsMu.Unlock()
	now := p.clock.NowMs()
	plan := &roomPlan{next: map[string]*roomRuntime{}, rates: map[*roomRuntime]float64{}}
	for _, wc := range cfg.WaitingRooms {
		opens := int64(math.MinInt64 / 2)
		if t := wc.OpensAtTime(); !t.IsZero() {
			opens = t.UnixMilli()
		}
		keys := wc.Keys()
		if keys == nil {
			return nil, fmt.Errorf("waiting room %s: keys not loaded (the config was not validated)", wc.Name)
		}
		room, err := waitroom.NewRoom(wc.Name, wc.Epoch, opens, keys)
		if err != nil {
			return nil, err
		}
		rt := running[wc.Name]
		if rt == nil || rt.epoch != wc.Epoch || rt.opens != opens {
			gate, err := waitroom.NewGate(waitroom.GateConfig{
				Room: wc.Name, Epoch: wc.Epoch, OpensAtMs: opens, Rate: wc.AdmitPerSecond,
				ClaimWindowMs: min(waitroom.DefaultClaimWindowMs, wc.Session.D().Milliseconds()),
				// Held after start, whether or not a history was found:
				// visitors may hold places an earlier process issued.
				HoldUntilMs: now + (maxVisitAfter(wc.Refresh.D()) + holdMargin).Milliseconds(),
			}, p.clock, p.gateStore())
			if err != nil {
				return nil, err
			}
			rt = &roomRuntime{name: wc.Name, epoch: wc.Epoch, opens: opens, gate: gate, lastTickMs: now}
			rt.configRateBits.Store(math.Float64bits(wc.AdmitPerSecond))
			rt.lastPassed = gate.Passed()
			if err := p.loadControl(rt); err != nil {
				return nil, err
			}
			if err := p.coordinator(rt); err != nil {
				return nil, err
			}
			plan.created = append(plan.created, rt)
		} else if rt.configRate() != wc.AdmitPerSecond {
			if r := wc.AdmitPerSecond; !(r > 0) || math.IsInf(r, 0) {
				return nil, fmt.Errorf("waiting room %s: admit_per_second %v: want a positive number of visitors a second", wc.Name, r)
			}
			plan.rates[rt] = wc.AdmitPerSecond
		}
		plan.next[wc.Name] = rt
		plan.rooms = append(plan.rooms, &roomState{cfg: wc, room: room, rt: rt, cookie: cookiePrefix + wc.Name,
			refresh: int64(wc.Refresh.D() / time.Second), maxAge: strconv.FormatInt(int64(placeLifetime/time.Second), 10),
			session: wc.Session.D(), patterns: wc.Patterns()})
	}
	return plan, nil
}

// commit puts the plan in force: the kept rooms take their new rates, the
// new rooms start ticking and the rooms the config dropped stop. Reloads
// are serialised by the caller; roomsMu guards p.rooms against Close.
func (plan *roomPlan) commit(p *Proxy) []*roomState {
	p.roomsMu.Lock()
	defer p.roomsMu.Unlock()
	for rt, r := range plan.rates {
		if err := rt.gate.SetRate(r); err != nil { // checked by prepareRooms
			p.log.Error("waiting room: a rate checked before commit was refused", "room", rt.name, "error", err.Error())
			continue
		}
		rt.configRateBits.Store(math.Float64bits(r))
	}
	for _, rs := range plan.rooms {
		rs.rt.maxActive.Store(int64(rs.cfg.MaxActive))
	}
	for _, rt := range plan.created {
		p.startTicker(rt)
		p.startCoordinator(rt)
	}
	for name, rt := range p.rooms {
		if plan.next[name] != rt && rt.stop != nil {
			rt.stop()
		}
	}
	p.rooms = plan.next
	return plan.rooms
}

// startTicker advances rt's gate every p.tickEvery until the room is
// dropped or the proxy closes. With tickEvery zero (tests) nothing ticks
// but tickRooms. The caller holds roomsMu.
func (p *Proxy) startTicker(rt *roomRuntime) {
	if p.tickEvery <= 0 || p.bg.Err() != nil {
		return
	}
	ctx, cancel := context.WithCancel(p.bg)
	rt.stop = cancel
	p.tickers.Add(1)
	go func() {
		defer p.tickers.Done()
		defer func() {
			if r := recover(); r != nil {
				p.log.Error("waiting room ticker panicked; the room's queue no longer advances", "room", rt.name, "panic", fmt.Sprint(r))
			}
		}()
		t := time.NewTicker(p.tickEvery)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				p.tickRoom(rt)
			}
		}
	}()
}

// tickRooms ticks every room once: the tests' ticker.
func (p *Proxy) tickRooms() {
	for _, rs := range p.state.Load().rooms {
		p.tickRoom(rs.rt)
	}
}

// tickRoom advances rt's watermark unless the room is paused or closed
// or coordinated (its leader, or its Coordinator alone, moves it:
// waitroom_consul.go), and updates the measured admission rate. With
// max_active, the gate may first pass only as many places as the room
// has free (freeSlots), and the places it passes are reserved until they
// claim their admission or their claim window ends.
func (p *Proxy) tickRoom(rt *roomRuntime) {
	now := p.clock.NowMs()
	limit := rt.maxActive.Load()
	if limit > 0 {
		rt.gate.SetFree(rt.freeSlots(limit, now))
	} else {
		rt.gate.SetFree(math.Inf(1))
	}
	before := rt.gate.Passed()
	if rt.status.Load() == roomOpen && rt.coord == nil {
		if err := rt.gate.Tick(); err != nil && rt.lastErr.CompareAndSwap(false, true) {
			p.log.Warn("waiting room: could not record an admission checkpoint; a restart may re-admit from earlier", "room", rt.name, "error", err.Error())
		} else if err == nil {
			rt.lastErr.Store(false)
		}
	} else if rt.coord == nil {
		rt.gate.Hold(now)
	} else {
		rt.coord.SetHeld(rt.status.Load() != roomOpen)
	}
	if d := rt.gate.Passed() - before; limit > 0 && d > 0 {
		if rt.coord != nil {
			d /= float64(max(rt.coord.Edges(), 1)) // this edge's share, as the leader assumes
		}
		if c, ok := rt.gate.LastCheckpoint(); ok {
			rt.reserve(c.Ms, c.Ms+rt.gate.ClaimWindowMs(), d)
		}
	}
	dt := now - rt.lastTickMs
	if dt <= 0 {
		return
	}
	rt.lastTickMs = now
	passed := rt.gate.Passed()
	d := passed - rt.lastPassed
	rt.lastPassed = passed
	// The measure is of the rate the room admits at while people wait
	// beyond the settle time: a tick that passed nobody (held, paused,
	// full, or an empty queue) or that caught up with the settle bound
	// (the queue is all in the last SettleMs) measures demand, and would
	// pull the estimated wait of the first visitors of a sale 10 times
	// too high (e2e: 53 s shown for 6 s).
	w := rt.gate.Watermark()
	if d <= 0 || rt.status.Load() != roomOpen || w.Ms >= now-rt.gate.SettleMs()-caughtUpMargin.Milliseconds() {
		return
	}
	inst := d * 1000 / float64(dt)
	old := math.Float64frombits(rt.ewma.Load())
	if old < 0.01 {
		rt.ewma.Store(math.Float64bits(inst)) // the first measure, not a ramp from 0
		return
	}
	alpha := 1 - math.Exp(-float64(dt)/float64(ewmaWindow.Milliseconds()))
	rt.ewma.Store(math.Float64bits(old + alpha*(inst-old)))
}

// controlKey names rt's control in the store: its room and epoch. Not
// its opening, unlike its history (waitroom's historyKey): a room closed
// (sold out) stays closed when its opens_at is edited.
func (rt *roomRuntime) controlKey() string { return fmt.Sprintf("%s/%d", rt.name, rt.epoch) }

// loadControl applies to a new runtime what the admin API last set on its
// room and epoch: its status, and its rate unless the config's
// admit_per_second changed since.
func (p *Proxy) loadControl(rt *roomRuntime) error {
	c, ok, err := p.roomStore.LoadControl(rt.controlKey())
	if err != nil || !ok {
		return err
	}
	if err := rt.applyControl(c, p.clock.NowMs()); err != nil {
		return err
	}
	p.log.Info("waiting room: the admin API's last change kept", "room", rt.name, "status", c.Status, "admit_per_second", rt.gate.Rate())
	return nil
}

// applyControl sets rt's status, and its rate unless the config's
// admit_per_second changed since the control was saved, and drops the
// sold-out marks when a resume on another edge dropped its own since.
func (rt *roomRuntime) applyControl(c waitroom.Control, now int64) error {
	if c.MarksClearedMs > rt.marksCleared.Load() {
		rt.marksCleared.Store(c.MarksClearedMs)
		rt.soldOut.clear()
	}
	for i, name := range roomStatusNames {
		if name == c.Status {
			rt.setStatus(int32(i), now)
		}
	}
	if cr := rt.configRate(); c.ConfigRate == cr {
		// Rate 0 is the config's rate: an admin who set the rate back
		// must bring every edge back, not leave them at the old one.
		if c.Rate > 0 {
			return rt.gate.SetRate(c.Rate)
		}
		return rt.gate.SetRate(cr)
	}
	return nil
}

// saveControl records rt's status and admin rate, so a restart keeps
// them.
func (p *Proxy) saveControl(rt *roomRuntime) error {
	return p.roomStore.SaveControl(rt.controlKey(), rt.control())
}

// pauseClock keeps the time a room spent paused. Guarded by mu.
type pauseClock struct {
	mu      sync.Mutex
	since   int64 // when the current pause began; 0 when not paused
	lastEnd int64 // when the last pause ended
	totalMs int64 // every pause's length, up to lastEnd
}

// setStatus sets rt's status at now, keeping the time paused.
func (rt *roomRuntime) setStatus(st int32, now int64) {
	pc := &rt.pause
	pc.mu.Lock()
	defer pc.mu.Unlock()
	old := rt.status.Swap(st)
	switch {
	case old != roomPaused && st == roomPaused:
		pc.since = now
	case old == roomPaused && st != roomPaused && pc.since != 0:
		pc.totalMs += max(now-pc.since, 0)
		pc.lastEnd, pc.since = now, 0
	}
}

// claimKept says whether a place the watermark passed at passedMs, and
// which Check calls spent at now, still holds its claim because the room
// was paused since: a pause earns nobody a burst, and costs nobody the
// admission they had (the page said their place is kept).
func (rt *roomRuntime) claimKept(passedMs, now int64) bool {
	pc := &rt.pause
	pc.mu.Lock()
	defer pc.mu.Unlock()
	held := pc.totalMs
	end := pc.lastEnd
	if pc.since != 0 {
		held += now - pc.since
		end = now
	}
	return passedMs < end && now-passedMs-held < rt.gate.ClaimWindowMs()
}

// configRate is the admit_per_second rt last applied from a config.
func (rt *roomRuntime) configRate() float64 { return math.Float64frombits(rt.configRateBits.Load()) }

// control is rt's status and admin rate, as saved and shared.
func (rt *roomRuntime) control() waitroom.Control {
	c := waitroom.Control{Status: roomStatusNames[rt.status.Load()], ConfigRate: rt.configRate(), MarksClearedMs: rt.marksCleared.Load()}
	if r := rt.gate.Rate(); r != c.ConfigRate {
		c.Rate = r
	}
	return c
}

// measuredRate is the EWMA of places admitted a second, or the configured
// rate while there is no measure (at start, or paused).
func (rt *roomRuntime) measuredRate() float64 {
	if r := math.Float64frombits(rt.ewma.Load()); r >= 0.01 && rt.status.Load() == roomOpen {
		return r
	}
	return rt.gate.Rate()
}

// freeSlots is how many more visitors the room has room for: limit
// (max_active) less the admissions inside and the places passed that
// may still claim (review 18, 6). Reservations whose claim window ended
// are dropped: their visitors' places are spent.
func (rt *roomRuntime) freeSlots(limit, nowMs int64) float64 {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	i := 0
	for i < len(rt.reserved) && rt.reserved[i].untilMs <= nowMs {
		i++
	}
	rt.reserved = rt.reserved[i:]
	used := 0.0
	for _, r := range rt.reserved {
		used += r.n
	}
	for _, e := range rt.active {
		if e > nowMs {
			used++
		}
	}
	return float64(limit) - used
}

// reserve records n places passed at the checkpoint of time ms, which
// may claim until untilMs.
func (rt *roomRuntime) reserve(ms, untilMs int64, n float64) {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if k := len(rt.reserved); k > 0 && rt.reserved[k-1].ms == ms {
		rt.reserved[k-1].n += n
		return
	}
	rt.reserved = append(rt.reserved, reservation{ms: ms, untilMs: untilMs, n: n})
}

// claimed releases the reservation of a place passed at passedMs that
// has claimed its admission: it is inside now. The caller holds rt.mu.
func (rt *roomRuntime) claimed(passedMs int64) {
	i, ok := slices.BinarySearchFunc(rt.reserved, passedMs, func(r reservation, ms int64) int { return cmp.Compare(r.ms, ms) })
	if ok {
		rt.reserved[i].n = max(rt.reserved[i].n-1, 0)
	}
}

// minPrune is the size of a room's active map below which it is not
// pruned unless max_active is reached.
const minPrune = 1024

// activate takes a place inside the room for idh's admission ending at
// expMs, unless limit (> 0) are inside already; passedMs is when its
// place was passed, whose reservation it takes up. An identity already
// inside keeps its admission: activate returns its expiry and fresh
// false, and takes no second place.
func (rt *roomRuntime) activate(idh [16]byte, limit int, nowMs, expMs, passedMs int64) (exp int64, fresh, ok bool) {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if e, in := rt.active[idh]; in && e > nowMs {
		return e, false, true
	}
	if limit > 0 && len(rt.active) >= limit || len(rt.active) >= max(rt.pruneAt, minPrune) {
		for k, e := range rt.active {
			if e <= nowMs {
				delete(rt.active, k)
			}
		}
		rt.pruneAt = 2 * len(rt.active)
		if limit > 0 && len(rt.active) >= limit {
			return 0, false, false
		}
	}
	if rt.active == nil {
		rt.active = map[[16]byte]int64{}
	}
	rt.active[idh] = expMs
	rt.claimed(passedMs)
	return expMs, true, true
}

// inside is how many admissions are still inside the room.
func (rt *roomRuntime) inside(nowMs int64) int {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	n := 0
	for _, e := range rt.active {
		if e > nowMs {
			n++
		}
	}
	return n
}

// client is the request's client address: the socket peer, or for a
// trusted peer the right-most untrusted X-Forwarded-For address.
func (x *exchange) client() netip.Addr {
	if !x.clientSet {
		x.clientAddr, x.clientSet = x.peer, true
		if x.trusted {
			x.clientAddr = ratelimit.ClientIPFields(x.peer, x.ctx.Request.Header.PeekAll(strXFFKey), x.st.trusted)
		}
	}
	return x.clientAddr
}

// identityIPv6Prefix is the prefix an IPv6 client is known by in a
// waiting room: a /64 is one subscriber's (RFC 6177), and privacy
// addresses (RFC 8981) change inside it, so one phone or household holds
// one place however many addresses it takes.
const identityIPv6Prefix = 64

// appendIdentity appends the request's identity in a waiting room: the
// client address (the socket peer, or for a trusted peer the right-most
// untrusted X-Forwarded-For address), IPv6 masked to /64, as 16 bytes.
// It is the same in every process, so a restarted edge keeps everybody's
// place, and the same on every route of a room, so the HTML and API
// paths agree. It never depends on a header the client chooses: keyed
// on one (a rate limit policy's header), one address could take a place
// per value (review 18, 9).
func (x *exchange) appendIdentity(dst []byte) []byte {
	a := x.client().Unmap()
	if a.Is6() {
		a = netip.PrefixFrom(a, identityIPv6Prefix).Masked().Addr()
	}
	b := a.As16()
	return append(dst, b[:]...)
}

// presentedToken is the room's token the request carries: the header
// (API clients) or else the cookie.
func presentedToken(ctx *fasthttp.RequestCtx, rs *roomState) []byte {
	if t := ctx.Request.Header.Peek(waitRoomHeader); len(t) > 0 {
		return t
	}
	return ctx.Request.Header.Cookie(rs.cookie)
}

// waitingRoom runs the room guarding the request's path, if any: it
// returns true when the request may go on (no room, or the visitor is
// admitted), and otherwise answers it (the waiting page, sold out) and
// finishes the exchange.
func (x *exchange) waitingRoom(path []byte) bool {
	var keyBuf [24]byte
	rs, key := x.st.matchRoomKey(path, keyBuf[:0])
	if rs == nil || x.method == methodOPTIONS {
		// A CORS preflight carries no cookie and no token (Fetch
		// standard, CORS-preflight request): answering it 429 would fail
		// the real request before it is sent, queue or not.
		return true
	}
	p, ctx, rt := x.p, x.ctx, rs.rt
	now := p.clock.NowMs()
	var idBuf [16]byte
	identity := x.appendIdentity(idBuf[:0])
	idh := rs.room.IdentityHash(identity) // once a request: each is an HMAC
	status := rt.status.Load()
	presented := presentedToken(ctx, rs)

	x.setGuard(rs, key)
	tok, reason := rs.room.VerifyHash(presented, idh, now)
	if reason == waitroom.Valid && tok.Kind == waitroom.KindAdmission {
		return true // inside: the session it was given has not run out
	}
	if status == roomClosed || rt.soldOut.has(key, now) {
		// The place token, if any, is left as it is: a game whose seats
		// come back (soldOutTTL) finds its waiting visitors in place.
		x.soldOut(rs)
		return false
	}
	var place waitroom.Place
	switch {
	case reason == waitroom.Valid && staleOpening(tok.Place, rt.opens, now+rt.gate.SettleMs()):
		// A place of another opening (opens_at edited): it was never
		// counted in this queue, and its place means nothing here. The
		// visitor is placed anew: into the pre-queue's draw when the
		// new opening is still to come.
		p.metrics.roomRefused(rs.cfg.Name, "stale_opening")
		place = rt.gate.Join(idh, rs.room.PlaceForHash(identity, idh, now))
	case reason == waitroom.Valid:
		place = tok.Place
		s, passedMs := rt.gate.Check(place)
		if s == waitroom.Spent && rt.claimKept(passedMs, now) {
			s = waitroom.Admitted
		}
		if s == waitroom.Spent {
			p.metrics.roomRefused(rs.cfg.Name, "spent")
			place = rt.gate.Join(idh, rs.room.PlaceForHash(identity, idh, now))
			break
		}
		if s == waitroom.Admitted && status == roomOpen {
			if exp, fresh, ok := rt.activate(tok.IDH, rs.cfg.MaxActive, now, now+rs.session.Milliseconds(), passedMs); ok {
				x.admit(rs, tok, now, exp, fresh)
				return true
			}
		}
		// Waiting (or admitted while the room is paused or full): a
		// token signed before the gate was made (a restart: its count is
		// lost) is counted once again; one signed since, not (Rejoin).
		// waitPage signs every place token placeLifetime before it
		// expires.
		place = rt.gate.Rejoin(idh, place, tok.ExpMs-placeLifetime.Milliseconds())
	default:
		// No token, or one refused: a new arrival, placed by its identity
		// and now, never by anything in the refused token. Having no
		// token at all is no refusal.
		if len(presented) > 0 {
			p.metrics.roomRefused(rs.cfg.Name, reason.String())
		}
		place = rt.gate.Join(idh, rs.room.PlaceForHash(identity, idh, now))
	}
	x.waitPage(rs, idh, place, now, status)
	return false
}

// staleOpening says whether place p belongs to another opening than
// opens (the room's opens_at in Unix ms, math.MinInt64/2 without one): a
// place of this queue is at the opening (the pre-queue) or after it, and
// not after latest (now and the clocks' skew): a place later than that is
// an old pre-queue's of a later opening.
func staleOpening(p waitroom.Place, opens, latest int64) bool {
	return p.Ms < opens || p.Ms > max(opens, latest)
}

// stripRoomTokens removes the rooms' cookies and token header from a
// request that goes on to the origin: they are the edge's, and an origin
// that logged or echoed them would hand out a visitor's admission.
func (x *exchange) stripRoomTokens() {
	h := &x.ctx.Request.Header
	h.Del(waitRoomHeader)
	if len(h.Peek(fasthttp.HeaderCookie)) == 0 {
		return
	}
	for _, rs := range x.st.rooms {
		h.DelCookie(rs.cookie)
	}
}

// admit exchanges the place token tok for an admission token, which the
// response carries, and counts the admission when it is fresh (not the
// same identity's admission given again).
func (x *exchange) admit(rs *roomState, tok waitroom.Token, now, exp int64, fresh bool) {
	p := x.p
	adm := waitroom.Token{Kind: waitroom.KindAdmission, IDH: tok.IDH, Place: tok.Place, AdmittedMs: now, ExpMs: exp}
	// The request goes on to the origin with the admission: finish sets
	// the cookie on whatever it answers (forwarding replaces the response).
	rs.room.AppendToken(x.admitTok[:0], adm)
	x.admitRoom = rs
	if !fresh {
		return
	}
	p.metrics.roomAdmitted(rs.cfg.Name, float64(max(now-tok.Place.Ms, 0))/1000)
}

// setRoomToken sets the room's cookie and header to tok. The cookie is
// Secure when the client came over TLS: to the edge itself, or to a
// trusted proxy in front that says so in X-Forwarded-Proto.
func (x *exchange) setRoomToken(rs *roomState, tok []byte, maxAge int64) {
	resp := &x.ctx.Response
	c := fasthttp.AcquireCookie()
	defer fasthttp.ReleaseCookie(c)
	c.SetKey(rs.cookie)
	c.SetValueBytes(tok)
	c.SetPath("/")
	c.SetHTTPOnly(true)
	c.SetSecure(x.ctx.IsTLS() || x.trusted && bytes.EqualFold(x.ctx.Request.Header.PeekBytes(strXForwardedProto), strHTTPS))
	c.SetSameSite(fasthttp.CookieSameSiteLaxMode)
	c.SetMaxAge(int(maxAge))
	resp.Header.SetCookie(c)
	resp.Header.SetBytesV(waitRoomHeader, tok)
}

// waitInfo is what a waiting visitor is told, on the page and as JSON
// (appendWaitJSON writes it by hand, in this order).
type waitInfo struct {
	Room                 string `json:"room"`
	Status               string `json:"status"` // waiting, paused, sold_out
	Position             int64  `json:"position"`
	Ahead                int64  `json:"ahead"`
	EstimatedWaitSeconds int64  `json:"estimated_wait_seconds"`
	RefreshSeconds       int64  `json:"refresh_seconds"`
}

// pageBufs are the buffers waiting pages and their JSON are written in:
// a page a refresh interval for every waiting visitor is the room's
// hot path (review 18, 5).
var pageBufs = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

// waitPage answers a waiting visitor: a page in the site's frame that
// reloads itself every refresh interval (no JavaScript), or for an API
// client 429 with JSON and Retry-After, so that a POST never looks like
// success. Either way the response carries the visitor's place token.
func (x *exchange) waitPage(rs *roomState, idh [16]byte, place waitroom.Place, now int64, status int32) {
	ctx, rt := x.ctx, rs.rt
	ahead := int64(math.Floor(rt.gate.Ahead(place)))
	info := waitInfo{Room: rs.cfg.Name, Status: "waiting", Position: ahead + 1, Ahead: ahead, RefreshSeconds: rs.refresh}
	if status == roomPaused {
		info.Status = "paused"
	}
	info.EstimatedWaitSeconds = int64(math.Ceil(float64(ahead+1) / rt.measuredRate()))
	if wait := place.Ms + rt.gate.SettleMs() - now; wait > 0 {
		// A place is not passed before the settle time, however short
		// the queue.
		info.EstimatedWaitSeconds = max(info.EstimatedWaitSeconds, (wait+999)/1000)
	}
	info.RefreshSeconds = nextVisit(rs.refresh, info.EstimatedWaitSeconds, status)
	t := waitroom.Token{Kind: waitroom.KindPlace, IDH: idh, Place: place, ExpMs: now + placeLifetime.Milliseconds()}
	var buf [waitroom.TokenLen]byte
	enc := rs.room.AppendToken(buf[:0], t)
	ctx.Response.Reset()
	x.setRoomToken(rs, enc, int64(placeLifetime/time.Second))
	ctx.Response.Header.Set("Cache-Control", "no-store")
	ctx.Response.Header.SetBytesV("X-Request-ID", x.id())
	if wantsJSON(ctx) {
		ctx.SetStatusCode(fasthttp.StatusTooManyRequests)
		var ra [20]byte
		ctx.Response.Header.SetBytesV("Retry-After", strconv.AppendInt(ra[:0], info.RefreshSeconds, 10))
	} else {
		ctx.SetStatusCode(fasthttp.StatusOK)
	}
	writeWaitInfo(ctx, &info)
	x.finish(time.Now())
}

// nextVisit is when a waiting visitor should come back, in seconds: the
// room's refresh, or sooner when the estimated wait is shorter (so the
// front of the queue comes back when it is due, not up to a refresh
// late), spread over ±1/4 of it at random. Without the spread, the
// visitors who arrived in one second come back together every refresh,
// and the admissions the watermark spread over several seconds reach the
// origin in one (the load bench saw 2,000 a second at a 500/s room).
func nextVisit(refresh, wait int64, status int32) int64 {
	s := refresh
	if status == roomOpen && wait < s {
		s = max(wait, 1)
	}
	if spread := s / 4; spread > 0 {
		s += rand.Int64N(2*spread+1) - spread
	}
	return s
}

// maxVisitAfter is the longest a waiting visitor is told to stay away
// (nextVisit): the hold after a start must cover it, or a visitor still
// away when the hold ends is passed uncounted, free of the rate.
func maxVisitAfter(refresh time.Duration) time.Duration {
	s := int64(refresh / time.Second)
	return time.Duration(s+s/4) * time.Second
}

// soldOut answers 409: the room is closed and admits nobody.
func (x *exchange) soldOut(rs *roomState) {
	ctx := x.ctx
	ctx.Response.Reset()
	ctx.SetStatusCode(fasthttp.StatusConflict)
	ctx.Response.Header.Set("Cache-Control", "no-store")
	ctx.Response.Header.SetBytesV("X-Request-ID", x.id())
	writeWaitInfo(ctx, &waitInfo{Room: rs.cfg.Name, Status: "sold_out"})
	x.finish(time.Now())
}

// writeWaitInfo writes info as the response's body: JSON for an API
// client, else the page.
func writeWaitInfo(ctx *fasthttp.RequestCtx, info *waitInfo) {
	bp := pageBufs.Get().(*[]byte)
	if wantsJSON(ctx) {
		ctx.SetContentType("application/json")
		*bp = appendWaitJSON((*bp)[:0], info)
	} else {
		ctx.SetContentType("text/html; charset=utf-8")
		*bp = appendWaitingPage((*bp)[:0], info)
	}
	ctx.Response.SetBody(*bp) // a copy: the buffer goes back to the pool
	pageBufs.Put(bp)
}

// appendWaitJSON appends info as JSON, as encoding/json writes it. Its
// strings need no escaping: the room's name is 1 to 64 of [A-Za-z0-9_-]
// (config refuses any other) and the status is one of the edge's own.
func appendWaitJSON(b []byte, info *waitInfo) []byte {
	b = append(b, `{"room":"`...)
	b = append(b, info.Room...)
	b = append(b, `","status":"`...)
	b = append(b, info.Status...)
	b = append(b, `","position":`...)
	b = strconv.AppendInt(b, info.Position, 10)
	b = append(b, `,"ahead":`...)
	b = strconv.AppendInt(b, info.Ahead, 10)
	b = append(b, `,"estimated_wait_seconds":`...)
	b = strconv.AppendInt(b, info.EstimatedWaitSeconds, 10)
	b = append(b, `,"refresh_seconds":`...)
	b = strconv.AppendInt(b, info.RefreshSeconds, 10)
	return append(b, "}\n"...)
}

// The waiting and sold-out page, in the frame of the edge's other pages
// (errors.go) and with the origin's card class. The refresh is a meta
// tag: it works without JavaScript. It is written from these pieces by
// appendWaitingPage; what goes between them are numbers and the room's
// name, which needs no HTML escaping ([A-Za-z0-9_-] only).
const (
	pageHead  = `<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">`
	pageStyle = ` · Podium</title>
<style>body{font-family:system-ui,sans-serif;margin:0;color:#1d2433}header{background:#14213d;color:#fff;padding:1rem 1.5rem;font-weight:700;font-size:1.2rem}main{max-width:36rem;margin:3rem auto;padding:0 1rem}h1{font-size:1.6rem}.card{border:1px solid #d8dce6;border-radius:.5rem;padding:1rem 1.5rem}.big{font-size:2.2rem;font-weight:700;margin:.2rem 0}p.note{color:#667;font-size:.85rem}a{color:#0b57d0}</style></head>
<body><header>Podium · Paris 2024 tickets</header><main>`
	pageSoldOut = `
<h1>Sold out</h1><p class="error">Every ticket for this sale has been sold; the queue is closed.</p><p><a href="/games">Back to the games</a></p>`
	pageQueued = `
<h1>You are in the queue</h1>
<div class="card" role="status">
<p>Your position</p><p class="big" id="position">`
	pageTail = `
</main></body></html>
`
)

// appendWaitingPage appends the page telling info.
func appendWaitingPage(b []byte, info *waitInfo) []byte {
	b = append(b, pageHead...)
	if info.Status == "sold_out" {
		b = append(b, "\n<title>Sold out"...)
		b = append(b, pageStyle...)
		b = append(b, pageSoldOut...)
		return append(b, pageTail...)
	}
	b = append(b, `<meta http-equiv="refresh" content="`...)
	b = strconv.AppendInt(b, info.RefreshSeconds, 10)
	b = append(b, "\">\n<title>You are in the queue"...)
	b = append(b, pageStyle...)
	b = append(b, pageQueued...)
	b = strconv.AppendInt(b, info.Position, 10)
	b = append(b, `</p>
<p><span id="ahead">`...)
	b = strconv.AppendInt(b, info.Ahead, 10)
	if info.Ahead == 1 {
		b = append(b, "</span> person is ahead of you."...)
	} else {
		b = append(b, "</span> people are ahead of you."...)
	}
	if info.Status == "paused" {
		b = append(b, " The sale is paused for a moment; your place is kept."...)
	} else {
		b = append(b, ` Estimated wait: <span id="wait">`...)
		b = appendWait(b, info.EstimatedWaitSeconds)
		b = append(b, "</span>."...)
	}
	b = append(b, "</p>\n</div>\n<p>This page refreshes itself in "...)
	b = strconv.AppendInt(b, info.RefreshSeconds, 10)
	if info.RefreshSeconds == 1 {
		b = append(b, " second"...)
	} else {
		b = append(b, " seconds"...)
	}
	b = append(b, ". Keep it open: reloading it or opening it in more tabs keeps your place but does not move you ahead.</p>\n<p class=\"note\">Queue "...)
	b = append(b, info.Room...)
	b = append(b, "</p>"...)
	return append(b, pageTail...)
}

// appendWait appends a wait of s seconds as a fan reads it: "45 s",
// "about 3 min", "about 1 h 05 min" (rounded up to the minute past one).
func appendWait(b []byte, s int64) []byte {
	if s < 60 {
		b = strconv.AppendInt(b, max(s, 0), 10)
		return append(b, " s"...)
	}
	m := (s + 59) / 60
	b = append(b, "about "...)
	if m < 60 {
		b = strconv.AppendInt(b, m, 10)
		return append(b, " min"...)
	}
	b = strconv.AppendInt(b, m/60, 10)
	b = append(b, " h "...)
	if m%60 < 10 {
		b = append(b, '0')
	}
	b = strconv.AppendInt(b, m%60, 10)
	return append(b, " min"...)
}

// writeJSON writes v as the JSON body: the admin API's answers.
func writeJSON(ctx *fasthttp.RequestCtx, v any) {
	ctx.SetContentType("application/json")
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // the edge's own types: a bug
	}
	ctx.Response.SetBodyRaw(append(b, '\n'))
}

// roomView is one room in GET /rooms.
type roomView struct {
	Name           string  `json:"name"`
	Status         string  `json:"status"`
	AdmitPerSecond float64 `json:"admit_per_second"`
	AdmittedPerSec float64 `json:"admitted_per_second"` // measured (EWMA)
	QueueLength    int64   `json:"queue_length"`
	WatermarkMs    int64   `json:"watermark_ms"`
	Inside         int     `json:"inside"`
	MaxActive      int     `json:"max_active,omitempty"`
	Epoch          uint32  `json:"epoch"`
	EstimatedWaitS int64   `json:"estimated_wait_seconds"`
	RefreshSeconds int64   `json:"refresh_seconds"`
	SessionSeconds int64   `json:"session_seconds"`
	OpensAt        string  `json:"opens_at,omitempty"`
	// SoldOut are the games (what the paths' "*" stood for, "45/") the
	// origin said are sold out: their visitors are told so.
	SoldOut         []string `json:"sold_out,omitempty"`
	WatermarkPlaceT uint64   `json:"watermark_tiebreak"`
}

func (rs *roomState) view(now int64) roomView {
	rt := rs.rt
	w := rt.gate.Watermark()
	q := rt.gate.Queued()
	return roomView{Name: rs.cfg.Name, Status: roomStatusNames[rt.status.Load()], AdmitPerSecond: rt.gate.Rate(),
		AdmittedPerSec: math.Float64frombits(rt.ewma.Load()), QueueLength: int64(math.Round(q)),
		WatermarkMs: max(w.Ms, 0), WatermarkPlaceT: w.TB, Inside: rt.inside(now), MaxActive: rs.cfg.MaxActive, Epoch: rs.cfg.Epoch,
		EstimatedWaitS: int64(math.Ceil(q / rt.measuredRate())), RefreshSeconds: rs.refresh,
		SessionSeconds: int64(rs.session / time.Second), OpensAt: rs.cfg.OpensAt, SoldOut: rt.soldOut.list(now)}
}
