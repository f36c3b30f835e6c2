// CoreDNS with only the plugins the test cluster's DNS needs, built from the Go module proxy.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"
	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/ready"
)

func init() {
	// the plugins compiled in, in the order a query passes through them
	dnsserver.Directives = []string{"bind", "errors", "health", "ready", "kubernetes", "cache"}
}

func main() {
	coremain.Run()
}
