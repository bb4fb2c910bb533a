// Command nodenet is the node networking daemon: pod IPs and veths (CNI), routes between nodes,
// Service load balancing in nftables and a node-local DNS cache, in one process per node.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/nodenet/nodenet/config"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

const usage = `nodenet — node networking daemon (pod IPs, routes, Services, DNS)

Usage:
  nodenet daemon --config FILE   run the daemon
  nodenet dns-keeper --socket P  hold the DNS sockets while the daemon restarts
  nodenet version                print the version

Run "nodenet COMMAND -h" for a command's flags.
`

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "nodenet:", err)
		os.Exit(1)
	}
}

func run(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return errors.New("no command given")
	}
	switch args[0] {
	case "daemon":
		return runDaemon(args[1:], stderr)
	case "dns-keeper":
		return runDNSKeeper(args[1:], stderr)
	case "version", "--version":
		fmt.Fprintln(stdout, version)
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	default:
		fmt.Fprint(stderr, usage)
		return fmt.Errorf("unknown command %q", args[0])
	}
}

func runDaemon(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("daemon", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "", "configuration file (YAML, kind NodenetConfig); empty = all defaults")
	shimPath := fs.String("cni-shim", "", "nodenet-cni binary to install into cni.binDir (default: beside this executable)")
	logLevel := fs.String("log-level", "", "override logging.level (debug, info, warn, error)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("daemon: unexpected arguments %q", fs.Args())
	}
	var cfg *config.Config
	var err error
	if *configPath == "" {
		cfg, err = config.Parse(nil)
	} else {
		cfg, err = config.Load(*configPath)
	}
	if err != nil {
		return err
	}
	if *logLevel != "" {
		cfg.Logging.Level = *logLevel
		if err := cfg.Validate(); err != nil {
			return fmt.Errorf("--log-level: %w", err)
		}
	}
	if *shimPath == "" {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("find own executable for --cni-shim: %w", err)
		}
		*shimPath = filepath.Join(filepath.Dir(exe), "nodenet-cni")
	}
	log, err := newLogger(cfg.Logging)
	if err != nil {
		return err
	}
	// Sync fails on a terminal stderr; there is nothing left to do about it at exit.
	defer log.Sync()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	// The first signal starts a graceful stop; a second one ends the process at once.
	context.AfterFunc(ctx, stop)
	d := &daemon{cfg: cfg, shimPath: *shimPath, log: log}
	return d.run(ctx)
}
