package workload

import (
	"context"
	"net"
	"path/filepath"
	"reflect"
	"testing"

	"google.golang.org/grpc"
	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"
)

// kubelet serves the real generated podresources v1 service with a fixed set of pods.
type kubelet struct {
	podresourcesv1.UnimplementedPodResourcesListerServer
	pods []*podresourcesv1.PodResources
}

func (k *kubelet) List(context.Context, *podresourcesv1.ListPodResourcesRequest) (*podresourcesv1.ListPodResourcesResponse, error) {
	return &podresourcesv1.ListPodResourcesResponse{PodResources: k.pods}, nil
}

func serveKubelet(t *testing.T, pods []*podresourcesv1.PodResources) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "kubelet.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	podresourcesv1.RegisterPodResourcesListerServer(srv, &kubelet{pods: pods})
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return sock
}

func TestPodResourcesMapsGPUsToPods(t *testing.T) {
	dev := func(res string, ids ...string) *podresourcesv1.ContainerDevices {
		return &podresourcesv1.ContainerDevices{ResourceName: res, DeviceIds: ids}
	}
	sock := serveKubelet(t, []*podresourcesv1.PodResources{
		{Name: "trainer-0", Namespace: "ml", Containers: []*podresourcesv1.ContainerResources{
			{Name: "main", Devices: []*podresourcesv1.ContainerDevices{dev("nvidia.com/gpu", "GPU-aaaa", "GPU-bbbb")}},
			{Name: "sidecar", Devices: []*podresourcesv1.ContainerDevices{dev("example.com/nic", "eth9")}},
		}},
		{Name: "infer", Namespace: "serving", Containers: []*podresourcesv1.ContainerResources{
			{Name: "server", Devices: []*podresourcesv1.ContainerDevices{dev("nvidia.com/mig-1g.10gb", "MIG-cccc")}},
		}},
		{Name: "cpu-only", Namespace: "default", Containers: []*podresourcesv1.ContainerResources{{Name: "c"}}},
		{Name: "notebook-a", Namespace: "ml", Containers: []*podresourcesv1.ContainerResources{
			{Name: "jupyter", Devices: []*podresourcesv1.ContainerDevices{dev("nvidia.com/gpu", "GPU-dddd::0", "GPU-dddd::3")}},
		}},
		{Name: "notebook-b", Namespace: "ml", Containers: []*podresourcesv1.ContainerResources{
			{Name: "jupyter", Devices: []*podresourcesv1.ContainerDevices{dev("nvidia.com/gpu", "GPU-dddd::1")}},
		}},
	})
	pr, err := NewPodResources(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = pr.Close() }()
	got, err := pr.GPUPods(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]PodRef{
		"GPU-aaaa": {{Namespace: "ml", Name: "trainer-0", Container: "main"}},
		"GPU-bbbb": {{Namespace: "ml", Name: "trainer-0", Container: "main"}},
		"MIG-cccc": {{Namespace: "serving", Name: "infer", Container: "server"}},
		// time-sliced replicas of one GPU: each pod once, under the GPU's UUID
		"GPU-dddd": {{Namespace: "ml", Name: "notebook-a", Container: "jupyter"}, {Namespace: "ml", Name: "notebook-b", Container: "jupyter"}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("GPUPods = %v, want %v", got, want)
	}
}

func TestPodResourcesUnreachable(t *testing.T) {
	pr, err := NewPodResources(filepath.Join(t.TempDir(), "absent.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = pr.Close() }()
	if _, err := pr.GPUPods(context.Background()); err == nil {
		t.Fatal("GPUPods against an absent socket succeeded")
	}
}
