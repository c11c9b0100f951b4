// A test helper for the single-node cluster (hack/cluster.sh up --node):
// standard library only, built static by hack/image.sh nettest.
module tlsid.invalid/hack/node/nettest

go 1.24
