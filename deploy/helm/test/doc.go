// Package test checks the Helm chart in deploy/helm/chattermail: it
// renders the chart with the helm binary that "make .bin/helm" builds
// (HELM, or .bin/helm at the repository root) over the values files of
// deploy/helm/values, decodes every manifest strictly into the Kubernetes
// API types (unknown or misspelt fields fail), and checks what must hold
// between the objects: selectors that find their Deployments, probes,
// resources and the restrictive securityContext on every container,
// secrets and mounts that exist, the config checksum, autoscaling.
//
// It is its own module so that k8s.io/api stays out of the services'
// modules. "make helm-check" (part of "make test") runs it.
package test
