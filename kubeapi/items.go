package kubeapi

import (
	"bytes"
	"context"
	"fmt"
	"strings"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"

	"google.golang.org/protobuf/encoding/protowire"
)

// ItemLister lists and watches one resource, and can also hand out a list's items one at a time
// as it decodes them, so that a caller converting them to a form of its own never holds the
// whole list of API objects: at 10,000 EndpointSlices of 10 endpoints that list is 30 MB more
// at the daemon's start than the hub's compact copies.
type ItemLister struct {
	*cache.ListWatch
	rc       rest.Interface
	resource string
	newItem  func() protoObject
}

// protoObject is an API object that decodes itself from protobuf (every generated type does).
type protoObject interface {
	runtime.Object
	Unmarshal([]byte) error
}

func newItemLister(rc rest.Interface, resource string, newItem func() protoObject) *ItemLister {
	return &ItemLister{
		ListWatch: cache.NewListWatchFromClient(rc, resource, metav1.NamespaceAll, fields.Everything()),
		rc:        rc, resource: resource, newItem: newItem,
	}
}

// protobufMagic starts every protobuf-encoded response of the API server.
var protobufMagic = []byte{0x6b, 0x38, 0x73, 0x00}

// ListEach lists the resource and calls each with every item, in order, as it is decoded; an
// error from each ends the list. It returns the list's metadata (resource version, continue
// token). A server that answers JSON rather than protobuf gets its list decoded whole.
func (l *ItemLister) ListEach(ctx context.Context, opts metav1.ListOptions, each func(runtime.Object) error) (metav1.ListMeta, error) {
	var contentType string
	res := l.rc.Get().Resource(l.resource).VersionedParams(&opts, metav1.ParameterCodec).Do(ctx).ContentType(&contentType)
	if err := res.Error(); err != nil {
		return metav1.ListMeta{}, err // Error, unlike Raw, reads the server's Status
	}
	body, _ := res.Raw()
	if !strings.HasPrefix(contentType, runtime.ContentTypeProtobuf) || !bytes.HasPrefix(body, protobufMagic) {
		return l.listWhole(res, each)
	}
	var envelope runtime.Unknown
	if err := envelope.Unmarshal(body[len(protobufMagic):]); err != nil {
		return metav1.ListMeta{}, fmt.Errorf("list %s: %w", l.resource, err)
	}
	lm, err := eachListItem(envelope.Raw, func(b []byte) error {
		item := l.newItem()
		if err := item.Unmarshal(b); err != nil {
			return fmt.Errorf("decode one of the %s: %w", l.resource, err)
		}
		return each(item)
	})
	if err != nil {
		return metav1.ListMeta{}, fmt.Errorf("list %s: %w", l.resource, err)
	}
	return lm, nil
}

// listWhole decodes a list the usual way and hands out its items.
func (l *ItemLister) listWhole(res rest.Result, each func(runtime.Object) error) (metav1.ListMeta, error) {
	obj, err := res.Get()
	if err != nil {
		return metav1.ListMeta{}, fmt.Errorf("list %s: %w", l.resource, err)
	}
	acc, err := meta.ListAccessor(obj)
	if err != nil {
		return metav1.ListMeta{}, fmt.Errorf("list %s: %w", l.resource, err)
	}
	lm := metav1.ListMeta{ResourceVersion: acc.GetResourceVersion(), Continue: acc.GetContinue(), RemainingItemCount: acc.GetRemainingItemCount()}
	return lm, meta.EachListItem(obj, each)
}

// eachListItem walks a protobuf-encoded list (field 1 its ListMeta, field 2 each item, as every
// generated List type is laid out) and calls each with every item's bytes.
func eachListItem(b []byte, each func([]byte) error) (metav1.ListMeta, error) {
	var lm metav1.ListMeta
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return lm, protowire.ParseError(n)
		}
		b = b[n:]
		if typ != protowire.BytesType || num > 2 {
			n = protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return lm, protowire.ParseError(n)
			}
			b = b[n:]
			continue
		}
		v, n := protowire.ConsumeBytes(b)
		if n < 0 {
			return lm, protowire.ParseError(n)
		}
		b = b[n:]
		switch num {
		case 1:
			if err := lm.Unmarshal(v); err != nil {
				return lm, fmt.Errorf("list metadata: %w", err)
			}
		case 2:
			if err := each(v); err != nil {
				return lm, err
			}
		}
	}
	return lm, nil
}
