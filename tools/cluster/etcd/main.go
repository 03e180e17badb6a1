// Command etcd is etcd's own entry point, built from the pinned server module
// so the binary comes from go.sum-verified sources rather than a download.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
