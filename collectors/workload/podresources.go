package workload

import (
	"context"
	"fmt"
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

// GPUPods lists every pod's GPU devices: device id (the GPU UUID for nvidia.com/gpu) → pod.
func (p *PodResources) GPUPods(ctx context.Context) (map[string]PodRef, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, err := p.client.List(ctx, &podresourcesv1.ListPodResourcesRequest{})
	if err != nil {
		return nil, fmt.Errorf("listing kubelet pod resources: %w", err)
	}
	out := map[string]PodRef{}
	for _, pod := range resp.GetPodResources() {
		for _, c := range pod.GetContainers() {
			for _, d := range c.GetDevices() {
				if !strings.HasPrefix(d.GetResourceName(), p.resourcePrefix) {
					continue
				}
				for _, id := range d.GetDeviceIds() {
					out[id] = PodRef{Namespace: pod.GetNamespace(), Name: pod.GetName(), Container: c.GetName()}
				}
			}
		}
	}
	return out, nil
}

// Close closes the connection.
func (p *PodResources) Close() error { return p.conn.Close() }
