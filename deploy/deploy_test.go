// Tests of the Kubernetes manifests: every kustomize overlay and the Helm chart with each values
// file decode strictly into the API types, pass the agent's own flag parsing, and hold the
// security properties the systemd unit holds.
package deploy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	yamlv3 "gopkg.in/yaml.v3"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"

	"github.com/capstan-power/capstan/internal/config"
	"github.com/capstan-power/capstan/internal/testkit"
	"github.com/capstan-power/capstan/packaging"
)

// measuredPeakRSS is the agent's peak resident memory with 8 simulated GPUs split seven ways,
// OTLP and Prometheus on (docs/architecture.md); a memory request below it would invite eviction.
var measuredPeakRSS = resource.MustParse("35Mi")

// argcheck is internal/agent/cmdline/argcheck, built by TestMain. This test cannot parse flags
// itself: kustomize imports Go's plugin package, which makes the test binary bind every symbol
// at load, and the collectors' go-nvml leaves NVML's symbols to the driver's library.
var argcheck string

func TestMain(m *testing.M) {
	testkit.MainWithBinary(m, "../internal/agent/cmdline/argcheck", "argcheck", &argcheck)
}

// parseArgs returns the agent's effective configuration for a command line, or its error.
func parseArgs(args []string) (*config.Config, error) {
	line, err := json.Marshal(args)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(argcheck)
	cmd.Stdin = bytes.NewReader(append(line, '\n'))
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("argcheck: %w", err)
	}
	var r struct{ Config, Error string }
	if err := json.Unmarshal(out, &r); err != nil {
		return nil, err
	}
	if r.Error != "" {
		return nil, fmt.Errorf("%s", r.Error)
	}
	cfg := &config.Config{}
	if err := yamlv3.Unmarshal([]byte(r.Config), cfg); err != nil {
		return nil, fmt.Errorf("decoding the effective configuration: %w", err)
	}
	return cfg, nil
}

// objects are the decoded manifests of one rendering.
type objects struct {
	daemonSets      []*appsv1.DaemonSet
	services        []*corev1.Service
	serviceAccounts []*corev1.ServiceAccount
	namespaces      []*corev1.Namespace
	clusterRoles    []*rbacv1.ClusterRole
	bindings        []*rbacv1.ClusterRoleBinding
	serviceMonitors []*monitoringv1.ServiceMonitor
	prometheusRules []*monitoringv1.PrometheusRule
}

// decode decodes each document strictly (unknown or duplicate fields fail) into its API type.
func decode(t *testing.T, docs []string) *objects {
	t.Helper()
	o := &objects{}
	for _, doc := range docs {
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal([]byte(doc), &tm); err != nil {
			t.Fatalf("%v in:\n%s", err, doc)
		}
		var obj any
		switch tm.APIVersion + " " + tm.Kind {
		case "apps/v1 DaemonSet":
			obj = new(appsv1.DaemonSet)
			o.daemonSets = append(o.daemonSets, obj.(*appsv1.DaemonSet))
		case "v1 Service":
			obj = new(corev1.Service)
			o.services = append(o.services, obj.(*corev1.Service))
		case "v1 ServiceAccount":
			obj = new(corev1.ServiceAccount)
			o.serviceAccounts = append(o.serviceAccounts, obj.(*corev1.ServiceAccount))
		case "v1 Namespace":
			obj = new(corev1.Namespace)
			o.namespaces = append(o.namespaces, obj.(*corev1.Namespace))
		case "rbac.authorization.k8s.io/v1 ClusterRole":
			obj = new(rbacv1.ClusterRole)
			o.clusterRoles = append(o.clusterRoles, obj.(*rbacv1.ClusterRole))
		case "rbac.authorization.k8s.io/v1 ClusterRoleBinding":
			obj = new(rbacv1.ClusterRoleBinding)
			o.bindings = append(o.bindings, obj.(*rbacv1.ClusterRoleBinding))
		case "monitoring.coreos.com/v1 ServiceMonitor":
			obj = new(monitoringv1.ServiceMonitor)
			o.serviceMonitors = append(o.serviceMonitors, obj.(*monitoringv1.ServiceMonitor))
		case "monitoring.coreos.com/v1 PrometheusRule":
			obj = new(monitoringv1.PrometheusRule)
			o.prometheusRules = append(o.prometheusRules, obj.(*monitoringv1.PrometheusRule))
		default:
			t.Fatalf("unexpected %s %s: add it to the test's decoder", tm.APIVersion, tm.Kind)
		}
		if err := yaml.UnmarshalStrict([]byte(doc), obj); err != nil {
			t.Fatalf("%s does not decode strictly: %v\n%s", tm.Kind, err, doc)
		}
	}
	return o
}

