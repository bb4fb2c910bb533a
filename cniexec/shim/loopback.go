package shim

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"

	"github.com/nodenet/nodenet/cniexec/wire"
)

// LoopbackName is the name under which nodenet-cni acts as the CNI loopback plugin. Container
// runtimes (containerd's CRI, CRI-O) run a plugin of that type for every pod sandbox besides the
// network's own conflist, so a node whose only CNI plugin is nodenet needs one; the daemon links
// it to nodenet-cni in cni.binDir where the node has none.
//
// The loopback plugin needs no daemon: it sets lo up or down in CNI_NETNS itself and answers
// while the daemon is down or upgrading.
const LoopbackName = "loopback"

// loopbackConf holds the keys of a loopback plugin configuration that the plugin reads.
type loopbackConf struct {
	CNIVersion string          `json:"cniVersion"`
	Type       string          `json:"type"`
	PrevResult json.RawMessage `json:"prevResult,omitempty"`
}

// RunLoopback executes one CNI invocation as the loopback plugin and returns the process exit
// code. Whatever CNI_IFNAME says, the interface is lo: that is all the plugin is for, and what
// runtimes pass anyway.
func RunLoopback(env Env, stdin io.Reader, stdout io.Writer) int {
	return respond(stdout, runLoopback(env, stdin))
}

func runLoopback(env Env, stdin io.Reader) wire.Response {
	req, conf, e := loopbackRequest(env, stdin)
	if e != nil {
		return wire.Response{Error: e}
	}
	if req.Command == "VERSION" {
		return version(conf.CNIVersion)
	}
	var resp wire.Response
	switch req.Command {
	case "ADD":
		resp = loopbackAdd(req.Netns, conf)
	case "DEL":
		resp = loopbackDel(req.Netns)
	case "CHECK":
		resp = loopbackCheck(req.Netns)
	case "STATUS", "GC":
		// Nothing to report: the plugin keeps no state and depends on nothing that can be down.
	}
	if resp.Error != nil && resp.Error.CNIVersion == "" {
		resp.Error.CNIVersion = conf.CNIVersion
	}
	return resp
}

// loopbackRequest reads and checks the invocation: the command, the configuration (JSON, a
// supported cniVersion, type loopback) and the environment the command needs. VERSION needs
// nothing but the command; its configuration may be empty.
func loopbackRequest(env Env, stdin io.Reader) (wire.Request, loopbackConf, *wire.Error) {
	req := wire.Request{
		Command:     env("CNI_COMMAND"),
		ContainerID: env("CNI_CONTAINERID"),
		Netns:       env("CNI_NETNS"),
		IfName:      env("CNI_IFNAME"),
	}
	var conf loopbackConf
	if req.Command == "" {
		return req, conf, &wire.Error{Code: wire.CodeInvalidEnvironment, Msg: "CNI_COMMAND is not set",
			Details: "want one of ADD, DEL, CHECK, VERSION, STATUS, GC"}
	}
	data, e := readConfig(stdin)
	if e != nil {
		return req, conf, e
	}
	if req.Command == "VERSION" {
		_ = json.Unmarshal(data, &conf) // a missing cniVersion just means "the newest"
		return req, conf, nil
	}
	if err := json.Unmarshal(data, &conf); err != nil {
		return req, conf, &wire.Error{Code: wire.CodeDecodeFailure, Msg: "network configuration on stdin is not valid JSON", Details: err.Error()}
	}
	if e := checkVersion(conf.CNIVersion); e != nil {
		return req, conf, e
	}
	if conf.Type != LoopbackName {
		return req, conf, &wire.Error{CNIVersion: conf.CNIVersion, Code: wire.CodeInvalidConfig,
			Msg:     fmt.Sprintf("network configuration has type %q, want %q", conf.Type, LoopbackName),
			Details: "this is the loopback plugin; nodenet's own network uses type nodenet-cni"}
	}
	if e := checkEnv(req); e != nil {
		e.CNIVersion = conf.CNIVersion
		return req, conf, e
	}
	return req, conf, nil
}

