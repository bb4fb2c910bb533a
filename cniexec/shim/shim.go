// Package shim is the whole of the nodenet-cni binary: it checks the CNI environment and
// configuration, answers VERSION itself and forwards every other command to the daemon over its
// unix socket. Executed as "loopback", it is the CNI loopback plugin (loopback.go), which needs no
// daemon. Standard library and golang.org/x/sys/unix only, and no package-level initialisation,
// so an exec costs what a small static binary costs.
package shim

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"time"

	"github.com/nodenet/nodenet/cniexec/wire"
)

// Timeouts. Dialling a local socket either works at once or the daemon is down: fail fast with
// "try again later" so the runtime never wedges. The exchange itself may wait behind other ADDs of
// the same container, so it gets the time a runtime allows a CNI call.
const (
	dialTimeout     = 2 * time.Second
	exchangeTimeout = 3 * time.Minute
)

// Env is the process environment the shim reads (os.Getenv in production).
type Env func(string) string

// Run executes one CNI invocation and returns the process exit code.
func Run(env Env, stdin io.Reader, stdout io.Writer) int {
	resp, logFile := run(env, stdin)
	if resp.Error != nil {
		logError(logFile, env, resp.Error)
	}
	return respond(stdout, resp)
}

// respond prints resp as the runtime expects it, the result or the error object, and returns the
// exit code.
func respond(stdout io.Writer, resp wire.Response) int {
	if resp.Error != nil {
		if resp.Error.CNIVersion == "" {
			resp.Error.CNIVersion = wire.SupportedVersions[len(wire.SupportedVersions)-1]
		}
		_ = json.NewEncoder(stdout).Encode(resp.Error) // stdout is all there is; nothing else to report to
		return 1
	}
	if len(resp.Result) > 0 {
		if _, err := stdout.Write(append(resp.Result, '\n')); err != nil {
			return 1
		}
	}
	return 0
}

func run(env Env, stdin io.Reader) (wire.Response, string) {
	cmd := env("CNI_COMMAND")
	if cmd == "" {
		return fail("", wire.CodeInvalidEnvironment, "CNI_COMMAND is not set", "want one of ADD, DEL, CHECK, VERSION, STATUS, GC"), ""
	}
	data, e := readConfig(stdin)
	if e != nil {
		return wire.Response{Error: e}, ""
	}
	var conf wire.PluginConf
	if cmd == "VERSION" {
		// VERSION may be sent with an empty or partial config; the spec wants an answer regardless.
		_ = json.Unmarshal(data, &conf) // a missing cniVersion just means "the newest"
		return version(conf.CNIVersion), ""
	}
	if err := json.Unmarshal(data, &conf); err != nil {
		return fail("", wire.CodeDecodeFailure, "network configuration on stdin is not valid JSON", err.Error()), ""
	}
	if e := checkVersion(conf.CNIVersion); e != nil {
		return wire.Response{Error: e}, conf.LogFile
	}
	req := wire.Request{
		Command:     cmd,
		ContainerID: env("CNI_CONTAINERID"),
		Netns:       env("CNI_NETNS"),
		IfName:      env("CNI_IFNAME"),
		Args:        env("CNI_ARGS"),
		Path:        env("CNI_PATH"),
		Config:      data,
	}
	if e := checkEnv(req); e != nil {
		e.CNIVersion = conf.CNIVersion
		return wire.Response{Error: e}, conf.LogFile
	}
	netns, e := openNetns(req)
	if e != nil {
		e.CNIVersion = conf.CNIVersion
		return wire.Response{Error: e}, conf.LogFile
	}
	if netns != nil {
		defer netns.Close()
		req.NetnsFD = true
	}
	socket := conf.Socket
	if socket == "" {
		socket = wire.DefaultSocket
	}
	resp, err := exchange(socket, req, netns)
	if err != nil {
		code := uint(wire.CodeTryAgainLater)
		if cmd == "STATUS" {
			code = wire.CodeNotAvailable
		}
		return fail(conf.CNIVersion, code, "nodenet daemon is not reachable; try again later",
			fmt.Sprintf("socket %s: %v", socket, err)), conf.LogFile
	}
	if resp.Error != nil && resp.Error.CNIVersion == "" {
		resp.Error.CNIVersion = conf.CNIVersion
	}
	return resp, conf.LogFile
}

// readConfig reads the network configuration from stdin, at most wire.MaxRequestBytes of it.
func readConfig(stdin io.Reader) ([]byte, *wire.Error) {
	data, err := io.ReadAll(io.LimitReader(stdin, wire.MaxRequestBytes+1))
	if err != nil {
		return nil, &wire.Error{Code: wire.CodeIOFailure, Msg: "read network configuration from stdin", Details: err.Error()}
	}
	if len(data) > wire.MaxRequestBytes {
		return nil, &wire.Error{Code: wire.CodeInvalidConfig, Msg: "network configuration on stdin is too large",
			Details: fmt.Sprintf("more than %d bytes", wire.MaxRequestBytes)}
	}
	return data, nil
}

