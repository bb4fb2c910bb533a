package lab

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
)

// Runtime drives a node's CNI configuration through libcni, as containerd and CRI-O do.
type Runtime struct {
	CNI  *libcni.CNIConfig
	List *libcni.NetworkConfigList
}

// Runtime loads the conflist the node's daemon wrote.
func (n *Node) Runtime() (*Runtime, error) {
	list, err := libcni.LoadNetworkConf(n.ConfDir, "nodenet")
	if err != nil {
		return nil, fmt.Errorf("node %s: load conflist: %w", n.Name, err)
	}
	return &Runtime{
		// An explicit Exec: libcni creates its default one lazily, racing when several ADDs of one
		// CNIConfig run at once, as a runtime's do.
		CNI: libcni.NewCNIConfigWithCacheDir([]string{n.CNIBinDir}, filepath.Join(n.Dir, "cni-cache"),
			&invoke.DefaultExec{RawExec: &invoke.RawExec{Stderr: os.Stderr}, PluginDecoder: version.PluginDecoder{}}),
		List: list,
	}, nil
}

// Pod is a network namespace standing for a pod sandbox.
type Pod struct {
	Name        string
	NS          *Netns
	ContainerID string
	IfName      string
	IPs         []netip.Prefix
	Result      *types100.Result
	// CapabilityArgs are passed as a runtime passes them, e.g. "portMappings" for hostPorts;
	// libcni hands those the conflist's plugins advertise to them as runtimeConfig.
	CapabilityArgs map[string]any
}

// NewPod creates the pod's namespace; Runtime.Add networks it.
func (l *Lab) NewPod(name string) (*Pod, error) {
	ns, err := l.AddNetns(name)
	if err != nil {
		return nil, err
	}
	return &Pod{Name: name, NS: ns, ContainerID: "c-" + ns.Name, IfName: "eth0"}, nil
}

func (p *Pod) rt() *libcni.RuntimeConf {
	return &libcni.RuntimeConf{ContainerID: p.ContainerID, NetNS: p.NS.Path(), IfName: p.IfName,
		// As containerd and CRI-O send them: IgnoreUnknown lets plugins that do not know the
		// K8S_* keys accept them.
		Args:           [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", "default"}, {"K8S_POD_NAME", p.Name}},
		CapabilityArgs: p.CapabilityArgs}
}

// Add runs ADD and records the pod's addresses.
func (r *Runtime) Add(ctx context.Context, p *Pod) error {
	res, err := r.CNI.AddNetworkList(ctx, r.List, p.rt())
	if err != nil {
		return err
	}
	res100, err := types100.NewResultFromResult(res)
	if err != nil {
		return fmt.Errorf("convert result: %w", err)
	}
	p.Result = res100
	p.IPs = nil
	for _, ip := range res100.IPs {
		addr, ok := netip.AddrFromSlice(ip.Address.IP)
		if !ok {
			return fmt.Errorf("result address %v is not an IP", ip.Address)
		}
		ones, _ := ip.Address.Mask.Size()
		p.IPs = append(p.IPs, netip.PrefixFrom(addr.Unmap(), ones))
	}
	return nil
}

// Del runs DEL.
func (r *Runtime) Del(ctx context.Context, p *Pod) error {
	return r.CNI.DelNetworkList(ctx, r.List, p.rt())
}

// Check runs CHECK.
func (r *Runtime) Check(ctx context.Context, p *Pod) error {
	return r.CNI.CheckNetworkList(ctx, r.List, p.rt())
}

// Status runs STATUS.
func (r *Runtime) Status(ctx context.Context) error { return r.CNI.GetStatusNetworkList(ctx, r.List) }

// GC runs GC with the given pods as the valid attachments.
func (r *Runtime) GC(ctx context.Context, valid []*Pod) error {
	args := &libcni.GCArgs{}
	for _, p := range valid {
		args.ValidAttachments = append(args.ValidAttachments, types.GCAttachment{ContainerID: p.ContainerID, IfName: p.IfName})
	}
	return r.CNI.GCNetworkList(ctx, r.List, args)
}
