//go:build tools

// Package tools pins the helm 3 command this module builds for the arrayjob test
// environment. It is never compiled; the build tag only keeps the import visible to
// `go mod tidy`.
package tools

import (
	_ "helm.sh/helm/v3/cmd/helm"
)
