package test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"
)

// services are the chart's Deployments, by the component label.
var services = []string{"ingest", "rewrite", "quota", "sender"}

// consumers are the JetStream stream and durable consumer of each service
// (platform/bus stream names, each service's Stage).
var consumers = map[string][2]string{
	"ingest":  {"POSTS", "ingest"},
	"rewrite": {"COMPOSE", "rewrite"},
	"quota":   {"REWRITTEN", "quota"},
	"sender":  {"READY", "sender"},
}

// valuesFiles are the files of deploy/helm/values: the matrix that
// helm-check lints and renders.
func valuesFiles(t *testing.T) []string {
	t.Helper()
	paths, err := filepath.Glob(filepath.Join(root(t), "deploy", "helm", "values", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range paths {
		names = append(names, strings.TrimSuffix(filepath.Base(p), ".yaml"))
	}
	for _, want := range []string{"minimal", "production", "keda", "inbound-smtp-lb"} {
		if !slices.Contains(names, want) {
			t.Errorf("deploy/helm/values/%s.yaml is missing", want)
		}
	}
	return names
}

// TestValuesFiles renders every values file and checks every invariant.
func TestValuesFiles(t *testing.T) {
	keys := tenantsFileKeys(t)
	for _, f := range valuesFiles(t) {
		t.Run(f, func(t *testing.T) {
			m := render(t, renderOptions{values: []string{f}})
			checkInvariants(t, m, keys, valuesSecrets(t, f))
		})
	}
}

// checkInvariants checks what must hold in any rendering.
func checkInvariants(t *testing.T, m *manifests, keys map[string]map[string]bool, existingSecrets map[string]bool) {
	t.Helper()
	if len(m.deployments) != len(services) {
		t.Fatalf("%d Deployments, want one per service %v", len(m.deployments), services)
	}
	for _, s := range services {
		d := m.deployment(t, s)
		checkDeployment(t, m, d, s, existingSecrets)
	}
	for _, svc := range m.services {
		d := m.matchingOne(t, "Service "+svc.Name, &metav1.LabelSelector{MatchLabels: svc.Spec.Selector})
		for _, p := range svc.Spec.Ports {
			if containerPort(d, p.TargetPort) == nil {
				t.Errorf("Service %s port %s: targetPort %s is no container port of %s", svc.Name, p.Name, p.TargetPort.String(), d.Name)
			}
		}
	}
	for _, pdb := range m.pdbs {
		m.matchingOne(t, "PodDisruptionBudget "+pdb.Name, pdb.Spec.Selector)
		if pdb.Spec.MinAvailable == nil && pdb.Spec.MaxUnavailable == nil {
			t.Errorf("PodDisruptionBudget %s: neither minAvailable nor maxUnavailable", pdb.Name)
		}
	}
	scaled := map[string]string{} // Deployment → what scales it
	for _, h := range m.hpas {
		d := m.scaleTarget(t, "HorizontalPodAutoscaler "+h.Name, h.Spec.ScaleTargetRef.APIVersion, h.Spec.ScaleTargetRef.Kind, h.Spec.ScaleTargetRef.Name)
		if prev, ok := scaled[d.Name]; ok {
			t.Errorf("Deployment %s scaled by %s and HorizontalPodAutoscaler %s", d.Name, prev, h.Name)
		}
		scaled[d.Name] = "HorizontalPodAutoscaler " + h.Name
		if h.Spec.MinReplicas == nil || *h.Spec.MinReplicas < 1 || *h.Spec.MinReplicas > h.Spec.MaxReplicas {
			t.Errorf("HorizontalPodAutoscaler %s: minReplicas %v, maxReplicas %d", h.Name, h.Spec.MinReplicas, h.Spec.MaxReplicas)
		}
		for _, metric := range h.Spec.Metrics {
			if metric.Type == autoscalingv2.ResourceMetricSourceType && metric.Resource.Name == corev1.ResourceCPU {
				requireCPURequests(t, d)
			}
		}
	}
	for _, so := range m.scaledObjects {
		ref := so.Spec.ScaleTargetRef
		d := m.scaleTarget(t, "ScaledObject "+so.Name, ref.APIVersion, ref.Kind, ref.Name)
		if prev, ok := scaled[d.Name]; ok {
			t.Errorf("Deployment %s scaled by %s and ScaledObject %s", d.Name, prev, so.Name)
		}
		scaled[d.Name] = "ScaledObject " + so.Name
		checkScaledObject(t, so, d)
	}
	for _, d := range m.deployments {
		if _, ok := scaled[d.Name]; ok && d.Spec.Replicas != nil {
			t.Errorf("Deployment %s sets replicas although %s scales it: every upgrade would reset the count", d.Name, scaled[d.Name])
		}
		if _, ok := scaled[d.Name]; !ok && d.Spec.Replicas == nil {
			t.Errorf("Deployment %s: no replicas and no autoscaler", d.Name)
		}
	}
	if len(m.networkPolicies) > 0 {
		checkNetworkPolicies(t, m)
	}
	for _, sm := range m.serviceMonitors {
		sel, err := metav1.LabelSelectorAsSelector(&sm.Spec.Selector)
		if err != nil {
			t.Fatal(err)
		}
		var matched []corev1.ServicePort
		covered := map[string]bool{}
		for _, svc := range m.services {
			if sel.Matches(labels.Set(svc.Labels)) {
				matched = append(matched, svc.Spec.Ports...)
				covered[svc.Labels["app.kubernetes.io/component"]] = true
			}
		}
		for _, s := range services {
			if !covered[s] {
				t.Errorf("ServiceMonitor %s: no Service of %s matches its selector", sm.Name, s)
			}
		}
		for _, ep := range sm.Spec.Endpoints {
			if !slices.ContainsFunc(matched, func(p corev1.ServicePort) bool { return p.Name == ep.Port }) {
				t.Errorf("ServiceMonitor %s: endpoint port %q is no port of the Services it selects", sm.Name, ep.Port)
			}
			if ep.Path != "/metrics" {
				t.Errorf("ServiceMonitor %s: path %q, want /metrics", sm.Name, ep.Path)
			}
		}
	}
	for _, ing := range m.ingresses {
		for _, r := range ing.Spec.Rules {
			for _, p := range r.HTTP.Paths {
				svc := m.service(p.Backend.Service.Name)
				if svc == nil || !slices.ContainsFunc(svc.Spec.Ports, func(sp corev1.ServicePort) bool { return sp.Name == p.Backend.Service.Port.Name }) {
					t.Errorf("Ingress %s: backend %s port %q does not exist", ing.Name, p.Backend.Service.Name, p.Backend.Service.Port.Name)
				}
			}
		}
	}
	for _, p := range m.pods {
		if p.Annotations["helm.sh/hook"] != "test" {
			t.Errorf("Pod %s is not a helm test hook: the chart runs its services as Deployments", p.Name)
		}
		checkPod(t, m, "Pod "+p.Name, &p.Spec, "chattermail", existingSecrets, false)
	}
	checkTenantsFileMounts(t, m, keys)
}

func (m *manifests) service(name string) *corev1.Service {
	for _, s := range m.services {
		if s.Name == name {
			return s
		}
	}
	return nil
}

func (m *manifests) scaleTarget(t *testing.T, what, apiVersion, kind, name string) *appsv1.Deployment {
	t.Helper()
	if apiVersion != "apps/v1" || kind != "Deployment" {
		t.Fatalf("%s: scale target %s %s, want apps/v1 Deployment", what, apiVersion, kind)
	}
	for _, d := range m.deployments {
		if d.Name == name {
			return d
		}
	}
	t.Fatalf("%s: no Deployment %s", what, name)
	return nil
}

// checkDeployment checks one service's Deployment: its selector, the
// checksums, and its pod (checkPod).
func checkDeployment(t *testing.T, m *manifests, d *appsv1.Deployment, service string, existingSecrets map[string]bool) {
	t.Helper()
	sel, err := metav1.LabelSelectorAsSelector(d.Spec.Selector)
	if err != nil || sel.Empty() || !sel.Matches(labels.Set(d.Spec.Template.Labels)) {
		t.Errorf("Deployment %s: selector %v does not select its own pods %v", d.Name, d.Spec.Selector, d.Spec.Template.Labels)
	}
	ann := d.Spec.Template.Annotations
	for _, a := range []string{"checksum/config", "checksum/secrets"} {
		if !regexp.MustCompile(`^[0-9a-f]{64}$`).MatchString(ann[a]) {
			t.Errorf("Deployment %s: annotation %s = %q, want a sha256", d.Name, a, ann[a])
		}
	}
	if cs := d.Spec.Template.Spec.Containers; len(cs) != 1 || cs[0].Name != service {
		t.Fatalf("Deployment %s: want one container, named %s", d.Name, service)
	}
	checkPod(t, m, "Deployment "+d.Name, &d.Spec.Template.Spec, service, existingSecrets, true)
}

// checkPod checks a pod: no service account token, non-root with the
// RuntimeDefault seccomp profile, volumes whose Secrets and ConfigMaps
// exist, and in every container the probes (for a service), resources,
// the restrictive securityContext, the image, mounts and environment.
func checkPod(t *testing.T, m *manifests, who string, pod *corev1.PodSpec, service string, existingSecrets map[string]bool, isService bool) {
	t.Helper()
	if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
		t.Errorf("%s: the service account token is mounted", who)
	}
	if len(m.serviceAccounts) > 0 && !slices.ContainsFunc(m.serviceAccounts, func(sa *corev1.ServiceAccount) bool { return sa.Name == pod.ServiceAccountName }) {
		t.Errorf("%s: service account %q is not rendered", who, pod.ServiceAccountName)
	}
	psc := pod.SecurityContext
	if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || (psc.RunAsUser != nil && *psc.RunAsUser == 0) ||
		psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("%s: pod securityContext %+v, want non-root with the RuntimeDefault seccomp profile", who, psc)
	}
	if len(pod.Containers) != 1 {
		t.Fatalf("%s: %d containers, want 1", who, len(pod.Containers))
	}
	volumes := map[string]corev1.Volume{}
	for _, v := range pod.Volumes {
		volumes[v.Name] = v
		switch {
		case v.Secret != nil:
			checkSecretRef(t, m, who, v.Secret.SecretName, itemKeys(v.Secret.Items), existingSecrets)
		case v.ConfigMap != nil:
			cm := m.configMap(v.ConfigMap.Name)
			if cm == nil {
				t.Errorf("%s: volume %s: ConfigMap %s is not rendered", who, v.Name, v.ConfigMap.Name)
			}
		}
	}
	for _, c := range append(slices.Clone(pod.InitContainers), pod.Containers...) {
		where := who + " container " + c.Name
		probes := []struct {
			name  string
			probe *corev1.Probe
			path  string
		}{{"liveness", c.LivenessProbe, "/livez"}, {"readiness", c.ReadinessProbe, "/readyz"}}
		if !isService {
			probes = nil // a one-shot pod (helm test)
		}
		for _, p := range probes {
			if p.probe == nil || p.probe.HTTPGet == nil {
				t.Errorf("%s: no %s probe", where, p.name)
				continue
			}
			if p.probe.HTTPGet.Path != p.path || containerPortOf(c, p.probe.HTTPGet.Port) == nil || p.probe.HTTPGet.Port.String() != "admin" {
				t.Errorf("%s: %s probe %s on port %s, want %s on the admin port", where, p.name, p.probe.HTTPGet.Path, p.probe.HTTPGet.Port.String(), p.path)
			}
		}
		if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
			t.Errorf("%s: resources %+v, want cpu and memory requests and a memory limit", where, c.Resources)
		}
		sc := c.SecurityContext
		if sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot ||
			sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
			sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
			(sc.Privileged != nil && *sc.Privileged) ||
			sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") || len(sc.Capabilities.Add) > 0 {
			t.Errorf("%s: securityContext %+v, want non-root, read-only root filesystem, no privilege escalation, all capabilities dropped", where, sc)
		}
		if !regexp.MustCompile(`/`+regexp.QuoteMeta(service)+`:[A-Za-z0-9_][-.A-Za-z0-9_]*$`).MatchString(c.Image) || strings.HasSuffix(c.Image, ":latest") {
			t.Errorf("%s: image %q, want <registry>/%s:<pinned tag>", where, c.Image, service)
		}
		for _, vm := range c.VolumeMounts {
			if _, ok := volumes[vm.Name]; !ok {
				t.Errorf("%s: volumeMount %s has no volume", where, vm.Name)
			}
			if vm.SubPath != "" {
				t.Errorf("%s: volumeMount %s uses subPath: updates of its Secret or ConfigMap would never arrive", where, vm.Name)
			}
		}
		for _, e := range c.Env {
			if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
				checkSecretRef(t, m, who, e.ValueFrom.SecretKeyRef.Name, []string{e.ValueFrom.SecretKeyRef.Key}, existingSecrets)
			}
			if strings.HasPrefix(e.Value, "/etc/chattermail/") && !fileMounted(c, volumes, e.Value) {
				t.Errorf("%s: %s=%s is not a file of any mounted volume", where, e.Name, e.Value)
			}
		}
		for _, a := range c.Args {
			if _, path, ok := strings.Cut(a, "="); ok && strings.HasPrefix(path, "/etc/chattermail/") && !fileMounted(c, volumes, path) {
				t.Errorf("%s: argument %s names a file of no mounted volume", where, a)
			}
		}
		if isService {
			checkEnvNames(t, service, c)
			checkFlags(t, service, c)
		}
	}
}