func loopbackAdd(netns string, conf loopbackConf) wire.Response {
	// Chained after another plugin, loopback hands the previous result on unchanged; a bad one is
	// refused before lo is touched.
	var prev wire.Response
	chained := len(conf.PrevResult) > 0 && string(conf.PrevResult) != "null"
	if chained {
		if prev = passPrevResult(conf); prev.Error != nil {
			return prev
		}
	}
	var addrs []netip.Prefix
	err := inNetnsPath(netns, func() error {
		var err error
		addrs, err = setLoUp()
		return err
	})
	if err != nil {
		return loopbackKernelError(err, "set lo up in CNI_NETNS")
	}
	if chained {
		return prev
	}
	out, err := loopbackResult(conf.CNIVersion, netns, addrs)
	if err != nil {
		return fail(conf.CNIVersion, wire.CodeInternal, "encode result", err.Error())
	}
	return wire.Response{Result: out}
}

// loopbackDel sets lo down. A namespace that is already gone has no lo to take down, so DEL
// succeeds: the runtime may call it again after the namespace was removed.
func loopbackDel(netns string) wire.Response {
	if netns == "" {
		return wire.Response{}
	}
	if err := inNetnsPath(netns, setLoDown); err != nil && !isNetnsGone(err) {
		return loopbackKernelError(err, "set lo down in CNI_NETNS")
	}
	return wire.Response{}
}

func loopbackCheck(netns string) wire.Response {
	var up bool
	err := inNetnsPath(netns, func() error {
		var err error
		up, err = loIsUp()
		return err
	})
	if err != nil {
		return loopbackKernelError(err, "read the state of lo in CNI_NETNS")
	}
	if !up {
		// The spec has no code for "not in the state ADD left it"; 999 is what the daemon's CHECK
		// and the reference plugins answer for it.
		return fail("", wire.CodeInternal, "lo is down in CNI_NETNS", netns)
	}
	return wire.Response{}
}

// loopbackKernelError turns a failure of inNetnsPath into the CNI error: code 4 when CNI_NETNS
// is no usable network namespace, 999 when the kernel refused.
func loopbackKernelError(err error, what string) wire.Response {
	var ne *netnsError
	if errors.As(err, &ne) {
		return fail("", wire.CodeInvalidEnvironment, "CNI_NETNS is not usable", err.Error())
	}
	return fail("", wire.CodeInternal, what, err.Error())
}

// passPrevResult prints the configuration's prevResult as the result, in the configuration's
// cniVersion.
func passPrevResult(conf loopbackConf) wire.Response {
	var res map[string]json.RawMessage
	if err := json.Unmarshal(conf.PrevResult, &res); err != nil {
		return fail(conf.CNIVersion, wire.CodeDecodeFailure, "prevResult is not a JSON object", err.Error())
	}
	v, err := json.Marshal(conf.CNIVersion)
	if err != nil {
		return fail(conf.CNIVersion, wire.CodeInternal, "encode result", err.Error())
	}
	res["cniVersion"] = v
	out, err := json.Marshal(res)
	if err != nil {
		return fail(conf.CNIVersion, wire.CodeInternal, "encode result", err.Error())
	}
	return wire.Response{Result: out}
}

// loopbackResult is the ADD result: lo, in the sandbox netns, with addrs (lo's first address of
// each family), laid out for cniVersion. Results before 1.0.0 give each address's IP version.
func loopbackResult(cniVersion, netns string, addrs []netip.Prefix) ([]byte, error) {
	type iface struct {
		Name    string `json:"name"`
		Mac     string `json:"mac"`
		Sandbox string `json:"sandbox"`
	}
	type ipConfig struct {
		Version   string `json:"version,omitempty"`
		Interface int    `json:"interface"`
		Address   string `json:"address"`
	}
	type result struct {
		CNIVersion string     `json:"cniVersion"`
		Interfaces []iface    `json:"interfaces"`
		IPs        []ipConfig `json:"ips,omitempty"`
	}
	legacy := strings.HasPrefix(cniVersion, "0.")
	r := result{CNIVersion: cniVersion, Interfaces: []iface{{Name: "lo", Mac: "00:00:00:00:00:00", Sandbox: netns}}}
	for _, a := range addrs {
		ip := ipConfig{Interface: 0, Address: a.String()}
		if legacy {
			ip.Version = "4"
			if a.Addr().Is6() {
				ip.Version = "6"
			}
		}
		r.IPs = append(r.IPs, ip)
	}
	return json.Marshal(r)
}
