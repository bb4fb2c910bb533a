package cniexec

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"

	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/nodenet/nodenet/cniexec/wire"
	"github.com/nodenet/nodenet/ipam"
	"github.com/nodenet/nodenet/routing"
)

// netConf is nodenet's entry of the conflist as the runtime hands it over, with the keys libcni
// injects (prevResult, runtimeConfig, cni.dev/valid-attachments).
type netConf struct {
	types.PluginConf
	Socket        string             `json:"socket,omitempty"`
	LogFile       string             `json:"logFile,omitempty"`
	RuntimeConfig wire.RuntimeConfig `json:"runtimeConfig"`
}

// handle runs one command. netns is the pod's network namespace as the shim opened it, or nil
// (DEL of a vanished pod, or a client that sent only the path).
func (s *Server) handle(req wire.Request, netns *os.File) wire.Response {
	var conf netConf
	if err := json.Unmarshal(req.Config, &conf); err != nil {
		return errResponse("", wire.CodeDecodeFailure, "network configuration is not valid JSON", err.Error())
	}
	if !wire.IsSupported(conf.CNIVersion) {
		return errResponse(conf.CNIVersion, wire.CodeIncompatibleVersion, fmt.Sprintf("cniVersion %q is not supported", conf.CNIVersion),
			fmt.Sprintf("supported: %v", wire.SupportedVersions))
	}
	if conf.Name != s.cfg.NetworkName {
		return errResponse(conf.CNIVersion, wire.CodeInvalidConfig, fmt.Sprintf("network %q is not served by this daemon", conf.Name),
			fmt.Sprintf("this daemon serves network %q", s.cfg.NetworkName))
	}
	log := s.log.With(zap.String("command", req.Command), zap.String("containerID", req.ContainerID), zap.String("ifName", req.IfName))
	var resp wire.Response
	switch req.Command {
	case "ADD":
		resp = s.add(req, netns, &conf, log)
	case "DEL":
		resp = s.del(req, &conf, log)
	case "CHECK":
		resp = s.check(req, netns, &conf)
	case "STATUS":
		resp = s.status(&conf)
	case "GC":
		resp = s.gc(&conf, log)
	default:
		resp = errResponse(conf.CNIVersion, wire.CodeInvalidEnvironment, fmt.Sprintf("CNI_COMMAND %q is not supported", req.Command),
			"want one of ADD, DEL, CHECK, VERSION, STATUS, GC")
	}
	if resp.Error != nil {
		log.Info("cni command failed", zap.Uint("code", resp.Error.Code), zap.String("msg", resp.Error.Msg), zap.String("details", resp.Error.Details))
	}
	return resp
}

func (s *Server) add(req wire.Request, netns *os.File, conf *netConf, log *zap.Logger) wire.Response {
	nsPath, errResp := s.netnsPath(req.Netns, netns, conf.CNIVersion)
	if errResp != nil {
		return *errResp
	}
	lock := s.lockContainer(req.ContainerID)
	lock.Lock()
	defer lock.Unlock()

	_, existed := s.ipam.Get(req.ContainerID, req.IfName)
	alloc, err := s.ipam.Allocate(ipam.Request{ContainerID: req.ContainerID, IfName: req.IfName, Netns: req.Netns})
	if err != nil {
		var exhausted *ipam.ExhaustedError
		if errors.As(err, &exhausted) {
			return errResponse(conf.CNIVersion, wire.CodeTryAgainLater, "no free pod address", err.Error())
		}
		return errResponse(conf.CNIVersion, wire.CodeIOFailure, "allocate pod address", err.Error())
	}
	if existed && alloc.Netns != req.Netns {
		return errResponse(conf.CNIVersion, wire.CodeInvalidEnvironment, "container already has this interface in another network namespace",
			fmt.Sprintf("allocated for %s, asked for %s; DEL it first", alloc.Netns, req.Netns))
	}
	pod := s.podNetwork(req.ContainerID, req.IfName, nsPath, alloc.IPs)
	// Nothing of a failed ADD may stay behind: the runtime will not DEL a pod it never got.
	undo := func() {
		if existed {
			return
		}
		var errs []error
		errs = append(errs, s.pods.DetachPod(pod.HostVeth))
		if _, _, rerr := s.ipam.Release(req.ContainerID, req.IfName); rerr != nil {
			errs = append(errs, rerr)
		}
		if uerr := errors.Join(errs...); uerr != nil {
			log.Error("undo failed ADD", zap.Error(uerr))
		}
	}
	ifaces, err := s.pods.AttachPod(pod)
	if err != nil {
		undo()
		return errResponse(conf.CNIVersion, wire.CodeInternal, "attach pod interface", err.Error())
	}
	// The mappings come last: a failed Map changes nothing, so undoing the attachment is all.
	if resp := s.mapPorts(req, alloc.IPs, conf); resp != nil {
		undo()
		return *resp
	}
	result := s.result(ifaces, req.Netns, alloc.IPs)
	out, err := versioned(result, conf.CNIVersion)
	if err != nil {
		return errResponse(conf.CNIVersion, wire.CodeInternal, "encode result", err.Error())
	}
	log.Debug("pod attached", zap.Stringers("ips", alloc.IPs), zap.String("hostVeth", pod.HostVeth))
	return wire.Response{Result: out}
}

