package ratelimit

import "net/netip"

// ClientIP returns the address a request is rate limited by: the socket
// peer, unless the peer is one of the trusted proxies, in which case it is
// the right-most address of X-Forwarded-For that is not itself trusted.
//
// This is nginx's real_ip_from + real_ip_recursive on, and what Envoy's
// xff_trusted_cidrs does: the walk starts at the peer and moves left
// through the header only while the hop it stands on is trusted, because
// only a trusted hop's word about the hop before it is worth anything. So:
//
//   - An untrusted peer: the header is ignored, whatever it says. A client
//     that spoofs X-Forwarded-For from the internet changes nothing.
//   - The walk stops at the first untrusted address, and returns it.
//   - Every address trusted: the left-most one (it is as far as we can see).
//   - A malformed entry stops the walk; the last good address (a trusted
//     one, possibly the peer) is returned, as nginx does. A trusted proxy
//     appends well-formed addresses, so garbage can only sit to the left of
//     the hop that wrote it, which is where the walk stops anyway.
//
// Entries are separated by commas with optional spaces or tabs around them;
// empty entries are skipped (RFC 9110 §5.6.1). An entry is an IPv4 or IPv6
// address, an IPv4 address with ":port", or an IPv6 address in brackets
// with an optional ":port" (some load balancers append ports). IPv6 zones
// are malformed. IPv4-mapped IPv6 addresses, in the header or as the peer,
// are returned as IPv4.
//
// xff is one X-Forwarded-For field value. A request that carries several
// X-Forwarded-For fields must be passed to ClientIPFields instead: the
// right-most entries, the only ones a trusted proxy wrote, are in the last
// field, and a caller that reads only the first field reads the client's.
//
// ClientIP does not allocate and is safe for concurrent use.
func ClientIP(peer netip.Addr, xff []byte, trusted []netip.Prefix) netip.Addr {
	cur := peer.Unmap()
	if !inPrefixes(trusted, cur) {
		return cur
	}
	cur, _ = walkXFF(cur, xff, trusted)
	return cur
}

// ClientIPFields is ClientIP for a request with several X-Forwarded-For
// fields, in the order they appear in the request (RFC 9110 §5.3: they are
// one comma-separated list in that order).
func ClientIPFields(peer netip.Addr, fields [][]byte, trusted []netip.Prefix) netip.Addr {
	cur := peer.Unmap()
	if !inPrefixes(trusted, cur) {
		return cur
	}
	for i := len(fields) - 1; i >= 0; i-- {
		var more bool
		if cur, more = walkXFF(cur, fields[i], trusted); !more {
			break
		}
	}
	return cur
}

// walkXFF walks one field value from the right, starting from the trusted
// address cur. It returns the client address and whether the walk may go
// on into the field before this one (every entry here was good and
// trusted).
func walkXFF(cur netip.Addr, xff []byte, trusted []netip.Prefix) (netip.Addr, bool) {
	end := len(xff)
	for end > 0 {
		start := end - 1
		for start >= 0 && xff[start] != ',' {
			start--
		}
		entry := trimOWS(xff[start+1 : end])
		end = start
		if end < 0 {
			end = 0
		}
		if len(entry) == 0 {
			continue
		}
		a, ok := parseEntry(entry)
		if !ok {
			return cur, false
		}
		cur = a
		if !inPrefixes(trusted, a) {
			return cur, false
		}
	}
	return cur, true
}

// inPrefixes reports whether a lies in one of ps. A prefix written in
// IPv4-mapped form (::ffff:10.0.0.0/104) matches the IPv4 addresses it
// denotes, since every address here is unmapped.
func inPrefixes(ps []netip.Prefix, a netip.Addr) bool {
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
		if a.Is4() && p.Addr().Is4In6() && p.Contains(netip.AddrFrom16(a.As16())) {
			return true
		}
	}
	return false
}

