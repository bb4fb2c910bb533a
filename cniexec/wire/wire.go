// Package wire is the protocol between the nodenet-cni shim and the daemon: one JSON request and
// one JSON response per unix-socket connection. It imports only the standard library because the
// shim's start-up time is most of a CNI ADD.
package wire

import "encoding/json"

// MaxRequestBytes bounds what either side reads: a network configuration larger than this is
// rejected before it reaches the daemon's decoder.
const MaxRequestBytes = 1 << 20

// DefaultSocket is where the daemon listens when the network configuration names no socket.
const DefaultSocket = "/run/nodenet/cni.sock"

// SupportedVersions lists the CNI spec versions nodenet accepts, oldest first.
var SupportedVersions = []string{"0.3.1", "0.4.0", "1.0.0", "1.1.0"}

// CNI error codes of the spec (SPEC.md "Error" section) that nodenet returns.
const (
	CodeIncompatibleVersion = 1
	CodeUnknownContainer    = 3
	CodeInvalidEnvironment  = 4
	CodeIOFailure           = 5
	CodeDecodeFailure       = 6
	CodeInvalidConfig       = 7
	CodeTryAgainLater       = 11
	CodeNotAvailable        = 50
	CodeInternal            = 999
)

// Request carries the CNI_* environment and stdin of one shim invocation.
type Request struct {
	Command     string `json:"command"`
	ContainerID string `json:"containerID,omitempty"`
	Netns       string `json:"netns,omitempty"`
	IfName      string `json:"ifName,omitempty"`
	Args        string `json:"args,omitempty"`
	Path        string `json:"path,omitempty"`
	// NetnsFD says the shim sent an open descriptor of CNI_NETNS with the request (SCM_RIGHTS).
	NetnsFD bool            `json:"netnsFD,omitempty"`
	Config  json.RawMessage `json:"config"`
}

// Response is either the CNI result to print or a CNI error.
type Response struct {
	Result json.RawMessage `json:"result,omitempty"`
	Error  *Error          `json:"error,omitempty"`
}

// Error is the CNI error object printed on stdout.
type Error struct {
	CNIVersion string `json:"cniVersion"`
	Code       uint   `json:"code"`
	Msg        string `json:"msg"`
	Details    string `json:"details,omitempty"`
}

func (e *Error) Error() string {
	if e.Details != "" {
		return e.Msg + ": " + e.Details
	}
	return e.Msg
}

// CapabilityPortMappings is the capability the conflist advertises so that runtimes pass a pod's
// hostPort mappings as runtimeConfig.portMappings, as they do for the reference portmap plugin.
const CapabilityPortMappings = "portMappings"

// RuntimeConfig is the runtimeConfig object libcni injects into the network configuration for the
// capabilities the plugin advertises. The shim forwards the configuration unchanged (Request.Config
// holds all of stdin), so only the daemon decodes it; it is defined here because it is part of what
// travels between the runtime, the shim and the daemon.
type RuntimeConfig struct {
	PortMappings []PortMapping `json:"portMappings,omitempty"`
}

// PortMapping is one entry of runtimeConfig.portMappings, in the runtimes' spelling (containerd,
// CRI-O): protocol in lower case ("tcp", "udp", "sctp"; empty means tcp), hostIP empty for every
// address of the node.
type PortMapping struct {
	HostPort      int    `json:"hostPort"`
	ContainerPort int    `json:"containerPort"`
	Protocol      string `json:"protocol,omitempty"`
	HostIP        string `json:"hostIP,omitempty"`
}

// PluginConf holds the keys of nodenet's entry in the conflist that the shim itself reads.
type PluginConf struct {
	CNIVersion string `json:"cniVersion"`
	Name       string `json:"name"`
	Type       string `json:"type"`
	Socket     string `json:"socket,omitempty"`
	LogFile    string `json:"logFile,omitempty"`
}

// IsSupported reports whether v is one of SupportedVersions.
func IsSupported(v string) bool {
	for _, s := range SupportedVersions {
		if s == v {
			return true
		}
	}
	return false
}
