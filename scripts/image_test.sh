#!/usr/bin/env bash
# make image-test: build the image from ./Dockerfile with podman and smoke-test the container.
#
# No Docker engine and no image registry here, so the build uses a Debian bookworm stand-in base
# (debootstrap, cached in podman's storage) and the CPU torch wheel that lies on these machines
# (no CUDA download). The test then runs the container, waits until the image's own HEALTHCHECK
# says every worker is READY, sends a real face with curl -T and checks the 15 keypoints (and a photo with
# curl --data-binary and ?points=68, which only the frontend fix of handler/frontend/ answers), checks
# that the server runs as a non-root user, that the metrics port answers and that SIGTERM stops the
# container cleanly, and removes it.
#
# Without podman (and no way to install it) it skips with a reason; under CI=true that is a failure.
# Knobs: FACEKP_CACHE (default /var/cache/facekp), DEBIAN_MIRROR, IMAGE_TEST_TIMEOUT (s, default 240),
# IMAGE_TEST_NO_CACHE=1 (build every layer again instead of reusing podman's layer cache).
set -euo pipefail

cd "$(dirname "$0")/.."
REPO=$(pwd)
START=$SECONDS
CACHE=${FACEKP_CACHE:-/var/cache/facekp}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
READY_TIMEOUT=${IMAGE_TEST_TIMEOUT:-240}
IMAGE=localhost/facekp:image-test
NAME=facekp-image-test-$$
BASE_PACKAGES=python3,python3-venv,python3-pip,openjdk-17-jre-headless,ca-certificates,curl,passwd
TOOLS=(podman buildah runc debootstrap curl)
PASSED=0

say() { printf '[image-test %3ds] %s\n' $((SECONDS - START)) "$*"; }
fail() { say "FAIL: $*"; echo "image-test: $PASSED passed, 1 failed"; exit 1; }
ok() { PASSED=$((PASSED + 1)); say "ok: $*"; }
skip() {
    if [ "${CI:-}" = "true" ]; then fail "cannot run under CI: $*"; fi
    say "SKIPPED: $*"
    exit 0
}

# --- tools ------------------------------------------------------------------------------------
missing=()
for tool in "${TOOLS[@]}"; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        skip "missing ${missing[*]} and cannot install them (needs root and apt-get)"
    fi
    say "installing podman buildah runc debootstrap curl (missing: ${missing[*]})"
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            podman buildah runc debootstrap curl ca-certificates >/dev/null; }; then
        skip "apt-get could not install podman and friends"
    fi
fi
if [ "$(id -u)" != 0 ]; then
    skip "the debootstrap base needs root (run as root, or in CI)"
fi

# Containers here run only with runc and explicit ulimits.
mkdir -p "$CACHE"
export CONTAINERS_CONF="$CACHE/containers.conf"
cat >"$CONTAINERS_CONF" <<'EOF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
events_logger = "file"
EOF
podman info >/dev/null 2>&1 || skip "podman is installed but does not work here: $(podman info 2>&1 | tail -1)"

# --- stand-in base image: debootstrap bookworm + this host's CA bundle, cached in podman's storage
# The tag carries a hash of the package list and the CA bundle, so a change of either rebuilds it.
host_ca=/etc/ssl/certs/ca-certificates.crt
BASE_RECIPE=2  # bump when the steps below change, so cached bases are rebuilt
base_key=$( { echo "$BASE_RECIPE $BASE_PACKAGES $MIRROR"; cat "$host_ca" 2>/dev/null || true; } | sha256sum | cut -c1-12)
BASE=localhost/facekp-base:bookworm-$base_key
if podman image exists "$BASE"; then
    say "base image $BASE is cached"
