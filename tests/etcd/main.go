// Command etcd is a thin wrapper around etcd's own server entry point, so the
// real etcd server can be built from Go modules (go.etcd.io/etcd/server/v3
// keeps replace directives, which `go install pkg@version` refuses).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
