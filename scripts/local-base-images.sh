#!/usr/bin/env bash
# Builds local stand-ins for the base images that docker/Dockerfile and
# docker/compose.yaml name, under the same names and tags, from Debian's
# packages (debootstrap bookworm + docker import).
#
# What it is for: the project's own CI machines have a Docker engine but no
# container registry, so `docker build` and `docker compose up` could not
# fetch a single image. You do NOT need this on your machine: your Docker
# pulls the real images. The stand-ins are as close as Debian gets:
#
#   rust:<RUST_VERSION>-slim-bookworm      bookworm + gcc + this machine's Rust toolchain
#   gcr.io/distroless/cc-debian12:nonroot  glibc, libgcc, libstdc++, libssl, CA certificates,
#                                          tzdata, user nonroot (65532), no shell, no package manager
#   redis:<tag>                            Debian's redis-server and redis-cli (7.0, not 7.4),
#                                          protected mode off as in the official image
#   prom/prometheus:<tag>                  Debian's prometheus (2.42, not 3.x) as /bin/prometheus,
#                                          run as nobody, with wget for the health check
#
# Cached: an image that already exists is left alone, so a second run takes
# seconds. `--force` rebuilds them all.
#
# Needs: root (debootstrap), debootstrap, docker; the Rust toolchain whose
# version the Dockerfile's RUST_VERSION names.
set -euo pipefail
cd "$(dirname "$0")/.."

force=false
[[ "${1:-}" == "--force" ]] && force=true

mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
suite=bookworm

# The names come from the files that use them, so they cannot drift apart.
rust_version=$(sed -n 's/^ARG RUST_VERSION=//p' docker/Dockerfile)
rust_image="rust:${rust_version}-slim-bookworm"
runtime_image=$(sed -n 's/^FROM \([^ ]*distroless[^ ]*\).*/\1/p' docker/Dockerfile)
redis_image=$(sed -n 's/^ *image: *\(redis:[^ ]*\)$/\1/p' docker/compose.yaml)
prometheus_image=$(sed -n 's/^ *image: *\(prom\/prometheus:[^ ]*\)$/\1/p' docker/compose.yaml)
for v in rust_version runtime_image redis_image prometheus_image; do
    [[ -n "${!v}" ]] || { echo "local-base-images: cannot find $v in docker/" >&2; exit 1; }
done

have() { ! $force && docker image inspect "$1" >/dev/null 2>&1; }

todo=()
for img in "$rust_image" "$runtime_image" "$redis_image" "$prometheus_image"; do
    if have "$img"; then echo "local-base-images: $img present"; else todo+=("$img"); fi