else
    say "building base image $BASE with debootstrap (1.5-3 min, once)"
    rootfs=$(mktemp -d /var/tmp/facekp-rootfs.XXXXXX)
    if ! debootstrap --variant=minbase --include="$BASE_PACKAGES" bookworm "$rootfs" "$MIRROR" \
            >"$CACHE/debootstrap.log" 2>&1; then
        tail -20 "$CACHE/debootstrap.log"
        rm -rf --one-file-system "$rootfs"
        fail "debootstrap failed (log: $CACHE/debootstrap.log)"
    fi
    # pip in the build must trust the same CAs as this host (it may sit behind a TLS-inspecting proxy).
    [ -f "$host_ca" ] && cp "$host_ca" "$rootfs/etc/ssl/certs/ca-certificates.crt"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/tmp/* "$rootfs"/var/tmp/*
    tar -C "$rootfs" -c . | podman import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["/bin/bash"]' - "$BASE" >"$CACHE/import.log" 2>&1 || fail "podman import failed: $(tail -3 "$CACHE/import.log")"
    rm -rf --one-file-system "$rootfs"
    # Older stand-ins (another CA bundle or recipe) go, unless an image still builds on them.
    for old in $(podman images --format '{{.Repository}}:{{.Tag}}' localhost/facekp-base); do
        [ "$old" = "$BASE" ] || podman rmi "$old" >/dev/null 2>&1 || true
    done
    say "base image $BASE built"
fi

# --- a real face and the local CPU torch wheel ----------------------------------------------------
FACE=samples/astronaut_face.png  # committed, public domain: the test needs no data set
[ -f "$FACE" ] || fail "$FACE is missing from the checkout"
torch_pin=$(sed -n 's/^torch==\([^ ;#]*\).*/\1/p' requirements.txt)
[ -n "$torch_pin" ] || fail "requirements.txt pins no torch version"
wheels="$CACHE/wheels"
mkdir -p "$wheels"
if ! ls "$wheels"/torch-"$torch_pin"+cpu-*.whl >/dev/null 2>&1; then
    pip_cmd=(python3 -m pip)
    [ -x .venv/bin/pip ] && pip_cmd=(.venv/bin/pip)
    say "fetching the CPU torch $torch_pin wheel: ${pip_cmd[*]} download (found locally on these machines)"
    "${pip_cmd[@]}" download --quiet --no-deps -d "$wheels" "torch==$torch_pin" >"$CACHE/pip-download.log" 2>&1 ||
        fail "pip download torch failed: $(tail -3 "$CACHE/pip-download.log")"
    ls "$wheels"/torch-"$torch_pin"+cpu-*.whl >/dev/null 2>&1 ||
        fail "no CPU wheel of torch $torch_pin here (got: $(ls "$wheels")); a CUDA build is too large for this test"
fi
wheel=$(find "$wheels" -maxdepth 1 -name "torch-$torch_pin+cpu-*.whl" | head -1)
say "torch wheel: ${wheel##*/}"

