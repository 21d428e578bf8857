package test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

// The release every test renders: "helm template chattermail ... -n chattermail".
const (
	release   = "chattermail"
	namespace = "chattermail"
)

// apiVersions are the optional operators' APIs the cluster is said to have,
// so the ServiceMonitor and the ScaledObjects render.
var apiVersions = []string{"monitoring.coreos.com/v1", "keda.sh/v1alpha1"}

// repoRoot is the repository's root: the nearest folder above the test
// holding go.work.
var repoRoot = sync.OnceValues(func() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.work")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.work above the test's folder")
		}
		dir = parent
	}
})

func root(t *testing.T) string {
	t.Helper()
	r, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// helmBinary is $HELM, else .bin/helm at the repository root. A missing
// helm fails the test: the chart must never go unchecked.
func helmBinary(t *testing.T) string {
	t.Helper()
	path := os.Getenv("HELM")
	if path == "" {
		path = filepath.Join(root(t), ".bin", "helm")
	}
	if fi, err := os.Stat(path); err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
		t.Fatalf("helm not found at %s: run `make .bin/helm` (make test and make helm-check build it first), or set HELM", path)
	}
	return path
}

// renderOptions are what one "helm template" gets.
type renderOptions struct {
	// values are files of deploy/helm/values, by base name ("minimal").
	values []string
	// set are --set arguments.
	set []string
	// noAPIVersions leaves out the optional operators' APIs.
	noAPIVersions bool
}