func kustomizeBuild(t *testing.T, dir string) []string {
	t.Helper()
	m, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	var docs []string
	for _, r := range m.Resources() {
		y, err := r.AsYAML()
		if err != nil {
			t.Fatal(err)
		}
		docs = append(docs, string(y))
	}
	return docs
}

const chartDir = "helm/capstan"

// helmTemplate renders the chart as "helm template capstan" would, with the values files
// (none: the defaults), validating them against values.schema.json.
func helmTemplate(t *testing.T, valuesFiles ...string) []string {
	t.Helper()
	chart, err := loader.Load(chartDir)
	if err != nil {
		t.Fatal(err)
	}
	vals := chartutil.Values{}
	for _, f := range valuesFiles {
		v, err := chartutil.ReadValuesFile(f)
		if err != nil {
			t.Fatal(err)
		}
		vals = chartutil.CoalesceTables(v.AsMap(), vals)
	}
	top, err := chartutil.ToRenderValues(chart, vals,
		chartutil.ReleaseOptions{Name: "capstan", Namespace: "gpu-telemetry", IsInstall: true}, nil)
	if err != nil {
		t.Fatalf("values %v: %v", valuesFiles, err)
	}
	out, err := engine.Render(chart, top)
	if err != nil {
		t.Fatalf("rendering the chart with %v: %v", valuesFiles, err)
	}
	var docs []string
	for _, name := range slices.Sorted(func(yield func(string) bool) {
		for k := range out {
			if !yield(k) {
				return
			}
		}
	}) {
		if !strings.HasSuffix(name, ".yaml") {
			continue
		}
		for _, doc := range strings.Split(out[name], "\n---") {
			if strings.TrimSpace(doc) != "" {
				docs = append(docs, doc)
			}
		}
	}
	return docs
}

// renderings are every manifest set a user can apply.
func renderings(t *testing.T) map[string][]string {
	r := map[string][]string{
		"kustomize base":                 kustomizeBuild(t, "kustomize/base"),
		"kustomize telemetry-only":       kustomizeBuild(t, "kustomize/overlays/telemetry-only"),
		"kustomize telemetry-prometheus": kustomizeBuild(t, "kustomize/overlays/telemetry-prometheus"),
		"kustomize capping-etcd":         kustomizeBuild(t, "kustomize/overlays/capping-etcd"),
		"helm defaults":                  helmTemplate(t),
	}
	ci, _ := filepath.Glob(filepath.Join(chartDir, "ci", "*.yaml"))
	if len(ci) == 0 {
		t.Fatal("no values files under helm/capstan/ci")
	}
	for _, f := range ci {
		r["helm "+filepath.Base(f)] = helmTemplate(t, f)
	}
	return r
}

// unitCapabilities returns the systemd unit's bounding set and the telemetry-only one, in
// Kubernetes' spelling (no CAP_ prefix).
func unitCapabilities(t *testing.T) (capping, telemetry []string) {
	t.Helper()
	read := func(dropIns ...string) []string {
		u, err := packaging.ReadUnit("../packaging/systemd/capstan.service", dropIns...)
		if err != nil {
			t.Fatal(err)
		}
		caps, err := u.Capabilities()
		if err != nil {
			t.Fatal(err)
		}
		for i, c := range caps {
			caps[i] = strings.TrimPrefix(c, "CAP_")
		}
		return caps
	}
	return read(), read("../packaging/systemd/telemetry-only.conf")
}

