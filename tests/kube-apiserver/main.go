// Command kube-apiserver is a thin wrapper around the upstream kube-apiserver
// command (a copy of k8s.io/kubernetes/cmd/kube-apiserver/apiserver.go), so the
// real apiserver can be built from Go modules: k8s.io/kubernetes replaces its
// staging modules with local paths, which `go install pkg@version` refuses;
// go.mod here replaces them with the matching v0.X.Y tags instead.
package main

import (
	"os"
	_ "time/tzdata" // for timeZone support in CronJob

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"          // for JSON log format registration
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // load all the prometheus client-go plugins
	_ "k8s.io/component-base/metrics/prometheus/version"  // for version metric registration
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

func main() {
	command := app.NewAPIServerCommand()
	code := cli.Run(command)
	os.Exit(code)
}