func itemKeys(items []corev1.KeyToPath) []string {
	var keys []string
	for _, it := range items {
		keys = append(keys, it.Key)
	}
	return keys
}

// checkSecretRef checks that a referenced Secret is made by the chart (and
// holds the keys) or is one the values file names as existing.
func checkSecretRef(t *testing.T, m *manifests, who, name string, keys []string, existing map[string]bool) {
	t.Helper()
	s := m.secret(name)
	if s == nil {
		if !existing[name] {
			t.Errorf("%s: Secret %s is neither rendered nor named by the values as existing", who, name)
		}
		return
	}
	for _, k := range keys {
		if _, ok := s.Data[k]; !ok {
			t.Errorf("%s: Secret %s has no key %q", who, name, k)
		}
	}
}

// fileMounted tells whether path is a file the container sees through one
// of its volume mounts (with the volume's items, when it lists them).
func fileMounted(c corev1.Container, volumes map[string]corev1.Volume, path string) bool {
	for _, vm := range c.VolumeMounts {
		rel, ok := strings.CutPrefix(path, vm.MountPath+"/")
		if !ok {
			continue
		}
		v := volumes[vm.Name]
		var items []corev1.KeyToPath
		switch {
		case v.Secret != nil:
			items = v.Secret.Items
		case v.ConfigMap != nil:
			items = v.ConfigMap.Items
		}
		if len(items) == 0 || slices.ContainsFunc(items, func(it corev1.KeyToPath) bool { return it.Path == rel }) {
			return true
		}
	}
	return false
}

