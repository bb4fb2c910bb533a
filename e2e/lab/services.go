package lab

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// CreateService creates a Service as a user would and returns it as the API server stored it,
// with its cluster IPs and node ports allocated.
func (cp *ControlPlane) CreateService(ctx context.Context, svc *corev1.Service) (*corev1.Service, error) {
	created, err := cp.Client.CoreV1().Services(svc.Namespace).Create(ctx, svc, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("create service %s/%s: %w", svc.Namespace, svc.Name, err)
	}
	return created, nil
}

// RemovePod deletes a published pod's object at once, as when the kubelet has confirmed that its
// containers are gone: the endpointslice controller drops it from its Services' slices without a
// terminating phase. The pod's namespace and whatever serves in it stay until the lab closes.
func (cp *ControlPlane) RemovePod(ctx context.Context, namespace, name string) error {
	err := cp.Client.CoreV1().Pods(namespace).Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)})
	if err != nil {
		return fmt.Errorf("delete pod %s/%s: %w", namespace, name, err)
	}
	return nil
}