func (s *Server) del(req wire.Request, conf *netConf, log *zap.Logger) wire.Response {
	lock := s.lockContainer(req.ContainerID)
	lock.Lock()
	defer lock.Unlock()
	if err := s.release(req.ContainerID, req.IfName); err != nil {
		return errResponse(conf.CNIVersion, wire.CodeIOFailure, "release pod network", err.Error())
	}
	log.Debug("pod detached")
	return wire.Response{}
}

// release removes the hostPort mappings, the veth, then the allocation: in that order a crash in
// between leaves an allocation without a veth, which reconciliation releases, never a veth with a
// reusable address, nor a mapping to an address another pod may get.
func (s *Server) release(containerID, ifName string) error {
	if s.cfg.HostPorts != nil {
		if err := s.cfg.HostPorts.Unmap(routing.Attachment{ContainerID: containerID, IfName: ifName}); err != nil {
			return fmt.Errorf("remove hostPort mappings: %w", err)
		}
	}
	if err := s.pods.DetachPod(routing.HostVethName(containerID, ifName)); err != nil {
		return err
	}
	_, _, err := s.ipam.Release(containerID, ifName)
	return err
}

func (s *Server) check(req wire.Request, netns *os.File, conf *netConf) wire.Response {
	nsPath, errResp := s.netnsPath(req.Netns, netns, conf.CNIVersion)
	if errResp != nil {
		return *errResp
	}
	lock := s.lockContainer(req.ContainerID)
	lock.Lock()
	defer lock.Unlock()
	alloc, ok := s.ipam.Get(req.ContainerID, req.IfName)
	if !ok {
		return errResponse(conf.CNIVersion, wire.CodeUnknownContainer, "unknown container",
			fmt.Sprintf("no allocation for container %s interface %s", req.ContainerID, req.IfName))
	}
	if err := checkPrevResult(conf, alloc.IPs); err != nil {
		return errResponse(conf.CNIVersion, wire.CodeInvalidConfig, "prevResult does not match the allocation", err.Error())
	}
	if err := s.pods.CheckPod(s.podNetwork(req.ContainerID, req.IfName, nsPath, alloc.IPs)); err != nil {
		return errResponse(conf.CNIVersion, wire.CodeInternal, "pod network is broken", err.Error())
	}
	if s.cfg.HostPorts == nil {
		return wire.Response{}
	}
	att := routing.Attachment{ContainerID: req.ContainerID, IfName: req.IfName}
	if err := s.cfg.HostPorts.Check(att, addrsOf(alloc.IPs), portMappings(conf)); err != nil {
		var invalid *routing.InvalidPortMappingError
		if errors.As(err, &invalid) {
			return errResponse(conf.CNIVersion, wire.CodeInvalidConfig, "invalid port mapping", err.Error())
		}
		return errResponse(conf.CNIVersion, wire.CodeInternal, "hostPort mappings are not in place", err.Error())
	}
	return wire.Response{}
}

