module tlsid.dev/interop

go 1.22