func containerPort(d *appsv1.Deployment, port intstr.IntOrString) *corev1.ContainerPort {
	for _, c := range d.Spec.Template.Spec.Containers {
		if p := containerPortOf(c, port); p != nil {
			return p
		}
	}
	return nil
}

func containerPortOf(c corev1.Container, port intstr.IntOrString) *corev1.ContainerPort {
	for i, p := range c.Ports {
		if (port.Type == intstr.String && p.Name == port.StrVal) || (port.Type == intstr.Int && p.ContainerPort == port.IntVal) {
			return &c.Ports[i]
		}
	}
	return nil
}

func requireCPURequests(t *testing.T, d *appsv1.Deployment) {
	t.Helper()
	for _, c := range d.Spec.Template.Spec.Containers {
		if c.Resources.Requests.Cpu().IsZero() {
			t.Errorf("Deployment %s container %s: scaled on CPU utilisation without a CPU request", d.Name, c.Name)
		}
	}
}

// checkScaledObject checks a KEDA ScaledObject against its Deployment.
func checkScaledObject(t *testing.T, so *ScaledObject, d *appsv1.Deployment) {
	t.Helper()
	service := d.Spec.Template.Labels["app.kubernetes.io/component"]
	if so.Spec.MinReplicaCount == nil || so.Spec.MaxReplicaCount == nil || *so.Spec.MinReplicaCount < 1 || *so.Spec.MinReplicaCount > *so.Spec.MaxReplicaCount {
		t.Errorf("ScaledObject %s: minReplicaCount %v, maxReplicaCount %v", so.Name, so.Spec.MinReplicaCount, so.Spec.MaxReplicaCount)
	}
	var jetstream int
	for _, tr := range so.Spec.Triggers {
		allowed, ok := triggerMetadata[tr.Type]
		if !ok {
			t.Errorf("ScaledObject %s: trigger type %q", so.Name, tr.Type)
			continue
		}
		for k := range tr.Metadata {
			if !allowed[k] {
				t.Errorf("ScaledObject %s: %s trigger metadata %q is not one of the scaler's", so.Name, tr.Type, k)
			}
		}
		switch tr.Type {
		case "nats-jetstream":
			jetstream++
			want := consumers[service]
			if tr.Metadata["stream"] != want[0] || tr.Metadata["consumer"] != want[1] {
				t.Errorf("ScaledObject %s: stream/consumer %s/%s, want %s/%s", so.Name, tr.Metadata["stream"], tr.Metadata["consumer"], want[0], want[1])
			}
			for _, k := range []string{"natsServerMonitoringEndpoint", "account", "lagThreshold"} {
				if tr.Metadata[k] == "" {
					t.Errorf("ScaledObject %s: nats-jetstream trigger without %s", so.Name, k)
				}
			}
			if !regexp.MustCompile(`^[^/:]+:\d+$`).MatchString(tr.Metadata["natsServerMonitoringEndpoint"]) {
				t.Errorf("ScaledObject %s: natsServerMonitoringEndpoint %q, want host:port", so.Name, tr.Metadata["natsServerMonitoringEndpoint"])
			}
		case "cpu":
			requireCPURequests(t, d)
			if tr.MetricType != autoscalingv2.UtilizationMetricType || tr.Metadata["value"] == "" {
				t.Errorf("ScaledObject %s: cpu trigger %+v, want Utilization with a value", so.Name, tr)
			}
		}
	}
	if jetstream != 1 {
		t.Errorf("ScaledObject %s: %d nats-jetstream triggers, want 1", so.Name, jetstream)
	}
}

