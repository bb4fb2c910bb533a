package lab

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// ControlPlaneAddr is the API server's address on the underlay.
const ControlPlaneAddr = "198.18.0.2"

// Cluster ranges of the address plan (DESIGN.md).
const (
	ClusterCIDR = "10.244.0.0/16"
	ServiceCIDR = "10.96.0.0/12"
)

// ControlPlane is etcd, kube-apiserver and kube-controller-manager in their own namespace on the
// underlay, built by hack/cluster-bins.sh; for clusters of real kubelets also kube-scheduler.
type ControlPlane struct {
	NS              *Netns
	Server          string // https://198.18.0.2:6443
	Dir             string
	BinDir          string
	CAPath          string
	AdminKubeconfig string
	// Client talks to the API server as cluster admin from the test process, dialling through the
	// control-plane namespace (the host's own namespace has no route to the underlay).
	Client kubernetes.Interface

	lab   *Lab
	pki   *pki
	procs map[string]*Process
}

// labControllers are the controllers a cluster of simulated nodes needs: ready in about a second
// instead of six. Node lifecycle is left out on purpose: simulated nodes have no kubelet posting
// status, and it would taint them unreachable and evict the pods that hold the daemons' tokens.
const labControllers = "nodeipam,endpointslice,serviceaccount-token,serviceaccount,namespace,garbagecollector,root-ca-cert-publisher"

// StartControlPlane starts the control plane for simulated nodes and waits until the API server is
// ready and the controller manager works.
func (l *Lab) StartControlPlane(ctx context.Context, binDir string) (*ControlPlane, error) {
	return l.startControlPlane(ctx, binDir, labControllers)
}

// StartControlPlaneForKubelets starts the control plane real kubelets need: every default
// controller of kube-controller-manager (node lifecycle lifts the not-ready taint, deployments,
// replica sets, daemon sets, jobs...) and kube-scheduler, whose binary is schedulerPath.
func (l *Lab) StartControlPlaneForKubelets(ctx context.Context, binDir, schedulerPath string) (*ControlPlane, error) {
	cp, err := l.startControlPlane(ctx, binDir, "*")
	if err != nil {
		return nil, err
	}
	if err := cp.startScheduler(ctx, schedulerPath); err != nil {
		return nil, err
	}
	return cp, nil
}

func (l *Lab) startControlPlane(ctx context.Context, binDir, controllers string) (*ControlPlane, error) {
	ns, err := l.AddNetns("cp")
	if err != nil {
		return nil, err
	}
	if err := l.Attach(ns, "eth0", ControlPlaneAddr+"/24", "p-cp"); err != nil {
		return nil, err
	}
	dir := filepath.Join(l.Dir, "cp")
	ca, err := newPKI(filepath.Join(dir, "pki"))
	if err != nil {
		return nil, err
	}
	cp := &ControlPlane{NS: ns, Server: "https://" + ControlPlaneAddr + ":6443", Dir: dir, BinDir: binDir,
		CAPath: ca.CAPath(), lab: l, pki: ca, procs: map[string]*Process{}}
	if err := cp.startEtcd(ctx); err != nil {
		return nil, err
	}
	if err := cp.startAPIServer(ctx); err != nil {
		return nil, err
	}
	if err := cp.startControllerManager(ctx, controllers); err != nil {
		return nil, err
	}
	return cp, nil
}

func (cp *ControlPlane) start(name string, argv ...string) error {
	return cp.startBinary(name, filepath.Join(cp.BinDir, name), argv...)
}

func (cp *ControlPlane) startBinary(name, path string, argv ...string) error {
	p, err := cp.lab.startProc(cp.NS, name, filepath.Join(cp.Dir, name+".log"), append([]string{path}, argv...)...)
	if err != nil {
		return err
	}
	cp.procs[name] = p
	return nil
}