func TestManifests(t *testing.T) {
	capping, telemetry := unitCapabilities(t)
	for name, docs := range renderings(t) {
		t.Run(name, func(t *testing.T) {
			o := decode(t, docs)
			if len(o.daemonSets) != 1 || len(o.services) != 1 || len(o.serviceAccounts) != 1 {
				t.Fatalf("want one DaemonSet, Service and ServiceAccount; got %d, %d, %d",
					len(o.daemonSets), len(o.services), len(o.serviceAccounts))
			}
			ds := o.daemonSets[0]
			cfg := checkDaemonSet(t, ds, capping, telemetry)
			checkService(t, o.services[0], ds, cfg)
			// The chart grants "get" on nodes only to an agent that reads its Node (its power
			// domain from node labels); the kustomize base always does.
			roles := 1
			if strings.HasPrefix(name, "helm") && !readsNode(cfg) {
				roles = 0
			}
			if len(o.clusterRoles) != roles || len(o.bindings) != roles {
				t.Fatalf("want %d ClusterRole and binding (the agent reads its Node: %v); got %d, %d",
					roles, readsNode(cfg), len(o.clusterRoles), len(o.bindings))
			}
			if roles == 1 {
				checkRBAC(t, o, ds)
			}
			for _, sm := range o.serviceMonitors {
				checkServiceMonitor(t, sm, o.services[0])
			}
			for _, ns := range o.namespaces {
				if ns.Labels["pod-security.kubernetes.io/enforce"] != "privileged" {
					t.Errorf("namespace %s: pod-security enforce %q; hostPath volumes need privileged", ns.Name, ns.Labels["pod-security.kubernetes.io/enforce"])
				}
			}
		})
	}
}

// The overlays and values files must differ where they say they do.
func TestRenderingsDiffer(t *testing.T) {
	modes := map[string]bool{}
	for name, docs := range renderings(t) {
		c := decode(t, docs).daemonSets[0].Spec.Template.Spec.Containers[0]
		cfg, err := parseArgs(c.Args)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		modes[fmt.Sprintf("capping=%v dry-run=%v budget=%s", cfg.Capping.Enabled, cfg.Capping.DryRun, cfg.Budget.Source)] = true
	}
	for _, want := range []string{
		"capping=false dry-run=false budget=static", "capping=true dry-run=false budget=etcd", "capping=true dry-run=true budget=static",
	} {
		if !modes[want] {
			t.Errorf("no rendering runs %s (have %v)", want, modes)
		}
	}
}

