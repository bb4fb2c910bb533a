// Command nodenet-cni is the CNI plugin the container runtime executes. It forwards each call to
// the nodenet daemon on the node; see package shim. Executed under the name "loopback" (the
// daemon links it under that name where a node has no loopback plugin), it is the CNI loopback
// plugin instead.
package main

import (
	"os"
	"path/filepath"

	"github.com/nodenet/nodenet/cniexec/shim"
)

func main() {
	if filepath.Base(os.Args[0]) == shim.LoopbackName {
		os.Exit(shim.RunLoopback(os.Getenv, os.Stdin, os.Stdout))
	}
	os.Exit(shim.Run(os.Getenv, os.Stdin, os.Stdout))
}