// waitFor polls check until it succeeds, the process dies, or the timeout passes.
func (cp *ControlPlane) waitFor(ctx context.Context, name string, timeout time.Duration, check func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	for {
		if p := cp.procs[name]; p != nil && p.Exited() {
			return fmt.Errorf("%s exited; log %s:\n%s", name, p.Log, Tail(p.Log, 20))
		}
		if last = check(ctx); last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not ready after %v: %v; log tail:\n%s", name, timeout, last, Tail(filepath.Join(cp.Dir, name+".log"), 20))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (cp *ControlPlane) startEtcd(ctx context.Context) error {
	data := filepath.Join(cp.Dir, "etcd")
	if err := cp.start("etcd", "--name", "cp", "--data-dir", data,
		"--listen-client-urls", "http://127.0.0.1:2379", "--advertise-client-urls", "http://127.0.0.1:2379",
		"--listen-peer-urls", "http://127.0.0.1:2380", "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
		"--initial-cluster", "cp=http://127.0.0.1:2380", "--listen-metrics-urls", "http://127.0.0.1:2381",
		// A test cluster lives for minutes: durability of its data is not worth an fsync per write.
		"--unsafe-no-fsync"); err != nil {
		return err
	}
	client := &http.Client{Transport: &http.Transport{DialContext: cp.NS.Dial}, Timeout: 5 * time.Second}
	return cp.waitFor(ctx, "etcd", time.Minute, func(ctx context.Context) error {
		return httpOK(ctx, client, "http://127.0.0.1:2379/readyz")
	})
}

func (cp *ControlPlane) startAPIServer(ctx context.Context) error {
	crt, key, err := cp.pki.issue("apiserver", "kube-apiserver", nil,
		[]net.IP{net.ParseIP(ControlPlaneAddr), net.ParseIP("10.96.0.1"), net.ParseIP("127.0.0.1")},
		[]string{"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local", "localhost"})
	if err != nil {
		return err
	}
	saPub, saKey, err := cp.pki.serviceAccountKey()
	if err != nil {
		return err
	}
	adminCrt, adminKey, err := cp.pki.issue("admin", "lab-admin", []string{"system:masters"}, nil, nil)
	if err != nil {
		return err
	}
	cp.AdminKubeconfig = filepath.Join(cp.Dir, "admin.kubeconfig")
	if err := cp.writeKubeconfig(cp.AdminKubeconfig, &clientcmdapi.AuthInfo{ClientCertificate: adminCrt, ClientKey: adminKey}); err != nil {
		return err
	}
	// kubectl logs, exec and port-forward go from the API server to the kubelets, which accept
	// client certificates of the cluster CA.
	kubeletClientCrt, kubeletClientKey, err := cp.pki.issue("apiserver-kubelet-client", "kube-apiserver-kubelet-client", []string{"system:masters"}, nil, nil)
	if err != nil {
		return err
	}
	if err := cp.start("kube-apiserver",
		"--etcd-servers=http://127.0.0.1:2379",
		"--bind-address=0.0.0.0", "--advertise-address="+ControlPlaneAddr, "--secure-port=6443",
		"--tls-cert-file="+crt, "--tls-private-key-file="+key,
		"--client-ca-file="+cp.CAPath,
		"--authorization-mode=Node,RBAC",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file="+saPub, "--service-account-signing-key-file="+saKey,
		"--service-cluster-ip-range="+ServiceCIDR,
		"--kubelet-preferred-address-types=InternalIP",
		"--kubelet-client-certificate="+kubeletClientCrt, "--kubelet-client-key="+kubeletClientKey,
		"--allow-privileged=true",
		"--cert-dir="+filepath.Join(cp.Dir, "apiserver-certs")); err != nil {
		return err
	}
	rc := &rest.Config{Host: cp.Server, TLSClientConfig: rest.TLSClientConfig{CAFile: cp.CAPath, CertFile: adminCrt, KeyFile: adminKey},
		Dial: cp.NS.Dial, UserAgent: "nodenet-lab", QPS: 100, Burst: 200}
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return err
	}
	cp.Client = client
	return cp.waitFor(ctx, "kube-apiserver", 3*time.Minute, func(ctx context.Context) error {
		_, err := client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		return err
	})
}