func checkDaemonSet(t *testing.T, ds *appsv1.DaemonSet, cappingCaps, telemetryCaps []string) *config.Config {
	t.Helper()
	pod := ds.Spec.Template.Spec
	if len(pod.Containers) != 1 || len(pod.InitContainers) != 0 {
		t.Fatalf("want one container, got %d (+%d init)", len(pod.Containers), len(pod.InitContainers))
	}
	c := pod.Containers[0]
	if len(c.Command) != 0 {
		t.Errorf("command %q overrides the image's capstan entrypoint", c.Command)
	}
	cfg, err := parseArgs(c.Args)
	if err != nil {
		t.Fatalf("the agent rejects the DaemonSet's args %q: %v", c.Args, err)
	}

	// Security: capabilities, never privileged.
	if pod.HostIPC {
		t.Error("hostIPC: the agent does not need it")
	}
	// NVML gives GPU processes' PIDs as the caller's PID namespace sees them (leaving out those
	// it cannot see): the workload collector needs the host's, and nothing else does.
	if workload := cfg.Collectors["workload"].Enabled; pod.HostPID != workload {
		t.Errorf("hostPID %v with the workload collector on = %v: want hostPID exactly when it maps GPU processes to pods", pod.HostPID, workload)
	}
	sc := c.SecurityContext
	if sc == nil || sc.Capabilities == nil {
		t.Fatal("no container securityContext with capabilities")
	}
	if sc.Privileged != nil && *sc.Privileged {
		t.Error("privileged: true; the agent runs with capabilities")
	}
	if !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("capabilities.drop = %v, want [ALL]", sc.Capabilities.Drop)
	}
	var added []string
	for _, a := range sc.Capabilities.Add {
		added = append(added, string(a))
	}
	slices.Sort(added)
	writes := cfg.Capping.Enabled && !cfg.Capping.DryRun
	want := telemetryCaps
	if writes {
		want = cappingCaps
	}
	if !slices.Equal(added, want) {
		t.Errorf("capabilities.add = %v, want the systemd unit's %v (capping writes limits: %v)", added, want, writes)
	}
	ape := sc.AllowPrivilegeEscalation
	switch {
	case slices.Contains(added, "SYS_ADMIN") && ape != nil && !*ape:
		t.Error("allowPrivilegeEscalation: false with SYS_ADMIN: the API server refuses it")
	case !slices.Contains(added, "SYS_ADMIN") && (ape == nil || *ape):
		t.Error("allowPrivilegeEscalation is not false without SYS_ADMIN")
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Error("readOnlyRootFilesystem is not true")
	}

	// Host paths: read-only, except the capping state directory.
	mounts := map[string]corev1.VolumeMount{}
	for _, m := range c.VolumeMounts {
		mounts[m.Name] = m
	}
	hostMounts := map[string]corev1.VolumeMount{} // host path -> mount
	for _, v := range pod.Volumes {
		m, ok := mounts[v.Name]
		if !ok {
			t.Errorf("volume %s is not mounted", v.Name)
			continue
		}
		if v.HostPath != nil {
			hostMounts[v.HostPath.Path] = m
		}
	}
	stateDir := filepath.Dir(cfg.Capping.StateFile)
	for host, m := range hostMounts {
		stateMount := writes && m.MountPath == stateDir
		if !m.ReadOnly && !stateMount {
			t.Errorf("host path %s is mounted read-write at %s", host, m.MountPath)
		}
	}
	if writes {
		if m, ok := hostMounts["/var/lib/capstan"]; !ok || m.MountPath != stateDir || m.ReadOnly {
			t.Errorf("capping writes limits but the state directory %s is not a read-write host path (the original limits would be lost with the pod)", stateDir)
		}
	}
	for _, host := range []string{"/sys", "/proc", "/sys/fs/bpf", "/var/lib/kubelet/pod-resources"} {
		if _, ok := hostMounts[host]; !ok {
			t.Errorf("host path %s is not mounted", host)
		}
	}
	if m := hostMounts["/sys"]; cfg.Path.Sysfs != m.MountPath {
		t.Errorf("--path.sysfs=%s, but the host's /sys is at %s", cfg.Path.Sysfs, m.MountPath)
	}
	if m := hostMounts["/proc"]; cfg.Path.Procfs != m.MountPath {
		t.Errorf("--path.procfs=%s, but the host's /proc is at %s", cfg.Path.Procfs, m.MountPath)
	}
	// Every file a flag names must come from a mounted volume.
	for _, a := range c.Args {
		flag, value, _ := strings.Cut(a, "=")
		if !strings.HasSuffix(flag, "file") || !strings.HasPrefix(value, "/") {
			continue
		}
		if !slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool {
			return strings.HasPrefix(value, m.MountPath+"/")
		}) {
			t.Errorf("%s names a file in no mounted volume", a)
		}
	}

	// Node identity, probes, placement, resources.
	if !slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool {
		return e.Name == "NODE_NAME" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "spec.nodeName"
	}) {
		t.Error("NODE_NAME does not come from the downward API's spec.nodeName")
	}
	_, port, err := net.SplitHostPort(cfg.Web.ListenAddress)
	if err != nil {
		t.Fatalf("--web.listen-address %q: %v", cfg.Web.ListenAddress, err)
	}
	if len(c.Ports) != 1 || fmt.Sprint(c.Ports[0].ContainerPort) != port || c.Ports[0].Name != "metrics" {
		t.Errorf("ports %v, want one named metrics on the agent's port %s", c.Ports, port)
	}
	for probe, path := range map[*corev1.Probe]string{c.LivenessProbe: "/healthz", c.ReadinessProbe: "/readyz"} {
		if probe == nil || probe.HTTPGet == nil || probe.HTTPGet.Path != path || probe.HTTPGet.Port.String() != "metrics" {
			t.Errorf("probe %+v, want an HTTP GET of %s on the metrics port", probe, path)
		}
	}
	if pod.PriorityClassName != "system-node-critical" {
		t.Errorf("priorityClassName %q, want system-node-critical", pod.PriorityClassName)
	}
	if pod.NodeSelector["nvidia.com/gpu.present"] != "true" {
		t.Errorf("nodeSelector %v does not select GPU nodes", pod.NodeSelector)
	}
	if !slices.ContainsFunc(pod.Tolerations, func(tl corev1.Toleration) bool { return tl.Key == "nvidia.com/gpu" }) {
		t.Errorf("tolerations %v do not tolerate the nvidia.com/gpu taint", pod.Tolerations)
	}
	req, lim := c.Resources.Requests, c.Resources.Limits
	for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		if req.Name(r, resource.DecimalSI).IsZero() || lim.Name(r, resource.DecimalSI).IsZero() {
			t.Errorf("%s: request %v, limit %v; want both", r, req[r], lim[r])
		} else if lim.Name(r, resource.DecimalSI).Cmp(req[r]) < 0 {
			t.Errorf("%s: limit %v below request %v", r, lim[r], req[r])
		}
	}
	if req.Memory().Cmp(measuredPeakRSS) < 0 {
		t.Errorf("memory request %v is below the measured peak RSS %v", req.Memory(), &measuredPeakRSS)
	}
	if pod.HostNetwork && pod.DNSPolicy != corev1.DNSClusterFirstWithHostNet {
		t.Errorf("hostNetwork with dnsPolicy %q: service names (etcd, the collector) would not resolve", pod.DNSPolicy)
	}
	if ds.Spec.Selector == nil || !labelsMatch(ds.Spec.Selector.MatchLabels, ds.Spec.Template.Labels) {
		t.Error("the DaemonSet's selector does not match its pod template")
	}
	return cfg
}

