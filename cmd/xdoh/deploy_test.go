package main

import (
	"bytes"
	"errors"
	"io"
	"net/netip"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"xdoh/cmd/xdoh/internal/config"
)

// daemonSetFile is the Kubernetes example.
const daemonSetFile = "../../deploy/kubernetes/xdoh-daemonset.yaml"

// The parts of Kubernetes objects the example uses. Decoding is strict
// (KnownFields), so a field the example gains must be added here, spelled
// as the Kubernetes API spells it: a misspelt one fails the test instead of
// being ignored by the test and by the API server alike.
type (
	k8sObject struct {
		APIVersion string            `yaml:"apiVersion"`
		Kind       string            `yaml:"kind"`
		Metadata   k8sMeta           `yaml:"metadata"`
		Data       map[string]string `yaml:"data"` // ConfigMap
		Spec       *k8sDaemonSetSpec `yaml:"spec"` // DaemonSet
	}
	k8sMeta struct {
		Name      string            `yaml:"name"`
		Namespace string            `yaml:"namespace"`
		Labels    map[string]string `yaml:"labels"`
	}
	k8sDaemonSetSpec struct {
		Selector struct {
			MatchLabels map[string]string `yaml:"matchLabels"`
		} `yaml:"selector"`
		UpdateStrategy struct {
			Type          string `yaml:"type"`
			RollingUpdate struct {
				MaxUnavailable int `yaml:"maxUnavailable"`
			} `yaml:"rollingUpdate"`
		} `yaml:"updateStrategy"`
		Template struct {
			Metadata k8sMeta    `yaml:"metadata"`
			Spec     k8sPodSpec `yaml:"spec"`
		} `yaml:"template"`
	}
	k8sPodSpec struct {
		HostNetwork                   bool   `yaml:"hostNetwork"`
		DNSPolicy                     string `yaml:"dnsPolicy"`
		TerminationGracePeriodSeconds int    `yaml:"terminationGracePeriodSeconds"`
		Tolerations                   []struct {
			Operator string `yaml:"operator"`
		} `yaml:"tolerations"`
		SecurityContext struct {
			RunAsNonRoot   *bool `yaml:"runAsNonRoot"`
			RunAsUser      int   `yaml:"runAsUser"`
			RunAsGroup     int   `yaml:"runAsGroup"`
			SeccompProfile struct {
				Type string `yaml:"type"`
			} `yaml:"seccompProfile"`
		} `yaml:"securityContext"`
		Containers []k8sContainer `yaml:"containers"`
		Volumes    []struct {
			Name      string `yaml:"name"`
			ConfigMap struct {
				Name string `yaml:"name"`
			} `yaml:"configMap"`
		} `yaml:"volumes"`
	}
	k8sContainer struct {
		Name  string   `yaml:"name"`
		Image string   `yaml:"image"`
		Args  []string `yaml:"args"`
		Ports []struct {
			Name          string `yaml:"name"`
			ContainerPort int    `yaml:"containerPort"`
			Protocol      string `yaml:"protocol"`
		} `yaml:"ports"`
		SecurityContext struct {
			RunAsNonRoot             *bool `yaml:"runAsNonRoot"`
			ReadOnlyRootFilesystem   bool  `yaml:"readOnlyRootFilesystem"`
			AllowPrivilegeEscalation *bool `yaml:"allowPrivilegeEscalation"`
			Capabilities             struct {
				Add  []string `yaml:"add"`
				Drop []string `yaml:"drop"`
			} `yaml:"capabilities"`
		} `yaml:"securityContext"`
		ReadinessProbe k8sProbe `yaml:"readinessProbe"`
		LivenessProbe  k8sProbe `yaml:"livenessProbe"`
		Resources      struct {
			Requests map[string]string `yaml:"requests"`
			Limits   map[string]string `yaml:"limits"`
		} `yaml:"resources"`
		VolumeMounts []struct {
			Name      string `yaml:"name"`
			MountPath string `yaml:"mountPath"`
			ReadOnly  bool   `yaml:"readOnly"`
		} `yaml:"volumeMounts"`
	}
	k8sProbe struct {
		HTTPGet *struct {
			Path string    `yaml:"path"`
			Port yaml.Node `yaml:"port"` // a number or a port name
		} `yaml:"httpGet"`
		InitialDelaySeconds int `yaml:"initialDelaySeconds"`
		PeriodSeconds       int `yaml:"periodSeconds"`
		FailureThreshold    int `yaml:"failureThreshold"`
	}
)

