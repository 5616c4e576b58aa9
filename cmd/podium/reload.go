package main

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/fsnotify/fsnotify"
)

// reloadDebounce gathers the several events one save makes (an editor's
// write, chmod and rename) into one reload.
const reloadDebounce = 150 * time.Millisecond

// watchConfig calls reload on SIGHUP and whenever the config file changes.
// It watches the file's directory, not the file: editors and config
// management replace a file by renaming a new one over it, which a watch
// on the old inode would miss (fsnotify's own advice).
func watchConfig(ctx context.Context, path string, log *slog.Logger, reload func(context.Context, string)) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)

	var events <-chan fsnotify.Event
	var errs <-chan error
	w, err := fsnotify.NewWatcher()
	if err == nil {
		err = w.Add(filepath.Dir(path))
	}
	if err != nil {
		log.Warn("cannot watch the config file; reload with SIGHUP", "path", path, "error", err.Error())
	} else {
		defer w.Close()
		events, errs = w.Events, w.Errors
	}
	want := filepath.Clean(path)
	var debounce <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			reload(ctx, "SIGHUP")
		case ev := <-events:
			if filepath.Clean(ev.Name) == want && ev.Op&(fsnotify.Write|fsnotify.Create|fsnotify.Rename) != 0 {
				debounce = time.After(reloadDebounce)
			}
		case err := <-errs:
			log.Warn("config watch error", "error", err.Error())
		case <-debounce:
			debounce = nil
			reload(ctx, "file changed")
		}
	}
}
