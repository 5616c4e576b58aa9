package main

import "errors"

// runOrigin is replaced by the origin work (issue 3).
func runOrigin(args []string) error { return errors.New("origin: not built yet") }
