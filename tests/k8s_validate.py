"""Checks of Ferry's deployment artefacts that need no cluster; run by tests/k8s-validate.sh.

  manifests OUT K8S_VERSION RENDERED...  schema-check every rendered object (strict), check
                                         that the kustomizations list every file, that the
                                         objects agree with each other, and write each
                                         ConfigMap's ferry.toml and the DaemonSet's
                                         node-config arguments to OUT
  dashboard DASHBOARD [METRICS_FILE]     parse the Grafana dashboard; every metric it
                                         queries must be one Ferry exposes
"""

import ipaddress
import json
import re
import sys
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import kubernetes_validate
import yaml

MANIFESTS = Path("docker/kubernetes")
FERRY_IMAGE = re.compile(r"(^|/)ferry(:|@|$)")

failures = []


def fail(message):
    failures.append(message)
    print(f"k8s-validate: {message}", file=sys.stderr)


def load_all(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def listed_files(kustomization_dir):
    """Every file a kustomization names (resources that are files, patches)."""
    k = load_all(kustomization_dir / "kustomization.yaml")[0]
    names = [r for r in k.get("resources", []) if not (kustomization_dir / r).is_dir()]
    names += [p["path"] for p in k.get("patches", []) if "path" in p]
    for c in k.get("components", []):
        if not (kustomization_dir / c).is_dir():
            fail(f"{kustomization_dir}: component {c} is not a directory")
    return names


def check_listing():
    for d in [MANIFESTS] + [p for p in MANIFESTS.iterdir() if p.is_dir()]:
        if not (d / "kustomization.yaml").exists():
            fail(f"{d}: no kustomization.yaml")
            continue
        listed = listed_files(d)
        for name in listed:
            if not (d / name).is_file():
                fail(f"{d}/kustomization.yaml lists {name}, which does not exist")
        for f in sorted(d.iterdir()):
            if f.is_file() and f.name != "kustomization.yaml" and f.name not in listed:
                fail(f"{f} is not listed in {d}/kustomization.yaml, so it is never applied")


def pod_specs(objects):
    for o in objects:
        if o["kind"] in ("Deployment", "DaemonSet", "StatefulSet"):
            yield o, o["spec"]["template"]["spec"]


def containers(spec):
    return spec.get("initContainers", []) + spec.get("containers", [])


def check_rendered(name, objects, version, out):
    by_kind = {}
    for o in objects:
        try:
            kubernetes_validate.validate(o, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:  # a typo is not a pass
            fail(f"{name}: {o.get('apiVersion')} {o.get('kind')} is not a Kubernetes {version} kind")
        except Exception as e:
            fail(f"{name}: {o.get('kind')}/{o.get('metadata', {}).get('name')}: {e}")
        by_kind.setdefault(o["kind"], {})[o["metadata"]["name"]] = o
        if o["kind"] != "Namespace" and o["metadata"].get("namespace") != "ferry":
            fail(f"{name}: {o['kind']}/{o['metadata']['name']} is not in namespace ferry")

    def named(kind, n):
        return n in by_kind.get(kind, {})

    # Names one object uses for another must exist.
    for o, spec in pod_specs(objects):
        where = f"{name}: {o['kind']}/{o['metadata']['name']}"
        for v in spec.get("volumes", []):
            if "configMap" in v and not named("ConfigMap", v["configMap"]["name"]):
                fail(f"{where}: volume {v['name']} names a missing ConfigMap")
            if "secret" in v and not named("Secret", v["secret"]["secretName"]):
                fail(f"{where}: volume {v['name']} names a missing Secret")
            pvc = v.get("persistentVolumeClaim")
            if pvc and not named("PersistentVolumeClaim", pvc["claimName"]):
                fail(f"{where}: volume {v['name']} names a missing PersistentVolumeClaim")
        sa = spec.get("serviceAccountName")
        if sa and not named("ServiceAccount", sa):
            fail(f"{where}: serviceAccountName {sa} does not exist")
        volumes = {v["name"] for v in spec.get("volumes", [])}
        for c in containers(spec):
            for m in c.get("volumeMounts", []):
                if m["name"] not in volumes:
                    fail(f"{where}: container {c['name']} mounts missing volume {m['name']}")
            # Ferry refuses FERRY_* variables it does not know, and a Service named
            # ferry-something would put FERRY_SOMETHING_SERVICE_HOST... in the pod.
            if FERRY_IMAGE.search(c["image"]) and spec.get("enableServiceLinks") is not False:
                fail(f"{where}: runs Ferry without enableServiceLinks: false")

    # The configuration Ferry reads, as written into the pod.
    configs = {}
    for cm_name, cm in by_kind.get("ConfigMap", {}).items():
        if "ferry.toml" in cm.get("data", {}):
            text = cm["data"]["ferry.toml"]
            (out / f"{name}.ferry.toml").write_text(text)
            configs[cm_name] = tomllib.loads(text)
    if len(configs) != 1:
        fail(f"{name}: expected one ConfigMap with ferry.toml, found {len(configs)}")
        return
    config = next(iter(configs.values()))
    listen_port = int(config["server"]["listen"].rsplit(":", 1)[1])

    deployment = by_kind["Deployment"]["ferry"]
    spec = deployment["spec"]["template"]["spec"]
    ferry = next(c for c in spec["containers"] if c["name"] == "ferry")
    ports = {p["name"]: p["containerPort"] for p in ferry["ports"]}
    if ports.get("http") != listen_port:
        fail(f"{name}: container port http {ports.get('http')} is not [server] listen's {listen_port}")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = ferry.get(probe, {}).get("httpGet", {})
        if get.get("path") != path or get.get("port") not in ("http", listen_port):
            fail(f"{name}: {probe} is not GET {path} on port {listen_port}")
    annotations = deployment["spec"]["template"]["metadata"].get("annotations", {})
    if annotations.get("prometheus.io/port") != str(listen_port):
        fail(f"{name}: prometheus.io/port is not {listen_port}")
    if deployment["spec"]["strategy"]["type"] != "Recreate":
        fail(f"{name}: the Deployment's volume is ReadWriteOnce: strategy must be Recreate")

    # Every secret file the configuration names must be mounted from a Secret, or a
    # workload identity token must come from the webhook.
    mounts = {m["mountPath"]: m["name"] for m in ferry.get("volumeMounts", [])}
    secret_volumes = {v["name"] for v in spec.get("volumes", []) if "secret" in v}
    for up in config.get("upstream", []):
        auth = up.get("auth", {})
        for key, value in auth.items():
            if key.endswith("_file"):
                mount = str(Path(value).parent)
                if mounts.get(mount) not in secret_volumes:
                    fail(f"{name}: upstream {up['name']} auth.{key} {value}: {mount} is not a Secret mount")
        if auth.get("workload_identity"):
            labels = deployment["spec"]["template"]["metadata"].get("labels", {})
            sa = by_kind.get("ServiceAccount", {}).get(spec.get("serviceAccountName", ""), {})
            if labels.get("azure.workload.identity/use") != "true":
                fail(f"{name}: workload_identity without the azure.workload.identity/use pod label")
            if "azure.workload.identity/client-id" not in sa.get("metadata", {}).get("annotations", {}):
                fail(f"{name}: workload_identity without a ServiceAccount with azure.workload.identity/client-id")

    # The nodes' mirror address is the Service's fixed ClusterIP and port.
    service = by_kind["Service"]["ferry"]
    cluster_ip = service["spec"].get("clusterIP")
    try:
        ipaddress.ip_address(cluster_ip)
    except (TypeError, ValueError):
        fail(f"{name}: the Service has no fixed clusterIP ({cluster_ip})")
    service_port = service["spec"]["ports"][0]["port"]
    daemonset = by_kind["DaemonSet"]["ferry-node-config"]
    ds_spec = daemonset["spec"]["template"]["spec"]
    init = next(c for c in ds_spec.get("initContainers", []) if FERRY_IMAGE.search(c["image"]))
    args = init["args"]
    if args[0] != "node-config":
        fail(f"{name}: the DaemonSet's init container does not run node-config")
    mirror = urlsplit(args[args.index("--mirror") + 1])
    if (mirror.hostname, mirror.port) != (cluster_ip, service_port):
        fail(f"{name}: --mirror {mirror.geturl()} is not the Service's {cluster_ip}:{service_port}")
    write_dir = args[args.index("--write") + 1]
    host_paths = {
        m["mountPath"]: v["hostPath"]["path"]
        for m in init.get("volumeMounts", [])
        for v in ds_spec["volumes"]
        if v["name"] == m["name"] and "hostPath" in v
    }
    if host_paths.get(write_dir) != "/etc/containerd/certs.d":
        fail(f"{name}: --write {write_dir} is not the node's /etc/containerd/certs.d")
    (out / f"{name}.node-config-args.json").write_text(json.dumps(args))


def manifests(out, version, rendered):
    out = Path(out)
    check_listing()
    for path in rendered:
        objects = load_all(path)
        if not objects:
            fail(f"{path}: renders to nothing")
            continue
        check_rendered(Path(path).stem, objects, version, out)
        print(f"k8s-validate: {path}: {len(objects)} objects valid for Kubernetes {version}")


# The names the brief fixes for /metrics (counters with their _total).
EXPECTED = {
    "ferry_http_requests_total", "ferry_http_request_duration_seconds",
    "ferry_cache_results_total", "ferry_served_bytes_total", "ferry_upstream_bytes_total",
    "ferry_upstream_request_duration_seconds", "ferry_upstream_errors_total",
    "ferry_inflight_fetches", "ferry_store_bytes", "ferry_store_blobs",
    "ferry_store_max_bytes", "ferry_evictions_total", "ferry_evicted_bytes_total",
    "ferry_token_refreshes_total", "ferry_upstream_up", "ferry_build_info",
}


def family(metric):
    """The family a sample name belongs to: histogram series and counters' _total off."""
    return re.sub(r"_(bucket|sum|count|created|total)$", "", metric)


def dashboard(path, metrics_file=None):
    with open(path) as f:
        board = json.load(f)
    exprs = []

    def walk(panels):
        for p in panels:
            walk(p.get("panels", []))
            for t in p.get("targets", []):
                exprs.append((p.get("title"), t.get("expr", "")))
            if p.get("type") != "row" and not p.get("targets"):
                fail(f"{path}: panel {p.get('title')!r} has no query")

    walk(board.get("panels", []))
    used = set()
    for title, expr in exprs:
        names = set(re.findall(r"\bferry_[a-z0-9_]+", expr))
        if not names:
            fail(f"{path}: panel {title!r} queries no Ferry metric: {expr}")
        used |= names
    known = {family(n) for n in EXPECTED}
    for n in sorted(used):
        if family(n) not in known:
            fail(f"{path}: {n} is not one of Ferry's metrics")
    for n in sorted(EXPECTED - {"ferry_build_info"}):
        if not any(family(u) == family(n) for u in used):
            fail(f"{path}: shows nothing of {n}")
    if metrics_file:
        text = Path(metrics_file).read_text()
        exposed = {family(m) for m in re.findall(r"^# TYPE (\S+)", text, re.M)}
        for n in sorted(used):
            if family(n) not in exposed:
                fail(f"{path}: {n} is not in what ferry serve exposes at /metrics")
    print(f"k8s-validate: {path}: {len(exprs)} queries over {len(used)} metrics")


def render(kustomization_dir):
    """A stand-in for `kubectl kustomize` on the base alone: its resources in order,
    in its namespace, with its image substitutions (no patches, no components)."""
    base = Path(kustomization_dir)
    k = yaml.safe_load((base / "kustomization.yaml").read_text())
    images = {i["name"]: f'{i.get("newName", i["name"])}:{i["newTag"]}' for i in k.get("images", [])}
    docs = []
    for resource in k["resources"]:
        for obj in load_all(base / resource):
            if obj["kind"] != "Namespace" and "namespace" in k:
                obj["metadata"]["namespace"] = k["namespace"]
            for _, spec in pod_specs([obj]):
                for c in containers(spec):
                    name = c["image"].split(":")[0]
                    if name in images:
                        c["image"] = images[name]
            docs.append(obj)
    print(yaml.safe_dump_all(docs, sort_keys=False), end="")


if __name__ == "__main__":
    command, *rest = sys.argv[1:]
    if command == "manifests":
        manifests(rest[0], rest[1], rest[2:])
    elif command == "render":
        render(*rest)
    elif command == "dashboard":
        dashboard(*rest)
    else:
        sys.exit(f"unknown command {command}")
    sys.exit(1 if failures else 0)