func labelsMatch(selector, labels map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}

func checkService(t *testing.T, svc *corev1.Service, ds *appsv1.DaemonSet, cfg *config.Config) {
	t.Helper()
	if !labelsMatch(svc.Spec.Selector, ds.Spec.Template.Labels) {
		t.Errorf("Service selector %v does not select the agent's pods %v", svc.Spec.Selector, ds.Spec.Template.Labels)
	}
	_, port, _ := net.SplitHostPort(cfg.Web.ListenAddress)
	if len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Name != "metrics" || fmt.Sprint(svc.Spec.Ports[0].Port) != port ||
		svc.Spec.Ports[0].TargetPort.String() != "metrics" {
		t.Errorf("Service ports %v, want metrics on %s to the container's metrics port", svc.Spec.Ports, port)
	}
}

func checkServiceMonitor(t *testing.T, sm *monitoringv1.ServiceMonitor, svc *corev1.Service) {
	t.Helper()
	if !labelsMatch(sm.Spec.Selector.MatchLabels, svc.Labels) {
		t.Errorf("ServiceMonitor selector %v does not select the Service %v", sm.Spec.Selector.MatchLabels, svc.Labels)
	}
	if len(sm.Spec.Endpoints) != 1 || sm.Spec.Endpoints[0].Port != svc.Spec.Ports[0].Name || sm.Spec.Endpoints[0].Path != "/metrics" {
		t.Errorf("ServiceMonitor endpoints %+v, want /metrics on the Service's %s port", sm.Spec.Endpoints, svc.Spec.Ports[0].Name)
	}
}

// readsNode reports whether the agent reads its own Node from the API server: its power
// domain from node labels under a cluster budget.
func readsNode(cfg *config.Config) bool {
	return cfg.Capping.Enabled && cfg.Budget.Source == "etcd" && cfg.Etcd.DomainLabels != ""
}

func checkRBAC(t *testing.T, o *objects, ds *appsv1.DaemonSet) {
	t.Helper()
	sa := o.serviceAccounts[0]
	if ds.Spec.Template.Spec.ServiceAccountName != sa.Name {
		t.Errorf("the pods run as %q, the chart creates %q", ds.Spec.Template.Spec.ServiceAccountName, sa.Name)
	}
	want := []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"get"}}}
	if rules := o.clusterRoles[0].Rules; fmt.Sprint(rules) != fmt.Sprint(want) {
		t.Errorf("ClusterRole rules %v, want only get on nodes", rules)
	}
	b := o.bindings[0]
	if b.RoleRef.Name != o.clusterRoles[0].Name || len(b.Subjects) != 1 || b.Subjects[0].Name != sa.Name ||
		b.Subjects[0].Namespace != sa.Namespace {
		t.Errorf("ClusterRoleBinding %+v does not bind %s to %s/%s", b, o.clusterRoles[0].Name, sa.Namespace, sa.Name)
	}
}