// checkNetworkPolicies checks that every service has exactly one policy,
// whose named ports exist and whose egress lets it reach what it needs.
func checkNetworkPolicies(t *testing.T, m *manifests) {
	t.Helper()
	per := map[string]int{}
	for _, np := range m.networkPolicies {
		d := m.matchingOne(t, "NetworkPolicy "+np.Name, &np.Spec.PodSelector)
		per[d.Name]++
		service := d.Spec.Template.Labels["app.kubernetes.io/component"]
		if !slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeIngress) || !slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeEgress) {
			t.Errorf("NetworkPolicy %s: policyTypes %v, want Ingress and Egress", np.Name, np.Spec.PolicyTypes)
		}
		ingress := map[string]bool{}
		for _, r := range np.Spec.Ingress {
			for _, p := range r.Ports {
				if p.Port == nil || containerPort(d, *p.Port) == nil {
					t.Errorf("NetworkPolicy %s: ingress port %v is no container port of %s", np.Name, p.Port, d.Name)
					continue
				}
				ingress[containerPort(d, *p.Port).Name] = true
			}
		}
		for _, p := range d.Spec.Template.Spec.Containers[0].Ports {
			if !ingress[p.Name] {
				t.Errorf("NetworkPolicy %s: container port %s (%d) of %s is not reachable", np.Name, p.Name, p.ContainerPort, d.Name)
			}
		}
		egress := map[string]bool{}
		for _, r := range np.Spec.Egress {
			for _, p := range r.Ports {
				proto := corev1.ProtocolTCP
				if p.Protocol != nil {
					proto = *p.Protocol
				}
				egress[string(proto)+"/"+p.Port.String()] = true
			}
		}
		want := []string{"UDP/53", "TCP/53", "TCP/4222"}
		switch service {
		case "quota":
			want = append(want, "TCP/6379")
		case "sender":
			want = append(want, "TCP/25", "TCP/587", "TCP/465")
		}
		for _, w := range want {
			if !egress[w] && !(w == "TCP/6379" && hasAnyRedisPort(egress)) {
				t.Errorf("NetworkPolicy %s: no egress to %s", np.Name, w)
			}
		}
	}
	for _, d := range m.deployments {
		if per[d.Name] != 1 {
			t.Errorf("Deployment %s: %d NetworkPolicies, want 1", d.Name, per[d.Name])
		}
	}
}

// hasAnyRedisPort accepts a Redis on another port than 6379 (the
// production values use 6380 for TLS).
func hasAnyRedisPort(egress map[string]bool) bool {
	for k := range egress {
		if strings.HasPrefix(k, "TCP/63") {
			return true
		}
	}
	return false
}

// checkTenantsFileMounts parses the rendered tenants file, checks its keys
// against platform/config, and checks that every password_file is mounted
// in every service (each loads the file, and with it the passwords) and
// every DKIM key_file in the sender.
func checkTenantsFileMounts(t *testing.T, m *manifests, keys map[string]map[string]bool) {
	t.Helper()
	cm := m.configMap(release + "-config")
	if cm == nil {
		t.Fatalf("no ConfigMap %s-config", release)
	}
	var doc map[string]any
	if err := yaml.UnmarshalStrict([]byte(cm.Data["chattermail.yaml"]), &doc); err != nil {
		t.Fatalf("tenants file: %v", err)
	}
	checkTenantsFile(t, keys, doc)
	for _, tv := range doc["tenants"].(map[string]any) {
		tenant := tv.(map[string]any)
		for _, s := range asList(tenant["servers"]) {
			if pf, _ := s.(map[string]any)["password_file"].(string); pf != "" {
				for _, svc := range services {
					d := m.deployment(t, svc)
					requireFile(t, m, "Deployment "+d.Name, &d.Spec.Template.Spec, pf)
				}
				for _, p := range m.pods {
					requireFile(t, m, "Pod "+p.Name, &p.Spec, pf)
				}
			}
		}
		for _, k := range asList(tenant["dkim"]) {
			kf, _ := k.(map[string]any)["key_file"].(string)
			d := m.deployment(t, "sender")
			requireFile(t, m, "Deployment "+d.Name, &d.Spec.Template.Spec, kf)
			for _, p := range m.pods {
				requireFile(t, m, "Pod "+p.Name, &p.Spec, kf)
			}
		}
	}
}

