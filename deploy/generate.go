// Package deploy holds Capstan's deployment manifests: kustomize, the Helm chart, the Grafana
// dashboard, Prometheus alert rules and the OpenTelemetry Collector example. Its tests check
// them; it has no code of its own.
package deploy

// The Helm chart and the kustomize component carry copies of the alert rules.
//go:generate go run ./prometheus/gen
