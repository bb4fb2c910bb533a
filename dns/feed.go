package dns

import (
	"context"
	"time"

	"go.uber.org/zap"

	"github.com/nodenet/nodenet/dns/zone"
	"github.com/nodenet/nodenet/hub"
)

// ServiceSource is what the zone is fed from: the hub's Service and EndpointSlice caches and its
// change tracking.
type ServiceSource interface {
	SubscribeServices() *hub.ServiceChanges
	Service(key hub.ServiceKey) (*hub.Service, bool, error)
	EndpointSlices(key hub.ServiceKey) []*hub.EndpointSlice
}

// Feed keeps z equal to the cluster's Services until ctx ends. It marks the zone synced, and
// closes ready, after applying the first batch of changes: the hub's first notification comes
// once its caches synced, with every Service marked.
//
// With programmed set, later changes are taken from it instead of from the hub: a name then
// appears, changes or goes only once the proxy has programmed its Service's rules, so a client
// never gets an address the node cannot route yet. The first world still comes from the hub: on
// a restart the previous process's rules are in place already, and DNS must not wait for the
// proxy's first full sync.
func Feed(ctx context.Context, src ServiceSource, z *zone.Zone, ready chan<- struct{}, programmed *hub.ServiceChanges, log *zap.Logger) error {
	changes := src.SubscribeServices()
	var fromProxy <-chan struct{}
	synced := false
	for {
		var keys map[hub.ServiceKey]time.Time
		select {
		case <-ctx.Done():
			return nil
		case <-changes.C():
			keys = changes.Take()
			if synced && programmed != nil {
				continue // these come through programmed once the proxy has them
			}
		case <-fromProxy:
			keys = programmed.Take()
		}
		for key := range keys {
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
			log.Info("cluster DNS zone synced", zap.Int("services", len(keys)))
			if programmed != nil {
				fromProxy = programmed.C()
			}
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
	z.Set(key.Namespace, key.Name, svc, src.EndpointSlices(key))
	return nil
}
