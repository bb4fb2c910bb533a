package proxy

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

// What the kernel holds after an Apply reads back as the model's digest,
// so an unchanged world sends nothing, also after a restart.
func TestReadKernelMatchesModel(t *testing.T) {
	requireRoot(t)
	node := newNS(t)
	addPodMasquerade(t, nftConn(t, node))
	for name, st := range map[string]State{"small": smallState(), "trace": traceState(), "kernel": kernelState()} {
		t.Run(name, func(t *testing.T) {
			app := NewApplier(int(node.Fd()))
			m := Build(st)
			if err := app.Apply(m); err != nil {
				t.Fatalf("Apply: %v", err)
			}
			got, err := app.readKernel(TableName)
			if err != nil {
				t.Fatal(err)
			}
			want := digestOf(m)
			if diff := cmp.Diff(want, got, cmp.AllowUnexported(elemKey{}), modelCmp); diff != "" {
				t.Errorf("kernel digest (-model +kernel): %s\n%s", diffSummary(got, want), diff)
			}
		})
	}
}
