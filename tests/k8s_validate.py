"""Checks of Ferry's deployment artefacts that need no cluster; run by tests/k8s-validate.sh.

  manifests OUT K8S_VERSION RENDERED...  schema-check every rendered object (strict), check
                                         that the kustomizations list every file, that the
                                         objects agree with each other (and the replicated
                                         variants' peers, ports, volumes, budget), and
                                         write to OUT each ConfigMap's ferry.toml, the same
                                         with the Secrets' files laid out as in the pod
                                         (VARIANT.check.ferry.toml, for `ferry config
                                         check`) and the DaemonSet's node-config arguments
  dashboard DASHBOARD [METRICS_FILE]     parse the Grafana dashboard; every metric it
                                         queries must be one Ferry exposes
"""

import base64
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
    for d in [MANIFESTS] + sorted(p for p in MANIFESTS.rglob("*") if p.is_dir()):
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
    check_store(name, config, by_kind, deployment, ferry)

    # Every secret file the configuration names must be a key of a mounted Secret, or a
    # workload identity token must come from the webhook.
    auths = [(f"upstream {up['name']} auth", up.get("auth", {})) for up in config.get("upstream", [])]
    shared = config.get("storage", {}).get("shared")
    if shared:
        auths.append(("[storage.shared] auth", shared.get("auth", {})))
    for what, auth in auths:
        for key, value in auth.items():
            if key.endswith("_file"):
                secret_file(name, f"{what}.{key}", value, by_kind, spec, ferry)
        if auth.get("workload_identity"):
            labels = deployment["spec"]["template"]["metadata"].get("labels", {})
            sa = by_kind.get("ServiceAccount", {}).get(spec.get("serviceAccountName", ""), {})
            if labels.get("azure.workload.identity/use") != "true":
                fail(f"{name}: {what}: workload_identity without the azure.workload.identity/use pod label")
            if "azure.workload.identity/client-id" not in sa.get("metadata", {}).get("annotations", {}):
                fail(f"{name}: {what}: workload_identity without a ServiceAccount with azure.workload.identity/client-id")
    if "cluster" in config:
        check_cluster(name, config["cluster"], by_kind, deployment, ferry)
    write_check_config(name, out, by_kind, spec, ferry)

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
    return config


def pod_labels(deployment):
    return deployment["spec"]["template"]["metadata"].get("labels", {})


def selects(match_labels, labels):
    """Whether a matchLabels selector (non-empty) selects pods with these labels."""
    return bool(match_labels) and all(labels.get(k) == v for k, v in match_labels.items())


def by_kind_objects(by_kind):
    return [o for objects in by_kind.values() for o in objects.values()]


def mount_of(path, ferry):
    """The volume mount a path in Ferry's container is on (the deepest one)."""
    found = None
    for m in ferry.get("volumeMounts", []):
        base = m["mountPath"].rstrip("/")
        if path == base or path.startswith(base + "/"):
            if found is None or len(base) > len(found["mountPath"].rstrip("/")):
                found = m
    return found


def volume(spec, volume_name):
    return next((v for v in spec.get("volumes", []) if v["name"] == volume_name), None)


def secret_file(name, what, path, by_kind, spec, ferry):
    """A file the configuration reads must be a key of a Secret mounted in Ferry's
    container, or Ferry refuses to start in the pod."""
    mount = mount_of(path, ferry)
    v = mount and volume(spec, mount["name"])
    if not v or "secret" not in v:
        fail(f"{name}: {what} {path} is not on a Secret mount")
        return
    secret = by_kind.get("Secret", {}).get(v["secret"]["secretName"])
    if secret is None:
        return  # reported with the volume
    key = path[len(mount["mountPath"].rstrip("/")) + 1 :]
    items = {i["path"]: i["key"] for i in v["secret"].get("items", [])}
    key = items.get(key, key if not items else None)
    if key not in {**secret.get("data", {}), **secret.get("stringData", {})}:
        fail(f"{name}: {what} {path}: Secret {secret['metadata']['name']} has no such key")


# Kubernetes quantities (sizeLimit, storage requests) and Ferry's sizes (src/bytesize.rs)
# are different grammars: "G" is 10^9 bytes to Kubernetes and 2^30 to Ferry.
K8S_UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
             "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
FERRY_UNITS = {"": 1, "b": 1, "k": 2**10, "kib": 2**10, "m": 2**20, "mib": 2**20, "g": 2**30,
               "gib": 2**30, "t": 2**40, "tib": 2**40, "kb": 10**3, "mb": 10**6, "gb": 10**9,
               "tb": 10**12}


def quantity_bytes(text):
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([A-Za-z]*)", str(text))
    if not m or m[2] not in K8S_UNITS:
        raise ValueError(f"{text} is not a Kubernetes quantity in bytes")
    return float(m[1]) * K8S_UNITS[m[2]]


def ferry_size_bytes(text):
    m = re.fullmatch(r"(\d+(?:\.\d+)?) ?([A-Za-z]*)", text.strip())
    if not m or m[2].lower() not in FERRY_UNITS:
        raise ValueError(f"{text} is not a Ferry size")
    return float(m[1]) * FERRY_UNITS[m[2].lower()]