// helmTemplate runs helm template and returns its output, or its error
// with helm's message.
func helmTemplate(t *testing.T, o renderOptions) (string, error) {
	t.Helper()
	r := root(t)
	args := []string{"template", release, filepath.Join(r, "deploy", "helm", "chattermail"), "--namespace", namespace}
	for _, v := range o.values {
		args = append(args, "-f", valuesFile(r, v))
	}
	for _, s := range o.set {
		args = append(args, "--set", s)
	}
	if !o.noAPIVersions {
		for _, a := range apiVersions {
			args = append(args, "--api-versions", a)
		}
	}
	cmd := exec.Command(helmBinary(t), args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("helm %s: %v: %s", strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String(), nil
}

func valuesFile(root, name string) string {
	return filepath.Join(root, "deploy", "helm", "values", name+".yaml")
}

// manifests are the decoded objects of one rendering.
type manifests struct {
	deployments     []*appsv1.Deployment
	services        []*corev1.Service
	configMaps      []*corev1.ConfigMap
	secrets         []*corev1.Secret
	serviceAccounts []*corev1.ServiceAccount
	pdbs            []*policyv1.PodDisruptionBudget
	hpas            []*autoscalingv2.HorizontalPodAutoscaler
	networkPolicies []*networkingv1.NetworkPolicy
	ingresses       []*networkingv1.Ingress
	serviceMonitors []*monitoringv1.ServiceMonitor
	scaledObjects   []*ScaledObject
	pods            []*corev1.Pod // helm test hooks
}

// render runs helm template and decodes every manifest strictly; it fails
// the test on any error.
func render(t *testing.T, o renderOptions) *manifests {
	t.Helper()
	out, err := helmTemplate(t, o)
	if err != nil {
		t.Fatal(err)
	}
	m, err := decode(out)
	if err != nil {
		t.Fatalf("render %v %v: %v", o.values, o.set, err)
	}
	return m
}

// decode splits helm's output into documents and decodes each into its
// Kubernetes type: case-sensitive, with unknown and duplicate fields as
// errors (as the API server's strict field validation does). A kind the
// test does not know is an error too.
func decode(out string) (*manifests, error) {
	m := &manifests{}
	reader := utilyaml.NewYAMLReader(bufio.NewReader(strings.NewReader(out)))
	for {
		doc, err := reader.Read()
		if err == io.EOF {
			return m, nil
		}
		if err != nil {
			return nil, err
		}
		js, err := yaml.YAMLToJSONStrict(doc)
		if err != nil {
			return nil, fmt.Errorf("%w\n%s", err, doc)
		}
		if string(bytes.TrimSpace(js)) == "null" {
			continue // only comments
		}
		var tm metav1.TypeMeta
		if err := json.Unmarshal(js, &tm); err != nil {
			return nil, err
		}
		var obj any
		switch tm.APIVersion + " " + tm.Kind {
		case "apps/v1 Deployment":
			obj = appendNew(&m.deployments)
		case "v1 Service":
			obj = appendNew(&m.services)
		case "v1 ConfigMap":
			obj = appendNew(&m.configMaps)
		case "v1 Secret":
			obj = appendNew(&m.secrets)
		case "v1 Pod":
			obj = appendNew(&m.pods)
		case "v1 ServiceAccount":
			obj = appendNew(&m.serviceAccounts)
		case "policy/v1 PodDisruptionBudget":
			obj = appendNew(&m.pdbs)
		case "autoscaling/v2 HorizontalPodAutoscaler":
			obj = appendNew(&m.hpas)
		case "networking.k8s.io/v1 NetworkPolicy":
			obj = appendNew(&m.networkPolicies)
		case "networking.k8s.io/v1 Ingress":
			obj = appendNew(&m.ingresses)
		case "monitoring.coreos.com/v1 ServiceMonitor":
			obj = appendNew(&m.serviceMonitors)
		case "keda.sh/v1alpha1 ScaledObject":
			obj = appendNew(&m.scaledObjects)
		default:
			return nil, fmt.Errorf("unexpected kind %s %s (teach the test about it)", tm.APIVersion, tm.Kind)
		}
		strict, err := kjson.UnmarshalStrict(js, obj, kjson.DisallowDuplicateFields, kjson.DisallowUnknownFields)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", tm.Kind, err)
		}
		if len(strict) > 0 {
			return nil, fmt.Errorf("%s %s: %v", tm.Kind, name(js), errors.Join(strict...))
		}
	}
}

// appendNew appends a new zero object to *list and returns it.
func appendNew[T any](list *[]*T) *T {
	v := new(T)
	*list = append(*list, v)
	return v
}

func name(js []byte) string {
	var o struct {
		Metadata struct{ Name string } `json:"metadata"`
	}
	_ = json.Unmarshal(js, &o)
	return o.Metadata.Name
}

// deployment returns the Deployment of a service ("sender").
func (m *manifests) deployment(t *testing.T, service string) *appsv1.Deployment {
	t.Helper()
	for _, d := range m.deployments {
		if d.Spec.Template.Labels["app.kubernetes.io/component"] == service {
			return d
		}
	}
	t.Fatalf("no Deployment for %s", service)
	return nil
}

func (m *manifests) secret(name string) *corev1.Secret {
	for _, s := range m.secrets {
		if s.Name == name {
			return s
		}
	}
	return nil
}

func (m *manifests) configMap(name string) *corev1.ConfigMap {
	for _, c := range m.configMaps {
		if c.Name == name {
			return c
		}
	}
	return nil
}

// matching returns the Deployments whose pod labels the selector selects.
func (m *manifests) matching(t *testing.T, sel *metav1.LabelSelector) []*appsv1.Deployment {
	t.Helper()
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		t.Fatalf("selector %v: %v", sel, err)
	}
	if s.Empty() {
		t.Fatalf("empty selector %v selects everything", sel)
	}
	var out []*appsv1.Deployment
	for _, d := range m.deployments {
		if s.Matches(labels.Set(d.Spec.Template.Labels)) {
			out = append(out, d)
		}
	}
	return out
}

// matchingOne is matching when exactly one Deployment must match.
func (m *manifests) matchingOne(t *testing.T, what string, sel *metav1.LabelSelector) *appsv1.Deployment {
	t.Helper()
	ds := m.matching(t, sel)
	if len(ds) != 1 {
		var names []string
		for _, d := range ds {
			names = append(names, d.Name)
		}
		t.Fatalf("%s: selector %v matches %d Deployments %v, want exactly 1", what, sel.MatchLabels, len(ds), names)
	}
	return ds[0]
}

// valuesSecrets are the Secrets a values file names (existingSecret,
// tlsSecretName...): the chart uses them but does not make them.
func valuesSecrets(t *testing.T, files ...string) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	for _, f := range files {
		b, err := os.ReadFile(valuesFile(root(t), f))
		if err != nil {
			t.Fatal(err)
		}
		var v any
		if err := yaml.Unmarshal(b, &v); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		var walk func(any)
		walk = func(v any) {
			switch v := v.(type) {
			case map[string]any:
				for k, x := range v {
					if s, ok := x.(string); ok && s != "" && (k == "existingSecret" || strings.HasSuffix(k, "SecretName")) {
						out[s] = true
					}
					walk(x)
				}
			case []any:
				for _, x := range v {
					walk(x)
				}
			}
		}
		walk(v)
	}
	return out
}