# --- build ------------------------------------------------------------------------------------
say "podman build -f Dockerfile (BASE_IMAGE=$BASE, PIP_FIND_LINKS=/wheels)"
previous=$(podman image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
cache=(--layers)
[ "${IMAGE_TEST_NO_CACHE:-}" = 1 ] && cache=(--no-cache)
if ! podman build --format docker "${cache[@]}" -f Dockerfile -t "$IMAGE" \
        --build-arg BASE_IMAGE="$BASE" --build-arg PIP_FIND_LINKS=/wheels --build-arg TORCH_INDEX_URL= \
        -v "$wheels:/wheels:ro" . >"$CACHE/build.log" 2>&1; then
    tail -40 "$CACHE/build.log"
    fail "podman build failed (log: $CACHE/build.log)"
fi
# Drop the image this one replaces (and its layers that nothing else uses), so runs do not pile up images.
current=$(podman image inspect --format '{{.Id}}' "$IMAGE")
if [ -n "$previous" ] && [ "$previous" != "$current" ]; then podman rmi "$previous" >/dev/null 2>&1 || true; fi
ok "image $IMAGE built from Dockerfile ($(podman image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}'))"
[ "$(podman image inspect --format '{{.Config.User}}' "$IMAGE")" != "" ] || fail "the image sets no USER"
grep -q healthcheck.py <<<"$(podman image inspect --format '{{.Config.Healthcheck}}' "$IMAGE")" ||
    fail "the image has no HEALTHCHECK running healthcheck.py (is it built with --format docker?)"

# --- run --------------------------------------------------------------------------------------
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PORT=$(free_port)
METRICS_PORT=$(free_port)
cleanup() { podman rm -f -v -t 0 "$NAME" >/dev/null 2>&1 || true; }
trap cleanup EXIT
# As k8s/base runs it: read-only root filesystem with /tmp and the home folder (logs) writable, no
# capabilities. The home folder is an anonymous volume: it keeps the image's ownership (podman 4.3
# ignores a tmpfs mode). The image's HEALTHCHECK is run on demand below: podman's timer needs systemd.
podman run -d --name "$NAME" -p "127.0.0.1:$PORT:8080" -p "127.0.0.1:$METRICS_PORT:8082" \
    --read-only --tmpfs /tmp:rw,mode=1777 -v /home/model-server \
    --cap-drop ALL --security-opt no-new-privileges --health-interval disable "$IMAGE" >/dev/null 2>"$CACHE/run.log" ||
    fail "podman run failed: $(cat "$CACHE/run.log")"
say "container $NAME runs (read-only root); inference on 127.0.0.1:$PORT, metrics on 127.0.0.1:$METRICS_PORT"

container_logs() { podman logs --tail "${1:-40}" "$NAME" 2>&1 | sed 's/^/    | /'; }
deadline=$((SECONDS + READY_TIMEOUT))
until podman healthcheck run "$NAME" >/dev/null 2>&1; do
    state=$(podman inspect --format '{{.State.Status}}' "$NAME" 2>/dev/null || echo gone)
    if [ "$state" != running ]; then container_logs 60; fail "the container stopped ($state) before it was ready"; fi
    if [ $SECONDS -ge $deadline ]; then
        container_logs 60
        podman exec "$NAME" python3 /opt/facekp/healthcheck.py || true
        fail "no READY worker after ${READY_TIMEOUT} s"
    fi
    sleep 2
done
ok "HEALTHCHECK passes: every worker READY ($(podman exec "$NAME" python3 /opt/facekp/healthcheck.py 2>&1))"

# --- a real face, 15 keypoints ------------------------------------------------------------------
reply=$(curl -sS --fail-with-body --max-time 60 -T "$FACE" "http://127.0.0.1:$PORT/predictions/keypoints") ||
    { echo "$reply"; container_logs; fail "curl -T $FACE failed"; }
python3 - "$reply" "$REPO/facekp/contract.py" <<'EOF' || { container_logs; fail "the reply is not 15 keypoints"; }
"""The reply names the 15 keypoints of facekp.contract, in order, each with finite x and y."""
import ast
import json
import math
import sys

reply = json.loads(sys.argv[1])
tree = ast.parse(open(sys.argv[2]).read())
names = next(ast.literal_eval(node.value) for node in ast.walk(tree)
             if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "KEYPOINT_NAMES")
points = reply["keypoints"]
assert [p["name"] for p in points] == list(names), [p.get("name") for p in points]
assert all(math.isfinite(float(p["x"])) and math.isfinite(float(p["y"])) for p in points), points
print(f"    {len(points)} keypoints, e.g. {points[0]['name']} at ({points[0]['x']:.1f}, {points[0]['y']:.1f});"
      f" image {reply.get('image')}")
EOF
ok "curl -T $FACE answers with ${#reply} bytes of JSON: 15 keypoints in contract order"

# --- the photo path: the whole portrait, one face -------------------------------------------------
PHOTO=samples/astronaut.png
reply=$(curl -sS --fail-with-body --max-time 60 -T "$PHOTO" "http://127.0.0.1:$PORT/predictions/faces") ||
    { echo "$reply"; container_logs; fail "curl -T $PHOTO to /predictions/faces failed"; }
python3 - "$reply" <<'EOF' || { container_logs; fail "the faces reply is not one face with 15 keypoints"; }
import json
import sys

reply = json.loads(sys.argv[1])
(face,) = reply["faces"]
assert len(face["keypoints"]) == 15 and face["score"] > 0.9, face
assert reply["image"] == {"width": 512, "height": 512}, reply["image"]
print(f"    1 face at {face['box']}, score {face['score']}")
EOF
ok "curl -T $PHOTO to /predictions/faces answers one face with 15 keypoints"

# --- the frontend fix: curl --data-binary's form content type, and ?points=68 -------------------------
reply=$(curl -sS --fail-with-body --max-time 60 --data-binary "@$PHOTO" \
    "http://127.0.0.1:$PORT/predictions/faces?points=68") ||
    { echo "$reply"; container_logs; fail "curl --data-binary @$PHOTO to /predictions/faces?points=68 failed"; }
python3 - "$reply" <<'EOF' || { container_logs; fail "the --data-binary reply is not one face with 68 points"; }
import json
import sys

(face,) = json.loads(sys.argv[1])["faces"]
assert len(face["keypoints"]) == 68, len(face["keypoints"])
EOF
ok "curl --data-binary @$PHOTO to /predictions/faces?points=68 answers one face with 68 points"

# --- non-root ------------------------------------------------------------------------------------
procs=$(podman top "$NAME" user pid args)
echo "$procs" | sed 's/^/    | /' | cut -c1-150
grep -q 'org.pytorch.serve.ModelServer' <<<"$procs" || fail "no TorchServe frontend among the container's processes"
grep -q 'model_service_worker' <<<"$procs" || fail "no model worker among the container's processes"
users=$(awk 'NR > 1 {print $1}' <<<"$procs" | sort -u)
if grep -qx -e root -e 0 <<<"$users"; then fail "a process in the container runs as root"; fi
ok "every process in the container runs as $(paste -sd, <<<"$users") (non-root)"

podman exec "$NAME" test -s /home/model-server/logs/ts_log.log ||
    fail "no /home/model-server/logs/ts_log.log: TorchServe cannot write its logs under the read-only root"
ok "TorchServe writes its logs to /home/model-server/logs with a read-only root filesystem"

# A CPU serves the int8 twins of the model file (runtime: onnx-int8): their absence would only warn and fall back
for model in keypoints faces; do
    podman exec "$NAME" grep -q "$model: keypoint model 2 views, onnx-int8 on ONNX Runtime's CPU" \
        /home/model-server/logs/model_log.log || { container_logs; fail "the $model workers do not serve int8"; }
done
ok "both models' workers serve the int8 ONNX twins (runtime onnx-int8)"

# The warm-up beside TorchServe (facekp/warm_up.py) said it is done: its line is in the container's output
for _ in $(seq 30); do podman logs "$NAME" 2>&1 | grep -q "warmed up: " && break; sleep 1; done
warmed=$(podman logs "$NAME" 2>&1 | grep -m1 "warmed up: ") || { container_logs; fail "the warm-up never said it was done"; }
ok "the request path was warmed up ($warmed)"

# --- metrics port ------------------------------------------------------------------------------
metrics=$(curl -sS --fail --max-time 10 "http://127.0.0.1:$METRICS_PORT/metrics") || fail "the metrics port does not answer"
grep -q '^ts_inference_requests_total' <<<"$metrics" || fail "no ts_inference_requests_total on the metrics port"
ok "the metrics port answers Prometheus text (ts_inference_requests_total)"

# --- SIGTERM stops it cleanly --------------------------------------------------------------------
stop_start=$SECONDS
podman stop -t 30 "$NAME" >/dev/null 2>>"$CACHE/run.log"
stopped_in=$((SECONDS - stop_start))
code=$(podman inspect --format '{{.State.ExitCode}}' "$NAME")
[ "$code" = 0 ] || { container_logs 20; fail "exit code $code after SIGTERM (expected 0)"; }
[ "$stopped_in" -lt 30 ] || fail "SIGTERM took ${stopped_in} s: podman had to kill it"
ok "SIGTERM stopped the container in ${stopped_in} s with exit code 0"

cleanup
trap - EXIT
say "container removed; total $((SECONDS - START)) s"
echo "image-test: $PASSED passed, 0 failed"