done
((${#todo[@]})) || exit 0

for tool in debootstrap docker; do
    command -v "$tool" >/dev/null || { echo "local-base-images: needs $tool (Debian: apt-get install -y $tool)" >&2; exit 1; }
done
[[ $(id -u) == 0 ]] || { echo "local-base-images: debootstrap needs root" >&2; exit 1; }

work=$(mktemp -d /var/tmp/mlmesh-base.XXXXXX)
trap 'rm -rf "$work"' EXIT

# One minimal bookworm root, imported once; every stand-in is built on it
# with apt-get inside `docker build` (which reaches Debian's mirror).
base=mlmesh-local/bookworm-minbase:latest
if ! docker image inspect "$base" >/dev/null 2>&1 || $force; then
    echo "local-base-images: debootstrap $suite (minbase) from $mirror"
    debootstrap --variant=minbase "$suite" "$work/root" "$mirror" >"$work/debootstrap.log" 2>&1 \
        || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
    rm -rf "$work/root/var/cache/apt/archives/"*.deb "$work/root/var/lib/apt/lists/"*
    tar -C "$work/root" -c . | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["bash"]' - "$base" >/dev/null
    rm -rf "$work/root"
fi

# build <image> <context dir>: the context holds a Dockerfile.
build() {
    echo "local-base-images: building $1"
    docker build --network host -q -t "$1" "$2" >/dev/null
}

apt_install='apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends'

for img in "${todo[@]}"; do
    ctx="$work/$(echo "$img" | tr '/:' '__')"
    mkdir -p "$ctx"
    case "$img" in
    "$rust_image")
        sysroot=$(rustc --print sysroot)
        have_version=$(rustc --version | awk '{print $2}')
        [[ "$have_version" == "$rust_version" || "$have_version" == "$rust_version".* ]] \
            || { echo "local-base-images: the Dockerfile wants Rust $rust_version, this machine has $have_version" >&2; exit 1; }
        # The toolchain without its docs (share/), as the official image ships it.
        mkdir -p "$ctx/rust"
        cp -a "$sysroot/bin" "$sysroot/lib" "$sysroot/libexec" "$ctx/rust/"
        # This machine's extra CA certificates (a TLS-inspecting egress proxy
        # sits between it and the crate registry): the build stage trusts
        # what the machine trusts, or `cargo install` cannot reach crates.io.
        mkdir -p "$ctx/ca"
        cp /usr/local/share/ca-certificates/*.crt "$ctx/ca/" 2>/dev/null || true
        cat >"$ctx/Dockerfile" <<EOF
FROM $base
RUN $apt_install ca-certificates gcc libc6-dev && rm -rf /var/lib/apt/lists/*
COPY ca/ /usr/local/share/ca-certificates/
RUN update-ca-certificates >/dev/null
COPY rust /usr/local/rust
ENV RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo RUST_VERSION=$have_version \\
    PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
RUN mkdir -p /usr/local/cargo/bin && cargo --version && rustc --version
EOF
        ;;
    "$runtime_image")
        # Stage 1 unpacks exactly the packages distroless cc-debian12 is made
        # of; stage 2 is that tree and nothing else (no shell, no apt, no dpkg).
        cat >"$ctx/Dockerfile" <<EOF
FROM $base AS unpack
RUN $apt_install ca-certificates
WORKDIR /pkgs
RUN apt-get download -qq libc6 libgcc-s1 libstdc++6 libgomp1 libssl3 tzdata netbase \\
 && mkdir /out && for d in *.deb; do dpkg-deb -x "\$d" /out; done \\
 && mkdir -p /out/etc/ssl/certs /out/tmp /out/home/nonroot /out/root /out/var/lib/dpkg/status.d \\
 && cp /etc/ssl/certs/ca-certificates.crt /out/etc/ssl/certs/ \\
 && cp /etc/os-release /out/etc/os-release \\
 && printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >/out/etc/passwd \\
 && printf 'root:x:0:\nnobody:x:65534:\ntty:x:5:\nstaff:x:50:\nnonroot:x:65532:\n' >/out/etc/group \\
 && printf 'passwd: files\ngroup: files\nhosts: files dns\n' >/out/etc/nsswitch.conf \\
 && chmod 1777 /out/tmp && chown 65532:65532 /out/home/nonroot && chmod 700 /out/root \\
 && find /out/usr/share/doc -type f ! -name copyright -delete \\
 && rm -rf /out/usr/share/man /out/usr/share/info /out/usr/share/lintian /out/usr/share/locale /out/usr/sbin /out/sbin \\
 && if find /out -name sh -o -name bash -o -name dash | grep -q .; then echo 'a shell slipped in' >&2; exit 1; fi
FROM scratch
COPY --from=unpack /out/ /
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
USER 65532
WORKDIR /home/nonroot
EOF
        ;;
    "$redis_image")
        # The official image turns protected mode off (nothing in a container
        # network is "loopback"); Debian's default would refuse the services.
        cat >"$ctx/Dockerfile" <<EOF
FROM $base
RUN $apt_install redis-server redis-tools && rm -rf /var/lib/apt/lists/* \\
 && printf '#!/bin/sh\nexec /usr/bin/redis-server "\$@" --protected-mode no\n' >/usr/local/bin/redis-server \\
 && chmod 755 /usr/local/bin/redis-server && mkdir -p /data && chown redis:redis /data
WORKDIR /data
EXPOSE 6379
CMD ["redis-server"]
EOF
        ;;
    "$prometheus_image")
        cat >"$ctx/Dockerfile" <<EOF
FROM $base
RUN $apt_install prometheus wget && rm -rf /var/lib/apt/lists/* \\
 && mkdir -p /prometheus /etc/prometheus && chown nobody:nogroup /prometheus \\
 && ln -sf /usr/bin/prometheus /bin/prometheus 2>/dev/null || true
USER nobody
WORKDIR /prometheus
EXPOSE 9090
ENTRYPOINT ["/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
EOF
        ;;
    esac
    build "$img" "$ctx"
    rm -rf "$ctx"
done
docker image ls --format '{{.Repository}}:{{.Tag}}  {{.Size}}' \
    | grep -E "^(${rust_image}|${runtime_image}|${redis_image}|${prometheus_image})  " || true
