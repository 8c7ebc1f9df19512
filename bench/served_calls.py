"""The gRPC calls a mesh's services served, read from their Prometheus endpoints
(the counts of notifymesh.rpc.server.duration, by method): what a run asked of
each service, beside the CPU it cost (bench/notify.py)."""

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from deploy.local import LocalMesh

SERVED = "notifymesh_rpc_server_duration"  # the histogram's name as exported; its _count samples


def served_calls(mesh: LocalMesh) -> dict[str, float]:
    """"<service> <Method>" (e.g. "storage TableWrite") -> calls served so far,
    summed over the service's processes; streams count once each."""
    counts: dict[str, float] = {}
    for node, url in mesh.metrics_urls().items():
        service = node.rsplit("-", 1)[0]
        with urllib.request.urlopen(url, timeout=5) as answer:
            text = answer.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name.startswith(SERVED) and sample.name.endswith("_count"):
                    key = f"{service} {sample.labels['rpc_method'].rsplit('/', 1)[-1]}"
                    counts[key] = counts.get(key, 0.0) + sample.value
    return counts