// requireFile checks that a file named by the tenants file is in a
// volume the pod mounts, and in the Secret when the chart makes it.
func requireFile(t *testing.T, m *manifests, who string, pod *corev1.PodSpec, path string) {
	t.Helper()
	for _, p := range fileProblems(m, who, pod, path) {
		t.Error(p)
	}
}

func fileProblems(m *manifests, who string, pod *corev1.PodSpec, path string) []string {
	c := pod.Containers[0]
	volumes := map[string]corev1.Volume{}
	for _, v := range pod.Volumes {
		volumes[v.Name] = v
	}
	if !filepath.IsAbs(path) || !fileMounted(c, volumes, path) {
		return []string{fmt.Sprintf("tenants file names %s, which is in no volume mounted in %s", path, who)}
	}
	var problems []string
	for _, vm := range c.VolumeMounts {
		if rel, ok := strings.CutPrefix(path, vm.MountPath+"/"); ok && volumes[vm.Name].Secret != nil {
			if s := m.secret(volumes[vm.Name].Secret.SecretName); s != nil {
				if _, ok := s.Data[rel]; !ok {
					problems = append(problems, fmt.Sprintf("tenants file names %s, but Secret %s has no key %q", path, s.Name, rel))
				}
			}
		}
	}
	return problems
}

// checkEnvNames checks that the program reads every variable the chart
// sets: a misspelt name would be ignored silently. A name counts as read
// when the service's or platform's Go source quotes it.
func checkEnvNames(t *testing.T, service string, c corev1.Container) {
	t.Helper()
	src := goSource(t, service)
	for _, e := range c.Env {
		switch {
		case e.Name == "GOMEMLIMIT": // the Go runtime's
		case !strings.Contains(src, `"`+e.Name+`"`):
			t.Errorf("%s: %s sets %s, which neither services/%s nor platform reads", service, c.Name, e.Name, service)
		}
	}
}

// checkFlags checks that the program defines every flag the chart passes.
func checkFlags(t *testing.T, service string, c corev1.Container) {
	t.Helper()
	for _, p := range flagProblems(t, service, c) {
		t.Error(p)
	}
}

func flagProblems(t *testing.T, service string, c corev1.Container) []string {
	t.Helper()
	src := goSource(t, service)
	var problems []string
	for _, a := range c.Args {
		name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !strings.HasPrefix(a, "-") || !regexp.MustCompile(`fs\.\w+\((&\w+, )?"`+regexp.QuoteMeta(name)+`"`).MatchString(src) {
			problems = append(problems, fmt.Sprintf("%s: argument %q is not a flag of services/%s", service, a, service))
		}
	}
	return problems
}

var sources = map[string]string{}

