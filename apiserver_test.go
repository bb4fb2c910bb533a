package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nodenet/nodenet/config"
)

func writeKubeconfig(t *testing.T, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "kubelet.conf")
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

const kubeletConf = `apiVersion: v1
kind: Config
clusters:
- name: a
  cluster: {server: "https://192.0.2.10:6443"}
- name: b
  cluster: {server: "https://192.0.2.11:6443"}
contexts:
- name: kubelet
  context: {cluster: b, user: kubelet}
current-context: kubelet
users:
- name: kubelet
  user: {client-certificate: /etc/kubernetes/pki/kubelet-client.crt}
`

func TestInClusterServer(t *testing.T) {
	kubelet := writeKubeconfig(t, kubeletConf)
	onlyCluster := writeKubeconfig(t, "apiVersion: v1\nkind: Config\nclusters:\n- name: x\n  cluster: {server: \"https://cp.example:6443\"}\n")
	missing := filepath.Join(t.TempDir(), "missing.conf")
	tests := []struct {
		name                 string
		cfg                  config.APIServer
		wantServer, wantFrom string
	}{
		{"url wins", config.APIServer{URL: "https://198.51.100.1:443", KubeletKubeconfigs: []string{kubelet}}, "https://198.51.100.1:443", "apiServer.url"},
		{"current context of kubelet's kubeconfig", config.APIServer{KubeletKubeconfigs: []string{missing, kubelet}}, "https://192.0.2.11:6443", kubelet},
		{"the only cluster without a context", config.APIServer{KubeletKubeconfigs: []string{onlyCluster}}, "https://cp.example:6443", onlyCluster},
		{"no file: the kubernetes Service", config.APIServer{KubeletKubeconfigs: []string{missing}}, "", "the kubernetes Service (KUBERNETES_SERVICE_HOST)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			server, from, err := inClusterServer(tt.cfg)
			if err != nil {
				t.Fatal(err)
			}
			if server != tt.wantServer || from != tt.wantFrom {
				t.Errorf("got %q from %q, want %q from %q", server, from, tt.wantServer, tt.wantFrom)
			}
		})
	}
}

func TestInClusterServerBadKubeconfig(t *testing.T) {
	for name, body := range map[string]string{
		"not yaml":   "{{{",
		"no server":  "apiVersion: v1\nkind: Config\nclusters:\n- name: a\n  cluster: {}\n- name: b\n  cluster: {}\n",
		"no context": "apiVersion: v1\nkind: Config\ncurrent-context: gone\n",
	} {
		t.Run(name, func(t *testing.T) {
			path := writeKubeconfig(t, body)
			_, _, err := inClusterServer(config.APIServer{KubeletKubeconfigs: []string{path}})
			if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "set apiServer.url") {
				t.Errorf("error %v, want one naming %s and the way out", err, path)
			}
		})
	}
}