func trimOWS(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

// parseEntry parses one X-Forwarded-For entry: addr, v4:port, [v6] or
// [v6]:port. The result is unmapped.
func parseEntry(b []byte) (netip.Addr, bool) {
	if b[0] == '[' {
		i := indexByte(b, ']')
		if i < 0 || !isPort(b[i+1:], true) {
			return netip.Addr{}, false
		}
		a, ok := parseIPv6(b[1:i])
		return a.Unmap(), ok
	}
	if c := indexByte(b, ':'); c >= 0 && indexByte(b[c+1:], ':') < 0 {
		// Exactly one colon: only an IPv4 address with a port.
		if !isPort(b[c:], false) {
			return netip.Addr{}, false
		}
		return parseIPv4(b[:c])
	}
	a, ok := parseAddr(b)
	return a.Unmap(), ok
}

// parseAddr is netip.ParseAddr without zones, for bytes: the first '.' or
// ':' decides the family.
func parseAddr(b []byte) (netip.Addr, bool) {
	for _, c := range b {
		switch c {
		case ':':
			return parseIPv6(b)
		case '.':
			return parseIPv4(b)
		}
	}
	return netip.Addr{}, false
}

// isPort reports whether b is ":" followed by a port of 1 to 5 digits no
// greater than 65535, or is empty when optional.
func isPort(b []byte, optional bool) bool {
	if len(b) == 0 {
		return optional
	}
	if b[0] != ':' || len(b) < 2 || len(b) > 6 {
		return false
	}
	n := 0
	for _, c := range b[1:] {
		if c < '0' || c > '9' {
			return false
		}
		n = n*10 + int(c-'0')
	}
	return n <= 65535
}

func indexByte(b []byte, c byte) int {
	for i, x := range b {
		if x == c {
			return i
		}
	}
	return -1
}

// The parsers below accept exactly what netip.ParseAddr accepts, minus
// zones (the fuzz test holds them to that). They exist because ParseAddr
// takes a string and allocates an error for every malformed input, and a
// header is attacker-controlled bytes on the hot path.

// parseIPv4 parses dotted decimal: four fields, each 0-255, no leading zeros.
func parseIPv4(b []byte) (netip.Addr, bool) {
	var out [4]byte
	if !parseIPv4Into(b, &out) {
		return netip.Addr{}, false
	}
	return netip.AddrFrom4(out), true
}

func parseIPv4Into(b []byte, out *[4]byte) bool {
	field, digits, val := 0, 0, 0
	for i := 0; i < len(b); i++ {
		c := b[i]
		switch {
		case c >= '0' && c <= '9':
			if digits == 1 && val == 0 {
				return false // leading zero: octal to some parsers, so ambiguous
			}
			val = val*10 + int(c-'0')
			digits++
			if val > 255 {
				return false
			}
		case c == '.':
			if digits == 0 || field == 3 {
				return false
			}
			out[field] = byte(val)
			field++
			digits, val = 0, 0
		default:
			return false
		}
	}
	if digits == 0 || field != 3 {
		return false
	}
	out[3] = byte(val)
	return true
}

// parseIPv6 parses RFC 4291 §2.2 text: hex groups, one optional "::", an
// optional trailing dotted IPv4 in the last 32 bits.
func parseIPv6(s []byte) (netip.Addr, bool) {
	var ip [16]byte
	ellipsis := -1 // where in ip the "::" stands
	if len(s) >= 2 && s[0] == ':' && s[1] == ':' {
		ellipsis = 0
		s = s[2:]
		if len(s) == 0 {
			return netip.IPv6Unspecified(), true
		}
	}
	i := 0
	for i < 16 {
		off, acc := 0, uint32(0)
		for ; off < len(s); off++ {
			c := s[off]
			switch {
			case c >= '0' && c <= '9':
				acc = acc<<4 + uint32(c-'0')
			case c >= 'a' && c <= 'f':
				acc = acc<<4 + uint32(c-'a'+10)
			case c >= 'A' && c <= 'F':
				acc = acc<<4 + uint32(c-'A'+10)
			default:
				goto done
			}
			if off > 3 {
				return netip.Addr{}, false // more than four hex digits
			}
		}
	done:
		if off == 0 {
			return netip.Addr{}, false
		}
		if off < len(s) && s[off] == '.' {
			// Trailing IPv4: only in the last 32 bits, or anywhere after "::".
			if (ellipsis < 0 && i != 12) || i+4 > 16 {
				return netip.Addr{}, false
			}
			var v4 [4]byte
			if !parseIPv4Into(s, &v4) {
				return netip.Addr{}, false
			}
			copy(ip[i:], v4[:])
			s = nil
			i += 4
			break
		}
		ip[i], ip[i+1] = byte(acc>>8), byte(acc)
		i += 2
		s = s[off:]
		if len(s) == 0 {
			break
		}
		if s[0] != ':' || len(s) == 1 {
			return netip.Addr{}, false
		}
		s = s[1:]
		if s[0] == ':' {
			if ellipsis >= 0 {
				return netip.Addr{}, false // a second "::"
			}
			ellipsis = i
			s = s[1:]
			if len(s) == 0 {
				break
			}
		}
	}
	if len(s) != 0 {
		return netip.Addr{}, false
	}
	if i < 16 {
		if ellipsis < 0 {
			return netip.Addr{}, false
		}
		n := 16 - i
		for j := i - 1; j >= ellipsis; j-- {
			ip[j+n] = ip[j]
		}
		clear(ip[ellipsis : ellipsis+n])
	} else if ellipsis >= 0 {
		return netip.Addr{}, false // "::" must stand for at least one group
	}
	return netip.AddrFrom16(ip), true
}
