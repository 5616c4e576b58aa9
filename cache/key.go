package cache

import (
	"bytes"

	"github.com/cespare/xxhash/v2"
)

// maxQueryParams bounds the parameters a key sorts; a query with more is
// not normalised (and so is cached as sent).
const maxQueryParams = 16

// AppendKey appends the cache key of a GET or HEAD (they share entries) to
// dst: the path, the query with its parameters sorted, a NUL, and the host
// in lower case. The path comes first so that purging by path prefix is a
// prefix match on keys. It allocates nothing when dst has room.
//
// path must be the request's normalised path, which holds no '?' and no
// NUL: then the part before the NUL, Target, is one request-target, and
// the edge forwards exactly that, so that a key never stands for two
// requests the origin could tell apart.
func AppendKey(dst, path, query, host []byte) []byte {
	dst = append(dst, path...)
	if len(query) > 0 {
		dst = append(dst, '?')
		n := len(dst)
		if dst = appendSortedQuery(dst, query); len(dst) == n {
			dst = dst[:n-1] // only empty parameters ("?&"): no query at all
		}
	}
	dst = append(dst, 0)
	for _, c := range host {
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		dst = append(dst, c)
	}
	return dst
}

// Target is the request-target a key stands for: its path and normalised
// query, what the edge sends the origin for it.
func Target(key []byte) []byte {
	if i := bytes.IndexByte(key, 0); i >= 0 {
		return key[:i]
	}
	return key
}

// KeyPath is the path of a key: what PurgePath names.
func KeyPath(key []byte) []byte {
	t := Target(key)
	if i := bytes.IndexByte(t, '?'); i >= 0 {
		return t[:i]
	}
	return t
}

// appendSortedQuery normalises a query: parameters sorted (a stable
// insertion sort, so repeated names keep their order), empty ones dropped.
// "b=2&a=1" and "a=1&b=2" are one entry.
func appendSortedQuery(dst, query []byte) []byte {
	var params [maxQueryParams][]byte
	n := 0
	for q := query; len(q) > 0; {
		var p []byte
		p, q, _ = bytes.Cut(q, []byte{'&'})
		if len(p) == 0 {
			continue
		}
		if n == maxQueryParams {
			return append(dst, query...) // too many to sort: the whole query as sent
		}
		params[n] = p
		n++
	}
	for i := 1; i < n; i++ {
		for j := i; j > 0 && bytes.Compare(paramName(params[j]), paramName(params[j-1])) < 0; j-- {
			params[j], params[j-1] = params[j-1], params[j]
		}
	}
	for i := 0; i < n; i++ {
		if i > 0 {
			dst = append(dst, '&')
		}
		dst = append(dst, params[i]...)
	}
	return dst
}

func paramName(p []byte) []byte {
	if i := bytes.IndexByte(p, '='); i >= 0 {
		return p[:i]
	}
	return p
}

// AppendVariant appends to a base key the values of the request headers
// that the stored response's Vary names, so variants never mix.
// header returns a request header's value by lower-case name.
func AppendVariant(dst []byte, vary []string, header func(name string) []byte) []byte {
	for _, name := range vary {
		dst = append(dst, 1)
		dst = append(dst, name...)
		dst = append(dst, ':')
		dst = append(dst, bytes.TrimSpace(header(name))...)
	}
	return dst
}

// Hash is the store's hash of a key.
func Hash(key []byte) uint64 { return xxhash.Sum64(key) }