// mapPorts programs the hostPort mappings of runtimeConfig.portMappings; an ADD without any
// removes those a previous ADD of the same interface made. It returns the CNI error, or nil.
func (s *Server) mapPorts(req wire.Request, ips []netip.Prefix, conf *netConf) *wire.Response {
	mappings := portMappings(conf)
	if s.cfg.HostPorts == nil {
		if len(mappings) == 0 {
			return nil
		}
		r := errResponse(conf.CNIVersion, wire.CodeInvalidConfig, "hostPort mappings are not supported", "this daemon has no hostPort support")
		return &r
	}
	att := routing.Attachment{ContainerID: req.ContainerID, IfName: req.IfName}
	err := s.cfg.HostPorts.Map(att, addrsOf(ips), mappings)
	if err == nil {
		return nil
	}
	var (
		invalid     *routing.InvalidPortMappingError
		conflict    *routing.PortConflictError
		unavailable *routing.PortUnavailableError
		r           wire.Response
	)
	switch {
	case errors.As(err, &invalid):
		r = errResponse(conf.CNIVersion, wire.CodeInvalidConfig, "invalid port mapping", err.Error())
	case errors.As(err, &conflict):
		// Usually the scheduler keeps two pods with one hostPort off a node; when it happens, the
		// other pod is most often on its way out, so the runtime's retry may succeed.
		r = errResponse(conf.CNIVersion, wire.CodeTryAgainLater, "hostPort is taken by another pod", err.Error())
	case errors.As(err, &unavailable):
		// A loopback hostPort the daemon could not listen on: most often another program of the
		// node holds it, which it may let go of.
		r = errResponse(conf.CNIVersion, wire.CodeTryAgainLater, "hostPort cannot be opened on the node", err.Error())
	default:
		r = errResponse(conf.CNIVersion, wire.CodeInternal, "program hostPort mappings", err.Error())
	}
	return &r
}

func portMappings(conf *netConf) []routing.PortMapping {
	var out []routing.PortMapping
	for _, m := range conf.RuntimeConfig.PortMappings {
		out = append(out, routing.PortMapping{HostPort: m.HostPort, ContainerPort: m.ContainerPort, Protocol: m.Protocol, HostIP: m.HostIP})
	}
	return out
}

func addrsOf(ips []netip.Prefix) []netip.Addr {
	out := make([]netip.Addr, len(ips))
	for i, ip := range ips {
		out[i] = ip.Addr()
	}
	return out
}

func (s *Server) status(conf *netConf) wire.Response {
	if !s.ready.Load() {
		return errResponse(conf.CNIVersion, wire.CodeNotAvailable, "nodenet is not ready", "the daemon is starting")
	}
	return wire.Response{}
}

// gc releases every attachment the runtime no longer knows about (CNI 1.1 GC).
func (s *Server) gc(conf *netConf, log *zap.Logger) wire.Response {
	valid := make(map[types.GCAttachment]bool, len(conf.ValidAttachments))
	for _, a := range conf.ValidAttachments {
		valid[a] = true
	}
	var errs []error
	for _, a := range s.ipam.List() {
		if valid[types.GCAttachment{ContainerID: a.ContainerID, IfName: a.IfName}] {
			continue
		}
		lock := s.lockContainer(a.ContainerID)
		lock.Lock()
		err := s.release(a.ContainerID, a.IfName)
		lock.Unlock()
		if err != nil {
			errs = append(errs, fmt.Errorf("container %s interface %s: %w", a.ContainerID, a.IfName, err))
			continue
		}
		log.Info("garbage-collected attachment", zap.String("gcContainerID", a.ContainerID), zap.String("gcIfName", a.IfName))
	}
	if err := errors.Join(errs...); err != nil {
		return errResponse(conf.CNIVersion, wire.CodeIOFailure, "garbage collection", err.Error())
	}
	return wire.Response{}
}

// netnsPath returns a path through which the daemon reaches the pod's network namespace, after
// checking it is one: the descriptor the shim sent (valid whatever mount and PID namespace the
// daemon runs in), else the runtime's path. A bad namespace is a clear environment error before
// any state is touched.
func (s *Server) netnsPath(path string, netns *os.File, cniVersion string) (string, *wire.Response) {
	bad := func(details string) (string, *wire.Response) {
		r := errResponse(cniVersion, wire.CodeInvalidEnvironment, "CNI_NETNS is not usable", details)
		return "", &r
	}
	if netns != nil {
		if err := checkNetnsFD(netns, path); err != nil {
			return bad(err.Error())
		}
		return fmt.Sprintf("/proc/self/fd/%d", netns.Fd()), nil
	}
	f, err := os.Open(path)
	if err != nil {
		return bad(err.Error())
	}
	defer f.Close()
	if err := checkNetnsFD(f, path); err != nil {
		return bad(err.Error())
	}
	return path, nil
}

