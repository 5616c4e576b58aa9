package ratelimit

import "net/netip"

// AllowList is a set of CIDRs whose clients bypass rate limits: the load
// testers, the monitoring probes, the other edges' health checks.
//
// Contains scans the prefixes in order, which for the handful an edge
// lists is faster than any tree. The zero AllowList and a nil *AllowList
// contain nothing. An AllowList is immutable once made and safe for
// concurrent use.
type AllowList struct {
	prefixes []netip.Prefix
}

// NewAllowList returns an AllowList of prefixes, masked to their length and
// with IPv4-mapped IPv6 prefixes (::ffff:10.0.0.0/104) turned into the IPv4
// prefixes they denote. Invalid prefixes are skipped; config validation is
// the place that rejects them.
func NewAllowList(prefixes []netip.Prefix) *AllowList {
	a := &AllowList{prefixes: make([]netip.Prefix, 0, len(prefixes))}
	for _, p := range prefixes {
		if !p.IsValid() {
			continue
		}
		if p.Addr().Is4In6() && p.Bits() >= 96 {
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		a.prefixes = append(a.prefixes, p.Masked())
	}
	return a
}

// Contains reports whether addr (IPv4-mapped addresses unmapped first) lies
// in one of the list's prefixes. It does not allocate.
func (a *AllowList) Contains(addr netip.Addr) bool {
	if a == nil {
		return false
	}
	return inPrefixes(a.prefixes, addr.Unmap())
}

// Prefixes returns a copy of the list's prefixes, normalised.
func (a *AllowList) Prefixes() []netip.Prefix {
	if a == nil {
		return nil
	}
	return append([]netip.Prefix(nil), a.prefixes...)
}
