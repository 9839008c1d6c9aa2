"""The graph on several Ray nodes of this one machine (Ray's own multi-node test cluster): two "GPU" nodes carry a
custom resource standing in for a GPU, one CPU node carries the CPU deployments. Transcribers land only on the GPU
nodes, Segmenters (and the Ingress, the Aligner) only on the CPU node, so every request's audio reference crosses
nodes; results are right. A GPU node removed under load: the other keeps serving (nothing mixed up), and a new
node gets the replacement replica.

A real GPU cluster uses the same mechanism: the Transcriber's ``ray_actor_options`` ask for ``num_gpus: 1``
(``transcriber_gpus``), which only GPU nodes have. The stand-in resource here is ``gpu_stand_in``."""

from __future__ import annotations

import random
import time

import httpx
import pytest

from tests.helpers import encode, phrase_recording, random_phrases
from tests.load import BackgroundLoad, running_replicas, seconds, wait_until, with_transcripts

pytestmark = pytest.mark.integration
APP = "multinode"
ON_CPU_NODE = {"ray_actor_options": {"resources": {"cpu_group": 0.01}}}
PLACEMENT = {
    "Transcriber": {"autoscaling_config": {"min_replicas": 2, "initial_replicas": 2, "max_replicas": 2},
                    "ray_actor_options": {"resources": {"gpu_stand_in": 1}}},
    "Segmenter": {"autoscaling_config": {"min_replicas": 2, "initial_replicas": 2, "max_replicas": 2},
                  **ON_CPU_NODE},
    "Ingress": ON_CPU_NODE, "Aligner": ON_CPU_NODE}
CLIENTS = 4


def gpu_node(cluster):
    return cluster.add_node(num_cpus=2, resources={"gpu_stand_in": 1})


@pytest.fixture(scope="module")
def nodes(local_ray):
    cluster = local_ray.cluster
    added = {"gpu": [gpu_node(cluster), gpu_node(cluster)],
             "cpu": [cluster.add_node(num_cpus=2, resources={"cpu_group": 1})]}
    cluster.wait_for_nodes()
    yield added
    for node in list(cluster.worker_nodes):
        cluster.remove_node(node)


@pytest.fixture(scope="module")
def app(nodes, module_app, digits_model):  # (nodes first: the app is deleted before they are removed)
    return module_app(PLACEMENT, model=str(digits_model))


@pytest.fixture(scope="module")
def files(app) -> list[tuple[bytes, str]]:
    rng = random.Random(50)
    return with_transcripts(app.url, [encode(phrase_recording(p, voice=i % 4, rng=rng).audio)
                                      for i, p in enumerate(random_phrases(rng, 10))])


def replica_nodes(deployment: str) -> list[str]:
    """The node id of each live replica of ``deployment`` (from Ray's actor table)."""
    import ray._private.state

    return [actor["Address"]["NodeID"] for actor in ray._private.state.actors().values()
            if actor["State"] == "ALIVE" and actor.get("Name", "").startswith(f"SERVE_REPLICA::{APP}#{deployment}#")]


def test_each_deployment_runs_only_on_its_nodes_and_results_are_right(app, nodes, files):
    gpu_ids = {node.node_id for node in nodes["gpu"]}
    cpu_ids = {node.node_id for node in nodes["cpu"]}
    assert sorted(replica_nodes("Transcriber")) == sorted(gpu_ids), "one Transcriber on each GPU node"
    for deployment in ("Segmenter", "Ingress", "Aligner"):
        assert set(replica_nodes(deployment)) == cpu_ids, deployment
    # every request's audio crosses from the CPU node (where the Ingress put it) to a GPU node
    outcome_texts = [httpx.post(app.url + "/v1/audio/transcriptions", files={"file": ("a.wav", wav)},
                                timeout=120).json()["text"] for wav, _ in files]
    assert outcome_texts == [expected for _, expected in files]


def test_a_gpu_node_removed_under_load_is_survived_and_replaced(local_ray, app, nodes, files):
    cluster = local_ray.cluster
    with BackgroundLoad(app.url, files, CLIENTS) as load:
        wait_until(lambda: len(load.answers) >= 2 * CLIENTS, timeout_s=60)
        removed_at = time.monotonic()
        cluster.remove_node(nodes["gpu"].pop(0), allow_graceful=False)
        # requests sent after the removal succeed again (on the other GPU node)
        recovered_s = wait_until(lambda: any(a.status == 200 and a.sent > removed_at for a in load.answers),
                                 timeout_s=60)
        # Ray notices the node's death by its health checks, then Serve the replica's (on a busy 2-core machine:
        # 2 s here, but once more than 2 minutes)
        noticed_s = wait_until(lambda: running_replicas(APP, "Transcriber") == 1, timeout_s=240)
        nodes["gpu"].append(gpu_node(cluster))  # a new GPU node joins: the replacement Transcriber lands there
        added_at = time.monotonic()
        gpu_ids = sorted(node.node_id for node in nodes["gpu"])
        replaced_s = wait_until(lambda: running_replicas(APP, "Transcriber") == 2
                                and sorted(replica_nodes("Transcriber")) == gpu_ids, timeout_s=240)
        served_by_new = len(load.answers)
        wait_until(lambda: len(load.answers) >= served_by_new + 2 * CLIENTS, timeout_s=60)
    outcome = load.outcome
    print(f"multi-node: GPU node removed under load; requests succeed again {seconds(recovered_s)} after; Serve "
          f"marks the replica gone {seconds(noticed_s)} after; the replacement Transcriber runs {seconds(replaced_s)} "
          f"after a new node joined; {len(outcome.answers)} requests, {len(outcome.failed)} failed "
          f"({sorted({a.status for a in outcome.failed})})")
    assert not outcome.wrong, "nothing mixed up: every 200 is the file's own transcript"
    for failure in outcome.failed:  # in-flight work on the dead node: retried, or a clear 503
        assert failure.status == 503 and failure.body["error"]["message"], failure
    assert recovered_s is not None and recovered_s < 30
    assert noticed_s is not None and replaced_s is not None, "the replica on the new node replaces the lost one"
    assert not [a for a in outcome.answers if a.sent > added_at + replaced_s and a.status != 200]
