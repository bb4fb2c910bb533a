// Command nodenet-cni is the CNI plugin the container runtime executes. It forwards each call to
// the nodenet daemon on the node; see package shim.
package main

import (
	"os"

	"github.com/nodenet/nodenet/cniexec/shim"
)

func main() {
	os.Exit(shim.Run(os.Getenv, os.Stdin, os.Stdout))
}
