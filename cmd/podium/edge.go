package main

import "errors"

func runEdge(args []string) error { return errors.New("edge: not built yet") }