def check_store(name, config, by_kind, deployment, ferry):
    """One store on a claim has one writer: one replica, Recreate. A shared store has
    several replicas, each with a local tier of its own, rolled one at a time."""
    spec = deployment["spec"]["template"]["spec"]
    storage = config.get("storage", {})
    replicas = deployment["spec"].get("replicas", 1)
    strategy = deployment["spec"].get("strategy", {})
    root = storage.get("root", "")
    mount = mount_of(root, ferry)
    data = mount and volume(spec, mount["name"])
    if not data or mount["mountPath"].rstrip("/") != root.rstrip("/"):
        fail(f"{name}: [storage] root {root} is not a volume mounted in Ferry's container")
        return
    if "shared" not in storage:
        if replicas != 1:
            fail(f"{name}: {replicas} replicas without [storage.shared]: each would have a store of its own")
        if "persistentVolumeClaim" in data and strategy.get("type") != "Recreate":
            fail(f"{name}: the Deployment's volume is ReadWriteOnce: strategy must be Recreate")
        return

    if "persistentVolumeClaim" in data:
        fail(f"{name}: the local tier {root} is a claim: each replica needs its own (emptyDir or ephemeral)")
    for claim in by_kind.get("PersistentVolumeClaim", {}):
        fail(f"{name}: PersistentVolumeClaim {claim} is left over: nothing mounts it with a shared store")
    if "emptyDir" in data:
        size_limit = data["emptyDir"].get("sizeLimit")
    elif "ephemeral" in data:
        template = data["ephemeral"]["volumeClaimTemplate"]["spec"]
        size_limit = template.get("resources", {}).get("requests", {}).get("storage")
    else:
        fail(f"{name}: the local tier {root} is neither an emptyDir nor an ephemeral volume")
        return
    local_max = storage.get("local_max_size")
    if size_limit is None or local_max is None:
        fail(f"{name}: the local tier needs both a size (sizeLimit or a storage request) and [storage] local_max_size")
    else:
        try:
            if ferry_size_bytes(local_max) >= quantity_bytes(size_limit):
                fail(f"{name}: local_max_size {local_max} is not below the local tier's {size_limit}")
        except ValueError as e:
            fail(f"{name}: {e}")
    if "cluster" not in config:
        fail(f"{name}: a shared store without [cluster]: every replica would fetch each blob from the upstream")

    if replicas < 2:
        fail(f"{name}: {replicas} replica on a shared store: no second replica to take over")
    rolling = strategy.get("rollingUpdate", {})
    if strategy.get("type") != "RollingUpdate" or str(rolling.get("maxUnavailable")) not in ("0", "0%"):
        fail(f"{name}: an upgrade must not take a replica away first: RollingUpdate with maxUnavailable 0")
    elif str(rolling.get("maxSurge", "25%")) in ("0", "0%"):
        fail(f"{name}: maxUnavailable 0 needs a maxSurge above 0, or a rollout cannot start")
    labels = pod_labels(deployment)
    pdbs = [p for p in by_kind.get("PodDisruptionBudget", {}).values()
            if selects(p["spec"]["selector"].get("matchLabels"), labels)]
    if len(pdbs) != 1:
        fail(f"{name}: {len(pdbs)} PodDisruptionBudgets select Ferry's pods, not one")
    for pdb in pdbs:
        min_available = pdb["spec"].get("minAvailable")
        if not isinstance(min_available, int) or not 2 <= min_available < replicas:
            fail(f"{name}: PodDisruptionBudget minAvailable {min_available} must keep 2 and be below the {replicas} replicas, or no drain can evict a replica")
    keys = {c["topologyKey"] for c in spec.get("topologySpreadConstraints", [])
            if selects(c.get("labelSelector", {}).get("matchLabels"), labels)}
    for key in ("kubernetes.io/hostname", "topology.kubernetes.io/zone"):
        if key not in keys:
            fail(f"{name}: Ferry's replicas are not spread over {key}")
    anti = spec.get("affinity", {}).get("podAntiAffinity", {})
    if not any(selects(t["podAffinityTerm"].get("labelSelector", {}).get("matchLabels"), labels)
               for t in anti.get("preferredDuringSchedulingIgnoredDuringExecution", [])):
        fail(f"{name}: no preferred podAntiAffinity between Ferry's replicas")


