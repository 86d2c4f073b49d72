package workload

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	podresourcesv1 "k8s.io/kubelet/pkg/apis/podresources/v1"
)

// PodRef names the pod (and container) a device is assigned to.
type PodRef struct {
	Namespace, Name, Container string
}

// PodResources asks the kubelet which pod holds which GPU, as dcgm-exporter does, so a pod that
// owns a whole GPU is named even while NVML sees no process on it.
type PodResources struct {
	conn   *grpc.ClientConn
	client podresourcesv1.PodResourcesListerClient
	// resourcePrefix selects GPU resources: nvidia.com/gpu and the MIG resources nvidia.com/mig-*.
	resourcePrefix string
}

// NewPodResources connects (lazily) to the kubelet's unix socket.
func NewPodResources(socket string) (*PodResources, error) {
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("kubelet pod-resources at %s: %w", socket, err)
	}
	return &PodResources{conn: conn, client: podresourcesv1.NewPodResourcesListerClient(conn), resourcePrefix: "nvidia.com/"}, nil
}

// GPUPods lists the pods that hold each GPU device: the GPU's UUID for nvidia.com/gpu, the MIG
// device's (MIG-…) for nvidia.com/mig-*. A time-sliced (or MPS) replica, which the device plugin
// names UUID::N, is listed under its device's UUID, so a device shared by several pods lists
// each of them once.
func (p *PodResources) GPUPods(ctx context.Context) (map[string][]PodRef, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, err := p.client.List(ctx, &podresourcesv1.ListPodResourcesRequest{})
	if err != nil {
		return nil, fmt.Errorf("listing kubelet pod resources: %w", err)
	}
	out := map[string][]PodRef{}
	for _, pod := range resp.GetPodResources() {
		for _, c := range pod.GetContainers() {
			for _, d := range c.GetDevices() {
				if !strings.HasPrefix(d.GetResourceName(), p.resourcePrefix) {
					continue
				}
				ref := PodRef{Namespace: pod.GetNamespace(), Name: pod.GetName(), Container: c.GetName()}
				for _, id := range d.GetDeviceIds() {
					id, _, _ = strings.Cut(id, "::")
					if !slices.Contains(out[id], ref) {
						out[id] = append(out[id], ref)
					}
				}
			}
		}
	}
	return out, nil
}

// Close closes the connection.
func (p *PodResources) Close() error { return p.conn.Close() }
