"""Ray Train plumbing every training stage shares: the environment for a local cluster
and the scaling config (GPU when the cluster has enough, CPUs per worker, placement)."""

from __future__ import annotations

import os


def train_env(ray_address: str | None) -> None:
    """Ray Train's print patch tees every worker print into its logger (each line twice);
    on a local cluster of a few cores its pollers compete with the workers for CPU, there is
    no spot preemption to watch, a 5 s health check is plenty and nobody scrapes metrics."""
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    if not ray_address:
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
        os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "5")
        os.environ.setdefault("RAY_TRAIN_METRICS_ENABLED", "0")


def scaling_config(dist):
    """``ScalingConfig`` from a ``DistributedConfig``: one GPU per worker when use_gpu is yes, or
    auto and the cluster has a GPU for every worker."""
    import ray
    from ray.train import ScalingConfig

    gpus = ray.cluster_resources().get("GPU", 0)
    use_gpu = dist.use_gpu == "yes" or (dist.use_gpu == "auto" and gpus >= dist.num_workers)
    return ScalingConfig(num_workers=dist.num_workers, use_gpu=use_gpu, resources_per_worker={"CPU": dist.cpus_per_worker},
                         placement_strategy=dist.placement_strategy)