// checkVersion accepts the configuration's cniVersion when it is one of wire.SupportedVersions.
func checkVersion(v string) *wire.Error {
	if v == "" {
		return &wire.Error{Code: wire.CodeInvalidConfig, Msg: "network configuration has no cniVersion"}
	}
	if !wire.IsSupported(v) {
		return &wire.Error{CNIVersion: v, Code: wire.CodeIncompatibleVersion, Msg: fmt.Sprintf("cniVersion %q is not supported", v),
			Details: fmt.Sprintf("supported: %v", wire.SupportedVersions)}
	}
	return nil
}

// checkEnv applies the spec's per-command required variables.
func checkEnv(req wire.Request) *wire.Error {
	var need []string
	switch req.Command {
	case "ADD", "CHECK":
		need = []string{"CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"}
	case "DEL":
		need = []string{"CNI_CONTAINERID", "CNI_IFNAME"}
	case "STATUS", "GC":
	default:
		return &wire.Error{Code: wire.CodeInvalidEnvironment, Msg: fmt.Sprintf("CNI_COMMAND %q is not supported", req.Command),
			Details: "want one of ADD, DEL, CHECK, VERSION, STATUS, GC"}
	}
	values := map[string]string{"CNI_CONTAINERID": req.ContainerID, "CNI_NETNS": req.Netns, "CNI_IFNAME": req.IfName}
	for _, name := range need {
		if values[name] == "" {
			return &wire.Error{Code: wire.CodeInvalidEnvironment, Msg: name + " is not set", Details: "required for " + req.Command}
		}
	}
	return nil
}

// openNetns opens the pod's network namespace so its descriptor can travel with the request: the
// daemon then needs neither the runtime's mount namespace (CNI_NETNS may live under a path the
// daemon's container does not see) nor its PID namespace (/proc/PID/ns/net paths). ADD and CHECK
// need it; DEL goes on without it because the namespace may be gone already.
func openNetns(req wire.Request) (*os.File, *wire.Error) {
	if req.Netns == "" || (req.Command != "ADD" && req.Command != "CHECK" && req.Command != "DEL") {
		return nil, nil
	}
	f, err := os.Open(req.Netns)
	if err != nil {
		if req.Command == "DEL" {
			return nil, nil
		}
		return nil, &wire.Error{Code: wire.CodeInvalidEnvironment, Msg: "CNI_NETNS is not usable", Details: err.Error()}
	}
	return f, nil
}

func exchange(socket string, req wire.Request, netns *os.File) (wire.Response, error) {
	c, err := net.DialTimeout("unix", socket, dialTimeout)
	if err != nil {
		return wire.Response{}, err
	}
	conn := c.(*net.UnixConn)
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(exchangeTimeout)); err != nil {
		return wire.Response{}, err
	}
	data, err := json.Marshal(req)
	if err != nil {
		return wire.Response{}, fmt.Errorf("encode request: %w", err)
	}
	var rights []byte
	if netns != nil {
		rights = syscall.UnixRights(int(netns.Fd()))
	}
	// One sendmsg carries the descriptor with the first bytes; a stream socket may take less
	// than all of a large request, so the rest follows as plain writes.
	n, _, err := conn.WriteMsgUnix(data, rights, nil)
	if err == nil && n < len(data) {
		_, err = conn.Write(data[n:])
	}
	if err != nil {
		return wire.Response{}, fmt.Errorf("send request: %w", err)
	}
	if err := conn.CloseWrite(); err != nil {
		return wire.Response{}, fmt.Errorf("send request: %w", err)
	}
	var resp wire.Response
	if err := json.NewDecoder(io.LimitReader(conn, wire.MaxRequestBytes)).Decode(&resp); err != nil {
		if errors.Is(err, io.EOF) {
			return wire.Response{}, errors.New("daemon closed the connection without an answer")
		}
		return wire.Response{}, fmt.Errorf("read response: %w", err)
	}
	return resp, nil
}

func version(requested string) wire.Response {
	v := requested
	if v == "" || !wire.IsSupported(v) {
		v = wire.SupportedVersions[len(wire.SupportedVersions)-1]
	}
	out, err := json.Marshal(struct {
		CNIVersion        string   `json:"cniVersion"`
		SupportedVersions []string `json:"supportedVersions"`
	}{v, wire.SupportedVersions})
	if err != nil {
		return fail(v, wire.CodeInternal, "encode version", err.Error())
	}
	return wire.Response{Result: out}
}

func fail(cniVersion string, code uint, msg, details string) wire.Response {
	return wire.Response{Error: &wire.Error{CNIVersion: cniVersion, Code: code, Msg: msg, Details: details}}
}

// logError appends one line to the shim's log file: stdout belongs to the CNI result, and the
// runtime's own logs often drop stderr.
func logError(path string, env Env, e *wire.Error) {
	if path == "" {
		return
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return // logging is best effort; the error itself is already on stdout
	}
	defer f.Close()
	fmt.Fprintf(f, "%s %s container=%s ifname=%s code=%d msg=%q details=%q\n",
		time.Now().UTC().Format(time.RFC3339Nano), env("CNI_COMMAND"), env("CNI_CONTAINERID"), env("CNI_IFNAME"), e.Code, e.Msg, e.Details)
}