// The chart's schema refuses values the agent would reject at start (a crash-looping
// DaemonSet): capping on a static budget of 0 W, capping on etcd without a group or endpoints,
// and a budget file the chart cannot mount.
func TestChartSchemaRefusesUnstartableValues(t *testing.T) {
	chart, err := loader.Load(chartDir)
	if err != nil {
		t.Fatal(err)
	}
	for name, values := range map[string]string{
		"static capping without watts":            "capping:\n  enabled: true\n",
		"etcd capping without a group":            "capping:\n  enabled: true\nbudget:\n  source: etcd\netcd:\n  endpoints: [https://etcd-0:2379]\n",
		"etcd capping without endpoints":          "capping:\n  enabled: true\nbudget:\n  source: etcd\netcd:\n  group: row-a\n",
		"a budget file":                           "capping:\n  enabled: true\nbudget:\n  source: file\n",
		"a domain label with a slash in its name": "etcd:\n  domainLabels: [capstan.io/row/rack]\n",
		"a domain label twice":                    "etcd:\n  domainLabels: [capstan.io/rack, capstan.io/rack]\n",
	} {
		vals, err := chartutil.ReadValues([]byte(values))
		if err != nil {
			t.Fatal(err)
		}
		_, err = chartutil.ToRenderValues(chart, vals.AsMap(), chartutil.ReleaseOptions{Name: "capstan", Namespace: "gpu-telemetry", IsInstall: true}, nil)
		if err == nil {
			t.Errorf("%s: the chart's schema accepted\n%s", name, values)
		}
	}
	// And the same with what makes them startable is accepted.
	vals, err := chartutil.ReadValues([]byte("capping:\n  enabled: true\nbudget:\n  watts: 4000\n"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := chartutil.ToRenderValues(chart, vals.AsMap(), chartutil.ReleaseOptions{Name: "capstan", Namespace: "gpu-telemetry", IsInstall: true}, nil); err != nil {
		t.Errorf("static capping at 4000 W refused: %v", err)
	}
}

// etcd.domainLabels reaches the agent as --etcd.domain-labels, the labels in order, and grants
// the service account "get" on nodes; without it the chart grants nothing.
func TestChartDomainLabels(t *testing.T) {
	values := filepath.Join(t.TempDir(), "values.yaml")
	if err := os.WriteFile(values, []byte("capping:\n  enabled: true\nbudget:\n  source: etcd\n"+
		"etcd:\n  endpoints: [https://etcd-0:2379]\n  group: site\n  domainLabels: [capstan.io/hall, capstan.io/row, capstan.io/rack]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	o := decode(t, helmTemplate(t, values))
	cfg, err := parseArgs(o.daemonSets[0].Spec.Template.Spec.Containers[0].Args)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Etcd.DomainLabels != "capstan.io/hall,capstan.io/row,capstan.io/rack" || cfg.Etcd.Group != "site" || cfg.Etcd.Domain != "" {
		t.Errorf("etcd.group %q, etcd.domain %q, etcd.domain-labels %q; want site, empty, the three labels in order",
			cfg.Etcd.Group, cfg.Etcd.Domain, cfg.Etcd.DomainLabels)
	}
	if len(o.clusterRoles) != 1 || len(o.bindings) != 1 {
		t.Fatalf("%d ClusterRoles, %d bindings; want one each", len(o.clusterRoles), len(o.bindings))
	}
	checkRBAC(t, o, o.daemonSets[0])
	pod := o.daemonSets[0].Spec.Template.Spec
	if pod.AutomountServiceAccountToken != nil && !*pod.AutomountServiceAccountToken {
		t.Error("the pod does not mount its service account token, which reading its Node needs")
	}
	// rbac.create false leaves the role to the operator.
	if err := os.WriteFile(values+".norbac", []byte("rbac:\n  create: false\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if o := decode(t, helmTemplate(t, values+".norbac", values)); len(o.clusterRoles) != 0 {
		t.Error("rbac.create false renders a ClusterRole")
	}
	// Labels without a cluster budget read nothing and grant nothing.
	if err := os.WriteFile(values, []byte("etcd:\n  domainLabels: [capstan.io/rack]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if o := decode(t, helmTemplate(t, values)); len(o.clusterRoles) != 0 {
		t.Error("domain labels without budget.source etcd render a ClusterRole")
	}
}