// checkNetnsFD verifies f is a network namespace (not a regular file, not another namespace kind).
func checkNetnsFD(f *os.File, path string) error {
	var st unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &st); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if st.Type != unix.NSFS_MAGIC {
		return fmt.Errorf("%s is not a namespace", path)
	}
	if kind, err := unix.IoctlRetInt(int(f.Fd()), unix.NS_GET_NSTYPE); err != nil || kind != unix.CLONE_NEWNET {
		return fmt.Errorf("%s is not a network namespace", path)
	}
	return nil
}

func (s *Server) podNetwork(containerID, ifName, netns string, ips []netip.Prefix) routing.PodNetwork {
	var gws []netip.Prefix
	for _, ip := range ips {
		for _, gw := range s.ipam.Gateways() {
			if gw.Masked().Contains(ip.Addr()) {
				gws = append(gws, gw)
			}
		}
	}
	return routing.PodNetwork{
		NetnsPath: netns,
		IfName:    ifName,
		HostVeth:  routing.HostVethName(containerID, ifName),
		IPs:       ips,
		Gateways:  gws,
		MTU:       s.cfg.Bridge.MTU,
	}
}

// result is shaped like the reference bridge plugin's, so chained plugins (portmap, bandwidth)
// find the host veth and the container interface where they expect them.
func (s *Server) result(ifaces routing.PodInterfaces, netns string, ips []netip.Prefix) *types100.Result {
	const podIfIndex = 2
	res := &types100.Result{
		CNIVersion: types100.ImplementedSpecVersion,
		Interfaces: []*types100.Interface{
			{Name: s.cfg.Bridge.Name, Mac: s.cfg.Bridge.MAC.String()},
			{Name: ifaces.HostVeth.Name, Mac: ifaces.HostVeth.MAC.String()},
			{Name: ifaces.PodIf.Name, Mac: ifaces.PodIf.MAC.String(), Sandbox: netns},
		},
	}
	for _, ip := range ips {
		idx := podIfIndex
		cfg := &types100.IPConfig{Interface: &idx, Address: net.IPNet{IP: ip.Addr().AsSlice(), Mask: net.CIDRMask(ip.Bits(), ip.Addr().BitLen())}}
		for _, gw := range s.ipam.Gateways() {
			if gw.Masked().Contains(ip.Addr()) {
				cfg.Gateway = gw.Addr().AsSlice()
				def := net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
				if ip.Addr().Is6() {
					def = net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
				}
				res.Routes = append(res.Routes, &types.Route{Dst: def, GW: cfg.Gateway})
			}
		}
		res.IPs = append(res.IPs, cfg)
	}
	return res
}

func versioned(res *types100.Result, cniVersion string) (json.RawMessage, error) {
	converted, err := res.GetAsVersion(cniVersion)
	if err != nil {
		return nil, err
	}
	return json.Marshal(converted)
}

// checkPrevResult verifies that the result the runtime cached names the addresses we hold.
func checkPrevResult(conf *netConf, ips []netip.Prefix) error {
	if conf.RawPrevResult == nil {
		return nil
	}
	if err := version.ParsePrevResult(&conf.PluginConf); err != nil {
		return err
	}
	res, err := types100.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return err
	}
	want := map[netip.Prefix]bool{}
	for _, ip := range ips {
		want[ip] = true
	}
	for _, c := range res.IPs {
		ones, _ := c.Address.Mask.Size()
		addr, ok := netip.AddrFromSlice(c.Address.IP)
		if !ok {
			return fmt.Errorf("prevResult address %s is not an IP", c.Address.String())
		}
		if p := netip.PrefixFrom(addr.Unmap(), ones); !want[p] {
			return fmt.Errorf("prevResult has %s, the allocation has %v", p, ips)
		}
	}
	return nil
}

func errResponse(cniVersion string, code uint, msg, details string) wire.Response {
	return wire.Response{Error: &wire.Error{CNIVersion: cniVersion, Code: code, Msg: msg, Details: details}}
}
