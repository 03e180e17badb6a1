//go:build tools

// Package tools pins the cosign command built from this module; it is never compiled.
package tools

import _ "github.com/sigstore/cosign/v3/cmd/cosign"