// goSource is the non-test Go source of services/<service> and platform.
func goSource(t *testing.T, service string) string {
	t.Helper()
	if s, ok := sources[service]; ok {
		return s
	}
	var b strings.Builder
	for _, dir := range []string{filepath.Join("services", service), "platform"} {
		err := filepath.WalkDir(filepath.Join(root(t), dir), func(path string, de os.DirEntry, err error) error {
			if err != nil || de.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
				return err
			}
			data, err := os.ReadFile(path)
			b.Write(data)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	sources[service] = b.String()
	return sources[service]
}

func env(c corev1.Container, name string) (corev1.EnvVar, bool) {
	for _, e := range c.Env {
		if e.Name == name {
			return e, true
		}
	}
	return corev1.EnvVar{}, false
}

// TestConfigChecksum: a change of the tenants file changes every pod
// template (so the pods roll); a change elsewhere does not; a changed
// secret rolls only the services that read it.
func TestConfigChecksum(t *testing.T) {
	base := render(t, renderOptions{values: []string{"minimal"}})
	changed := render(t, renderOptions{values: []string{"minimal"}, set: []string{"config.tenants.acme.daily_limit=500"}})
	other := render(t, renderOptions{values: []string{"minimal"}, set: []string{"sender.workers=16", "logLevel=debug"}})
	secret := render(t, renderOptions{values: []string{"minimal"}, set: []string{"secrets.unsubscribeKey.value=c2Vjb25kLWV4YW1wbGUta2V5LW9mLTMyLWJ5dGVzLW9yLW1vcmU="}})
	for _, s := range services {
		a := base.deployment(t, s).Spec.Template.Annotations
		if b := changed.deployment(t, s).Spec.Template.Annotations; a["checksum/config"] == b["checksum/config"] {
			t.Errorf("%s: checksum/config unchanged after the tenants file changed", s)
		}
		if b := other.deployment(t, s).Spec.Template.Annotations; a["checksum/config"] != b["checksum/config"] {
			t.Errorf("%s: checksum/config changed although the tenants file did not", s)
		}
		b := secret.deployment(t, s).Spec.Template.Annotations
		if rolls := a["checksum/secrets"] != b["checksum/secrets"]; rolls != (s == "ingest") {
			t.Errorf("%s: after a new unsubscribe key, checksum/secrets changed = %v, want %v (only ingest reads it)", s, rolls, s == "ingest")
		}
	}
	// The checksum is the ConfigMap's content.
	if !strings.Contains(changed.configMap(release + "-config").Data["chattermail.yaml"], "daily_limit: 500") {
		t.Errorf("the ConfigMap does not carry the new daily_limit")
	}
}

// TestProductionScaling: the production values run the sender from 2 to
// 20 replicas on CPU, on a 3-replica JetStream.
func TestProductionScaling(t *testing.T) {
	m := render(t, renderOptions{values: []string{"production"}})
	sender := m.deployment(t, "sender")
	var hpa *autoscalingv2.HorizontalPodAutoscaler
	for _, h := range m.hpas {
		if h.Spec.ScaleTargetRef.Name == sender.Name {
			hpa = h
		}
	}
	if hpa == nil {
		t.Fatal("no HorizontalPodAutoscaler for the sender")
	}
	if *hpa.Spec.MinReplicas != 2 || hpa.Spec.MaxReplicas != 20 {
		t.Errorf("sender HPA %d-%d, want 2-20", *hpa.Spec.MinReplicas, hpa.Spec.MaxReplicas)
	}
	if len(hpa.Spec.Metrics) != 1 || hpa.Spec.Metrics[0].Resource == nil || hpa.Spec.Metrics[0].Resource.Name != corev1.ResourceCPU ||
		*hpa.Spec.Metrics[0].Resource.Target.AverageUtilization != 70 {
		t.Errorf("sender HPA metrics %+v, want CPU at 70%%", hpa.Spec.Metrics)
	}
	// The chart's behavior adds max(4 pods, 100 %) a minute: 1 → 5 → 10 → 20.
	if got := scaleUpPeriods(hpa.Spec.Behavior.ScaleUp, 1, 20); got != 3 {
		t.Errorf("sender HPA: %d minutes from 1 to 20 replicas at full load, want 3", got)
	}
	if sender.Spec.Replicas != nil {
		t.Errorf("sender Deployment sets replicas %d under an HPA", *sender.Spec.Replicas)
	}
	c := sender.Spec.Template.Spec.Containers[0]
	if e, _ := env(c, "SENDER_WORKERS"); e.Value != "8" {
		t.Errorf("SENDER_WORKERS = %q, want 8", e.Value)
	}
	for _, s := range services {
		c := m.deployment(t, s).Spec.Template.Spec.Containers[0]
		if e, _ := env(c, "NATS_STREAM_REPLICAS"); e.Value != "3" {
			t.Errorf("%s: NATS_STREAM_REPLICAS = %q, want 3", s, e.Value)
		}
		if e, _ := env(c, "NATS_URL"); e.Value == "" {
			t.Errorf("%s: no NATS_URL", s)
		}
	}
	q := m.deployment(t, "quota").Spec.Template.Spec.Containers[0]
	if e, _ := env(q, "REDIS_URL"); e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil || e.ValueFrom.SecretKeyRef.Name != "chattermail-redis" {
		t.Errorf("quota REDIS_URL %+v, want it from the Secret chattermail-redis", e)
	}
	if len(m.serviceMonitors) != 1 {
		t.Errorf("%d ServiceMonitors, want 1", len(m.serviceMonitors))
	}
}

// scaleUpPeriods is how many periods an HPA with these rules takes from
// one replica count to another under a load that always wants more.
func scaleUpPeriods(r *autoscalingv2.HPAScalingRules, from, to int32) int {
	n := 0
	for cur := from; cur < to; n++ {
		var add int32
		for _, p := range r.Policies {
			step := p.Value
			if p.Type == autoscalingv2.PercentScalingPolicy {
				step = (cur*p.Value + 99) / 100
			}
			if step > add {
				add = step
			}
		}
		if add == 0 || n > 100 {
			return -1
		}
		cur = min(cur+add, to)
	}
	return n
}

// TestKEDA: with KEDA on, sender and rewrite are scaled by ScaledObjects on
// their JetStream consumers (READY/sender, COMPOSE/rewrite), not by an HPA.
func TestKEDA(t *testing.T) {
	m := render(t, renderOptions{values: []string{"keda"}})
	got := map[string]*ScaledObject{}
	for _, so := range m.scaledObjects {
		got[so.Spec.ScaleTargetRef.Name] = so
	}
	for _, s := range []string{"sender", "rewrite"} {
		d := m.deployment(t, s)
		so := got[d.Name]
		if so == nil {
			t.Fatalf("no ScaledObject for %s", s)
		}
		tr := so.Spec.Triggers[0]
		if tr.Type != "nats-jetstream" || tr.Metadata["stream"] != consumers[s][0] || tr.Metadata["consumer"] != consumers[s][1] ||
			tr.Metadata["natsServerMonitoringEndpoint"] != "nats-headless.nats.svc.cluster.local:8222" || tr.Metadata["account"] != "$G" {
			t.Errorf("%s: first trigger %+v", s, tr)
		}
		for _, h := range m.hpas {
			if h.Spec.ScaleTargetRef.Name == d.Name {
				t.Errorf("%s: an HPA besides the ScaledObject", s)
			}
		}
	}
	if so := got[m.deployment(t, "sender").Name]; so.Spec.Triggers[0].Metadata["lagThreshold"] != "200" || *so.Spec.MaxReplicaCount != 20 {
		t.Errorf("sender ScaledObject: lagThreshold %q, max %d; want 200, 20", so.Spec.Triggers[0].Metadata["lagThreshold"], *so.Spec.MaxReplicaCount)
	}
}

// TestInboundSMTPLoadBalancer: inbound SMTP on port 25 of a LoadBalancer,
// to ingest's container port 2525 (SMTP_ADDR), with STARTTLS files.
func TestInboundSMTPLoadBalancer(t *testing.T) {
	m := render(t, renderOptions{values: []string{"inbound-smtp-lb"}})
	svc := m.service(release + "-smtp")
	if svc == nil {
		t.Fatal("no inbound SMTP Service")
	}
	if svc.Spec.Type != corev1.ServiceTypeLoadBalancer || svc.Spec.ExternalTrafficPolicy != corev1.ServiceExternalTrafficPolicyLocal {
		t.Errorf("SMTP Service type %s, externalTrafficPolicy %q; want LoadBalancer, Local", svc.Spec.Type, svc.Spec.ExternalTrafficPolicy)
	}
	ingest := m.deployment(t, "ingest")
	if len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Port != 25 {
		t.Fatalf("SMTP Service ports %+v, want 25", svc.Spec.Ports)
	}
	if p := containerPort(ingest, svc.Spec.Ports[0].TargetPort); p == nil || p.ContainerPort != 2525 {
		t.Errorf("SMTP Service targets %v, want ingest's container port 2525", p)
	}
	c := ingest.Spec.Template.Spec.Containers[0]
	for name, want := range map[string]string{"SMTP_ADDR": ":2525", "SMTP_TLS_CERT_FILE": "/etc/chattermail/smtp-tls/tls.crt", "SMTP_TLS_KEY_FILE": "/etc/chattermail/smtp-tls/tls.key",
		"SMTP_HOSTNAME": "mx.example.com"} {
		if e, _ := env(c, name); e.Value != want {
			t.Errorf("ingest %s = %q, want %q", name, e.Value, want)
		}
	}
	// Without inbound SMTP: no Service, no port, no SMTP_ADDR.
	min := render(t, renderOptions{values: []string{"minimal"}})
	if min.service(release+"-smtp") != nil {
		t.Errorf("an inbound SMTP Service although inboundSMTP.enabled is false")
	}
	if _, ok := env(min.deployment(t, "ingest").Spec.Template.Spec.Containers[0], "SMTP_ADDR"); ok {
		t.Errorf("SMTP_ADDR set although inboundSMTP.enabled is false")
	}
}

// TestServiceMonitorNeedsTheAPI: the ServiceMonitor renders only where the
// cluster has monitoring.coreos.com/v1.
func TestServiceMonitorNeedsTheAPI(t *testing.T) {
	if m := render(t, renderOptions{values: []string{"minimal"}, noAPIVersions: true}); len(m.serviceMonitors) != 0 {
		t.Errorf("%d ServiceMonitors without the monitoring.coreos.com/v1 API, want 0", len(m.serviceMonitors))
	}
	if m := render(t, renderOptions{values: []string{"minimal"}}); len(m.serviceMonitors) != 1 {
		t.Errorf("%d ServiceMonitors with the monitoring.coreos.com/v1 API, want 1", len(m.serviceMonitors))
	}
}

// TestRefusals: values that would install something broken or unsafe
// fail with a message naming the value.
func TestRefusals(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    renderOptions
		want string
	}{
		{"misspelt value", renderOptions{values: []string{"minimal"}, set: []string{"sender.autoscalng.enabled=true"}}, "autoscalng"},
		{"misspelt tenant key", renderOptions{values: []string{"minimal"}, set: []string{"config.tenants.acme.dailylimit=5"}}, "dailylimit"},
		{"no tenants", renderOptions{set: []string{"redis.url=redis://r:6379/0", "allowDevelopmentKeys=true"}}, "config.tenants"},
		{"no redis", renderOptions{values: []string{"minimal"}, set: []string{"redis.url="}}, "redis.url"},
		{"development keys", renderOptions{values: []string{"minimal"}, set: []string{"secrets.replyTokenKeys.value="}}, "secrets.replyTokenKeys"},
		{"value and existing secret", renderOptions{values: []string{"minimal"}, set: []string{"secrets.unsubscribeKey.existingSecret=x"}}, "not both"},
		{"API keys of an unknown tenant", renderOptions{values: []string{"minimal"}, set: []string{"secrets.apiKeys.keys.nobody[0]=a-key-of-sixteen-chars"}}, "nobody"},
		{"min above max", renderOptions{values: []string{"minimal"}, set: []string{"sender.autoscaling.minReplicas=9"}}, "minReplicas"},
		{"stream replicas", renderOptions{values: []string{"minimal"}, set: []string{"nats.streamReplicas=0"}}, "streamReplicas"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := helmTemplate(t, tc.o)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("helm template %v: error %v, want one naming %q", tc.o.set, err, tc.want)
			}
		})
	}
}

