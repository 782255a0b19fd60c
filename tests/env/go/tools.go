//go:build tools

// Package tools pins the control-plane commands this module builds for the
// arrayjob test environment. It is never compiled; the build tag only keeps
// the imports visible to `go mod tidy`.
package tools

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
)