def check_cluster(name, cluster, by_kind, deployment, ferry):
    """The replicas find each other through a headless Service on the peer port, which
    only Ferry's own pods may reach, and prove themselves with a mounted secret."""
    spec = deployment["spec"]["template"]["spec"]
    labels = pod_labels(deployment)
    port = int(cluster["listen"].rsplit(":", 1)[1])
    ports = {p["name"]: p["containerPort"] for p in ferry["ports"]}
    if ports.get("peer") != port:
        fail(f"{name}: container port peer {ports.get('peer')} is not [cluster] listen's {port}")
    if "secret_file" in cluster:
        secret_file(name, "[cluster] secret_file", cluster["secret_file"], by_kind, spec, ferry)
    else:
        fail(f"{name}: [cluster] without secret_file: any pod could pose as a replica")

    for peer in cluster.get("peers", []):
        host, _, peer_port = peer.rpartition(":")
        m = re.fullmatch(r"([a-z0-9-]+)\.([a-z0-9-]+)(\.svc(\.cluster\.local)?)?", host)
        service = m and by_kind.get("Service", {}).get(m[1])
        if not service or service["metadata"]["namespace"] != m[2]:
            fail(f"{name}: [cluster] peers {peer} is not the DNS name of a Service here")
            continue
        s = service["spec"]
        if s.get("clusterIP") != "None" or not s.get("publishNotReadyAddresses"):
            fail(f"{name}: Service {m[1]} must be headless (clusterIP: None) and publish not-ready addresses, so its name gives every replica")
        if not s.get("selector") or not selects(s["selector"], labels):
            fail(f"{name}: Service {m[1]} does not select Ferry's pods")
        if not any(p["port"] == int(peer_port) and p.get("targetPort", p["port"]) in ("peer", port)
                   for p in s.get("ports", [])):
            fail(f"{name}: Service {m[1]} has no port {peer_port} to the container's peer port {port}")

    # NetworkPolicies add up: every rule of every policy selecting Ferry's pods that
    # admits the peer port must admit only Ferry's own pods (not the node-config
    # DaemonSet's, which share app.kubernetes.io/name), and one must.
    others = [pod_labels(o) for o, _ in pod_specs(by_kind_objects(by_kind)) if o is not deployment]

    def only_ferry(source):
        selector = source.get("podSelector", {}).get("matchLabels")
        return (set(source) == {"podSelector"} and selects(selector, labels)
                and not any(selects(selector, other) for other in others))

    admitted = False
    for policy in by_kind.get("NetworkPolicy", {}).values():
        if not selects(policy["spec"]["podSelector"].get("matchLabels"), labels):
            continue
        for rule in policy["spec"].get("ingress", []):
            rule_ports = rule.get("ports")
            if rule_ports and not any(p.get("port") in (port, "peer") and p.get("protocol", "TCP") == "TCP"
                                      for p in rule_ports):
                continue
            where = f"{name}: NetworkPolicy {policy['metadata']['name']}"
            sources = rule.get("from")
            if not sources or not all(only_ferry(f) for f in sources):
                fail(f"{where} admits the peer port {port} from more than Ferry's own pods")
            else:
                admitted = True
    if not admitted:
        fail(f"{name}: no NetworkPolicy admits Ferry's pods on the peer port {port}")


def write_check_config(name, out, by_kind, spec, ferry):
    """The ferry.toml as Ferry would read it in the pod: each Secret mounted in its
    container laid out under OUT/NAME-pod/, and the paths under those mounts moved
    there, for `ferry config check`."""
    pod = (out / f"{name}-pod").resolve()
    moved = []
    for m in ferry.get("volumeMounts", []):
        v = volume(spec, m["name"])
        secret = v and "secret" in v and by_kind.get("Secret", {}).get(v["secret"]["secretName"])
        if not secret:
            continue
        base = pod / m["mountPath"].lstrip("/")
        items = {i["key"]: i["path"] for i in v["secret"].get("items", [])}
        values = {k: base64.b64decode(encoded) for k, encoded in secret.get("data", {}).items()}
        values |= {k: text.encode() for k, text in secret.get("stringData", {}).items()}
        for key, value in values.items():
            if items and key not in items:
                continue
            f = base / items.get(key, key)
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_bytes(value)
        moved.append(m["mountPath"].rstrip("/"))
    text = (out / f"{name}.ferry.toml").read_text()

    def move(match):
        path = match[1]
        if any(path.startswith(p + "/") for p in moved):
            return f'"{pod}{path}"'
        return match[0]

    (out / f"{name}.check.ferry.toml").write_text(re.sub(r'"(/[^"]*)"', move, text))


def manifests(out, version, rendered):
    out = Path(out)
    check_listing()
    configs = {}
    for path in rendered:
        objects = load_all(path)
        if not objects:
            fail(f"{path}: renders to nothing")
            continue
        configs[Path(path).stem] = check_rendered(Path(path).stem, objects, version, out)
        print(f"k8s-validate: {path}: {len(objects)} objects valid for Kubernetes {version}")
    # Each component's ferry.toml repeats the base's registries: they must not drift.
    checked = [(n, c) for n, c in configs.items() if c]
    for other, config in checked[1:]:
        first, first_config = checked[0]
        for key in ("server", "upstream", "rule"):
            if served(config.get(key)) != served(first_config.get(key)):
                fail(f"{other}: the ferry.toml's {key} differs from {first}'s")


def served(section):
    """What the clients see of a config section: all but the identity Ferry uses."""
    if isinstance(section, list):
        return [{k: v for k, v in s.items() if k != "auth"} for s in section]
    return section


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