func (cp *ControlPlane) startControllerManager(ctx context.Context, controllers string) error {
	crt, key, err := cp.pki.issue("kcm", "system:kube-controller-manager", nil, nil, nil)
	if err != nil {
		return err
	}
	kubeconfig := filepath.Join(cp.Dir, "kcm.kubeconfig")
	if err := cp.writeKubeconfig(kubeconfig, &clientcmdapi.AuthInfo{ClientCertificate: crt, ClientKey: key}); err != nil {
		return err
	}
	if err := cp.start("kube-controller-manager",
		"--kubeconfig="+kubeconfig,
		"--authentication-kubeconfig="+kubeconfig, "--authorization-kubeconfig="+kubeconfig,
		"--authentication-skip-lookup=true",
		"--bind-address=127.0.0.1", "--secure-port=10257", "--cert-dir="+filepath.Join(cp.Dir, "kcm-certs"),
		"--leader-elect=false",
		"--controllers="+controllers,
		"--allocate-node-cidrs=true", "--cluster-cidr="+ClusterCIDR, "--node-cidr-mask-size=24",
		"--service-cluster-ip-range="+ServiceCIDR,
		"--use-service-account-credentials=true",
		"--service-account-private-key-file="+filepath.Join(cp.pki.dir, "sa.key"),
		"--root-ca-file="+cp.CAPath,
		"--cluster-signing-cert-file="+cp.CAPath, "--cluster-signing-key-file="+filepath.Join(cp.pki.dir, "ca.key")); err != nil {
		return err
	}
	// The default service account appears once the controller manager's controllers run.
	return cp.waitFor(ctx, "kube-controller-manager", 2*time.Minute, func(ctx context.Context) error {
		_, err := cp.Client.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{})
		return err
	})
}

func (cp *ControlPlane) startScheduler(ctx context.Context, path string) error {
	crt, key, err := cp.pki.issue("scheduler", "system:kube-scheduler", nil, nil, nil)
	if err != nil {
		return err
	}
	kubeconfig := filepath.Join(cp.Dir, "scheduler.kubeconfig")
	if err := cp.writeKubeconfig(kubeconfig, &clientcmdapi.AuthInfo{ClientCertificate: crt, ClientKey: key}); err != nil {
		return err
	}
	if err := cp.startBinary("kube-scheduler", path,
		"--kubeconfig="+kubeconfig,
		"--authentication-kubeconfig="+kubeconfig, "--authorization-kubeconfig="+kubeconfig,
		"--bind-address=127.0.0.1", "--secure-port=10259", "--leader-elect=false"); err != nil {
		return err
	}
	client := &http.Client{Transport: &http.Transport{DialContext: cp.NS.Dial, TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}, Timeout: 5 * time.Second}
	return cp.waitFor(ctx, "kube-scheduler", time.Minute, func(ctx context.Context) error {
		// Its serving certificate is self-signed; only readiness is asked here.
		return httpOK(ctx, client, "https://127.0.0.1:10259/readyz")
	})
}

// IssueClientCert issues a client certificate of the cluster CA (for a kubelet:
// system:node:NAME in group system:nodes) and returns the paths of certificate and key.
func (cp *ControlPlane) IssueClientCert(name, commonName string, groups []string) (crt, key string, err error) {
	return cp.pki.issue(name, commonName, groups, nil, nil)
}

// IssueServingCert issues a serving certificate of the cluster CA for the given addresses.
func (cp *ControlPlane) IssueServingCert(name, commonName string, ips []net.IP, dnsNames []string) (crt, key string, err error) {
	return cp.pki.issue(name, commonName, nil, ips, dnsNames)
}

// WriteKubeconfigFor writes a kubeconfig for the API server naming the files of the cluster CA
// and of a client certificate as its user will see them.
func (cp *ControlPlane) WriteKubeconfigFor(path, caPath, crt, key string) error {
	return writeKubeconfig(path, cp.Server, caPath, &clientcmdapi.AuthInfo{ClientCertificate: crt, ClientKey: key})
}

// writeKubeconfig writes a kubeconfig for the API server with the given credentials.
func (cp *ControlPlane) writeKubeconfig(path string, auth *clientcmdapi.AuthInfo) error {
	return writeKubeconfig(path, cp.Server, cp.CAPath, auth)
}

func writeKubeconfig(path, server, caPath string, auth *clientcmdapi.AuthInfo) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["lab"] = &clientcmdapi.Cluster{Server: server, CertificateAuthority: caPath}
	cfg.AuthInfos["lab"] = auth
	cfg.Contexts["lab"] = &clientcmdapi.Context{Cluster: "lab", AuthInfo: "lab"}
	cfg.CurrentContext = "lab"
	return clientcmd.WriteToFile(*cfg, path)
}

// Kubectl runs kubectl as cluster admin inside the control-plane namespace.
func (cp *ControlPlane) Kubectl(args ...string) (string, error) {
	return cp.NS.Run(append([]string{filepath.Join(cp.BinDir, "kubectl"), "--kubeconfig", cp.AdminKubeconfig}, args...)...)
}

func httpOK(ctx context.Context, client *http.Client, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	return nil
}

// Tail returns the last lines of a log file, or the error that kept it from being read.
func Tail(path string, lines int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	all := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	return strings.Join(all, "\n")
}
