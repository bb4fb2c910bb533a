# Static binaries only: nodenet talks to the kernel through netlink (links, routes, nftables), so the
# image needs no userland. Build the binaries first with `make build`.
FROM scratch
COPY bin/nodenet bin/nodenet-cni /
ENTRYPOINT ["/nodenet"]