// TestSchemaMatchesTenantsFile: values.schema.json describes the tenants
// file with exactly the keys platform/config accepts, so the schema and
// the services never disagree about a key.
func TestSchemaMatchesTenantsFile(t *testing.T) {
	keys := tenantsFileKeys(t)
	b, err := os.ReadFile(filepath.Join(root(t), "deploy", "helm", "chattermail", "values.schema.json"))
	if err != nil {
		t.Fatal(err)
	}
	type node struct {
		Properties map[string]json.RawMessage `json:"properties"`
		Items      *node                      `json:"items"`
		Defs       map[string]*node           `json:"$defs"`
	}
	var schema node
	if err := json.Unmarshal(b, &schema); err != nil {
		t.Fatal(err)
	}
	props := func(n *node) map[string]bool {
		out := map[string]bool{}
		for k := range n.Properties {
			out[k] = true
		}
		return out
	}
	sub := func(n *node, key string) *node {
		var s node
		if err := json.Unmarshal(n.Properties[key], &s); err != nil {
			t.Fatal(err)
		}
		return &s
	}
	tenant := schema.Defs["tenant"]
	for _, tc := range []struct {
		where  string
		node   *node
		goType string
	}{
		{"$defs.tenant", tenant, "Tenant"},
		{"$defs.tenant.servers[]", sub(tenant, "servers").Items, "Server"},
		{"$defs.tenant.dkim[]", sub(tenant, "dkim").Items, "DKIMKey"},
		{"$defs.tenant.pacing[]", sub(tenant, "pacing").Items, "Pacing"},
		{"config", sub(&schema, "config"), "Config"},
		{"config.pacing[]", sub(sub(&schema, "config"), "pacing").Items, "Pacing"},
	} {
		got, want := props(tc.node), keys[tc.goType]
		for k := range want {
			if !got[k] {
				t.Errorf("values.schema.json %s lacks %q, a key of platform/config's %s", tc.where, k, tc.goType)
			}
		}
		for k := range got {
			if !want[k] {
				t.Errorf("values.schema.json %s has %q, which platform/config's %s does not accept", tc.where, k, tc.goType)
			}
		}
	}
}

