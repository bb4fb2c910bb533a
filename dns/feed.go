package dns

import (
	"context"
	"fmt"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/nodenet/nodenet/dns/zone"
	"github.com/nodenet/nodenet/hub"
)

// ServiceSource is what the zone is fed from: the hub's Service and EndpointSlice caches and its
// change tracking.
type ServiceSource interface {
	SubscribeServices() *hub.ServiceChanges
	Service(key hub.ServiceKey) (*corev1.Service, bool, error)
	EndpointSlices(key hub.ServiceKey) ([]*discoveryv1.EndpointSlice, error)
}

// Feed keeps z equal to the cluster's Services until ctx ends. It marks the zone synced, and
// closes ready, after applying the first batch of changes: the hub's first notification comes
// once its caches synced, with every Service marked.
func Feed(ctx context.Context, src ServiceSource, z *zone.Zone, ready chan<- struct{}, log *zap.Logger) error {
	changes := src.SubscribeServices()
	synced := false
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-changes.C():
		}
		for key := range changes.Take() {
			if err := apply(src, z, key); err != nil {
				// The caches are in memory: reading them fails only on a broken index, and the
				// next change of the Service tries again.
				log.Error("update DNS records", zap.Stringer("service", key), zap.Error(err))
			}
		}
		if !synced {
			synced = true
			z.MarkSynced()
			close(ready)
			log.Info("cluster DNS zone synced")
		}
	}
}

func apply(src ServiceSource, z *zone.Zone, key hub.ServiceKey) error {
	svc, ok, err := src.Service(key)
	if err != nil {
		return err
	}
	if !ok {
		z.Set(key.Namespace, key.Name, nil, nil)
		return nil
	}
	slices, err := src.EndpointSlices(key)
	if err != nil {
		return fmt.Errorf("endpointslices: %w", err)
	}
	z.Set(key.Namespace, key.Name, svc, slices)
	return nil
}
