package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os/signal"
	"syscall"

	"github.com/nodenet/nodenet/config"
	"github.com/nodenet/nodenet/dns/listen"
)

// runDNSKeeper runs the process that holds the DNS sockets while the daemon restarts (see
// dns/listen). It is meant to run for as long as the node, in a container of its own.
func runDNSKeeper(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("dns-keeper", flag.ContinueOnError)
	fs.SetOutput(stderr)
	socket := fs.String("socket", "", "unix socket to serve, made mode 0600 (the daemon's is <runDir>/dns-keeper.sock)")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("dns-keeper: unexpected arguments %q", fs.Args())
	}
	if *socket == "" {
		return errors.New("dns-keeper: --socket is required")
	}
	log, err := newLogger(config.Logging{Level: *logLevel, Format: "json"})
	if err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	// Sync fails on a terminal stderr; there is nothing left to do about it at exit.
	defer log.Sync()

	k, err := listen.NewKeeper(listen.KeeperConfig{Socket: *socket, Log: log})
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	return k.Run(ctx)
}