// TestSecretsFromValues: DKIM keys and SMTP passwords given as values land
// in the chart's Secrets, at the paths the tenants file names; a new DKIM
// key does not restart the senders (they reload keys by themselves), a new
// SMTP password restarts every service (each reads it at start-up).
func TestSecretsFromValues(t *testing.T) {
	set := []string{
		`secrets.dkim.keys.example\.com\.odoo\.pem=-----BEGIN PRIVATE KEY-----`,
		`secrets.smtp.passwords.acme-relay=s3cret`,
		`config.tenants.acme.dkim[0].domain=example.com`,
		`config.tenants.acme.dkim[0].key_file=/etc/chattermail/dkim/example.com.odoo.pem`,
		`config.tenants.acme.servers[0].name=relay`,
		`config.tenants.acme.servers[0].host=smtp.example.com`,
		`config.tenants.acme.servers[0].username=acme`,
		`config.tenants.acme.servers[0].password_file=/etc/chattermail/smtp/acme-relay`,
	}
	o := renderOptions{values: []string{"minimal"}, set: set}
	m := render(t, o)
	checkInvariants(t, m, tenantsFileKeys(t), valuesSecrets(t, "minimal"))
	if s := m.secret(release + "-dkim-keys"); s == nil || string(s.Data["example.com.odoo.pem"]) != "-----BEGIN PRIVATE KEY-----" {
		t.Errorf("DKIM Secret %+v", s)
	}
	newKey := render(t, renderOptions{values: o.values, set: append(slices.Clone(set), `secrets.dkim.keys.example\.com\.odoo\.pem=-----BEGIN PRIVATE KEY----- 2`)})
	newPassword := render(t, renderOptions{values: o.values, set: append(slices.Clone(set), `secrets.smtp.passwords.acme-relay=n3w`)})
	for _, s := range services {
		a := m.deployment(t, s).Spec.Template.Annotations["checksum/secrets"]
		if b := newKey.deployment(t, s).Spec.Template.Annotations["checksum/secrets"]; a != b {
			t.Errorf("%s: a new DKIM key changed checksum/secrets: the pods would restart for nothing", s)
		}
		if b := newPassword.deployment(t, s).Spec.Template.Annotations["checksum/secrets"]; a == b {
			t.Errorf("%s: a new SMTP password left checksum/secrets unchanged: the pods would keep the old one", s)
		}
	}
	// A tenants file naming a key the Secret lacks is caught.
	bad := render(t, renderOptions{values: o.values, set: append(slices.Clone(set), `config.tenants.acme.dkim[0].key_file=/etc/chattermail/dkim/other.pem`)})
	d := bad.deployment(t, "sender")
	if p := fileProblems(bad, d.Name, &d.Spec.Template.Spec, "/etc/chattermail/dkim/other.pem"); len(p) != 1 || !strings.Contains(p[0], "has no key") {
		t.Errorf("a key_file missing from the chart's DKIM Secret: problems %q, want one", p)
	}
}

func volumesOf(d *appsv1.Deployment) map[string]corev1.Volume {
	out := map[string]corev1.Volume{}
	for _, v := range d.Spec.Template.Spec.Volumes {
		out[v.Name] = v
	}
	return out
}

// TestExtraArgs: a service's args reach its container after the chart's
// own, and an argument the program does not define is caught.
func TestExtraArgs(t *testing.T) {
	m := render(t, renderOptions{values: []string{"minimal"}, set: []string{"sender.args={-ack-wait=2m}", "rewrite.args={-dns-timeout=2s}"}})
	if args := m.deployment(t, "rewrite").Spec.Template.Spec.Containers[0].Args; !slices.Equal(args, []string{"-workers=4", "-dns-timeout=2s"}) {
		t.Errorf("rewrite args %q, want -workers=4 -dns-timeout=2s", args)
	}
	for _, s := range []string{"sender", "rewrite"} {
		checkFlags(t, s, m.deployment(t, s).Spec.Template.Spec.Containers[0])
	}
	bad := render(t, renderOptions{values: []string{"minimal"}, set: []string{"sender.args={-ack-wat=2m}"}})
	if p := flagProblems(t, "sender", bad.deployment(t, "sender").Spec.Template.Spec.Containers[0]); len(p) != 1 {
		t.Errorf("misspelt flag -ack-wat: problems %q, want one", p)
	}
}