// TestKubernetesDaemonSet: the DaemonSet example runs xdoh on the host
// network with its config from the ConfigMap, as a non-root user with
// NET_BIND_SERVICE, probes /readyz and /healthz on the metrics port that
// config sets, and the config passes `xdoh check` (its validation and the
// self-resolution check, with a resolv.conf naming the node's loopback:
// the config must be safe even where xdoh is the node's resolver).
func TestKubernetesDaemonSet(t *testing.T) {
	b, err := os.ReadFile(daemonSetFile)
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	var objs []k8sObject
	for {
		var o k8sObject
		if err := dec.Decode(&o); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("%s: document %d: %v", daemonSetFile, len(objs)+1, err)
		}
		objs = append(objs, o)
	}
	var ds, cm *k8sObject
	for i, o := range objs {
		switch o.Kind {
		case "DaemonSet":
			ds = &objs[i]
			if o.APIVersion != "apps/v1" || o.Spec == nil {
				t.Fatalf("DaemonSet: apiVersion %q, spec %v", o.APIVersion, o.Spec)
			}
		case "ConfigMap":
			cm = &objs[i]
		case "Namespace":
		default:
			t.Errorf("unexpected kind %q", o.Kind)
		}
	}
	if ds == nil || cm == nil {
		t.Fatalf("want a DaemonSet and a ConfigMap, have %d objects", len(objs))
	}
	if ds.Metadata.Namespace != cm.Metadata.Namespace {
		t.Errorf("DaemonSet in namespace %q, ConfigMap in %q", ds.Metadata.Namespace, cm.Metadata.Namespace)
	}
	pod := ds.Spec.Template.Spec
	for k, v := range ds.Spec.Selector.MatchLabels {
		if ds.Spec.Template.Metadata.Labels[k] != v {
			t.Errorf("selector %s=%s does not match the pod template's labels %v", k, v, ds.Spec.Template.Metadata.Labels)
		}
	}
	if len(ds.Spec.Selector.MatchLabels) == 0 {
		t.Error("no selector")
	}
	if !pod.HostNetwork {
		t.Error("hostNetwork is not true")
	}
	if pod.DNSPolicy != "ClusterFirstWithHostNet" {
		t.Errorf("dnsPolicy %q: with hostNetwork the pod would use the node's resolv.conf, which may name xdoh itself", pod.DNSPolicy)
	}
	if len(pod.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(pod.Containers))
	}
	c := pod.Containers[0]
	nonRoot := c.SecurityContext.RunAsNonRoot
	if nonRoot == nil {
		nonRoot = pod.SecurityContext.RunAsNonRoot
	}
	if nonRoot == nil || !*nonRoot || pod.SecurityContext.RunAsUser == 0 {
		t.Errorf("runAsNonRoot %v, runAsUser %d: want a non-root user", nonRoot, pod.SecurityContext.RunAsUser)
	}
	if caps := c.SecurityContext.Capabilities; !slices.Equal(caps.Drop, []string{"ALL"}) || !slices.Equal(caps.Add, []string{"NET_BIND_SERVICE"}) {
		t.Errorf("capabilities drop %v add %v, want ALL and NET_BIND_SERVICE (XDP's only in a commented variant)", caps.Drop, caps.Add)
	}
	if len(c.Resources.Requests) == 0 || c.Resources.Limits["memory"] == "" {
		t.Errorf("resources %+v: want requests and a memory limit", c.Resources)
	}

	// The config: where the container reads it, from the ConfigMap volume.
	i := slices.Index(c.Args, "-c")
	if i < 0 || i+1 >= len(c.Args) || c.Args[0] != "run" {
		t.Fatalf("args %q: want run -c FILE", c.Args)
	}
	cfgPath := c.Args[i+1]
	mounted := false
	for _, m := range c.VolumeMounts {
		for _, v := range pod.Volumes {
			if v.Name == m.Name && v.ConfigMap.Name == cm.Metadata.Name && m.MountPath == path.Dir(cfgPath) && m.ReadOnly {
				mounted = true
			}
		}
	}
	text, ok := cm.Data[path.Base(cfgPath)]
	if !mounted || !ok {
		t.Fatalf("%s is not key %s of ConfigMap %s mounted read-only at %s", cfgPath, path.Base(cfgPath), cm.Metadata.Name, path.Dir(cfgPath))
	}
	dir := t.TempDir()
	file := filepath.Join(dir, "xdoh.yaml")
	if err := os.WriteFile(file, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	resolv := filepath.Join(dir, "resolv.conf")
	if err := os.WriteFile(resolv, []byte("nameserver 127.0.0.1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := cmdCheck([]string{"-c", file, "-resolv-conf", resolv}, &out); err != nil {
		t.Fatalf("xdoh check of the ConfigMap's config: %v", err)
	}
	cfg, err := config.Load(file)
	if err != nil {
		t.Fatal(err)
	}

	// The probes go to the metrics port of that config, on the pod's
	// address (the node's): the metrics listener must not be loopback.
	metrics, err := netip.ParseAddrPort(cfg.Metrics.Address)
	if err != nil {
		t.Fatalf("metrics.address %q: %v", cfg.Metrics.Address, err)
	}
	if metrics.Addr().IsLoopback() {
		t.Errorf("metrics.address %s: the kubelet cannot probe loopback", metrics)
	}
	portOf := func(n yaml.Node) int {
		var num int
		if n.Decode(&num) == nil {
			return num
		}
		for _, p := range c.Ports {
			if p.Name == n.Value {
				return p.ContainerPort
			}
		}
		return -1
	}
	for _, p := range []struct {
		name, path string
		probe      k8sProbe
	}{{"readinessProbe", "/readyz", c.ReadinessProbe}, {"livenessProbe", "/healthz", c.LivenessProbe}} {
		if p.probe.HTTPGet == nil {
			t.Errorf("%s: no httpGet", p.name)
			continue
		}
		if got := p.probe.HTTPGet.Path; got != p.path {
			t.Errorf("%s path %q, want %q", p.name, got, p.path)
		}
		if got := portOf(p.probe.HTTPGet.Port); got != int(metrics.Port()) {
			t.Errorf("%s port %q is %d, want metrics.address's %d", p.name, p.probe.HTTPGet.Port.Value, got, metrics.Port())
		}
	}
	// Port 53 is what NET_BIND_SERVICE is for, and the ports the
	// container declares are the listeners'.
	declared := map[string]bool{}
	for _, p := range c.Ports {
		declared[p.Protocol+"/"+strconv.Itoa(p.ContainerPort)] = true
	}
	for _, l := range cfg.Listeners {
		for _, a := range l.Do53 {
			ap := netip.MustParseAddrPort(a) // validated
			for _, proto := range []string{"UDP", "TCP"} {
				if !declared[proto+"/"+strconv.Itoa(int(ap.Port()))] {
					t.Errorf("listener %s %s: the container declares no %s port %d", l.Name, a, proto, ap.Port())
				}
			}
		}
	}
	if !strings.Contains(out.String(), "OK") {
		t.Errorf("xdoh check said %q", out.String())
	}
}
